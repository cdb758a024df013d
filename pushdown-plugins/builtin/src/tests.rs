//! Unit tests of the pipeline, run natively (the same code runs in Wasm).

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    RecordBatch, StringArray,
};
use arrow_cast::pretty::pretty_format_batches;
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{AggregateFunction, ArithmeticOp, CmpOp, Expr, Literal, PartialAggregate};

use crate::eval::{evaluate_to_array, predicate_mask};
use crate::GroupedAggregator;

fn batch() -> RecordBatch {
    let columns: Vec<(&str, ArrayRef)> = vec![
        (
            "k",
            Arc::new(StringArray::from(vec![
                Some("a"),
                Some("b"),
                Some("a"),
                None,
                Some("b"),
            ])),
        ),
        (
            "x",
            Arc::new(Int64Array::from(vec![
                Some(1),
                Some(2),
                None,
                Some(4),
                Some(5),
            ])),
        ),
        (
            "p",
            Arc::new(
                Decimal128Array::from(vec![150, 250, 350, 450, 550])
                    .with_precision_and_scale(15, 2)
                    .unwrap(),
            ),
        ),
        ("d", Arc::new(Date32Array::from(vec![0, 10, 20, 30, 40]))),
        (
            "f",
            Arc::new(Float64Array::from(vec![0.5, 1.5, 2.5, f64::NAN, 4.5])),
        ),
    ];
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Every comparison operator.
const ALL_CMP_OPS: [CmpOp; 6] = [
    CmpOp::Eq,
    CmpOp::NotEq,
    CmpOp::Lt,
    CmpOp::LtEq,
    CmpOp::Gt,
    CmpOp::GtEq,
];

fn col(n: &str) -> Box<Expr> {
    Box::new(Expr::Column(n.into()))
}

fn int(v: i64) -> Box<Expr> {
    Box::new(Expr::Literal(Literal::Int(v, DataType::Int64)))
}

#[test]
fn predicates_use_three_valued_logic() {
    let b = batch();
    // x > 1 is NULL on row 2: dropped, and NOT(x > 1) is NULL there too.
    let gt = Expr::Cmp(CmpOp::Gt, col("x"), int(1));
    assert_eq!(
        predicate_mask(&gt, &b).unwrap(),
        BooleanArray::from(vec![false, true, false, true, true])
    );
    let not = Expr::Not(Box::new(gt.clone()));
    assert_eq!(
        predicate_mask(&not, &b).unwrap(),
        BooleanArray::from(vec![true, false, false, false, false])
    );
    // NULL OR true is true.
    let or = Expr::Or(vec![
        gt,
        Expr::IsNull {
            expr: col("x"),
            negated: false,
        },
    ]);
    assert_eq!(
        predicate_mask(&or, &b).unwrap(),
        BooleanArray::from(vec![false, true, true, true, true])
    );
    let in_list = Expr::InList {
        expr: col("k"),
        list: vec![Expr::Literal(Literal::Utf8("b".into(), DataType::Utf8))],
        negated: true,
    };
    assert_eq!(
        predicate_mask(&in_list, &b).unwrap(),
        BooleanArray::from(vec![true, false, true, false, false])
    );
    let between = Expr::And(vec![
        Expr::Cmp(
            CmpOp::GtEq,
            col("d"),
            Box::new(Expr::Literal(Literal::Int(10, DataType::Date32))),
        ),
        Expr::Cmp(
            CmpOp::LtEq,
            col("p"),
            Box::new(Expr::Literal(Literal::Decimal(
                "350".into(),
                DataType::Decimal128(15, 2),
            ))),
        ),
    ]);
    assert_eq!(
        predicate_mask(&between, &b).unwrap(),
        BooleanArray::from(vec![false, true, true, false, false])
    );
}

#[test]
fn decimal_arithmetic_matches_arrow_kernels() {
    let b = batch();
    let e = Expr::Arithmetic(
        ArithmeticOp::Mul,
        col("p"),
        Box::new(Expr::Arithmetic(
            ArithmeticOp::Sub,
            Box::new(Expr::Literal(Literal::Decimal(
                "100".into(),
                DataType::Decimal128(15, 2),
            ))),
            col("p"),
        )),
    );
    let out = evaluate_to_array(&e, &b).unwrap();
    // (15,2) - (15,2) is (16,2); (15,2) * (16,2) is (15+16+1, 2+2).
    assert_eq!(out.data_type(), &DataType::Decimal128(32, 4));
    let out = out.as_any().downcast_ref::<Decimal128Array>().unwrap();
    assert_eq!(out.value_as_string(0), "-0.7500"); // 1.50 * (1.00 - 1.50)
}

#[test]
fn fast_decimal_multiply_and_cast_equal_the_arrow_kernels() {
    // Values that fit in 64 bits, products that do not, factors that do not, and NULLs.
    let big = i128::from(i64::MAX) * 1000;
    let xs = vec![
        Some(150),
        Some(-7),
        Some(i128::from(i64::MAX)),
        Some(big),
        Some(i128::MAX / 300),
        None,
        Some(i128::from(i64::MIN)),
    ];
    let ys = vec![
        Some(250),
        None,
        Some(3),
        Some(-2),
        Some(5),
        Some(1),
        Some(-1),
    ];
    let dec = |v: Vec<Option<i128>>, p, s| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(v)
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    };
    let b = RecordBatch::try_from_iter(vec![("x", dec(xs, 38, 2)), ("y", dec(ys, 20, 3))]).unwrap();
    let (x, y) = (b.column(0), b.column(1));
    let cases = [
        (
            Expr::Arithmetic(ArithmeticOp::Mul, col("x"), col("y")),
            arrow_arith::numeric::mul_wrapping(x, y).unwrap(),
        ),
        (
            Expr::Arithmetic(
                ArithmeticOp::Mul,
                col("x"),
                Box::new(Expr::Literal(Literal::Decimal(
                    "-125".into(),
                    DataType::Decimal128(4, 1),
                ))),
            ),
            arrow_arith::numeric::mul_wrapping(
                x,
                &arrow_array::Scalar::new(dec(vec![Some(-125)], 4, 1)),
            )
            .unwrap(),
        ),
    ];
    for (e, expected) in cases {
        assert_eq!(&evaluate_to_array(&e, &b).unwrap(), &expected, "{e}");
        // The first rows only: small factors, the path without a check per row.
        let small = b.slice(0, 2);
        let expected = expected.slice(0, 2);
        assert_eq!(&evaluate_to_array(&e, &small).unwrap(), &expected, "{e}");
    }
    // A product beyond 128 bits is an error, as in the Arrow kernel.
    let e = Expr::Arithmetic(
        ArithmeticOp::Mul,
        col("x"),
        Box::new(Expr::Literal(Literal::Decimal(
            "1000".into(),
            DataType::Decimal128(4, 0),
        ))),
    );
    let err = evaluate_to_array(&e, &b).unwrap_err();
    assert!(err.contains("Overflow"), "{err}");
    let cast = Expr::Cast(col("x"), DataType::Float64);
    let expected = arrow_cast::cast(x, &DataType::Float64).unwrap();
    assert_eq!(&evaluate_to_array(&cast, &b).unwrap(), &expected);
}

