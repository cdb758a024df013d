//! The tiers as separate processes on loopback: three `pushdown storage-node serve`
//! holding lineitem's three parts twice each, a `pushdown intermediary serve` over them,
//! and clients (`pushdown query --connect`, the ADBC Flight SQL driver).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::plugins::{example, lineitem, repo};
use crate::support::{assert_error, pushdown};

pub(crate) const TOKEN: &str = "s3cret-token";

/// The nodes' admin token (for `put_module`), apart from the query token.
pub(crate) const ADMIN_TOKEN: &str = "admin-only-token";

/// A file holding [`ADMIN_TOKEN`], as operators pass it (`--admin-token-file`).
pub(crate) fn admin_token_file() -> &'static str {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = crate::support::process_tempdir();
        std::fs::write(dir.path().join("admin-token"), format!("{ADMIN_TOKEN}\n")).unwrap();
        dir
    });
    Box::leak(
        dir.path()
            .join("admin-token")
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    )
}

/// lineitem (SF 0.1) cut into three Parquet parts of 20 000-row row groups, laid out as
/// node 1: parts 0, 1; node 2: parts 1, 2; node 3: parts 2, 0 (each part on two nodes),
/// and all three in `all/` for embedded mode.
pub(crate) fn layout() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::support::process_tempdir();
        let script = r#"
import os, shutil, sys
import pyarrow.parquet as pq
src, out = sys.argv[1], sys.argv[2]
t = pq.read_table(src)
n = t.num_rows
os.makedirs(f"{out}/all/lineitem")
for i in range(3):
    pq.write_table(t.slice(i * n // 3, (i + 1) * n // 3 - i * n // 3), f"{out}/all/lineitem/part-{i}.parquet", row_group_size=20000)
for node, parts in [(1, [0, 1]), (2, [1, 2]), (3, [2, 0])]:
    os.makedirs(f"{out}/n{node}/lineitem")
    for i in parts:
        shutil.copy(f"{out}/all/lineitem/part-{i}.parquet", f"{out}/n{node}/lineitem/")
"#;
        let python = crate::support::python();
        let out = Command::new(python)
            .args(["-c", script])
            .arg(lineitem().join("parquet/lineitem.parquet"))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
    .path()
}

/// A server process; killed (and resumed first, if stopped) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) url: String,
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// [`Server::start`] with environment variables `env` (`RUST_LOG`, say).
    pub(crate) fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = pushdown()
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://") || w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        Server { child, url }
    }

    pub(crate) fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    }

    /// Stops it and returns what it wrote on stderr.
    pub(crate) fn stop(mut self) -> String {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut log = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut log);
        }
        log
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Server>,
    pub(crate) intermediary: Server,
    /// Each node's plugin registry.
    pub(crate) registries: Vec<tempfile::TempDir>,
}

/// A storage node over `data` on a free loopback port, with the test token, the admin
/// token file and its own `registry`, and `extra` arguments.
pub(crate) fn start_node(data: &Path, registry: &Path, extra: &[&str]) -> Server {
    start_node_at(data, registry, "127.0.0.1:0", extra)
}

/// [`start_node`] listening on `listen`.
pub(crate) fn start_node_at(data: &Path, registry: &Path, listen: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "storage-node",
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        listen,
        "--token",
        TOKEN,
        "--admin-token-file",
        admin_token_file(),
        "--registry",
        registry.to_str().unwrap(),
    ];
    args.extend(extra);
    Server::start(&args)
}

/// An intermediary on a free loopback port over the storage nodes at `nodes`, with the test
/// token and the nodes' admin token file, and `extra` arguments.
pub(crate) fn start_intermediary(nodes: &[&str], extra: &[&str]) -> Server {
    let mut args = vec![
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--node-admin-token-file",
        admin_token_file(),
    ];
    for url in nodes {
        args.extend(["--storage-node", url]);
    }
    args.extend(extra);
    Server::start(&args)
}

