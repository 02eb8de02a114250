// The order in which idem_claim_many claims a batch (plain C++).
//
// Byte order of the keys is one total order that every batch follows, so two
// batches that share keys wait for each other instead of deadlocking.
#pragma once

#include "core/key.hpp"

namespace idem {

// Sorts the n keys into byte order and drops repeats. On return
// order[0 .. result) are the indices of the distinct keys in byte order, each
// the first occurrence of its key, and first[i] is the index of the first
// occurrence of keys[i]. `order` and `first` hold n elements each; nothing is
// allocated, so this never throws.
int distinct_in_byte_order(const Text* keys, int n, int* order, int* first) noexcept;

}  // namespace idem
