#include "helper.hpp"

#include "pg/args.hpp"

extern "C" {
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "parser/parse_coerce.h"
#include "rewrite/prs2lock.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
}

#include <cstring>

namespace idem::helper {
namespace {

HTAB* plans = nullptr;  // PlanKey -> CachedPlans, in CacheMemoryContext

// Plans replaced while one of them may still be running further up the
// stack: a trigger of the helper's own UPDATE can change the table's catalog
// entry (GRANT, an ANALYZE, or a cache reset) and call the helper again,
// which prepares afresh. They are freed when the top-level transaction ends,
// when no helper can be running.
List* retired = NIL;  // of SPIPlanPtr, in CacheMemoryContext
bool some_entry_stale = false;  // since the last transaction end

void retire(SPIPlanPtr plan)
{
    if (plan == nullptr)
        return;
    MemoryContext old = MemoryContextSwitchTo(CacheMemoryContext);
    retired = lappend(retired, plan);
    MemoryContextSwitchTo(old);
}

void mark_stale(Oid relid)
{
    if (plans == nullptr)
        return;
    HASH_SEQ_STATUS scan;
    hash_seq_init(&scan, plans);
    while (auto* entry = static_cast<CachedPlans*>(hash_seq_search(&scan)))
        if (relid == InvalidOid || entry->key.relid == relid) {
            entry->stale = true;
            some_entry_stale = true;
        }
}

// A relation changed (ALTER TABLE, DROP, a new or dropped index or rule,
// GRANT, VACUUM's statistics), or all did (InvalidOid: a cache reset): its
// entries must be validated and prepared again. The plans may be running
// right now (invalidations arrive while locks are taken), so they are only
// marked here.
void relation_changed(Datum, Oid relid)
{
    mark_stale(relid);
}

// A schema was renamed or dropped: the plans' SQL names its tables by
// schema, and PostgreSQL re-parses that SQL when it replans.
void schema_changed(Datum, int, uint32)
{
    mark_stale(InvalidOid);
}

// At the end of a top-level transaction no helper is running: free the
// retired plans, and drop the stale entries with theirs, so that a dropped
// table leaves nothing behind (a stale entry of a live table is simply
// prepared again on its next use).
void at_transaction_end(XactEvent event, void*)
{
    if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT && event != XACT_EVENT_PREPARE)
        return;
    ListCell* cell;
    foreach (cell, retired)
        SPI_freeplan(static_cast<SPIPlanPtr>(lfirst(cell)));
    list_free(retired);
    retired = NIL;
    if (!some_entry_stale)
        return;
    HASH_SEQ_STATUS scan;
    hash_seq_init(&scan, plans);
    while (auto* entry = static_cast<CachedPlans*>(hash_seq_search(&scan))) {
        if (!entry->stale)
            continue;
        if (entry->change != nullptr)
            SPI_freeplan(entry->change);
        if (entry->look != nullptr)
            SPI_freeplan(entry->look);
        hash_search(plans, &entry->key, HASH_REMOVE, nullptr);  // allowed for the current entry of a scan
    }
    some_entry_stale = false;
}

bool has_unique_index_on(Relation rel, AttrNumber att)
{
    List* indexes = RelationGetIndexList(rel);
    bool found = false;
    ListCell* cell;
    foreach (cell, indexes) {
        HeapTuple tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(cell)));
        if (!HeapTupleIsValid(tuple))
            continue;
        auto* index = reinterpret_cast<Form_pg_index>(GETSTRUCT(tuple));
        // Exactly that column, enforced for every row at every moment: no
        // expression, no predicate, valid, unique and immediate.
        if (index->indisunique && index->indimmediate && index->indisvalid && index->indnkeyatts == 1 &&
            index->indkey.values[0] == att && heap_attisnull(tuple, Anum_pg_index_indexprs, nullptr) &&
            heap_attisnull(tuple, Anum_pg_index_indpred, nullptr))
            found = true;
        ReleaseSysCache(tuple);
        if (found)
            break;
    }
    list_free(indexes);
    return found;
}

// Whether a rule replaces the table's UPDATE (DO INSTEAD): the helper would
// then report what the rule did, not its UPDATE. (A DO ALSO rule runs
// beside the UPDATE, whose result stands, as in plain SQL.)
bool update_is_replaced_by_rule(Relation rel)
{
    if (rel->rd_rules == nullptr)
        return false;
    for (int i = 0; i < rel->rd_rules->numLocks; i++) {
        const RewriteRule* rule = rel->rd_rules->rules[i];
        if (rule->event == CMD_UPDATE && rule->isInstead)
            return true;
    }
    return false;
}

[[noreturn]] void refuse_rewritten(const RowTarget& t)
{
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("rel: the UPDATE of \"%s\" is replaced by an ON UPDATE DO INSTEAD rule", t.rel_name),
                    errhint("The helpers need a table whose UPDATE runs as written.")));
    pg_unreachable();
}

