// Keys, scopes and TTLs: the arguments every pg_idem function shares.
//
// Plain C++: the bytes are viewed, not owned (they live in PostgreSQL memory),
// so these types have trivial destructors and may sit in frames that
// PostgreSQL's error handling longjmps over.
#pragma once

#include <cstddef>
#include <cstdint>

namespace idem {

// The documented maxima (README, "Keys, scopes and TTLs"). A key of 8 KiB and
// more must work; the index holds a fixed-size hash, so only memory bounds it.
inline constexpr size_t max_key_bytes = 65536;
inline constexpr size_t max_scope_bytes = 128;

struct Text {
    const char* data;
    size_t size;
};

struct Key {
    Text text;
};

struct Scope {
    Text text;
};

// A lease's name and owner (src/lease.cpp): btree-indexed as they are.
inline constexpr size_t max_lease_name_bytes = 1024;
struct LeaseName {
    Text text;
};
LeaseName checked_lease_name(const char* arg_name, const Text* text);

// A hot-stock item's name (src/stock.cpp).
inline constexpr size_t max_item_bytes = 128;
struct Item {
    Text text;
};

// Validate an argument: `arg_name` names it in the error ("key", "keys[3]").
// `text` is nullptr for SQL NULL. Throws idem::Error (22004, 22023, 22001).
Key checked_key(const char* arg_name, const Text* text);
Scope checked_scope(const char* arg_name, const Text* text);
Item checked_item(const char* arg_name, const Text* text);

// A TTL as PostgreSQL's interval holds it. Throws 22023 unless it is positive
// and at most max_ttl_years (so that now() + ttl can never overflow).
inline constexpr int max_ttl_years = 1000;
void check_ttl(const char* arg_name, int32_t months, int32_t days, int64_t microseconds);

// The claim index holds this hash of (scope, key) instead of the key itself:
// the first 128 bits of SHA-256 over the scope's length (4 bytes, big-endian),
// the scope and the key. The length prefix keeps ("ab","c") apart from
// ("a","bc"). Two different keys meet on a hash with probability 2^-64 only
// after 2^64 keys, and SHA-256 gives an adversary no shortcut; even then the
// claim code compares the real scope and key and refuses rather than answer
// for the wrong key.
struct KeyHash {
    uint8_t bytes[16];
};
KeyHash key_hash(Scope scope, Key key);

}  // namespace idem