#[test]
fn fast_decimal_add_and_subtract_equal_the_arrow_kernels() {
    let dec = |v: Vec<Option<i128>>, p, s| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(v)
                .with_precision_and_scale(p, s)
                .unwrap(),
        )
    };
    let xs = vec![
        Some(150),
        Some(-7),
        None,
        Some(i128::from(i64::MAX)),
        Some(i128::MAX / 1000),
    ];
    let ys = vec![Some(3), Some(2), Some(1), None, Some(-4)];
    let b = RecordBatch::try_from_iter(vec![("x", dec(xs, 38, 2)), ("y", dec(ys, 10, 0))]).unwrap();
    let (x, y) = (b.column(0), b.column(1));
    let lit = |v: &str, p, s| {
        Box::new(Expr::Literal(Literal::Decimal(
            v.into(),
            DataType::Decimal128(p, s),
        )))
    };
    let scalar = |v, p, s| arrow_array::Scalar::new(dec(vec![Some(v)], p, s));
    use arrow_arith::numeric::{add_wrapping as add, sub_wrapping as sub};
    let cases = [
        // Array and array, scales 2 and 0.
        (
            Expr::Arithmetic(ArithmeticOp::Add, col("x"), col("y")),
            add(x, y),
        ),
        (
            Expr::Arithmetic(ArithmeticOp::Sub, col("y"), col("x")),
            sub(y, x),
        ),
        // A constant at a lower scale (TPC-H's `1 - l_discount`), either side.
        (
            Expr::Arithmetic(ArithmeticOp::Sub, lit("1", 20, 0), col("x")),
            sub(&scalar(1, 20, 0), x),
        ),
        (
            Expr::Arithmetic(ArithmeticOp::Add, col("x"), lit("1", 20, 0)),
            add(x, &scalar(1, 20, 0)),
        ),
        // A constant at a higher scale: the array side is rescaled per row.
        (
            Expr::Arithmetic(ArithmeticOp::Sub, col("y"), lit("12345", 10, 4)),
            sub(y, &scalar(12345, 10, 4)),
        ),
        (
            Expr::Arithmetic(ArithmeticOp::Add, lit("-5", 3, 1), col("y")),
            add(&scalar(-5, 3, 1), y),
        ),
    ];
    for (e, expected) in cases {
        assert_eq!(
            &evaluate_to_array(&e, &b).unwrap(),
            &expected.unwrap(),
            "{e}"
        );
    }
    // Beyond 128 bits is an error, as in the Arrow kernel.
    let e = Expr::Arithmetic(
        ArithmeticOp::Add,
        col("x"),
        lit("170141183460469231731687303715884105727", 38, 2),
    );
    let err = evaluate_to_array(&e, &b).unwrap_err();
    assert!(err.contains("Overflow"), "{err}");
}

#[test]
fn grouped_partial_aggregates_with_nulls() {
    let b = batch();
    let state = |function, argument: Expr, t: DataType| PartialAggregate {
        function,
        argument,
        state_type: t,
    };
    let aggregates = vec![
        (
            "n".to_string(),
            state(AggregateFunction::Count, *int(1), DataType::Int64),
        ),
        (
            "nx".to_string(),
            state(AggregateFunction::Count, *col("x"), DataType::Int64),
        ),
        (
            "sx".to_string(),
            state(AggregateFunction::Sum, *col("x"), DataType::Int64),
        ),
        (
            "sp".to_string(),
            state(
                AggregateFunction::Sum,
                *col("p"),
                DataType::Decimal128(25, 2),
            ),
        ),
        (
            "mind".to_string(),
            state(AggregateFunction::Min, *col("d"), DataType::Date32),
        ),
        (
            "maxk".to_string(),
            state(AggregateFunction::Max, *col("k"), DataType::Utf8),
        ),
    ];
    let mut fields = vec![Field::new("k", DataType::Utf8, true)];
    fields.extend(
        aggregates
            .iter()
            .map(|(n, a)| Field::new(n, a.state_type.clone(), true)),
    );
    let schema = Schema::new(fields);
    let group_by = vec![("k".to_string(), *col("k"))];
    let new = || {
        GroupedAggregator::try_new(
            group_by.clone(),
            aggregates.clone(),
            Arc::new(schema.clone()),
        )
        .unwrap()
    };
    let mut agg = new();
    agg.update(&b).unwrap();
    agg.update(&b.slice(0, 2)).unwrap();
    let out = agg.finish().unwrap();
    // The same rows as three partial states, merged: the same answer.
    let pushdown = pushdown_protocol::Pushdown::PartialAggregate {
        group_by: group_by.clone(),
        aggregates: aggregates.clone(),
    };
    let mut merger = crate::merge_aggregator(&pushdown, &schema).unwrap();
    for part in [b.slice(0, 3), b.slice(3, 2), b.slice(0, 2)] {
        let mut partial = new();
        partial.update(&part).unwrap();
        merger.update(&partial.finish().unwrap()).unwrap();
    }
    let merged = merger.finish().unwrap();
    assert_eq!(
        pretty_format_batches(&[merged]).unwrap().to_string(),
        pretty_format_batches(&[out.clone()]).unwrap().to_string()
    );
    let expected = "\
+---+---+----+----+-------+------------+------+
| k | n | nx | sx | sp    | mind       | maxk |
+---+---+----+----+-------+------------+------+
| a | 3 | 2  | 2  | 6.50  | 1970-01-01 | a    |
| b | 3 | 3  | 9  | 10.50 | 1970-01-11 | b    |
|   | 1 | 1  | 4  | 4.50  | 1970-01-31 |      |
+---+---+----+----+-------+------------+------+";
    assert_eq!(pretty_format_batches(&[out]).unwrap().to_string(), expected);
}

