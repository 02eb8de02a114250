// idem_stress: many clients replaying order requests, a large share of them
// retries of requests already sent, against the stored procedure in
// test/stress/shop.sql, which claims the request's key (idem_begin),
// deducts stock with idem_decrement, writes the order and stores the answer
// (idem_finish) in one transaction. Clients retry 40001, 40P01, 55P03 and
// lost connections with the same key, like real clients. At the end the
// invariants are checked in SQL; any violation makes the exit status 1.
//
//   idem_stress --dsn "host=... dbname=..." [--clients 16] [--requests 4000]
//               [--retry-share 0.5] [--seed 1] [--stock 1000000]
//               [--chaos-ms 0] [--acked FILE] [--give-up 120]
//               [--setup test/stress/shop.sql] [--demo]
//
// --setup FILE creates the shop (FILE drops an old one) and stocks its 50
// products with --stock units each; without it the run continues an
// existing shop (after a crash, say). --chaos-ms N terminates a random
// client's connection every N ms (a flaky network: some requests die before
// their commit, some after it). --acked FILE appends every request key whose
// commit the client saw acknowledged. --demo prints the result for people.
#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
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
    long stock = 1000000;
    int chaos_ms = 0;
    std::string acked_file;
    std::string setup_file;
    bool demo = false;
    int give_up_seconds = 120;  // how long a client keeps trying one request
};

struct Request {
    std::string key;
    int sku;
    int qty;
};

// What place_order answered: the first answer a request got is kept, and
// every later answer to the same request must equal it.
struct Answer {
    bool known = false;
    std::string status;
    long order_id = 0;  // 0: none (sold out)
};

struct Totals {
    std::atomic<long> sends{0}, ordered{0}, sold_out{0}, replayed{0}, retries{0}, reconnects{0}, in_doubt{0},
        differing_answers{0};
};

