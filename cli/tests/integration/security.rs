//! The servers meet strangers: each attack an outside client can make against
//! `intermediary serve` and `storage-node serve` on loopback (with `pushdown query
//! --connect`, pyarrow.flight and the ADBC driver), refused with a clear message while
//! the server keeps answering the next query correctly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{
    admin_token_file, cluster, connect, embedded, layout, stdout_ok, Server, COUNTS, TOKEN,
};
use crate::plugins::example;
use crate::support::{assert_error, pushdown};

/// Runs a pyarrow.flight script with `args`, returning what it printed.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(crate::support::python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn clients_get_read_only_queries_and_cannot_change_what_others_see() {
    let c = cluster(&[]);
    let url = c.intermediary.url.clone();
    let count = "SELECT count(*) AS n FROM lineitem WHERE l_orderkey < 1000";
    let before = stdout_ok(connect(&url, TOKEN, count));
    let scratch = tempfile::tempdir().unwrap();
    let written = scratch.path().join("written.csv");
    let copy = format!("COPY (SELECT 'owned') TO '{}'", written.display());
    let attacks = [
        (
            "CREATE EXTERNAL TABLE evil.pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
            "only read-only queries are served; CREATE EXTERNAL TABLE is not allowed",
        ),
        (copy.as_str(), "only read-only queries are served; COPY is not allowed"),
        (
            "CREATE VIEW lineitem AS SELECT * FROM datafusion.public.lineitem WHERE l_orderkey < 100",
            "only read-only queries are served; CREATE VIEW is not allowed",
        ),
        (
            "SET datafusion.catalog.default_schema = 'evil'",
            "only read-only queries are served; SET is not allowed",
        ),
        (
            "INSERT INTO lineitem SELECT * FROM lineitem",
            "only read-only queries are served; INSERT INTO is not allowed",
        ),
        (
            "DROP TABLE lineitem",
            "only read-only queries are served; DROP TABLE is not allowed",
        ),
        ("SELECT * FROM '/etc/passwd'", "/etc/passwd"),
    ];
    for (sql, needle) in attacks {
        let stderr = assert_error(&connect(&url, TOKEN, sql), &[needle]);
        assert!(!stderr.contains("root:"), "{sql}: {stderr}");
    }
    assert!(!written.exists(), "COPY wrote {}", written.display());
    assert_eq!(stdout_ok(connect(&url, TOKEN, count)), before);
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), embedded(COUNTS));
}

#[test]
fn deep_long_huge_or_memory_hungry_sql_is_refused_and_the_intermediary_keeps_serving() {
    let c = cluster(&[]);
    let url = c.intermediary.url.clone();
    // 1000 terms: once a stack overflow that aborted the process.
    let deep = format!("SELECT 1{}", "+1".repeat(1000));
    assert_error(
        &connect(&url, TOKEN, &deep),
        &["nests expressions or subqueries more than 256 deep"],
    );
    let nested = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
    assert_error(&connect(&url, TOKEN, &nested), &["ecursion"]);
    // Texts too long for a command line, sent with the ADBC driver: over the SQL limit,
    // and past the gRPC message limit (refused from the length prefix).
    let said = adbc_error(&url, 300 << 10);
    assert!(said.contains("over the limit of 262144 bytes"), "{said}");
    let said = adbc_error(&url, 5 << 20);
    assert!(said.contains("message length too large"), "{said}");
    // 30 bytes of SQL asking for 1.5 GB.
    assert_error(
        &connect(&url, TOKEN, "SELECT length(repeat('x', 1500000000))"),
        &["repeat: the result would hold about 1430 MiB, over the cap of 256 MiB per call"],
    );
    assert_error(
        &connect(&url, TOKEN, "SELECT length(lpad('x', 2000000000))"),
        &["lpad: the result would hold", "over the cap"],
    );
    let wide = format!("SELECT 1{}", "+1".repeat(200));
    assert_eq!(
        stdout_ok(connect(&url, TOKEN, &wide)).lines().nth(1),
        Some("201")
    );
    assert_eq!(stdout_ok(connect(&url, TOKEN, COUNTS)), embedded(COUNTS));
}

