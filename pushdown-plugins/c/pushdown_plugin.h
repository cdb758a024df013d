/*
 * pushdown_plugin.h — write a pushdown plugin in C, against the plugin ABI, version 1
 * (pushdown-plugins/ABI.md; `pushdown plugin new NAME --lang c` copies this file).
 *
 * One header, no other library than wasi-libc. It gives:
 *
 *   - the common exports (`memory` comes from the linker): PUSHDOWN_PLUGIN(signature_json)
 *     defines pushdown_abi_version, pushdown_alloc, pushdown_free and pushdown_signature;
 *   - a reader of the Arrow IPC stream the host sends (one schema message, at most one
 *     record batch, end of stream), giving each column's validity bitmap, values and
 *     offsets in place, without a copy: pd_read_batch;
 *   - a writer of the result buffer: status byte 0 and an IPC stream of one batch
 *     (pd_return_batch, pd_return_column), or status 1 and a message (pd_return_error).
 *
 * Columns of these Arrow types are read and written: Boolean, Int8..Int64, UInt8..UInt64,
 * Float32, Float64, Date32, Utf8 and Binary (32-bit offsets); reading also takes any other
 * non-nested fixed-width type (Decimal128, Timestamp, ...) as raw values and LargeUtf8 /
 * LargeBinary (64-bit offsets). Nested types (List, Struct, ...) are refused with an error.
 * Formats followed: Arrow IPC streaming format and Schema.fbs / Message.fbs
 * (https://arrow.apache.org/docs/format/Columnar.html#serialization-and-interprocess-communication-ipc),
 * FlatBuffers binary layout (https://flatbuffers.dev/internals/).
 *
 * Build: clang --target=wasm32-wasi -O2 -mexec-model=reactor -o NAME.wasm NAME.c
 * (`pushdown plugin build DIR` runs that; wasm32-wasi is WASI preview 1, which newer clang
 * also spells wasm32-wasip1).
 */
#ifndef PUSHDOWN_PLUGIN_H
#define PUSHDOWN_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PUSHDOWN_ABI_VERSION 1
#define PD_EXPORT(name) __attribute__((export_name(name)))
/* Most columns pd_read_batch reads, most a result batch has. */
#define PD_MAX_COLUMNS 64

/* ---- Arrow types (ids of the `Type` union of Arrow's Schema.fbs) ---------------------- */

enum {
    PD_TYPE_INT = 2,
    PD_TYPE_FLOAT = 3,
    PD_TYPE_BINARY = 4,
    PD_TYPE_UTF8 = 5,
    PD_TYPE_BOOL = 6,
    PD_TYPE_DECIMAL = 7,
    PD_TYPE_DATE = 8,
    PD_TYPE_TIME = 9,
    PD_TYPE_TIMESTAMP = 10,
    PD_TYPE_DURATION = 18,
    PD_TYPE_LARGE_BINARY = 19,
    PD_TYPE_LARGE_UTF8 = 20
};

/* An Arrow type: the union id, the width of one value in bits (1 for Boolean, 0 for the
 * variable-width types) and, for Int, whether it is signed. */
typedef struct {
    int id;
    int bit_width;
    int is_signed;
} pd_type;

#define PD_BOOL ((pd_type){PD_TYPE_BOOL, 1, 0})
#define PD_INT8 ((pd_type){PD_TYPE_INT, 8, 1})
#define PD_INT16 ((pd_type){PD_TYPE_INT, 16, 1})
#define PD_INT32 ((pd_type){PD_TYPE_INT, 32, 1})
#define PD_INT64 ((pd_type){PD_TYPE_INT, 64, 1})
#define PD_UINT8 ((pd_type){PD_TYPE_INT, 8, 0})
#define PD_UINT16 ((pd_type){PD_TYPE_INT, 16, 0})
#define PD_UINT32 ((pd_type){PD_TYPE_INT, 32, 0})
#define PD_UINT64 ((pd_type){PD_TYPE_INT, 64, 0})
#define PD_FLOAT32 ((pd_type){PD_TYPE_FLOAT, 32, 1})
#define PD_FLOAT64 ((pd_type){PD_TYPE_FLOAT, 64, 1})
#define PD_DATE32 ((pd_type){PD_TYPE_DATE, 32, 1})
#define PD_UTF8 ((pd_type){PD_TYPE_UTF8, 0, 0})
#define PD_BINARY ((pd_type){PD_TYPE_BINARY, 0, 0})

