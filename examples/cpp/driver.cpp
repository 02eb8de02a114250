// Runs examples/cpp/orders.cpp the way production would, and checks it.
//
// 8 workers send every request key at least twice: the two copies of a key
// side by side, so two workers send them at the same moment, and some keys
// a third time at the end (a redelivery). Meanwhile a chaos thread
// terminates workers' connections in the middle of requests
// (pg_terminate_backend) and cancels some of their statements
// (pg_cancel_backend), a first attempt hangs on two keys for a while (the
// retries behind it get 55P03), and half the workers run at SERIALIZABLE,
// where a duplicate racing the first attempt gets 40001. At the end: exactly
// one order per key, every copy of a request got the first answer, and a key
// reused with a different request fails with IK001 without being retried.
// Exits 1 if any check fails.
//
// Connects with libpq's PG* environment variables (examples/run sets them).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "orders.hpp"

namespace {

constexpr int workers = 8;
const char* const app = "orders-example";  // the workers' application_name: what the chaos thread kills
const char* const lock_timeout = "1s";  // how long a retry waits behind an attempt still running

struct Run {
    std::vector<std::string> keys;
    std::map<std::string, Order> orders;
    std::vector<std::string> sends;
    std::map<std::string, std::vector<Answer>> answers;
    std::vector<std::string> errors;
    std::vector<std::unique_ptr<OrderService>> services;  // one a worker
    std::mutex mutex;
    size_t next_send = 0;
    long terminated = 0, cancelled = 0;
};

void worker(Run& run, OrderService& service)
{
    for (;;) {
        std::string key;
        {
            std::lock_guard<std::mutex> lock(run.mutex);
            if (run.next_send >= run.sends.size() || !run.errors.empty())
                break;
            key = run.sends[run.next_send++];
        }
        try {
            Answer answer = service.place_order(key, run.orders.at(key));
            std::lock_guard<std::mutex> lock(run.mutex);
            run.answers[key].push_back(answer);
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> lock(run.mutex);
            run.errors.push_back(key + ": " + e.what());
            break;
        }
    }
}

// Terminates or cancels a random worker backend that is in a request:
// running a statement (COMMIT too) or between two statements of its
// transaction; not one that waits for a lock, so that the waits behind the
// hung first attempt run into lock_timeout.
void chaos(Run& run, std::atomic<bool>& stop)
{
    std::mt19937 rng(2);
    pqxx::connection conn("application_name=orders-example-chaos");
    while (!stop) {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        // A cancel interrupts only a running statement.
        bool cancel = std::uniform_real_distribution<double>(0, 1)(rng) < 0.25;
        std::string action = cancel ? "pg_cancel_backend" : "pg_terminate_backend";
        std::string states = cancel ? "'active'" : "'active', 'idle in transaction'";
        std::string query = "SELECT " + action + "(pid) FROM pg_stat_activity WHERE application_name = $1";
        query += " AND state IN (" + states + ") AND wait_event_type IS DISTINCT FROM 'Lock'";
        query += " ORDER BY random() LIMIT 1";
        pqxx::nontransaction q(conn);
        pqxx::result r = q.exec_params(query, app);
        if (!r.empty() && r[0][0].as<bool>())
            (cancel ? run.cancelled : run.terminated)++;
    }
}

}  // namespace

