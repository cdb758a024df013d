//! The hostile plugin suite (`tests/hostile/*.wat`): each module is loaded or called in the
//! node's own sandbox, must fail with the expected message, and a normal task run right
//! after it must give the right answer.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{CmpOp, Expr, FileFormat, Literal, Pushdown, Task};
use pushdown_storage_node::{decode_result, NodeOptions, SandboxConfig, StorageNode};

fn wat(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/hostile")
            .join(name),
    )
    .unwrap()
}

/// The tests of this file run one at a time: the memory test reads the process's RSS,
/// which a memory bomb in a parallel test would inflate.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A node over a small CSV table `t(a, b)` with tight limits.
fn node() -> (
    std::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    StorageNode,
) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i},{}\n", i % 7));
    }
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();
    let sandbox = SandboxConfig {
        deadline: Duration::from_millis(500),
        max_memory_bytes: 256 << 20,
        max_stdio_bytes: 64 << 10,
        cache_dir: Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache")),
        ..Default::default()
    };
    let node = StorageNode::open(
        dir.path(),
        NodeOptions {
            sandbox,
            ..Default::default()
        },
    )
    .unwrap();
    (guard, dir, node)
}

/// `SELECT a FROM t WHERE b = 3` as one task over the whole file; returns sum(a).
fn normal_task(node: &StorageNode) -> i64 {
    let out = node
        .run_task(&normal_request(node))
        .expect("a normal task succeeds");
    out.batches
        .iter()
        .map(|b: &RecordBatch| {
            b.column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .iter()
                .flatten()
                .sum::<i64>()
        })
        .sum()
}

/// The task of [`normal_task`].
fn normal_request(node: &StorageNode) -> Task {
    let table = node.table("t").unwrap().unwrap();
    let file = &table.files[0];
    Task {
        file: file.path.clone(),
        format: FileFormat::Csv,
        unit: file.units[0].clone(),
        predicate: Some(Expr::Cmp(
            CmpOp::Eq,
            Box::new(Expr::Column("b".into())),
            Box::new(Expr::Literal(Literal::Int(3, DataType::Int64))),
        )),
        pushdown: Pushdown::Project(vec![("a".into(), Expr::Column("a".into()))]),
        output_schema: Schema::new(vec![Field::new("a", DataType::Int64, true)]),
        limit: None,
        fold: None,
    }
}

fn expected_sum() -> i64 {
    (0..1000).filter(|i| i % 7 == 3).sum()
}

/// Loads `module` and calls it once; returns the error message.
fn call_err(node: &StorageNode, name: &str, module: &[u8]) -> String {
    let plugin = node
        .sandbox()
        .load(name, module)
        .unwrap_or_else(|e| panic!("{name} loads: {e}"));
    let started = Instant::now();
    let err = plugin.call(b"{}", 64, |slot| {
        slot.fill(0);
        Ok(())
    });
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{name} was not stopped in time"
    );
    err.expect_err("a hostile call fails").to_string()
}

fn assert_contains(message: &str, needles: &[&str]) {
    for n in needles {
        assert!(message.contains(n), "{n:?} not in {message:?}");
    }
}

#[test]
fn each_hostile_module_is_contained_and_the_node_keeps_serving() {
    let (_serial, _dir, node) = node();
    assert_eq!(normal_task(&node), expected_sum());
    let cases: &[(&str, &[&str])] = &[
        ("endless_loop.wat", &["plugin endless_loop.wat: trapped: deadline of 500ms exceeded"]),
        ("memory_bomb.wat", &["plugin memory_bomb.wat: trapped: linear memory cap of 256 MiB reached"]),
        ("deep_recursion.wat", &["plugin deep_recursion.wat: trapped: stack overflow"]),
        ("open_etc_passwd.wat", &["plugin open_etc_passwd.wat: path_open denied"]),
        ("stdout_flood.wat", &["plugin stdout_flood.wat: trapped", "its stdout exceeded the 64 KiB cap and was cut"]),
        ("bad_pointer.wat", &["plugin bad_pointer.wat: returned bytes 4294901760..4294901860 outside its linear memory"]),
        ("bad_length.wat", &["plugin bad_length.wat: returned bytes 0..268435456 outside its linear memory"]),
        ("panics.wat", &["plugin panics.wat: trapped", "unreachable", "panicked at plugin.rs:7:5: index out of bounds"]),
    ];
    for (file, needles) in cases {
        let message = call_err(&node, file, &wat(file));
        assert!(!message.contains("OPENED"), "{file}: {message}");
        assert_contains(&message, needles);
        // The node is unharmed: the next normal task gives the right answer.
        assert_eq!(normal_task(&node), expected_sum(), "after {file}");
    }
}

