// The one way pg_idem's PostgreSQL-side files include PostgreSQL's headers.
//
// Files that include this header live in the "PostgreSQL regime": they may
// call functions that ereport(ERROR), which longjmps. Such code keeps only
// plain data in its frames (palloc'd memory, POD structs, trivially
// destructible views): never std::string, std::vector or a lock guard.
#pragma once

extern "C" {
#include "postgres.h"
#include "fmgr.h"
}

// Every difference between PostgreSQL versions, in one place.
#include "pg/compat.hpp"

// pg_idem's own SQLSTATEs (SPEC "Errors").
#define IDEM_ERRCODE_REQUEST_MISMATCH MAKE_SQLSTATE('I', 'K', '0', '0', '1')
#define IDEM_ERRCODE_NO_CLAIM_HELD    MAKE_SQLSTATE('I', 'K', '0', '0', '2')
#define IDEM_ERRCODE_WRONG_STATE      MAKE_SQLSTATE('I', 'K', '0', '0', '3')
#define IDEM_ERRCODE_HOLD_LOST        MAKE_SQLSTATE('I', 'K', '0', '0', '4')