int main()
{
    Run run;
    const int n_keys = std::getenv("KEYS") ? std::atoi(std::getenv("KEYS")) : 200;
    std::string prefix = "cc-" + std::to_string(getpid()) + "-";
    for (int i = 0; i < n_keys; i++) {
        std::string k = prefix + std::to_string(i);
        run.keys.push_back(k);
        run.orders[k] = Order{i % 50, "sku-" + std::to_string(i % 17), 1 + i % 3};
    }
    // Every key twice, side by side (sent at once by two workers), a quarter
    // of them a third time at the end (a late redelivery).
    for (const auto& k : run.keys)
        run.sends.insert(run.sends.end(), {k, k});
    std::vector<std::string> late = run.keys;
    std::shuffle(late.begin(), late.end(), std::mt19937(1));
    run.sends.insert(run.sends.end(), late.begin(), late.begin() + n_keys / 4);

    auto start = std::chrono::steady_clock::now();
    // A first attempt that claims keys and hangs before it rolls back.
    pqxx::connection hung_conn("application_name=orders-example-hang");
    auto hung = std::make_unique<pqxx::work>(hung_conn);
    for (int i = 0; i < 2; i++) {
        const Order& o = run.orders.at(run.keys[i]);
        hung->exec_params("SELECT idem_begin($1, 'orders', request => jsonb_build_object("
                          "'customer', $2::int, 'product', $3::text, 'qty', $4::int))",
                          run.keys[i], o.customer, o.product, o.qty);
    }
    std::thread rollback([&hung] {
        std::this_thread::sleep_for(std::chrono::milliseconds(2500));
        hung->abort();
    });

    std::atomic<bool> stop_chaos{false};
    std::thread monkey(chaos, std::ref(run), std::ref(stop_chaos));
    std::vector<std::thread> threads;
    for (int n = 0; n < workers; n++) {
        std::string conninfo = std::string("application_name=") + app + " options='-c lock_timeout=" + lock_timeout;
        if (n % 2)
            conninfo += " -c default_transaction_isolation=serializable";
        run.services.push_back(std::make_unique<OrderService>(conninfo + "'"));
        threads.emplace_back(worker, std::ref(run), std::ref(*run.services.back()));
    }
    for (auto& t : threads)
        t.join();
    stop_chaos = true;
    monkey.join();
    rollback.join();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::map<std::string, long> retries;
    for (const auto& s : run.services)
        for (const auto& [cause, n] : s->retries)
            retries[cause] += n;

    std::vector<std::string> failures = run.errors;
    long replays = 0;
    pqxx::connection conn("");
    pqxx::nontransaction q(conn);
    std::map<std::string, std::pair<long, long>> placed;  // key -> (orders, smallest id)
    for (const auto& row : q.exec("SELECT request_key, count(*), min(id) FROM orders GROUP BY 1"))
        placed[row[0].as<std::string>()] = {row[1].as<long>(), row[2].as<long>()};
    std::map<std::string, int> sent;
    for (const auto& k : run.sends)
        sent[k]++;
    for (const auto& k : run.keys) {
        const std::vector<Answer>& got = run.answers[k];
        auto [n, order_id] = placed.count(k) ? placed[k] : std::pair<long, long>{0, 0};
        if (n != 1)
            failures.push_back(k + ": " + std::to_string(n) + " orders placed, not 1");
        if (got.size() != size_t(sent[k]))
            failures.push_back(k + ": " + std::to_string(got.size()) + " answers for " + std::to_string(sent[k]) +
                               " sends");
        int placing = 0;
        for (const Answer& a : got) {
            if (a.response != got[0].response)
                failures.push_back(k + ": copies got different answers: " + got[0].response + ", " + a.response);
            placing += !a.replayed;
            replays += a.replayed;
        }
        if (placing > 1)
            failures.push_back(k + ": more than one send placed the order");
        if (!got.empty()) {
            // (0 for a NULL response)
            pqxx::row r = q.exec_params1("SELECT ($1::jsonb ->> 'order_id')::bigint", got[0].response);
            long answered = r[0].as<long>(0);
            if (answered != order_id)
                failures.push_back(k + ": answered order " + std::to_string(answered) + ", placed " +
                                   std::to_string(order_id));
        }
    }
    for (const auto& [k, n] : placed)
        if (!run.orders.count(k))
            failures.push_back("an order for a key never sent: " + k);

    // A key reused with a different request: IK001, thrown at once.
    OrderService service("");
    try {
        service.place_order(run.keys[0], Order{-1, "other", 9});
        failures.push_back("a reused key with a different request was accepted");
    } catch (const pqxx::sql_error& e) {
        if (e.sqlstate() != "IK001" || !service.retries.empty())
            failures.push_back("reused key: " + e.sqlstate() + " after " + std::to_string(service.retries.size()) +
                               " kinds of retries, not IK001 at once");
    }
    long reused = q.exec_params1("SELECT count(*) FROM orders WHERE request_key = $1", run.keys[0])[0].as<long>();
    if (reused != 1)
        failures.push_back("the reused key placed " + std::to_string(reused) + " orders");

    if (run.terminated == 0 || retries["connection lost"] == 0)
        failures.push_back("no connection was lost mid-request: the run proved nothing about retries");
    if (retries["55P03"] == 0)
        failures.push_back("no retry waited behind the hung first attempt (55P03)");

    std::string causes;
    for (const auto& [cause, n] : retries)
        if (n)
            causes += (causes.empty() ? "" : ", ") + std::to_string(n) + " " + cause;
    long orders = 0;
    for (const auto& [k, p] : placed)
        orders += p.first;
    std::printf("  libpqxx %s: %d workers sent %zu requests for %d keys in %.1f s: %ld orders placed for %zu keys, %ld "
                "answers replayed\n",
                PQXX_VERSION, workers, run.sends.size(), n_keys, seconds, orders, placed.size(), replays);
    std::printf("  %ld connections killed, %ld statements cancelled; retries: %s\n", run.terminated, run.cancelled,
                causes.c_str());
    if (!failures.empty()) {
        for (size_t i = 0; i < failures.size() && i < 20; i++)
            std::printf("  FAILED %s\n", failures[i].c_str());
        std::printf("  %zu checks failed\n", failures.size());
        return 1;
    }
    std::printf("  OK   one order per key, every copy got the first answer, a reused key got IK001 (not retried)\n");
    return 0;
}
