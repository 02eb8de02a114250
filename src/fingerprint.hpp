// The fingerprint of idem_begin's request (SPEC "Claims": IK001).
//
// Two requests have the same fingerprint exactly when their jsonb values are
// equal: 128 bits of SHA-256 over an encoding of the value in which every
// array, object, key and scalar is tagged and every string length-prefixed,
// so no two different structures encode alike (a hash of jsonb that skips
// where arrays and objects end, like jsonb_hash_extended, takes
// {"a":{"b":1},"c":2} for {"a":{"b":1,"c":2}}). Key order and whitespace are
// already gone in jsonb; numbers are encoded as their normalized text, so
// 1.0 and 1, which jsonb holds equal, match.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "utils/jsonb.h"
#include "utils/uuid.h"
}

namespace idem {

pg_uuid_t request_fingerprint(Jsonb* request);

}  // namespace idem
