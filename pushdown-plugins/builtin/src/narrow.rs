//! Decimal arithmetic in 64 bits for aggregate arguments.
//!
//! SQL gives every decimal expression a 128-bit type once its precision passes 18
//! (DataFusion types TPC-H Q1's `l_extendedprice * (1 - l_discount) * (1 + l_tax)` as
//! `Decimal128(38, 6)`), yet the values of such expressions over Parquet `INT64` decimal
//! columns mostly fit in 64 bits. [`evaluate`] computes `+`, `-` and `*` over `Decimal64`
//! columns (as [`crate::parse_parquet`] reads them with `narrow_decimals`) and decimal
//! constants with 64-bit integers when a bound on the operands' magnitudes proves that
//! no result reaches 2^[`MAX_BITS`] (below 10^18, so every value is also a valid
//! `Decimal64(18, s)`), and a `CAST(… AS DOUBLE)` of such an expression straight from the
//! 64-bit values. For any other expression, or when the bound does not hold, it declines
//! and the caller evaluates in 128 bits ([`crate::evaluate`]): the values are the same
//! either way, and the aggregate states get the same types.
//!
//! The values and result types follow the Arrow kernels `arrow_arith::numeric::{add,
//! sub, mul}_wrapping` for `Decimal128` (result scale of `*` is the sum of the scales; of
//! `+` and `-` the larger one, the other operand multiplied by a power of ten) and the
//! `Decimal128 → Float64` cast of `arrow_cast` (`x as f64 / 10^scale`).

use arrow_arith::numeric;
use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Decimal64Type, Float64Type};
use arrow_array::{Array, Decimal64Array, RecordBatch};
use arrow_schema::DataType;
use pushdown_protocol::{ArithmeticOp, Expr, Literal};
use std::sync::Arc;

use crate::eval::{literal_array, Memo, Value};

/// Bound on the significant bits of any value held in 64 bits: 2^59 < 10^18, so every
/// value stays within `Decimal64`'s 18 digits and a sum of up to 2^4 values within i64.
const MAX_BITS: u32 = 59;

/// A decimal expression's values held in 64 bits.
#[derive(Debug, Clone)]
pub(crate) struct Narrow {
    /// The values at the scale of `sql_type`, NULL where the SQL value is NULL; typed
    /// `Decimal64(p, s)`, p at most 18.
    values: Decimal64Array,
    /// True when `values` is one constant (length 1) rather than one value per row.
    scalar: bool,
    /// The type SQL gives the expression, a `Decimal128`.
    sql_type: DataType,
    /// No value's magnitude (NULL slots included) has more significant bits.
    bits: u32,
}

impl Narrow {
    fn scale(&self) -> i8 {
        match self.sql_type {
            DataType::Decimal128(_, s) => s,
            _ => unreachable!("a narrow value has a Decimal128 SQL type"),
        }
    }
}

/// The value of an aggregate argument computed in 64 bits: a `Decimal64` array (of
/// `Decimal64(p, s)` where SQL types the expression `Decimal128(q, s)`, holding the same
/// values; p is the fewest digits that hold this batch's values, a bound a SUM uses)
/// for a decimal expression, a `Float64` array for its cast to DOUBLE. `None` when
/// the expression is not one of those over at least one `Decimal64` column, or a bound
/// does not prove that its values fit: the caller then evaluates it in 128 bits.
/// With `decimal_under_cast`, a cast to DOUBLE comes as the decimal values under it
/// (for a COUNT, which reads only NULLs, and a SUM that adds the decimals exactly).
/// Results are recorded in `memo`, as [`crate::eval::evaluate_memo`] records its own.
pub(crate) fn evaluate(
    expr: &Expr,
    batch: &RecordBatch,
    memo: &mut Memo,
    decimal_under_cast: bool,
) -> Option<Value> {
    if let (Expr::Cast(inner, DataType::Float64), true) = (expr, decimal_under_cast) {
        return evaluate(inner, batch, memo, false);
    }
    if let Expr::Cast(inner, DataType::Float64) = expr {
        if let Some(v) = memo.value(expr) {
            return Some(v);
        }
        let n = narrow(inner, batch, memo).filter(|n| !n.scalar)?;
        let v = Value::Array(Arc::new(to_double(&n)));
        memo.record_value(expr, &v);
        return Some(v);
    }
    let n = narrow(expr, batch, memo).filter(|n| !n.scalar)?;
    let scale = n.scale();
    let values = n
        .values
        .with_precision_and_scale(digits(n.bits, scale), scale)
        .ok()?;
    Some(Value::Array(Arc::new(values)))
}

