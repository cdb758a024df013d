/*
 * Aggregate plugin `geomean_c(x DOUBLE) -> DOUBLE`, written in C against
 * pushdown-plugins/ABI.md with pushdown_plugin.h: the geometric mean of the non-NULL
 * values, exp(avg(ln x)); NULL when there are none; a value <= 0 fails the query, naming
 * the value.
 *
 * The partial state of a group is 16 bytes: the sum of ln(x) (double) and the count of
 * values (uint64), little-endian. Storage nodes fold the rows of each row group or chunk
 * into states (update); the intermediary merges them, in any order (merge: the sums and
 * counts add, the initial state (0, 0) is the identity), and finalizes.
 *
 * Build and register: `pushdown plugin build pushdown-plugins/examples/geomean_c`, then
 * `pushdown plugin register <the .wasm it prints>`.
 */
#include <math.h>

#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{\"kind\":\"aggregate\",\"name\":\"geomean_c\","
                "\"arguments\":[\"Float64\"],\"returns\":\"Float64\"}")

/* Groups one call may name; more is a malformed input. */
#define MAX_GROUPS (1 << 24)

typedef struct {
    double sum_ln;
    uint64_t count;
} state;

/* G states as a Binary column of 16-byte values. */
static uint64_t return_states(const state *states, int64_t groups) {
    int32_t *offsets = malloc((size_t)(groups + 1) * sizeof(int32_t));
    for (int64_t g = 0; g <= groups; g++) offsets[g] = (int32_t)(g * (int64_t)sizeof(state));
    pd_column out = {.type = PD_BINARY, .length = groups, .values = states, .offsets = offsets};
    uint64_t result = pd_return_column(out, groups);
    free(offsets);
    return result;
}

/* Reads the input, checks column 0 is the UInt32 group ids, the groups are in range, and
 * column 1 has type `want`; allocates the G initial states. */
static const char *begin(uint8_t *input, int32_t len, pd_batch *in, pd_type want, state **states) {
    const char *error;
    if (pd_read_batch(input, (size_t)len, in, &error) != 0) return error;
    if (in->num_columns != 2 || in->columns[0].type.id != PD_TYPE_INT ||
        in->columns[0].type.bit_width != 32 || in->columns[1].type.id != want.id)
        return "expected columns (UInt32 group ids, argument)";
    if (in->num_groups < 0 || in->num_groups > MAX_GROUPS)
        return "missing or out-of-range pushdown.num_groups";
    for (int64_t i = 0; i < in->num_rows; i++)
        if (pd_u32(&in->columns[0], i) >= (uint64_t)in->num_groups)
            return "a group id is out of range";
    *states = calloc((size_t)in->num_groups + 1, sizeof(state));
    return NULL;
}

PD_EXPORT("pushdown_aggregate_update")
uint64_t pushdown_aggregate_update(uint8_t *input, int32_t len) {
    pd_batch in;
    state *states = NULL;
    const char *error = begin(input, len, &in, PD_FLOAT64, &states);
    if (error != NULL) {
        free(input);
        return pd_return_error("%s", error);
    }
    const pd_column *x = &in.columns[1];
    for (int64_t i = 0; i < in.num_rows; i++) {
        if (pd_is_null(x, i)) continue;
        double v = pd_f64(x, i);
        if (!(v > 0)) {
            free(states);
            free(input);
            return pd_return_error("%g is not positive (the geometric mean takes values > 0)", v);
        }
        state *s = &states[pd_u32(&in.columns[0], i)];
        s->sum_ln += log(v);
        s->count += 1;
    }
    uint64_t result = return_states(states, in.num_groups);
    free(states);
    free(input);
    return result;
}

PD_EXPORT("pushdown_aggregate_merge")
uint64_t pushdown_aggregate_merge(uint8_t *input, int32_t len) {
    pd_batch in;
    state *states = NULL;
    const char *error = begin(input, len, &in, PD_BINARY, &states);
    if (error != NULL) {
        free(input);
        return pd_return_error("%s", error);
    }
    const pd_column *partial = &in.columns[1];
    for (int64_t i = 0; i < in.num_rows; i++) {
        if (pd_is_null(partial, i)) continue; /* NULL is the initial state */
        size_t size;
        const uint8_t *bytes = pd_bytes(partial, i, &size);
        if (size != sizeof(state)) {
            free(states);
            free(input);
            return pd_return_error("a partial state of %zu bytes, expected 16", size);
        }
        state other;
        memcpy(&other, bytes, sizeof other);
        state *s = &states[pd_u32(&in.columns[0], i)];
        s->sum_ln += other.sum_ln;
        s->count += other.count;
    }
    uint64_t result = return_states(states, in.num_groups);
    free(states);
    free(input);
    return result;
}

PD_EXPORT("pushdown_aggregate_finalize")
uint64_t pushdown_aggregate_finalize(uint8_t *input, int32_t len) {
    pd_batch in;
    const char *error;
    if (pd_read_batch(input, (size_t)len, &in, &error) != 0 || in.num_columns != 1) {
        free(input);
        return pd_return_error("finalize: expected one Binary column of states");
    }
    int64_t n = in.num_rows;
    double *values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    uint8_t *validity = calloc((size_t)(n + 7) / 8 + 1, 1);
    int64_t nulls = 0;
    for (int64_t i = 0; i < n; i++) {
        state s = {0, 0};
        if (!pd_is_null(&in.columns[0], i)) {
            size_t size;
            const uint8_t *bytes = pd_bytes(&in.columns[0], i, &size);
            if (size == sizeof s) memcpy(&s, bytes, sizeof s);
        }
        if (s.count == 0) {
            values[i] = 0;
            nulls++;
        } else {
            values[i] = exp(s.sum_ln / (double)s.count);
            pd_set_bit(validity, i);
        }
    }
    pd_column out = {.type = PD_FLOAT64, .length = n, .null_count = nulls,
                     .validity = validity, .values = values};
    uint64_t result = pd_return_column(out, n);
    free(values);
    free(validity);
    free(input);
    return result;
}
