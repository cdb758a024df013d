/*
 * Scalar plugin `hypot_c(x DOUBLE, y DOUBLE) -> DOUBLE`, written in C against
 * pushdown-plugins/ABI.md with pushdown_plugin.h: sqrt(x² + y²) without undue overflow
 * (C's hypot); NULL when either argument is NULL.
 *
 * Build and register: `pushdown plugin build pushdown-plugins/examples/hypot_c`, then
 * `pushdown plugin register <the .wasm it prints>`.
 */
#include <math.h>

#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{\"kind\":\"scalar\",\"name\":\"hypot_c\","
                "\"arguments\":[\"Float64\",\"Float64\"],\"returns\":\"Float64\"}")

/* Input: one batch of the two argument columns (Float64, as declared: the engine casts
 * SQL arguments first). Output: one Float64 column, a row per input row. */
PD_EXPORT("pushdown_scalar") uint64_t pushdown_scalar(uint8_t *input, int32_t len) {
    pd_batch in;
    const char *error;
    if (pd_read_batch(input, (size_t)len, &in, &error) != 0) {
        free(input);
        return pd_return_error("%s", error);
    }
    if (in.num_columns != 2 || in.columns[0].type.id != PD_TYPE_FLOAT ||
        in.columns[1].type.id != PD_TYPE_FLOAT) {
        free(input);
        return pd_return_error("expected two Float64 arguments, got %d column(s)", in.num_columns);
    }
    int64_t n = in.num_rows;
    const pd_column *x = &in.columns[0], *y = &in.columns[1];
    double *values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    uint8_t *validity = calloc((size_t)(n + 7) / 8 + 1, 1);
    int64_t nulls = 0;
    for (int64_t i = 0; i < n; i++) {
        if (pd_is_null(x, i) || pd_is_null(y, i)) {
            values[i] = 0;
            nulls++;
        } else {
            values[i] = hypot(pd_f64(x, i), pd_f64(y, i));
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