/// The fewest decimal digits p (at least the scale, at least 1) with 10^p ≥ 2^`bits`:
/// every value of at most `bits` significant bits is a valid decimal of precision p
/// (at most 18 for `bits` ≤ [`MAX_BITS`]).
fn digits(bits: u32, scale: i8) -> u8 {
    let mut p = 1u8;
    while 10_u128.pow(u32::from(p)) < 1_u128 << bits {
        p += 1;
    }
    p.max(u8::try_from(scale).unwrap_or(0))
}

/// Significant bits of the largest magnitude a decimal of precision `p` holds
/// (10^p - 1), `None` past 18 digits.
pub(crate) fn precision_bits(p: u8) -> Option<u32> {
    let largest = 10_i64.checked_pow(u32::from(p))? - 1;
    Some(significant_bits(&[largest]))
}

/// The 64-bit form of `expr`, or `None` (see [`evaluate`]).
fn narrow(expr: &Expr, batch: &RecordBatch, memo: &mut Memo) -> Option<Narrow> {
    if let Some(known) = memo.narrow(expr) {
        return known;
    }
    let out = match expr {
        Expr::Column(name) => {
            let column = batch.column_by_name(name)?;
            let DataType::Decimal64(p, s) = *column.data_type() else {
                return None;
            };
            let values = column.as_primitive::<Decimal64Type>().clone();
            let bits = significant_bits(values.values());
            (bits <= MAX_BITS).then(|| Narrow {
                values,
                scalar: false,
                sql_type: DataType::Decimal128(p, s),
                bits,
            })
        }
        Expr::Literal(literal @ Literal::Decimal(..)) => constant(literal),
        Expr::Arithmetic(op, l, r) => match (narrow(l, batch, memo), narrow(r, batch, memo)) {
            (Some(l), Some(r)) if !(l.scalar && r.scalar) => arithmetic(*op, &l, &r),
            _ => None,
        },
        // A cast to a decimal of the same scale and no smaller precision keeps the values.
        Expr::Cast(inner, to @ DataType::Decimal128(p2, s2)) => narrow(inner, batch, memo)
            .and_then(|n| match n.sql_type {
                DataType::Decimal128(p, s) if s == *s2 && p <= *p2 => Some(Narrow {
                    sql_type: to.clone(),
                    ..n
                }),
                _ => None,
            }),
        _ => None,
    };
    memo.record_narrow(expr, &out);
    out
}

/// A non-NULL decimal constant whose value fits.
fn constant(literal: &Literal) -> Option<Narrow> {
    let array = literal_array(literal).ok()?;
    let DataType::Decimal128(_, s) = *array.data_type() else {
        return None;
    };
    let decimals = array.as_primitive_opt::<Decimal128Type>()?;
    if decimals.is_null(0) {
        return None;
    }
    let v = i64::try_from(decimals.value(0)).ok()?;
    let bits = significant_bits(&[v]);
    (bits <= MAX_BITS).then(|| Narrow {
        values: Decimal64Array::from(vec![v]).with_data_type(DataType::Decimal64(18, s)),
        scalar: true,
        sql_type: array.data_type().clone(),
        bits,
    })
}

/// The most significant bits of any value's magnitude (the highest bit of the OR of the
/// magnitudes is the largest magnitude's: two SIMD instructions per two values, where a
/// minimum and maximum of 64-bit lanes have none).
pub(crate) fn significant_bits(values: &[i64]) -> u32 {
    64 - values
        .iter()
        .fold(0u64, |bits, v| bits | v.unsigned_abs())
        .leading_zeros()
}

/// Significant bits of 10^k, `None` past 10^18.
fn power_of_ten(k: i8) -> Option<(i64, u32)> {
    let m = 10_i64.checked_pow(u32::try_from(k).ok()?)?;
    Some((m, significant_bits(&[m])))
}

