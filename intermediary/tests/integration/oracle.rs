//! DuckDB as the oracle (`tests/oracle/duckdb_oracle.py`), and the comparison of results:
//! equal row for row, numbers to a relative 1e-9.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use pushdown_intermediary::Engine;
use serde_json::{json, Value};

/// One normalised value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Num(f64),
    /// A DECIMAL of ours with its scale: exact to one unit of its last digit (DataFusion
    /// truncates a decimal quotient to its scale where DuckDB divides in DOUBLE).
    Dec(f64, i8),
    Text(String),
}

impl Cell {
    fn key(&self) -> String {
        match self {
            Cell::Null => "~null".into(),
            Cell::Bool(b) => format!("b{b}"),
            Cell::Num(n) | Cell::Dec(n, _) => format!("n{n:.9e}"),
            Cell::Text(s) => format!("t{s}"),
        }
    }

    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Dec(a, scale), Cell::Num(b)) | (Cell::Num(b), Cell::Dec(a, scale)) => {
                let unit = 10f64.powi(-i32::from(*scale));
                (a - b).abs() <= unit + 1e-9 * a.abs().max(b.abs())
            }
            (Cell::Dec(a, _), Cell::Dec(b, _)) => Cell::Num(*a).same(&Cell::Num(*b)),
            (Cell::Num(a), Cell::Num(b)) => {
                if a.is_nan() || b.is_nan() {
                    return a.is_nan() && b.is_nan();
                }
                let scale = a.abs().max(b.abs());
                (a - b).abs() <= 1e-9 * scale || (a - b).abs() < 1e-12
            }
            (a, b) => a == b,
        }
    }
}

/// The python with DuckDB: `$PUSHDOWN_PYTHON`, else the workspace's `.venv`, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PUSHDOWN_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The result DuckDB gives for each query, or its error message.
pub fn duckdb(
    tables: &BTreeMap<String, (PathBuf, &str)>,
    queries: &[&str],
) -> Vec<Result<Vec<Vec<Cell>>, String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oracle/duckdb_oracle.py");
    let tables: serde_json::Map<String, Value> = tables
        .iter()
        .map(|(name, (path, format))| (name.clone(), json!({"path": path, "format": format})))
        .collect();
    let request = json!({"tables": tables, "queries": queries});
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs (scripts/setup.sh installs the DuckDB oracle)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "DuckDB oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_string()),
            None => Ok(r["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().iter().map(json_cell).collect())
                .collect()),
        })
        .collect()
}

fn json_cell(v: &Value) -> Cell {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(*b),
        Value::Number(n) => Cell::Num(n.as_f64().unwrap()),
        Value::String(s) if s == "nan" => Cell::Num(f64::NAN),
        Value::String(s) => Cell::Text(s.clone()),
        other => Cell::Text(other.to_string()),
    }
}

fn column_cells(c: &ArrayRef) -> Vec<Cell> {
    let n = c.len();
    let numeric = |c: &ArrayRef| -> Vec<Cell> {
        let f = cast(c, &DataType::Float64).unwrap();
        let f = f.as_primitive::<arrow::datatypes::Float64Type>();
        (0..n)
            .map(|i| {
                if f.is_null(i) {
                    Cell::Null
                } else {
                    Cell::Num(f.value(i))
                }
            })
            .collect()
    };
    match c.data_type() {
        DataType::Boolean => {
            let b = c.as_boolean();
            (0..n)
                .map(|i| {
                    if b.is_null(i) {
                        Cell::Null
                    } else {
                        Cell::Bool(b.value(i))
                    }
                })
                .collect()
        }
        DataType::Decimal128(_, scale) | DataType::Decimal256(_, scale) => numeric(c)
            .into_iter()
            .map(|cell| match cell {
                Cell::Num(n) => Cell::Dec(n, *scale),
                other => other,
            })
            .collect(),
        t if t.is_numeric() => numeric(c),
        DataType::Timestamp(_, _) => {
            let micros = cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None)).unwrap();
            let micros = cast(&micros, &DataType::Int64).unwrap();
            numeric(&micros)
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            let b = cast(c, &DataType::LargeBinary).unwrap();
            let b = b.as_binary::<i64>();
            (0..n)
                .map(|i| {
                    if b.is_null(i) {
                        Cell::Null
                    } else {
                        Cell::Text(b.value(i).iter().map(|x| format!("{x:02x}")).collect())
                    }
                })
                .collect()
        }
        _ => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(c.as_ref(), &options).unwrap();
            (0..n)
                .map(|i| {
                    if c.is_null(i) {
                        Cell::Null
                    } else {
                        Cell::Text(f.value(i).to_string())
                    }
                })
                .collect()
        }
    }
}

/// Our result as rows of cells.
pub fn cells(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let mut rows = Vec::new();
    for b in batches {
        let cols: Vec<Vec<Cell>> = b.columns().iter().map(column_cells).collect();
        for i in 0..b.num_rows() {
            rows.push(cols.iter().map(|c| c[i].clone()).collect());
        }
    }
    rows
}

fn show(rows: &[Vec<Cell>]) -> String {
    rows.iter()
        .take(20)
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts two results are equal row for row (after sorting unless `ordered`).
pub fn assert_same(what: &str, ours: Vec<Vec<Cell>>, theirs: Vec<Vec<Cell>>, ordered: bool) {
    let sort = |mut rows: Vec<Vec<Cell>>| {
        if !ordered {
            rows.sort_by_key(|r| r.iter().map(Cell::key).collect::<Vec<_>>());
        }
        rows
    };
    let (ours, theirs) = (sort(ours), sort(theirs));
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: {} rows, DuckDB {} rows\nours:\n{}\nDuckDB:\n{}",
        ours.len(),
        theirs.len(),
        show(&ours),
        show(&theirs)
    );
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(y));
        assert!(
            same,
            "{what}: row {i} differs\nours:   {a:?}\nDuckDB: {b:?}"
        );
    }
}

/// A query and whether its row order is part of the answer.
pub struct Case {
    pub sql: &'static str,
    pub ordered: bool,
}

/// Runs every case through `engine` and DuckDB over `tables` and compares.
pub async fn check(engine: &Engine, tables: &BTreeMap<String, (PathBuf, &str)>, cases: &[Case]) {
    let sqls: Vec<&str> = cases.iter().map(|c| c.sql).collect();
    let expected = duckdb(tables, &sqls);
    for (case, expected) in cases.iter().zip(expected) {
        let expected = expected.unwrap_or_else(|e| panic!("DuckDB fails on {}: {e}", case.sql));
        let ours = engine
            .sql(case.sql)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.sql));
        assert_same(case.sql, cells(&ours), expected, case.ordered);
    }
}

/// Runs `cases` over TPC-H lineitem in `format` (`parquet` or `csv`, CSV chunks of
/// `csv_chunk_size` bytes) and compares with DuckDB on the same file.
pub async fn check_lineitem(format: &str, csv_chunk_size: u64, cases: &[Case]) {
    let dir = crate::support::tpch().join(format);
    let tables = BTreeMap::from([(
        "lineitem".to_string(),
        (dir.join(format!("lineitem.{format}")), format),
    )]);
    check(
        &crate::support::engine(&dir, csv_chunk_size),
        &tables,
        cases,
    )
    .await;
}
