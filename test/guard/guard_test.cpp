// SQL functions that break the rule "C++ exceptions start only before
// PostgreSQL state is pushed", to show that pg::guarded() survives it
// (sql/guard.sql). They live in a test library of their own, never in
// pg_idem: a C++ exception thrown inside a PG_TRY block, and one thrown while
// an errcontext callback of a frame it unwinds is pushed. Without the guard
// restoring PG_exception_stack and error_context_stack, the first ERROR
// after them jumps into, or calls back into, a frame that no longer exists.
#include "pg/guard.hpp"
#include "core/error.hpp"

extern "C" {
#include "utils/elog.h"

PG_MODULE_MAGIC;
}

namespace {

[[noreturn]] void throw_error(const char* what)
{
    throw idem::Error(idem::sqlstate::invalid_parameter_value, what);
}

void dead_frame_context(void* arg)
{
    errcontext("in a frame that has returned: %s", static_cast<const char*>(arg));
}

}  // namespace

IDEM_SQL_FUNCTION(idem_test_throw_in_pg_try)
{
    PG_TRY();
    {
        throw_error("thrown inside PG_TRY");
    }
    PG_CATCH();
    {
        PG_RE_THROW();
    }
    PG_END_TRY();
    return 0;
}

IDEM_SQL_FUNCTION(idem_test_throw_in_errcontext)
{
    char label[] = "this stack frame";
    ErrorContextCallback context;
    context.callback = dead_frame_context;
    context.arg = label;
    context.previous = error_context_stack;
    error_context_stack = &context;
    throw_error("thrown under an errcontext callback");
}
