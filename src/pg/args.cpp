#include "pg/args.hpp"

extern "C" {
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
}

namespace idem::pg {
namespace {

Text text_view(Datum datum)
{
    text* t = reinterpret_cast<text*>(PG_DETOAST_DATUM_PACKED(datum));
    return Text{VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)};
}

}  // namespace

void require_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    if (PG_ARGISNULL(argno))
        ereport(ERROR, (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED), errmsg("%s must not be NULL", name)));
}

KeyArg key_datum(Datum datum, bool isnull, const char* name)
{
    if (isnull)
        return KeyArg{datum, checked_key(name, nullptr)};
    Text t = text_view(datum);
    return KeyArg{datum, checked_key(name, &t)};
}

KeyArg key_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    return key_datum(PG_GETARG_DATUM(argno), PG_ARGISNULL(argno), name);
}

ScopeArg scope_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    if (PG_ARGISNULL(argno))
        return ScopeArg{0, checked_scope(name, nullptr)};
    Datum datum = PG_GETARG_DATUM(argno);
    Text t = text_view(datum);
    return ScopeArg{datum, checked_scope(name, &t)};
}

Datum lease_name_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    if (PG_ARGISNULL(argno))
        checked_lease_name(name, nullptr);  // throws 22004
    Datum datum = PG_GETARG_DATUM(argno);
    Text t = text_view(datum);
    checked_lease_name(name, &t);
    return datum;
}

ItemArg item_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    if (PG_ARGISNULL(argno))
        checked_item(name, nullptr);  // throws 22004
    text* t = PG_GETARG_TEXT_PP(argno);
    Text view{VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t)};
    return ItemArg{PointerGetDatum(t), checked_item(name, &view)};
}

Ttl ttl_arg(FunctionCallInfo fcinfo, int argno, const char* name, bool null_means_never)
{
    if (PG_ARGISNULL(argno)) {
        if (!null_means_never)
            require_arg(fcinfo, argno, name);
        return Ttl{name, nullptr};
    }
    Interval* ttl = PG_GETARG_INTERVAL_P(argno);
    check_ttl(name, ttl->month, ttl->day, ttl->time);
    return Ttl{name, ttl};
}

Expiry expiry_at(Ttl ttl, TimestampTz now)
{
    if (ttl.interval == nullptr)
        return Expiry{true, 0};
    Datum at = DirectFunctionCall2(timestamptz_pl_interval, TimestampTzGetDatum(now), PointerGetDatum(ttl.interval));
    if (DatumGetTimestampTz(at) <= now)
        ereport(ERROR,
                (errcode(ERRCODE_INVALID_PARAMETER_VALUE), errmsg("%s must be a positive interval", ttl.name),
                 errdetail("Added to the current time %s, it does not reach past it.", timestamptz_to_str(now))));
    return Expiry{false, DatumGetTimestampTz(at)};
}

const char* key_for_message(Key key)
{
    constexpr int max_chars = 64;
    int len = static_cast<int>(key.text.size);
    int clipped = pg_mbcharcliplen(key.text.data, len, max_chars);
    return psprintf("\"%.*s\"%s", clipped, key.text.data, clipped < len ? "..." : "");
}

}  // namespace idem::pg
