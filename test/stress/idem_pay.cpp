// idem_pay: a client that takes payments in three phases with a held
// request (idem_hold), the way README "Multi-step requests" shows, against a
// "provider" that charges cards outside the request's transactions:
//
//   1. idem_hold(key): new, resume (with the last recovery point), replay
//      (done) or in_progress (another client holds it: try later);
//   2. phase NULL: the local order row and the recovery point 'ordered' in
//      one transaction;
//   3. phase 'ordered': the provider call, in a transaction of its own (the
//      provider dedupes by the request key, its idempotency key, and logs
//      every call with the caller's fence), then the recovery point
//      'charged' with the charge id;
//   4. phase 'charged': idem_complete with the charge id, and a completion
//      row in the same transaction.
//
// A fence refused (IK004) means another client resumed the request: this one
// stops working on it and asks idem_hold again. Every client goes through all
// --keys keys in its own order until each is done, so clients race for the
// same requests; a test kills clients with kill -9 at random moments and
// starts new ones (test/t/022_hold_crash.pl), and their held requests stall
// until another client resumes them.
//
//   idem_pay --dsn DSN [--setup] [--keys 200] [--hold-ms 300] [--seed 1] [--provider-ms 20]
//            [--provider-port-file FILE]
//
// --setup creates the tables (dropping old ones) and exits. The provider is
// a pair of tables written outside the request's transactions, or, with
// --provider-port-file, idem_provider, a flaky process of its own (the demo).
#include <pqxx/pqxx>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
    std::string dsn;
    bool setup = false;
    int keys = 200;
    int hold_ms = 300;
    unsigned seed = 1;
    int provider_ms = 20;
    int provider_port = 0;  // --provider-port-file: call idem_provider there instead of the provider tables
};

const char* const setup_sql = R"SQL(
DROP TABLE IF EXISTS pay_orders, provider_charges, provider_calls, pay_completions;
-- The local order: no unique key on purpose, so that a phase redone after a
-- resume would show as a second row.
CREATE TABLE pay_orders (request_key text NOT NULL, fence bigint NOT NULL);
-- The provider's own books: one charge per idempotency key, every call logged.
CREATE TABLE provider_charges (idempotency_key text PRIMARY KEY, charge_id bigserial, fence bigint NOT NULL);
CREATE TABLE provider_calls (idempotency_key text NOT NULL, fence bigint NOT NULL);
-- Written with idem_complete: a completion under a stale fence would roll back.
CREATE TABLE pay_completions (request_key text NOT NULL, fence bigint NOT NULL, charge_id bigint NOT NULL);
)SQL";

Options parse(int argc, char** argv)
{
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "idem_pay: " << a << " needs a value\n";
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--dsn")
            o.dsn = next();
        else if (a == "--setup")
            o.setup = true;
        else if (a == "--keys")
            o.keys = std::stoi(next());
        else if (a == "--hold-ms")
            o.hold_ms = std::stoi(next());
        else if (a == "--seed")
            o.seed = static_cast<unsigned>(std::stoul(next()));
        else if (a == "--provider-ms")
            o.provider_ms = std::stoi(next());
        else if (a == "--provider-port-file") {
            std::ifstream f(next());
            f >> o.provider_port;
        } else {
            std::cerr << "idem_pay: unknown option " << a << "\n";
            std::exit(2);
        }
    }
    return o;
}

// One call to idem_provider: the charge, or 0 when the call failed (before
// or after charging: the caller cannot tell, and calls again).
long long call_provider(int port, const std::string& key, long long fence)
{
    int sock = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    long long charge = 0;
    if (sock >= 0 && connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        std::string call = "CHARGE " + key + " " + std::to_string(fence) + "\n";
        char answer[64] = {};
        if (write(sock, call.data(), call.size()) == static_cast<ssize_t>(call.size()) &&
            read(sock, answer, sizeof answer - 1) > 0)
            std::sscanf(answer, "OK %lld", &charge);
    }
    if (sock >= 0)
        close(sock);
    return charge;
}

bool lost_hold(const pqxx::sql_error& e)
{
    return e.sqlstate() == "IK004";
}