pub(crate) fn cluster(extra: &[&str]) -> Cluster {
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = (1..=3)
        .map(|i| {
            start_node(
                &layout().join(format!("n{i}")),
                registries[i - 1].path(),
                &[],
            )
        })
        .collect();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let intermediary = start_intermediary(&urls, extra);
    Cluster {
        nodes,
        intermediary,
        registries,
    }
}

pub(crate) fn connect(url: &str, token: &str, sql: &str) -> Output {
    pushdown()
        .args([
            "query",
            "--connect",
            url,
            "--token",
            token,
            "--output",
            "csv",
            sql,
        ])
        .output()
        .unwrap()
}

pub(crate) fn embedded(sql: &str) -> String {
    let out = pushdown()
        .args(["query", "--output", "csv", "--data"])
        .arg(layout().join("all"))
        .arg(sql)
        .output()
        .unwrap();
    stdout_ok(out)
}

pub(crate) fn stdout_ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exact integers and decimals; DOUBLE columns (averages) may differ in the last digits
/// with the order partial sums are merged in.
fn assert_same_numbers(ours: &str, theirs: &str) {
    let rows = |s: &str| -> Vec<Vec<String>> {
        s.lines()
            .map(|l| l.split(',').map(str::to_string).collect())
            .collect()
    };
    let (a, b) = (rows(ours), rows(theirs));
    assert_eq!(a.len(), b.len(), "{ours}\nvs\n{theirs}");
    for (x, y) in a.iter().zip(&b) {
        for (u, v) in x.iter().zip(y) {
            if u == v {
                continue;
            }
            let (p, q): (f64, f64) = (u.parse().unwrap(), v.parse().unwrap());
            assert!((p - q).abs() <= 1e-9 * q.abs().max(1.0), "{u} vs {v}");
        }
    }
}

/// A fresh plugin registry holding the example plugin `name`, and its module.
fn registry_with(name: &str) -> (tempfile::TempDir, PathBuf) {
    let reg = tempfile::tempdir().unwrap();
    let wasm = example(name);
    let out = pushdown()
        .args(["plugin", "register", wasm.to_str().unwrap(), "--registry"])
        .arg(reg.path())
        .output()
        .unwrap();
    stdout_ok(out);
    (reg, wasm)
}

pub(crate) const COUNTS: &str =
    "SELECT l_returnflag, count(*) AS n, sum(l_quantity) AS qty, sum(l_extendedprice) AS price \
                      FROM lineitem GROUP BY l_returnflag ORDER BY l_returnflag";

#[test]
fn q1_through_the_servers_matches_embedded_even_when_a_node_is_killed() {
    let q1 = std::fs::read_to_string(repo().join("datasets/queries/tpch/q1.sql")).unwrap();
    let expected = embedded(&q1);
    let c = cluster(&[]);
    let url = c.intermediary.url.clone();
    assert_same_numbers(&stdout_ok(connect(&url, TOKEN, &q1)), &expected);
    // Kill node 1 while a query runs: its unfinished tasks run on the replicas.
    let running = pushdown()
        .args([
            "query",
            "--connect",
            &url,
            "--token",
            TOKEN,
            "--output",
            "csv",
            &q1,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(30));
    c.nodes[0].signal("-KILL");
    assert_same_numbers(&stdout_ok(running.wait_with_output().unwrap()), &expected);
    // And later queries, with node 1 gone.
    assert_same_numbers(&stdout_ok(connect(&url, TOKEN, &q1)), &expected);
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), embedded(COUNTS));
}