#[test]
fn malformed_arrow_and_wrong_schema_are_refused_by_the_host() {
    let (_serial, _dir, node) = node();
    // A valid IPC stream of the wrong schema, served from a data segment.
    let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::StringArray::from(vec!["x"]))],
    )
    .unwrap();
    let mut ipc = vec![0u8; 17];
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &schema).unwrap();
    w.write(&batch).unwrap();
    ipc.extend(w.into_inner().unwrap());
    let escaped: String = ipc.iter().map(|b| format!("\\{b:02x}")).collect();
    let module = format!(
        r#"(module
  (memory (export "memory") 2)
  (func (export "pushdown_abi_version") (result i32) i32.const 1)
  (func (export "pushdown_alloc") (param i32) (result i32) i32.const 65536)
  (data (i32.const 1024) "{escaped}")
  (func (export "pushdown_run") (param i32 i32 i32 i32) (result i64) i64.const {}))"#,
        (1024u64 << 32) | ipc.len() as u64
    );
    let expected = Schema::new(vec![Field::new(
        "revenue",
        DataType::Decimal128(38, 4),
        true,
    )]);
    let plugin = node
        .sandbox()
        .load("wrong_schema", module.as_bytes())
        .unwrap();
    let out = plugin.call(b"{}", 1, |_| Ok(())).unwrap();
    let err = decode_result("wrong_schema", &out.payload, &expected)
        .unwrap_err()
        .to_string();
    assert_contains(&err, &["plugin wrong_schema: returned schema", "expected"]);
    let plugin = node
        .sandbox()
        .load("malformed_arrow", &wat("malformed_arrow.wat"))
        .unwrap();
    let out = plugin.call(b"{}", 1, |_| Ok(())).unwrap();
    let err = decode_result("malformed_arrow", &out.payload, &expected)
        .unwrap_err()
        .to_string();
    assert_contains(
        &err,
        &["plugin malformed_arrow: returned malformed Arrow IPC"],
    );
    let err = decode_result("short", &[0u8; 7], &expected)
        .unwrap_err()
        .to_string();
    assert_contains(
        &err,
        &["plugin short: returned a result shorter than its 16-byte header"],
    );
    assert_eq!(normal_task(&node), expected_sum());
}

