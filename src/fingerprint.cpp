#include "fingerprint.hpp"

#include "core/sha256.hpp"

extern "C" {
#include "utils/numeric.h"
}

#include <cstring>

namespace idem {
namespace {

// Tags of the encoding, one byte before each token.
enum Tag : uint8_t {
    begin_array = '[',
    begin_raw_scalar = '.',  // the pseudo-array jsonb wraps a top-level scalar in
    end_array = ']',
    begin_object = '{',
    end_object = '}',
    key = 'k',
    null_value = 'z',
    string_value = 's',
    number_value = 'n',
    true_value = 't',
    false_value = 'f',
};

void add_tag(Sha256& sha, Tag tag)
{
    uint8_t byte = tag;
    sha.update(&byte, 1);
}

void add_bytes(Sha256& sha, Tag tag, const char* data, uint32_t size)
{
    add_tag(sha, tag);
    uint8_t size_be[4] = {uint8_t(size >> 24), uint8_t(size >> 16), uint8_t(size >> 8), uint8_t(size)};
    sha.update(size_be, sizeof size_be);
    sha.update(data, size);
}

void add_scalar(Sha256& sha, const JsonbValue& v, Tag string_tag)
{
    switch (v.type) {
    case jbvNull:
        add_tag(sha, null_value);
        break;
    case jbvString:
        add_bytes(sha, string_tag, v.val.string.val, static_cast<uint32_t>(v.val.string.len));
        break;
    case jbvNumeric: {
        char* text = numeric_normalize(v.val.numeric);
        add_bytes(sha, number_value, text, static_cast<uint32_t>(std::strlen(text)));
        pfree(text);
        break;
    }
    case jbvBool:
        add_tag(sha, v.val.boolean ? true_value : false_value);
        break;
    default:
        // jsonb stores no other scalar (datetime values exist only inside jsonpath).
        ereport(ERROR, (errcode(ERRCODE_INVALID_PARAMETER_VALUE),
                        errmsg("request holds a JSON value of unexpected type %d", static_cast<int>(v.type))));
    }
}

}  // namespace

pg_uuid_t request_fingerprint(Jsonb* request)
{
    Sha256 sha;
    JsonbIterator* it = JsonbIteratorInit(&request->root);
    JsonbValue v;
    JsonbIteratorToken token;
    while ((token = JsonbIteratorNext(&it, &v, false)) != WJB_DONE) {
        switch (token) {
        case WJB_BEGIN_ARRAY:
            add_tag(sha, v.val.array.rawScalar ? begin_raw_scalar : begin_array);
            break;
        case WJB_END_ARRAY:
            add_tag(sha, end_array);
            break;
        case WJB_BEGIN_OBJECT:
            add_tag(sha, begin_object);
            break;
        case WJB_END_OBJECT:
            add_tag(sha, end_object);
            break;
        case WJB_KEY:
            add_scalar(sha, v, key);
            break;
        case WJB_VALUE:
        case WJB_ELEM:
            add_scalar(sha, v, string_value);
            break;
        case WJB_DONE:
            break;
        }
    }
    uint8_t digest[Sha256::digest_size];
    sha.finish(digest);
    pg_uuid_t fingerprint;
    std::memcpy(fingerprint.data, digest, UUID_LEN);
    return fingerprint;
}

}  // namespace idem
