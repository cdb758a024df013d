//! User plugins end to end through the CLI: `plugin build`, `register`, `list`, `remove`,
//! `new`, and queries that call them, checked against DuckDB; bad plugins refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{assert_error, folder};

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn pushdown(args: &[&str]) -> Output {
    crate::support::pushdown()
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// The example plugins built for wasm32-wasip1 with `pushdown plugin build`, once.
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Vec<(String, PathBuf)>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        [
            "haversine_km",
            "avg_length",
            "approx_distinct",
            "access_log",
        ]
        .iter()
        .map(|n| {
            let dir = repo().join("pushdown-plugins/examples").join(n);
            let out = ok(pushdown(&["plugin", "build", dir.to_str().unwrap()]));
            let wasm = PathBuf::from(out.trim());
            assert!(wasm.is_file(), "{wasm:?}");
            (n.to_string(), wasm)
        })
        .collect()
    });
    built.iter().find(|(n, _)| n == name).unwrap().1.clone()
}

/// A fresh registry with `modules` registered.
fn registry(modules: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for m in modules {
        let out = ok(pushdown(&[
            "plugin",
            "register",
            m.to_str().unwrap(),
            "--registry",
            dir.path().to_str().unwrap(),
        ]));
        assert!(out.starts_with("registered "), "{out}");
    }
    dir
}

/// `pushdown query --data DATA --registry REGISTRY ARGS...` (ARGS ends with the SQL).
fn run_query(data: &str, registry: &str, args: &[&str]) -> Output {
    let mut all = vec!["query", "--data", data, "--registry", registry];
    all.extend(args);
    pushdown(&all)
}

