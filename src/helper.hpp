// The helpers (SPEC "Conditional decrement", "State transitions"):
// idem_decrement (decrement.cpp) and idem_transition (transition.cpp) each
// run one UPDATE of the row they address as (rel, key_column, key). This is
// what they share: that row target, validated against the catalog, and the
// per-backend cache of their prepared statements.
//
// The helpers run with the caller's rights and search path, exactly like the
// UPDATE they stand for, so privileges, row-level security and triggers apply
// as they would to plain SQL. Identifiers come from the catalog and are
// quoted; they are never spliced into SQL as given.
#pragma once

#include "pg/postgres.hpp"

extern "C" {
#include "access/attnum.h"
#include "executor/spi.h"
}

namespace idem::helper {

// A column of the target's relation: its number, base type and typmod.
struct Column {
    AttrNumber att;
    Oid type;  // base type (a domain's underlying type)
    Oid declared_type;
    int32 typmod;  // of the base type (a domain's typmod)
    Oid collation;
    const char* sql;  // quoted
    const char* name;
};

struct RowTarget {
    Oid relid;
    const char* rel_sql;  // quoted schema.name
    // The rows the helper's statements address: ONLY the table itself for a
    // plain table, whose unique index does not reach its inheritance
    // children; the whole of a partitioned table, whose unique index covers
    // every partition.
    const char* target_sql;
    const char* rel_name;  // for messages
    Column key_column;
    Oid key_arg_type;  // the type the caller passed the key as
    Datum key;
};

// Locks rel as the UPDATE will (RowExclusiveLock, held to the end of the
// transaction) and only then validates rel (22004 NULL, 42P01 missing or
// dropped while we waited, 42809 not a table), key_column (22004, 42703) and
// key (22004 NULL, 42804 not comparable in the column's type).
// check_target() checks the index and rules.
RowTarget row_target(FunctionCallInfo fcinfo, int rel_argno, int key_column_argno, int key_argno);

// A further column of the target's relation (22004 NULL name, 42703 missing).
Column target_column(const RowTarget& target, FunctionCallInfo fcinfo, int argno, const char* arg_name);

// "<key> = CAST($1 AS <key type>)": the key compared in the column's type.
const char* key_condition(const RowTarget& target);

// `type` as SQL names it without a typmod, schema-qualified: pg_catalog.bpchar
// and pg_catalog."bit", never `character` or `bit`, which SQL reads as
// char(1) and bit(1) and which would cut a value to one character.
const char* type_sql(Oid type);

// The key as a message shows it.
const char* key_for_message(const RowTarget& target);

// Per-backend plans for helper statements, keyed by what shapes them (the
// relation, columns and types). When the relation changes (ALTER TABLE,
// DROP, a new index, a renamed schema) the entry goes stale: its next use
// validates and prepares afresh. A plan is freed only when the top-level
// transaction ends, since a helper's UPDATE may be running it further up the
// stack; a dropped table's entry goes then too.
//
// Each plan slot is filled only with a complete, kept plan and is prepared
// when first needed: an error (a cancel) while preparing leaves it NULL,
// never half an entry, and the look-up is prepared only by a call that
// needs it.
enum class Kind : int { decrement = 1, transition = 2 };
struct PlanKey {
    Oid relid;
    AttrNumber key_att;
    AttrNumber other_att;
    Oid key_arg_type;
    Kind kind;
};
struct CachedPlans {
    PlanKey key;
    SPIPlanPtr change;  // the one-statement UPDATE ... RETURNING; NULL until prepared
    SPIPlanPtr look;  // what the row holds when the UPDATE changed nothing; NULL until needed
    bool target_checked;  // check_target() passed
    bool stale;  // the relation changed since
};

// Registers the cache's invalidation callbacks; from _PG_init.
void init();
// The cached plans for `key`, or an entry with both plans NULL to fill. A
// caller copies the plans it runs: a nested call may replace them meanwhile.
CachedPlans* cached_plans(const PlanKey& key);
// What the plans rely on, checked once per cached entry: 42P10 unless the
// key column carries a unique index or primary key on exactly that column,
// immediate (a DEFERRABLE one lets two rows share a key until commit),
// without predicate or expression; 0A000 if an ON UPDATE DO INSTEAD rule
// replaces the UPDATE. When `value_column` (argument `value_arg`: the amount
// or state column) is the one with the index, the hint says they look swapped.
void check_target(const RowTarget& target, const Column& value_column, const char* value_arg, CachedPlans* plans);
// Runs a helper's UPDATE ... RETURNING and returns how many rows it changed:
// 0 or 1. More would mean the key did not address one row after all: 21000,
// which aborts the write rather than report or repeat it.
uint64 run_change(const RowTarget& target, SPIPlanPtr change, Datum* values);
// Runs the look-up a helper makes when its UPDATE changed nothing: P0002
// when no row has the key (none the caller may see, as with plain SQL);
// otherwise the row is in SPI_tuptable.
void run_look(const RowTarget& target, SPIPlanPtr look, Datum* values);

}  // namespace idem::helper