/* One column of a batch. `validity` is the Arrow validity bitmap (bit i set = row i is
 * not NULL), or NULL when no row is NULL. Fixed-width types: `values` holds `length`
 * values (bit-packed for Boolean). Utf8/Binary: `offsets` holds length + 1 int32 offsets
 * into `values` (LargeUtf8/LargeBinary: `offsets64`). */
typedef struct {
    pd_type type;
    const char *name; /* read: not NUL-terminated, `name_len` bytes; write: a C string */
    uint32_t name_len;
    int64_t length;
    int64_t null_count;
    const uint8_t *validity;
    const void *values;
    const int32_t *offsets;
    const int64_t *offsets64;
} pd_column;

/* A record batch as pd_read_batch decodes it. `num_groups` is the schema metadata
 * `pushdown.num_groups` of aggregate calls (-1 when absent). */
typedef struct {
    int64_t num_rows;
    int num_columns;
    int64_t num_groups;
    pd_column columns[PD_MAX_COLUMNS];
} pd_batch;

/* ---- small helpers ------------------------------------------------------------------- */

/* Whether row i of `c` is NULL. */
static inline int pd_is_null(const pd_column *c, int64_t i) {
    return c->validity != NULL && c->null_count != 0 && !((c->validity[i >> 3] >> (i & 7)) & 1);
}
static inline double pd_f64(const pd_column *c, int64_t i) { return ((const double *)c->values)[i]; }
static inline int64_t pd_i64(const pd_column *c, int64_t i) { return ((const int64_t *)c->values)[i]; }
static inline int32_t pd_i32(const pd_column *c, int64_t i) { return ((const int32_t *)c->values)[i]; }
static inline uint32_t pd_u32(const pd_column *c, int64_t i) { return ((const uint32_t *)c->values)[i]; }
static inline int pd_bool(const pd_column *c, int64_t i) {
    return (((const uint8_t *)c->values)[i >> 3] >> (i & 7)) & 1;
}
/* Bytes of row i of a Utf8/Binary (or Large) column; its length in *len. */
static inline const uint8_t *pd_bytes(const pd_column *c, int64_t i, size_t *len) {
    if (c->offsets64 != NULL) {
        *len = (size_t)(c->offsets64[i + 1] - c->offsets64[i]);
        return (const uint8_t *)c->values + c->offsets64[i];
    }
    *len = (size_t)(c->offsets[i + 1] - c->offsets[i]);
    return (const uint8_t *)c->values + c->offsets[i];
}
/* Sets bit i of a bitmap. */
static inline void pd_set_bit(uint8_t *bits, int64_t i) { bits[i >> 3] |= (uint8_t)(1u << (i & 7)); }

static inline uint64_t pd_pack(const void *ptr, size_t len) {
    return ((uint64_t)(uintptr_t)ptr << 32) | (uint64_t)(uint32_t)len;
}

/* ---- the common exports ---------------------------------------------------------------- */

/* Defines the exports every plugin has; `signature` is the JSON of ABI.md, e.g.
 * {"kind":"scalar","name":"hypot_c","arguments":["Float64","Float64"],"returns":"Float64"}. */
#define PUSHDOWN_PLUGIN(signature)                                                            \
    PD_EXPORT("pushdown_abi_version") int32_t pushdown_abi_version(void) {                    \
        return PUSHDOWN_ABI_VERSION;                                                           \
    }                                                                                          \
    PD_EXPORT("pushdown_alloc") void *pushdown_alloc(int32_t len) {                           \
        return malloc(len > 0 ? (size_t)len : 1);                                              \
    }                                                                                          \
    PD_EXPORT("pushdown_free") void pushdown_free(void *ptr, int32_t len) {                   \
        (void)len;                                                                             \
        free(ptr);                                                                             \
    }                                                                                          \
    PD_EXPORT("pushdown_signature") uint64_t pushdown_signature(void) {                       \
        static const char s[] = signature;                                                     \
        return pd_pack(s, sizeof s - 1);                                                       \
    }

/* ---- results ----------------------------------------------------------------------------- */

/* Status 1 and a message (printf format): the query fails with
 * `<file>: <unit>: plugin <name>: <message>`. Returns the packed result for the export. */
