//! Evaluation of [`Expr`] over Arrow record batches with the Arrow compute kernels.

use std::sync::Arc;

use arrow_arith::boolean::{and_kleene, is_not_null, is_null, not, or_kleene};
use arrow_arith::numeric;
use arrow_array::cast::AsArray;
use arrow_array::types::Decimal128Type;
use arrow_array::{
    new_null_array, Array, ArrayRef, BooleanArray, Datum, Decimal128Array, Float64Array,
    RecordBatch, Scalar, StringArray,
};
use arrow_buffer::Buffer;
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::DataType;
use arrow_select::take::take;
use pushdown_protocol::{ArithmeticOp, CmpOp, Expr, Literal};

/// The value of an expression: a column of the batch's length, or one constant.
#[derive(Debug, Clone)]
pub enum Value {
    /// One value per row.
    Array(ArrayRef),
    /// A constant, held as an array of length 1.
    Scalar(ArrayRef),
}

impl Value {
    fn data_type(&self) -> &DataType {
        match self {
            Value::Array(a) | Value::Scalar(a) => a.data_type(),
        }
    }

    fn datum(&self) -> Box<dyn Datum + '_> {
        match self {
            Value::Array(a) => Box::new(a),
            Value::Scalar(a) => Box::new(Scalar::new(a)),
        }
    }

    /// The value as an array of `num_rows` rows (a constant is repeated).
    pub fn into_array(self, num_rows: usize) -> Result<ArrayRef, String> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(a) => {
                let indices = arrow_array::UInt32Array::from(vec![0u32; num_rows]);
                take(a.as_ref(), &indices, None).map_err(|e| e.to_string())
            }
        }
    }

    fn map(self, f: impl FnOnce(&ArrayRef) -> Result<ArrayRef, String>) -> Result<Value, String> {
        Ok(match self {
            Value::Array(a) => Value::Array(f(&a)?),
            Value::Scalar(a) => Value::Scalar(f(&a)?),
        })
    }
}

fn binary(
    l: Value,
    r: Value,
    f: impl FnOnce(&dyn Datum, &dyn Datum) -> Result<ArrayRef, String>,
) -> Result<Value, String> {
    let scalar = matches!((&l, &r), (Value::Scalar(_), Value::Scalar(_)));
    let out = f(l.datum().as_ref(), r.datum().as_ref())?;
    Ok(if scalar {
        Value::Scalar(out)
    } else {
        Value::Array(out)
    })
}

fn boolean(
    l: Value,
    r: Value,
    num_rows: usize,
    f: impl Fn(&BooleanArray, &BooleanArray) -> Result<BooleanArray, arrow_schema::ArrowError>,
) -> Result<Value, String> {
    if let (Value::Scalar(a), Value::Scalar(b)) = (&l, &r) {
        let out = f(as_bool(a)?, as_bool(b)?).map_err(|e| e.to_string())?;
        return Ok(Value::Scalar(Arc::new(out)));
    }
    let a = l.into_array(num_rows)?;
    let b = r.into_array(num_rows)?;
    let out = f(as_bool(&a)?, as_bool(&b)?).map_err(|e| e.to_string())?;
    Ok(Value::Array(Arc::new(out)))
}

fn as_bool(a: &ArrayRef) -> Result<&BooleanArray, String> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| format!("expected a Boolean operand, found {}", a.data_type()))
}

