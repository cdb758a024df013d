//! TPC-H Q1 and Q6 over lineitem as Parquet and as CSV, against DuckDB.

use std::collections::BTreeMap;

use crate::oracle::{check, Case};
use crate::support::{engine, tpch};

const Q1: &str = include_str!("../../../datasets/queries/tpch/q1.sql");
const Q6: &str = include_str!("../../../datasets/queries/tpch/q6.sql");

async fn run(format: &str, chunk: u64) {
    let dir = tpch().join(format);
    let tables = BTreeMap::from([(
        "lineitem".to_string(),
        (dir.join(format!("lineitem.{format}")), format),
    )]);
    let cases = [
        Case {
            sql: Q1,
            ordered: true,
        },
        Case {
            sql: Q6,
            ordered: true,
        },
    ];
    check(&engine(&dir, chunk), &tables, &cases).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn q1_q6_parquet_match_duckdb() {
    run("parquet", 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn q1_q6_csv_match_duckdb() {
    // Small chunks: many tasks, and chunk boundaries fall inside every part of a record.
    run("csv", 4 << 20).await;
}