// A statement that did not run as the one written (SPI says what ran
// instead). Errors are raised, not returned, and check_target() refuses
// rewriting rules, so only a rewrite nobody foresaw gets here: refused
// like one, with the table named.
[[noreturn]] void refuse_result(const RowTarget& t, const char* statement, int rc)
{
    ereport(ERROR, (errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
                    errmsg("rel: the %s of \"%s\" did not run as written (%s)", statement, t.rel_name,
                           SPI_result_code_string(rc)),
                    errhint("The helpers need a table whose statements run as written.")));
    pg_unreachable();
}

// The table's columns, for a hint: "a, b, c" (the first 20).
const char* column_list(Oid relid)
{
    StringInfoData list;
    initStringInfo(&list);
    int n = 0;
    for (AttrNumber att = 1; n < 20; att++) {
        HeapTuple tuple = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(att));
        if (!HeapTupleIsValid(tuple))
            break;
        auto* attr = reinterpret_cast<Form_pg_attribute>(GETSTRUCT(tuple));
        if (!attr->attisdropped)
            appendStringInfo(&list, "%s%s", n++ > 0 ? ", " : "", quote_identifier(NameStr(attr->attname)));
        ReleaseSysCache(tuple);
    }
    return list.data;
}

// The context line of an error raised while a text key is read.
void reading_the_key(void* arg)
{
    auto* t = static_cast<const RowTarget*>(arg);
    errcontext("reading key as a value of column \"%s\" (%s) of \"%s\"", t->key_column.name,
               format_type_be(t->key_column.declared_type), t->rel_name);
}

// A key passed as a string (an untyped parameter, say) for a column of
// another type, read by that type's input function: a string it cannot read
// is the type's own error (22P02), with a context line naming the key.
Datum key_from_text(const RowTarget& t, Datum string_value, Oid string_type)
{
    Oid output;
    bool varlena;
    getTypeOutputInfo(string_type, &output, &varlena);
    char* string = OidOutputFunctionCall(output, string_value);
    Oid input, ioparam;
    getTypeInputInfo(t.key_column.declared_type, &input, &ioparam);
    ErrorContextCallback context;
    context.callback = reading_the_key;
    context.arg = const_cast<RowTarget*>(&t);
    context.previous = error_context_stack;
    error_context_stack = &context;
    Datum value = OidInputFunctionCall(input, string, ioparam, -1);
    error_context_stack = context.previous;
    return value;
}

Column column_of(Oid relid, const char* rel_name, Name name, const char* arg_name)
{
    Column c;
    c.name = NameStr(*name);
    c.att = get_attnum(relid, c.name);
    if (c.att == InvalidAttrNumber || c.att < 0)
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_COLUMN),
                        errmsg("%s: column \"%s\" of relation \"%s\" does not exist", arg_name, c.name, rel_name),
                        errhint("The columns of \"%s\" are %s.", rel_name, column_list(relid))));
    Oid type;
    int32 typmod;
    Oid collation;
    get_atttypetypmodcoll(relid, c.att, &type, &typmod, &collation);
    c.declared_type = type;
    // A domain column's own typmod is -1: the base type's typmod (the scale
    // of a domain over numeric(10, 2)) is the domain's.
    c.type = getBaseTypeAndTypmod(type, &typmod);
    c.typmod = typmod;
    c.collation = collation;
    c.sql = quote_identifier(c.name);
    return c;
}

bool is_integer_type(Oid type)
{
    return type == INT2OID || type == INT4OID || type == INT8OID;
}

bool is_float_type(Oid type)
{
    return type == FLOAT4OID || type == FLOAT8OID;
}

// Whether a key of type `from` converts to the key column's type `to`
// without losing anything, so that it addresses the row plain SQL's
// `WHERE key_column = key` would, or none -- never another one (SPEC: "key
// is compared in the key column's type (not convertible -> 42804)"):
// * the same type, or a binary-coercible one (varchar for a text column);
// * a string, which the column type's own input parses (bad input: 22P02);
// * an integer for an integer column (a narrowing overflows: 22003) or for
//   a string column (its digits);
// * an implicit cast (integer to numeric, date to timestamp): PostgreSQL
//   keeps those for conversions that lose nothing -- except into floating
//   point, which rounds large integers and decimals.
// Refused: numeric or float into an integer (1.6 would address 2),
// timestamp into date, and whatever else converts only by assignment.
bool key_converts_exactly(Oid from, Oid to)
{
    if (from == to || IsBinaryCoercible(from, to))
        return true;
    if (TypeCategory(from) == TYPCATEGORY_STRING)
        return true;
    if (is_float_type(to))
        return is_float_type(from);
    if (is_integer_type(from) && (is_integer_type(to) || TypeCategory(to) == TYPCATEGORY_STRING))
        return true;
    return can_coerce_type(1, &from, &to, COERCION_IMPLICIT);
}

