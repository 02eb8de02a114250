// A claim that would commit on its own (SPEC "Claims"): a client in
// autocommit mode (node-postgres, JDBC and psycopg's autocommit, psql)
// sends `SELECT idem_begin(...)` as a statement of its own, the claim
// commits alone, the business write fails next, and every retry answers
// replay with nothing done. Unless pg_idem.allow_autocommit is on, such a
// transaction fails with 25P01 and its claim rolls back.
//
// Which calls are such. A call is direct when it belongs to the plan of the
// client's statement itself (its function was looked up in the memory of
// the active portal's executor), not to a function, procedure or DO block
// that the statement runs, whose writes commit with the claim. It is a
// candidate when, besides, no transaction block is open: no BEGIN, no
// multi-statement query string (an implicit block), and no earlier Execute
// message of a pipeline in this transaction. It is not yet an error: the
// first Execute of a pipeline looks the same, and the statements after it
// commit with it. So the decision is made at commit: the claim would have
// committed alone exactly when no other statement started after it, which
// the statement start time tells (PostgreSQL sets it for every Query and
// extended-protocol message, not for Sync).
//
// A claim inside a statement that writes (INSERT ... SELECT idem_claim(...),
// or a data-modifying WITH) commits with that write, and a candidate is
// only ever a read-only SELECT: its portal runs one SELECT.
#include "claim.hpp"

extern "C" {
#include "access/xact.h"
#include "executor/execdesc.h"
#include "nodes/execnodes.h"
#include "tcop/pquery.h"
#include "utils/guc.h"
#include "utils/portal.h"
#include "utils/timestamp.h"
}

#include <cstring>

namespace idem::claims {
namespace {

bool allow_autocommit = false;  // pg_idem.allow_autocommit

// The candidate of this transaction, if any: when its statement started, and
// what to name in the error.
bool candidate = false;
TimestampTz candidate_statement_start;
char candidate_function[32];
char candidate_key[300];  // "claim on key " and key_for_message: 64 characters, quoted
char candidate_scope[300];

bool is_direct(FunctionCallInfo fcinfo)
{
    Portal portal = ActivePortal;
    if (portal == nullptr || portal->strategy != PORTAL_ONE_SELECT || portal->queryDesc == nullptr ||
        portal->queryDesc->estate == nullptr)
        return false;
    return fcinfo->flinfo != nullptr && fcinfo->flinfo->fn_mcxt == portal->queryDesc->estate->es_query_cxt;
}

void copy_text(char* to, size_t size, const char* from)
{
    std::strncpy(to, from, size - 1);
    to[size - 1] = '\0';
}

void on_xact(XactEvent event, void*)
{
    if (event == XACT_EVENT_PRE_COMMIT && candidate && !allow_autocommit &&
        GetCurrentStatementStartTimestamp() == candidate_statement_start) {
        candidate = false;
        ereport(ERROR,
                (errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
                 errmsg("%s outside a transaction block: its %s in scope %s would commit on its own",
                        candidate_function, candidate_key, candidate_scope),
                 errdetail("In autocommit mode the claim commits before the business write; a retry would then find "
                           "the key claimed and the write never done. The claim was rolled back."),
                 errhint("Run the claim and the business write in one transaction (BEGIN ... COMMIT), or call it from "
                         "a function; SET pg_idem.allow_autocommit = on allows a claim on its own.")));
    }
    switch (event) {
    case XACT_EVENT_COMMIT:
    case XACT_EVENT_PARALLEL_COMMIT:
    case XACT_EVENT_ABORT:
    case XACT_EVENT_PARALLEL_ABORT:
    case XACT_EVENT_PREPARE:
        candidate = false;
        break;
    default:
        break;
    }
}

}  // namespace

void define_autocommit_setting()
{
    DefineCustomBoolVariable("pg_idem.allow_autocommit",
                             "Lets a client's own statement claim a key outside a transaction block.",
                             "Off: such a claim would commit alone, before any business write, and fails with 25P01.",
                             &allow_autocommit, false, PGC_USERSET, 0, nullptr, nullptr, nullptr);
    RegisterXactCallback(on_xact, nullptr);
}

void note_autocommit(FunctionCallInfo fcinfo, const char* function, const pg::KeyArg* key, const pg::ScopeArg& scope)
{
    if (allow_autocommit || candidate || IsTransactionBlock() || (MyXactFlags & XACT_FLAGS_PIPELINING) != 0 ||
        !is_direct(fcinfo))
        return;
    candidate = true;
    candidate_statement_start = GetCurrentStatementStartTimestamp();
    copy_text(candidate_function, sizeof candidate_function, function);
    copy_text(candidate_key, sizeof candidate_key,
              key != nullptr ? psprintf("claim on key %s", pg::key_for_message(key->key)) : "claims on its keys");
    copy_text(candidate_scope, sizeof candidate_scope, pg::key_for_message(Key{scope.scope.text}));
}

}  // namespace idem::claims
