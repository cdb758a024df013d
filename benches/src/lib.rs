//! The benchmark harness: criterion benches (`cargo bench -p pushdown-benches`) and the
//! `pushdown bench` report share the measurements in [`harness`].
//!
//! * To get TPC-H lineitem files and a storage node over them, use [`TpchFixture`].
//! * To build the task of TPC-H Q6 or Q1 for one row group, use [`q6_task`] / [`q1_task`].
//! * To time a stage native vs Wasm, use [`harness::Nodes::stage_cases`].
//! * To run everything and write `report.md` and `bench.svg`, use [`report::run_and_write`].
#![warn(missing_docs)]

pub mod harness;
pub mod report;

use std::path::PathBuf;

use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{
    AggregateFunction, ArithmeticOp, CmpOp, Expr, FileFormat, Literal, PartialAggregate, Pushdown,
    Task, TaskUnit,
};
use pushdown_storage_node::{NodeOptions, StorageNode};

/// TPC-H lineitem at a scale factor, as Parquet and CSV in a temporary folder, with a
/// storage node over each.
pub struct TpchFixture {
    _dir: tempfile::TempDir,
    /// Folder of `lineitem.parquet`.
    pub parquet: PathBuf,
    /// Folder of `lineitem.csv`.
    pub csv: PathBuf,
}

impl TpchFixture {
    /// Generates lineitem at `scale` with row groups of `row_group_size` rows.
    ///
    /// # Panics
    /// When generation fails (a benchmark has nothing to measure then).
    pub fn new(scale: f64, row_group_size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let options = pushdown_datasets::TpchOptions {
            scale,
            out: dir.path().to_path_buf(),
            row_group_size,
            ..Default::default()
        };
        pushdown_datasets::generate_tpch(&options, |_, _| {}).expect("TPC-H generates");
        Self {
            parquet: dir.path().join("parquet"),
            csv: dir.path().join("csv"),
            _dir: dir,
        }
    }

    /// The folder holding `parquet/` and `csv/`.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// A storage node over `dir`, with lineitem opened.
    ///
    /// # Panics
    /// When the node does not open.
    pub fn node(dir: &PathBuf) -> StorageNode {
        let node = StorageNode::open(dir, NodeOptions::default()).expect("node opens");
        node.table("lineitem")
            .expect("lineitem opens")
            .expect("lineitem exists");
        node
    }
}

fn col(name: &str) -> Box<Expr> {
    Box::new(Expr::Column(name.into()))
}

fn decimal(unscaled: i64) -> Box<Expr> {
    Box::new(Expr::Literal(Literal::Decimal(
        unscaled.to_string(),
        DataType::Decimal128(15, 2),
    )))
}

fn date(days: i64) -> Box<Expr> {
    Box::new(Expr::Literal(Literal::Int(days, DataType::Date32)))
}

/// TPC-H Q6's work for one unit of Parquet lineitem: the predicate and `sum(l_extendedprice * l_discount)`.
pub fn q6_task(file: &str, unit: TaskUnit, format: FileFormat) -> Task {
    let (price, discount, quantity) =
        (col("l_extendedprice"), col("l_discount"), col("l_quantity"));
    let (low, high, qty, state_type) = match &format {
        FileFormat::Parquet => (
            decimal(5),
            decimal(7),
            decimal(2400),
            DataType::Decimal128(38, 4),
        ),
        FileFormat::Csv | FileFormat::Plugin(_) => (
            Box::new(Expr::Literal(Literal::Float(0.05, DataType::Float64))),
            Box::new(Expr::Literal(Literal::Float(0.07, DataType::Float64))),
            Box::new(Expr::Literal(Literal::Float(24.0, DataType::Float64))),
            DataType::Float64,
        ),
    };
    let predicate = Expr::And(vec![
        Expr::Cmp(CmpOp::GtEq, col("l_shipdate"), date(8766)),
        Expr::Cmp(CmpOp::Lt, col("l_shipdate"), date(9131)),
        Expr::Cmp(CmpOp::GtEq, discount.clone(), low),
        Expr::Cmp(CmpOp::LtEq, discount.clone(), high),
        Expr::Cmp(CmpOp::Lt, quantity, qty),
    ]);
    let revenue = PartialAggregate {
        function: AggregateFunction::Sum,
        argument: Expr::Arithmetic(ArithmeticOp::Mul, price, discount),
        state_type: state_type.clone(),
    };
    Task {
        file: file.into(),
        format,
        unit,
        predicate: Some(predicate),
        pushdown: Pushdown::PartialAggregate {
            group_by: vec![],
            aggregates: vec![("revenue".into(), revenue)],
        },
        output_schema: Schema::new(vec![Field::new("revenue", state_type, true)]),
        limit: None,
        fold: None,
    }
}