// What plain SQL checks before it takes a lock (as LOCK TABLE does): USAGE
// on the table's schema, and the right to UPDATE the table or some column of
// it. A caller without them gets 42501 at once, instead of first waiting for
// another session's lock on a table it may not touch. (The UPDATE itself
// checks the columns it uses.)
void check_may_update(Oid relid)
{
    Oid nsp = get_rel_namespace(relid);
    if (!OidIsValid(nsp))
        return;  // no such table: lock_target says so
    Oid user = GetUserId();
    if (pg::compat::namespace_aclcheck(nsp, user, ACL_USAGE) != ACLCHECK_OK)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied for schema %s", quote_identifier(get_namespace_name(nsp)))));
    if (pg_class_aclcheck(relid, user, ACL_UPDATE) != ACLCHECK_OK &&
        pg_attribute_aclcheck_all(relid, user, ACL_UPDATE, ACLMASK_ANY) != ACLCHECK_OK)
        ereport(ERROR, (errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
                        errmsg("permission denied for table %s", quote_identifier(get_rel_name(relid)))));
}

// Takes the lock the UPDATE will take before anything is read from the
// catalog, as the UPDATE's own parser does: an ALTER TABLE or DROP TABLE of
// another session then commits before we look, never between our look and
// the UPDATE, so the column types read afterwards are the ones the plan runs
// with. Returns the relkind; the table may have gone while we waited.
char lock_target(Oid relid)
{
    check_may_update(relid);
    const char* name_before = get_rel_name(relid);
    LockRelationOid(relid, RowExclusiveLock);  // also applies the invalidations that came meanwhile
    char kind = get_rel_relkind(relid);
    if (kind == '\0' && name_before != nullptr)
        ereport(ERROR,
                (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("rel: relation \"%s\" was dropped meanwhile", name_before)));
    if (kind == '\0')
        ereport(ERROR, (errcode(ERRCODE_UNDEFINED_TABLE), errmsg("rel: relation with OID %u does not exist", relid)));
    return kind;
}

Name name_arg(FunctionCallInfo fcinfo, int argno, const char* arg_name)
{
    pg::require_arg(fcinfo, argno, arg_name);
    return PG_GETARG_NAME(argno);
}

}  // namespace

void init()
{
    CacheRegisterRelcacheCallback(relation_changed, 0);
    CacheRegisterSyscacheCallback(NAMESPACEOID, schema_changed, 0);
    RegisterXactCallback(at_transaction_end, nullptr);
}

RowTarget row_target(FunctionCallInfo fcinfo, int rel_argno, int key_column_argno, int key_argno)
{
    RowTarget t;
    pg::require_arg(fcinfo, rel_argno, "rel");
    t.relid = PG_GETARG_OID(rel_argno);
    char kind = lock_target(t.relid);
    t.rel_name = get_rel_name(t.relid);
    if (kind != RELKIND_RELATION && kind != RELKIND_PARTITIONED_TABLE)
        ereport(ERROR, (errcode(ERRCODE_WRONG_OBJECT_TYPE), errmsg("rel: \"%s\" is not a table", t.rel_name),
                        errhint("Pass a table or a partitioned table.")));
    t.rel_sql = quote_qualified_identifier(get_namespace_name(get_rel_namespace(t.relid)), t.rel_name);
    t.target_sql = kind == RELKIND_RELATION ? psprintf("ONLY %s", t.rel_sql) : t.rel_sql;

    t.key_column = column_of(t.relid, t.rel_name, name_arg(fcinfo, key_column_argno, "key_column"), "key_column");
    const Column& key_column = t.key_column;

    pg::require_arg(fcinfo, key_argno, "key");
    t.key = PG_GETARG_DATUM(key_argno);
    t.key_arg_type = get_fn_expr_argtype(fcinfo->flinfo, key_argno);
    Oid given_type = getBaseType(t.key_arg_type);
    if (TypeCategory(given_type) == TYPCATEGORY_STRING && given_type != key_column.type &&
        !IsBinaryCoercible(given_type, key_column.type)) {
        t.key = key_from_text(t, t.key, given_type);
        t.key_arg_type = key_column.declared_type;
    }
    Oid key_type = getBaseType(t.key_arg_type);
    if (!key_converts_exactly(key_type, key_column.type)) {
        bool by_rounding = can_coerce_type(1, &key_type, &key_column.type, COERCION_ASSIGNMENT);
        ereport(ERROR,
                (errcode(ERRCODE_DATATYPE_MISMATCH),
                 errmsg("key of type %s cannot be compared with column \"%s\" of type %s",
                        format_type_be(t.key_arg_type), key_column.name, format_type_be(key_column.declared_type)),
                 by_rounding ? errdetail("Converting %s to %s can round or cut the key, which would "
                                         "address another row.",
                                         format_type_be(key_type), format_type_be(key_column.type))
                             : 0,
                 errhint("Pass the key as %s.", format_type_be(key_column.declared_type))));
    }
    return t;
}

