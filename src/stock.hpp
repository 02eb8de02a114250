// Hot stock: escrow counts in shared memory over an append-only ledger
// (src/stock.cpp explains the design).
#pragma once

#include "pg/postgres.hpp"

namespace idem::stock {

// From _PG_init while shared_preload_libraries loads pg_idem.
void init_preloaded();

// Folds at most `max_rows` committed ledger rows into their items' levels;
// the purge worker calls it. Runs inside SPI_connect. Returns rows folded.
int64 fold_committed_ledger(Oid extension_namespace, int64 max_rows);

}  // namespace idem::stock