/// TPC-H Q1's partial aggregate for one row group of Parquet lineitem, as DataFusion plans
/// it (`pushdown query --explain`): eight sums and four counts over two group keys; each
/// AVG is a count and a sum of the argument cast to DOUBLE.
pub fn q1_task(file: &str, row_group: usize) -> Task {
    let disc_price = Expr::Arithmetic(
        ArithmeticOp::Mul,
        col("l_extendedprice"),
        Box::new(Expr::Arithmetic(
            ArithmeticOp::Sub,
            decimal(100),
            col("l_discount"),
        )),
    );
    let charge = Expr::Arithmetic(
        ArithmeticOp::Mul,
        Box::new(disc_price.clone()),
        Box::new(Expr::Arithmetic(
            ArithmeticOp::Add,
            decimal(100),
            col("l_tax"),
        )),
    );
    let sum = |argument: Expr, t: DataType| PartialAggregate {
        function: AggregateFunction::Sum,
        argument,
        state_type: t,
    };
    let count = |argument: Expr, t: DataType| PartialAggregate {
        function: AggregateFunction::Count,
        argument,
        state_type: t,
    };
    let double = |c: &str| Expr::Cast(col(c), DataType::Float64);
    let mut aggregates = vec![
        (
            "sum_qty".to_string(),
            sum(*col("l_quantity"), DataType::Decimal128(25, 2)),
        ),
        (
            "sum_base_price".to_string(),
            sum(*col("l_extendedprice"), DataType::Decimal128(25, 2)),
        ),
        (
            "sum_disc_price".to_string(),
            sum(disc_price, DataType::Decimal128(38, 4)),
        ),
        (
            "sum_charge".to_string(),
            sum(charge, DataType::Decimal128(38, 6)),
        ),
    ];
    for c in ["l_quantity", "l_extendedprice", "l_discount"] {
        aggregates.push((format!("count_{c}"), count(double(c), DataType::UInt64)));
        aggregates.push((format!("sum_{c}_double"), sum(double(c), DataType::Float64)));
    }
    aggregates.push((
        "count_order".to_string(),
        count(
            Expr::Literal(Literal::Int(1, DataType::Int64)),
            DataType::Int64,
        ),
    ));
    let mut fields = vec![
        Field::new("l_returnflag", DataType::Utf8, true),
        Field::new("l_linestatus", DataType::Utf8, true),
    ];
    fields.extend(
        aggregates
            .iter()
            .map(|(n, a)| Field::new(n, a.state_type.clone(), true)),
    );
    Task {
        file: file.into(),
        format: FileFormat::Parquet,
        unit: TaskUnit::RowGroup(row_group),
        predicate: Some(Expr::Cmp(CmpOp::LtEq, col("l_shipdate"), date(10471))),
        pushdown: Pushdown::PartialAggregate {
            group_by: vec![
                ("l_returnflag".into(), *col("l_returnflag")),
                ("l_linestatus".into(), *col("l_linestatus")),
            ],
            aggregates,
        },
        output_schema: Schema::new(fields),
        limit: None,
        fold: None,
    }
}
