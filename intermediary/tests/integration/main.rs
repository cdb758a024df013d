//! Integration tests of the intermediary: SQL through the pushdown split, compared with
//! DuckDB's answers to the same SQL on the same files.

mod explain;
mod oracle;
mod parquet_testing;
mod pruning;
mod queries;
mod support;
mod tier;
mod tpch;
mod tpch22;