// One attempt at one request; true when it is done (replayed or completed).
bool attempt(pqxx::connection& conn, const Options& o, const std::string& key, std::mt19937& rng)
{
    std::string hold = std::to_string(o.hold_ms) + " milliseconds";
    pqxx::row held = pqxx::nontransaction(conn).exec_params1(
        "SELECT status, coalesce(fence, 0), coalesce(phase, ''), response IS NOT NULL, "
        "       coalesce((state ->> 'charge')::bigint, 0) "
        "FROM idem_hold($1, 'payments', hold => $2::interval, request => jsonb_build_object('key', $1::text))",
        key, hold);
    std::string status = held[0].as<std::string>();
    if (status == "replay") {
        if (!held[3].as<bool>())
            throw std::runtime_error("request " + key + " replayed without a response");
        return true;
    }
    if (status == "in_progress") {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return false;
    }
    long long fence = held[1].as<long long>();
    std::string phase = held[2].as<std::string>();
    long long charge = held[4].as<long long>();  // the recovery point 'charged' carries it
    try {
        if (phase.empty()) {
            pqxx::work txn(conn);
            txn.exec_params("INSERT INTO pay_orders VALUES ($1, $2)", key, fence);
            txn.exec_params("SELECT idem_checkpoint($1, 'payments', $2, 'ordered')", key, fence);
            txn.commit();
            phase = "ordered";
        }
        if (phase == "ordered") {
            // The provider, outside the request's transactions: it charges once
            // per idempotency key, however often it is called.
            std::this_thread::sleep_for(
                std::chrono::milliseconds(std::uniform_int_distribution<int>(0, o.provider_ms)(rng)));
            if (o.provider_port != 0) {
                // A flaky provider in a process of its own: call it again
                // until it answers; its idempotency key makes that safe.
                do {
                    pqxx::nontransaction(conn).exec_params("INSERT INTO provider_calls VALUES ($1, $2)", key, fence);
                    charge = call_provider(o.provider_port, key, fence);
                } while (charge == 0);
            } else {
                pqxx::work provider(conn);
                provider.exec_params("INSERT INTO provider_calls VALUES ($1, $2)", key, fence);
                provider.exec_params(
                    "INSERT INTO provider_charges (idempotency_key, fence) VALUES ($1, $2) ON CONFLICT DO NOTHING", key,
                    fence);
                charge =
                    provider.exec_params1("SELECT charge_id FROM provider_charges WHERE idempotency_key = $1", key)[0]
                        .as<long long>();
                provider.commit();
            }
            pqxx::work txn(conn);
            txn.exec_params(
                "SELECT idem_checkpoint($1, 'payments', $2, 'charged', jsonb_build_object('charge', $3::bigint))", key,
                fence, charge);
            txn.commit();
            phase = "charged";
        }
        if (phase == "charged") {
            pqxx::work txn(conn);
            txn.exec_params("INSERT INTO pay_completions VALUES ($1, $2, $3)", key, fence, charge);
            txn.exec_params("SELECT idem_complete($1, 'payments', $2, jsonb_build_object('charge', $3::bigint))", key,
                            fence, charge);
            txn.commit();
            return true;
        }
        throw std::runtime_error("request " + key + ": unknown phase " + phase);
    } catch (const pqxx::sql_error& e) {
        if (lost_hold(e))
            return false;  // another client resumed the request: ask again
        throw;
    }
}

}  // namespace

int main(int argc, char** argv)
{
    Options o = parse(argc, argv);
    try {
        pqxx::connection conn(o.dsn);
        if (o.setup) {
            pqxx::nontransaction(conn).exec(setup_sql);
            return 0;
        }
        std::vector<int> order(o.keys);
        for (int i = 0; i < o.keys; i++)
            order[i] = i;
        std::mt19937 rng(o.seed);
        std::shuffle(order.begin(), order.end(), rng);
        for (int i : order) {
            std::string key = "pay-" + std::to_string(i);
            for (int tries = 0; !attempt(conn, o, key, rng); tries++)
                if (tries > 100000)
                    throw std::runtime_error("request " + key + " never completed");
        }
    } catch (const std::exception& e) {
        std::cerr << "idem_pay: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
