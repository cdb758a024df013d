//! TPC-H Q1 and Q6 over lineitem as Parquet and as CSV, against DuckDB.

use crate::oracle::{check_lineitem, Case};

const Q1: &str = include_str!("../../../datasets/queries/tpch/q1.sql");
const Q6: &str = include_str!("../../../datasets/queries/tpch/q6.sql");

async fn run(format: &str, chunk: u64) {
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
    check_lineitem(format, chunk, &cases).await;
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