/// Evaluates `expr` over `batch`.
///
/// # Errors
/// A message when a column is missing, types do not fit a kernel, or a cast or
/// arithmetic operation fails (overflow in a cast, division by zero).
pub fn evaluate(expr: &Expr, batch: &RecordBatch) -> Result<Value, String> {
    if let Some(value) = evaluate_on_dictionary(expr, batch)? {
        return Ok(value);
    }
    let n = batch.num_rows();
    Ok(match expr {
        Expr::Column(name) => Value::Array(widen_decimal(
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("column {name} is not in the batch"))?,
        )?),
        Expr::Literal(l) => Value::Scalar(literal_array(l)?),
        Expr::Cmp(op, l, r) => {
            let (l, r) = match narrow_comparison(l, r, batch)? {
                Some(operands) => operands,
                None => (evaluate(l, batch)?, evaluate(r, batch)?),
            };
            if let Some(out) = compare_with_constant(*op, &l, &r) {
                return Ok(Value::Array(Arc::new(out)));
            }
            binary(l, r, |a, b| {
                use arrow_ord::cmp;
                let out = match op {
                    CmpOp::Eq => cmp::eq(a, b),
                    CmpOp::NotEq => cmp::neq(a, b),
                    CmpOp::Lt => cmp::lt(a, b),
                    CmpOp::LtEq => cmp::lt_eq(a, b),
                    CmpOp::Gt => cmp::gt(a, b),
                    CmpOp::GtEq => cmp::gt_eq(a, b),
                };
                out.map(|b| Arc::new(b) as ArrayRef)
                    .map_err(|e| e.to_string())
            })?
        }
        Expr::Arithmetic(op, l, r) => arithmetic(*op, evaluate(l, batch)?, evaluate(r, batch)?)?,
        Expr::And(items) | Expr::Or(items) => {
            let is_and = matches!(expr, Expr::And(_));
            // Starting from the first item, not from a constant TRUE (AND) or FALSE (OR):
            // a constant would be expanded to a column for the first combination.
            let mut acc: Option<Value> = None;
            for item in items {
                let v = evaluate(item, batch)?;
                acc = Some(match acc {
                    None => v,
                    Some(a) if is_and => boolean(a, v, n, and_kleene)?,
                    Some(a) => boolean(a, v, n, or_kleene)?,
                });
            }
            match acc {
                Some(v) => v,
                None => Value::Scalar(Arc::new(BooleanArray::from(vec![is_and]))),
            }
        }
        Expr::Not(e) => evaluate(e, batch)?
            .map(|a| Ok(Arc::new(not(as_bool(a)?).map_err(|e| e.to_string())?)))?,
        Expr::IsNull { expr, negated } => evaluate(expr, batch)?.map(|a| {
            let out = if *negated {
                is_not_null(a.as_ref())
            } else {
                is_null(a.as_ref())
            };
            Ok(Arc::new(out.map_err(|e| e.to_string())?))
        })?,
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let value = evaluate(expr, batch)?;
            if let Some(found) = in_integer_set(&value, list, *negated) {
                return Ok(found);
            }
            let mut acc: Option<Value> = None;
            for item in list {
                let item = evaluate(item, batch)?;
                let eq = binary(value.clone(), item, |a, b| {
                    arrow_ord::cmp::eq(a, b)
                        .map(|b| Arc::new(b) as ArrayRef)
                        .map_err(|e| e.to_string())
                })?;
                acc = Some(match acc {
                    None => eq,
                    Some(a) => boolean(a, eq, n, or_kleene)?,
                });
            }
            let acc =
                acc.unwrap_or_else(|| Value::Scalar(Arc::new(BooleanArray::from(vec![false]))));
            if *negated {
                acc.map(|a| Ok(Arc::new(not(as_bool(a)?).map_err(|e| e.to_string())?)))?
            } else {
                acc
            }
        }
        Expr::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => {
            let (l, r) = (evaluate(expr, batch)?, evaluate(pattern, batch)?);
            binary(l, r, |a, b| {
                use arrow_string::like;
                let out = match (negated, case_insensitive) {
                    (false, false) => like::like(a, b),
                    (true, false) => like::nlike(a, b),
                    (false, true) => like::ilike(a, b),
                    (true, true) => like::nilike(a, b),
                };
                out.map(|b| Arc::new(b) as ArrayRef)
                    .map_err(|e| e.to_string())
            })?
        }
        Expr::Cast(e, to) => cast_value(evaluate(e, batch)?, to)?,
        Expr::BloomFilter { expr, bitset } => {
            let keys = evaluate(expr, batch)?.into_array(n)?;
            Value::Array(Arc::new(bloom_probe(&keys, &bitset.0)?))
        }
        Expr::Call {
            plugin,
            args,
            return_type,
        } => {
            let columns = args
                .iter()
                .map(|a| evaluate(a, batch)?.into_array(n))
                .collect::<Result<Vec<_>, _>>()?;
            let input = crate::host::encode(columns, n, Default::default())?;
            Value::Array(crate::host::call_column(
                plugin,
                crate::host::PluginOp::Scalar,
                &input,
                return_type,
                n,
            )?)
        }
    })
}

/// The one column of a comparison, `IN` list or `LIKE` whose operands are that column and
/// constants (`l_shipmode IN ('MAIL', 'SHIP')`): such a predicate has one value per
/// distinct value of the column, and never fails on one, so it can be evaluated over a
/// dictionary's values and looked up by each row's key ([`evaluate`] does when the column
/// is dictionary-encoded; the pipeline reads such columns so).
pub(crate) fn dictionary_evaluable(expr: &Expr) -> Option<&str> {
    let operands: Vec<&Expr> = match expr {
        Expr::Cmp(_, l, r) => vec![l, r],
        Expr::InList { expr, list, .. } => std::iter::once(expr.as_ref()).chain(list).collect(),
        Expr::Like { expr, pattern, .. } => vec![expr, pattern],
        _ => return None,
    };
    let mut column = None;
    for operand in operands {
        match operand {
            Expr::Literal(_) => {}
            Expr::Column(c) if column.is_none_or(|seen| seen == c) => column = Some(c.as_str()),
            _ => return None,
        }
    }
    column
}

/// `expr` over a batch where its [`dictionary_evaluable`] column is dictionary-encoded
/// (Int32 keys): evaluated once per dictionary value, then taken by the rows' keys (a NULL
/// key gives NULL, as the predicate of a NULL does). `None` when that does not apply.
fn evaluate_on_dictionary(expr: &Expr, batch: &RecordBatch) -> Result<Option<Value>, String> {
    let Some(name) = dictionary_evaluable(expr) else {
        return Ok(None);
    };
    let Some(dict) = batch
        .column_by_name(name)
        .and_then(|c| c.as_dictionary_opt::<arrow_array::types::Int32Type>())
    else {
        return Ok(None);
    };
    let values = dict.values();
    let field = arrow_schema::Field::new(name, values.data_type().clone(), true);
    let distinct = RecordBatch::try_new(
        Arc::new(arrow_schema::Schema::new(vec![field])),
        vec![values.clone()],
    )
    .map_err(|e| e.to_string())?;
    let per_value = evaluate(expr, &distinct)?.into_array(values.len())?;
    let per_row = take(per_value.as_ref(), dict.keys(), None).map_err(|e| e.to_string())?;
    Ok(Some(Value::Array(per_row)))
}

/// Results of the sub-expressions evaluated over one batch, so an expression that several
/// aggregates share (`l_extendedprice * (1 - l_discount)` in TPC-H Q1, or the `CAST` under
/// both halves of an AVG) is computed once per batch.
#[derive(Default)]
pub(crate) struct Memo {
    values: Vec<(Expr, Value)>,
    /// 64-bit forms ([`crate::narrow`]), `None` where that evaluation declined.
    narrow: Vec<(Expr, Option<crate::narrow::Narrow>)>,
}