static uint64_t pd_return_error(const char *format, ...) {
    char message[1024];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(message, sizeof message, format, args);
    va_end(args);
    if (n < 0) n = 0;
    if (n >= (int)sizeof message) n = (int)sizeof message - 1;
    uint8_t *out = (uint8_t *)malloc((size_t)n + 1);
    if (out == NULL) __builtin_trap();
    out[0] = 1;
    memcpy(out + 1, message, (size_t)n);
    return pd_pack(out, (size_t)n + 1);
}

/* The answer of the optional export `pushdown_can_skip` (ABI.md, plugin-aware pruning):
 * `skip` non-zero when no row of the row group can pass the test, 0 when some may. Its
 * input is the JSON request; free it. Returns the packed result for the export. */
static uint64_t pd_return_skip(int skip) {
    uint8_t *out = (uint8_t *)malloc(2);
    if (out == NULL) __builtin_trap();
    out[0] = 0;
    out[1] = skip ? 1 : 0;
    return pd_pack(out, 2);
}

/* ---- FlatBuffers: reading ---------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    size_t len;
    int bad;
} pd_fb;

static uint32_t pd_fb_u32(pd_fb *f, size_t pos) {
    if (pos > f->len || f->len - pos < 4) { f->bad = 1; return 0; }
    uint32_t v;
    memcpy(&v, f->buf + pos, 4);
    return v;
}
static uint16_t pd_fb_u16(pd_fb *f, size_t pos) {
    if (pos > f->len || f->len - pos < 2) { f->bad = 1; return 0; }
    uint16_t v;
    memcpy(&v, f->buf + pos, 2);
    return v;
}
/* Position of field `id` of the table at `table`, or 0 when absent. */
static size_t pd_fb_field(pd_fb *f, size_t table, int id) {
    int32_t soffset = (int32_t)pd_fb_u32(f, table);
    int64_t vtable = (int64_t)table - soffset;
    if (f->bad || vtable < 0 || (uint64_t)vtable >= f->len) { f->bad = 1; return 0; }
    uint16_t vlen = pd_fb_u16(f, (size_t)vtable);
    if ((size_t)(4 + 2 * id + 2) > vlen) return 0;
    uint16_t off = pd_fb_u16(f, (size_t)vtable + 4 + 2 * (size_t)id);
    return off == 0 ? 0 : table + off;
}
static int64_t pd_fb_scalar(pd_fb *f, size_t table, int id, int size, int64_t fallback) {
    size_t pos = pd_fb_field(f, table, id);
    if (pos == 0) return fallback;
    if (pos > f->len || f->len - pos < (size_t)size) { f->bad = 1; return fallback; }
    switch (size) {
    case 1: return (int8_t)f->buf[pos];
    case 2: { int16_t v; memcpy(&v, f->buf + pos, 2); return v; }
    case 4: { int32_t v; memcpy(&v, f->buf + pos, 4); return v; }
    default: { int64_t v; memcpy(&v, f->buf + pos, 8); return v; }
    }
}
/* The object a uoffset field points to (0 when absent). */
static size_t pd_fb_ref(pd_fb *f, size_t table, int id) {
    size_t pos = pd_fb_field(f, table, id);
    if (pos == 0) return 0;
    size_t target = pos + pd_fb_u32(f, pos);
    if (target >= f->len) { f->bad = 1; return 0; }
    return target;
}
/* A vector field: its element count, and the position of element 0 in *first. */
static uint32_t pd_fb_vector(pd_fb *f, size_t table, int id, size_t element_size, size_t *first) {
    size_t v = pd_fb_ref(f, table, id);
    if (v == 0) { *first = 0; return 0; }
    uint32_t n = pd_fb_u32(f, v);
    *first = v + 4;
    if (f->bad || (f->len - *first) / (element_size ? element_size : 1) < n) { f->bad = 1; return 0; }
    return n;
}
/* Element i of a vector of tables or strings. */
static size_t pd_fb_deref(pd_fb *f, size_t pos) {
    size_t target = pos + pd_fb_u32(f, pos);
    if (target >= f->len) { f->bad = 1; return 0; }
    return target;
}

/* ---- reading the input batch ------------------------------------------------------------ */