#[test]
fn global_aggregate_over_no_rows_is_one_row() {
    let aggregates = vec![
        (
            "n".to_string(),
            PartialAggregate {
                function: AggregateFunction::Count,
                argument: *int(1),
                state_type: DataType::Int64,
            },
        ),
        (
            "s".to_string(),
            PartialAggregate {
                function: AggregateFunction::Sum,
                argument: *col("f"),
                state_type: DataType::Float64,
            },
        ),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, true),
        Field::new("s", DataType::Float64, true),
    ]));
    let agg = GroupedAggregator::try_new(vec![], aggregates, schema).unwrap();
    let out = agg.finish().unwrap();
    assert_eq!(
        pretty_format_batches(&[out]).unwrap().to_string(),
        "+---+---+\n| n | s |\n+---+---+\n| 0 |   |\n+---+---+"
    );
}

#[test]
fn a_request_of_another_version_is_refused() {
    let err = crate::run_task(br#"{"version": 99}"#, vec![]).unwrap_err();
    assert!(
        err.contains("malformed pushdown request") || err.contains("version"),
        "{err}"
    );
    let err = crate::run_task(b"not json", vec![]).unwrap_err();
    assert!(err.contains("malformed pushdown request"), "{err}");
}

#[test]
fn a_long_integer_in_list_probes_a_hash_set_with_the_same_answers() {
    // 1000 rows with nulls, a list of 40 keys (a join filter's), plain and negated: the
    // hash-set path equals the OR of equalities row by row, nulls included.
    let x: Int64Array = (0..1000i64)
        .map(|i| (i % 7 != 3).then_some(i * 13 % 251))
        .collect();
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)])),
        vec![Arc::new(x)],
    )
    .unwrap();
    let keys: Vec<i64> = (0..40).map(|i| i * 5 + 1).collect();
    for negated in [false, true] {
        let in_list = Expr::InList {
            expr: col("x"),
            list: keys
                .iter()
                .map(|&k| Expr::Literal(Literal::Int(k, DataType::Int64)))
                .collect(),
            negated,
        };
        let ors = Expr::Or(
            keys.iter()
                .map(|&k| Expr::Cmp(CmpOp::Eq, col("x"), int(k)))
                .collect(),
        );
        let ors = if negated {
            Expr::Not(Box::new(ors))
        } else {
            ors
        };
        let fast = evaluate_to_array(&in_list, &b).unwrap();
        let slow = evaluate_to_array(&ors, &b).unwrap();
        assert_eq!(fast.as_ref(), slow.as_ref(), "negated: {negated}");
        assert!(fast.null_count() > 0);
    }
}

#[test]
fn the_integer_set_holds_exactly_its_keys_extremes_and_duplicates_included() {
    let keys = [
        i64::MIN,
        i64::MAX,
        -1,
        0,
        7,
        7,
        1 << 40,
        -(1 << 33),
        12345,
        99,
    ];
    let set = crate::eval::IntegerSet::new(&keys);
    for k in keys {
        assert!(set.contains(k), "{k}");
    }
    for k in [
        i64::MIN + 1,
        i64::MAX - 1,
        -2,
        1,
        8,
        (1 << 40) + 1,
        100,
        12344,
    ] {
        assert!(!set.contains(k), "{k}");
    }
    // Many keys colliding in the low bits: still exact.
    let many: Vec<i64> = (0..1000).map(|i| i << 20).collect();
    let set = crate::eval::IntegerSet::new(&many);
    assert!((0..2000i64).all(|i| set.contains(i << 20) == (i < 1000)));
    assert!(!set.contains(1));
    // Keys within a small range (held as a bitmap), negative ones and the range's edges
    // included: exact inside, outside and around the range, near the wrapping edges.
    for base in [-70i64, 0, 1 << 40, i64::MIN + 5, i64::MAX - 300] {
        let keys: Vec<i64> = (0..40).map(|i| base.wrapping_add(i * i % 257)).collect();
        let set = crate::eval::IntegerSet::new(&keys);
        for d in -400i64..700 {
            let k = base.wrapping_add(d);
            assert_eq!(set.contains(k), keys.contains(&k), "{base} + {d}");
        }
        for k in [i64::MIN, i64::MAX, 0, -1] {
            assert_eq!(set.contains(k), keys.contains(&k), "{k}");
        }
    }
}

