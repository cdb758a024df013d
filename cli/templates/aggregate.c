/*
 * Aggregate plugin `__NAME__(x DOUBLE) -> DOUBLE`: the sum of squares of the non-NULL
 * values, NULL when there are none. Written against ABI.md (beside this file) with
 * pushdown_plugin.h.
 *
 * Storage nodes fold the rows of each row group or chunk into one partial state per group
 * (update); the intermediary merges states in any order (merge: must be associative and
 * commutative, the initial state its identity) and turns them into results (finalize).
 * Here a state is 16 bytes: the sum of squares (double) and the count (uint64).
 *
 * Build: pushdown plugin build .   (clang --target=wasm32-wasi -O2 -mexec-model=reactor)
 * Then:  pushdown plugin register target/__NAME__.wasm
 */
#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{\"kind\":\"aggregate\",\"name\":\"__NAME__\","
                "\"arguments\":[\"Float64\"],\"returns\":\"Float64\"}")

typedef struct {
    double sum;
    uint64_t count;
} state;

/* Groups one call may name; more is a malformed input. */
#define MAX_GROUPS (1 << 24)

/* Decodes an update or merge input: column 0 the UInt32 group ids (each < G), column 1
 * of type `want`; G = schema metadata pushdown.num_groups. Allocates G initial states. */
static const char *begin(uint8_t *input, int32_t len, pd_batch *in, pd_type want, state **states) {
    const char *error;
    if (pd_read_batch(input, (size_t)len, in, &error) != 0) return error;
    if (in->num_columns != 2 || in->columns[0].type.id != PD_TYPE_INT ||
        in->columns[1].type.id != want.id)
        return "expected columns (UInt32 group ids, argument)";
    if (in->num_groups < 0 || in->num_groups > MAX_GROUPS) return "bad pushdown.num_groups";
    for (int64_t i = 0; i < in->num_rows; i++)
        if (pd_u32(&in->columns[0], i) >= (uint64_t)in->num_groups) return "group id out of range";
    *states = calloc((size_t)in->num_groups + 1, sizeof(state));
    return NULL;
}

/* The G states as one Binary column. */
static uint64_t return_states(state *states, int64_t groups) {
    int32_t *offsets = malloc((size_t)(groups + 1) * sizeof(int32_t));
    for (int64_t g = 0; g <= groups; g++) offsets[g] = (int32_t)(g * (int64_t)sizeof(state));
    pd_column out = {.type = PD_BINARY, .length = groups, .values = states, .offsets = offsets};
    uint64_t result = pd_return_column(out, groups);
    free(offsets);
    free(states);
    return result;
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
        state *s = &states[pd_u32(&in.columns[0], i)];
        s->sum += pd_f64(x, i) * pd_f64(x, i);
        s->count += 1;
    }
    free(input);
    return return_states(states, in.num_groups);
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
    for (int64_t i = 0; i < in.num_rows; i++) {
        size_t size;
        if (pd_is_null(&in.columns[1], i)) continue; /* NULL is the initial state */
        const uint8_t *bytes = pd_bytes(&in.columns[1], i, &size);
        if (size != sizeof(state)) continue;
        state other;
        memcpy(&other, bytes, sizeof other);
        state *s = &states[pd_u32(&in.columns[0], i)];
        s->sum += other.sum;
        s->count += other.count;
    }
    free(input);
    return return_states(states, in.num_groups);
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
        size_t size;
        const uint8_t *bytes = pd_bytes(&in.columns[0], i, &size);
        if (!pd_is_null(&in.columns[0], i) && size == sizeof s) memcpy(&s, bytes, sizeof s);
        values[i] = s.sum;
        if (s.count == 0) nulls++; /* no values: NULL */
        else pd_set_bit(validity, i);
    }
    pd_column out = {.type = PD_FLOAT64, .length = n, .null_count = nulls,
                     .validity = validity, .values = values};
    uint64_t result = pd_return_column(out, n);
    free(values);
    free(validity);
    free(input);
    return result;
}