/* One IPC message at *pos: sets the FlatBuffer and the body; 0 at end of stream. */
static int pd_next_message(const uint8_t *in, size_t len, size_t *pos, pd_fb *meta,
                           const uint8_t **body, int64_t *body_len, const char **error) {
    if (len - *pos < 4) return 0;
    uint32_t size;
    memcpy(&size, in + *pos, 4);
    *pos += 4;
    if (size == 0xFFFFFFFFu) {
        if (len - *pos < 4) return 0;
        memcpy(&size, in + *pos, 4);
        *pos += 4;
    }
    if (size == 0) return 0;
    if (size > len - *pos) { *error = "malformed Arrow IPC input: message past the end"; return -1; }
    meta->buf = in + *pos;
    meta->len = size;
    meta->bad = 0;
    *pos += size;
    size_t root = pd_fb_u32(meta, 0);
    *body_len = pd_fb_scalar(meta, root, 3, 8, 0);
    if (meta->bad || *body_len < 0 || (uint64_t)*body_len > len - *pos) {
        *error = "malformed Arrow IPC input: body past the end";
        return -1;
    }
    *body = in + *pos;
    *pos += (size_t)*body_len;
    return 1;
}

/* Decodes the IPC stream `in` (one schema message, then zero or one record batch) into
 * `out`; the columns point into `in`, which must outlive them. Returns 0, or -1 with a
 * message in *error. Follows the Arrow IPC streaming format (Message.fbs, Schema.fbs). */
