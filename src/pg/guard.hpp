// The C++/PostgreSQL boundary: rule 1 of STYLE.md.
//
// Every SQL-callable function is defined with IDEM_SQL_FUNCTION (below),
// which runs its body through guarded(): there is no other way to write one.
// A C++ exception that escapes the body is caught there, copied into plain
// storage, and only after the catch block has ended is it raised as a
// PostgreSQL ERROR with its real SQLSTATE (idem::Error), 53200
// (std::bad_alloc) or 38000 (anything else: a bug, reported as "external
// routine exception" rather than the anonymous XX000).
//
// A PostgreSQL ERROR raised inside the body longjmps straight through this
// frame, which is allowed because nothing here has a destructor; the
// PostgreSQL-side code it crosses keeps to plain data (see postgres.hpp).
//
// The rule that keeps the two apart: C++ exceptions start only in src/core
// and in the argument readers (pg/args.hpp), and only before the body pushes
// any PostgreSQL state (pg::connect(), a PG_TRY block, an errcontext
// callback, a subtransaction). Callbacks PostgreSQL calls directly (hooks,
// transaction callbacks, timeouts, the background worker) never throw. On an
// assert-enabled server the catch path checks the first half of that
// (in guarded()). Should a throw break the rule anyway, the guard puts
// PG_exception_stack and error_context_stack back as the call found them
// before it raises: otherwise they would point into a frame that no longer
// exists, and the next ERROR would jump into it (sql/guard.sql).
#pragma once

#include "core/error.hpp"
#include "pg/postgres.hpp"

#include <exception>
#include <new>

namespace idem::pg {

struct CaughtError {
    int sqlerrcode;
    char message[1024];
    char hint[512];
};

void caught(CaughtError* out, const idem::Error& e) noexcept;
void caught_out_of_memory(CaughtError* out) noexcept;
void caught_unexpected(CaughtError* out, const char* what) noexcept;
[[noreturn]] void raise(const CaughtError* e);

// 55000 with a hint, for a feature that lives in shared memory: pg_idem
// must be in shared_preload_libraries.
[[noreturn]] void raise_needs_preload(const char* feature);

template <typename Body>
Datum guarded(Body&& body)
{
    CaughtError error;
    sigjmp_buf* exception_stack = PG_exception_stack;
    ErrorContextCallback* context_stack = error_context_stack;
    try {
        return body();
    } catch (const idem::Error& e) {
        caught(&error, e);
    } catch (const std::bad_alloc&) {
        caught_out_of_memory(&error);
    } catch (const std::exception& e) {
        caught_unexpected(&error, e.what());
    } catch (...) {
        caught_unexpected(&error, "unknown C++ exception");
    }
    // The rule above, on an assert-enabled server: the exception reached the
    // guard with PostgreSQL's error state as the call found it. (Here, in the
    // template, so that test/guard, which breaks the rule on purpose, turns
    // it off in its own copy: a function of pg_idem.so would be the one the
    // dynamic linker binds for both libraries.)
#ifndef IDEM_GUARD_TEST_LIBRARY
    Assert(PG_exception_stack == exception_stack);
    Assert(error_context_stack == context_stack);
#endif
    PG_exception_stack = exception_stack;
    error_context_stack = context_stack;
    raise(&error);
}

}  // namespace idem::pg

// Defines the SQL-callable function `name` (C linkage, version-1 calling
// convention): the block that follows is its body, run through guarded().
#define IDEM_SQL_FUNCTION(name)                                                        \
    static Datum name##_body(FunctionCallInfo fcinfo);                                 \
    extern "C" {                                                                       \
    PG_FUNCTION_INFO_V1(name);                                                         \
    }                                                                                  \
    extern "C" Datum name(PG_FUNCTION_ARGS)                                            \
    {                                                                                  \
        return idem::pg::guarded([fcinfo]() -> Datum { return name##_body(fcinfo); }); \
    }                                                                                  \
    static Datum name##_body(FunctionCallInfo fcinfo)