fn query_csv(data: &Path, registry: &Path, extra: &[&str], sql: &str) -> Vec<Vec<String>> {
    let mut args = vec!["--output", "csv"];
    args.extend(extra);
    args.push(sql);
    let out = ok(run_query(
        data.to_str().unwrap(),
        registry.to_str().unwrap(),
        &args,
    ));
    out.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Runs `sql` in DuckDB (Python package, the test oracle) and returns the rows as JSON.
pub(crate) fn duckdb(sql: &str) -> Vec<Vec<Value>> {
    let python = crate::support::python();
    let out = Command::new(python)
        .args([
            "-c",
            "import duckdb, json, sys; print(json.dumps(duckdb.sql(sys.argv[1]).fetchall(), default=str))",
            sql,
        ])
        .output()
        .expect("python with duckdb runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<Value>> = serde_json::from_slice(&out.stdout).unwrap();
    rows
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

const CITIES: &str = "name,lat,lon
Paris,48.8566,2.3522
London,51.5074,-0.1278
Brussels,50.8503,4.3517
Amsterdam,52.3676,4.9041
Berlin,52.5200,13.4050
Madrid,40.4168,-3.7038
Lyon,45.7640,4.8357
Rome,41.9028,12.4964
Geneva,46.2044,6.1432
Luxembourg,49.6116,6.1319
Strasbourg,48.5734,7.7521
Bordeaux,44.8378,-0.5792
Marseille,43.2965,5.3698
Cologne,50.9375,6.9603
Frankfurt,50.1109,8.6821
Zurich,47.3769,8.5417
Nantes,47.2184,-1.5536
Lille,50.6292,3.0573
Dublin,53.3498,-6.2603
Vienna,48.2082,16.3738
Nowhere,,
";

#[test]
fn haversine_km_filters_on_the_storage_node_like_duckdb() {
    let reg = registry(&[&example("haversine_km")]);
    let data = folder(&[("cities.csv", CITIES.as_bytes())]);
    let sql = "SELECT name, round(haversine_km(lat, lon, 48.8566, 2.3522), 3) AS km FROM cities \
               WHERE haversine_km(lat, lon, 48.8566, 2.3522) < 450 ORDER BY name";
    let ours = query_csv(data.path(), reg.path(), &[], sql);
    let path = data.path().join("cities.csv");
    let theirs = duckdb(&format!(
        "SELECT name, round(2 * 6371.0088 * asin(sqrt(pow(sin(radians(lat - 48.8566) / 2), 2) \
         + cos(radians(48.8566)) * cos(radians(lat)) * pow(sin(radians(lon - 2.3522) / 2), 2))), 3) \
         FROM read_csv('{}') WHERE 2 * 6371.0088 * asin(sqrt(pow(sin(radians(lat - 48.8566) / 2), 2) \
         + cos(radians(48.8566)) * cos(radians(lat)) * pow(sin(radians(lon - 2.3522) / 2), 2))) < 450 ORDER BY name",
        path.display()
    ));
    assert_eq!(ours.len(), theirs.len(), "{ours:?} vs {theirs:?}");
    assert!(ours.len() >= 8, "{ours:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a[0], text(&b[0]));
        let (x, y): (f64, f64) = (a[1].parse().unwrap(), b[1].as_f64().unwrap());
        assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
    // The call runs inside the storage node's sandbox: it is part of the pushed predicate.
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["--explain", sql],
    );
    let explain = String::from_utf8_lossy(&out.stderr);
    assert!(
        explain.contains("predicate: haversine_km(lat, lon, 48.8566, 2.3522) < 450"),
        "{explain}"
    );
}

/// The haversine formula in DuckDB's SQL, distance in km from `(lat, lon)` to the point.
fn duckdb_haversine(lat: f64, lon: f64) -> String {
    format!(
        "(2 * 6371.0088 * asin(sqrt(pow(sin(radians(lat - {lat}) / 2), 2) \
         + cos(radians({lat})) * cos(radians(lat)) * pow(sin(radians(lon - {lon}) / 2), 2))))"
    )
}

#[test]
fn haversine_can_skip_prunes_far_row_groups_and_answers_like_a_full_scan() {
    let reg = registry(&[&example("haversine_km")]);
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("points.parquet");
    // 200 000 points spread over the globe (some with NULL coordinates), written in 10°
    // latitude bands ordered by longitude, about 6 000 rows per row group (DuckDB rounds
    // up to its vector size): 33 row groups, each a compact latitude/longitude box.
    duckdb(&format!(
        "COPY (SELECT i AS id, \
                      CASE WHEN i % 997 = 0 THEN NULL ELSE ((i * 7919) % 180000) / 1000.0 - 90 END AS lat, \
                      ((i * 104729) % 360000) / 1000.0 - 180 AS lon \
               FROM range(200000) t(i) \
               ORDER BY floor(lat / 10) NULLS LAST, lon) \
         TO '{}' (FORMAT parquet, ROW_GROUP_SIZE 5000)",
        file.display()
    ));
    let registry = reg.path().to_str().unwrap();
    let dir = data.path().to_str().unwrap();
    let skipped = |explain: &str| -> u64 {
        explain
            .lines()
            .find_map(|l| l.trim().strip_prefix("row groups skipped by plugins (their can_skip ruled out every row from the statistics): "))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let run = |sql: &str| -> (String, u64) {
        let out = run_query(dir, registry, &["--output", "csv", "--explain", sql]);
        let stdout = ok(out.clone());
        (stdout, skipped(&String::from_utf8_lossy(&out.stderr)))
    };
    let (paris_lat, paris_lon) = (48.85, 2.35);
    for (test, flipped, oracle_test) in [
        ("< 1500", "1500 >", "< 1500"),
        ("<= 800.5", "800.5 >=", "<= 800.5"),
    ] {
        let call = format!("haversine_km(lat, lon, {paris_lat}, {paris_lon})");
        let select = format!(
            "SELECT count(*) AS n, round(sum({call}), 3) AS km, min(id) AS first FROM points"
        );
        let (pruned, skipped_pruned) = run(&format!("{select} WHERE {call} {test}"));
        let (flip, skipped_flip) = run(&format!("{select} WHERE {flipped} {call}"));
        // `+ 0` hides the call from plugin-aware pruning: the full scan.
        let (full, skipped_full) = run(&format!("{select} WHERE {call} + 0 {test}"));
        assert!(
            skipped_pruned >= 20,
            "{test}: only {skipped_pruned} of 33 row groups skipped"
        );
        assert_eq!(skipped_flip, skipped_pruned, "{flipped}");
        assert_eq!(skipped_full, 0);
        assert_eq!(pruned, full, "{test}: pruned scan and full scan differ");
        assert_eq!(flip, full, "{flipped}");
        // And DuckDB over the same file agrees.
        let theirs = duckdb(&format!(
            "SELECT count(*), round(sum({d}), 3), min(id) FROM '{}' WHERE {d} {oracle_test}",
            file.display(),
            d = duckdb_haversine(paris_lat, paris_lon)
        ));
        let ours: Vec<&str> = full.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(ours[0], text(&theirs[0][0]), "{test}: count");
        assert!(ours[0].parse::<u64>().unwrap() > 100, "{full}");
        let (a, b): (f64, f64) = (ours[1].parse().unwrap(), theirs[0][1].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs() + 0.01, "{test}: {a} vs {b}");
        assert_eq!(ours[2], text(&theirs[0][2]), "{test}: first id");
    }
    // A `>` test is never skipped by this plugin (it bounds distances from below only),
    // and a query without the plugin in WHERE asks nothing.
    let (_, skipped_far) = run(&format!(
        "SELECT count(*) FROM points WHERE haversine_km(lat, lon, {paris_lat}, {paris_lon}) > 100"
    ));
    assert_eq!(skipped_far, 0);
    let (_, skipped_none) = run("SELECT count(*) FROM points WHERE lat > 80");
    assert_eq!(skipped_none, 0);
}

/// TPC-H lineitem at scale factor 0.1, Parquet and CSV, generated once.
pub(crate) fn lineitem() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = crate::support::process_tempdir();
        ok(pushdown(&[
            "datasets",
            "tpch",
            "--scale",
            "0.1",
            "--out",
            dir.path().to_str().unwrap(),
        ]));
        dir
    })
    .path()
}

#[test]
fn approx_distinct_merges_sketches_and_is_within_two_percent_of_duckdb() {
    let reg = registry(&[&example("approx_distinct")]);
    for format in ["parquet", "csv"] {
        let data = lineitem().join(format);
        let file = data.join(format!("lineitem.{format}"));
        let ours = query_csv(
            &data,
            reg.path(),
            &["--csv-chunk-size", "20000000"],
            "SELECT l_returnflag, approx_distinct(l_orderkey) FROM lineitem GROUP BY l_returnflag \
             UNION ALL SELECT 'all', approx_distinct(l_orderkey) FROM lineitem ORDER BY 1",
        );
        let theirs = duckdb(&format!(
            "SELECT l_returnflag, count(DISTINCT l_orderkey) FROM '{}' GROUP BY l_returnflag \
             UNION ALL SELECT 'all', count(DISTINCT l_orderkey) FROM '{}' ORDER BY 1",
            file.display(),
            file.display()
        ));
        assert_eq!(ours.len(), 4, "{ours:?}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a[0], text(&b[0]));
            let (approx, exact): (f64, f64) = (a[1].parse().unwrap(), b[1].as_f64().unwrap());
            let error = (approx - exact).abs() / exact;
            assert!(error < 0.02, "{format} {a:?}: exact {exact}, error {error}");
        }
    }
    // Partial sketches come back from the storage node, not the keys.
    let out = run_query(
        lineitem().join("parquet").to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &[
            "--explain",
            "SELECT approx_distinct(l_orderkey) FROM lineitem",
        ],
    );
    let explain = String::from_utf8_lossy(&out.stderr);
    assert!(
        explain.contains("approx_distinct(l_orderkey) -> Binary"),
        "{explain}"
    );
    assert!(
        explain.contains("rows in 600572, selected 600572, out 5"),
        "{explain}"
    );
}

#[test]
fn avg_length_matches_duckdb_on_words_and_lineitem_comments() {
    let reg = registry(&[&example("avg_length")]);
    let words = folder(&[(
        "words.csv",
        "word,n\nheap,1\nsandbox,2\n,3\nÉcole,4\nnaïve café,5\n\"\",6\n".as_bytes(),
    )]);
    let ours = query_csv(
        words.path(),
        reg.path(),
        &[],
        "SELECT avg_length(word) FROM words",
    );
    let theirs = duckdb(&format!(
        "SELECT avg(length(word)) FROM read_csv('{}')",
        words.path().join("words.csv").display()
    ));
    let (x, y): (f64, f64) = (ours[0][0].parse().unwrap(), theirs[0][0].as_f64().unwrap());
    assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    let data = lineitem().join("parquet");
    let ours = query_csv(
        &data,
        reg.path(),
        &[],
        "SELECT l_linestatus, avg_length(l_comment) FROM lineitem GROUP BY 1 ORDER BY 1",
    );
    let theirs = duckdb(&format!(
        "SELECT l_linestatus, avg(length(l_comment)) FROM '{}' GROUP BY 1 ORDER BY 1",
        data.join("lineitem.parquet").display()
    ));
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(&theirs) {
        let (x, y): (f64, f64) = (a[1].parse().unwrap(), b[1].as_f64().unwrap());
        assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
    }
}

/// `n` lines of Apache combined log, deterministic.
pub(crate) fn access_log(n: usize) -> String {
    let mut state = 42u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let statuses = [200, 200, 200, 304, 404, 500, 301];
    let paths = [
        "/",
        "/index.html",
        "/img/logo.png",
        "/api/items?id=3",
        "/login",
    ];
    let mut out = String::new();
    for i in 0..n {
        let status = statuses[next(7) as usize];
        let bytes = if status == 304 {
            "-".to_string()
        } else {
            (100 + next(50_000)).to_string()
        };
        out.push_str(&format!(
            "10.0.0.{} - {} [{:02}/Oct/2023:{:02}:{:02}:{:02} +0200] \"GET {} HTTP/1.1\" {status} {bytes} \"-\" \"Mozilla/5.0 (X11; Linux x86_64)\"\n",
            1 + next(20),
            ["-", "alice", "bob"][next(3) as usize],
            1 + i % 28,
            i % 24,
            i % 60,
            (i * 7) % 60,
            paths[next(5) as usize],
        ));
    }
    out
}

#[test]
fn access_log_parser_makes_logs_queryable_and_names_bad_lines() {
    let reg = registry(&[&example("access_log")]);
    let log = access_log(20_000);
    let data = folder(&[("access.log", log.as_bytes())]);
    // Small chunks: several tasks, each told its first line number.
    let extra = [
        "--format",
        "access=access_log",
        "--csv-chunk-size",
        "300000",
    ];
    let ours = query_csv(
        data.path(),
        reg.path(),
        &extra,
        "SELECT status, count(*), sum(bytes) FROM access GROUP BY status ORDER BY status",
    );
    let theirs = duckdb(&format!(
        "WITH l AS (SELECT unnest(string_split(content, chr(10))) AS line FROM read_text('{}')), \
         f AS (SELECT regexp_extract(line, '^\\S+ \\S+ \\S+ \\[[^]]*\\] \"[^\"]*\" (\\d+) (\\S+)', ['status', 'bytes']) AS m FROM l WHERE line <> '') \
         SELECT CAST(m.status AS INTEGER) AS s, count(*), sum(TRY_CAST(m.bytes AS BIGINT)) FROM f GROUP BY s ORDER BY s",
        data.path().join("access.log").display()
    ));
    let theirs: Vec<Vec<String>> = theirs
        .iter()
        .map(|r| r.iter().map(text).collect())
        .collect();
    assert_eq!(ours, theirs);
    // A malformed line in the third chunk is reported with its line number in the file.
    let mut lines: Vec<&str> = log.lines().collect();
    let bad =
        "10.0.0.9 - - [04/Oct/2023:23:59:53 +0200] \"GET / HTTP/1.1\" twohundred 5 \"-\" \"-\"";
    lines[4567] = bad;
    let data = folder(&[("access.log", (lines.join("\n") + "\n").as_bytes())]);
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &[
            "--format",
            "access=access_log",
            "--csv-chunk-size",
            "300000",
            "SELECT count(*) FROM access",
        ],
    );
    assert_error(
        &out,
        &[
            "access.log",
            "plugin access_log",
            "line 4568: malformed status \"twohundred\"",
        ],
    );
}