static int pd_read_batch(const uint8_t *in, size_t len, pd_batch *out, const char **error) {
    size_t pos = 0;
    pd_fb meta;
    const uint8_t *body;
    int64_t body_len;
    memset(out, 0, sizeof *out);
    out->num_groups = -1;
    *error = "malformed Arrow IPC input";
    if (pd_next_message(in, len, &pos, &meta, &body, &body_len, error) != 1) return -1;
    size_t message = pd_fb_u32(&meta, 0);
    if (pd_fb_scalar(&meta, message, 1, 1, 0) != 1) {
        *error = "malformed Arrow IPC input: the stream does not start with a schema";
        return -1;
    }
    size_t schema = pd_fb_ref(&meta, message, 2);
    size_t first;
    uint32_t nfields = pd_fb_vector(&meta, schema, 1, 4, &first);
    if (nfields > PD_MAX_COLUMNS) {
        *error = "more columns than PD_MAX_COLUMNS";
        return -1;
    }
    out->num_columns = (int)nfields;
    for (uint32_t i = 0; i < nfields; i++) {
        size_t field = pd_fb_deref(&meta, first + 4 * (size_t)i);
        pd_column *c = &out->columns[i];
        size_t name = pd_fb_ref(&meta, field, 0);
        if (name != 0) {
            c->name_len = pd_fb_u32(&meta, name);
            c->name = (const char *)meta.buf + name + 4;
            if (c->name_len > meta.len - name - 4) meta.bad = 1;
        }
        int id = (int)(pd_fb_scalar(&meta, field, 2, 1, 0) & 0xff);
        size_t type = pd_fb_ref(&meta, field, 3);
        c->type.id = id;
        c->type.is_signed = 1;
        switch (id) {
        case PD_TYPE_INT:
            c->type.bit_width = (int)pd_fb_scalar(&meta, type, 0, 4, 0);
            c->type.is_signed = (int)pd_fb_scalar(&meta, type, 1, 1, 0);
            break;
        case PD_TYPE_FLOAT: {
            int precision = (int)pd_fb_scalar(&meta, type, 0, 2, 0);
            c->type.bit_width = precision == 0 ? 16 : precision == 1 ? 32 : 64;
            break;
        }
        case PD_TYPE_BOOL: c->type.bit_width = 1; break;
        case PD_TYPE_DECIMAL: c->type.bit_width = (int)pd_fb_scalar(&meta, type, 2, 4, 128); break;
        case PD_TYPE_DATE: c->type.bit_width = pd_fb_scalar(&meta, type, 0, 2, 1) == 0 ? 32 : 64; break;
        case PD_TYPE_TIME: c->type.bit_width = (int)pd_fb_scalar(&meta, type, 1, 4, 32); break;
        case PD_TYPE_TIMESTAMP:
        case PD_TYPE_DURATION: c->type.bit_width = 64; break;
        case PD_TYPE_UTF8:
        case PD_TYPE_BINARY:
        case PD_TYPE_LARGE_UTF8:
        case PD_TYPE_LARGE_BINARY: c->type.bit_width = 0; break;
        default:
            *error = "an input column has a type pushdown_plugin.h does not read (nested or view types)";
            return -1;
        }
    }
    size_t kv_first;
    uint32_t nkv = pd_fb_vector(&meta, schema, 2, 4, &kv_first);
    for (uint32_t i = 0; i < nkv; i++) {
        size_t kv = pd_fb_deref(&meta, kv_first + 4 * (size_t)i);
        size_t key = pd_fb_ref(&meta, kv, 0), value = pd_fb_ref(&meta, kv, 1);
        if (key == 0 || value == 0 || meta.bad) continue;
        uint32_t klen = pd_fb_u32(&meta, key), vlen = pd_fb_u32(&meta, value);
        if (klen > meta.len - key - 4 || vlen > meta.len - value - 4 || vlen > 20) continue;
        if (klen == 19 && memcmp(meta.buf + key + 4, "pushdown.num_groups", 19) == 0) {
            char digits[24];
            memcpy(digits, meta.buf + value + 4, vlen);
            digits[vlen] = 0;
            out->num_groups = strtoll(digits, NULL, 10);
        }
    }
    if (meta.bad) return -1;

    int r = pd_next_message(in, len, &pos, &meta, &body, &body_len, error);
    if (r < 0) return -1;
    if (r == 0) return 0; /* no batch: zero rows */
    message = pd_fb_u32(&meta, 0);
    if (pd_fb_scalar(&meta, message, 1, 1, 0) != 3) {
        *error = "malformed Arrow IPC input: expected a record batch";
        return -1;
    }
    size_t batch = pd_fb_ref(&meta, message, 2);
    if (pd_fb_ref(&meta, batch, 3) != 0) {
        *error = "compressed Arrow IPC input is not read by pushdown_plugin.h";
        return -1;
    }
    out->num_rows = pd_fb_scalar(&meta, batch, 0, 8, 0);
    size_t nodes, buffers;
    uint32_t nnodes = pd_fb_vector(&meta, batch, 1, 16, &nodes);
    uint32_t nbuffers = pd_fb_vector(&meta, batch, 2, 16, &buffers);
    if (meta.bad || nnodes != nfields || out->num_rows < 0) return -1;
    uint32_t b = 0;
    for (uint32_t i = 0; i < nfields; i++) {
        pd_column *c = &out->columns[i];
        memcpy(&c->length, meta.buf + nodes + 16 * (size_t)i, 8);
        memcpy(&c->null_count, meta.buf + nodes + 16 * (size_t)i + 8, 8);
        int variable = c->type.bit_width == 0;
        uint32_t count = variable ? 3 : 2;
        if (b + count > nbuffers || c->length < 0 || c->length > out->num_rows) return -1;
        const uint8_t *ptr[3];
        int64_t size[3];
        for (uint32_t k = 0; k < count; k++, b++) {
            int64_t offset;
            memcpy(&offset, meta.buf + buffers + 16 * (size_t)b, 8);
            memcpy(&size[k], meta.buf + buffers + 16 * (size_t)b + 8, 8);
            if (offset < 0 || size[k] < 0 || offset > body_len || size[k] > body_len - offset) {
                *error = "malformed Arrow IPC input: a buffer lies outside the body";
                return -1;
            }
            ptr[k] = body + offset;
        }
        int64_t n = c->length;
        if (size[0] < (n + 7) / 8) { c->validity = NULL; c->null_count = 0; }
        else c->validity = ptr[0];
        if (!variable) {
            if (size[1] < (n * c->type.bit_width + 7) / 8) {
                *error = "malformed Arrow IPC input: a values buffer is too short";
                return -1;
            }
            c->values = ptr[1];
        } else {
            int large = c->type.id == PD_TYPE_LARGE_UTF8 || c->type.id == PD_TYPE_LARGE_BINARY;
            int width = large ? 8 : 4;
            if (n > 0 && size[1] < (n + 1) * width) {
                *error = "malformed Arrow IPC input: an offsets buffer is too short";
                return -1;
            }
            for (int64_t k = 0; k <= (n > 0 ? n : -1); k++) {
                int64_t o;
                if (large) memcpy(&o, ptr[1] + 8 * k, 8);
                else { int32_t o32; memcpy(&o32, ptr[1] + 4 * k, 4); o = o32; }
                if (o < 0 || o > size[2]) {
                    *error = "malformed Arrow IPC input: an offset lies outside its data";
                    return -1;
                }
            }
            if (large) c->offsets64 = (const int64_t *)ptr[1];
            else c->offsets = (const int32_t *)ptr[1];
            c->values = ptr[2];
        }
    }
    return 0;
}

