// idem_stress: many clients replaying order requests, a large share of them
// retries of requests already sent, against one stored procedure that claims
// the request's key, deducts stock with idem_decrement and writes the order
// in one transaction. Clients retry 40001, 40P01, 55P03 and lost connections
// with the same key, like real clients. At the end the invariants are
// checked in SQL; any violation makes the exit status non-zero.
//
//   idem_stress --dsn "host=... dbname=..." [--clients 16] [--requests 4000]
//               [--retry-share 0.5] [--seed 1] [--chaos-ms 0] [--acked FILE]
//               [--setup] [--demo]
//
// --setup creates the schema `stress` (dropping an old one); without it the
// run continues an existing one (after a crash, say). --chaos-ms N
// terminates a random client's connection every N ms (a flaky network:
// some requests die before, some after their commit). --acked FILE appends
// every request key whose commit the client saw acknowledged.
#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
    std::string dsn;
    int clients = 16;
    int requests = 4000;
    double retry_share = 0.5;
    unsigned seed = 1;
    int chaos_ms = 0;
    std::string acked_file;
    bool setup = false;
    bool demo = false;
    int give_up_seconds = 120;  // how long a client keeps reconnecting
};

const char* schema_sql = R"SQL(
DROP SCHEMA IF EXISTS stress CASCADE;
CREATE EXTENSION IF NOT EXISTS pg_idem;
CREATE SCHEMA stress;
CREATE TABLE stress.stock (sku int PRIMARY KEY, amount bigint NOT NULL CHECK (amount >= 0));
INSERT INTO stress.stock SELECT g, 1000000 FROM generate_series(1, 50) g;
CREATE TABLE stress.initial_stock AS SELECT * FROM stress.stock;
-- No unique constraint on request_key: only pg_idem keeps retries out.
CREATE TABLE stress.orders (id bigserial PRIMARY KEY, request_key text NOT NULL, sku int NOT NULL, qty int NOT NULL);
CREATE FUNCTION stress.place_order(p_key text, p_sku int, p_qty int) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT idem_claim(p_key, 'stress', '1 day') THEN
        RETURN 'duplicate';
    END IF;
    IF idem_decrement('stress.stock', 'sku', p_sku, 'amount', p_qty) IS NULL THEN
        RAISE EXCEPTION 'sku % is short', p_sku USING ERRCODE = 'P0001';
    END IF;
    INSERT INTO stress.orders (request_key, sku, qty) VALUES (p_key, p_sku, p_qty);
    RETURN 'ordered';
END $$;
)SQL";

struct Request {
    std::string key;
    int sku;
    int qty;
};

struct Totals {
    std::atomic<long> sends{0}, ordered{0}, duplicates{0}, retries{0}, reconnects{0}, in_doubt{0};
};

bool retryable(const std::string& sqlstate)
{
    return sqlstate == "40001" || sqlstate == "40P01" || sqlstate == "55P03" || sqlstate == "57P01";
}

class Run {
public:
    explicit Run(Options o) : opt_(std::move(o)), rng_(opt_.seed)
    {
        for (int i = 0; i < opt_.requests; i++)
            requests_.push_back(Request{"order-" + std::to_string(opt_.seed) + "-" + std::to_string(i),
                                        1 + static_cast<int>((i * 7919u) % 50), 1 + i % 3});
        // The stream: every request once, and retries of requests already
        // sent, interleaved; a retry always follows its first send.
        std::uniform_real_distribution<double> coin(0, 1);
        int next_new = 0;
        while (next_new < opt_.requests) {
            if (next_new > 0 && coin(rng_) < opt_.retry_share) {
                std::uniform_int_distribution<int> earlier(0, next_new - 1);
                stream_.push_back(earlier(rng_));
            } else {
                stream_.push_back(next_new++);
            }
        }
        if (!opt_.acked_file.empty())
            acked_.open(opt_.acked_file, std::ios::app);
    }

    int execute()
    {
        auto start = std::chrono::steady_clock::now();
        std::vector<std::thread> threads;
        for (int c = 0; c < opt_.clients; c++)
            threads.emplace_back([this, c] { client(c); });
        std::thread chaos;
        if (opt_.chaos_ms > 0)
            chaos = std::thread([this] { chaos_monkey(); });
        std::thread progress([this, start] { report_progress(start); });
        for (auto& t : threads)
            t.join();
        done_ = true;
        if (chaos.joinable())
            chaos.join();
        progress.join();
        seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (failed_) {
            std::cerr << "idem_stress: a client gave up: " << failure_ << "\n";
            return 2;
        }
        return check();
    }

private:
    void client(int id)
    {
        std::unique_ptr<pqxx::connection> conn;
        for (;;) {
            size_t slot = next_.fetch_add(1);
            if (slot >= stream_.size() || failed_)
                return;
            const Request& r = requests_[stream_[slot]];
            totals_.sends++;
            send(id, conn, r);
        }
    }