#[test]
fn a_stalled_node_is_timed_out_and_without_replicas_the_query_names_node_and_file() {
    let expected = embedded(COUNTS);
    let c = cluster(&["--task-timeout", "2"]);
    let url = c.intermediary.url.clone();
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), expected);
    c.nodes[1].signal("-STOP");
    let started = Instant::now();
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), expected);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    // Part 1 lives on nodes 1 and 2: with node 1 killed and node 2 stalled, no replica is left.
    c.nodes[0].signal("-KILL");
    let out = connect(&url, TOKEN, COUNTS);
    assert_error(
        &out,
        &[
            "lineitem/part-1.parquet",
            "no replica left",
            &c.nodes[0].url,
            &c.nodes[1].url,
        ],
    );
    let log = c.intermediary.stop();
    assert!(log.contains("trying another replica"), "{log}");
}

#[test]
fn a_wrong_or_missing_token_is_refused_and_logged() {
    let c = cluster(&[]);
    let url = c.intermediary.url.clone();
    assert_error(
        &connect(&url, "wrong", COUNTS),
        &["refused: a wrong bearer token"],
    );
    let out = pushdown()
        .args(["query", "--connect", &url, COUNTS])
        .env_remove("PUSHDOWN_TOKEN")
        .output()
        .unwrap();
    assert_error(&out, &["refused: no bearer token"]);
    // An intermediary with the wrong token for the nodes is refused by them.
    let mut args = vec![
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--node-token",
        "nope",
    ];
    for n in &c.nodes {
        args.extend(["--storage-node", n.url.as_str()]);
    }
    let wrong = Server::start(&args);
    let out = pushdown()
        .args(["query", "--connect", &wrong.url, COUNTS])
        .env_remove("PUSHDOWN_TOKEN")
        .output()
        .unwrap();
    assert_error(
        &out,
        &["cannot list its tables", "refused: a wrong bearer token"],
    );
    let log = c.intermediary.stop();
    assert!(log.contains("refused a call from 127.0.0.1"), "{log}");
}

#[test]
fn a_node_lists_tables_files_checksums_and_footer_statistics() {
    let c = cluster(&[]);
    let python = crate::support::python();
    let script = r#"
import json, sys
import pyarrow.flight as fl
url, token = sys.argv[1], sys.argv[2]
client = fl.FlightClient(url.replace("http://", "grpc://"))
options = fl.FlightCallOptions(headers=[(b"authorization", ("Bearer " + token).encode())])
body = b"".join(r.body.to_pybytes() for r in client.do_action(fl.Action("tables", b""), options))
t = json.loads(body)[0]
f = t["files"][0]
names = [c[0] for c in f["row_groups"][0]["min_max"]]
print(t["name"], len(t["files"]), len(f["sha256"]), sum(r["rows"] for r in f["row_groups"]), "l_shipdate" in names)
"#;
    let out = Command::new(python)
        .args(["-c", script, &c.nodes[0].url, TOKEN])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.trim(),
        "lineitem 2 64 200190 True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_adbc_flight_sql_driver_gets_the_same_answer_as_pushdown_query() {
    let c = cluster(&[]);
    let url = c.intermediary.url.clone();
    let ours = stdout_ok(connect(&url, TOKEN, COUNTS));
    let python = crate::support::python();
    let script = r#"
import sys, warnings
warnings.simplefilter("ignore")
import adbc_driver_flightsql.dbapi as flight_sql
uri, token, sql = sys.argv[1], sys.argv[2], sys.argv[3]
with flight_sql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + token}) as conn:
    with conn.cursor() as cur:
        cur.execute(sql)
        t = cur.fetch_arrow_table()
print(",".join(t.column_names))
for row in zip(*[c.to_pylist() for c in t.columns]):
    print(",".join(str(v) for v in row))
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(url.replace("http://", "grpc://"))
        .arg(TOKEN)
        .arg(COUNTS)
        .output()
        .unwrap();
    let adbc = stdout_ok(out);
    assert_eq!(adbc.replace("\r\n", "\n"), ours.replace("\r\n", "\n"));
}

