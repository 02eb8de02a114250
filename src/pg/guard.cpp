#include "pg/guard.hpp"

#include <cstring>

namespace idem::pg {
namespace {

void copy_text(char* out, size_t out_size, const char* in) noexcept
{
    size_t n = std::strlen(in);
    if (n >= out_size)
        n = out_size - 1;
    std::memcpy(out, in, n);
    out[n] = '\0';
}

}  // namespace

void caught(CaughtError* out, const idem::Error& e) noexcept
{
    const char* s = e.sqlstate();
    out->sqlerrcode = MAKE_SQLSTATE(s[0], s[1], s[2], s[3], s[4]);
    copy_text(out->message, sizeof out->message, e.what());
    copy_text(out->hint, sizeof out->hint, e.hint().c_str());
}

void caught_out_of_memory(CaughtError* out) noexcept
{
    out->sqlerrcode = ERRCODE_OUT_OF_MEMORY;
    copy_text(out->message, sizeof out->message, "out of memory in pg_idem");
    out->hint[0] = '\0';
}

void caught_unexpected(CaughtError* out, const char* what) noexcept
{
    out->sqlerrcode = ERRCODE_EXTERNAL_ROUTINE_EXCEPTION;
    copy_text(out->message, sizeof out->message, "pg_idem internal error: ");
    size_t used = std::strlen(out->message);
    copy_text(out->message + used, sizeof out->message - used, what);
    out->hint[0] = '\0';
}

void raise_needs_preload(const char* feature)
{
    ereport(ERROR, (errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
                    errmsg("pg_idem %s needs pg_idem in shared_preload_libraries", feature),
                    errhint("Add pg_idem to shared_preload_libraries in postgresql.conf and restart the server.")));
    pg_unreachable();
}

void raise(const CaughtError* e)
{
    ereport(ERROR,
            (errcode(e->sqlerrcode), errmsg_internal("%s", e->message), e->hint[0] ? errhint("%s", e->hint) : 0));
    pg_unreachable();
}

}  // namespace idem::pg