impl Memo {
    /// Forgets every result (call before the next batch).
    pub(crate) fn clear(&mut self) {
        self.values.clear();
        self.narrow.clear();
    }

    /// The recorded value of `expr`.
    pub(crate) fn value(&self, expr: &Expr) -> Option<Value> {
        self.values
            .iter()
            .find(|(e, _)| e == expr)
            .map(|(_, v)| v.clone())
    }

    /// Records the value of `expr`.
    pub(crate) fn record_value(&mut self, expr: &Expr, value: &Value) {
        self.values.push((expr.clone(), value.clone()));
    }

    /// The recorded 64-bit form of `expr`: `Some(None)` when it declined.
    pub(crate) fn narrow(&self, expr: &Expr) -> Option<Option<crate::narrow::Narrow>> {
        self.narrow
            .iter()
            .find(|(e, _)| e == expr)
            .map(|(_, n)| n.clone())
    }

    /// Records the 64-bit form of `expr` (`None`: declined).
    pub(crate) fn record_narrow(&mut self, expr: &Expr, narrow: &Option<crate::narrow::Narrow>) {
        self.narrow.push((expr.clone(), narrow.clone()));
    }
}

/// [`evaluate`], reusing and recording the results of arithmetic and casts in `memo`.
///
/// # Errors
/// As [`evaluate`].
pub(crate) fn evaluate_memo(
    expr: &Expr,
    batch: &RecordBatch,
    memo: &mut Memo,
) -> Result<Value, String> {
    if !matches!(expr, Expr::Arithmetic(..) | Expr::Cast(..)) {
        return evaluate(expr, batch);
    }
    if let Some(v) = memo.value(expr) {
        return Ok(v);
    }
    let value = match expr {
        Expr::Arithmetic(op, l, r) => arithmetic(
            *op,
            evaluate_memo(l, batch, memo)?,
            evaluate_memo(r, batch, memo)?,
        )?,
        Expr::Cast(e, to) => cast_value(evaluate_memo(e, batch, memo)?, to)?,
        _ => unreachable!("only arithmetic and casts are memoized"),
    };
    memo.record_value(expr, &value);
    Ok(value)
}

/// `l op r` with the Arrow kernels' types and semantics (integer overflow wraps, as in
/// DataFusion's defaults; division by zero is an error).
fn arithmetic(op: ArithmeticOp, l: Value, r: Value) -> Result<Value, String> {
    if op == ArithmeticOp::Mul {
        if let Some(out) = mul_decimal128(&l, &r)? {
            return Ok(out);
        }
    }
    if matches!(op, ArithmeticOp::Add | ArithmeticOp::Sub) {
        if let Some(out) = add_sub_decimal128(op == ArithmeticOp::Sub, &l, &r)? {
            return Ok(out);
        }
    }
    binary(l, r, |a, b| {
        match op {
            ArithmeticOp::Add => numeric::add_wrapping(a, b),
            ArithmeticOp::Sub => numeric::sub_wrapping(a, b),
            ArithmeticOp::Mul => numeric::mul_wrapping(a, b),
            ArithmeticOp::Div => numeric::div(a, b),
            ArithmeticOp::Rem => numeric::rem(a, b),
        }
        .map_err(|e| e.to_string())
    })
}

/// `a * b` of two 128-bit decimals where one side is an array: the same values and type as
/// `numeric::mul_wrapping`, but each product is computed with one 64-bit multiplication
/// when both operands and the product fit in 64 bits (the common case, and far cheaper
/// than a 128-bit multiplication, which `wasm32` has no instruction for). `None` when the
/// operands are not both Decimal128 or the scalar side is NULL.
fn mul_decimal128(l: &Value, r: &Value) -> Result<Option<Value>, String> {
    let (DataType::Decimal128(..), DataType::Decimal128(..)) = (l.data_type(), r.data_type())
    else {
        return Ok(None);
    };
    // The result type exactly as the Arrow kernel derives it (precision p1 + p2 + 1, at
    // most 38; scale s1 + s2).
    let (la, ra) = match (l, r) {
        (Value::Array(a) | Value::Scalar(a), Value::Array(b) | Value::Scalar(b)) => (a, b),
    };
    let out_type = numeric::mul_wrapping(&la.slice(0, 0), &ra.slice(0, 0))
        .map_err(|e| e.to_string())?
        .data_type()
        .clone();
    #[inline(always)]
    fn product(x: i128, y: i128) -> Result<i128, arrow_schema::ArrowError> {
        match (i64::try_from(x), i64::try_from(y)) {
            // Factors of at most 63 significant bits together: the product fits in i64.
            // (Counting bits with `clz` avoids `i64::checked_mul`, which `wasm32` computes
            // with a 128-bit library multiply.)
            (Ok(a), Ok(b))
                if (64 - a.unsigned_abs().leading_zeros())
                    + (64 - b.unsigned_abs().leading_zeros())
                    <= 63 =>
            {
                Ok(i128::from(a * b))
            }
            // Two 64-bit factors always fit in 128 bits.
            (Ok(a), Ok(b)) => Ok(i128::from(a) * i128::from(b)),
            // The Arrow kernel checks decimal overflow whatever the `_wrapping` name says.
            _ => x.checked_mul(y).ok_or_else(|| {
                arrow_schema::ArrowError::ArithmeticOverflow(format!(
                    "Overflow happened on: {x:?} * {y:?}"
                ))
            }),
        }
    }
    let out: Decimal128Array = match (l, r) {
        (Value::Array(a), Value::Array(b)) => {
            let (a, b) = (
                a.as_primitive::<Decimal128Type>(),
                b.as_primitive::<Decimal128Type>(),
            );
            if significant_bits(a.values()) + significant_bits(b.values()) <= 63 {
                // Every product fits in i64 (NULL slots included): no check per row.
                arrow_arith::arity::binary(a, b, |x, y| i128::from((x as i64) * (y as i64)))
                    .map_err(|e| e.to_string())?
            } else {
                arrow_arith::arity::try_binary::<_, _, _, Decimal128Type>(a, b, product)
                    .map_err(|e| e.to_string())?
            }
        }
        (Value::Array(a), Value::Scalar(s)) | (Value::Scalar(s), Value::Array(a)) => {
            let s = s.as_primitive::<Decimal128Type>();
            if s.is_null(0) {
                return Ok(None);
            }
            let y = s.value(0);
            let a = a.as_primitive::<Decimal128Type>();
            if significant_bits(a.values()) + significant_bits(&[y]) <= 63 {
                a.unary(|x| i128::from((x as i64) * (y as i64)))
            } else {
                a.try_unary(|x| product(x, y)).map_err(|e| e.to_string())?
            }
        }
        (Value::Scalar(_), Value::Scalar(_)) => return Ok(None),
    };
    Ok(Some(Value::Array(Arc::new(out.with_data_type(out_type)))))
}

