// idem_transition: "is it already in the target state?" (SPEC "State
// transitions") as one atomic
//   UPDATE [ONLY] rel SET state = to WHERE key = $key AND state = from RETURNING true
// in the caller's transaction, with the caller's rights (run once more only
// when the row was replaced meanwhile: see below). A repeated request
// finds the row already in `to` and changes nothing (false); two racing
// transitions serialise on the row lock and the second re-checks `state =
// from` against what the first committed, so exactly one of them moves it.
#include "helper.hpp"
#include "pg/args.hpp"
#include "pg/guard.hpp"
#include "pg/spi.hpp"

extern "C" {
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"
}

namespace idem {
namespace {

// The context line of an error raised while a state argument is read.
void naming_the_argument(void* arg)
{
    errcontext("reading %s as a state of idem_transition()", static_cast<const char*>(arg));
}

// A state argument read by the column type's input function: an unknown
// enum label is that type's 22P02, with a context line naming the argument.
Datum state_value(Datum text_value, const char* arg_name, Oid input, Oid ioparam)
{
    ErrorContextCallback context;
    context.callback = naming_the_argument;
    context.arg = const_cast<char*>(arg_name);
    context.previous = error_context_stack;
    error_context_stack = &context;
    Datum value = OidInputFunctionCall(input, TextDatumGetCString(text_value), ioparam, -1);
    error_context_stack = context.previous;
    return value;
}

// Whether from_state and to_state name the same state in the column's type
// and collation (boolean 'true' and 't', citext 'Paid' and 'paid'), as the
// UPDATE's `=` will compare them. A type without an equality operator
// compares the labels byte for byte; its UPDATE will fail anyway (42883).
bool same_state(Datum from, Datum to, const helper::Column& state)
{
    TypeCacheEntry* type = lookup_type_cache(state.type, TYPECACHE_EQ_OPR_FINFO);
    if (!OidIsValid(type->eq_opr_finfo.fn_oid))
        return DatumGetBool(DirectFunctionCall2Coll(texteq, C_COLLATION_OID, from, to));
    Oid input;
    Oid ioparam;
    getTypeInputInfo(state.type, &input, &ioparam);
    Datum a = state_value(from, "from_state", input, ioparam);
    Datum b = state_value(to, "to_state", input, ioparam);
    return DatumGetBool(FunctionCall2Coll(&type->eq_opr_finfo, state.collation, a, b));
}

// The statements of a transition. States arrive as text and are compared in
// the column's base type, without its length (text, char(n), an enum: an
// unknown label is 22P02); storing one checks the column's length and
// domain. The look-up returns the state as text for messages, and whether
// it is to_state and from_state, compared as the UPDATE compares.
enum class Statement { change, look };

SPIPlanPtr plan(Statement which, const helper::RowTarget& target, const helper::Column& state,
                helper::CachedPlans* plans)
{
    SPIPlanPtr* slot = which == Statement::change ? &plans->change : &plans->look;
    if (*slot == nullptr) {
        const char* type = helper::type_sql(state.type);
        const char* sql =
            which == Statement::change
                ? psprintf("UPDATE %s SET %s = CAST($3 AS %s) WHERE %s AND %s = CAST($2 AS %s) RETURNING true",
                           target.target_sql, state.sql, type, helper::key_condition(target), state.sql, type)
                : psprintf("SELECT CAST(%s AS pg_catalog.text), %s = CAST($3 AS %s), %s = CAST($2 AS %s) "
                           "FROM %s WHERE %s",
                           state.sql, state.sql, type, state.sql, type, target.target_sql,
                           helper::key_condition(target));
        Oid types[3] = {target.key_arg_type, TEXTOID, TEXTOID};
        *slot = pg::prepare_kept(sql, 3, types);
    }
    return *slot;
}

Datum state_arg(FunctionCallInfo fcinfo, int argno, const char* name)
{
    pg::require_arg(fcinfo, argno, name);
    return PG_GETARG_DATUM(argno);
}

}  // namespace
}  // namespace idem

using namespace idem;

// idem_transition(rel regclass, key_column name, key anyelement, state_column name,
//                 from_state text, to_state text) RETURNS boolean
IDEM_SQL_FUNCTION(idem_transition)
{
    helper::RowTarget target = helper::row_target(fcinfo, 0, 1, 2);
    helper::Column state = helper::target_column(target, fcinfo, 3, "state_column");
    Datum from = state_arg(fcinfo, 4, "from_state");
    Datum to = state_arg(fcinfo, 5, "to_state");
    if (same_state(from, to, state))
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("from_state %s and to_state %s name the same state of column \"%s\"",
                               quote_literal_cstr(TextDatumGetCString(from)),
                               quote_literal_cstr(TextDatumGetCString(to)), state.name),
                        errhint("A transition moves a row from one state to another.")));

    pg::connect();
    helper::CachedPlans* plans = helper::cached_plans(
        helper::PlanKey{target.relid, target.key_column.att, state.att, target.key_arg_type, helper::Kind::transition});
    helper::check_target(target, state, "state_column", plans);
    Datum values[3] = {target.key, from, to};
    bool isnull, at_to, at_from;
    const char* current_state;
    for (int attempt = 1;; attempt++) {
        if (helper::run_change(target, plan(Statement::change, target, state, plans), values) == 1) {
            SPI_finish();
            PG_RETURN_BOOL(true);
        }
        // Nothing changed. Under READ COMMITTED the UPDATE judged the
        // newest committed version of the row it found, so its answer
        // stands; the look-up tells why. Only a row in from_state by the
        // look-up's newer snapshot gets one more UPDATE: another
        // transaction replaced the row the UPDATE waited for.
        helper::run_look(target, plan(Statement::look, target, state, plans), values);
        Datum current = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
        current_state = isnull ? "NULL" : quote_literal_cstr(TextDatumGetCString(current));
        bool unknown;  // a NULL state is neither
        at_to = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &unknown));
        at_from = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &unknown));
        if (isnull || !at_from || attempt == 2)
            break;
    }
    if (!isnull && at_to) {
        SPI_finish();
        PG_RETURN_BOOL(false);  // already there: a repeated request
    }
    const char* from_state = quote_literal_cstr(TextDatumGetCString(from));
    // In from_state and still not moved: a BEFORE trigger or a row-level
    // security policy for UPDATE kept the row as it was (plain SQL's
    // UPDATE 0). Never false, which would tell the caller it is done.
    if (!isnull && at_from)
        ereport(ERROR, (errcode(IDEM_ERRCODE_WRONG_STATE),
                        errmsg("row of \"%s\" with %s = %s is in state %s, but the UPDATE to %s changed nothing",
                               target.rel_name, target.key_column.name, helper::key_for_message(target), current_state,
                               quote_literal_cstr(TextDatumGetCString(to))),
                        errhint("A BEFORE UPDATE trigger or a row-level security policy for UPDATE kept the "
                                "row as it was, or another transaction moved it back to %s meanwhile.",
                                from_state)));
    ereport(ERROR, (errcode(IDEM_ERRCODE_WRONG_STATE),
                    errmsg("row of \"%s\" with %s = %s is in state %s, not %s", target.rel_name, target.key_column.name,
                           helper::key_for_message(target), current_state, from_state),
                    errhint("A transition to \"%s\" starts from \"%s\".", TextDatumGetCString(to),
                            TextDatumGetCString(from))));
    pg_unreachable();
}