#[test]
fn conjuncts_filtered_in_turn_select_the_rows_the_whole_and_selects() {
    // 1000 rows with nulls; conjuncts from unselective to very selective, in both orders:
    // filtering after each (when at most half the rows are left) gives the rows the whole
    // AND gives.
    let x: Int64Array = (0..1000i64).map(|i| (i % 11 != 5).then_some(i)).collect();
    let y: Int64Array = (0..1000i64)
        .map(|i| (i % 13 != 0).then_some(i % 97))
        .collect();
    let b = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Int64, true),
        ])),
        vec![Arc::new(x), Arc::new(y)],
    )
    .unwrap();
    let conjuncts = vec![
        Expr::Cmp(CmpOp::Gt, col("x"), int(10)),
        Expr::Cmp(CmpOp::Lt, col("y"), int(90)),
        Expr::Cmp(CmpOp::Lt, col("x"), int(400)),
        Expr::InList {
            expr: col("y"),
            list: (0..20).map(|i| *int(i * 3)).collect(),
            negated: false,
        },
    ];
    for order in [conjuncts.clone(), conjuncts.iter().rev().cloned().collect()] {
        let whole = predicate_mask(&Expr::And(order.clone()), &b).unwrap();
        let expected = arrow_select::filter::filter_record_batch(&b, &whole).unwrap();
        let got = crate::pipeline::filter_conjuncts(&order, b.clone(), None).unwrap();
        assert_eq!(got, expected);
        assert!(
            got.num_rows() > 0 && got.num_rows() < 200,
            "{}",
            got.num_rows()
        );
        // With a pushdown that reads only `y`, the filters stop copying `x` once no later
        // conjunct reads it: the same rows of `y` come out.
        let reads_y = pushdown_protocol::Pushdown::Project(vec![("y".into(), *col("y"))]);
        let got = crate::pipeline::filter_conjuncts(&order, b.clone(), Some(&reads_y)).unwrap();
        assert_eq!(got, expected.project(&[1]).unwrap());
    }
}

/// The guest's Bloom filter probe reads the bitset parquet's `Sbbf` writes (the host builds
/// join filters with it): every key inserted is found, in Int32, Int64 and Date32 columns;
/// NULL is not; of keys never inserted, few are (the false positive rate the size gives).
#[test]
fn the_bloom_filter_probe_finds_every_key_parquet_inserted() {
    use parquet::bloom_filter::Sbbf;

    let inserted: Vec<i64> = (0..5000i64).map(|i| i * 7 + 3).collect();
    let mut sbbf = Sbbf::new_with_ndv_fpp(inserted.len() as u64, 0.01).unwrap();
    for k in &inserted {
        sbbf.insert(k);
    }
    let mut bitset = Vec::new();
    sbbf.write_bitset(&mut bitset).unwrap();
    let bloom = |column: &str| Expr::BloomFilter {
        expr: col(column),
        bitset: pushdown_protocol::BloomBits(bitset.clone()),
    };
    let i64s: Int64Array = inserted.iter().map(|&k| Some(k)).chain([None]).collect();
    let i32s: arrow_array::Int32Array = inserted.iter().map(|&k| Some(k as i32)).collect();
    let dates: Date32Array = inserted.iter().map(|&k| Some(k as i32)).collect();
    for (name, array) in [
        ("i64", Arc::new(i64s) as ArrayRef),
        ("i32", Arc::new(i32s)),
        ("date", Arc::new(dates)),
    ] {
        let b = RecordBatch::try_from_iter([(name, array)]).unwrap();
        let mask = predicate_mask(&bloom(name), &b).unwrap();
        assert_eq!(mask.true_count(), inserted.len(), "{name}");
        assert!(mask.nulls().is_none(), "{name}");
    }
    // Keys never inserted: 1 in 7 of these numbers is one, the others pass only as false
    // positives.
    let others: Int64Array = (0..35_000i64).filter(|i| i % 7 != 3).map(Some).collect();
    let n = others.len();
    let b = RecordBatch::try_from_iter([("i64", Arc::new(others) as ArrayRef)]).unwrap();
    let passed = predicate_mask(&bloom("i64"), &b).unwrap().true_count();
    assert!(passed * 100 < n * 3, "{passed} of {n} false positives");
    // A bitset of the wrong size, or a key type the probe does not hash, is an error.
    let bad = Expr::BloomFilter {
        expr: col("i64"),
        bitset: pushdown_protocol::BloomBits(vec![0; 48]),
    };
    assert!(predicate_mask(&bad, &b).unwrap_err().contains("48 bytes"));
}

#[test]
fn the_inlined_xxhash64_of_an_i64_is_the_libraries() {
    for v in [
        0i64,
        1,
        -1,
        42,
        i64::MIN,
        i64::MAX,
        6_000_000,
        0x0123_4567_89ab_cdef,
    ] {
        assert_eq!(
            crate::eval::xxhash64_of_i64(v),
            twox_hash::XxHash64::oneshot(0, &v.to_le_bytes()),
            "{v}"
        );
    }
}

/// A named partial aggregate of `function(argument)` with state type `t`.
fn named_state(
    name: &str,
    function: AggregateFunction,
    argument: Expr,
    t: DataType,
) -> (String, PartialAggregate) {
    (
        name.to_string(),
        PartialAggregate {
            function,
            argument,
            state_type: t,
        },
    )
}

/// Partial aggregates of `batch` through `mask` and of the filtered batch, each of its
/// first two rows and then of all, as text with the lines sorted (or the error).
fn masked_and_filtered(
    aggregates: &[(String, PartialAggregate)],
    batch: &RecordBatch,
    mask: &BooleanArray,
) -> (Result<String, String>, Result<String, String>) {
    let mut fields = vec![Field::new("k", DataType::Utf8, true)];
    fields.extend(
        aggregates
            .iter()
            .map(|(n, a)| Field::new(n, a.state_type.clone(), true)),
    );
    let schema = Arc::new(Schema::new(fields));
    let group_by = vec![("k".to_string(), *col("k"))];
    let run = |masked: bool| -> Result<String, String> {
        let mut agg =
            GroupedAggregator::try_new(group_by.clone(), aggregates.to_vec(), schema.clone())?;
        // The first two rows, then all: groups the second fold adds get the ids of the
        // slot that held the first fold's left-out rows.
        for n in [2.min(batch.num_rows()), batch.num_rows()] {
            let (batch, mask) = (batch.slice(0, n), mask.slice(0, n));
            if masked {
                agg.update_selected(&batch, Some(&mask))?;
            } else {
                agg.update(&arrow_select::filter::filter_record_batch(&batch, &mask).unwrap())?;
            }
        }
        // Groups in order of their keys: a mask may meet them in another order.
        let text = pretty_format_batches(&[agg.finish()?]).unwrap().to_string();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        Ok(lines.join("\n"))
    };
    (run(true), run(false))
}