#[test]
fn plugins_reach_the_nodes_by_hash_and_a_mismatched_module_is_refused() {
    let (reg, _) = registry_with("approx_distinct");
    let r = reg.path().to_str().unwrap();
    let sql =
        "SELECT l_returnflag, approx_distinct(l_orderkey) AS d FROM lineitem GROUP BY 1 ORDER BY 1";
    let out = pushdown()
        .args(["query", "--output", "csv", "--registry", r, "--data"])
        .arg(layout().join("all"))
        .arg(sql)
        .output()
        .unwrap();
    let expected = stdout_ok(out);
    // Only the intermediary has the plugin; it sends the module to the nodes that run it.
    let c = cluster(&["--registry", r]);
    assert_eq!(
        stdout_ok(connect(&c.intermediary.url, TOKEN, sql)),
        expected
    );
    // The nodes keep the module by hash only: no named plugin appears in their registries.
    for d in &c.registries {
        let out = pushdown()
            .args(["plugin", "list", "--registry", d.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!stdout_ok(out).contains("approx_distinct"));
    }
}
/// Past its budget the intermediary spills or fails with "memory budget exceeded" (which
/// one depends on the operator and on timing), never answers wrongly, and keeps serving.
#[test]
fn past_its_memory_budget_the_intermediary_spills_or_fails_clearly_and_keeps_serving() {
    let c = cluster(&["--memory-limit", "16"]);
    let url = c.intermediary.url.clone();
    let sql = "SELECT l_comment, count(*) AS n FROM lineitem GROUP BY l_comment ORDER BY n DESC, l_comment LIMIT 3";
    let out = connect(&url, TOKEN, sql);
    if out.status.success() {
        assert_eq!(String::from_utf8(out.stdout).unwrap(), embedded(sql));
    } else {
        assert_error(&out, &["memory budget exceeded"]);
    }
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), embedded(COUNTS));
}

#[test]
fn a_node_reads_a_parser_plugin_table_for_the_intermediary() {
    let (reg, _) = registry_with("access_log");
    let r = reg.path().to_str().unwrap();
    let data =
        crate::support::folder(&[("access.log", crate::plugins::access_log(5000).as_bytes())]);
    let d = data.path().to_str().unwrap();
    let sql = "SELECT status, count(*), sum(bytes) FROM access GROUP BY status ORDER BY status";
    let out = pushdown()
        .args(["query", "--output", "csv", "--data", d, "--registry", r])
        .args(["--format", "access=access_log", sql])
        .output()
        .unwrap();
    let expected = stdout_ok(out);
    let node = Server::start(&[
        "storage-node",
        "serve",
        "--data",
        d,
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--registry",
        r,
        "--format",
        "access=access_log",
    ]);
    let intermediary = Server::start(&[
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--storage-node",
        &node.url,
    ]);
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), expected);
}

/// The eight TPC-H tables (SF 0.1, row groups of 20 000 rows) in `all/`, and spread over
/// three nodes, lineitem and orders on two nodes each:
/// n1: lineitem, orders, nation; n2: lineitem, customer, part, region;
/// n3: orders, partsupp, supplier.
pub(crate) fn tpch_layout() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::support::process_tempdir();
        let all = dir.path().join("all");
        let out = pushdown()
            .args([
                "datasets",
                "tpch",
                "--scale",
                "0.1",
                "--row-group-size",
                "20000",
            ])
            .args([
                "--tables",
                "lineitem,orders,customer,part,partsupp,supplier,nation,region",
            ])
            .arg("--out")
            .arg(&all)
            .output()
            .unwrap();
        stdout_ok(out);
        let nodes: [&[&str]; 3] = [
            &["lineitem", "orders", "nation"],
            &["lineitem", "customer", "part", "region"],
            &["orders", "partsupp", "supplier"],
        ];
        for (i, tables) in nodes.iter().enumerate() {
            let node = dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node).unwrap();
            for t in *tables {
                let file = format!("{t}.parquet");
                std::fs::copy(all.join("parquet").join(&file), node.join(&file)).unwrap();
            }
        }
        dir
    })
    .path()
}