/// Sends `SELECT 1 -- xxx...` of about `bytes` bytes with the ADBC Flight SQL driver and
/// returns the first line of its error ("accepted" when there is none).
fn adbc_error(url: &str, bytes: usize) -> String {
    let script = r#"
import sys, warnings
warnings.simplefilter("ignore")
import adbc_driver_flightsql.dbapi as flight_sql
uri, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    with flight_sql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": "Bearer " + token}) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 -- " + "x" * n)
            cur.fetch_arrow_table()
    print("accepted")
except Exception as e:
    print(str(e).splitlines()[0])
"#;
    python(
        script,
        &[
            &url.replace("http://", "grpc://"),
            TOKEN,
            &bytes.to_string(),
        ],
    )
}

#[test]
fn queries_past_their_deadline_or_over_the_concurrency_cap_fail_clearly() {
    let c = cluster(&["--query-timeout", "4", "--max-queries", "1"]);
    let url = c.intermediary.url.clone();
    // A join on a three-valued key: over 10^11 rows to count, far past four seconds.
    let slow = "SELECT count(*) FROM lineitem a JOIN lineitem b ON a.l_returnflag = b.l_returnflag";
    let mut first = pushdown()
        .args(["query", "--connect", &url, "--token", TOKEN, slow])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first query runs, a second is refused (asked again until the first has
    // started, within its four seconds).
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let out = connect(&url, TOKEN, COUNTS);
        if !out.status.success() {
            assert_error(&out, &["1 queries are running, the limit of this server"]);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a second query was never refused while the first ran"
        );
    }
    let first_out = {
        let _ = first.wait();
        first.wait_with_output().unwrap()
    };
    assert_error(&first_out, &["deadline of 4 s"]);
    // The stopped query holds its slot until its operators have really stopped (at their
    // next batch); then the server answers again.
    let started = std::time::Instant::now();
    let answer = loop {
        let out = connect(&url, TOKEN, COUNTS);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert_error(&out, &["queries are running"]);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the stopped query never released its slot"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(answer, embedded(COUNTS));
}

/// A pyarrow.flight client calling `put_module` on a node with `token`, `admin` (or no
/// admin header when empty), the declared `name` and `sha256` (of the file when empty).
const PUT_MODULE: &str = r#"
import hashlib, json, sys
import pyarrow.flight as fl
url, token, admin, name, sha, path = sys.argv[1:7]
data = open(path, "rb").read() if path != "-" else b"\0asm" + b"x" * (70 << 20)
sha = sha or hashlib.sha256(data).hexdigest()
headers = [(b"authorization", ("Bearer " + token).encode())]
if admin:
    headers.append((b"x-pushdown-admin", ("Bearer " + admin).encode()))
client = fl.FlightClient(url.replace("http://", "grpc://"))
body = json.dumps({"name": name, "sha256": sha}).encode() + b"\n" + data
try:
    list(client.do_action(fl.Action("put_module", body), fl.FlightCallOptions(headers=headers)))
    print("accepted")
except Exception as e:
    print("refused:", str(e).splitlines()[0])
"#;

#[test]
fn put_module_needs_the_admin_token_and_never_names_or_replaces_a_plugin() {
    let (reg, wasm) = {
        let reg = tempfile::tempdir().unwrap();
        let wasm = example("approx_distinct");
        let out = pushdown()
            .args(["plugin", "register", wasm.to_str().unwrap(), "--registry"])
            .arg(reg.path())
            .output()
            .unwrap();
        stdout_ok(out);
        (reg, wasm)
    };
    let r = reg.path().to_str().unwrap();
    let c = cluster(&["--registry", r]);
    let node = c.nodes[0].url.clone();
    let module = wasm.to_str().unwrap();
    let put = |admin: &str, name: &str, sha: &str, path: &str| {
        python(PUT_MODULE, &[&node, TOKEN, admin, name, sha, path])
    };
    // The query token alone does not install anything.
    let said = put("", "upper", "", module);
    assert!(
        said.starts_with("refused:") && said.contains("needs the node's admin token"),
        "{said}"
    );
    let said = put("wrong", "upper", "", module);
    assert!(said.contains("needs the node's admin token"), "{said}");
    // Names are checked; bytes must hash to the declared SHA-256.
    let said = put(
        crate::cluster::ADMIN_TOKEN,
        "not an identifier; DROP",
        "",
        module,
    );
    assert!(said.contains("is not an identifier"), "{said}");
    let said = put(
        crate::cluster::ADMIN_TOKEN,
        "evil",
        &"00".repeat(32),
        module,
    );
    assert!(said.contains("not 0000"), "{said}");
    // Over the module cap: refused from the message's length prefix, before it is read.
    let said = put(crate::cluster::ADMIN_TOKEN, "big", "", "-");
    assert!(said.contains("message length too large"), "{said}");
    // A valid module sent under a built-in's name is stored by hash only: it names no
    // plugin, and `upper` stays DataFusion's.
    let said = put(crate::cluster::ADMIN_TOKEN, "upper", "", module);
    assert_eq!(said.trim(), "accepted");
    for d in &c.registries {
        let out = pushdown()
            .args(["plugin", "list", "--registry", d.path().to_str().unwrap()])
            .output()
            .unwrap();
        let listed = stdout_ok(out);
        assert!(!listed.contains("upper"), "{listed}");
    }
    let url = c.intermediary.url.clone();
    assert_eq!(
        stdout_ok(connect(&url, TOKEN, "SELECT upper('abc') AS u")),
        "u\r\nABC\r\n"
    );
    let sql =
        "SELECT l_returnflag, approx_distinct(l_orderkey) AS d FROM lineitem GROUP BY 1 ORDER BY 1";
    let local = pushdown()
        .args(["query", "--output", "csv", "--registry", r, "--data"])
        .arg(layout().join("all"))
        .arg(sql)
        .output()
        .unwrap();
    assert_eq!(stdout_ok(connect(&url, TOKEN, sql)), stdout_ok(local));
}

#[test]
fn a_node_keeps_received_modules_within_its_budget_and_gets_forgotten_ones_again() {
    let reg = tempfile::tempdir().unwrap();
    for name in ["approx_distinct", "avg_length"] {
        let out = pushdown()
            .args([
                "plugin",
                "register",
                example(name).to_str().unwrap(),
                "--registry",
            ])
            .arg(reg.path())
            .output()
            .unwrap();
        stdout_ok(out);
    }
    // A node that keeps only the module it received last.
    let node_registry = tempfile::tempdir().unwrap();
    let node = crate::cluster::start_node(
        &layout().join("all"),
        node_registry.path(),
        &["--received-modules-mib", "0"],
    );
    let intermediary = crate::cluster::start_intermediary(
        &[&node.url],
        &["--registry", reg.path().to_str().unwrap()],
    );
    let distinct =
        "SELECT l_returnflag, approx_distinct(l_orderkey) AS d FROM lineitem GROUP BY 1 ORDER BY 1";
    let length =
        "SELECT l_linestatus, avg_length(l_comment) AS a FROM lineitem GROUP BY 1 ORDER BY 1";
    let local = |sql: &str| {
        let out = pushdown()
            .args(["query", "--output", "csv", "--registry"])
            .arg(reg.path())
            .arg("--data")
            .arg(layout().join("all"))
            .arg(sql)
            .output()
            .unwrap();
        stdout_ok(out)
    };
    // approx_distinct is sent, then forgotten when avg_length arrives, then sent again.
    for sql in [distinct, length, distinct] {
        assert_eq!(
            stdout_ok(connect(&intermediary.url, TOKEN, sql)),
            local(sql)
        );
    }
    drop(intermediary);
    let log = node.stop();
    assert!(log.contains("forgot received module"), "{log}");
}

#[test]
fn tokens_are_never_empty_brute_force_is_throttled_and_exposure_needs_consent() {
    let data = layout().join("n1");
    let d = data.to_str().unwrap();
    // An empty token would turn checking off: refused.
    let out = pushdown()
        .args([
            "storage-node",
            "serve",
            "--data",
            d,
            "--listen",
            "127.0.0.1:0",
            "--token",
            "",
        ])
        .output()
        .unwrap();
    assert_error(&out, &["the token given is empty"]);
    let out = pushdown()
        .args([
            "storage-node",
            "serve",
            "--data",
            d,
            "--listen",
            "127.0.0.1:0",
        ])
        .env("PUSHDOWN_TOKEN", "")
        .output()
        .unwrap();
    assert_error(&out, &["$PUSHDOWN_TOKEN is empty"]);
    // Beyond loopback without a token and TLS: refused unless --insecure.
    let out = pushdown()
        .args([
            "storage-node",
            "serve",
            "--data",
            d,
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_error(
        &out,
        &["beyond loopback, without a token", "and TLS", "--insecure"],
    );
    // A token from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let node = Server::start(&[
        "storage-node",
        "serve",
        "--data",
        d,
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        file.to_str().unwrap(),
    ]);
    let intermediary = Server::start(&[
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        file.to_str().unwrap(),
        "--storage-node",
        &node.url,
    ]);
    let url = intermediary.url.clone();
    let good = stdout_ok(connect(&url, TOKEN, COUNTS));
    // Ten wrong tokens from one address, then even the right one waits out the window.
    for _ in 0..10 {
        assert_error(&connect(&url, "guess", COUNTS), &["a wrong bearer token"]);
    }
    assert_error(
        &connect(&url, TOKEN, COUNTS),
        &["too many calls with a missing or wrong token from this address"],
    );
    let log = intermediary.stop();
    let refusals = log.lines().filter(|l| l.contains("refused")).count();
    assert!(refusals <= 2, "refusals are aggregated in the log:\n{log}");
    assert!(good.contains("A,"), "{good}");
}

/// A CA, and a server and a client certificate it signs (for 127.0.0.1), made with the
/// openssl command line.
pub(crate) fn certificates(dir: &Path) {
    let script = r#"
set -e
cd "$1"
cat > ext.cnf <<'EOF'
subjectAltName = IP:127.0.0.1, DNS:localhost
EOF
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=pushdown test CA" 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj "/CN=$who" 2>/dev/null
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 2 -extfile ext.cnf 2>/dev/null
done
"#;
    let out = Command::new("bash")
        .args(["-c", script, "certificates"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_and_client_certificates_between_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let f = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let data = layout().join("all");
    let node = Server::start(&[
        "storage-node",
        "serve",
        "--data",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--admin-token-file",
        admin_token_file(),
        "--tls-cert",
        &f("server.pem"),
        "--tls-key",
        &f("server.key"),
        "--tls-client-ca",
        &f("ca.pem"),
    ]);
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let intermediary = Server::start(&[
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--tls-cert",
        &f("server.pem"),
        "--tls-key",
        &f("server.key"),
        "--node-tls-ca",
        &f("ca.pem"),
        "--storage-node",
        &node.url,
    ]);
    let url = intermediary.url.clone();
    assert!(url.starts_with("https://"), "{url}");
    let query = |extra: &[&str]| {
        pushdown()
            .args([
                "query",
                "--connect",
                &url,
                "--token",
                TOKEN,
                "--output",
                "csv",
            ])
            .args(extra)
            .arg(COUNTS)
            .output()
            .unwrap()
    };
    assert_eq!(
        stdout_ok(query(&["--tls-ca", &f("ca.pem")])),
        embedded(COUNTS)
    );
    // A client that does not trust the server's CA gives up during the handshake.
    let out = query(&[]);
    assert_eq!(out.status.code(), Some(1));
    // Plain HTTP/2 to a TLS port fails; so does a node that wants a client certificate.
    let plain = url.replace("https://", "http://");
    assert_eq!(connect(&plain, TOKEN, COUNTS).status.code(), Some(1));
    let no_cert = Server::start(&[
        "intermediary",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--token",
        TOKEN,
        "--node-tls-ca",
        &f("ca.pem"),
        "--storage-node",
        &node.url,
    ]);
    let out = connect(&no_cert.url, TOKEN, COUNTS);
    assert_error(&out, &["cannot list its tables"]);
    // The ADBC Flight SQL driver over TLS.
    let script = r#"
import sys, warnings
warnings.simplefilter("ignore")
import adbc_driver_flightsql.dbapi as flight_sql
uri, token, ca, sql = sys.argv[1:5]
kwargs = {"adbc.flight.sql.authorization_header": "Bearer " + token,
          "adbc.flight.sql.client_option.tls_root_certs": open(ca).read()}
with flight_sql.connect(uri, db_kwargs=kwargs) as conn:
    with conn.cursor() as cur:
        cur.execute(sql)
        t = cur.fetch_arrow_table()
print(t.num_rows, ",".join(t.column_names))
"#;
    let said = python(
        script,
        &[
            &url.replace("https://", "grpc+tls://"),
            TOKEN,
            &f("ca.pem"),
            COUNTS,
        ],
    );
    assert_eq!(said.trim(), "3 l_returnflag,n,qty,price");
}
