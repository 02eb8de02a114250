// Unit test of src/core/key_order: byte order, repeats, ties.
#include "core/key_order.hpp"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const char* what)
{
    if (!ok) {
        std::printf("FAIL: %s\n", what);
        failures++;
    }
}

struct Batch {
    std::vector<std::string> keys;
    std::vector<idem::Text> texts;
    std::vector<int> order, first;
    int distinct = 0;

    explicit Batch(std::vector<std::string> k) : keys(std::move(k))
    {
        for (const auto& s : keys)
            texts.push_back(idem::Text{s.data(), s.size()});
        order.resize(keys.size());
        first.resize(keys.size());
        distinct =
            idem::distinct_in_byte_order(texts.data(), static_cast<int>(keys.size()), order.data(), first.data());
    }
};

}  // namespace

int main()
{
    {
        Batch b({"b", "a", "ab", "a", std::string("a\0", 2), "\xff", "b"});
        check(b.distinct == 5, "five distinct keys");
        std::vector<std::string> sorted;
        for (int j = 0; j < b.distinct; j++)
            sorted.push_back(b.keys[b.order[j]]);
        check(sorted == std::vector<std::string>({"a", std::string("a\0", 2), "ab", "b", "\xff"}),
              "byte order: a prefix first, bytes unsigned");
        check(b.order[0] == 1 && b.first[3] == 1, "a repeat points at the first occurrence");
        check(b.first[6] == 0 && b.first[0] == 0, "first[i] = i for a first occurrence");
    }
    {
        Batch b({});
        check(b.distinct == 0, "an empty batch");
    }
    {
        // Random batches against a reference: std::string's order is byte order.
        std::mt19937 rng(7);
        for (int round = 0; round < 200; round++) {
            std::vector<std::string> keys;
            int n = static_cast<int>(rng() % 50);
            for (int i = 0; i < n; i++)
                keys.push_back(std::string(rng() % 3, static_cast<char>('a' + rng() % 3)));
            Batch b(keys);
            bool ok = true;
            for (int j = 1; j < b.distinct; j++)
                ok = ok && b.keys[b.order[j - 1]] < b.keys[b.order[j]];
            for (int i = 0; i < n; i++) {
                int f = b.first[i];
                ok = ok && b.keys[f] == b.keys[i] && f <= i && b.first[f] == f;
                for (int k = 0; k < f; k++)
                    ok = ok && b.keys[k] != b.keys[i];
            }
            check(ok, "random batch matches the reference");
        }
    }
    std::printf("%s\n", failures == 0 ? "key_order: all checks passed" : "key_order: FAILED");
    return failures == 0 ? 0 : 1;
}