/// `l op r` in 64 bits, `None` for `/` and `%` or when the bound does not prove that no
/// value reaches 2^[`MAX_BITS`].
fn arithmetic(op: ArithmeticOp, l: &Narrow, r: &Narrow) -> Option<Narrow> {
    // The result type exactly as the 128-bit kernel derives it.
    let empty = |n: &Narrow| arrow_array::new_empty_array(&n.sql_type);
    let (le, re) = (empty(l), empty(r));
    let out_type = match op {
        ArithmeticOp::Add => numeric::add_wrapping(&le, &re),
        ArithmeticOp::Sub => numeric::sub_wrapping(&le, &re),
        ArithmeticOp::Mul => numeric::mul_wrapping(&le, &re),
        ArithmeticOp::Div | ArithmeticOp::Rem => return None,
    }
    .ok()?
    .data_type()
    .clone();
    let DataType::Decimal128(_, scale) = out_type else {
        return None;
    };
    let label = DataType::Decimal64(18, scale);
    let (values, bits) = match op {
        ArithmeticOp::Mul => {
            let bits = l.bits + r.bits;
            if scale != l.scale() + r.scale() || bits > MAX_BITS {
                return None;
            }
            (combine(l, r, |x, y| x * y), bits)
        }
        _ => {
            let sub = op == ArithmeticOp::Sub;
            let (lm, lb) = power_of_ten(scale - l.scale())?;
            let (rm, rb) = power_of_ten(scale - r.scale())?;
            let bits = (l.bits + lb).max(r.bits + rb) + 1;
            if bits > MAX_BITS {
                return None;
            }
            let values = match (lm, rm, sub) {
                (1, 1, false) => combine(l, r, |x, y| x + y),
                (1, 1, true) => combine(l, r, |x, y| x - y),
                (_, _, false) => combine(l, r, |x, y| x * lm + y * rm),
                (_, _, true) => combine(l, r, |x, y| x * lm - y * rm),
            };
            (values, bits)
        }
    };
    Some(Narrow {
        values: values.with_data_type(label),
        scalar: false,
        sql_type: out_type,
        bits,
    })
}

/// `f(l, r)` row by row, a constant side read once; NULL where either side is NULL.
/// At most one side is a constant, and it is not NULL.
fn combine(l: &Narrow, r: &Narrow, f: impl Fn(i64, i64) -> i64) -> Decimal64Array {
    match (l.scalar, r.scalar) {
        (true, _) => {
            let x = l.values.value(0);
            r.values.unary(|y| f(x, y))
        }
        (_, true) => {
            let y = r.values.value(0);
            l.values.unary(|x| f(x, y))
        }
        _ => arrow_arith::arity::binary(&l.values, &r.values, f)
            .expect("operands of one batch have the same length"),
    }
}

