// pg_idem.allow_autocommit over the wire (SPEC "Claims"): a client's own
// statement that claims outside a transaction block fails with 25P01 and
// leaves nothing claimed; the same claim followed by the business write in
// one transaction is fine. libpq, so that each protocol is exactly what a
// driver sends: a simple query (psql, node-postgres without parameters), a
// multi-statement simple query, the extended protocol (Parse/Bind/Execute/
// Sync: JDBC, psycopg and node-postgres with parameters), a prepared
// statement, and pipelines (libpq, psycopg's pipeline(), pgjdbc batches).
//
// Connects with the PG* environment (scripts/in-server); exits 1 on the
// first case that does not behave.
#include <libpq-fe.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

PGconn* conn = nullptr;
int failures = 0;

void check(bool ok, const char* what)
{
    std::printf("%s - %s\n", ok ? "ok" : "not ok", what);
    if (!ok)
        failures++;
}

// The SQLSTATE of a result: "" when it succeeded.
std::string state_of(PGresult* res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_PIPELINE_SYNC)
        return "";
    const char* s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return s != nullptr ? s : "?";
}

// Runs one simple query; the SQLSTATE of its last result.
std::string simple(const char* sql)
{
    PGresult* res = PQexec(conn, sql);
    std::string st = state_of(res);
    PQclear(res);
    return st;
}

void must(const char* sql)
{
    std::string st = simple(sql);
    if (!st.empty()) {
        std::fprintf(stderr, "%s: %s %s\n", sql, st.c_str(), PQerrorMessage(conn));
        std::exit(1);
    }
}

// One statement with one text parameter by the extended protocol.
std::string extended(const char* sql, const char* param)
{
    PGresult* res = PQexecParams(conn, sql, 1, nullptr, &param, nullptr, nullptr, 0);
    std::string st = state_of(res);
    PQclear(res);
    return st;
}

// Whether a key is claimed and an order placed, seen from a new statement.
bool claimed(const char* key)
{
    PGresult* res =
        PQexecParams(conn, "SELECT status = 'done' FROM idem_status($1)", 1, nullptr, &key, nullptr, nullptr, 0);
    bool yes =
        PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && std::strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return yes;
}

bool ordered(const char* key)
{
    PGresult* res = PQexecParams(conn, "SELECT count(*) FROM protocol_orders WHERE key = $1", 1, nullptr, &key, nullptr,
                                 nullptr, 0);
    bool yes = PQresultStatus(res) == PGRES_TUPLES_OK && std::strcmp(PQgetvalue(res, 0, 0), "1") == 0;
    PQclear(res);
    return yes;
}

// Sends `statements` (each with the one parameter `key`) as one pipeline and
// a Sync; the SQLSTATEs seen, "" for each success, in order.
std::vector<std::string> pipeline(const std::vector<const char*>& statements, const char* key)
{
    std::vector<std::string> states;
    if (PQenterPipelineMode(conn) != 1) {
        std::fprintf(stderr, "cannot enter pipeline mode: %s\n", PQerrorMessage(conn));
        std::exit(1);
    }
    for (const char* sql : statements)
        if (PQsendQueryParams(conn, sql, 1, nullptr, &key, nullptr, nullptr, 0) != 1) {
            std::fprintf(stderr, "%s: %s\n", sql, PQerrorMessage(conn));
            std::exit(1);
        }
    PQpipelineSync(conn);
    for (;;) {
        PGresult* res = PQgetResult(conn);
        if (res == nullptr)
            continue;  // the end of one statement's results
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            break;
        }
        states.push_back(st == PGRES_PIPELINE_ABORTED ? "aborted" : state_of(res));
        PQclear(res);
    }
    PQexitPipelineMode(conn);
    return states;
}

bool has(const std::vector<std::string>& states, const char* state)
{
    for (const auto& s : states)
        if (s == state)
            return true;
    return false;
}

}  // namespace

