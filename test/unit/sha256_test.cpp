// Unit test of src/core/sha256.cpp (plain C++, no server): the FIPS 180-4
// test vectors, and the SHA-extension path against the portable one on
// random messages of every length up to 1,000 bytes fed in random pieces.
// The index of idem_claims holds these digests: the two paths must never
// disagree, or a key claimed on one machine would not be found on another.
#include "core/sha256.hpp"

#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

int failures = 0;

std::string hex(const uint8_t* d, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    std::string out;
    for (size_t i = 0; i < n; i++) {
        out += digits[d[i] >> 4];
        out += digits[d[i] & 15];
    }
    return out;
}

std::string digest(bool extensions, const std::string& message, const std::vector<size_t>& pieces = {})
{
    idem::Sha256 sha(extensions);
    size_t at = 0;
    for (size_t piece : pieces) {
        if (at + piece > message.size())
            break;
        sha.update(message.data() + at, piece);
        at += piece;
    }
    sha.update(message.data() + at, message.size() - at);
    uint8_t d[idem::Sha256::digest_size];
    sha.finish(d);
    return hex(d, sizeof d);
}

void expect(const std::string& what, const std::string& got, const std::string& want)
{
    if (got != want) {
        std::printf("FAIL %s: got %s, want %s\n", what.c_str(), got.c_str(), want.c_str());
        failures++;
    }
}

}  // namespace

int main()
{
    const struct {
        std::string message;
        const char* digest;
    } vectors[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {std::string(1000000, 'a'), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
    };
    for (bool extensions : {false, true})
        for (const auto& v : vectors)
            expect(std::string(extensions ? "extensions" : "portable") + " vector of " +
                       std::to_string(v.message.size()) + " bytes",
                   digest(extensions, v.message), v.digest);

    std::mt19937 rng(20261125);
    for (size_t length = 0; length <= 1000; length++) {
        std::string message(length, '\0');
        for (char& c : message)
            c = static_cast<char>(rng());
        std::vector<size_t> pieces;
        for (int i = 0; i < 4; i++)
            pieces.push_back(rng() % 100);
        expect("random message of " + std::to_string(length) + " bytes", digest(true, message, pieces),
               digest(false, message));
    }

    std::printf("sha256: SHA extensions %s on this CPU; %s\n",
                idem::Sha256::sha_extensions_available() ? "used" : "not available (portable path only)",
                failures == 0 ? "all digests agree" : "MISMATCH");
    return failures == 0 ? 0 : 1;
}