/// The most significant bits of any value's magnitude (65 when one does not fit in i64).
fn significant_bits(values: &[i128]) -> u32 {
    let (min, max) = values
        .iter()
        .fold((0i128, 0i128), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    match (i64::try_from(min), i64::try_from(max)) {
        (Ok(min), Ok(max)) => 64 - (min.unsigned_abs() | max.unsigned_abs()).leading_zeros(),
        _ => 65,
    }
}

/// `a + b` or `a - b` of two 128-bit decimals where one side is an array: the same values,
/// type and overflow errors as `numeric::add_wrapping` / `sub_wrapping`, but an operand
/// already at the result's scale is not multiplied by 10^0, and a constant is rescaled once.
/// (The kernel multiplies both operands of every row with a checked 128-bit multiply, a
/// library call in `wasm32`.) `None` when the operands are not both Decimal128 or the
/// scalar side is NULL.
fn add_sub_decimal128(sub: bool, l: &Value, r: &Value) -> Result<Option<Value>, String> {
    let (DataType::Decimal128(_, ls), DataType::Decimal128(_, rs)) = (l.data_type(), r.data_type())
    else {
        return Ok(None);
    };
    let (la, ra) = match (l, r) {
        (Value::Array(a) | Value::Scalar(a), Value::Array(b) | Value::Scalar(b)) => (a, b),
    };
    let empty = (la.slice(0, 0), ra.slice(0, 0));
    let out_type = if sub {
        numeric::sub_wrapping(&empty.0, &empty.1)
    } else {
        numeric::add_wrapping(&empty.0, &empty.1)
    }
    .map_err(|e| e.to_string())?
    .data_type()
    .clone();
    let DataType::Decimal128(_, scale) = out_type else {
        return Ok(None);
    };
    let multiplier = |s: i8| 10_i128.checked_pow(u32::try_from(scale - s).unwrap_or(u32::MAX));
    let (Some(lm), Some(rm)) = (multiplier(*ls), multiplier(*rs)) else {
        return Ok(None);
    };
    let overflow = |x: i128, y: i128| {
        arrow_schema::ArrowError::ArithmeticOverflow(format!(
            "Overflow happened on: {x:?} {} {y:?}",
            if sub { "-" } else { "+" }
        ))
    };
    #[inline(always)]
    fn rescale(x: i128, m: i128) -> Option<i128> {
        if m == 1 {
            Some(x)
        } else {
            match (i64::try_from(x), i64::try_from(m)) {
                (Ok(a), Ok(b)) => Some(i128::from(a) * i128::from(b)),
                _ => x.checked_mul(m),
            }
        }
    }
    let combine = |x: i128, y: i128| -> Result<i128, arrow_schema::ArrowError> {
        let (a, b) = (
            rescale(x, lm).ok_or_else(|| overflow(x, y))?,
            rescale(y, rm).ok_or_else(|| overflow(x, y))?,
        );
        if sub {
            a.checked_sub(b)
        } else {
            a.checked_add(b)
        }
        .ok_or_else(|| overflow(x, y))
    };
    let out: Decimal128Array = match (l, r) {
        (Value::Array(a), Value::Array(b)) => {
            arrow_arith::arity::try_binary::<_, _, _, Decimal128Type>(
                a.as_primitive::<Decimal128Type>(),
                b.as_primitive::<Decimal128Type>(),
                combine,
            )
            .map_err(|e| e.to_string())?
        }
        (Value::Array(a), Value::Scalar(c)) | (Value::Scalar(c), Value::Array(a)) => {
            let c_is_left = matches!(l, Value::Scalar(_));
            let c = c.as_primitive::<Decimal128Type>();
            if c.is_null(0) {
                return Ok(None);
            }
            let (c, cm, am) = if c_is_left {
                (c.value(0), lm, rm)
            } else {
                (c.value(0), rm, lm)
            };
            // The constant at the result's scale, once; overflow there is the kernel's error too.
            let Some(k) = rescale(c, cm) else {
                return Ok(None);
            };
            let a = a.as_primitive::<Decimal128Type>();
            match (c_is_left, am == 1) {
                // x - k or x + k, k - x or k + x: no rescaling per row.
                (false, true) => a.try_unary(|x| {
                    if sub {
                        x.checked_sub(k)
                    } else {
                        x.checked_add(k)
                    }
                    .ok_or_else(|| overflow(x, c))
                }),
                (true, true) => a.try_unary(|x| {
                    if sub {
                        k.checked_sub(x)
                    } else {
                        k.checked_add(x)
                    }
                    .ok_or_else(|| overflow(c, x))
                }),
                (false, false) => a.try_unary(|x| combine(x, c)),
                (true, false) => a.try_unary(|x| combine(c, x)),
            }
            .map_err(|e| e.to_string())?
        }
        (Value::Scalar(_), Value::Scalar(_)) => return Ok(None),
    };
    Ok(Some(Value::Array(Arc::new(out.with_data_type(out_type)))))
}

/// Casts a value; a no-op when it already has type `to`.
fn cast_value(v: Value, to: &DataType) -> Result<Value, String> {
    if v.data_type() == to {
        Ok(v)
    } else {
        v.map(|a| cast_checked(a, to))
    }
}

/// Casts with DataFusion's default semantics: a value that does not fit is an error.
pub(crate) fn cast_checked(a: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    if a.data_type() == to {
        return Ok(a.clone());
    }
    if let (DataType::Decimal128(_, scale), DataType::Float64) = (a.data_type(), to) {
        // Arrow computes `x as f64 / 10^scale`; converting through i64 when x fits gives
        // the same f64 (both round to nearest) without a 128-bit conversion routine.
        let divisor = 10_f64.powi(i32::from(*scale));
        let decimals = a.as_primitive::<Decimal128Type>();
        // Two loops: in one that converts either way, the compiler folds both conversions
        // into the 128-bit one (a library call in `wasm32`).
        let fits = decimals
            .values()
            .iter()
            .all(|&x| x >= i128::from(i64::MIN) && x <= i128::from(i64::MAX));
        let out: Float64Array = if fits {
            decimals.unary(|x| (x as i64) as f64 / divisor)
        } else {
            decimals.unary(|x| x as f64 / divisor)
        };
        return Ok(Arc::new(out));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(a.as_ref(), to, &options).map_err(|e| e.to_string())
}

/// A `Decimal64` column (a Parquet INT64 decimal the parser kept 64-bit) as the
/// `Decimal128` of the same precision and scale that SQL typed it as; other arrays as they
/// are.
///
/// # Errors
/// Only when the precision is invalid, which the parser has already refused.
pub(crate) fn widen_decimal(a: &ArrayRef) -> Result<ArrayRef, String> {
    match a.data_type() {
        DataType::Decimal64(p, s) => {
            let wide: Decimal128Array = a
                .as_primitive::<arrow_array::types::Decimal64Type>()
                .unary(i128::from);
            Ok(Arc::new(
                wide.with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ))
        }
        _ => Ok(a.clone()),
    }
}

/// `batch` with every `Decimal64` column widened by [`widen_decimal`] (the batch itself
/// when it has none).
///
/// # Errors
/// As [`widen_decimal`].
pub(crate) fn widen_decimals(batch: RecordBatch) -> Result<RecordBatch, String> {
    let narrow = |t: &DataType| matches!(t, DataType::Decimal64(..));
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| narrow(f.data_type()))
    {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(widen_decimal)
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<arrow_schema::Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
        .collect();
    let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(
        Arc::new(arrow_schema::Schema::new(fields)),
        columns,
        &options,
    )
    .map_err(|e| e.to_string())
}

/// The operands of `column <op> literal` (either order) when the column is a `Decimal64`
/// and the literal a decimal of the same scale whose value fits in 64 bits: the column as
/// it is and the literal as a `Decimal64` of the column's type, so the comparison reads
/// 8 bytes a row and nothing is widened first (TPC-H Q6's `l_discount BETWEEN 0.05 AND
/// 0.07`). The answer is the same as comparing the widened values. `None` otherwise.
fn narrow_comparison(
    l: &Expr,
    r: &Expr,
    batch: &RecordBatch,
) -> Result<Option<(Value, Value)>, String> {
    let (column, literal, column_left) = match (l, r) {
        (Expr::Column(c), Expr::Literal(v)) => (c, v, true),
        (Expr::Literal(v), Expr::Column(c)) => (c, v, false),
        _ => return Ok(None),
    };
    let Some(array) = batch.column_by_name(column) else {
        return Ok(None);
    };
    let DataType::Decimal64(p, s) = array.data_type() else {
        return Ok(None);
    };
    let value = literal_array(literal)?;
    let value = match value.data_type() {
        DataType::Decimal128(_, ls) if ls == s && value.is_valid(0) => {
            match i64::try_from(value.as_primitive::<Decimal128Type>().value(0)) {
                Ok(v) => v,
                Err(_) => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let scalar: ArrayRef = Arc::new(
        arrow_array::Decimal64Array::from(vec![value])
            .with_precision_and_scale(*p, *s)
            .map_err(|e| e.to_string())?,
    );
    let (column, scalar) = (Value::Array(array.clone()), Value::Scalar(scalar));
    Ok(Some(if column_left {
        (column, scalar)
    } else {
        (scalar, column)
    }))
}

/// `column <op> constant` (either order) over 32- or 64-bit integer-like values (integers,
/// dates, timestamps, `Decimal64`) with a non-NULL constant of the same type: the same
/// array as `arrow_ord::cmp`, NULL where the column is NULL. The comparison results are
/// first written as one byte per row and then packed into bits, 64 rows at a time, a
/// shape that compiles to vector compares and bitmask packing in the sandbox (arrow's
/// kernel packs bit by bit, which Cranelift runs as a scalar loop). `None` for other
/// operands.
fn compare_with_constant(op: CmpOp, l: &Value, r: &Value) -> Option<BooleanArray> {
    use arrow_array::types::*;
    let (array, constant, op) = match (l, r) {
        (Value::Array(a), Value::Scalar(c)) => (a, c, op),
        (Value::Scalar(c), Value::Array(a)) => (a, c, op.flipped()),
        _ => return None,
    };
    if array.data_type() != constant.data_type() || constant.is_null(0) {
        return None;
    }
    macro_rules! values {
        ($t:ty) => {{
            let c = constant.as_primitive::<$t>().value(0);
            compare_values(array.as_primitive::<$t>().values(), c, op)
        }};
    }
    let bits = match array.data_type() {
        DataType::Int32 => values!(Int32Type),
        DataType::Date32 => values!(Date32Type),
        DataType::Int64 => values!(Int64Type),
        DataType::Date64 => values!(Date64Type),
        DataType::Decimal64(..) => values!(Decimal64Type),
        _ => return None,
    };
    Some(BooleanArray::new(bits, array.logical_nulls()))
}

fn compare_values<N: Copy + PartialOrd>(
    values: &[N],
    c: N,
    op: CmpOp,
) -> arrow_buffer::BooleanBuffer {
    match op {
        CmpOp::Eq => pack_bits(values, |v| v == c),
        CmpOp::NotEq => pack_bits(values, |v| v != c),
        CmpOp::Lt => pack_bits(values, |v| v < c),
        CmpOp::LtEq => pack_bits(values, |v| v <= c),
        CmpOp::Gt => pack_bits(values, |v| v > c),
        CmpOp::GtEq => pack_bits(values, |v| v >= c),
    }
}

/// Bit i of the result is `f(values[i])`.
#[inline(always)]
fn pack_bits<N: Copy>(values: &[N], f: impl Fn(N) -> bool) -> arrow_buffer::BooleanBuffer {
    let mut words: Vec<u64> = Vec::with_capacity(values.len().div_ceil(64));
    let chunks = values.chunks_exact(64);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut bytes = [0u8; 64];
        for (b, &v) in bytes.iter_mut().zip(chunk) {
            // 0xFF or 0: the lanes of a vector compare.
            *b = u8::from(f(v)).wrapping_neg();
        }
        words.push(top_bits(&bytes));
    }
    if !tail.is_empty() {
        let mut word = 0u64;
        for (i, &v) in tail.iter().enumerate() {
            word |= u64::from(f(v)) << i;
        }
        words.push(word);
    }
    arrow_buffer::BooleanBuffer::new(Buffer::from_vec(words), 0, values.len())
}

/// Bit i is the top bit of `bytes[i]`: four 16-byte bitmasks (`i8x16.bitmask` in the
/// sandbox, `pmovmskb` natively, the same steps).
#[inline(always)]
fn top_bits(bytes: &[u8; 64]) -> u64 {
    let mut word = 0u64;
    for (k, block) in bytes.chunks_exact(16).enumerate() {
        let block: &[u8; 16] = block.try_into().expect("16 bytes");
        word |= u64::from(bitmask16(block)) << (16 * k);
    }
    word
}

#[inline(always)]
fn bitmask16(block: &[u8; 16]) -> u16 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        use core::arch::wasm32::*;
        // SAFETY: `block` is 16 readable bytes; v128_load has no alignment requirement.
        let v = unsafe { v128_load(block.as_ptr().cast::<v128>()) };
        i8x16_bitmask(v)
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use core::arch::x86_64::*;
        // SAFETY: `block` is 16 readable bytes; _mm_loadu_si128 has no alignment
        // requirement; SSE2 is enabled for this build (checked by the cfg).
        unsafe { _mm_movemask_epi8(_mm_loadu_si128(block.as_ptr().cast::<__m128i>())) as u16 }
    }
    #[cfg(not(any(
        all(target_arch = "wasm32", target_feature = "simd128"),
        all(target_arch = "x86_64", target_feature = "sse2")
    )))]
    {
        block
            .iter()
            .enumerate()
            .fold(0u16, |m, (i, &b)| m | (u16::from(b >> 7) << i))
    }
}

