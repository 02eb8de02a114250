// idem_version_guard(): the version-based optimistic lock as a trigger (SPEC
// "Optimistic lock by version"). BEFORE UPDATE ... FOR EACH ROW, with the
// version column's name as optional argument (default "version", an integer
// column). An UPDATE must carry the version it read: if the new row's
// version differs from the stored one, someone else wrote in between and the
// write is stale (40001); otherwise the trigger stores version + 1.
//
// Under READ COMMITTED a second writer that read the same version waits for
// the first; PostgreSQL then re-applies its UPDATE to the row the first left,
// whose version has moved on, so the trigger refuses it.
#include "pg/guard.hpp"

extern "C" {
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
}

namespace idem {
namespace {

[[noreturn]] void misused(const char* why)
{
    ereport(
        ERROR,
        (errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED), errmsg("idem_version_guard() %s", why),
         errhint("CREATE TRIGGER ... BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION idem_version_guard('version')")));
}

int64 version_value(Datum d, Oid type)
{
    switch (type) {
    case INT2OID:
        return DatumGetInt16(d);
    case INT4OID:
        return DatumGetInt32(d);
    default:
        return DatumGetInt64(d);
    }
}

Datum version_datum(int64 v, Oid type)
{
    switch (type) {
    case INT2OID:
        return Int16GetDatum(static_cast<int16>(v));
    case INT4OID:
        return Int32GetDatum(static_cast<int32>(v));
    default:
        return Int64GetDatum(v);
    }
}

int64 type_max(Oid type)
{
    return type == INT2OID ? PG_INT16_MAX : type == INT4OID ? PG_INT32_MAX : PG_INT64_MAX;
}

}  // namespace
}  // namespace idem

using namespace idem;

IDEM_SQL_FUNCTION(idem_version_guard)
{
    if (!CALLED_AS_TRIGGER(fcinfo))
        misused("must be called as a trigger");
    auto* trigger = reinterpret_cast<TriggerData*>(fcinfo->context);
    if (!TRIGGER_FIRED_BEFORE(trigger->tg_event))
        misused("must run BEFORE UPDATE, not AFTER or INSTEAD OF");
    if (!TRIGGER_FIRED_FOR_ROW(trigger->tg_event))
        misused("must run FOR EACH ROW, not FOR EACH STATEMENT");
    if (!TRIGGER_FIRED_BY_UPDATE(trigger->tg_event))
        misused("must run on UPDATE only");
    if (trigger->tg_trigger->tgnargs > 1)
        misused("takes at most one argument, the version column's name");

    Relation rel = trigger->tg_relation;
    const char* column = trigger->tg_trigger->tgnargs == 1 ? trigger->tg_trigger->tgargs[0] : "version";
    int att = SPI_fnumber(RelationGetDescr(rel), column);
    if (att <= 0)
        misused(psprintf("found no column \"%s\" in \"%s\"", column, RelationGetRelationName(rel)));
    Oid declared_type = SPI_gettypeid(RelationGetDescr(rel), att);
    Oid type = getBaseType(declared_type);
    if (type != INT2OID && type != INT4OID && type != INT8OID)
        misused(psprintf("needs an integer version column; \"%s\" is %s", column, format_type_be(type)));
    // A generated column is computed after BEFORE triggers: the version
    // the guard writes would be overwritten.
    if (TupleDescAttr(RelationGetDescr(rel), att - 1)->attgenerated != '\0')
        misused(psprintf("cannot guard \"%s\": it is a generated column", column));

    HeapTuple old_row = trigger->tg_trigtuple;
    HeapTuple new_row = trigger->tg_newtuple;
    bool old_null, new_null;
    Datum old_d = heap_getattr(old_row, att, RelationGetDescr(rel), &old_null);
    Datum new_d = heap_getattr(new_row, att, RelationGetDescr(rel), &new_null);
    int64 old_v = old_null ? 0 : version_value(old_d, type);
    int64 new_v = new_null ? 0 : version_value(new_d, type);
    if (old_null != new_null || old_v != new_v)
        ereport(ERROR, (errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
                        errmsg("stale write to \"%s\": the row is at %s %s, the update was made from %s %s",
                               RelationGetRelationName(rel), column, old_null ? "NULL" : psprintf(INT64_FORMAT, old_v),
                               column, new_null ? "NULL" : psprintf(INT64_FORMAT, new_v)),
                        errhint("Read the row again and retry with its current %s.", column)));
    if (old_v == type_max(type))
        ereport(ERROR,
                (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
                 errmsg("%s of \"%s\" cannot go beyond " INT64_FORMAT, column, RelationGetRelationName(rel), old_v)));

    // A NULL version starts counting at 1.
    int cols[1] = {att};
    Datum values[1] = {version_datum(old_null ? 1 : old_v + 1, type)};
    bool nulls[1] = {false};
    // The version we write bypasses the UPDATE's own checks of a domain
    // column: check its constraints here (23514, 23502 as for any write).
    if (declared_type != type)
        domain_check(values[0], false, declared_type, &fcinfo->flinfo->fn_extra, fcinfo->flinfo->fn_mcxt);
    HeapTuple result = heap_modify_tuple_by_cols(new_row, RelationGetDescr(rel), 1, cols, values, nulls);
    return PointerGetDatum(result);
}
