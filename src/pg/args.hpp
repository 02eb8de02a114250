// Reading SQL arguments into pg_idem's strong types (src/core/key.hpp).
#pragma once

#include "core/key.hpp"
#include "pg/postgres.hpp"

extern "C" {
#include "datatype/timestamp.h"
}

namespace idem::pg {

// A validated key or scope together with the Datum to pass on to SPI.
struct KeyArg {
    Datum datum;
    Key key;
};
struct ScopeArg {
    Datum datum;
    Scope scope;
};
// A hot-stock item's name; `datum` is the argument detoasted, for SPI.
struct ItemArg {
    Datum datum;
    Item item;
};

// 22004 naming the argument when argument `argno` is NULL.
void require_arg(FunctionCallInfo fcinfo, int argno, const char* name);

// `name` names the argument in errors (22004 NULL, 22023 empty, 22001 too long).
KeyArg key_arg(FunctionCallInfo fcinfo, int argno, const char* name);
ScopeArg scope_arg(FunctionCallInfo fcinfo, int argno, const char* name);
ItemArg item_arg(FunctionCallInfo fcinfo, int argno, const char* name);
// A lease's name or owner (22004 NULL, 22023 empty, 22001 too long), as the
// text Datum to pass on to SPI.
Datum lease_name_arg(FunctionCallInfo fcinfo, int argno, const char* name);
// The same checks as key_arg for a text Datum that is not an argument (an array element).
KeyArg key_datum(Datum datum, bool isnull, const char* name);

// A TTL argument: NULL (never expires, where allowed) or a checked interval.
struct Ttl {
    const char* name;  // the argument's name, for errors
    const Interval* interval;  // nullptr: never expires
};
// `null_means_never` false makes NULL an error (22004) instead.
Ttl ttl_arg(FunctionCallInfo fcinfo, int argno, const char* name, bool null_means_never);

// When a claim, token or lease made at `now` with `ttl` ends: never, or
// now + ttl by the calendar (a month is that month's length). 22023 unless
// that lies after `now`: an interval such as '1 month -30 days' can be
// empty or negative in some months.
struct Expiry {
    bool never;
    TimestampTz at;
};
Expiry expiry_at(Ttl ttl, TimestampTz now);

// A key fit for an error message: quoted, and cut at 64 characters.
const char* key_for_message(Key key);

}  // namespace idem::pg
