// idem_decrement: the condition-based optimistic lock for stock and balances
// (SPEC "Conditional decrement"): one atomic
//   UPDATE [ONLY] rel SET amount = amount - n WHERE key = $key AND amount >= n RETURNING amount
// in the caller's transaction, with the caller's rights, row-level security
// and triggers (run once more only when the row was replaced meanwhile: see
// below). Under concurrency the row
// lock does the work: a second decrement waits for the first and re-checks
// `amount >= n` against the amount the first left (READ COMMITTED), so the
// amount never drops below zero and every successful decrement is counted
// in the drop.
#include "helper.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"
#include "stats.hpp"

extern "C" {
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
}

namespace idem {
namespace {

bool is_amount_type(Oid type)
{
    return type == INT2OID || type == INT4OID || type == INT8OID || type == NUMERICOID;
}

// n in the amount column's type: whole for integer columns, within range,
// and no finer than the column's scale for numeric(p, s).
Datum amount_of(Numeric n, const helper::Column& amount)
{
    Datum value = NumericGetDatum(n);
    if (amount.type == NUMERICOID) {
        if (amount.typmod < 0)
            return value;
        Datum fitted = DirectFunctionCall2(numeric, value, Int32GetDatum(amount.typmod));
        if (!DatumGetBool(DirectFunctionCall2(numeric_eq, fitted, value)))
            ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                            errmsg("n = %s has more decimal places than column \"%s\" keeps", numeric_normalize(n),
                                   amount.name)));
        return fitted;
    }
    Datum rounded = DirectFunctionCall2(numeric_round, value, Int32GetDatum(0));
    if (!DatumGetBool(DirectFunctionCall2(numeric_eq, rounded, value)))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("n = %s must be a whole number for column \"%s\" of type %s", numeric_normalize(n),
                               amount.name, format_type_be(amount.type))));
    int64 lo = amount.type == INT2OID ? PG_INT16_MIN : amount.type == INT4OID ? PG_INT32_MIN : PG_INT64_MIN;
    int64 hi = amount.type == INT2OID ? PG_INT16_MAX : amount.type == INT4OID ? PG_INT32_MAX : PG_INT64_MAX;
    bool in_range =
        DatumGetBool(DirectFunctionCall2(numeric_le, value, DirectFunctionCall1(int8_numeric, Int64GetDatum(hi)))) &&
        DatumGetBool(DirectFunctionCall2(numeric_ge, value, DirectFunctionCall1(int8_numeric, Int64GetDatum(lo))));
    if (!in_range)
        ereport(ERROR, (errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
                        errmsg("n = %s is out of range for column \"%s\" of type %s", numeric_normalize(n), amount.name,
                               format_type_be(amount.type))));
    int64 whole = DatumGetInt64(DirectFunctionCall1(numeric_int8, value));
    switch (amount.type) {
    case INT2OID:
        return Int16GetDatum(static_cast<int16>(whole));
    case INT4OID:
        return Int32GetDatum(static_cast<int32>(whole));
    default:
        return Int64GetDatum(whole);
    }
}

Datum as_numeric(Datum amount, Oid type)
{
    switch (type) {
    case INT2OID:
        return DirectFunctionCall1(int2_numeric, amount);
    case INT4OID:
        return DirectFunctionCall1(int4_numeric, amount);
    case INT8OID:
        return DirectFunctionCall1(int8_numeric, amount);
    default:
        return amount;
    }
}

// The amount the UPDATE left, as numeric in the caller's memory. A BEFORE
// trigger may have set it to NULL: the UPDATE happened, so NULL ("short")
// would be a lie and any number a guess; 22004 undoes the write instead.
Datum new_amount(const helper::RowTarget& target, const helper::Column& amount)
{
    bool isnull;
    Datum left = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
    if (isnull)
        ereport(ERROR,
                (errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
                 errmsg("amount_column \"%s\" of \"%s\" is NULL after the decrement", amount.name, target.rel_name),
                 errdetail("A BEFORE UPDATE trigger set it to NULL; idem_decrement answers NULL only when "
                           "nothing was decremented."),
                 errhint("Keep the amount NOT NULL, or decrement it with a plain UPDATE.")));
    return SPI_datumTransfer(as_numeric(left, amount.type), false, -1);
}

