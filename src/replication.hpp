// Logical replication into a database that has pg_idem (SPEC "Beyond one
// machine"): while a subscription replicates one of pg_idem's tables into
// this database, the publisher's changes are the table's only writer. The
// purge leaves such a table to the publisher's purge: a row it deleted here
// that the publisher renews meanwhile would be missing when the application
// switches over (the renewal's UPDATE finds no row to apply to), and a
// retry would then be answered as new.
#pragma once

#include "pg/postgres.hpp"

namespace idem::replication {

// Whether an enabled subscription replicates `table` of the extension
// installed in `extension_namespace` into this database. Runs inside
// SPI_connect. A disabled subscription does not count: nothing arrives
// through it (re-enabling it after writes on both sides is a split brain
// that no check here can repair). Asked on every take and every purge
// transaction, so the subscribed tables are read once per backend and kept
// until pg_subscription or pg_subscription_rel changes (their
// invalidations).
bool subscribed(Oid extension_namespace, const char* table);

// Whether idem_stock_items or idem_stock_ledger is subscribed.
bool stock_subscribed(Oid extension_namespace);

}  // namespace idem::replication
