// Statistics in shared memory (SPEC "Observability"): counters since the
// last idem_stats_reset(), for the whole server and per scope. They exist
// only when pg_idem is in shared_preload_libraries; otherwise counting is a
// no-op and the views refuse with 55000 rather than show zeros.
#pragma once

#include "core/key.hpp"

#include <cstdint>

namespace idem::stats {

// The events counted. Those up to token_refused are also counted per scope.
enum Event : int {
    claim_new,
    claim_duplicate,
    claim_wait,  // waited for a transaction holding the key, which then committed
    claim_in_progress,  // idem_begin answered in_progress (wait => false, or a held key)
    request_mismatch,  // IK001
    hold_new,  // idem_hold: new
    hold_resumed,  // idem_hold: resume
    hold_in_progress,  // idem_hold: in_progress
    hold_completed,  // idem_complete
    hold_fence_refused,  // IK004, and idem_abandon's false
    token_issued,
    token_consumed,
    token_refused,
    decrement_done,
    decrement_insufficient,
    lease_granted,
    lease_refused,
    rows_purged,
    event_count
};
constexpr int scope_event_count = token_refused + 1;

// From _PG_init while shared_preload_libraries loads pg_idem.
void init_preloaded();

void count(Event event, uint64_t n = 1);
void count(Event event, Scope scope, uint64_t n = 1);

// What a new scope's first claim says about the order of its arguments.
struct SwapSign {
    bool key_is_scope = false;  // the key is the name of a scope of this database
    bool key_repeats = false;  // this role's last swapped_streak new scopes were first claimed with this key
};
constexpr int swapped_streak = 3;

// Counts `event` (a claim granted: claim_new, hold_new) for `key` in `scope`.
// Where `scope` is new to the statistics, also tells whether key and scope
// look swapped (idem_claim('orders', request_key) makes every request a
// scope of its own, all claimed with the key 'orders').
SwapSign count_claim(Event event, Scope scope, Key key);

}  // namespace idem::stats
