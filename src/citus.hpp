// Citus (SPEC "Beyond one machine", README "Scaling out with Citus"): what
// pg_idem must know of the node it runs on.
//
// idem_distribute() distributes idem_claims and idem_holds by key, tokens by
// token and leases by name; every statement on them names its row by the
// distribution column, so Citus routes it to one shard, from the
// coordinator or inside a function Citus delegated to a worker. Three things
// stay with the coordinator, because each needs one source for the whole
// cluster: fences (idem_hold, idem_lease_acquire: every node has its own
// sequence, and fences from two of them could repeat or go backwards), and
// hot stock (shared memory and its tables are per node: two nodes would sell
// one item twice). On a worker those functions raise 0A000.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "nodes/pg_list.h"
}

namespace idem::citus {

// Whether this server loaded Citus (shared_preload_libraries): without it no
// database can have the extension, and nothing below asks the catalog.
bool loaded();

// Whether this database has the citus extension.
bool installed_here();

// Whether this database is a Citus worker: Citus installed and this node
// not the coordinator. Runs inside SPI_connect, as do all below;
// `extension_namespace` is pg_idem's schema (pg/spi.hpp).
bool on_worker(Oid extension_namespace);

// Raises 0A000 on a Citus worker, naming `function` and why it must be
// called on the coordinator.
void require_coordinator(Oid extension_namespace, const char* function, const char* why);

// Whether Citus manages `rel` (distributed or reference table).
bool is_citus_table(Oid extension_namespace, Oid rel);

// The shards of `rel`, distributed by hash, that are placed on this node, as
// qualified, quoted names (palloc'd in the current memory context), in shard
// order; NIL where Citus is not installed or `rel` is not distributed (a
// reference table's rows change through Citus only, on every node at once).
List* local_shards(Oid extension_namespace, Oid rel);

}  // namespace idem::citus
