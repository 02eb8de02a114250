#include "core/key_order.hpp"

#include <algorithm>
#include <cstring>

namespace idem {
namespace {

int compare_bytes(const Text& x, const Text& y)
{
    int c = std::memcmp(x.data, y.data, std::min(x.size, y.size));
    if (c != 0)
        return c;
    return x.size < y.size ? -1 : x.size > y.size ? 1 : 0;
}

}  // namespace

int distinct_in_byte_order(const Text* keys, int n, int* order, int* first) noexcept
{
    for (int i = 0; i < n; i++)
        order[i] = i;
    // Ties by index, so the first occurrence of a key comes first.
    std::sort(order, order + n, [&](int a, int b) {
        int c = compare_bytes(keys[a], keys[b]);
        return c != 0 ? c < 0 : a < b;
    });
    int distinct = 0;
    for (int j = 0; j < n; j++) {
        int i = order[j];
        if (distinct > 0 && compare_bytes(keys[i], keys[order[distinct - 1]]) == 0) {
            first[i] = order[distinct - 1];
            continue;
        }
        first[i] = i;
        order[distinct++] = i;
    }
    return distinct;
}

}  // namespace idem
