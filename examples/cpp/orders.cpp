#include "orders.hpp"

#include <algorithm>
#include <chrono>
#include <random>
#include <set>
#include <thread>

namespace {

// What the client does on each error (README: "Calling pg_idem from an
// application"); pqxx::sql_error::sqlstate() has the SQLSTATE, except for
// 40001 and 40P01 (pqxx::serialization_failure, pqxx::deadlock_detected).
// Retried at once, with a short pause: the whole transaction runs again from
// BEGIN, so everything it read is read again (a 40001 from idem_version_guard
// means "the row you read is stale": resending the same UPDATE would fail again).
const std::set<std::string> retry_now = {
    "40001",  // serialization failure: a claim committed after this transaction's snapshot, a stale version
    "40P01",  // deadlock detected
    "57014",  // statement timeout, or the statement was cancelled
};
// Retried after a longer pause: another transaction holds the key and has not
// ended (the first attempt is still running, or hangs).
const std::set<std::string> retry_later = {"55P03"};  // lock_timeout (or pg_idem's own wait limit) ran out
// Everything else is thrown to the caller, never retried: IK001 (the key was
// reused with a different request: a client bug), IK002, IK003, and the
// argument errors (22xxx, 42xxx) fail the same way every time.

constexpr int max_attempts = 30;

// Back off, with jitter, so that retries do not arrive in step.
void pause(int ms, int attempt)
{
    thread_local std::mt19937 rng(std::random_device{}());
    double base = std::min(1000.0, ms * double(1 << std::min(attempt, 6)));
    std::this_thread::sleep_for(
        std::chrono::duration<double, std::milli>(base * std::uniform_real_distribution<double>(0.5, 1.5)(rng)));
}

}  // namespace

Answer OrderService::place_order(const std::string& key, const Order& order)
{
    for (int attempt = 1;; attempt++) {
        std::string cause;
        int ms = 10;
        try {
            return this->attempt(key, order);
        } catch (const pqxx::in_doubt_error&) {
            // The connection died during COMMIT: nobody knows whether it
            // committed. Reconnect and send the same key; the retry finds out.
            if (attempt == max_attempts)
                throw;
            cause = "connection lost";
        } catch (const pqxx::broken_connection&) {
            // Connection lost (killed, server restarted, network): reconnect
            // and send the same key.
            if (attempt == max_attempts)
                throw;
            cause = "connection lost";
        } catch (const pqxx::serialization_failure&) {
            // 40001 and 40P01 have classes of their own, which in libpqxx 6
            // derive from pqxx::failure, not pqxx::sql_error (no sqlstate()).
            if (attempt == max_attempts)
                throw;
            cause = "40001";
        } catch (const pqxx::deadlock_detected&) {
            if (attempt == max_attempts)
                throw;
            cause = "40P01";
        } catch (const pqxx::sql_error& e) {
            if (attempt == max_attempts)
                throw;
            if (!conn_->is_open())
                cause = "connection lost";  // the server's last word before it hung up (57P01)
            else if (retry_now.count(e.sqlstate()))
                cause = e.sqlstate();
            else if (retry_later.count(e.sqlstate()))
                cause = e.sqlstate(), ms = 200;
            else
                throw;  // IK001, IK002, IK003, ...: never retried
        }
        retries[cause]++;
        pause(ms, attempt);
    }
}

Answer OrderService::attempt(const std::string& key, const Order& order)
{
    if (!conn_ || !conn_->is_open())
        conn_ = std::make_unique<pqxx::connection>(conninfo_);
    // One transaction: pqxx::work sends BEGIN, commit() sends COMMIT, and it
    // rolls back if destroyed before. The claim, the order and the stored
    // response commit together or not at all. Never call idem_begin in
    // autocommit (pqxx::nontransaction): the claim would commit alone.
    pqxx::work txn(*conn_);
    pqxx::row claim =
        txn.exec_params1("SELECT status, response FROM idem_begin($1, 'orders', request => jsonb_build_object("
                         "'customer', $2::int, 'product', $3::text, 'qty', $4::int))",
                         key, order.customer, order.product, order.qty);
    if (claim[0].as<std::string>() == "replay") {
        std::string response = claim[1].is_null() ? "null" : claim[1].as<std::string>();
        txn.commit();
        return Answer{response, true};
    }
    // 'new' (idem_begin waits for a first attempt still running, so
    // 'in_progress' comes only with wait => false).
    std::string response =
        txn.exec_params1("INSERT INTO orders (request_key, customer, product, qty) VALUES ($1, $2, $3, $4)"
                         " RETURNING jsonb_build_object('order_id', id, 'status', 'placed')",
                         key, order.customer, order.product, order.qty)[0]
            .as<std::string>();
    txn.exec_params("SELECT idem_finish($1, 'orders', $2::jsonb)", key, response);
    txn.commit();
    return Answer{response, false};
}
