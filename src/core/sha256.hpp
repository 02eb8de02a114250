// SHA-256 (FIPS 180-4), plain C++.
//
// pg_idem indexes claims by a hash of (scope, key) so that keys of any size fit
// in a btree. A cryptographic hash keeps collisions out of reach even for an
// adversary who chooses keys: see key_hash() in key.hpp.
#pragma once

#include <cstddef>
#include <cstdint>

namespace idem {

class Sha256 {
public:
    static constexpr size_t digest_size = 32;

    // Where the CPU has the SHA extensions (x86-64: SHA-NI), blocks are
    // compressed with them, at about a fifth of the instructions; the
    // portable code gives the same digest everywhere else.
    static bool sha_extensions_available();

    explicit Sha256(bool use_sha_extensions = sha_extensions_available());
    void update(const void* data, size_t size);
    void finish(uint8_t digest[digest_size]);

private:
    void compress(const uint8_t block[64]);

    bool use_sha_extensions_;
    uint32_t state_[8];
    uint8_t buffer_[64];
    size_t buffered_ = 0;
    uint64_t total_bytes_ = 0;
};

}  // namespace idem