    // One request, until it has an answer: the same key on every attempt.
    void send(int id, std::unique_ptr<pqxx::connection>& conn, const Request& r)
    {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.give_up_seconds);
        for (int attempt = 0;; attempt++) {
            try {
                if (!conn || !conn->is_open()) {
                    if (attempt > 0 || conn)
                        totals_.reconnects++;
                    conn = std::make_unique<pqxx::connection>(opt_.dsn);
                    std::lock_guard<std::mutex> lock(pids_mutex_);
                    if (pids_.size() <= static_cast<size_t>(id))
                        pids_.resize(id + 1);
                    pids_[id] = conn->backendpid();
                }
                pqxx::work txn(*conn);
                std::string answer =
                    txn.exec_params1("SELECT stress.place_order($1, $2, $3)", r.key, r.sku, r.qty)[0].as<std::string>();
                txn.commit();
                if (answer == "ordered")
                    totals_.ordered++;
                else
                    totals_.duplicates++;
                if (acked_.is_open()) {
                    std::lock_guard<std::mutex> lock(acked_mutex_);
                    acked_ << r.key << "\n";
                    acked_.flush();
                }
                return;
            } catch (const pqxx::in_doubt_error&) {
                totals_.in_doubt++;  // committed or not: the retry will tell
                conn.reset();
            } catch (const pqxx::broken_connection&) {
                conn.reset();
            } catch (const pqxx::sql_error& e) {
                if (!retryable(e.sqlstate())) {
                    fail("request " + r.key + ": " + e.sqlstate() + " " + e.what());
                    return;
                }
                totals_.retries++;
            } catch (const std::exception& e) {
                conn.reset();  // e.g. "connection lost" surfaced as another type
            }
            if (std::chrono::steady_clock::now() > deadline) {
                fail("request " + r.key + ": no answer within " + std::to_string(opt_.give_up_seconds) + " s");
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1000, 10 << std::min(attempt, 6))));
        }
    }

    void chaos_monkey()
    {
        std::mt19937 rng(opt_.seed + 1);
        std::unique_ptr<pqxx::connection> conn;
        while (!done_) {
            std::this_thread::sleep_for(std::chrono::milliseconds(opt_.chaos_ms));
            int pid = 0;
            {
                std::lock_guard<std::mutex> lock(pids_mutex_);
                if (!pids_.empty())
                    pid = pids_[std::uniform_int_distribution<size_t>(0, pids_.size() - 1)(rng)];
            }
            if (pid == 0)
                continue;
            try {
                if (!conn)
                    conn = std::make_unique<pqxx::connection>(opt_.dsn);
                pqxx::nontransaction(*conn).exec_params("SELECT pg_terminate_backend($1)", pid);
                dropped_++;
            } catch (const std::exception&) {
                conn.reset();
            }
        }
    }

    void report_progress(std::chrono::steady_clock::time_point start)
    {
        while (!done_) {
            for (int i = 0; i < 10 && !done_; i++)
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (done_ || opt_.demo)
                continue;
            double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            std::fprintf(stderr, "  %5.1f s  %7ld sends  %7ld ordered  %7ld duplicates  %5ld retries  %5ld reconnects\n", s,
                         totals_.sends.load(), totals_.ordered.load(), totals_.duplicates.load(),
                         totals_.retries.load(), totals_.reconnects.load());
        }
    }

    void fail(const std::string& why)
    {
        std::lock_guard<std::mutex> lock(pids_mutex_);
        if (!failed_)
            failure_ = why;
        failed_ = true;
    }

    // The invariants, in SQL, after every client is done.
    int check()
    {
        pqxx::connection conn(opt_.dsn);
        pqxx::nontransaction q(conn);
        long orders = q.exec1("SELECT count(*) FROM stress.orders")[0].as<long>();
        long keys_twice = q.exec1(
            "SELECT count(*) FROM (SELECT request_key FROM stress.orders GROUP BY 1 HAVING count(*) > 1) x")[0].as<long>();
        long foreign = 0;
        {
            // Every ordered key is one this run sent, and every request sent has its order.
            std::string keys = "{";
            for (int i = 0; i < opt_.requests; i++)
                keys += (i ? "," : "") + requests_[i].key;
            keys += "}";
            foreign = q.exec_params1(
                "SELECT count(*) FROM stress.orders WHERE request_key <> ALL ($1::text[])", keys)[0].as<long>();
            missing_ = q.exec_params1(
                "SELECT count(*) FROM unnest($1::text[]) k WHERE NOT EXISTS "
                "(SELECT 1 FROM stress.orders o WHERE o.request_key = k)", keys)[0].as<long>();
        }
        auto stock = q.exec1(
            "SELECT coalesce(sum(i.amount - s.amount), 0), coalesce(min(s.amount), 0), "
            "       (SELECT coalesce(sum(qty), 0) FROM stress.orders) "
            "FROM stress.stock s JOIN stress.initial_stock i USING (sku)");
        long drop = stock[0].as<long>(), lowest = stock[1].as<long>(), sold = stock[2].as<long>();
        long claims_without_order = q.exec1(
            "SELECT count(*) FROM idem_claims c WHERE c.scope = 'stress' "
            "AND NOT EXISTS (SELECT 1 FROM stress.orders o WHERE o.request_key = c.key)")[0].as<long>();
        long orders_without_claim = q.exec1(
            "SELECT count(*) FROM stress.orders o WHERE NOT EXISTS "
            "(SELECT 1 FROM idem_claims c WHERE c.scope = 'stress' AND c.key = o.request_key)")[0].as<long>();

        struct Check {
            const char* what;
            bool ok;
            std::string detail;
        } checks[] = {
            {"every request has exactly one order", keys_twice == 0 && missing_ == 0 && foreign == 0,
             std::to_string(orders) + " orders, " + std::to_string(keys_twice) + " keys ordered twice, " +
                 std::to_string(missing_) + " requests without an order"},
            {"stock never below zero", lowest >= 0, "lowest amount " + std::to_string(lowest)},
            {"units sold equal the stock's drop", sold == drop,
             std::to_string(sold) + " sold, stock dropped by " + std::to_string(drop)},
            {"idem_claims holds exactly the ordered keys", claims_without_order == 0 && orders_without_claim == 0,
             std::to_string(claims_without_order) + " claims without order, " + std::to_string(orders_without_claim) +
                 " orders without claim"},
        };
        bool all = true;
        long sends = totals_.sends.load();
        if (opt_.demo) {
            std::printf("\n  A flash sale with a flaky network: %d shoppers sent %ld requests for %d orders.\n",
                        opt_.clients, sends, opt_.requests);
            std::printf("  %ld of them were retries of a request already sent (double clicks, timeouts);\n",
                        sends - opt_.requests);
            std::printf("  %ld connections dropped mid-request and came back, %ld answers were lost in commit.\n\n",
                        dropped_.load(), totals_.in_doubt.load());
        } else {
            std::printf("\n  %-28s %10s\n", "requests (distinct)", std::to_string(opt_.requests).c_str());
            std::printf("  %-28s %10ld\n", "sends", sends);
            std::printf("  %-28s %10ld\n", "duplicates absorbed", totals_.duplicates.load());
            std::printf("  %-28s %10ld\n", "retries (40001/40P01/55P03)", totals_.retries.load());
            std::printf("  %-28s %10ld\n", "reconnects", totals_.reconnects.load());
            std::printf("  %-28s %10ld\n", "answers lost in commit", totals_.in_doubt.load());
            std::printf("  %-28s %10.0f\n", "sends per second", sends / seconds_);
            std::printf("\n");
        }
        for (const auto& c : checks) {
            std::printf("  %s %-44s (%s)\n", c.ok ? "OK  " : "FAIL", c.what, c.detail.c_str());
            all = all && c.ok;
        }
        if (opt_.demo)
            std::printf("\n  %d requests, %ld retries: exactly %ld orders, stock conserved: %s\n", opt_.requests,
                        sends - opt_.requests, orders, all ? "exactly one effect per request" : "VIOLATED");
        return all ? 0 : 1;
    }

    Options opt_;
    std::mt19937 rng_;
    std::vector<Request> requests_;
    std::vector<int> stream_;
    std::atomic<size_t> next_{0};
    Totals totals_;
    std::atomic<bool> done_{false}, failed_{false};
    std::atomic<long> dropped_{0};
    std::string failure_;
    std::mutex pids_mutex_, acked_mutex_;
    std::vector<int> pids_;
    std::ofstream acked_;
    double seconds_ = 0;
    long missing_ = 0;
};