#[test]
fn a_parser_written_in_webassembly_text_is_registered_and_queried() {
    let wat = repo().join("pushdown-plugins/examples/numbers_wat/numbers_wat.wat");
    let reg = registry(&[&wat]);
    let numbers: String = (0..50_000)
        .map(|i| format!("{}\n", (i * 7919) % 100_003 - 50_000))
        .collect();
    let data = folder(&[("nums.txt", numbers.as_bytes())]);
    let ours = query_csv(
        data.path(),
        reg.path(),
        &["--format", "nums=numbers_wat", "--csv-chunk-size", "100000"],
        "SELECT count(*), sum(n), min(n), max(n), count(*) FILTER (WHERE n < 0) FROM nums",
    );
    let theirs = duckdb(&format!(
        "SELECT count(*), sum(n), min(n), max(n), count(*) FILTER (WHERE n < 0) \
         FROM read_csv('{}', header = false, columns = {{'n': 'BIGINT'}})",
        data.path().join("nums.txt").display()
    ));
    let theirs: Vec<Vec<String>> = theirs
        .iter()
        .map(|r| r.iter().map(text).collect())
        .collect();
    assert_eq!(ours, theirs);
    let data = folder(&[("nums.txt", b"1\n2\nthree\n")]);
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["--format", "nums=numbers_wat", "SELECT sum(n) FROM nums"],
    );
    assert_error(
        &out,
        &["nums.txt", "plugin numbers_wat", "line 3: not an integer"],
    );
}

