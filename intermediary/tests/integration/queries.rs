//! Filters of every pushed-down kind, projections with ORDER BY and LIMIT, GROUP BY with
//! each aggregate, empty results; over lineitem as Parquet and as CSV, against DuckDB.

use crate::oracle::{check_lineitem, Case};

const CASES: &[Case] = &[
    // =, projection, ORDER BY
    Case { sql: "SELECT l_orderkey, l_linenumber, l_quantity, l_shipmode FROM lineitem WHERE l_orderkey = 4000 ORDER BY l_linenumber", ordered: true },
    // <> with GROUP BY and COUNT
    Case { sql: "SELECT l_shipmode, count(*) AS n FROM lineitem WHERE l_shipmode <> 'AIR' GROUP BY l_shipmode ORDER BY l_shipmode", ordered: true },
    // < on decimals, global aggregate
    Case { sql: "SELECT count(*), sum(l_quantity), min(l_extendedprice), max(l_extendedprice) FROM lineitem WHERE l_quantity < 5", ordered: true },
    // <=, >=, > combined
    Case { sql: "SELECT l_returnflag, count(*), sum(l_quantity) FROM lineitem WHERE l_extendedprice >= 90000 AND l_discount <= 0.02 AND l_tax > 0.01 GROUP BY l_returnflag ORDER BY l_returnflag", ordered: true },
    // BETWEEN on dates, MIN/MAX of dates
    Case { sql: "SELECT count(*), min(l_shipdate), max(l_shipdate) FROM lineitem WHERE l_shipdate BETWEEN DATE '1995-01-01' AND DATE '1995-01-31'", ordered: true },
    // IN on strings
    Case { sql: "SELECT l_shipmode, count(*) FROM lineitem WHERE l_shipmode IN ('MAIL', 'SHIP') GROUP BY l_shipmode", ordered: false },
    // NOT IN on integers
    Case { sql: "SELECT count(*) FROM lineitem WHERE l_linenumber NOT IN (1, 2, 3)", ordered: true },
    // LIKE 'prefix%'
    Case { sql: "SELECT l_shipinstruct, count(*) FROM lineitem WHERE l_shipinstruct LIKE 'DELIVER%' GROUP BY l_shipinstruct", ordered: false },
    // NOT LIKE, OR, NOT
    Case { sql: "SELECT count(*) FROM lineitem WHERE NOT (l_linestatus = 'O') OR l_comment NOT LIKE 'fur%'", ordered: true },
    // IS NULL / IS NOT NULL (lineitem has no NULLs: every row passes one and fails the other)
    Case { sql: "SELECT count(*) FROM lineitem WHERE l_comment IS NULL OR l_partkey IS NULL", ordered: true },
    Case { sql: "SELECT count(l_comment) FROM lineitem WHERE l_receiptdate IS NOT NULL", ordered: true },
    // projection with arithmetic, ORDER BY and LIMIT
    Case { sql: "SELECT l_orderkey, l_linenumber, l_extendedprice * (1 - l_discount) AS net FROM lineitem WHERE l_orderkey < 50 ORDER BY net DESC, l_orderkey, l_linenumber LIMIT 10", ordered: true },
    Case { sql: "SELECT l_orderkey, l_linenumber, l_extendedprice FROM lineitem ORDER BY l_extendedprice DESC, l_orderkey, l_linenumber LIMIT 5", ordered: true },
    // GROUP BY with each aggregate
    Case { sql: "SELECT l_linestatus, count(*), count(l_comment), sum(l_tax), min(l_comment), max(l_comment), avg(l_quantity), min(l_receiptdate), max(l_discount) FROM lineitem GROUP BY l_linestatus", ordered: false },
    Case { sql: "SELECT l_suppkey, sum(l_quantity) AS q, avg(l_extendedprice) AS p FROM lineitem WHERE l_suppkey < 20 GROUP BY l_suppkey ORDER BY l_suppkey", ordered: true },
    // GROUP BY an expression the sandbox does not evaluate (runs in the intermediary)
    Case { sql: "SELECT extract(year FROM l_shipdate) AS y, count(*) FROM lineitem GROUP BY y ORDER BY y", ordered: true },
    // DISTINCT aggregate (not pushed down)
    Case { sql: "SELECT count(DISTINCT l_suppkey) FROM lineitem WHERE l_shipmode = 'RAIL'", ordered: true },
    // empty results
    Case { sql: "SELECT l_orderkey, l_comment FROM lineitem WHERE l_quantity > 1000", ordered: true },
    Case { sql: "SELECT count(*), sum(l_quantity), avg(l_discount), min(l_shipdate) FROM lineitem WHERE l_quantity < 0", ordered: true },
    Case { sql: "SELECT l_returnflag, count(*) FROM lineitem WHERE l_shipdate > DATE '2020-01-01' GROUP BY l_returnflag", ordered: true },
];

async fn run(format: &str, chunk: u64) {
    check_lineitem(format, chunk, CASES).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_over_parquet_match_duckdb() {
    run("parquet", 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_over_csv_match_duckdb() {
    run("csv", 8 << 20).await;
}
