// What the current transaction has claimed (SPEC "Claims", idem_finish).
//
// "This transaction holds the claim on (scope, key)" is decided from what this
// backend recorded when it claimed the key, never from the row's xmin: a raw
// xmin survives freezing, so after an xid wraparound another transaction can
// get the same 32-bit xid, and on a Citus coordinator the row's xmin is a
// worker's. The record follows the claim's fate: a rolled-back savepoint (or
// idem_begin's internal subtransaction) removes what it claimed, a released
// one hands it to its parent, and the transaction's end forgets everything.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "utils/uuid.h"
}

namespace idem::own_claims {

// Registers the (sub)transaction callbacks; from _PG_init.
void init();

// The current subtransaction has just claimed the key with this hash.
void remember(const pg_uuid_t& key_hash);

// Whether the current transaction, or a live subtransaction of it, claimed it.
bool holds(const pg_uuid_t& key_hash);

}  // namespace idem::own_claims
