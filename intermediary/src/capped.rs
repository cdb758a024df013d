//! Caps on the SQL functions whose result can be far larger than their input
//! (`repeat('x', 1500000000)` is 1.5 GB from 30 bytes of SQL): `repeat`, `lpad`, `rpad`
//! and `array_repeat` check the size of what they would build before building it, and
//! fail with a clear error past [`MAX_FUNCTION_RESULT_BYTES`]. They wrap DataFusion's
//! own implementations, which compute the result otherwise unchanged.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// Largest result, in bytes (or elements × 8 for arrays), one call of a capped function
/// may build: 256 MiB.
pub const MAX_FUNCTION_RESULT_BYTES: u64 = 256 << 20;

/// How a capped function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: bytes of `s` times `n`.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: `n` characters of at most 4 bytes.
    Pad,
    /// `array_repeat(x, n)`: `n` elements.
    ArrayRepeat,
}

/// A DataFusion function with a check of its result size before it runs.
#[derive(Debug)]
struct Capped {
    inner: Arc<dyn ScalarUDFImpl>,
    growth: Growth,
}

impl PartialEq for Capped {
    fn eq(&self, other: &Self) -> bool {
        self.growth == other.growth && self.inner.name() == other.inner.name()
    }
}

impl Eq for Capped {}

impl Hash for Capped {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.name().hash(state);
        self.growth.hash(state);
    }
}

/// `value` as `rows` values of Int64 (NULL where it is NULL or does not cast).
fn int64s(value: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    let array = value.to_array(rows)?;
    Ok(cast(&array, &DataType::Int64)?)
}

/// Bytes of each of `rows` string values (0 for NULL).
fn byte_lengths(value: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    let array = value.to_array(rows)?;
    let array = cast(&array, &DataType::LargeUtf8)?;
    let strings = array.as_string::<i64>();
    Ok((0..strings.len())
        .map(|i| {
            if strings.is_null(i) {
                0
            } else {
                strings.value(i).len() as u64
            }
        })
        .collect())
}

impl Capped {
    /// What the call would build, in bytes (saturating).
    fn result_bytes(&self, args: &ScalarFunctionArgs) -> Result<u64> {
        let rows = args.number_rows.max(1);
        let Some(count) = args.args.get(1) else {
            return Ok(0);
        };
        // Scalars are one value whatever the number of rows.
        let rows = if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            1
        } else {
            rows
        };
        let counts = int64s(count, rows)?;
        let counts = counts.as_primitive::<Int64Type>();
        let count_at = |i: usize| -> u64 {
            if counts.is_null(i) {
                0
            } else {
                counts.value(i).max(0) as u64
            }
        };
        let mut total: u64 = 0;
        match self.growth {
            Growth::Repeat => {
                let lengths = byte_lengths(&args.args[0], rows)?;
                for (i, len) in lengths.iter().enumerate() {
                    total = total.saturating_add(len.saturating_mul(count_at(i)));
                }
            }
            Growth::Pad => {
                for i in 0..rows {
                    total = total.saturating_add(count_at(i).saturating_mul(4));
                }
            }
            Growth::ArrayRepeat => {
                for i in 0..rows {
                    total = total.saturating_add(count_at(i).saturating_mul(8));
                }
            }
        }
        Ok(total)
    }
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.result_bytes(&args)?;
        if bytes > MAX_FUNCTION_RESULT_BYTES {
            return exec_err!(
                "{}: the result would hold about {} MiB, over the cap of {} MiB per call",
                self.inner.name(),
                bytes >> 20,
                MAX_FUNCTION_RESULT_BYTES >> 20
            );
        }
        self.inner.invoke_with_args(args)
    }
}

/// The capped versions of the functions of `udfs` (DataFusion's registered ones) that
/// can grow without bound, to register in their place.
pub fn capped_functions<'a>(udfs: impl IntoIterator<Item = &'a Arc<ScalarUDF>>) -> Vec<ScalarUDF> {
    udfs.into_iter()
        .filter_map(|f| {
            let growth = match f.name() {
                "repeat" => Growth::Repeat,
                "lpad" | "rpad" => Growth::Pad,
                "array_repeat" => Growth::ArrayRepeat,
                _ => return None,
            };
            Some(ScalarUDF::new_from_impl(Capped {
                inner: f.inner().clone(),
                growth,
            }))
        })
        .collect()
}