/// The values as DOUBLE, as the cast from `Decimal128` computes them (`x as f64 /
/// 10^scale`; converting a value of at most 31 bits from i32 gives the same double and
/// lets the compiler convert two at a time).
fn to_double(n: &Narrow) -> arrow_array::Float64Array {
    let divisor = 10_f64.powi(i32::from(n.scale()));
    if n.bits <= 31 {
        n.values
            .unary::<_, Float64Type>(|x| f64::from(x as i32) / divisor)
    } else {
        n.values.unary::<_, Float64Type>(|x| x as f64 / divisor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::evaluate_to_array;
    use arrow_array::{ArrayRef, Decimal128Array};

    /// The value widened to the `Decimal128` SQL gives it.
    fn widened(n: &Narrow) -> ArrayRef {
        let wide: Decimal128Array = n.values.unary(i128::from);
        Arc::new(wide.with_data_type(n.sql_type.clone()))
    }

    fn col(n: &str) -> Box<Expr> {
        Box::new(Expr::Column(n.into()))
    }

    fn decimal(v: i128, p: u8, s: i8) -> Box<Expr> {
        Box::new(Expr::Literal(Literal::Decimal(
            v.to_string(),
            DataType::Decimal128(p, s),
        )))
    }

    /// A batch of two `Decimal64(15, 2)` columns and one `Decimal64(15, 4)`, NULLs in
    /// each, the largest magnitude `big` in `a`.
    fn batch(big: i64) -> RecordBatch {
        let column = |values: Vec<Option<i64>>, s: i8| -> ArrayRef {
            Arc::new(
                Decimal64Array::from(values)
                    .with_precision_and_scale(15, s)
                    .unwrap(),
            )
        };
        let n = 37;
        let a = (0..n)
            .map(|i: i64| match i % 7 {
                0 => None,
                1 => Some(big),
                2 => Some(-big),
                _ => Some(i * 104_729 % 10_000_000 - 5_000_000),
            })
            .collect();
        let b = (0..n)
            .map(|i: i64| (i % 5 != 3).then_some(i % 11 - 3))
            .collect();
        let c = (0..n).map(|i: i64| Some(i * 37 - 600)).collect();
        RecordBatch::try_from_iter(vec![
            ("a", column(a, 2)),
            ("b", column(b, 2)),
            ("c", column(c, 4)),
        ])
        .unwrap()
    }

    /// Every `+`, `-`, `*` of two operands among the columns and constants, both orders,
    /// and TPC-H Q1's nested shape.
    fn expressions() -> Vec<Expr> {
        let operands = [
            col("a"),
            col("b"),
            col("c"),
            decimal(100, 15, 2),
            decimal(-7, 15, 3),
        ];
        let mut out = Vec::new();
        for op in [ArithmeticOp::Add, ArithmeticOp::Sub, ArithmeticOp::Mul] {
            for l in &operands {
                for r in &operands {
                    out.push(Expr::Arithmetic(op, l.clone(), r.clone()));
                }
            }
        }
        let disc_price = Expr::Arithmetic(
            ArithmeticOp::Mul,
            col("a"),
            Box::new(Expr::Arithmetic(
                ArithmeticOp::Sub,
                decimal(100, 1, 2),
                col("b"),
            )),
        );
        let charge = Expr::Arithmetic(
            ArithmeticOp::Mul,
            Box::new(disc_price.clone()),
            Box::new(Expr::Arithmetic(
                ArithmeticOp::Add,
                decimal(100, 1, 2),
                col("c"),
            )),
        );
        out.extend([
            disc_price,
            charge,
            Expr::Cast(col("a"), DataType::Decimal128(25, 2)),
        ]);
        out
    }

    #[test]
    fn values_and_types_equal_the_128_bit_evaluation() {
        // Small values take the 64-bit path everywhere; values near 2^59 make the
        // products (and, near 2^58, the sums) decline.
        for big in [9_999_999, 1 << 40, (1 << 58) + 1, (1 << 59) - 1] {
            let b = batch(big);
            let wide = crate::eval::widen_decimals(b.clone()).unwrap();
            let mut taken = 0;
            for e in expressions() {
                let expected = evaluate_to_array(&e, &wide);
                let mut memo = Memo::default();
                if let Some(n) = narrow(&e, &b, &mut memo).filter(|n| !n.scalar) {
                    taken += 1;
                    let expected = expected.unwrap();
                    assert_eq!(widened(&n).as_ref(), expected.as_ref(), "{e:?}, {big}");
                    assert!(n.bits <= MAX_BITS);
                    // As DOUBLE, equal to the cast of the 128-bit values.
                    let cast = Expr::Cast(Box::new(e.clone()), DataType::Float64);
                    let Some(Value::Array(double)) = evaluate(&cast, &b, &mut memo, false) else {
                        panic!("{cast:?} declined")
                    };
                    let expected = evaluate_to_array(&cast, &wide).unwrap();
                    assert_eq!(double.as_ref(), expected.as_ref(), "{cast:?}");
                }
            }
            // 45 binary expressions with at least one column side, Q1's two, the cast.
            let all = 3 * (25 - 4) + 3;
            if big < 1 << 24 {
                assert_eq!(taken, all, "{big}");
            } else {
                assert!(taken < all, "{big}: a bound that should fail held");
            }
        }
    }

    #[test]
    fn digits_hold_every_value_of_so_many_bits() {
        for bits in 0..=MAX_BITS {
            for scale in [0i8, 2, 6] {
                let p = digits(bits, scale);
                assert!(p <= 18 && p >= 1 && p as i8 >= scale);
                // The largest magnitude of `bits` bits fits p digits; p - 1 digits (when
                // the scale allows fewer) do not hold it.
                let largest = (1u128 << bits) - 1;
                assert!(largest < 10u128.pow(p.into()), "{bits} bits, {p} digits");
                if p > 1 && p as i8 > scale {
                    assert!(
                        largest >= 10u128.pow((p - 1).into()),
                        "{bits} bits, {p} digits"
                    );
                }
            }
        }
        assert_eq!(precision_bits(15), Some(50));
        assert_eq!(precision_bits(19), None);
    }

    #[test]
    fn other_expressions_and_wide_columns_decline() {
        let b = batch(5);
        let wide = crate::eval::widen_decimals(b.clone()).unwrap();
        let mut memo = Memo::default();
        for e in [
            Expr::Arithmetic(ArithmeticOp::Div, col("a"), col("b")),
            Expr::Arithmetic(ArithmeticOp::Add, decimal(1, 5, 2), decimal(2, 5, 2)),
            Expr::Cast(col("a"), DataType::Decimal128(25, 3)),
            Expr::Cast(col("a"), DataType::Int64),
        ] {
            assert!(evaluate(&e, &b, &mut memo, false).is_none(), "{e:?}");
        }
        let mut memo = Memo::default();
        let sum = Expr::Arithmetic(ArithmeticOp::Add, col("a"), col("b"));
        assert!(evaluate(&sum, &wide, &mut memo, false).is_none());
    }
}