#[test]
fn an_aggregate_through_a_mask_equals_the_aggregate_of_the_filtered_rows() {
    let b = batch();
    let primitive = vec![
        named_state("n", AggregateFunction::Count, *int(1), DataType::Int64),
        named_state("nx", AggregateFunction::Count, *col("x"), DataType::Int64),
        named_state("sx", AggregateFunction::Sum, *col("x"), DataType::Int64),
        named_state(
            "sp",
            AggregateFunction::Sum,
            *col("p"),
            DataType::Decimal128(25, 2),
        ),
        named_state("mind", AggregateFunction::Min, *col("d"), DataType::Date32),
        named_state("maxf", AggregateFunction::Max, *col("f"), DataType::Float64),
    ];
    // MAX over strings takes no mask: the batch is filtered first.
    let mut with_strings = primitive.clone();
    with_strings.push(named_state(
        "maxk",
        AggregateFunction::Max,
        *col("k"),
        DataType::Utf8,
    ));
    // Every subset of the five rows, groups that only left-out rows hold included.
    for bits in 0u32..32 {
        let mask: BooleanArray = (0..5).map(|i| Some(bits & (1 << i) != 0)).collect();
        for aggregates in [&primitive, &with_strings] {
            let (masked, filtered) = masked_and_filtered(aggregates, &b, &mask);
            assert_eq!(masked, filtered, "mask {bits:05b}");
            assert!(masked.is_ok());
        }
    }
    // An argument that fails on a left-out row only (10 / x where x = 0): the batch is
    // filtered and the answer is the filtered rows'; a selected row that fails fails.
    let b = RecordBatch::try_from_iter(vec![
        (
            "k",
            Arc::new(StringArray::from(vec!["a", "b", "a"])) as ArrayRef,
        ),
        ("x", Arc::new(Int64Array::from(vec![0, 1, 2])) as ArrayRef),
    ])
    .unwrap();
    let ratio = vec![named_state(
        "s",
        AggregateFunction::Sum,
        Expr::Arithmetic(ArithmeticOp::Div, int(10), col("x")),
        DataType::Int64,
    )];
    let skip_zero = BooleanArray::from(vec![false, true, true]);
    let (masked, filtered) = masked_and_filtered(&ratio, &b, &skip_zero);
    assert_eq!(masked, filtered);
    // b: 10 / 1 in both folds; a: 10 / 2 in the second.
    let text = masked.unwrap();
    assert!(
        text.contains("| a | 5  |") && text.contains("| b | 20 |"),
        "{text}"
    );
    let (masked, filtered) =
        masked_and_filtered(&ratio, &b, &BooleanArray::from(vec![true, true, false]));
    assert!(masked.is_err() && filtered.is_err());
}

/// SUMs of one `Decimal64` column (as `SUM(x)` and `AVG(x)`'s `SUM(CAST(x AS DOUBLE))`
/// in TPC-H Q1) add the sums the first computed: the states equal those of each aggregate
/// alone, through a mask or not, across batches, with large values summed in 128 bits.
#[test]
fn sums_of_one_decimal_column_equal_each_sum_alone() {
    let m = |values: Vec<i64>| -> ArrayRef {
        Arc::new(
            arrow_array::Decimal64Array::from(values)
                .with_precision_and_scale(15, 2)
                .unwrap(),
        )
    };
    let keys = |n: usize| -> ArrayRef {
        Arc::new(StringArray::from(
            (0..n)
                .map(|i| ["a", "b", "c"][i * 7 % 3])
                .collect::<Vec<_>>(),
        ))
    };
    let small: Vec<i64> = (0..40).map(|i| i * 1_013 - 17_000).collect();
    // Over 2^59: the 64-bit partial sums could overflow, so the sums are 128-bit.
    let large: Vec<i64> = (0..40).map(|i| (1 << 59) + i * 3).collect();
    let as_double = Expr::Cast(col("m"), DataType::Float64);
    let aggregates = vec![
        named_state(
            "s1",
            AggregateFunction::Sum,
            *col("m"),
            DataType::Decimal128(25, 2),
        ),
        named_state(
            "c",
            AggregateFunction::Count,
            as_double.clone(),
            DataType::Int64,
        ),
        named_state("d", AggregateFunction::Sum, as_double, DataType::Float64),
        named_state(
            "s2",
            AggregateFunction::Sum,
            *col("m"),
            DataType::Decimal128(38, 2),
        ),
        named_state(
            "mx",
            AggregateFunction::Max,
            *col("m"),
            DataType::Decimal128(15, 2),
        ),
    ];
    for values in [small, large] {
        let n = values.len();
        let b = RecordBatch::try_from_iter(vec![("k", keys(n)), ("m", m(values))]).unwrap();
        for mask in [
            BooleanArray::from(vec![true; n]),
            (0..n).map(|i| Some(i % 5 != 1)).collect(),
        ] {
            let (together, _) = masked_and_filtered(&aggregates, &b, &mask);
            let together = together.unwrap();
            // Each state column of the aggregate alone, as the same lines of text: the
            // group key and state `c` (counted from the key) of each table row.
            let column = |text: &str, c: usize| -> Vec<String> {
                text.lines()
                    .filter(|l| l.starts_with("| "))
                    .map(|l| {
                        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                        format!("{} {}", cells[1], cells[2 + c])
                    })
                    .collect()
            };
            for (i, aggregate) in aggregates.iter().enumerate() {
                let (alone, _) = masked_and_filtered(&[aggregate.clone()], &b, &mask);
                let picked = column(&together, i);
                assert_eq!(picked, column(&alone.unwrap(), 0), "{}", aggregate.0);
            }
        }
    }
}