/* ---- FlatBuffers: writing (back to front, as the FlatBuffers builders do) ---------------- */

typedef struct {
    uint8_t *buf; /* bytes are written downwards from buf + cap */
    size_t cap, len, minalign;
    int vtable[16];
    size_t object_start;
    int nfields;
} pd_fbw;

static void pd_w_bytes(pd_fbw *w, const void *src, size_t n) {
    if (w->cap - w->len < n) __builtin_trap(); /* sized by the caller; never happens */
    w->len += n;
    memcpy(w->buf + w->cap - w->len, src, n);
}
static void pd_w_pad(pd_fbw *w, size_t n) {
    static const uint8_t zeros[8] = {0};
    while (n > 8) { pd_w_bytes(w, zeros, 8); n -= 8; }
    pd_w_bytes(w, zeros, n);
}
/* Aligns so that `additional` bytes then a `size`-aligned value can be written. */
static void pd_w_prep(pd_fbw *w, size_t size, size_t additional) {
    if (size > w->minalign) w->minalign = size;
    pd_w_pad(w, (~(w->len + additional) + 1) & (size - 1));
}
static void pd_w_scalar(pd_fbw *w, const void *v, size_t size) {
    pd_w_prep(w, size, 0);
    pd_w_bytes(w, v, size);
}
static void pd_w_start(pd_fbw *w) {
    memset(w->vtable, 0, sizeof w->vtable);
    w->nfields = 0;
    w->object_start = w->len;
}
static void pd_w_slot(pd_fbw *w, int id) {
    w->vtable[id] = (int)w->len;
    if (id + 1 > w->nfields) w->nfields = id + 1;
}
static void pd_w_field(pd_fbw *w, int id, const void *v, size_t size) {
    pd_w_scalar(w, v, size);
    pd_w_slot(w, id);
}
static void pd_w_field_ref(pd_fbw *w, int id, size_t ref) {
    pd_w_prep(w, 4, 0);
    uint32_t off = (uint32_t)(w->len + 4 - ref);
    pd_w_bytes(w, &off, 4);
    pd_w_slot(w, id);
}
/* Ends a table: writes its soffset and its vtable (before it); returns its reference. */
static size_t pd_w_end(pd_fbw *w) {
    int32_t zero = 0;
    pd_w_scalar(w, &zero, 4);
    size_t table = w->len;
    for (int i = w->nfields - 1; i >= 0; i--) {
        uint16_t off = (uint16_t)(w->vtable[i] ? table - (size_t)w->vtable[i] : 0);
        pd_w_bytes(w, &off, 2);
    }
    uint16_t table_size = (uint16_t)(table - w->object_start);
    uint16_t vtable_size = (uint16_t)(4 + 2 * w->nfields);
    pd_w_bytes(w, &table_size, 2);
    pd_w_bytes(w, &vtable_size, 2);
    int32_t soffset = (int32_t)(w->len - table);
    memcpy(w->buf + w->cap - table, &soffset, 4);
    return table;
}
static size_t pd_w_string(pd_fbw *w, const char *s) {
    size_t n = strlen(s);
    pd_w_prep(w, 4, n + 1);
    pd_w_pad(w, 1);
    pd_w_bytes(w, s, n);
    uint32_t len = (uint32_t)n;
    pd_w_bytes(w, &len, 4);
    return w->len;
}
/* A vector of n 16-byte structs {int64, int64} given in order. */
static size_t pd_w_structs(pd_fbw *w, const int64_t *pairs, uint32_t n) {
    pd_w_prep(w, 4, 16 * (size_t)n);
    pd_w_prep(w, 8, 16 * (size_t)n);
    for (uint32_t i = n; i-- > 0;) pd_w_bytes(w, &pairs[2 * i], 16);
    pd_w_prep(w, 4, 0);
    pd_w_bytes(w, &n, 4);
    return w->len;
}
/* A vector of n references given in order. */
static size_t pd_w_refs(pd_fbw *w, const size_t *refs, uint32_t n) {
    pd_w_prep(w, 4, 4 * (size_t)n);
    for (uint32_t i = n; i-- > 0;) {
        uint32_t off = (uint32_t)(w->len + 4 - refs[i]);
        pd_w_bytes(w, &off, 4);
    }
    pd_w_bytes(w, &n, 4);
    return w->len;
}
/* Ends the buffer with its root reference; returns the FlatBuffer's first byte. */
static const uint8_t *pd_w_finish(pd_fbw *w, size_t root) {
    pd_w_prep(w, w->minalign > 8 ? w->minalign : 8, 4);
    uint32_t off = (uint32_t)(w->len + 4 - root);
    pd_w_bytes(w, &off, 4);
    return w->buf + w->cap - w->len;
}

