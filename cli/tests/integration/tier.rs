//! An intermediary tier: two `pushdown intermediary serve` processes, each the other's
//! peer (`--peer`), over three storage nodes holding the eight TPC-H tables (SF 0.1), on
//! loopback. Answers are compared with DuckDB's on the same files.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{
    output_within, start_node, start_node_at, stdout_ok, tpch_layout, Server, TOKEN,
};
use crate::plugins::repo;
use crate::support::pushdown;

const TABLES: [&str; 8] = [
    "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
];

/// A loopback port free now (the OS's next pick of port 0).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three storage nodes over the TPC-H layout (each table on one or two nodes).
fn start_nodes(registries: &[tempfile::TempDir]) -> Vec<Server> {
    (1..=3)
        .map(|i| {
            start_node(
                &tpch_layout().join(format!("n{i}")),
                registries[i - 1].path(),
                &[],
            )
        })
        .collect()
}

/// Two intermediaries over `nodes`, each listing the other as its peer; the first also
/// gets `extra_a`, the second `extra_b`.
fn start_tier(nodes: &[Server], extra_a: &[&str], extra_b: &[&str]) -> (Server, Server) {
    start_tier_over("http", nodes, extra_a, extra_b)
}

/// [`start_tier`] with the peers' URLs in `scheme` (`https` for a tier over TLS).
fn start_tier_over(
    scheme: &str,
    nodes: &[Server],
    extra_a: &[&str],
    extra_b: &[&str],
) -> (Server, Server) {
    let (pa, pb) = (free_port(), free_port());
    let url = |p: u16| format!("{scheme}://127.0.0.1:{p}");
    let start = |port: u16, peer: &str, extra: &[&str]| {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "intermediary",
            "serve",
            "--listen",
            &listen,
            "--token",
            TOKEN,
            "--peer",
            peer,
        ];
        for n in nodes {
            args.extend(["--storage-node", n.url.as_str()]);
        }
        args.extend(extra);
        Server::start(&args)
    };
    let a = start(pa, &url(pb), extra_a);
    let b = start(pb, &url(pa), extra_b);
    // A found B down when it started (B was not listening yet); its probes, every 0.5 s,
    // find B up by now.
    std::thread::sleep(Duration::from_millis(1500));
    (a, b)
}

/// The 22 queries' answers from DuckDB over the layout's files (`tests/oracle`).
fn duckdb_answers(queries: &[String]) -> Vec<Vec<Vec<Value>>> {
    let dir = tpch_layout().join("all/parquet");
    let tables: serde_json::Map<String, Value> = TABLES
        .iter()
        .map(|t| {
            let path = dir.join(format!("{t}.parquet"));
            (
                t.to_string(),
                serde_json::json!({"path": path.to_str().unwrap(), "format": "parquet"}),
            )
        })
        .collect();
    let request = serde_json::json!({"tables": tables, "queries": queries});
    let mut child = Command::new(crate::support::python())
        .arg(repo().join("tests/oracle/duckdb_oracle.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with duckdb runs (scripts/setup.sh installs it)");
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the DuckDB oracle failed");
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert!(r.get("error").is_none(), "DuckDB: {r}");
            r["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| row.as_array().unwrap().clone())
                .collect()
        })
        .collect()
}

/// Our CSV answer (header row first) equals DuckDB's rows: numbers within a relative
/// 1e-9 (averages are DOUBLE and merge in another order) plus a unit of the last digit we
/// print (a DECIMAL quotient, truncated to its scale, where DuckDB has a DOUBLE), everything
/// else as text.
fn assert_same_as_duckdb(what: &str, csv_text: &str, theirs: &[Vec<Value>]) {
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    let ours: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: {} rows, DuckDB {}\n{csv_text}",
        ours.len(),
        theirs.len()
    );
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            a.len(),
            b.len(),
            "{what}: row {i} has {} columns, DuckDB's {}",
            a.len(),
            b.len()
        );
        for (x, y) in a.iter().zip(b) {
            let same = match y {
                Value::Null => x.is_empty(),
                Value::Number(n) => {
                    let (p, q) = (x.parse::<f64>().unwrap_or(f64::NAN), n.as_f64().unwrap());
                    // A DECIMAL quotient is truncated to its scale where DuckDB has a DOUBLE.
                    let scale = x.split_once('.').map_or(0, |(_, f)| f.len());
                    let rounding = if scale > 0 {
                        10f64.powi(-(scale as i32))
                    } else {
                        0.0
                    };
                    (p - q).abs() <= rounding + 1e-9 * q.abs().max(1.0)
                }
                Value::String(s) => x == s,
                other => x == other.to_string(),
            };
            assert!(same, "{what}: row {i}: ours {a:?}, DuckDB {b:?}");
        }
    }
}

