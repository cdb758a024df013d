/*
 * Scalar plugin `__NAME__(x DOUBLE) -> DOUBLE`: twice its argument (NULL stays NULL).
 * Written against ABI.md (beside this file) with pushdown_plugin.h; replace the loop with
 * your function, and the signature with its arguments and result type.
 *
 * Build: pushdown plugin build .   (clang --target=wasm32-wasi -O2 -mexec-model=reactor)
 * Then:  pushdown plugin register target/__NAME__.wasm
 */
#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{\"kind\":\"scalar\",\"name\":\"__NAME__\","
                "\"arguments\":[\"Float64\"],\"returns\":\"Float64\"}")

/* Input: one batch of the argument columns (of the declared types: the engine casts the
 * SQL arguments first). Output: one column of the declared type, a row per input row. */
PD_EXPORT("pushdown_scalar") uint64_t pushdown_scalar(uint8_t *input, int32_t len) {
    pd_batch in;
    const char *error;
    if (pd_read_batch(input, (size_t)len, &in, &error) != 0) {
        free(input);
        return pd_return_error("%s", error);
    }
    if (in.num_columns != 1 || in.columns[0].type.id != PD_TYPE_FLOAT) {
        free(input);
        return pd_return_error("expected one Float64 argument");
    }
    const pd_column *x = &in.columns[0];
    int64_t n = in.num_rows;
    double *values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) values[i] = pd_is_null(x, i) ? 0 : 2 * pd_f64(x, i);
    /* NULL in, NULL out: the input's validity bitmap serves the result. */
    pd_column out = {.type = PD_FLOAT64, .length = n, .null_count = x->null_count,
                     .validity = x->validity, .values = values};
    uint64_t result = pd_return_column(out, n);
    free(values);
    free(input); /* the input is the plugin's to free; the result is freed by the host */
    return result;
}