/// Evaluates `expr` over `batch` into an array of `batch.num_rows()` rows.
///
/// # Errors
/// As [`evaluate`].
pub fn evaluate_to_array(expr: &Expr, batch: &RecordBatch) -> Result<ArrayRef, String> {
    evaluate(expr, batch)?.into_array(batch.num_rows())
}

/// Builds an array of length 1 holding the literal.
///
/// # Errors
/// A message when the value does not fit the literal's declared type.
pub fn literal_array(literal: &Literal) -> Result<ArrayRef, String> {
    fn primitive(bytes: &[u8], data_type: &DataType) -> Result<ArrayRef, String> {
        let width = data_type
            .primitive_width()
            .ok_or_else(|| format!("literal of type {data_type} is not a primitive"))?;
        if width > bytes.len() {
            return Err(format!("literal does not fit type {data_type}"));
        }
        let data = arrow_data::ArrayData::builder(data_type.clone())
            .len(1)
            .add_buffer(Buffer::from_slice_ref(&bytes[..width]))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(arrow_array::make_array(data))
    }
    match literal {
        Literal::Null(t) => Ok(new_null_array(t, 1)),
        Literal::Bool(b) => Ok(Arc::new(BooleanArray::from(vec![*b]))),
        Literal::Int(v, t) => primitive(&v.to_le_bytes(), t),
        Literal::UInt(v, t) => primitive(&v.to_le_bytes(), t),
        Literal::Float(v, t) => match t {
            DataType::Float32 => primitive(&(*v as f32).to_le_bytes(), t),
            DataType::Float16 => Err("Float16 literals are not supported".into()),
            _ => primitive(&v.to_le_bytes(), t),
        },
        Literal::Decimal(v, t) => {
            let v: i128 = v.parse().map_err(|e| format!("decimal literal {v}: {e}"))?;
            match t {
                DataType::Decimal128(_, _) => primitive(&v.to_le_bytes(), t),
                _ => Err(format!("decimal literal of type {t} is not supported")),
            }
        }
        Literal::Utf8(s, t) => cast_checked(
            &(Arc::new(StringArray::from(vec![s.as_str()])) as ArrayRef),
            t,
        ),
    }
}