/// Runs `command`, killing it after `timeout` (a hang fails the test instead of holding it).
pub(crate) fn output_within(command: &mut Command, timeout: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("{command:?}: no answer within {timeout:?} (a hang)");
        }
    }
}

/// Each query also through an intermediary with `--fold-on-nodes`: every query shape
/// (joins, subqueries, several scans of one table) with partial aggregates folded on the
/// nodes, the tasks of a file spread over its replicas.
#[test]
fn all_22_tpch_queries_through_three_nodes_match_embedded_mode() {
    let layout = tpch_layout();
    let registries: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = (1..=3)
        .map(|i| {
            start_node(
                &layout.join(format!("n{i}")),
                registries[i - 1].path(),
                &["--max-tasks", "1"],
            )
        })
        .collect();
    let mut args = vec![
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
    ];
    for n in &nodes {
        args.extend(["--storage-node", n.url.as_str()]);
    }
    let intermediary = Server::start(&args);
    // A second intermediary over the same nodes folds the partial aggregates there.
    args.push("--fold-on-nodes");
    let folding = Server::start(&args);
    let timeout = Duration::from_secs(120);
    for n in 1..=22 {
        let path = repo().join(format!("datasets/queries/tpch/q{n}.sql"));
        let sql = std::fs::read_to_string(&path).unwrap();
        let local = output_within(
            pushdown()
                .args(["query", "--output", "csv", "--threads", "1", "--data"])
                .arg(layout.join("all/parquet"))
                .arg(&sql),
            timeout,
        );
        let local = stdout_ok(local);
        let remote = output_within(
            pushdown().args([
                "query",
                "--connect",
                &intermediary.url,
                "--token",
                TOKEN,
                "--output",
                "csv",
                &sql,
            ]),
            timeout,
        );
        let remote = stdout_ok(remote);
        assert!(local.lines().count() > 1, "Q{n} has rows: {local}");
        assert_same_numbers(&remote, &local);
        let folded = output_within(
            pushdown().args([
                "query",
                "--connect",
                &folding.url,
                "--token",
                TOKEN,
                "--output",
                "csv",
                &sql,
            ]),
            timeout,
        );
        assert_same_numbers(&stdout_ok(folded), &local);
    }
}

/// Through the servers: a storage node with `--result-cache` answers every task of a
/// repeated query from memory (the intermediary's log counts them, and no byte is read),
/// and after the file is written again (same size, other values) the answer is the new
/// file's, equal to embedded mode's, with no task from the cache.
#[test]
fn a_repeated_query_is_answered_from_the_node_result_cache_until_the_file_changes() {
    let write = |path: &Path, shift: usize| {
        let mut csv = String::from("a,b\n");
        for i in 0..20_000 {
            csv.push_str(&format!("{i},{}\n", (i + shift) % 7));
        }
        std::fs::write(path, csv).unwrap();
    };
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("t.csv");
    write(&file, 0);
    let registry = tempfile::tempdir().unwrap();
    let node = start_node(
        data.path(),
        registry.path(),
        &["--result-cache", "16", "--csv-chunk-size", "65536"],
    );
    let intermediary = start_intermediary(&[&node.url], &[]);
    let sql = "SELECT b, count(*), sum(a) FROM t WHERE a % 3 = 0 GROUP BY b ORDER BY b";
    let embedded = || {
        stdout_ok(
            pushdown()
                .args(["query", "--output", "csv", "--data"])
                .arg(data.path())
                .arg(sql)
                .output()
                .unwrap(),
        )
    };
    let before = embedded();
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), before);
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), before);
    std::thread::sleep(Duration::from_millis(20));
    write(&file, 1);
    let after = embedded();
    assert_ne!(after, before);
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), after);
    let log = intermediary.stop();
    let runs: Vec<&str> = log.lines().filter(|l| l.contains("query done")).collect();
    assert_eq!(runs.len(), 3, "{log}");
    let cached = |line: &str| {
        line.split("result cache (nothing read or run): ")
            .nth(1)
            .map(|n| {
                n.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .to_string()
            })
    };
    let tasks = runs[0]
        .split("tasks ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_string();
    assert!(tasks.parse::<u64>().unwrap() >= 2, "{}", runs[0]);
    assert_eq!(cached(runs[0]), None, "{}", runs[0]);
    assert_eq!(cached(runs[1]), Some(tasks), "{}", runs[1]);
    assert!(
        runs[1].contains("bytes read on the storage nodes 0"),
        "{}",
        runs[1]
    );
    assert_eq!(cached(runs[2]), None, "{}", runs[2]);
}

