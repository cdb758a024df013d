//! The split is visible: what runs in the sandbox, what in the intermediary, and what a
//! run cost (tasks scanned and pruned, bytes, rows).

use crate::support::{engine, figure, tpch};

#[tokio::test(flavor = "multi_thread")]
async fn q6_pushes_predicate_and_partial_aggregate_to_the_storage_node() {
    let dir = tpch().join("parquet");
    let engine = engine(&dir, 16 << 20);
    let query = engine
        .plan(include_str!("../../../datasets/queries/tpch/q6.sql"))
        .await
        .unwrap();
    let split = query.explain_split();
    assert!(split.contains("predicate: (l_shipdate >="), "{split}");
    assert!(split.contains("partial aggregate: group by []"), "{split}");
    assert!(
        split.contains("sum((l_extendedprice * l_discount))"),
        "{split}"
    );
    assert!(split.contains("AggregateExec: mode=Final"), "{split}");
    assert!(
        !split.contains("FilterExec"),
        "the filter runs in the sandbox, not the intermediary: {split}"
    );
    query.collect().await.unwrap();
    let report = query.run_report();
    // 600k rows in 50k-row groups; one partial row per group comes back.
    assert!(report.contains("rows in "), "{report}");
    let (read, returned) = (
        figure(&report, "bytes read from storage "),
        figure(&report, "bytes returned by the storage node "),
    );
    assert!(read > 1 << 20, "{report}");
    assert!(
        returned < 64 << 10,
        "Q6 returns partial sums only: {report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn row_groups_outside_the_predicate_are_pruned() {
    // tpchgen writes lineitem in l_orderkey order, so a narrow key range touches one row group.
    let dir = tpch().join("parquet");
    let engine = engine(&dir, 16 << 20);
    let query = engine
        .plan("SELECT count(*) FROM lineitem WHERE l_orderkey < 1000")
        .await
        .unwrap();
    let batches = query.collect().await.unwrap();
    let count = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0);
    assert!(count > 0);
    let report = query.run_report();
    // 600 572 rows in row groups of 50 000: 13 row groups, of which only the first holds keys < 1000.
    assert!(
        report.contains("tasks 1 scanned, 12 pruned, 0 not run (of 13)"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_goes_into_the_task_and_the_tasks_not_needed_never_run() {
    for format in ["parquet", "csv"] {
        let dir = tpch().join(format);
        let engine = engine(&dir, 4 << 20);
        let query = engine.plan("SELECT * FROM lineitem LIMIT 5").await.unwrap();
        let split = query.explain_split();
        assert!(split.contains("limit=5"), "{split}");
        let batches = query.collect().await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 5);
        let report = query.run_report();
        assert!(
            report.contains("tasks 1 scanned, 0 pruned, "),
            "{format}: {report}"
        );
        assert!(!report.contains(" 0 not run"), "{format}: {report}");
        assert_eq!(figure(&report, "rows in "), figure(&report, "selected "));
        let returned = figure(&report, "bytes returned by the storage node ");
        assert!(
            returned < 1 << 20,
            "{format}: five rows, not a row group: {report}"
        );
        assert_eq!(figure(&report, ", out "), 5, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_split_is_the_same_with_one_thread_and_with_several() {
    let dir = tpch().join("parquet");
    for threads in [1, 4] {
        let options = crate::support::node_options(16 << 20);
        let engine =
            pushdown_intermediary::Engine::embedded_with_threads(&dir, options, None, threads)
                .unwrap();
        let query = engine
            .plan(include_str!("../../../datasets/queries/tpch/q6.sql"))
            .await
            .unwrap();
        let split = query.explain_split();
        assert!(
            split.contains("partial aggregate: group by []"),
            "{threads}: {split}"
        );
        assert!(!split.contains("FilterExec"), "{threads}: {split}");
        assert!(!split.contains("CooperativeExec"), "{threads}: {split}");
    }
}

/// Q17 joins lineitem (600 k rows at SF 0.1) with the few parts of one brand and container:
/// the hash join builds on part, and its keys go to lineitem's tasks as a join filter, so
/// the storage node returns only the lineitems of those parts. The answer is DuckDB's, with
/// one thread and with several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_join_pushes_its_build_side_keys_to_the_probe_side_scan() {
    use crate::support::figure;

    let sql = include_str!("../../../datasets/queries/tpch/q17.sql");
    for (threads, _engine, query) in answers_as_duckdb("Q17", sql).await {
        let report = query.run_report();
        let lineitem = table_report(&report, "lineitem");
        assert!(
            lineitem.contains("join filter pushed to the storage nodes")
                && lineitem.contains("l_partkey IN ("),
            "{threads} thread(s): {report}"
        );
        // Every lineitem row is parsed (the part keys are spread over all row groups);
        // about 1 in 1000 is selected.
        let (rows_in, selected) = (
            figure(&lineitem, "rows in "),
            figure(&lineitem, ", selected "),
        );
        assert!(rows_in > 500_000, "{report}");
        assert!(selected * 100 < rows_in, "{threads} thread(s): {report}");
    }
}

/// Runs the TPC-H query `sql` (named `name`) over the eight SF 0.1 Parquet tables with one
/// and with four task threads, and checks each answer is DuckDB's over the same files;
/// returns the thread count, the engine and the query run, for its split and run report.
async fn answers_as_duckdb(
    name: &str,
    sql: &str,
) -> Vec<(
    usize,
    pushdown_intermediary::Engine,
    pushdown_intermediary::Query,
)> {
    use std::collections::BTreeMap;

    use crate::oracle::{assert_same, cells, duckdb};
    use crate::support::{node_options, tpch_all, TPCH_TABLES};

    let dir = tpch_all().join("parquet");
    let tables: BTreeMap<String, (std::path::PathBuf, &str)> = TPCH_TABLES
        .iter()
        .map(|t| (t.to_string(), (dir.join(format!("{t}.parquet")), "parquet")))
        .collect();
    let expected = duckdb(&tables, &[sql])
        .remove(0)
        .unwrap_or_else(|e| panic!("DuckDB answers {name}: {e}"));
    let mut runs = Vec::new();
    for threads in [1, 4] {
        let engine = pushdown_intermediary::Engine::embedded_with_threads(
            &dir,
            node_options(16 << 20),
            None,
            threads,
        )
        .unwrap();
        let query = engine.plan(sql).await.unwrap();
        let batches = query.collect().await.unwrap();
        assert_same(
            &format!("{name}, {threads} thread(s)"),
            cells(&batches),
            expected.clone(),
            true,
        );
        runs.push((threads, engine, query));
    }
    runs
}

/// The lines of a run report about `table`'s first scan: its `table NAME:` line and the
/// indented lines under it.
fn table_report(report: &str, table: &str) -> String {
    let head = format!("table {table}:");
    report
        .lines()
        .skip_while(|l| !l.starts_with(&head))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.starts_with("  "))
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Q18 keeps the orders whose lineitems sum to more than 300 (`o_orderkey IN (SELECT
/// l_orderkey ... HAVING ...)`). DataFusion puts that semi join above the joins of
/// customer, orders and lineitem; the rule `SemiJoinBelowInnerJoin` moves it onto the orders
/// scan, so the subquery's few keys become orders' join filter and the joins above see only
/// those orders. The answer is DuckDB's, with one thread and with several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_subquery_filters_its_table_before_the_joins() {
    use crate::support::figure;

    let sql = include_str!("../../../datasets/queries/tpch/q18.sql");
    for (threads, _engine, query) in answers_as_duckdb("Q18", sql).await {
        // The semi join is the deepest join: below both inner joins.
        let split = query.explain_split();
        let semi = split
            .find("join_type=RightSemi")
            .unwrap_or_else(|| panic!("{split}"));
        assert_eq!(
            split.matches("join_type=Inner").count(),
            split[..semi].matches("join_type=Inner").count(),
            "{threads} thread(s): {split}"
        );
        let report = query.run_report();
        let orders = table_report(&report, "orders");
        assert!(
            orders.contains("join filter pushed to the storage nodes")
                && orders.contains("o_orderkey IN ("),
            "{threads} thread(s): {report}"
        );
        let (rows_in, selected) = (figure(&orders, "rows in "), figure(&orders, ", selected "));
        assert!(
            rows_in > 0 && selected * 1000 < rows_in,
            "{threads} thread(s): {report}"
        );
    }
}

/// TPC-H Q5 at SF 0.1 joins lineitem with the orders of one year (about 23 000 keys, too
/// many for DataFusion's `IN` list, even split over 4 partitions): the hash join's
/// build-side keys reach lineitem's storage node as a Bloom filter, which drops most
/// lineitem rows before they leave the node. The answer is DuckDB's, with one thread and with several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_build_side_reaches_the_probe_side_scan_as_a_bloom_filter() {
    use crate::support::figure;

    let sql = include_str!("../../../datasets/queries/tpch/q5.sql");
    for (threads, _engine, query) in answers_as_duckdb("Q5", sql).await {
        let split = query.explain_split();
        assert!(split.contains("BloomBuildExec: key="), "{split}");
        let report = query.run_report();
        let lineitem = table_report(&report, "lineitem");
        assert!(
            lineitem.contains("l_orderkey IN bloom_filter("),
            "{threads} thread(s): {report}"
        );
        // The orders of one year hold order keys from near lineitem's min to near its max:
        // their range would remove next to nothing and is not sent.
        assert!(
            !lineitem.contains("l_orderkey >="),
            "{threads} thread(s): {report}"
        );
        let (rows_in, selected) = (
            figure(&lineitem, "rows in "),
            figure(&lineitem, ", selected "),
        );
        assert!(rows_in > 500_000, "{report}");
        assert!(selected * 5 < rows_in, "{threads} thread(s): {report}");
    }
}

/// The scan's statistics come from the Parquet footers: its row count and each returned
/// column's min and max are the table's (DuckDB's `count`, `min`, `max` over the same
/// file), so DataFusion estimates a filter's selectivity from them and builds a hash join
/// on the side that is really smaller. A computed column gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_reports_the_footers_row_count_min_and_max() {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::common::stats::Precision;

    use crate::oracle::{assert_same, cells, duckdb};
    use crate::support::{node_options, tpch_all};

    let dir = tpch_all().join("parquet");
    let tables: BTreeMap<String, (std::path::PathBuf, &str)> = [(
        "orders".to_string(),
        (dir.join("orders.parquet"), "parquet"),
    )]
    .into();
    let expected = duckdb(
        &tables,
        &[
            "SELECT count(*), min(o_orderdate), max(o_orderdate), min(o_totalprice), \
           max(o_totalprice) FROM orders",
        ],
    )
    .remove(0)
    .expect("DuckDB answers");
    let engine =
        pushdown_intermediary::Engine::embedded_with_threads(&dir, node_options(16 << 20), None, 2)
            .unwrap();
    let query = engine
        .plan("SELECT o_orderdate, o_totalprice, o_totalprice * 2 AS twice FROM orders")
        .await
        .unwrap();
    let mut scans = Vec::new();
    let mut stack = vec![query.plan().clone()];
    while let Some(node) = stack.pop() {
        if node
            .downcast_ref::<pushdown_intermediary::PushdownScanExec>()
            .is_some()
        {
            scans.push(node.clone());
        }
        stack.extend(node.children().into_iter().cloned());
    }
    let [scan] = &scans[..] else {
        panic!("one scan: {}", query.explain_split())
    };
    #[allow(deprecated)]
    let stats = scan.partition_statistics(None).unwrap();
    let Precision::Inexact(rows) = stats.num_rows else {
        panic!("{stats:?}")
    };
    let value = |p: &Precision<datafusion::common::ScalarValue>| -> ArrayRef {
        match p {
            Precision::Inexact(v) => v.to_array().unwrap(),
            other => panic!("{other:?} in {stats:?}"),
        }
    };
    let (date, price) = (&stats.column_statistics[0], &stats.column_statistics[1]);
    let ours = RecordBatch::try_from_iter([
        (
            "rows",
            std::sync::Arc::new(Int64Array::from(vec![rows as i64])) as ArrayRef,
        ),
        ("min_date", value(&date.min_value)),
        ("max_date", value(&date.max_value)),
        ("min_price", value(&price.min_value)),
        ("max_price", value(&price.max_value)),
    ])
    .unwrap();
    assert_same("footer statistics", cells(&[ours]), expected, true);
    let twice = &stats.column_statistics[2];
    assert_eq!(twice.min_value, Precision::Absent, "{stats:?}");
}

/// Q15 reads its view `revenue0` twice: in `FROM` and in the `max` subquery. The two
/// subplans are the same, so they run once (`SharedExec`) and lineitem is scanned once;
/// the answer is DuckDB's, with one thread and with several. Two uses of one aggregate,
/// each on the probe side of a join with supplier (a join filter in each scan), share too:
/// the shared run has no join filter, and the joins drop the rows it would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_used_twice_runs_once() {
    let q15 = include_str!("../../../datasets/queries/tpch/q15.sql");
    let self_join = "SELECT a.k, a.s, a.n, b.s, b.n FROM \
         (SELECT l_suppkey AS k, sum(l_quantity) AS s, count(*) AS n FROM lineitem \
          WHERE l_shipmode = 'AIR' GROUP BY l_suppkey) a \
         JOIN supplier ON s_suppkey = a.k AND s_acctbal > 9000 \
         JOIN (SELECT l_suppkey AS k, sum(l_quantity) AS s, count(*) AS n FROM lineitem \
          WHERE l_shipmode = 'AIR' GROUP BY l_suppkey) b ON a.k = b.k \
         ORDER BY a.k";
    for (name, sql) in [("Q15", q15), ("self join", self_join)] {
        for (threads, _engine, query) in answers_as_duckdb(name, sql).await {
            let split = query.explain_split();
            assert_eq!(
                split.matches("SharedExec: subplan=1, consumers=2").count(),
                2,
                "{name}, {threads} thread(s): {split}"
            );
            let report = query.run_report();
            assert_eq!(
                report.matches("table lineitem:").count(),
                1,
                "{name}, {threads} thread(s): lineitem is scanned once: {report}"
            );
        }
    }
}

/// Q20 meets its lineitem aggregate with partsupp on two keys, `(partkey, suppkey)`.
/// DataFusion's filter for two keys holds their ranges and `IN` pairs the sandbox cannot
/// evaluate; the Bloom filter of the first key, `l_partkey`, reaches the lineitem scan, so
/// only the rows of the few parts named `forest%` come back. The answer is DuckDB's, with
/// one thread and with several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_on_two_keys_sends_a_bloom_filter_of_its_first_key() {
    use crate::support::figure;
    let q20 = include_str!("../../../datasets/queries/tpch/q20.sql");
    for (threads, _engine, query) in answers_as_duckdb("Q20", q20).await {
        let report = query.run_report();
        let lineitem = table_report(&report, "lineitem");
        assert!(
            lineitem.contains("l_partkey IN bloom_filter("),
            "{threads} thread(s): {lineitem}"
        );
        let (rows_in, selected) = (
            figure(&lineitem, "rows in "),
            figure(&lineitem, "selected "),
        );
        assert!(
            selected * 20 < rows_in,
            "{threads} thread(s): the filter keeps under 5 % of lineitem: {lineitem}"
        );
    }
}