#[test]
fn a_64_bit_decimal_column_compares_and_widens_as_its_128_bit_type() {
    let narrow: ArrayRef = Arc::new(
        arrow_array::Decimal64Array::from(vec![Some(4), Some(5), None, Some(7), Some(-8)])
            .with_precision_and_scale(15, 2)
            .unwrap(),
    );
    let b = RecordBatch::try_from_iter(vec![("m", narrow)]).unwrap();
    let wide = crate::eval::widen_decimals(b.clone()).unwrap();
    assert_eq!(
        wide.schema().field(0).data_type(),
        &DataType::Decimal128(15, 2)
    );
    let decimal = |v: &str, scale: i8| {
        Box::new(Expr::Literal(Literal::Decimal(
            v.into(),
            DataType::Decimal128(15, scale),
        )))
    };
    for op in ALL_CMP_OPS {
        // 0.05 at scale 2 takes the 64-bit path; 0.050 at scale 3 does not.
        for literal in [decimal("5", 2), decimal("50", 3), decimal("-8", 2)] {
            for e in [
                Expr::Cmp(op, col("m"), literal.clone()),
                Expr::Cmp(op, literal.clone(), col("m")),
            ] {
                // Another scale is an error either way (DataFusion casts it first).
                let on_narrow = evaluate_to_array(&e, &b).map(|a| a.to_data());
                let on_wide = evaluate_to_array(&e, &wide).map(|a| a.to_data());
                assert_eq!(on_narrow, on_wide, "{e:?}");
            }
        }
    }
    // Arithmetic reads the column widened.
    let sum = Expr::Arithmetic(ArithmeticOp::Add, col("m"), col("m"));
    assert_eq!(
        evaluate_to_array(&sum, &b).unwrap().as_ref(),
        evaluate_to_array(&sum, &wide).unwrap().as_ref()
    );
}