int main()
{
    conn = PQconnectdb("");
    if (PQstatus(conn) != CONNECTION_OK) {
        std::fprintf(stderr, "connection: %s", PQerrorMessage(conn));
        return 1;
    }
    must("SET client_min_messages = warning");
    must("CREATE EXTENSION IF NOT EXISTS pg_idem");
    must("DROP TABLE IF EXISTS protocol_orders");
    must("CREATE TABLE protocol_orders (key text PRIMARY KEY)");
    must("SET pg_idem.allow_autocommit = off");

    // Simple query protocol.
    check(simple("SELECT idem_claim('simple-1')") == "25P01" && !claimed("simple-1"),
          "simple query, the claim alone: 25P01, nothing claimed");
    check(simple("SELECT * FROM idem_begin('simple-2')") == "25P01" && !claimed("simple-2"),
          "simple query, idem_begin alone: 25P01, nothing claimed");
    check(simple("SELECT idem_claim('multi-1'); INSERT INTO protocol_orders VALUES ('multi-1')").empty() &&
              claimed("multi-1") && ordered("multi-1"),
          "simple query of two statements (one implicit transaction): claimed and ordered");
    check(
        simple("BEGIN; SELECT idem_claim('block-1'); INSERT INTO protocol_orders VALUES ('block-1'); COMMIT").empty() &&
            claimed("block-1") && ordered("block-1"),
        "simple query, BEGIN ... COMMIT: claimed and ordered");

    // Extended protocol: Parse, Bind, Describe, Execute, Sync.
    check(extended("SELECT idem_claim($1)", "ext-1") == "25P01" && !claimed("ext-1"),
          "extended protocol, the claim alone: 25P01, nothing claimed");
    check(extended("SELECT * FROM idem_claim_many(ARRAY[$1])", "ext-2") == "25P01" && !claimed("ext-2"),
          "extended protocol, idem_claim_many alone: 25P01, nothing claimed");
    must("BEGIN");
    bool in_block = extended("SELECT idem_claim($1)", "ext-3").empty() &&
                    extended("INSERT INTO protocol_orders VALUES ($1)", "ext-3").empty();
    must("COMMIT");
    check(in_block && claimed("ext-3") && ordered("ext-3"), "extended protocol after BEGIN: claimed and ordered");
    check(extended("WITH c AS (SELECT idem_claim($1) AS new) INSERT INTO protocol_orders SELECT $1 FROM c WHERE new",
                   "ext-4")
                  .empty() &&
              claimed("ext-4") && ordered("ext-4"),
          "extended protocol, the claim and the write in one statement: claimed and ordered");

    // A prepared statement, executed on its own.
    PGresult* prepared = PQprepare(conn, "claim", "SELECT idem_claim($1)", 1, nullptr);
    PQclear(prepared);
    const char* key = "prep-1";
    PGresult* res = PQexecPrepared(conn, "claim", 1, &key, nullptr, nullptr, 0);
    check(state_of(res) == "25P01" && !claimed("prep-1"),
          "prepared statement, the claim alone: 25P01, nothing claimed");
    PQclear(res);

    // Pipelines: the statements before one Sync are one transaction.
    auto states = pipeline({"SELECT idem_claim($1)", "INSERT INTO protocol_orders VALUES ($1)"}, "pipe-1");
    check(states.size() == 2 && states[0].empty() && states[1].empty() && claimed("pipe-1") && ordered("pipe-1"),
          "pipeline, the claim then the write: claimed and ordered");
    states = pipeline({"INSERT INTO protocol_orders VALUES ($1)", "SELECT idem_claim($1)"}, "pipe-2");
    check(states.size() == 2 && states[0].empty() && states[1].empty() && claimed("pipe-2") && ordered("pipe-2"),
          "pipeline, the write then the claim: claimed and ordered");
    states = pipeline({"SELECT idem_claim($1)"}, "pipe-3");
    check(has(states, "25P01") && !claimed("pipe-3"), "pipeline, the claim alone: 25P01, nothing claimed");

    // pg_idem.allow_autocommit = on: the claim commits on its own.
    must("SET pg_idem.allow_autocommit = on");
    check(extended("SELECT idem_claim($1)", "allowed-1").empty() && claimed("allowed-1"),
          "allow_autocommit = on, extended protocol: claimed on its own");
    check(simple("SELECT idem_claim('allowed-2')").empty() && claimed("allowed-2"),
          "allow_autocommit = on, simple query: claimed on its own");

    must("DROP TABLE protocol_orders");
    PQfinish(conn);
    std::printf("%s\n", failures == 0 ? "protocol: all cases behave" : "protocol: FAILED");
    return failures == 0 ? 0 : 1;
}