Column target_column(const RowTarget& target, FunctionCallInfo fcinfo, int argno, const char* arg_name)
{
    return column_of(target.relid, target.rel_name, name_arg(fcinfo, argno, arg_name), arg_name);
}

const char* key_condition(const RowTarget& t)
{
    return psprintf("%s = CAST($1 AS %s)", t.key_column.sql, type_sql(t.key_column.type));
}

const char* type_sql(Oid type)
{
    // "Typmod given, and it is -1" is how format_type asks for the bare name.
    return format_type_extended(type, -1, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

const char* key_for_message(const RowTarget& t)
{
    Oid output;
    bool varlena;
    getTypeOutputInfo(t.key_arg_type, &output, &varlena);
    char* text = OidOutputFunctionCall(output, t.key);
    return quote_literal_cstr(text);
}

CachedPlans* cached_plans(const PlanKey& key)
{
    if (plans == nullptr) {
        HASHCTL info;
        std::memset(&info, 0, sizeof info);
        info.keysize = sizeof(PlanKey);
        info.entrysize = sizeof(CachedPlans);
        info.hcxt = CacheMemoryContext;
        plans = hash_create("pg_idem helper plans", 64, &info, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
    }
    bool found;
    auto* entry = static_cast<CachedPlans*>(hash_search(plans, &key, HASH_ENTER, &found));
    if (found && entry->stale) {
        retire(entry->change);
        retire(entry->look);
    }
    if (!found || entry->stale) {
        entry->change = nullptr;
        entry->look = nullptr;
        entry->target_checked = false;
        entry->stale = false;
    }
    return entry;
}

void check_target(const RowTarget& t, const Column& value_column, const char* value_arg, CachedPlans* plans)
{
    if (plans->target_checked)
        return;
    Relation rel = table_open(t.relid, NoLock);  // locked by row_target()
    bool unique = has_unique_index_on(rel, t.key_column.att);
    bool swapped = !unique && has_unique_index_on(rel, value_column.att);
    bool replaced = update_is_replaced_by_rule(rel);
    table_close(rel, NoLock);
    if (swapped)
        ereport(ERROR, (errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
                        errmsg("key_column \"%s\" of \"%s\" has no unique index or primary key of its own",
                               t.key_column.name, t.rel_name),
                        errhint("%s \"%s\" has one: are key_column and %s swapped? The key column comes first.",
                                value_arg, value_column.name, value_arg)));
    if (!unique)
        ereport(ERROR, (errcode(ERRCODE_INVALID_COLUMN_REFERENCE),
                        errmsg("key_column \"%s\" of \"%s\" has no unique index or primary key of its own",
                               t.key_column.name, t.rel_name),
                        errhint("The key must address exactly one row: CREATE UNIQUE INDEX ON %s (%s) "
                                "(not DEFERRABLE, no WHERE).",
                                t.rel_sql, t.key_column.sql)));
    if (replaced)
        refuse_rewritten(t);
    plans->target_checked = true;
}

uint64 run_change(const RowTarget& t, SPIPlanPtr change, Datum* values)
{
    int rc = SPI_execute_plan(change, values, nullptr, false, 0);
    if (rc == SPI_OK_REWRITTEN)  // check_target() refused such a table; in case a rule came since
        refuse_rewritten(t);
    if (rc != SPI_OK_UPDATE_RETURNING)
        refuse_result(t, "UPDATE", rc);
    if (SPI_processed > 1)
        ereport(ERROR, (errcode(ERRCODE_CARDINALITY_VIOLATION),
                        errmsg("UPDATE of \"%s\" with %s = %s changed " UINT64_FORMAT " rows, not one", t.rel_name,
                               t.key_column.name, key_for_message(t), SPI_processed),
                        errhint("key_column \"%s\" must address one row.", t.key_column.name)));
    return SPI_processed;
}

void run_look(const RowTarget& t, SPIPlanPtr look, Datum* values)
{
    int rc = SPI_execute_plan(look, values, nullptr, false, 1);
    if (rc != SPI_OK_SELECT)
        refuse_result(t, "look-up", rc);
    if (SPI_processed == 0)
        ereport(ERROR, (errcode(ERRCODE_NO_DATA_FOUND),
                        errmsg("no row of \"%s\" has %s = %s", t.rel_name, t.key_column.name, key_for_message(t))));
}

}  // namespace idem::helper
