// Claims (SPEC "Claims"), shared by the files that implement them:
// claim.cpp (idem_claim, idem_begin, idem_finish, idem_forget),
// claim_nowait.cpp (idem_begin's wait => false) and claim_many.cpp
// (idem_claim_many).
#pragma once

#include "pg/args.hpp"

extern "C" {
#include "utils/uuid.h"
}

namespace idem::claims {

// What idem_begin reports; idem_claim is true exactly for new_claim.
enum class ClaimStatus { new_claim, replay, in_progress };

struct ClaimOutcome {
    ClaimStatus status;
    bool has_response;
    Datum response;  // jsonb, copied into the caller's memory context
};

struct ClaimRequest {
    pg::ScopeArg scope;
    pg::KeyArg key;
    pg_uuid_t key_hash;  // idem_claims.key_hash: key_hash(scope, key)
    pg::Ttl ttl;
    bool has_fingerprint;
    pg_uuid_t fingerprint;  // of idem_begin's request (fingerprint.hpp)
};

pg_uuid_t key_hash_of(const pg::ScopeArg& scope, const pg::KeyArg& key);

// The request for a key whose scope and TTL are arguments `scope_argno`
// and `ttl_argno` of the SQL function; no fingerprint.
ClaimRequest claim_request(FunctionCallInfo fcinfo, pg::KeyArg key, int scope_argno, int ttl_argno);

// Claims the key, waiting for a transaction that holds it; runs inside
// SPI_connect. A replayed response is copied into `result_cxt`, or left out
// when `result_cxt` is nullptr.
ClaimOutcome claim_core(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt);

// The same without waiting for another transaction that holds the key:
// in_progress instead (claim_nowait.cpp).
ClaimOutcome claim_nowait(const ClaimRequest& r, FunctionCallInfo fcinfo, MemoryContext result_cxt);

// The TTL counts from when the claim is granted. A statement that claimed
// rows with claimed_at = `asked` may have waited for another transaction
// first: when it took longer than grant_slack_usec, granted_late() is true
// and sets `now`, and the caller moves claimed_at and expires_at of its rows
// (its own: no wait, no conflict) to it.
constexpr int64 grant_slack_usec = 1000;
bool granted_late(TimestampTz asked, TimestampTz* now);

}  // namespace idem::claims