fn tpch_queries() -> Vec<String> {
    (1..=22)
        .map(|n| {
            std::fs::read_to_string(repo().join(format!("datasets/queries/tpch/q{n}.sql"))).unwrap()
        })
        .collect()
}

fn query_csv(url: &str, sql: &str) -> std::process::Output {
    output_within(
        pushdown().args([
            "query",
            "--connect",
            url,
            "--token",
            TOKEN,
            "--output",
            "csv",
            sql,
        ]),
        Duration::from_secs(120),
    )
}

/// All 22 TPC-H queries (joins, subqueries, several scans of one table) asked of either
/// intermediary of a two-intermediary tier equal DuckDB's answers; EXPLAIN ANALYZE shows
/// the plan cut into stages with a scan split over two tasks.
#[test]
fn a_two_intermediary_tier_answers_all_22_tpch_queries_as_duckdb() {
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_nodes(&registries);
    let (a, b) = start_tier(&nodes, &[], &[]);
    let queries = tpch_queries();
    let expected = duckdb_answers(&queries);
    for (n, (sql, theirs)) in queries.iter().zip(&expected).enumerate() {
        // Odd queries enter the tier at one intermediary, even ones at the other.
        let entry = if n % 2 == 0 { &a } else { &b };
        let ours = stdout_ok(query_csv(&entry.url, sql));
        assert_same_as_duckdb(&format!("Q{}", n + 1), &ours, theirs);
    }
    // EXPLAIN ANALYZE shows the stages, and lineitem's scan split into two tasks.
    let plan = stdout_ok(query_csv(
        &a.url,
        &format!("EXPLAIN ANALYZE {}", queries[0]),
    ));
    assert!(plan.contains("DistributedExec"), "{plan}");
    assert!(plan.contains("NetworkShuffleExec"), "{plan}");
    assert!(
        plan.contains("t0: PushdownScanExec") && plan.contains("t1: PushdownScanExec"),
        "two tasks: {plan}"
    );
    // The scan's metrics come back from both intermediaries: the leaf's task count is the
    // sum of its variants' (`t0: ... tasks=15, ...`, `t1: ... tasks=16, ...`).
    let number_after = |line: &str, key: &str| -> usize {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        rest[..rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len())]
            .parse()
            .unwrap()
    };
    let leaf = plan
        .lines()
        .find(|l| l.contains("DistributedLeafExec") && l.contains("metrics="))
        .unwrap_or_else(|| panic!("no DistributedLeafExec metrics: {plan}"));
    let planned: usize = plan
        .lines()
        .filter(|l| l.contains(": PushdownScanExec: table=lineitem"))
        .map(|l| number_after(l, ", tasks="))
        .sum();
    assert!(leaf.contains("rows_parsed="), "{leaf}");
    assert_eq!(number_after(leaf, " tasks="), planned, "{plan}");
}