#[test]
fn comparisons_with_a_constant_equal_arrows_kernels() {
    use arrow_array::{Date32Array, Int32Array};
    // 200 rows: three 64-row words and a tail, NULLs included.
    let ints: Vec<Option<i32>> = (0..200)
        .map(|i| (i % 17 != 0).then_some((i * 7919) % 101 - 50))
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("i", Arc::new(Int32Array::from(ints.clone())) as ArrayRef),
        ("d", Arc::new(Date32Array::from(ints.clone())) as ArrayRef),
        (
            "l",
            Arc::new(Int64Array::from(
                ints.iter().map(|v| v.map(i64::from)).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    for op in ALL_CMP_OPS {
        for (column, constant) in [
            ("i", Literal::Int(7, DataType::Int32)),
            ("l", Literal::Int(-3, DataType::Int64)),
            ("d", Literal::Int(12, DataType::Date32)),
        ] {
            for e in [
                Expr::Cmp(op, col(column), Box::new(Expr::Literal(constant.clone()))),
                Expr::Cmp(op, Box::new(Expr::Literal(constant.clone())), col(column)),
            ] {
                let ours = evaluate_to_array(&e, &batch).unwrap();
                // Arrow's kernel on the same operands.
                let array = batch.column_by_name(column).unwrap();
                let literal = crate::eval::literal_array(&constant).unwrap();
                let scalar = arrow_array::Scalar::new(literal);
                let column_left =
                    matches!(&e, Expr::Cmp(_, l, _) if matches!(**l, Expr::Column(_)));
                use arrow_ord::cmp;
                let f = match op {
                    CmpOp::Eq => cmp::eq,
                    CmpOp::NotEq => cmp::neq,
                    CmpOp::Lt => cmp::lt,
                    CmpOp::LtEq => cmp::lt_eq,
                    CmpOp::Gt => cmp::gt,
                    CmpOp::GtEq => cmp::gt_eq,
                };
                let theirs = if column_left {
                    f(array, &scalar)
                } else {
                    f(&scalar, array)
                }
                .unwrap();
                assert_eq!(ours.as_ref(), &theirs as &dyn Array, "{e:?}");
            }
        }
    }
}

#[test]
fn aggregates_over_64_bit_decimals_equal_those_over_the_widened_batch() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Decimal128Type, Float64Type};
    let decimal = |v: i128, s: i8| {
        Box::new(Expr::Literal(Literal::Decimal(
            v.to_string(),
            DataType::Decimal128(15, s),
        )))
    };
    let arithmetic = |op, l: Box<Expr>, r: Box<Expr>| Box::new(Expr::Arithmetic(op, l, r));
    // TPC-H Q1's aggregates, and MIN / MAX of a 64-bit column.
    let disc_price = arithmetic(
        ArithmeticOp::Mul,
        col("e"),
        arithmetic(ArithmeticOp::Sub, decimal(100, 2), col("d")),
    );
    let charge = arithmetic(
        ArithmeticOp::Mul,
        disc_price.clone(),
        arithmetic(ArithmeticOp::Add, decimal(100, 2), col("d")),
    );
    let double = |e: Box<Expr>| Expr::Cast(e, DataType::Float64);
    let aggregates = vec![
        named_state(
            "sq",
            AggregateFunction::Sum,
            *col("q"),
            DataType::Decimal128(25, 2),
        ),
        named_state(
            "sdp",
            AggregateFunction::Sum,
            *disc_price.clone(),
            DataType::Decimal128(38, 4),
        ),
        named_state(
            "sc",
            AggregateFunction::Sum,
            *charge,
            DataType::Decimal128(38, 6),
        ),
        named_state(
            "nq",
            AggregateFunction::Count,
            double(col("q")),
            DataType::Int64,
        ),
        named_state(
            "fq",
            AggregateFunction::Sum,
            double(col("q")),
            DataType::Float64,
        ),
        named_state(
            "fdp",
            AggregateFunction::Sum,
            double(disc_price),
            DataType::Float64,
        ),
        named_state(
            "minq",
            AggregateFunction::Min,
            *col("q"),
            DataType::Decimal128(15, 2),
        ),
        named_state(
            "maxe",
            AggregateFunction::Max,
            *col("e"),
            DataType::Decimal128(15, 2),
        ),
    ];
    let mut fields = vec![Field::new("k", DataType::Utf8, true)];
    fields.extend(
        aggregates
            .iter()
            .map(|(n, a)| Field::new(n, a.state_type.clone(), true)),
    );
    let schema = Arc::new(Schema::new(fields));
    let group_by = vec![("k".to_string(), *col("k"))];
    let n = 100;
    // Small values (every sum in 64 bits); values near 2^59 (products and sums declined,
    // 64-bit SUM partials too wide); NULLs or none.
    for big in [10_000_000i64, (1 << 59) - 1] {
        for nulls in [false, true] {
            let column = |f: &dyn Fn(i64) -> i64, null_every: i64| -> ArrayRef {
                let values: Vec<Option<i64>> = (0..n)
                    .map(|i| (!nulls || i % null_every != 0).then(|| f(i)))
                    .collect();
                Arc::new(
                    arrow_array::Decimal64Array::from(values)
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                )
            };
            let keys: Vec<&str> = (0..n).map(|i| ["A", "N", "R"][(i % 3) as usize]).collect();
            let b = RecordBatch::try_from_iter(vec![
                ("k", Arc::new(StringArray::from(keys)) as ArrayRef),
                ("q", column(&|i| (i * 7919) % 5000 - 100, 7)),
                (
                    "e",
                    column(&|i| if i % 10 == 3 { big } else { i * 104_729 }, 5),
                ),
                ("d", column(&|i| i % 11, 3)),
            ])
            .unwrap();
            let wide = crate::eval::widen_decimals(b.clone()).unwrap();
            // Row 1 (key N) left out: N's group and the spare slot exist after two rows.
            let mask: BooleanArray = (0..n).map(|i| Some(i % 9 != 1)).collect();
            let run = |batch: &RecordBatch, mask: Option<&BooleanArray>| -> RecordBatch {
                let mut agg = GroupedAggregator::try_new(
                    group_by.clone(),
                    aggregates.clone(),
                    schema.clone(),
                )
                .unwrap();
                // Two rows, then the rest: R's group takes the id of the slot that held
                // the first fold's left-out rows.
                let n = batch.num_rows();
                for (start, len) in [(0, 2), (2, n - 2)] {
                    let mask = mask.map(|m| m.slice(start, len));
                    agg.update_selected(&batch.slice(start, len), mask.as_ref())
                        .unwrap();
                }
                agg.finish().unwrap()
            };
            for mask in [None, Some(&mask)] {
                // Groups come in the same order (first appearance) either way.
                let (narrow, wide_out) = (run(&b, mask), run(&wide, mask));
                let context = format!("{big}, NULLs {nulls}, mask {}", mask.is_some());
                for (i, field) in schema.fields().iter().enumerate() {
                    let (x, y) = (narrow.column(i), wide_out.column(i));
                    if field.data_type() != &DataType::Float64 {
                        assert_eq!(x.as_ref(), y.as_ref(), "{} {context}", field.name());
                        continue;
                    }
                    // DOUBLE sums: exact sums rounded once against sums rounded row by row.
                    let (x, y) = (
                        x.as_primitive::<Float64Type>(),
                        y.as_primitive::<Float64Type>(),
                    );
                    assert_eq!(x.nulls(), y.nulls());
                    for (a, b) in x.values().iter().zip(y.values()) {
                        assert!((a - b).abs() <= 1e-12 * b.abs(), "{a} vs {b} {context}");
                    }
                }
                // SUM(CAST(q AS DOUBLE)) is the exact sum of the selected q, rounded once.
                let keys = b.column(0).as_string::<i32>();
                let q = wide.column(1).as_primitive::<Decimal128Type>();
                let fq = narrow.column(5).as_primitive::<Float64Type>();
                for (g, key) in narrow.column(0).as_string::<i32>().iter().enumerate() {
                    let exact: i128 = (0..n as usize)
                        .filter(|&i| keys.value(i) == key.unwrap() && q.is_valid(i))
                        .filter(|&i| mask.is_none_or(|m| m.value(i)))
                        .map(|i| q.value(i))
                        .sum();
                    assert_eq!(fq.value(g), exact as f64 / 100.0, "{context}");
                }
            }
        }
    }
}

#[test]
fn predicates_over_a_dictionary_column_equal_those_over_its_strings() {
    use arrow_array::types::Int32Type;
    use arrow_array::DictionaryArray;
    // NULL keys, a NULL dictionary value, values no row uses.
    let values = StringArray::from(vec![
        Some("MAIL"),
        Some("SHIP"),
        None,
        Some("AIR"),
        Some("RAIL"),
    ]);
    let keys = arrow_array::Int32Array::from(vec![
        Some(0),
        Some(1),
        None,
        Some(2),
        Some(0),
        Some(3),
        Some(1),
        None,
    ]);
    let dict: ArrayRef =
        Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).unwrap());
    let plain = arrow_cast::cast(&dict, &DataType::Utf8).unwrap();
    let b = RecordBatch::try_from_iter(vec![("m", dict)]).unwrap();
    let p = RecordBatch::try_from_iter(vec![("m", plain)]).unwrap();
    let text = |s: &str| Box::new(Expr::Literal(Literal::Utf8(s.into(), DataType::Utf8)));
    let list = |negated| Expr::InList {
        expr: col("m"),
        list: vec![*text("MAIL"), *text("SHIP")],
        negated,
    };
    let like = |pattern: &str, negated| Expr::Like {
        expr: col("m"),
        pattern: text(pattern),
        negated,
        case_insensitive: false,
    };
    let mut predicates = vec![
        list(false),
        list(true),
        like("%AI%", false),
        like("S%", true),
    ];
    for op in ALL_CMP_OPS {
        predicates.push(Expr::Cmp(op, col("m"), text("RAIL")));
        predicates.push(Expr::Cmp(op, text("MAIL"), col("m")));
    }
    predicates.push(Expr::Not(Box::new(list(false))));
    predicates.push(Expr::Or(vec![list(false), like("A%", false)]));
    for e in &predicates {
        let top = match e {
            Expr::Not(x) => x.as_ref(),
            Expr::Or(v) => &v[0],
            e => e,
        };
        assert_eq!(crate::eval::dictionary_evaluable(top), Some("m"), "{e:?}");
        let on_dictionary = evaluate_to_array(e, &b).unwrap();
        let on_strings = evaluate_to_array(e, &p).unwrap();
        assert_eq!(on_dictionary.as_ref(), on_strings.as_ref(), "{e:?}");
    }
    // Two columns, or an expression over the column: not evaluated per distinct value.
    let two = Expr::Cmp(CmpOp::Eq, col("m"), col("n"));
    let cast = Expr::Cmp(
        CmpOp::Eq,
        Box::new(Expr::Cast(col("m"), DataType::Int64)),
        int(1),
    );
    assert_eq!(crate::eval::dictionary_evaluable(&two), None);
    assert_eq!(crate::eval::dictionary_evaluable(&cast), None);
}