bool retryable(const std::string& sqlstate)
{
    return sqlstate == "40001" || sqlstate == "40P01" || sqlstate == "55P03" || sqlstate == "57P01";
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error("cannot read " + path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// A SQL array literal of the given strings (keys and statuses hold no quotes,
// commas or braces).
std::string array_literal(const std::vector<std::string>& items)
{
    std::string out = "{";
    for (size_t i = 0; i < items.size(); i++)
        out += (i ? "," : "") + items[i];
    return out + "}";
}

class Run {
public:
    explicit Run(Options o) : opt_(std::move(o)), rng_(opt_.seed), answers_(opt_.requests)
    {
        for (int i = 0; i < opt_.requests; i++)
            requests_.push_back(Request{"order-" + std::to_string(opt_.seed) + "-" + std::to_string(i),
                                        1 + static_cast<int>((i * 7919u) % 50), 1 + i % 3});
        // The stream: every request once, and retries of requests already
        // sent, interleaved; a retry always follows its first send. Then late
        // retries of requests from the whole run (a queue redelivering old
        // messages): retries that arrive long after the first attempt catch
        // what quick ones cannot, such as a claim that expires too soon.
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
        std::uniform_int_distribution<int> any(0, opt_.requests - 1);
        for (int late = 0; late < opt_.requests / 10; late++)
            stream_.push_back(any(rng_));
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
        // The server may be restarting (a crash test): check once it is back.
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.give_up_seconds);
        for (;;) {
            try {
                return check();
            } catch (const pqxx::broken_connection& e) {
                if (std::chrono::steady_clock::now() > deadline)
                    throw;
                std::this_thread::sleep_for(std::chrono::milliseconds(200));
            }
        }
    }

private:
    void client(int id)
    {
        std::unique_ptr<pqxx::connection> conn;
        for (;;) {
            size_t slot = next_.fetch_add(1);
            if (slot >= stream_.size() || failed_)
                return;
            totals_.sends++;
            send(id, conn, stream_[slot]);
        }
    }

    // One request, until it has an answer: the same key on every attempt.
    void send(int id, std::unique_ptr<pqxx::connection>& conn, int request)
    {
        const Request& r = requests_[request];
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(opt_.give_up_seconds);
        for (int attempt = 0;; attempt++) {
            try {
                if (!conn || !conn->is_open()) {
                    if (attempt > 0 || conn)
                        totals_.reconnects++;
                    conn = std::make_unique<pqxx::connection>(opt_.dsn);
                    std::lock_guard<std::mutex> lock(mutex_);
                    if (pids_.size() <= static_cast<size_t>(id))
                        pids_.resize(id + 1);
                    pids_[id] = conn->backendpid();
                }
                pqxx::work txn(*conn);
                pqxx::row row =
                    txn.exec_params1("SELECT status, coalesce(order_id, 0), replayed FROM shop.place_order($1, $2, $3)",
                                     r.key, r.sku, r.qty);
                txn.commit();
                record(request, row[0].as<std::string>(), row[1].as<long>(), row[2].as<bool>());
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
            } catch (const std::exception&) {
                conn.reset();  // e.g. "connection lost" surfaced as another type
            }
            if (std::chrono::steady_clock::now() > deadline) {
                fail("request " + r.key + ": no answer within " + std::to_string(opt_.give_up_seconds) + " s");
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(std::min(1000, 10 << std::min(attempt, 6))));
        }
    }

    void record(int request, const std::string& status, long order_id, bool replayed)
    {
        (replayed ? totals_.replayed : status == "ordered" ? totals_.ordered : totals_.sold_out)++;
        std::lock_guard<std::mutex> lock(mutex_);
        Answer& first = answers_[request];
        if (!first.known)
            first = Answer{true, status, order_id};
        else if (first.status != status || first.order_id != order_id)
            totals_.differing_answers++;
        if (acked_.is_open()) {
            acked_ << requests_[request].key << "\n";
            acked_.flush();
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
                std::lock_guard<std::mutex> lock(mutex_);
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
            std::fprintf(
                stderr,
                "  %5.1f s  %7ld sends  %7ld ordered  %6ld sold out  %7ld replayed  %5ld retries  %5ld reconnects\n", s,
                totals_.sends.load(), totals_.ordered.load(), totals_.sold_out.load(), totals_.replayed.load(),
                totals_.retries.load(), totals_.reconnects.load());
        }
    }

    void fail(const std::string& why)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!failed_)
            failure_ = why;
        failed_ = true;
    }

    // The invariants, in SQL, after every client is done.
    int check()
    {
        pqxx::connection conn(opt_.dsn);
        pqxx::nontransaction q(conn);
        std::vector<std::string> keys, statuses, order_ids, skus, qtys;
        for (int i = 0; i < opt_.requests; i++) {
            keys.push_back(requests_[i].key);
            statuses.push_back('"' + answers_[i].status + '"');
            order_ids.push_back(std::to_string(answers_[i].order_id));
            skus.push_back(std::to_string(requests_[i].sku));
            qtys.push_back(std::to_string(requests_[i].qty));
        }
        // Per request sent: its claim holds an answer; it has at most one
        // order, for the product and quantity it asked for; the answer says
        // 'ordered' exactly when that order exists and names it; 'sold out'
        // only if the product holds fewer units than asked even now (stock
        // only falls); and the answer the client got is the stored one.
        pqxx::row per_request = q.exec_params1(R"SQL(
            WITH sent AS (
                SELECT k AS key, s AS status, o AS order_id, p AS sku, n AS qty
                FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::int[]) AS u(k, s, o, p, n)),
            ordered AS (
                SELECT o.request_key AS key, count(*) AS orders, min(o.order_id) AS order_id,
                       bool_and(o.sku = s.sku AND o.qty = s.qty) AS as_asked
                FROM shop.orders o JOIN sent s ON s.key = o.request_key GROUP BY o.request_key),
            outcome AS (
                SELECT s.status AS answer_status, s.order_id AS answer_order, s.qty, st.amount AS stock_left,
                       c.response ->> 'status' AS stored_status,
                       coalesce((c.response ->> 'order_id')::bigint, 0) AS stored_order,
                       coalesce(o.orders, 0) AS orders, o.order_id, o.as_asked
                FROM sent s
                LEFT JOIN idem_claims c ON c.scope = 'shop.orders' AND c.key = s.key
                LEFT JOIN ordered o ON o.key = s.key
                LEFT JOIN shop.stock st ON st.sku = s.sku)
            SELECT count(*) FILTER (WHERE stored_status IS NULL),
                   count(*) FILTER (WHERE orders > 1),
                   count(*) FILTER (WHERE (stored_status = 'ordered') <> (orders = 1)
                                       OR (orders = 1 AND (order_id <> stored_order OR NOT as_asked))),
                   count(*) FILTER (WHERE answer_status <> stored_status OR answer_order <> stored_order),
                   count(*) FILTER (WHERE stored_status = 'ordered'),
                   count(*) FILTER (WHERE stored_status = 'sold out'),
                   count(*) FILTER (WHERE stored_status = 'sold out' AND stock_left >= qty)
            FROM outcome)SQL",
                                               array_literal(keys), array_literal(statuses), array_literal(order_ids),
                                               array_literal(skus), array_literal(qtys));
        long unanswered = per_request[0].as<long>(), ordered_twice = per_request[1].as<long>(),
             orders_not_as_answered = per_request[2].as<long>(), answers_not_stored = per_request[3].as<long>(),
             orders = per_request[4].as<long>(), sold_out = per_request[5].as<long>(),
             false_sold_out = per_request[6].as<long>();
        // Orders and claims of requests nobody sent.
        long strangers = q.exec_params1(R"SQL(
            WITH sent AS (SELECT unnest($1::text[]) AS key)
            SELECT (SELECT count(*) FROM shop.orders o WHERE NOT EXISTS (SELECT 1 FROM sent WHERE key = o.request_key))
                 + (SELECT count(*) FROM idem_claims c
                    WHERE c.scope = 'shop.orders' AND NOT EXISTS (SELECT 1 FROM sent WHERE key = c.key)))SQL",
                                        array_literal(keys))[0]
                             .as<long>();
        // Per product: the units its orders hold equal its stock's drop.
        pqxx::row stock = q.exec1(R"SQL(
            SELECT coalesce(min(s.amount), 0),
                   count(*) FILTER (WHERE i.amount - s.amount <> coalesce(o.units, 0)),
                   coalesce(sum(o.units), 0), coalesce(sum(i.amount - s.amount), 0)
            FROM shop.stock s JOIN shop.initial_stock i USING (sku)
            LEFT JOIN (SELECT sku, sum(qty) AS units FROM shop.orders GROUP BY sku) o USING (sku))SQL");
        long lowest = stock[0].as<long>(), products_off = stock[1].as<long>(), sold = stock[2].as<long>(),
             drop = stock[3].as<long>();

        struct Check {
            const char* what;
            bool ok;
            std::string detail;
        } checks[] = {
            {"every request has exactly one outcome",
             unanswered == 0 && ordered_twice == 0 && orders_not_as_answered == 0 && strangers == 0,
             std::to_string(orders) + " ordered + " + std::to_string(sold_out) + " sold out; " +
                 std::to_string(unanswered) + " unanswered, " + std::to_string(ordered_twice) + " ordered twice, " +
                 std::to_string(orders_not_as_answered) + " orders not as answered or asked"},
            {"every retry got the first attempt's answer", totals_.differing_answers == 0 && answers_not_stored == 0,
             std::to_string(totals_.differing_answers.load()) + " differing answers, " +
                 std::to_string(answers_not_stored) + " not the stored one"},
            {"every 'sold out' was true", false_sold_out == 0,
             std::to_string(false_sold_out) + " while the product had the units"},
            {"stock never below zero", lowest >= 0, "lowest amount " + std::to_string(lowest)},
            {"units sold equal each product's stock drop", products_off == 0,
             std::to_string(sold) + " sold, stock dropped by " + std::to_string(drop) + ", " +
                 std::to_string(products_off) + " products off"},
        };
        bool all = true;
        for (const auto& c : checks)
            all = all && c.ok;
        long sends = totals_.sends.load();
        if (opt_.demo) {
            std::printf("  %d shoppers on a flaky network sent %ld requests for %d orders:\n", opt_.clients, sends,
                        opt_.requests);
            std::printf("  %ld were retries of a request already sent (double clicks, timeouts, redeliveries);\n",
                        sends - opt_.requests);
            std::printf("  %ld connections dropped mid-request, %ld of them while committing,\n", dropped_.load(),
                        totals_.in_doubt.load());
            std::printf("  where only a retry could tell whether the order had gone through.\n\n");
        } else {
            std::printf("\n  %-30s %10d\n", "requests (distinct)", opt_.requests);
            std::printf("  %-30s %10ld\n", "sends", sends);
            std::printf("  %-30s %10ld\n", "ordered", totals_.ordered.load());
            std::printf("  %-30s %10ld\n", "sold out", totals_.sold_out.load());
            std::printf("  %-30s %10ld\n", "retries answered from claim", totals_.replayed.load());
            std::printf("  %-30s %10ld\n", "retries (40001/40P01/55P03)", totals_.retries.load());
            std::printf("  %-30s %10ld\n", "reconnects", totals_.reconnects.load());
            std::printf("  %-30s %10ld\n", "connections dropped (chaos)", dropped_.load());
            std::printf("  %-30s %10ld\n", "answers lost in commit", totals_.in_doubt.load());
            std::printf("  %-30s %10.0f\n\n", "sends per second", sends / seconds_);
        }
        for (const auto& c : checks)
            std::printf("  %s %-44s (%s)\n", c.ok ? "OK  " : "FAIL", c.what, c.detail.c_str());
        if (opt_.demo && all)
            std::printf("\n  Exactly one effect per request: %ld requests, %d outcomes (%ld orders, %ld sold out),"
                        " stock conserved.\n",
                        sends, opt_.requests, orders, sold_out);
        else if (opt_.demo)
            std::printf("\n  VIOLATED: a request took effect more or less than once.\n");
        return all ? 0 : 1;
    }

    Options opt_;
    std::mt19937 rng_;
    std::vector<Request> requests_;
    std::vector<int> stream_;
    std::vector<Answer> answers_;  // by request, under mutex_
    std::atomic<size_t> next_{0};
    Totals totals_;
    std::atomic<bool> done_{false}, failed_{false};
    std::atomic<long> dropped_{0};
    std::string failure_;
    std::mutex mutex_;  // answers_, pids_, failure_, acked_
    std::vector<int> pids_;
    std::ofstream acked_;
    double seconds_ = 0;
};