/// Evaluates a predicate into a selection mask: NULL counts as false.
pub(crate) fn predicate_mask(expr: &Expr, batch: &RecordBatch) -> Result<BooleanArray, String> {
    let v = evaluate_to_array(expr, batch)?;
    let mask = as_bool(&v)?;
    Ok(match mask.nulls() {
        Some(nulls) if nulls.null_count() > 0 => {
            BooleanArray::new(mask.values() & nulls.inner(), None)
        }
        _ => mask.clone(),
    })
}

/// The SALT constants of the Parquet format's split-block Bloom filter (`BloomFilter.md`).
const SBBF_SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// xxHash64 (seed 0) of the 8 little-endian bytes of `v`, as the Parquet format hashes
/// values for its Bloom filters: the XXH64 algorithm
/// (<https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>) written out for an
/// input of exactly 8 bytes, so it inlines into the probe loop (a unit test checks it
/// against the `twox-hash` crate parquet uses).
#[inline]
pub(crate) fn xxhash64_of_i64(v: i64) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    let lane = (v as u64).wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
    let mut h = P5.wrapping_add(8) ^ lane;
    h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// Whether the split-block Bloom filter `bitset` (see [`Expr::BloomFilter`]) may hold the
/// value whose xxHash64 is `hash`: the block is `((hash >> 32) * blocks) >> 32`, and each
/// of its eight words must have bit `((hash as u32) * SALT[i]) >> 27` set. Reads the bitset
/// in place (no copy per batch), without a branch per word; `bitset` is a whole number of
/// 32-byte blocks.
#[inline]
fn sbbf_may_contain(bitset: &[u8], hash: u64) -> bool {
    let blocks = (bitset.len() / 32) as u64;
    let at = (((hash >> 32) * blocks) >> 32) as usize * 32;
    let Some(block) = bitset.get(at..at + 32) else {
        return true;
    };
    let key = hash as u32;
    let mut missing = 0u32;
    for (i, salt) in SBBF_SALT.iter().enumerate() {
        let word = u32::from_le_bytes([
            block[4 * i],
            block[4 * i + 1],
            block[4 * i + 2],
            block[4 * i + 3],
        ]);
        missing |= !word & (1 << (key.wrapping_mul(*salt) >> 27));
    }
    missing == 0
}

