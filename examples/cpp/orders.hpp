// An order request handler that uses pg_idem with libpqxx.
//
// place_order() places an order exactly once per request key, however often
// the same request arrives (a client retrying after a timeout, a double
// click, a redelivered message), and answers every copy with the first
// answer.
//
//   OrderService service("");           // libpq's connection string; "" reads PG*
//   Answer a = service.place_order("req-1", Order{7, "book", 2});
//
// examples/cpp/driver.cpp runs it with 8 workers, duplicates and dropped
// connections, and checks that every key placed one order.
#pragma once

#include <map>
#include <memory>
#include <string>

#include <pqxx/pqxx>

struct Order {
    int customer;
    std::string product;
    int qty;
};

struct Answer {
    std::string response;  // the stored jsonb, as PostgreSQL prints it
    bool replayed;  // from an earlier attempt of this request, not this call
};

// One connection, used by one thread at a time.
class OrderService {
public:
    explicit OrderService(std::string conninfo) : conninfo_(std::move(conninfo)) {}

    Answer place_order(const std::string& key, const Order& order);

    std::map<std::string, long> retries;  // cause -> count, for the driver's report

private:
    Answer attempt(const std::string& key, const Order& order);

    std::string conninfo_;
    std::unique_ptr<pqxx::connection> conn_;
};
