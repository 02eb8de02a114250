#include "core/key.hpp"

#include "core/error.hpp"
#include "core/sha256.hpp"

#include <cstring>
#include <string>

namespace idem {
namespace {

Text checked_text(const char* arg_name, const Text* text, size_t max_bytes)
{
    if (text == nullptr)
        throw Error(sqlstate::null_value_not_allowed, std::string(arg_name) + " must not be NULL");
    if (text->size == 0)
        throw Error(sqlstate::invalid_parameter_value, std::string(arg_name) + " must not be empty");
    if (text->size > max_bytes)
        throw Error(sqlstate::string_data_right_truncation,
                    std::string(arg_name) + " is too long: " + std::to_string(text->size) + " bytes, at most " +
                        std::to_string(max_bytes) + " are allowed");
    return *text;
}

}  // namespace

Key checked_key(const char* arg_name, const Text* text)
{
    return Key{checked_text(arg_name, text, max_key_bytes)};
}

Scope checked_scope(const char* arg_name, const Text* text)
{
    return Scope{checked_text(arg_name, text, max_scope_bytes)};
}

LeaseName checked_lease_name(const char* arg_name, const Text* text)
{
    return LeaseName{checked_text(arg_name, text, max_lease_name_bytes)};
}

Item checked_item(const char* arg_name, const Text* text)
{
    return Item{checked_text(arg_name, text, max_item_bytes)};
}

void check_ttl(const char* arg_name, int32_t months, int32_t days, int64_t microseconds)
{
    // Judge the interval as PostgreSQL orders intervals: a month is 30 days.
    constexpr __int128 usec_per_day = __int128(86400) * 1000000;
    constexpr __int128 max_usec = __int128(max_ttl_years) * 12 * 30 * usec_per_day;
    __int128 span = __int128(months) * 30 * usec_per_day + __int128(days) * usec_per_day + microseconds;
    if (span <= 0)
        throw Error(sqlstate::invalid_parameter_value, std::string(arg_name) + " must be a positive interval",
                    "Claims and tokens take NULL for no expiry; leases always expire.");
    // Each field on its own too: now() + ttl adds them one at a time.
    auto field_ok = [&](__int128 v) { return v >= -max_usec && v <= max_usec; };
    if (span > max_usec || !field_ok(__int128(months) * 30 * usec_per_day) ||
        !field_ok(__int128(days) * usec_per_day) || !field_ok(microseconds))
        throw Error(sqlstate::invalid_parameter_value,
                    std::string(arg_name) + " must be at most " + std::to_string(max_ttl_years) + " years");
}

KeyHash key_hash(Scope scope, Key key)
{
    uint8_t length_be[4];
    auto n = static_cast<uint32_t>(scope.text.size);
    for (int i = 0; i < 4; i++)
        length_be[i] = uint8_t(n >> (24 - 8 * i));

    Sha256 sha;
    sha.update(length_be, sizeof length_be);
    sha.update(scope.text.data, scope.text.size);
    sha.update(key.text.data, key.text.size);
    uint8_t digest[Sha256::digest_size];
    sha.finish(digest);

    KeyHash hash;
    std::memcpy(hash.bytes, digest, sizeof hash.bytes);
    return hash;
}

}  // namespace idem