/// `keys IN bloom_filter(bitset)`, row by row: integer keys (Int8 to Int64, UInt8 to
/// UInt32, Date32) are hashed as their little-endian `i64`; NULL is false.
///
/// # Errors
/// When the bitset breaks [`pushdown_protocol::BloomBits::check`]'s rules or the keys are
/// not of an integer type.
fn bloom_probe(keys: &ArrayRef, bitset: &[u8]) -> Result<BooleanArray, String> {
    use arrow_array::types::{
        Date32Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
    };
    if bitset.len() < 32 || !bitset.len().is_power_of_two() {
        return Err(format!(
            "a Bloom filter's bitset is {} bytes, not a power of two of at least 32",
            bitset.len()
        ));
    }
    fn probe<T: arrow_array::ArrowPrimitiveType>(keys: &ArrayRef, bitset: &[u8]) -> BooleanArray
    where
        T::Native: Into<i64>,
    {
        let keys = keys.as_primitive::<T>();
        let values = keys.values();
        let hits = arrow_buffer::BooleanBuffer::collect_bool(values.len(), |i| {
            sbbf_may_contain(bitset, xxhash64_of_i64(values[i].into()))
        });
        // NULL is false: a join key that is NULL matches nothing.
        let hits = match keys.nulls() {
            Some(nulls) => &hits & nulls.inner(),
            None => hits,
        };
        BooleanArray::new(hits, None)
    }
    Ok(match keys.data_type() {
        DataType::Int8 => probe::<Int8Type>(keys, bitset),
        DataType::Int16 => probe::<Int16Type>(keys, bitset),
        DataType::Int32 => probe::<Int32Type>(keys, bitset),
        DataType::Int64 => probe::<Int64Type>(keys, bitset),
        DataType::UInt8 => probe::<UInt8Type>(keys, bitset),
        DataType::UInt16 => probe::<UInt16Type>(keys, bitset),
        DataType::UInt32 => probe::<UInt32Type>(keys, bitset),
        DataType::Date32 => probe::<Date32Type>(keys, bitset),
        other => return Err(format!("a Bloom filter over {other} keys is not supported")),
    })
}