Options parse(int argc, char** argv)
{
    Options o;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::cerr << "idem_stress: " << a << " needs a value\n";
                std::exit(64);
            }
            return argv[++i];
        };
        if (a == "--dsn") o.dsn = value();
        else if (a == "--clients") o.clients = std::stoi(value());
        else if (a == "--requests") o.requests = std::stoi(value());
        else if (a == "--retry-share") o.retry_share = std::stod(value());
        else if (a == "--seed") o.seed = static_cast<unsigned>(std::stoul(value()));
        else if (a == "--chaos-ms") o.chaos_ms = std::stoi(value());
        else if (a == "--acked") o.acked_file = value();
        else if (a == "--give-up") o.give_up_seconds = std::stoi(value());
        else if (a == "--setup") o.setup = true;
        else if (a == "--demo") o.demo = true;
        else {
            std::cerr << "usage: idem_stress --dsn DSN [--clients N] [--requests N] [--retry-share F] [--seed N]\n"
                         "                   [--chaos-ms N] [--acked FILE] [--give-up SECONDS] [--setup] [--demo]\n";
            std::exit(64);
        }
    }
    if (o.clients < 1 || o.requests < 1 || o.retry_share < 0 || o.retry_share >= 1) {
        std::cerr << "idem_stress: clients and requests must be positive, retry-share in [0, 1)\n";
        std::exit(64);
    }
    return o;
}

}  // namespace

int main(int argc, char** argv)
{
    Options opt = parse(argc, argv);
    try {
        if (opt.setup) {
            pqxx::connection conn(opt.dsn);
            pqxx::nontransaction(conn).exec(schema_sql);
        }
        return Run(opt).execute();
    } catch (const std::exception& e) {
        std::cerr << "idem_stress: " << e.what() << "\n";
        return 2;
    }
}