/// The lines of the intermediary's `query done` log that follow the passthrough count:
/// `(count, reasons)`, or `(0, [])` when no task was passed through.
fn passed_through(log: &str) -> (u64, Vec<String>) {
    let Some(line) = log.lines().find(|l| l.contains("query done")) else {
        return (0, Vec::new());
    };
    let marker = "the intermediary ran the pipeline): ";
    let Some(rest) = line.split(marker).nth(1) else {
        return (0, Vec::new());
    };
    let count = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (count, vec![rest.to_string()])
}

#[test]
fn a_saturated_node_passes_tasks_through_and_the_answer_is_the_same() {
    let q1 = std::fs::read_to_string(repo().join("datasets/queries/tpch/q1.sql")).unwrap();
    let expected = embedded(&q1);
    let registry = tempfile::tempdir().unwrap();
    // One task at a time, and none may wait: while a task runs, the others that arrive
    // are passed through.
    let node = start_node(
        &layout().join("all"),
        registry.path(),
        &["--max-tasks", "1", "--passthrough-queue", "0"],
    );
    let intermediary = start_intermediary(&[&node.url], &["--tasks-per-node", "4"]);
    assert_same_numbers(
        &stdout_ok(connect(&intermediary.url, TOKEN, &q1)),
        &expected,
    );
    let log = intermediary.stop();
    let (count, reasons) = passed_through(&log);
    assert!(count > 0, "no task was passed through: {log}");
    assert!(
        reasons[0].contains("the storage node was saturated (more than 0 tasks waiting)"),
        "{reasons:?}"
    );
    let node_log = node.stop();
    drop(node_log);
}

/// A C scalar plugin `hungry(x) = x + 1` that first touches 96 MiB of linear memory: it
/// traps on a node whose instances are capped below that, and runs where they are not.
const HUNGRY_C: &str = r#"#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{\"kind\":\"scalar\",\"name\":\"hungry\",\"arguments\":[\"Float64\"],\"returns\":\"Float64\"}")

PD_EXPORT("pushdown_scalar") uint64_t pushdown_scalar(uint8_t *input, int32_t len) {
    size_t scratch_len = (size_t)96 << 20;
    /* volatile: the compiler may not drop an allocation it can see is unused. */
    volatile char *scratch = malloc(scratch_len);
    if (scratch == NULL) __builtin_trap();
    for (size_t i = 0; i < scratch_len; i += 65536) scratch[i] = 1;
    free((void *)scratch);
    pd_batch in;
    const char *error;
    if (pd_read_batch(input, (size_t)len, &in, &error) != 0) {
        free(input);
        return pd_return_error("%s", error);
    }
    const pd_column *x = &in.columns[0];
    int64_t n = in.num_rows;
    double *values = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) values[i] = pd_is_null(x, i) ? 0 : pd_f64(x, i) + 1;
    pd_column out = {.type = PD_FLOAT64, .length = n, .null_count = x->null_count,
                     .validity = x->validity, .values = values};
    uint64_t result = pd_return_column(out, n);
    free(values);
    free(input);
    return result;
}
"#;

