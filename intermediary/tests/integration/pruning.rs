//! Pruning below the row group: pages skipped by the page index, row groups skipped by
//! Bloom filters. Answers are compared with DuckDB's on the same files; the run report
//! shows what was skipped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::oracle::{assert_same, cells, duckdb, python};
use crate::support::{engine, figure, testdata, tpch};

/// Runs `sql` on the engine over `dir` and DuckDB over `tables`, asserts the same rows, and
/// returns the run report.
async fn run(
    dir: &Path,
    tables: &BTreeMap<String, (std::path::PathBuf, &str)>,
    sql: &str,
) -> String {
    let engine = engine(dir, 16 << 20);
    let query = engine
        .plan(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let ours = query
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let theirs = duckdb(tables, &[sql]).remove(0).unwrap();
    assert_same(sql, cells(&ours), theirs, true);
    query.run_report()
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_outside_the_predicate_are_neither_read_nor_decoded() {
    // lineitem is written in l_orderkey order, 50 000-row row groups, pages of 20 000 rows
    // at most: a narrow key range needs one or two pages of one row group.
    let dir = tpch().join("parquet");
    let tables = BTreeMap::from([(
        "lineitem".to_string(),
        (dir.join("lineitem.parquet"), "parquet"),
    )]);
    let narrow = "SELECT count(*), sum(l_quantity), max(l_comment) FROM lineitem \
                  WHERE l_orderkey BETWEEN 20000 AND 21000";
    let report = run(&dir, &tables, narrow).await;
    assert!(report.contains("tasks 1 scanned"), "{report}");
    assert!(figure(&report, "pages skipped ") >= 2, "{report}");
    // The same rows through a predicate the page index cannot split (an OR over two
    // columns; no row has l_linenumber > 7): the whole row group is read and decoded.
    let whole = "SELECT count(*), sum(l_quantity), max(l_comment) FROM lineitem \
                 WHERE l_orderkey BETWEEN 20000 AND 21000 OR l_linenumber > 7";
    let whole_report = run(&dir, &tables, whole).await;
    assert!(whole_report.contains("tasks 1 scanned"), "{whole_report}");
    assert!(whole_report.contains("pages skipped 0"), "{whole_report}");
    assert_eq!(figure(&whole_report, "rows in "), 50_000, "{whole_report}");
    assert!(
        figure(&report, "rows in ") < 50_000,
        "only the selected pages' rows are decoded: {report}"
    );
    assert!(
        figure(&report, "bytes read from storage ")
            < figure(&whole_report, "bytes read from storage "),
        "skipped pages are not read: {report} vs {whole_report}"
    );

    // Conjuncts on other columns intersect with the key range; a range across two row
    // groups; a key range with no row inside a row group's min/max; an OR keeps all.
    for sql in [
        "SELECT l_returnflag, count(*), sum(l_extendedprice) FROM lineitem \
         WHERE l_orderkey >= 40000 AND l_orderkey < 41000 AND l_quantity < 10 \
         GROUP BY l_returnflag ORDER BY l_returnflag",
        "SELECT count(*), max(l_comment) FROM lineitem WHERE l_orderkey BETWEEN 199000 AND 203000",
        "SELECT l_orderkey, l_linenumber, l_shipmode FROM lineitem \
         WHERE l_orderkey = 150053 OR l_orderkey = 7 ORDER BY 1, 2",
        "SELECT count(*) FROM lineitem WHERE l_orderkey IN (3, 70000, 599999)",
    ] {
        let report = run(&dir, &tables, sql).await;
        assert!(report.contains("pruned"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bloom_filters_prune_row_groups_that_statistics_cannot() {
    // DuckDB writes a Bloom filter for each dictionary-encoded column chunk. Row group r
    // holds the keys k with k % 10 == r: every row group's min/max spans nearly all keys.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.parquet");
    let script = format!(
        "import duckdb; duckdb.sql(\"COPY (SELECT i AS id, (i % 1000) * 10 + (i // 20480) AS num, \
         'k' || ((i % 1000) * 10 + (i // 20480))::VARCHAR AS key FROM range(204800) t(i)) \
         TO '{}' (FORMAT parquet, ROW_GROUP_SIZE 20480)\")",
        file.display()
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = BTreeMap::from([("keys".to_string(), (file.clone(), "parquet"))]);
    for (predicate, scanned) in [
        ("num = 5", 1),
        ("key = 'k5'", 1),
        ("key IN ('k5', 'k17')", 2),
        ("key IN ('k5', 'k17', 'k23', 'k31', 'k33')", 4),
        ("num = 5 OR num = 27", 2),
        ("key = 'k5' AND num > 0", 1),
        // Within every row group's min/max, in no Bloom filter.
        ("key = 'k5x'", 0),
        // Not an equality: every row group is read.
        ("key LIKE 'k5%'", 10),
    ] {
        let sql = format!("SELECT count(*), min(id), max(num) FROM keys WHERE {predicate}");
        let report = run(dir.path(), &tables, &sql).await;
        assert!(
            report.contains(&format!("tasks {scanned} scanned")),
            "{predicate}: {report}"
        );
    }

    // parquet-testing's Bloom filter without a declared length: 'Hellp' sorts between the
    // chunk's min and max, so only the filter rules it out.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bloom.parquet");
    std::os::unix::fs::symlink(
        testdata().join("parquet-testing/data/data_index_bloom_encoding_stats.parquet"),
        &file,
    )
    .unwrap();
    let tables = BTreeMap::from([("bloom".to_string(), (file, "parquet"))]);
    for (value, scanned) in [("Hello", 1), ("Hellp", 0), ("today", 1)] {
        let sql = format!("SELECT count(*) FROM bloom WHERE \"String\" = '{value}'");
        let report = run(dir.path(), &tables, &sql).await;
        assert!(
            report.contains(&format!("tasks {scanned} scanned")),
            "{value}: {report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_count_of_all_rows_is_answered_from_the_footers() {
    let dir = tpch().join("parquet");
    let tables = BTreeMap::from([(
        "lineitem".to_string(),
        (dir.join("lineitem.parquet"), "parquet"),
    )]);
    // COUNT(*) and COUNT(1) of a whole table: every row group from its footer, nothing read.
    let report = run(&dir, &tables, "SELECT count(*), count(1) FROM lineitem").await;
    let tasks = figure(&report, "(of ");
    assert!(tasks >= 2, "{report}");
    assert_eq!(
        figure(
            &report,
            "counted from the footer (COUNT(*) with no predicate: nothing read or run): "
        ),
        tasks,
        "{report}"
    );
    assert_eq!(figure(&report, "bytes read from storage "), 0, "{report}");
    // In a scalar subquery next to a scan of the same table that does read.
    run(
        &dir,
        &tables,
        "SELECT (SELECT count(*) FROM lineitem) AS n, count(*) FROM lineitem WHERE l_quantity < 5",
    )
    .await;
    // A predicate, a counted column (NULLs are not counted) or a grouping needs the rows.
    for sql in [
        "SELECT count(*) FROM lineitem WHERE l_quantity < 10",
        "SELECT count(l_comment) FROM lineitem",
        "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag ORDER BY 1",
    ] {
        let report = run(&dir, &tables, sql).await;
        assert!(
            !report.contains("counted from the footer"),
            "{sql}: {report}"
        );
        assert!(
            figure(&report, "bytes read from storage ") > 0,
            "{sql}: {report}"
        );
    }
}