/* A Message table around `header` (Schema = 1, RecordBatch = 3), MetadataVersion V5. */
static size_t pd_w_message(pd_fbw *w, uint8_t header_type, size_t header, int64_t body_len) {
    pd_w_start(w);
    pd_w_field(w, 3, &body_len, 8);
    pd_w_field_ref(w, 2, header);
    int16_t version = 4;
    pd_w_field(w, 0, &version, 2);
    pd_w_field(w, 1, &header_type, 1);
    return pd_w_end(w);
}

static size_t pd_w_type(pd_fbw *w, pd_type t) {
    pd_w_start(w);
    if (t.id == PD_TYPE_INT) {
        int32_t width = t.bit_width;
        uint8_t is_signed = (uint8_t)(t.is_signed != 0);
        pd_w_field(w, 0, &width, 4);
        pd_w_field(w, 1, &is_signed, 1);
    } else if (t.id == PD_TYPE_FLOAT) {
        int16_t precision = t.bit_width == 16 ? 0 : t.bit_width == 32 ? 1 : 2;
        pd_w_field(w, 0, &precision, 2);
    } else if (t.id == PD_TYPE_DATE) {
        int16_t unit = t.bit_width == 32 ? 0 : 1;
        pd_w_field(w, 0, &unit, 2);
    }
    return pd_w_end(w);
}

/* Frames one FlatBuffer message (continuation, 8-byte-aligned length) at *pos of out. */
static void pd_frame(uint8_t *out, size_t *pos, const uint8_t *fb, size_t fb_len) {
    uint32_t padded = (uint32_t)((fb_len + 7) & ~(size_t)7);
    uint32_t marker = 0xFFFFFFFFu;
    memcpy(out + *pos, &marker, 4);
    memcpy(out + *pos + 4, &padded, 4);
    memcpy(out + *pos + 8, fb, fb_len);
    memset(out + *pos + 8 + fb_len, 0, padded - fb_len);
    *pos += 8 + padded;
}

static int64_t pd_pad8(int64_t n) { return (n + 7) & ~(int64_t)7; }

/* Returns status 0 and an IPC stream of one batch of `num_rows` rows and the `n` columns
 * (each `length` = num_rows; `name` a C string; `null_count` > 0 needs `validity`). The
 * buffers are copied; the caller keeps (and frees) its own. Returns the packed result. */