/// `value IN (list)` for an integer column (Int8 to Int64, UInt8 to UInt32, Date32) and a
/// list of more than 8 integer constants (a join filter's keys): one probe of an
/// [`IntegerSet`] per row instead of one comparison pass per constant. A null row stays
/// null (SQL's three-valued `IN`; the list holds no nulls). `None` when this does not apply.
fn in_integer_set(value: &Value, list: &[Expr], negated: bool) -> Option<Value> {
    use arrow_array::types::{
        Date32Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type, UInt8Type,
    };
    if list.len() <= 8 {
        return None;
    }
    let Value::Array(array) = value else {
        return None;
    };
    let mut keys = Vec::with_capacity(list.len());
    for item in list {
        match item {
            Expr::Literal(Literal::Int(v, _)) => keys.push(*v),
            Expr::Literal(Literal::UInt(v, _)) => keys.push(i64::try_from(*v).ok()?),
            _ => return None,
        };
    }
    let set = IntegerSet::new(&keys);
    fn probe<T: arrow_array::ArrowPrimitiveType>(
        array: &ArrayRef,
        set: &IntegerSet,
        negated: bool,
    ) -> BooleanArray
    where
        T::Native: Into<i64>,
    {
        let a = array.as_primitive::<T>();
        let hits = arrow_buffer::BooleanBuffer::collect_bool(a.len(), |i| {
            set.contains(a.value(i).into()) != negated
        });
        // Null rows: null.
        BooleanArray::new(hits, a.nulls().cloned())
    }
    let out = match array.data_type() {
        DataType::Int8 => probe::<Int8Type>(array, &set, negated),
        DataType::Int16 => probe::<Int16Type>(array, &set, negated),
        DataType::Int32 => probe::<Int32Type>(array, &set, negated),
        DataType::Int64 => probe::<Int64Type>(array, &set, negated),
        DataType::UInt8 => probe::<UInt8Type>(array, &set, negated),
        DataType::UInt16 => probe::<UInt16Type>(array, &set, negated),
        DataType::UInt32 => probe::<UInt32Type>(array, &set, negated),
        DataType::Date32 => probe::<Date32Type>(array, &set, negated),
        _ => return None,
    };
    Some(Value::Array(Arc::new(out)))
}

/// A set of `i64` for `IN` lists: open addressing with linear probing in a table of at
/// least twice as many slots as keys (Fibonacci hashing: the key times 2^64/φ, top bits),
/// behind a min/max check. A few nanoseconds per probe where `std`'s SipHash set takes
/// tens (the guest runs it once per row of a join filter). Keys within a range of at most
/// [`BITMAP_SPAN`] values (TPC-H Q17's 204 part keys of 200 000) are held as a bitmap of
/// that range instead: one bit test per probe, without a hash or a probe loop.
pub(crate) struct IntegerSet {
    /// Bit `k - min` set for each key `k`, when the keys span at most [`BITMAP_SPAN`].
    bitmap: Option<Vec<u64>>,
    slots: Vec<i64>,
    /// Slot value meaning "empty"; a key equal to it is tracked by `holds_empty`.
    empty: i64,
    holds_empty: bool,
    shift: u32,
    min: i64,
    max: i64,
}

/// Widest range of keys an [`IntegerSet`] holds as a bitmap (2^20 bits, 128 KiB).
const BITMAP_SPAN: u64 = 1 << 20;

impl IntegerSet {
    pub(crate) fn new(keys: &[i64]) -> Self {
        let (min, max) = (
            keys.iter().copied().min().unwrap_or(0),
            keys.iter().copied().max().unwrap_or(-1),
        );
        if !keys.is_empty() && (max.wrapping_sub(min) as u64) < BITMAP_SPAN {
            let span = max.wrapping_sub(min) as u64 + 1;
            let mut bitmap = vec![0u64; span.div_ceil(64) as usize];
            for &k in keys {
                let d = k.wrapping_sub(min) as u64;
                bitmap[(d >> 6) as usize] |= 1 << (d & 63);
            }
            return Self {
                bitmap: Some(bitmap),
                slots: Vec::new(),
                empty: i64::MIN,
                holds_empty: false,
                shift: 0,
                min,
                max,
            };
        }
        let bits = (keys.len().max(1) * 2)
            .next_power_of_two()
            .trailing_zeros()
            .max(1);
        let empty = i64::MIN;
        let mut set = Self {
            bitmap: None,
            slots: vec![empty; 1 << bits],
            empty,
            holds_empty: false,
            shift: 64 - bits,
            min: keys.iter().copied().min().unwrap_or(0),
            max: keys.iter().copied().max().unwrap_or(-1),
        };
        let mask = set.slots.len() - 1;
        for &k in keys {
            if k == empty {
                set.holds_empty = true;
                continue;
            }
            let mut i = set.slot(k);
            while set.slots[i] != empty && set.slots[i] != k {
                i = (i + 1) & mask;
            }
            set.slots[i] = k;
        }
        set
    }

    #[inline]
    fn slot(&self, k: i64) -> usize {
        ((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[inline]
    pub(crate) fn contains(&self, k: i64) -> bool {
        if let Some(bitmap) = &self.bitmap {
            // Below `min` wraps to a large offset; past the last word is out of the range,
            // and the last word's bits past `max` are clear.
            let d = k.wrapping_sub(self.min) as u64;
            return bitmap
                .get((d >> 6) as usize)
                .is_some_and(|w| (w >> (d & 63)) & 1 == 1);
        }
        if k < self.min || k > self.max {
            return false;
        }
        if k == self.empty {
            return self.holds_empty;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.slot(k);
        loop {
            let s = self.slots[i];
            if s == k {
                return true;
            }
            if s == self.empty {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
}