SPIPlanPtr change_plan(const helper::RowTarget& target, const helper::Column& amount, helper::CachedPlans* plans)
{
    if (plans->change == nullptr) {
        Oid types[2] = {target.key_arg_type, amount.type};
        plans->change = pg::prepare_kept(
            psprintf("UPDATE %s SET %s = %s - $2 WHERE %s AND %s >= $2 RETURNING %s", target.target_sql, amount.sql,
                     amount.sql, helper::key_condition(target), amount.sql, amount.sql),
            2, types);
    }
    return plans->change;
}

SPIPlanPtr look_plan(const helper::RowTarget& target, const helper::Column& amount, helper::CachedPlans* plans)
{
    if (plans->look == nullptr) {
        Oid types[2] = {target.key_arg_type, amount.type};
        plans->look = pg::prepare_kept(
            psprintf("SELECT %s >= $2 FROM %s WHERE %s", amount.sql, target.target_sql, helper::key_condition(target)),
            2, types);
    }
    return plans->look;
}

}  // namespace
}  // namespace idem

using namespace idem;

// idem_decrement(rel regclass, key_column name, key anyelement, amount_column name, n numeric) RETURNS numeric
IDEM_SQL_FUNCTION(idem_decrement)
{
    helper::RowTarget target = helper::row_target(fcinfo, 0, 1, 2);
    helper::Column amount = helper::target_column(target, fcinfo, 3, "amount_column");
    if (!is_amount_type(amount.type))
        ereport(ERROR, (errcode(ERRCODE_DATATYPE_MISMATCH),
                        errmsg("amount_column \"%s\" is of type %s", amount.name, format_type_be(amount.declared_type)),
                        errhint("The amount must be smallint, integer, bigint or numeric.")));
    pg::require_arg(fcinfo, 4, "n");
    Numeric n = PG_GETARG_NUMERIC(4);
    if (numeric_is_nan(n) || numeric_is_inf(n) ||
        !DatumGetBool(
            DirectFunctionCall2(numeric_gt, NumericGetDatum(n), DirectFunctionCall1(int4_numeric, Int32GetDatum(0)))))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("n must be a positive amount, got %s", numeric_normalize(n))));
    Datum by = amount_of(n, amount);

    pg::connect();
    helper::CachedPlans* plans = helper::cached_plans(
        helper::PlanKey{target.relid, target.key_column.att, amount.att, target.key_arg_type, helper::Kind::decrement});
    helper::check_target(target, amount, "amount_column", plans);
    Datum values[2] = {target.key, by};
    for (int attempt = 1;; attempt++) {
        if (helper::run_change(target, change_plan(target, amount, plans), values) == 1) {
            Datum result = new_amount(target, amount);
            SPI_finish();
            stats::count(stats::decrement_done);
            return result;
        }
        // Nothing changed. Under READ COMMITTED the UPDATE judged the
        // newest committed version of the row it found, so its answer
        // stands: the look-up tells "no row" (P0002) from "the row was
        // not decremented" (NULL) -- it held less than n, or a BEFORE
        // trigger or a row-level security policy for UPDATE kept it as
        // it was, where plain SQL says UPDATE 0. Only a row that holds
        // enough by the look-up's newer snapshot gets one more UPDATE:
        // another transaction replaced the row the UPDATE waited for
        // (deleted and inserted it again, or gave it this key).
        helper::run_look(target, look_plan(target, amount, plans), values);
        bool isnull;
        bool holds_enough = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
        if (isnull || !holds_enough || attempt == 2)
            break;
    }
    SPI_finish();
    stats::count(stats::decrement_insufficient);
    PG_RETURN_NULL();
}