#[test]
fn a_plugin_that_traps_on_a_node_is_passed_through_then_quarantined_and_the_answer_is_the_same() {
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("hungry");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("hungry.c"), HUNGRY_C).unwrap();
    let wasm = stdout_ok(
        pushdown()
            .args(["plugin", "build"])
            .arg(&dir)
            .output()
            .unwrap(),
    );
    let reg = tempfile::tempdir().unwrap();
    stdout_ok(
        pushdown()
            .args(["plugin", "register", wasm.trim(), "--registry"])
            .arg(reg.path())
            .output()
            .unwrap(),
    );
    let data = tempfile::tempdir().unwrap();
    let mut csv = String::from("x,g\n");
    for i in 0..20_000 {
        csv.push_str(&format!("{}.5,{}\n", i % 1000, i % 3));
    }
    std::fs::write(data.path().join("t.csv"), csv).unwrap();
    let sql = "SELECT g, count(*), sum(hungry(x)) FROM t GROUP BY g ORDER BY g";
    // Embedded mode, under the default 2 GiB cap, is the reference.
    let expected = stdout_ok(
        pushdown()
            .args(["query", "--output", "csv", "--data"])
            .arg(data.path())
            .args(["--registry", reg.path().to_str().unwrap(), sql])
            .output()
            .unwrap(),
    );
    let node_registry = tempfile::tempdir().unwrap();
    let node = start_node(
        data.path(),
        node_registry.path(),
        &[
            "--plugin-memory",
            "64",
            "--csv-chunk-size",
            "16384",
            "--max-tasks",
            "1",
            "--quarantine-traps",
            "2",
        ],
    );
    let intermediary = start_intermediary(
        &[&node.url],
        &[
            "--registry",
            reg.path().to_str().unwrap(),
            "--tasks-per-node",
            "1",
        ],
    );
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), expected);
    let log = intermediary.stop();
    let (count, reasons) = passed_through(&log);
    let tasks: u64 = log
        .lines()
        .find(|l| l.contains("query done"))
        .and_then(|l| l.split("tasks ").nth(1))
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(tasks >= 5, "{log}");
    // Every task calls the plugin: each was passed through, the first two because the
    // plugin trapped, the rest because it was then quarantined.
    assert_eq!(count, tasks, "{log}");
    assert!(
        reasons[0].contains("2: plugin hungry trapped on the storage node")
            && reasons[0].contains("linear memory cap of 64 MiB"),
        "{reasons:?}"
    );
    assert!(
        reasons[0].contains(&format!(
            "{}: plugin hungry is quarantined on the storage node (2 traps within 60 s",
            tasks - 2
        )),
        "{reasons:?}"
    );
    // With passthrough off the node's trap fails the query, naming the plugin.
    drop(node);
    let node = start_node(
        data.path(),
        node_registry.path(),
        &[
            "--plugin-memory",
            "64",
            "--csv-chunk-size",
            "16384",
            "--no-passthrough",
        ],
    );
    let intermediary =
        start_intermediary(&[&node.url], &["--registry", reg.path().to_str().unwrap()]);
    assert_error(
        &connect(&intermediary.url, TOKEN, sql),
        &["plugin hungry", "linear memory cap of 64 MiB"],
    );
}

/// Tasks recorded as folded in the checkpoints in `dir` (each file's manifest: magic,
/// length, JSON with a `folded` map).
fn checkpointed_tasks(dir: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_none_or(|x| x != "ckpt") {
            continue;
        }
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        let Some(len) = bytes.get(8..12) else {
            continue;
        };
        let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
        let Some(json) = bytes.get(12..12 + len) else {
            continue;
        };
        let manifest: serde_json::Value = serde_json::from_slice(json).unwrap();
        n += manifest["folded"].as_object().unwrap().len();
    }
    n
}