#[test]
fn columns_read_as_dictionaries_are_those_every_use_of_which_takes_one() {
    use pushdown_protocol::{FileFormat, Pushdown, Task, TaskUnit};
    let text = |s: &str| Expr::Literal(Literal::Utf8(s.into(), DataType::Utf8));
    let in_list = |c: &str| Expr::InList {
        expr: col(c),
        list: vec![text("MAIL"), text("SHIP")],
        negated: false,
    };
    // TPC-H Q12's lineitem scan: l_shipmode in the predicate and the projection;
    // l_comment compared with another column stays plain, as does a column under a cast.
    let task = Task {
        file: "lineitem.parquet".into(),
        format: FileFormat::Parquet,
        unit: TaskUnit::RowGroup(0),
        predicate: Some(Expr::And(vec![
            in_list("l_shipmode"),
            Expr::Not(Box::new(in_list("l_shipinstruct"))),
            Expr::Cmp(CmpOp::Eq, col("l_comment"), col("l_returnflag")),
            Expr::Cmp(
                CmpOp::Eq,
                Box::new(Expr::Cast(col("l_linestatus"), DataType::Utf8)),
                Box::new(text("F")),
            ),
        ])),
        pushdown: Pushdown::Project(vec![
            ("l_shipmode".into(), *col("l_shipmode")),
            ("l_orderkey".into(), *col("l_orderkey")),
        ]),
        output_schema: Schema::new(vec![
            Field::new("l_shipmode", DataType::Utf8, true),
            Field::new("l_orderkey", DataType::Int64, true),
        ]),
        limit: None,
        fold: None,
    };
    assert_eq!(
        crate::pipeline::dictionary_keys(&task),
        ["l_orderkey", "l_shipinstruct", "l_shipmode"]
    );
    // A projected expression over the column (not the bare column) keeps it plain.
    let mut task = task;
    task.pushdown = Pushdown::Project(vec![(
        "m".into(),
        Expr::Like {
            expr: col("l_shipmode"),
            pattern: Box::new(text("M%")),
            negated: false,
            case_insensitive: false,
        },
    )]);
    assert_eq!(crate::pipeline::dictionary_keys(&task), ["l_shipinstruct"]);
}

#[test]
fn string_columns_come_out_as_dictionaries_only_from_dictionary_encoded_chunks() {
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use pushdown_protocol::ByteRange;
    // "few": 3 distinct values, every page dictionary-encoded; "many": 4000 distinct
    // values against a 1 KiB dictionary page limit, so the writer falls back to PLAIN.
    let n = 4000;
    let few: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| ["MAIL", "SHIP", "AIR"][i % 3]),
    ));
    let many: ArrayRef = Arc::new(StringArray::from_iter_values(
        (0..n).map(|i| format!("comment {i}")),
    ));
    let batch = RecordBatch::try_from_iter(vec![("few", few), ("many", many)]).unwrap();
    let properties = WriterProperties::builder()
        .set_dictionary_page_size_limit(1024)
        .build();
    let mut file = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut file, batch.schema(), Some(properties)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    // The footer, then the whole data section, as the storage node sends a task's input.
    let len = file.len() as u64;
    let metadata_len = u64::from(u32::from_le_bytes(
        file[file.len() - 8..file.len() - 4].try_into().unwrap(),
    ));
    let footer_start = len - 8 - metadata_len;
    let mut input = file[footer_start as usize..file.len() - 8].to_vec();
    input.extend_from_slice(&file[..footer_start as usize]);
    let segments = [
        ByteRange {
            start: footer_start,
            end: len - 8,
        },
        ByteRange {
            start: 0,
            end: footer_start,
        },
    ];
    let columns = ["few".to_string(), "many".to_string()];
    let parsed = crate::parse_parquet(
        bytes::Bytes::from(input),
        &segments,
        len,
        0,
        &columns,
        8192,
        None,
        &columns,
        true,
    )
    .unwrap();
    let schema = parsed[0].schema();
    assert!(matches!(
        schema.field(0).data_type(),
        DataType::Dictionary(..)
    ));
    assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
    // The values either way.
    let few = arrow_cast::cast(parsed[0].column(0), &DataType::Utf8).unwrap();
    assert_eq!(few.as_ref(), batch.column(0).as_ref());
    assert_eq!(parsed[0].column(1).as_ref(), batch.column(1).as_ref());
}