// Creates the shop from `file` and stocks it.
void setup(const Options& opt)
{
    pqxx::connection conn(opt.dsn);
    pqxx::nontransaction q(conn);
    q.exec(read_file(opt.setup_file));
    q.exec_params("INSERT INTO shop.stock SELECT sku, $1 FROM generate_series(1, 50) sku", opt.stock);
    q.exec("INSERT INTO shop.initial_stock SELECT * FROM shop.stock");
}

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
        if (a == "--dsn")
            o.dsn = value();
        else if (a == "--clients")
            o.clients = std::stoi(value());
        else if (a == "--requests")
            o.requests = std::stoi(value());
        else if (a == "--retry-share")
            o.retry_share = std::stod(value());
        else if (a == "--seed")
            o.seed = static_cast<unsigned>(std::stoul(value()));
        else if (a == "--stock")
            o.stock = std::stol(value());
        else if (a == "--chaos-ms")
            o.chaos_ms = std::stoi(value());
        else if (a == "--acked")
            o.acked_file = value();
        else if (a == "--give-up")
            o.give_up_seconds = std::stoi(value());
        else if (a == "--setup")
            o.setup_file = value();
        else if (a == "--demo")
            o.demo = true;
        else {
            std::cerr << "usage: idem_stress --dsn DSN [--clients N] [--requests N] [--retry-share F] [--seed N]\n"
                         "                   [--stock N] [--chaos-ms N] [--acked FILE] [--give-up SECONDS]\n"
                         "                   [--setup test/stress/shop.sql] [--demo]\n";
            std::exit(64);
        }
    }
    if (o.clients < 1 || o.requests < 1 || o.retry_share < 0 || o.retry_share >= 1 || o.stock < 0) {
        std::cerr << "idem_stress: clients and requests must be positive, retry-share in [0, 1), stock >= 0\n";
        std::exit(64);
    }
    return o;
}

}  // namespace

int main(int argc, char** argv)
{
    Options opt = parse(argc, argv);
    try {
        if (!opt.setup_file.empty())
            setup(opt);
        return Run(opt).execute();
    } catch (const std::exception& e) {
        std::cerr << "idem_stress: " << e.what() << "\n";
        return 2;
    }
}
