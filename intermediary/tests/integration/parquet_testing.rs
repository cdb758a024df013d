//! Files of apache/parquet-testing (`../shared/testdata/parquet-testing/data`): types,
//! encodings and codecs written by other implementations, with NULLs, against DuckDB.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::oracle::{check, Case};
use crate::support::{engine, testdata};

/// (table name, file in parquet-testing/data)
const FILES: &[(&str, &str)] = &[
    ("alltypes_plain", "alltypes_plain.parquet"),
    ("alltypes_snappy", "alltypes_plain.snappy.parquet"),
    ("alltypes_dictionary", "alltypes_dictionary.parquet"),
    ("alltypes_tiny_pages", "alltypes_tiny_pages.parquet"),
    ("int32_with_null_pages", "int32_with_null_pages.parquet"),
    ("byte_stream_split", "byte_stream_split.zstd.parquet"),
    ("lz4_raw", "lz4_raw_compressed_larger.parquet"),
    ("datapage_v2", "datapage_v2.snappy.parquet"),
    ("int64_decimal", "int64_decimal.parquet"),
    ("delta_binary_packed", "delta_binary_packed.parquet"),
];

const CASES: &[Case] = &[
    Case { sql: "SELECT * FROM alltypes_plain ORDER BY id", ordered: true },
    Case { sql: "SELECT id, bool_col, tinyint_col, float_col, timestamp_col FROM alltypes_snappy WHERE bool_col ORDER BY id", ordered: true },
    Case { sql: "SELECT count(*), sum(int_col), min(double_col), max(bigint_col), avg(float_col) FROM alltypes_dictionary", ordered: true },
    Case { sql: "SELECT month, count(*), sum(int_col), min(timestamp_col), max(date_string_col) FROM alltypes_tiny_pages WHERE id BETWEEN 100 AND 5000 AND tinyint_col IN (1, 3, 5) GROUP BY month ORDER BY month", ordered: true },
    Case { sql: "SELECT id, string_col FROM alltypes_tiny_pages WHERE timestamp_col >= TIMESTAMP '2010-06-01 00:00:00' AND smallint_col <> 4 ORDER BY id LIMIT 20", ordered: true },
    Case { sql: "SELECT count(*), count(int32_field), sum(int32_field), min(int32_field), max(int32_field) FROM int32_with_null_pages", ordered: true },
    Case { sql: "SELECT count(*) FROM int32_with_null_pages WHERE int32_field IS NULL", ordered: true },
    Case { sql: "SELECT int32_field FROM int32_with_null_pages WHERE int32_field IS NOT NULL AND int32_field > 0 ORDER BY int32_field LIMIT 25", ordered: true },
    Case { sql: "SELECT count(*), sum(f32), min(f64), max(f64) FROM byte_stream_split WHERE f64 > 0", ordered: true },
    Case { sql: "SELECT a, count(*) FROM lz4_raw WHERE a LIKE 'c7%' GROUP BY a ORDER BY a", ordered: true },
    Case { sql: "SELECT a, b, c, d FROM datapage_v2 WHERE b >= 2 ORDER BY b", ordered: true },
    Case { sql: "SELECT value FROM int64_decimal WHERE value > 10 ORDER BY value", ordered: true },
    Case { sql: "SELECT count(*), sum(bitwidth3), min(bitwidth7), max(bitwidth1) FROM delta_binary_packed WHERE bitwidth0 < 0 OR bitwidth2 > 0", ordered: true },
];

#[tokio::test(flavor = "multi_thread")]
async fn parquet_testing_files_match_duckdb() {
    let source = testdata().join("parquet-testing/data");
    let dir = tempfile::tempdir().unwrap();
    let mut tables = BTreeMap::new();
    for (name, file) in FILES {
        let link: PathBuf = dir.path().join(format!("{name}.parquet"));
        std::os::unix::fs::symlink(source.join(file), &link).unwrap();
        tables.insert(name.to_string(), (link, "parquet"));
    }
    check(&engine(dir.path(), 16 << 20), &tables, CASES).await;
}