static uint64_t pd_return_batch(const pd_column *columns, int n, int64_t num_rows) {
    if (n < 0 || n > PD_MAX_COLUMNS) return pd_return_error("pd_return_batch: %d columns", n);
    /* Buffers of the body: per column validity, (offsets,) values. */
    int64_t spans[PD_MAX_COLUMNS * 3 * 2];
    const void *sources[PD_MAX_COLUMNS * 3];
    int64_t nodes[PD_MAX_COLUMNS * 2];
    uint32_t nbuffers = 0;
    int64_t body = 0;
    for (int i = 0; i < n; i++) {
        const pd_column *c = &columns[i];
        int has_nulls = c->null_count > 0 && c->validity != NULL;
        nodes[2 * i] = num_rows;
        nodes[2 * i + 1] = has_nulls ? c->null_count : 0;
        int64_t sizes[3];
        const void *srcs[3];
        uint32_t count = 0;
        sizes[count] = has_nulls ? (num_rows + 7) / 8 : 0;
        srcs[count++] = has_nulls ? c->validity : NULL;
        if (c->type.bit_width == 0) {
            sizes[count] = 4 * (num_rows + 1);
            srcs[count++] = c->offsets;
            sizes[count] = num_rows > 0 ? c->offsets[num_rows] : 0;
            srcs[count++] = c->values;
        } else {
            sizes[count] = (num_rows * c->type.bit_width + 7) / 8;
            srcs[count++] = c->values;
        }
        for (uint32_t k = 0; k < count; k++, nbuffers++) {
            spans[2 * nbuffers] = body;
            spans[2 * nbuffers + 1] = sizes[k];
            sources[nbuffers] = srcs[k];
            body += pd_pad8(sizes[k]);
        }
    }
    size_t cap = 1024 + 160 * (size_t)n;
    uint8_t *scratch = (uint8_t *)malloc(2 * cap);
    if (scratch == NULL) __builtin_trap();

    /* Schema message. */
    pd_fbw w = {scratch, cap, 0, 1, {0}, 0, 0};
    size_t fields[PD_MAX_COLUMNS];
    for (int i = n; i-- > 0;) {
        const pd_column *c = &columns[i];
        size_t type = pd_w_type(&w, c->type);
        size_t children = pd_w_refs(&w, NULL, 0);
        size_t name = pd_w_string(&w, c->name != NULL ? c->name : "result");
        pd_w_start(&w);
        pd_w_field_ref(&w, 0, name);
        pd_w_field_ref(&w, 3, type);
        pd_w_field_ref(&w, 5, children);
        uint8_t nullable = 1, type_id = (uint8_t)c->type.id;
        pd_w_field(&w, 1, &nullable, 1);
        pd_w_field(&w, 2, &type_id, 1);
        fields[i] = pd_w_end(&w);
    }
    size_t field_vector = pd_w_refs(&w, fields, (uint32_t)n);
    pd_w_start(&w);
    pd_w_field_ref(&w, 1, field_vector);
    size_t schema = pd_w_end(&w);
    const uint8_t *schema_fb = pd_w_finish(&w, pd_w_message(&w, 1, schema, 0));
    size_t schema_len = w.len;

    /* Record batch message. */
    pd_fbw r = {scratch + cap, cap, 0, 1, {0}, 0, 0};
    size_t buffer_vector = pd_w_structs(&r, spans, nbuffers);
    size_t node_vector = pd_w_structs(&r, nodes, (uint32_t)n);
    pd_w_start(&r);
    pd_w_field(&r, 0, &num_rows, 8);
    pd_w_field_ref(&r, 1, node_vector);
    pd_w_field_ref(&r, 2, buffer_vector);
    size_t batch = pd_w_end(&r);
    const uint8_t *batch_fb = pd_w_finish(&r, pd_w_message(&r, 3, batch, body));
    size_t batch_len = r.len;

    size_t total = 1 + 8 + ((schema_len + 7) & ~(size_t)7) + 8 + ((batch_len + 7) & ~(size_t)7) +
                   (size_t)body + 8;
    /* The status byte, then the stream (whose offsets are relative to its own start). */
    uint8_t *out = (uint8_t *)malloc(total);
    if (out == NULL) __builtin_trap();
    size_t pos = 1;
    out[0] = 0;
    pd_frame(out, &pos, schema_fb, schema_len);
    pd_frame(out, &pos, batch_fb, batch_len);
    for (uint32_t k = 0; k < nbuffers; k++) {
        uint8_t *dst = out + pos + spans[2 * k];
        size_t size = (size_t)spans[2 * k + 1];
        if (sources[k] != NULL) memcpy(dst, sources[k], size);
        else memset(dst, 0, size);
        memset(dst + size, 0, (size_t)(pd_pad8((int64_t)size) - (int64_t)size));
    }
    pos += (size_t)body;
    uint32_t eos[2] = {0xFFFFFFFFu, 0};
    memcpy(out + pos, eos, 8);
    pos += 8;
    free(scratch);
    return pd_pack(out, pos); /* the host frees it with pushdown_free */
}

/* pd_return_batch of one column named "result". */
static uint64_t pd_return_column(pd_column column, int64_t num_rows) {
    if (column.name == NULL) column.name = "result";
    return pd_return_batch(&column, 1, num_rows);
}

#endif /* PUSHDOWN_PLUGIN_H */