/// A user plugin module in WebAssembly text with the given signature JSON and extra items.
fn module(version: i32, signature: &str, extra: &str) -> String {
    let escaped = signature.replace('"', "\\\"");
    format!(
        r#"(module
  (memory (export "memory") 1)
  (data (i32.const 1024) "{escaped}")
  (func (export "pushdown_abi_version") (result i32) (i32.const {version}))
  (func (export "pushdown_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "pushdown_free") (param i32 i32))
  (func (export "pushdown_signature") (result i64)
    (i64.or (i64.shl (i64.const 1024) (i64.const 32)) (i64.const {len})))
  {extra})"#,
        len = signature.len()
    )
}

#[test]
fn bad_plugins_are_refused_at_register_and_nothing_is_stored() {
    let scalar = r#"{"kind":"scalar","name":"f","arguments":["Float64"],"returns":"Float64"}"#;
    let eval = r#"(func (export "pushdown_scalar") (param i32 i32) (result i64) (i64.const 0))"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "garbage.wasm",
            "this is not a module".into(),
            "is neither a Wasm module nor valid WebAssembly text",
        ),
        (
            "no_signature.wat",
            "(module (memory (export \"memory\") 1))".into(),
            "does not export pushdown_abi_version",
        ),
        (
            "version.wat",
            module(2, scalar, eval),
            "exports ABI version 2; this host speaks version 1",
        ),
        (
            "bad_type.wat",
            module(
                1,
                r#"{"kind":"scalar","name":"f","arguments":["Floaty"],"returns":"Float64"}"#,
                eval,
            ),
            "declares a malformed signature: argument 1 has the malformed type \"Floaty\"",
        ),
        (
            "not_json.wat",
            module(1, "{kind: scalar", eval),
            "declares a malformed signature: malformed signature JSON",
        ),
        (
            "missing_export.wat",
            module(1, scalar, ""),
            "declares kind scalar but does not export pushdown_scalar",
        ),
        (
            "foreign_import.wat",
            module(1, scalar, eval).replacen(
                "(module",
                "(module (import \"env\" \"open\" (func (param i32)))",
                1,
            ),
            "cannot be linked",
        ),
    ];
    let reg = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    for (file, text, needle) in &cases {
        let path = files.path().join(file);
        std::fs::write(&path, text).unwrap();
        let out = pushdown(&[
            "plugin",
            "register",
            path.to_str().unwrap(),
            "--registry",
            reg.path().to_str().unwrap(),
        ]);
        assert_error(&out, &[needle]);
    }
    let listed = ok(pushdown(&[
        "plugin",
        "list",
        "--registry",
        reg.path().to_str().unwrap(),
    ]));
    assert!(listed.starts_with("no plugins registered"), "{listed}");
    // A well-formed one registers, then is listed and removed.
    let good = files.path().join("good.wat");
    std::fs::write(&good, module(1, scalar, eval)).unwrap();
    let r = reg.path().to_str().unwrap();
    ok(pushdown(&[
        "plugin",
        "register",
        good.to_str().unwrap(),
        "--registry",
        r,
        "--name",
        "twice",
    ]));
    let listed = ok(pushdown(&["plugin", "list", "--registry", r]));
    assert!(
        listed.contains("twice  scalar  (Float64) -> Float64"),
        "{listed}"
    );
    assert_error(
        &pushdown(&["plugin", "remove", "nope", "--registry", r]),
        &["no plugin named nope (registered: twice)"],
    );
    ok(pushdown(&["plugin", "remove", "twice", "--registry", r]));
    assert!(ok(pushdown(&["plugin", "list", "--registry", r])).starts_with("no plugins"));
}