/// The number after `marker` in the intermediary's last run report.
fn report_count(log: &str, marker: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains("query done"))?;
    let rest = line.split(marker).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_node_killed_mid_query_resumes_its_folds_from_checkpoints_and_the_answer_is_the_same() {
    let q1 = std::fs::read_to_string(repo().join("datasets/queries/tpch/q1.sql")).unwrap();
    let expected = embedded(&q1);
    let registry = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let node_args = [
        "--max-tasks",
        "1",
        "--result-cache",
        "0",
        "--checkpoint-dir",
        checkpoints.path().to_str().unwrap(),
        "--checkpoint-every",
        "0",
    ];
    let data = layout().join("all");
    let mut node = start_node_at(&data, registry.path(), &listen, &node_args);
    let intermediary =
        start_intermediary(&[&node.url], &["--fold-on-nodes", "--tasks-per-node", "1"]);
    // The query runs while the node folds its tasks; once checkpoints hold a few, the node
    // is frozen and killed, as a crash would.
    let mut query = pushdown()
        .args([
            "query",
            "--connect",
            &intermediary.url,
            "--token",
            TOKEN,
            "--output",
            "csv",
        ])
        .arg(&q1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while checkpointed_tasks(checkpoints.path()) < 3 {
        assert!(
            query.try_wait().unwrap().is_none(),
            "the query finished before the node was killed"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint written"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    node.signal("-STOP");
    let held = checkpointed_tasks(checkpoints.path());
    let _ = node.child.kill();
    let _ = node.child.wait();
    let failed = query.wait_with_output().unwrap();
    assert!(!failed.status.success(), "the query outlived its node");
    drop(node);
    // The node comes back on the same address with the same checkpoint folder; the query
    // runs again and the folded tasks are not run again.
    let node = start_node_at(&data, registry.path(), &listen, &node_args);
    assert_same_numbers(
        &stdout_ok(connect(&intermediary.url, TOKEN, &q1)),
        &expected,
    );
    let log = intermediary.stop();
    let marker = "of which held from checkpoints (not run again): ";
    assert_eq!(
        report_count(&log, marker),
        Some(held as u64),
        "{held} tasks were checkpointed: {log}"
    );
    let node_log = node.stop();
    assert!(
        node_log.contains("resumed from its checkpoint"),
        "{node_log}"
    );
    assert_eq!(
        checkpointed_tasks(checkpoints.path()),
        0,
        "drained jobs leave no checkpoint"
    );
}

#[test]
fn folding_on_nodes_without_checkpoints_answers_like_embedded_mode() {
    let q1 = std::fs::read_to_string(repo().join("datasets/queries/tpch/q1.sql")).unwrap();
    let expected = embedded(&q1);
    let registry = tempfile::tempdir().unwrap();
    let node = start_node(
        &layout().join("all"),
        registry.path(),
        &["--result-cache", "0"],
    );
    let intermediary = start_intermediary(&[&node.url], &["--fold-on-nodes"]);
    // `--explain` with `--connect` prints the intermediary's run report after the result.
    let out = pushdown()
        .args(["query", "--connect", &intermediary.url, "--token", TOKEN])
        .args(["--output", "csv", "--explain"])
        .arg(&q1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_same_numbers(&stdout_ok(out), &expected);
    let line = stderr
        .lines()
        .find(|l| l.contains("tasks folded on the storage nodes"))
        .unwrap_or_else(|| panic!("no fold line in the run report: {stderr}"));
    let folded = report_count(&format!("query done {line}"), "drained): ").unwrap();
    assert!(
        folded >= 30,
        "every row group's partial aggregate is folded: {stderr}"
    );
    assert!(
        line.ends_with("of which held from checkpoints (not run again): 0"),
        "{line}"
    );
    assert!(stderr.contains("table lineitem: tasks"), "{stderr}");
    // Without --explain the result has no extra rows and no report.
    let plain = connect(&intermediary.url, TOKEN, &q1);
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("tasks folded"));
    assert_same_numbers(&stdout_ok(plain), &expected);
    drop(node);
}
