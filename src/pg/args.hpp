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

// `name` names the argument in errors (22004 NULL, 22023 empty, 22001 too long).
KeyArg key_arg(FunctionCallInfo fcinfo, int argno, const char* name);
ScopeArg scope_arg(FunctionCallInfo fcinfo, int argno, const char* name);
// The same checks for a text Datum that is not an argument (an array element).
KeyArg key_datum(Datum datum, bool isnull, const char* name);

// When a claim, token or lease ends: never (ttl NULL and allowed), or
// now + ttl, judged by the server's clock.
struct Expiry {
    bool never;
    TimestampTz at;
};
// `null_means_never` false makes NULL an error (22004) instead.
Expiry expiry_arg(FunctionCallInfo fcinfo, int argno, const char* name, TimestampTz now,
                  bool null_means_never);

// A key fit for an error message: quoted, and cut at 64 characters.
const char* key_for_message(Key key);

}  // namespace idem::pg