#[test]
fn modules_that_break_the_abi_are_refused_at_load() {
    let (_serial, _dir, node) = node();
    let load_err = |name: &str, bytes: &[u8]| {
        node.sandbox()
            .load(name, bytes)
            .err()
            .expect("refused")
            .to_string()
    };
    assert_contains(
        &load_err("v2", &wat("abi_version_2.wat")),
        &["plugin v2: exports ABI version 2; this host speaks version 1"],
    );
    assert_contains(
        &load_err("norun", &wat("missing_run.wat")),
        &["plugin norun: does not export pushdown_run"],
    );
    assert_contains(
        &load_err("sock", &wat("imports_socket.wat")),
        &["plugin sock: cannot be linked", "env"],
    );
    assert_contains(
        &load_err("junk", b"\0asm\x01\0\0\0garbage"),
        &["plugin junk: is not a valid WebAssembly module"],
    );
    let huge = vec![0u8; 300 << 20];
    assert_contains(
        &load_err("huge", &huge),
        &["plugin huge: the module is 300 MiB, over the cap of 64 MiB"],
    );
    assert_eq!(normal_task(&node), expected_sum());
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

#[test]
fn hostile_calls_interleaved_with_normal_tasks() {
    let (_serial, _dir, node) = node();
    let modules: Vec<(&str, Vec<u8>)> = [
        "memory_bomb.wat",
        "deep_recursion.wat",
        "panics.wat",
        "bad_pointer.wat",
        "stdout_flood.wat",
    ]
    .iter()
    .map(|f| (*f, wat(f)))
    .collect();
    let plugins: Vec<_> = modules
        .iter()
        .map(|(n, b)| node.sandbox().load(n, b).unwrap())
        .collect();
    // Warm up, then take the baseline.
    for _ in 0..3 {
        assert_eq!(normal_task(&node), expected_sum());
        for p in &plugins {
            let _ = p.call(b"{}", 8, |_| Ok(()));
        }
    }
    let baseline = rss_bytes();
    for round in 0..20 {
        for p in &plugins {
            assert!(p.call(b"{}", 8, |_| Ok(())).is_err());
            assert_eq!(
                normal_task(&node),
                expected_sum(),
                "round {round} after {}",
                p.name()
            );
        }
    }
    let after = rss_bytes();
    assert!(
        after < baseline + (64 << 20),
        "node memory grew from {baseline} to {after} bytes"
    );
}

#[test]
fn plugins_see_a_frozen_clock_and_a_fixed_random_stream() {
    let (_serial, _dir, node) = node();
    let plugin = node
        .sandbox()
        .load("clock_and_random", &wat("clock_and_random.wat"))
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let out = plugin.call(b"{}", 1, |_| Ok(())).unwrap();
        assert_eq!(&out.payload[..8], &[0u8; 8], "wall clock is 0");
        seen.push(out.payload[8..24].to_vec());
    }
    // Every instance gets the same bytes, drawn from the host's fixed stream.
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    assert!(
        seen[0]
            .iter()
            .all(|b| pushdown_storage_node::RANDOM_STREAM.contains(b)),
        "{seen:?}"
    );
}

/// The built-in module runs without epoch checks and checks its deadline between record
/// batches (`pushdown.check_deadline`): a deadline that has passed by its first batch
/// fails the task with the epoch trap's message; the node then runs tasks as before.
#[test]
fn the_builtin_module_stops_at_its_deadline() {
    let (_serial, dir, node) = node();
    let expired = StorageNode::open(
        dir.path(),
        NodeOptions {
            sandbox: SandboxConfig {
                deadline: Duration::from_nanos(1),
                ..node.sandbox().config().clone()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let err = expired
        .run_task(&normal_request(&expired))
        .err()
        .expect("a task past its deadline fails")
        .to_string();
    assert_contains(
        &err,
        &["plugin pushdown-builtin: trapped: deadline of 1ns exceeded"],
    );
    assert_eq!(normal_task(&node), expected_sum());
}

#[test]
fn limits_can_be_set_per_plugin() {
    let (_serial, _dir, node) = node();
    let strict = SandboxConfig {
        deadline: Duration::from_millis(100),
        max_memory_bytes: 64 << 20,
        ..Default::default()
    };
    let spin = node
        .sandbox()
        .load("spin", &wat("endless_loop.wat"))
        .unwrap()
        .with_limits(strict.clone());
    let err = spin.call(b"{}", 1, |_| Ok(())).unwrap_err().to_string();
    assert_contains(&err, &["plugin spin: trapped: deadline of 100ms exceeded"]);
    let bomb = node
        .sandbox()
        .load("bomb", &wat("memory_bomb.wat"))
        .unwrap()
        .with_limits(strict);
    let err = bomb.call(b"{}", 1, |_| Ok(())).unwrap_err().to_string();
    assert_contains(
        &err,
        &["plugin bomb: trapped: linear memory cap of 64 MiB reached"],
    );
    assert_eq!(normal_task(&node), expected_sum());
}
