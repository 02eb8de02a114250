// Claims (SPEC "Claims"), shared by the files that implement them:
// claim.cpp (idem_claim, idem_begin, idem_finish, idem_forget),
// claim_nowait.cpp (idem_begin's wait => false) and claim_many.cpp
// (idem_claim_many).
#pragma once

#include "pg/args.hpp"
#include "stats.hpp"

extern "C" {
#include "storage/proc.h"
#include "utils/memutils.h"
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

// Counts a claim granted (stats::claim_new, stats::hold_new), and warns
// when its key and scope look swapped (stats::count_claim says when; that
// the key names a scope, only to a role that may read idem_scope_stats).
void count_granted(stats::Event event, const ClaimRequest& r, FunctionCallInfo fcinfo);

pg_uuid_t key_hash_of(const pg::ScopeArg& scope, const pg::KeyArg& key);

// 55P03 for a claim of a key that a multi-step request holds (idem_hold):
// idem_claim and idem_claim_many have no in_progress to answer.
[[noreturn]] void raise_held(const ClaimRequest& r);

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

// Settings (claim_settings.cpp), defined by _PG_init whether preloaded or not.
void define_settings();
// lock_timeout while a claim runs: the smaller of `lock_timeout_ms` and
// pg_idem.wait_timeout, 0 counting as no limit.
int lock_timeout_for_claim(int lock_timeout_ms);
// From a PG_CATCH around a claim's statements: re-raises the error, a lock
// wait that ran out (or, `remote_ran_out`, the cancel of the remote wait
// timer) as 55P03 naming `key` (nullptr: a batch's) and `scope`.
[[noreturn]] void rethrow_claim_error(const pg::KeyArg* key, const pg::ScopeArg& scope, MemoryContext cxt,
                                      bool remote_ran_out = false);
// 54000 when a response is larger than pg_idem.max_response_size.
void check_response_size(Datum response, const pg::KeyArg& key, const pg::ScopeArg& scope);

// Where idem_claims is a Citus table on this node (the coordinator), a
// claim's lock waits happen on a worker, which lock_timeout here does not
// reach (Citus does not pass it on): a timer of the same length cancels the
// claim's statements instead, and the cancel is reported as the wait that
// ran out. Arms it there (runs inside SPI_connect); nothing elsewhere.
void arm_remote_wait_timeout(int timeout_ms);
// Disarms it; whether it fired.
bool disarm_remote_wait_timeout();
// Inside with_wait_timeout: whether the claim's waits are a worker's.
bool claim_is_remote();
// Whether idem_claims is a Citus table and this node its coordinator, whose
// claims run on the workers. Runs inside SPI_connect.
bool claims_on_other_nodes();
// While set, the remote timer runs remote_nowait_ms at most (claim_nowait.cpp).
extern bool remote_nowait;
constexpr int remote_nowait_ms = 50;

// Runs `body`, a claim's statements, with their lock waits bounded by
// pg_idem.wait_timeout (claim_settings.cpp says how).
template <typename T, typename Body>
T with_wait_timeout(const pg::KeyArg* key, const pg::ScopeArg& scope, Body&& body)
{
    MemoryContext cxt = CurrentMemoryContext;
    const int lock_timeout = LockTimeout;
    T result{};
    LockTimeout = lock_timeout_for_claim(lock_timeout);
    arm_remote_wait_timeout(LockTimeout);
    PG_TRY();
    {
        result = body();
    }
    PG_CATCH();
    {
        LockTimeout = lock_timeout;
        rethrow_claim_error(key, scope, cxt, disarm_remote_wait_timeout());
    }
    PG_END_TRY();
    disarm_remote_wait_timeout();
    LockTimeout = lock_timeout;
    return result;
}

// A client's own statement that claims outside a transaction block
// (claim_autocommit.cpp): noted, and its transaction fails with 25P01 at
// commit if no statement followed it.
void define_autocommit_setting();
void note_autocommit(FunctionCallInfo fcinfo, const char* function, const pg::KeyArg* key, const pg::ScopeArg& scope);

// The TTL counts from when the claim is granted. A statement that claimed
// rows with claimed_at = `asked` may have waited for another transaction
// first: when it took longer than grant_slack_usec, granted_late() is true
// and sets `now`, and the caller moves claimed_at and expires_at of its rows
// (its own: no wait, no conflict) to it.
constexpr int64 grant_slack_usec = 1000;
bool granted_late(TimestampTz asked, TimestampTz* now);

}  // namespace idem::claims