/// A peer of the entry intermediary killed in mid-query: the client gets an error naming
/// it, the entry intermediary keeps serving, and once its probes find the peer down the
/// next query is answered by the tier that is left.
#[test]
fn killing_a_peer_mid_query_fails_that_query_and_the_next_one_succeeds() {
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_nodes(&registries);
    let (a, b) = start_tier(&nodes, &[], &[]);
    let sql = "SELECT l_orderkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey ORDER BY q DESC, l_orderkey LIMIT 5";
    let expected = duckdb_answers(&[sql.to_string()]);
    assert_same_as_duckdb("before", &stdout_ok(query_csv(&a.url, sql)), &expected[0]);
    // Frozen, the peer still accepts connections (the kernel does) but answers nothing:
    // the query waits on its stages there until the peer is killed.
    let ok = Command::new("kill")
        .args(["-STOP", &b.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let client = pushdown()
        .args([
            "query",
            "--connect",
            &a.url,
            "--token",
            TOKEN,
            "--output",
            "csv",
            sql,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let b_url = b.url.clone();
    let ok = Command::new("kill")
        .args(["-KILL", &b.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let out = client.wait_with_output().unwrap();
    let message = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "the query through a killed peer failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        message.contains(b_url.trim_start_matches("http://")),
        "names the peer: {message}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_same_as_duckdb("after", &stdout_ok(query_csv(&a.url, sql)), &expected[0]);
}

/// An intermediary that calls its peer with another token than the peer's (its
/// `--peer-token-file` differs) is refused by the peer's worker: the query fails naming
/// the refusal instead of running a stage there.
#[test]
fn a_peer_with_the_wrong_tier_token_is_refused() {
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_nodes(&registries);
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-tier-token\n").unwrap();
    let (a, _b) = start_tier(&nodes, &["--peer-token-file", wrong.to_str().unwrap()], &[]);
    let sql = "SELECT l_returnflag, count(*) FROM lineitem GROUP BY l_returnflag";
    let out = query_csv(&a.url, sql);
    let message = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The peer refuses the token, or (once this intermediary's probes have sent it ten
    // times) every call from this address for a while.
    assert!(
        message.contains("wrong bearer token") || message.contains("missing or wrong token"),
        "{message}"
    );
    assert!(message.contains("--peer-token-file"), "{message}");
}

/// A tier over TLS with client certificates (mutual TLS) between the intermediaries, as
/// between the other servers: Q1 is answered as DuckDB answers it, and its scan is spread
/// over both intermediaries; a peer that does not trust the tier's CA cannot run a stage.
#[test]
fn a_tier_over_mutual_tls_answers_and_spreads_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    crate::security::certificates(dir.path());
    let f = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_nodes(&registries);
    let (cert, key, ca) = (f("server.pem"), f("server.key"), f("ca.pem"));
    let tls = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
        "--peer-tls-ca",
        &ca,
    ];
    let (a, _b) = start_tier_over("https", &nodes, &tls, &tls);
    assert!(a.url.starts_with("https://"), "{}", a.url);
    let (client_cert, client_key) = (f("client.pem"), f("client.key"));
    let query = |url: &str, sql: &str| {
        output_within(
            pushdown().args([
                "query",
                "--connect",
                url,
                "--token",
                TOKEN,
                "--tls-ca",
                &ca,
                "--tls-cert",
                &client_cert,
                "--tls-key",
                &client_key,
                "--output",
                "csv",
                sql,
            ]),
            Duration::from_secs(120),
        )
    };
    let sql = tpch_queries().swap_remove(0);
    let expected = duckdb_answers(std::slice::from_ref(&sql));
    assert_same_as_duckdb("Q1 over TLS", &stdout_ok(query(&a.url, &sql)), &expected[0]);
    let plan = stdout_ok(query(&a.url, &format!("EXPLAIN ANALYZE {sql}")));
    assert!(plan.contains("t1: PushdownScanExec"), "{plan}");

    // An intermediary that trusts the system's roots only (no --peer-tls-ca) cannot
    // open a channel to its peer: the query fails.
    let untrusting = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca,
    ];
    let (c, _d) = start_tier_over("https", &nodes, &untrusting, &tls);
    let out = query(&c.url, &sql);
    let message = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains("--peer-tls-ca"), "{message}");
}

/// Scan tasks go to the intermediary on the host of the storage node holding their files
/// (node-local placement). Two hosts on loopback, 127.0.0.2 and 127.0.0.3, each with a
/// storage node holding one of the two files of table `lineitem` and an intermediary; the
/// tier's two scan tasks each read one file. Over four queries entering at either
/// intermediary, each intermediary's log (`RUST_LOG=pushdown_intermediary=debug`) names only
/// the file on its own host. Round-robin from a random offset would pass four queries by
/// chance once in 16 runs.
#[test]
fn scan_tasks_run_on_the_intermediary_near_their_files() {
    let all = tpch_layout().join("all/parquet/lineitem.parquet");
    let data = tempfile::tempdir().unwrap();
    let registries: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts = ["127.0.0.2", "127.0.0.3"];
    let files = ["lineitem/a.parquet", "lineitem/b.parquet"];
    let nodes: Vec<Server> = (0..2)
        .map(|i| {
            let dir = data.path().join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("lineitem")).unwrap();
            std::fs::copy(&all, dir.join(files[i])).unwrap();
            start_node_at(&dir, registries[i].path(), &format!("{}:0", hosts[i]), &[])
        })
        .collect();
    let ports = [free_port(), free_port()];
    let start = |i: usize| {
        let listen = format!("{}:{}", hosts[i], ports[i]);
        let peer = format!("http://{}:{}", hosts[1 - i], ports[1 - i]);
        let mut args = vec![
            "intermediary",
            "serve",
            "--listen",
            &listen,
            "--token",
            TOKEN,
            "--peer",
            &peer,
        ];
        for n in &nodes {
            args.extend(["--storage-node", n.url.as_str()]);
        }
        Server::start_with_env(&args, &[("RUST_LOG", "warn,pushdown_intermediary=debug")])
    };
    let tier = [start(0), start(1)];
    std::thread::sleep(Duration::from_millis(1500));
    let sql = "SELECT l_returnflag, count(*) AS n FROM lineitem GROUP BY l_returnflag ORDER BY 1";
    let answers: Vec<String> = (0..4)
        .map(|q| stdout_ok(query_csv(&tier[q % 2].url, sql)))
        .collect();
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    // Both copies are counted: the tier's answer is twice one file's.
    let one = stdout_ok(query_csv_embedded(&data.path().join("n0"), sql));
    let doubled: Vec<String> = one
        .lines()
        .skip(1)
        .map(|l| {
            let (flag, n) = l.split_once(',').unwrap();
            format!("{flag},{}", 2 * n.parse::<u64>().unwrap())
        })
        .collect();
    assert_eq!(answers[0].lines().skip(1).collect::<Vec<_>>(), doubled);

    let [a, b] = tier;
    for (i, log) in [a.stop(), b.stop()].into_iter().enumerate() {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("for a tier stage, files:"))
            .collect();
        assert!(
            !lines.is_empty(),
            "intermediary on {} ran no scan task: {log}",
            hosts[i]
        );
        for line in lines {
            assert!(
                line.contains(files[i]) && !line.contains(files[1 - i]),
                "the intermediary on {} scanned another host's file: {line}",
                hosts[i]
            );
        }
    }
}

/// `pushdown query --data DIR --output csv SQL`: the same query without servers.
fn query_csv_embedded(dir: &std::path::Path, sql: &str) -> std::process::Output {
    output_within(
        pushdown()
            .args(["query", "--data"])
            .arg(dir)
            .args(["--output", "csv", sql]),
        Duration::from_secs(60),
    )
}

/// A peer that is frozen (SIGSTOP: its kernel still accepts connections, the process
/// answers nothing) is found down by the probes' call to its worker service, and the next
/// query runs on the tier that is left; once it is resumed (SIGCONT), queries spread over
/// it again.
#[test]
fn a_frozen_peer_is_left_out_until_it_answers_again() {
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_nodes(&registries);
    let (a, b) = start_tier(&nodes, &[], &[]);
    let sql = "SELECT l_returnflag, l_linestatus, sum(l_quantity) AS q FROM lineitem GROUP BY 1, 2 ORDER BY 1, 2";
    let expected = duckdb_answers(&[sql.to_string()]);
    let explain = format!("EXPLAIN ANALYZE {sql}");
    assert!(stdout_ok(query_csv(&a.url, &explain)).contains("t1: PushdownScanExec"));
    b.signal("-STOP");
    // A probe's call times out after 3 s; probes run every 0.5 s.
    std::thread::sleep(Duration::from_secs(5));
    assert_same_as_duckdb("frozen", &stdout_ok(query_csv(&a.url, sql)), &expected[0]);
    let plan = stdout_ok(query_csv(&a.url, &explain));
    assert!(!plan.contains("t1: PushdownScanExec"), "{plan}");
    b.signal("-CONT");
    std::thread::sleep(Duration::from_secs(2));
    let plan = stdout_ok(query_csv(&a.url, &explain));
    assert!(plan.contains("t1: PushdownScanExec"), "{plan}");
    assert_same_as_duckdb("resumed", &stdout_ok(query_csv(&a.url, sql)), &expected[0]);
}