#[test]
fn an_unknown_function_is_named_with_the_registered_ones() {
    let reg = registry(&[&example("haversine_km")]);
    let data = folder(&[("cities.csv", CITIES.as_bytes())]);
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["SELECT haversine(lat, lon, 0, 0) FROM cities"],
    );
    assert_error(
        &out,
        &[
            "unknown function haversine",
            "registered plugin functions: haversine_km",
        ],
    );
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["--format", "cities=haversine_km", "SELECT 1"],
    );
    assert_error(
        &out,
        &["plugin haversine_km is a scalar plugin, not a parser"],
    );
}

/// The plugin author's path from the binary alone: `pushdown` copied to a scratch folder
/// and run there, with its own cache and no variable naming this checkout. `plugin new`
/// for each kind (Rust, on the SDK the binary unpacks) and for a C scalar and aggregate
/// (`--lang c`, on the header it carries) gives plugins that build, register and answer a
/// query; nothing they build from lies in this checkout.
#[test]
fn plugin_new_to_a_query_for_every_kind() {
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("pushdown");
    std::fs::copy(env!("CARGO_BIN_EXE_pushdown"), &binary).unwrap();
    let work = scratch.path().join("plugins");
    std::fs::create_dir(&work).unwrap();
    let cache = scratch.path().join("cache");
    let reg = scratch.path().join("registry");
    let r = reg.to_str().unwrap();
    let checkout = repo().canonicalize().unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-target"),
        PathBuf::from,
    );
    let run = |args: &[&str]| -> Output {
        crate::support::pushdown_at(&binary)
            .args(args)
            .current_dir(&work)
            .env("PUSHDOWN_CACHE_DIR", &cache)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("CARGO_MANIFEST_DIR")
            .output()
            .unwrap()
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for (name, kind, lang) in [
        ("twice", "scalar", "rust"),
        ("sum_squares", "aggregate", "rust"),
        ("kv", "parser", "rust"),
        ("twice_c", "scalar", "c"),
        ("sum_squares_c", "aggregate", "c"),
    ] {
        let out = ok(run(&[
            "plugin", "new", name, "--kind", kind, "--lang", lang,
        ]));
        assert!(
            out.contains(&format!("created {kind} plugin {name}")),
            "{out}"
        );
        let dir = work.join(name);
        if lang == "rust" {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            assert!(manifest.contains(cache.to_str().unwrap()), "{manifest}");
            let test = Command::new(&cargo)
                .args(["test", "--release", "--quiet"])
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target)
                .output()
                .unwrap();
            assert!(
                test.status.success(),
                "cargo test: {}",
                String::from_utf8_lossy(&test.stderr)
            );
        } else {
            assert!(dir.join("pushdown_plugin.h").is_file() && dir.join("ABI.md").is_file());
        }
        let built = run(&["plugin", "build", name]);
        let report = String::from_utf8_lossy(&built.stderr).to_string();
        assert!(
            built.status.success()
                && report.contains(&format!("built {kind} plugin {name}"))
                && report.contains("pushdown_signature")
                && report.contains("WASI preview 1 function(s)"),
            "{report}"
        );
        let wasm = String::from_utf8(built.stdout).unwrap();
        ok(run(&["plugin", "register", wasm.trim(), "--registry", r]));
        if lang == "rust" {
            // Every crate it builds from is the binary's SDK or a registry crate.
            let metadata = Command::new(&cargo)
                .args(["metadata", "--format-version", "1", "--offline"])
                .args(["--filter-platform", "wasm32-wasip1"])
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(
                metadata.status.success(),
                "cargo metadata: {}",
                String::from_utf8_lossy(&metadata.stderr)
            );
            let metadata: Value = serde_json::from_slice(&metadata.stdout).unwrap();
            let packages = metadata["packages"].as_array().unwrap();
            for package in packages {
                let path = package["manifest_path"].as_str().unwrap();
                assert!(!Path::new(path).starts_with(&checkout), "{path}");
            }
            assert!(packages.iter().any(|p| p["name"] == "pushdown-plugin"
                && p["manifest_path"]
                    .as_str()
                    .unwrap()
                    .starts_with(cache.to_str().unwrap())));
        }
    }
    // C skeletons are scalar and aggregate plugins; a parser is refused, saying so.
    let parser = run(&["plugin", "new", "kv_c", "--kind", "parser", "--lang", "c"]);
    assert_error(&parser, &["--lang c", "scalar and aggregate", "ABI.md"]);
    assert!(!work.join("kv_c").exists());
    // A module that imports more than WASI preview 1 is refused by `plugin build`.
    let lib = work.join("twice/src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    let source = source.replace(
        "x.unary(|v| 2.0 * v)",
        "x.unary(|v| unsafe { host_double(v) })",
    ) + "\n#[link(wasm_import_module = \"env\")]\nextern \"C\" {\n    fn host_double(v: f64) -> f64;\n}\n";
    std::fs::write(&lib, source).unwrap();
    let built = run(&["plugin", "build", "twice"]);
    let err = String::from_utf8_lossy(&built.stderr);
    assert!(
        !built.status.success()
            && err.contains("beyond WASI preview 1")
            && err.contains("env")
            && err.contains("not registered"),
        "{err}"
    );
    let data = folder(&[
        ("t.csv", b"x\n1.5\n2\n\n3\n"),
        ("pairs.kv", b"a=1\nb=2\na=40\n"),
    ]);
    let rows = query_csv(
        data.path(),
        &reg,
        &["--format", "pairs=kv"],
        "SELECT (SELECT sum(twice(x)) FROM t) a, (SELECT sum_squares(x) FROM t) b, \
         (SELECT sum(value) FROM pairs WHERE key = 'a') c, (SELECT sum(twice_c(x)) FROM t) d, \
         (SELECT sum_squares_c(x) FROM t) e, (SELECT sum_squares_c(x) FROM t WHERE x > 10) f",
    );
    assert_eq!(
        rows,
        vec![vec![
            "13.0".to_string(),
            "15.25".into(),
            "41".into(),
            "13.0".into(),
            "15.25".into(),
            String::new()
        ]]
    );
}

