// The C++/PostgreSQL boundary: rule 1 of STYLE.md.
//
// Every SQL-callable function runs its body through guarded(). A C++
// exception that escapes the body is caught here, copied into plain storage,
// and only after the catch block has ended is it raised as a PostgreSQL
// ERROR with its real SQLSTATE (idem::Error), 53200 (std::bad_alloc) or 38000
// (anything else: a bug, reported as "external routine exception" rather
// than the anonymous XX000).
//
// A PostgreSQL ERROR raised inside the body longjmps straight through this
// frame, which is allowed because nothing here has a destructor; the
// PostgreSQL-side code it crosses keeps to plain data (see postgres.hpp).
//
// PostgreSQL's error state is restored before the ERROR is raised: a C++
// exception that leaves a PG_TRY block, or a frame that pushed an errcontext
// callback, would otherwise leave PG_exception_stack or error_context_stack
// pointing into a frame that no longer exists, and the next ERROR would jump
// into it.
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
    PG_exception_stack = exception_stack;
    error_context_stack = context_stack;
    raise(&error);
}

}  // namespace idem::pg