/// The C examples `hypot_c` (scalar) and `geomean_c` (aggregate), built by `plugin build`
/// from their `.c` file alone (the header comes from the binary), agree with DuckDB on
/// TPC-H lineitem in Parquet and CSV, pushed into the storage node's sandbox; NULLs pass
/// through; a bad value fails the query naming the plugin.
#[test]
fn c_plugins_hypot_and_geomean_agree_with_duckdb() {
    let work = tempfile::tempdir().unwrap();
    let mut modules = Vec::new();
    for name in ["hypot_c", "geomean_c"] {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let source = repo().join(format!("pushdown-plugins/examples/{name}/{name}.c"));
        std::fs::copy(&source, dir.join(format!("{name}.c"))).unwrap();
        let out = ok(pushdown(&["plugin", "build", dir.to_str().unwrap()]));
        modules.push(PathBuf::from(out.trim()));
    }
    // Not a plugin folder, a file, a C file that does not compile: refused, saying why.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = pushdown(&["plugin", "build", empty.to_str().unwrap()]);
    assert_error(
        &out,
        &["empty", "neither a Rust crate", "not a plugin folder"],
    );
    let file = work.path().join("hypot_c/hypot_c.c");
    let out = pushdown(&["plugin", "build", file.to_str().unwrap()]);
    assert_error(&out, &["hypot_c.c", "takes the plugin's folder"]);
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("broken.c"), "int f( {\n").unwrap();
    let out = pushdown(&["plugin", "build", broken.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("broken.c:1") && err.contains("clang failed"),
        "{err}"
    );
    let reg = registry(&[&modules[0], &modules[1]]);
    let close = |a: &str, b: &Value| {
        let (x, y): (f64, f64) = (a.parse().unwrap(), b.as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{a} vs {b}");
    };
    for format in ["parquet", "csv"] {
        let data = lineitem().join(format);
        let file = data.join(format!("lineitem.{format}"));
        let sql = "SELECT l_returnflag, sum(hypot_c(l_quantity, l_discount)), \
                   geomean_c(l_extendedprice), count(*) FROM lineitem \
                   WHERE hypot_c(l_quantity, l_tax) < 20 GROUP BY 1 ORDER BY 1";
        let ours = query_csv(&data, reg.path(), &[], sql);
        let theirs = duckdb(&format!(
            "SELECT l_returnflag, sum(sqrt(l_quantity::DOUBLE ^ 2 + l_discount::DOUBLE ^ 2)), \
             geomean(l_extendedprice::DOUBLE), count(*) FROM '{}' \
             WHERE sqrt(l_quantity::DOUBLE ^ 2 + l_tax::DOUBLE ^ 2) < 20 GROUP BY 1 ORDER BY 1",
            file.display()
        ));
        assert_eq!(ours.len(), 3, "{ours:?}");
        assert_eq!(ours.len(), theirs.len());
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a[0], text(&b[0]));
            close(&a[1], &b[1]);
            close(&a[2], &b[2]);
            assert_eq!(a[3], text(&b[3]), "{format}");
        }
        let out = run_query(
            data.to_str().unwrap(),
            reg.path().to_str().unwrap(),
            &["--explain", sql],
        );
        let explain = String::from_utf8_lossy(&out.stderr);
        // The call runs inside the storage node's sandbox: it is part of the pushed predicate.
        let pushed = explain
            .lines()
            .find(|l| l.trim_start().starts_with("predicate: "))
            .unwrap_or_default();
        assert!(
            pushed.contains("hypot_c(") && pushed.contains("l_tax") && pushed.ends_with("< 20"),
            "{explain}"
        );
    }
    let data = folder(&[("t.csv", b"x,y\n3,4\n,1\n8,15\n5,\n")]);
    let rows = query_csv(
        data.path(),
        reg.path(),
        &[],
        "SELECT y, hypot_c(x, y), geomean_c(x) FROM t GROUP BY y, x ORDER BY y NULLS LAST",
    );
    let want = [
        ("1", None, None),
        ("4", Some(5.0), Some(3.0)),
        ("15", Some(17.0), Some(8.0)),
        ("", None, Some(5.0)),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (row, (y, h, g)) in rows.iter().zip(want) {
        assert_eq!(row[0], y, "{rows:?}");
        for (got, want) in [(&row[1], h), (&row[2], g)] {
            match want {
                None => assert_eq!(got, "", "{rows:?}"),
                Some(w) => close(got, &Value::from(w)),
            }
        }
    }
    let out = run_query(
        data.path().to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["SELECT geomean_c(x - 4) FROM t"],
    );
    assert_error(&out, &["t.csv", "plugin geomean_c", "-1 is not positive"]);
}

/// A plugin that traps fails the query with its name and the trap, on the storage node
/// (inside a pushed-down predicate) and in the intermediary alike.
#[test]
fn a_trapping_plugin_fails_the_query_with_its_name() {
    let scalar = r#"{"kind":"scalar","name":"boom","arguments":["Float64"],"returns":"Boolean"}"#;
    let trap = r#"(func (export "pushdown_scalar") (param i32 i32) (result i64) unreachable)"#;
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("boom.wat");
    std::fs::write(&path, module(1, scalar, trap)).unwrap();
    let reg = registry(&[&path]);
    let data = folder(&[("t.csv", b"x\n1\n2\n")]);
    for sql in [
        "SELECT count(*) FROM t WHERE boom(x)",
        "SELECT boom(max(x)) FROM t",
    ] {
        let out = run_query(
            data.path().to_str().unwrap(),
            reg.path().to_str().unwrap(),
            &[sql],
        );
        assert_error(&out, &["plugin boom", "unreachable"]);
    }
}

/// `--audit-rate 1`: every task of TPC-H Q1 and Q6 over Parquet and CSV, and of a query
/// whose pipeline calls a user aggregate, runs again with the native pipeline, and no
/// result differs; `--audit-rate 0.5` audits half of the tasks.
#[test]
fn audits_of_q1_q6_and_a_plugin_aggregate_find_no_difference() {
    let reg = registry(&[&example("avg_length")]);
    let q1 = "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice), \
              sum(l_extendedprice * (1 - l_discount)), avg(l_quantity), avg(l_discount), count(*) \
              FROM lineitem WHERE l_shipdate <= DATE '1998-09-02' GROUP BY 1, 2 ORDER BY 1, 2";
    let q6 = "SELECT sum(l_extendedprice * l_discount) FROM lineitem \
              WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01' \
              AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24";
    let plugin = "SELECT l_returnflag, avg_length(l_comment) FROM lineitem \
                  WHERE l_quantity < 10 GROUP BY 1 ORDER BY 1";
    let counts = |report: &str| -> (u64, u64, u64) {
        let number = |after: &str| -> u64 {
            let tail = report
                .split(after)
                .nth(1)
                .unwrap_or_else(|| panic!("{after:?} in {report}"));
            tail.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        (
            number("table lineitem: tasks "),
            number("compared): "),
            number("results that differed: "),
        )
    };
    for format in ["parquet", "csv"] {
        let data = lineitem().join(format);
        for sql in [q1, q6, plugin] {
            let out = run_query(
                data.to_str().unwrap(),
                reg.path().to_str().unwrap(),
                &["--audit-rate", "1", "--explain", sql],
            );
            let report = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{report}");
            let (scanned, audited, differed) = counts(&report);
            assert!(scanned >= 2, "{format}: {report}");
            assert_eq!(
                (audited, differed),
                (scanned, 0),
                "{format} {sql}: {report}"
            );
        }
    }
    let data = lineitem().join("csv");
    let out = run_query(
        data.to_str().unwrap(),
        reg.path().to_str().unwrap(),
        &["--audit-rate", "0.5", "--explain", q6],
    );
    let report = String::from_utf8_lossy(&out.stderr).to_string();
    let (scanned, audited, differed) = counts(&report);
    assert_eq!((audited, differed), (scanned / 2, 0), "{report}");
}

/// A C scalar plugin `NAME(x) = x` whose `pushdown_can_skip` runs `CAN_SKIP_BODY`.
fn identity_c_with_can_skip(name: &str, can_skip_body: &str) -> String {
    format!(
        r#"#include "pushdown_plugin.h"

PUSHDOWN_PLUGIN("{{\"kind\":\"scalar\",\"name\":\"{name}\",\"arguments\":[\"Float64\"],\"returns\":\"Float64\"}}")

PD_EXPORT("pushdown_can_skip") uint64_t pushdown_can_skip(uint8_t *input, int32_t len) {{
    (void)len;
    free(input);
    {can_skip_body}
}}

PD_EXPORT("pushdown_scalar") uint64_t pushdown_scalar(uint8_t *input, int32_t len) {{
    pd_batch in;
    const char *error;
    if (pd_read_batch(input, (size_t)len, &in, &error) != 0) {{
        free(input);
        return pd_return_error("%s", error);
    }}
    uint64_t result = pd_return_column(in.columns[0], in.num_rows);
    free(input);
    return result;
}}
"#
    )
}

#[test]
fn a_trapping_can_skip_keeps_row_groups_and_a_wrong_one_only_costs_its_own_queries() {
    let src = tempfile::tempdir().unwrap();
    let reg = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("trapskip_c", "__builtin_trap();"),
        ("liar_c", "return pd_return_skip(1);"),
    ] {
        let dir = src.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.c")),
            identity_c_with_can_skip(name, body),
        )
        .unwrap();
        let wasm = ok(pushdown(&["plugin", "build", dir.to_str().unwrap()]));
        let out = ok(pushdown(&[
            "plugin",
            "register",
            wasm.trim(),
            "--registry",
            reg.path().to_str().unwrap(),
        ]));
        assert!(out.starts_with("registered "), "{out}");
    }
    let data = tempfile::tempdir().unwrap();
    duckdb(&format!(
        "COPY (SELECT i::DOUBLE AS x FROM range(50000) t(i)) TO '{}' (FORMAT parquet, ROW_GROUP_SIZE 5000)",
        data.path().join("t.parquet").display()
    ));
    let (dir, registry) = (data.path().to_str().unwrap(), reg.path().to_str().unwrap());
    let count = |sql: &str| -> (String, String) {
        let out = run_query(dir, registry, &["--output", "csv", "--explain", sql]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (ok(out).lines().nth(1).unwrap().to_string(), stderr)
    };
    let (plain, _) = count("SELECT count(*) FROM t WHERE x < 20000");
    assert_eq!(plain, "20000");
    // can_skip traps on every row group: each is kept, the answer is the full scan's.
    let (trapping, explain) = count("SELECT count(*) FROM t WHERE trapskip_c(x) < 20000");
    assert_eq!(trapping, plain);
    assert!(
        !explain.contains("row groups skipped by plugins"),
        "{explain}"
    );
    // A can_skip that always says "skip" empties the queries that call it ...
    let (lying, explain) = count("SELECT count(*) FROM t WHERE liar_c(x) < 20000");
    assert_eq!(lying, "0");
    assert!(
        explain.contains("row groups skipped by plugins (their can_skip ruled out every row from the statistics): "),
        "{explain}"
    );
    // ... and no other: the same plugin outside WHERE, and queries without it, are whole.
    let (selected, _) = count("SELECT count(liar_c(x)) FROM t WHERE x < 20000");
    assert_eq!(selected, plain);
    let (again, _) = count("SELECT count(*) FROM t WHERE x < 20000");
    assert_eq!(again, plain);
}
