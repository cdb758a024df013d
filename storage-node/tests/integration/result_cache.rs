//! The node's result cache: a task run again is answered from memory, with the same
//! batches and without reading storage; another task, or the same task over a file
//! written since, runs the pipeline again.

use std::path::Path;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{CmpOp, Expr, FileFormat, Literal, Pushdown, Task};
use pushdown_storage_node::{NodeOptions, SandboxConfig, StorageNode, TaskOutput};

/// `a,b` with a = 0..1000 and b = (a + shift) % 7: the same size for every shift.
fn write_table(path: &Path, shift: i64) {
    let mut csv = String::from("a,b\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i},{}\n", (i + shift) % 7));
    }
    std::fs::write(path, csv).unwrap();
}

/// `SELECT a FROM t WHERE b = {b}` over the file's one chunk.
fn run(node: &StorageNode, b: i64) -> (i64, TaskOutput) {
    let table = node.table("t").unwrap().unwrap();
    let file = &table.files[0];
    let task = Task {
        file: file.path.clone(),
        format: FileFormat::Csv,
        unit: file.units[0].clone(),
        predicate: Some(Expr::Cmp(
            CmpOp::Eq,
            Box::new(Expr::Column("b".into())),
            Box::new(Expr::Literal(Literal::Int(b, DataType::Int64))),
        )),
        pushdown: Pushdown::Project(vec![("a".into(), Expr::Column("a".into()))]),
        output_schema: Schema::new(vec![Field::new("a", DataType::Int64, true)]),
        limit: None,
        fold: None,
    };
    let out = node.run_task(&task).expect("the task succeeds");
    let sum = out
        .batches
        .iter()
        .map(|b: &RecordBatch| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            a.iter().flatten().sum::<i64>()
        })
        .sum();
    (sum, out)
}

fn expected(b: i64, shift: i64) -> i64 {
    (0..1000).filter(|i| (i + shift) % 7 == b).sum()
}

#[test]
fn a_repeated_task_is_answered_from_the_cache_and_a_written_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.csv");
    write_table(&path, 0);
    let sandbox = SandboxConfig {
        cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache")),
        ..Default::default()
    };
    let options = NodeOptions {
        result_cache_bytes: 1 << 20,
        sandbox: sandbox.clone(),
        ..Default::default()
    };
    let node = StorageNode::open(dir.path(), options).unwrap();

    let (sum, first) = run(&node, 3);
    assert_eq!(sum, expected(3, 0));
    assert!(!first.metrics.cached && first.metrics.bytes_read > 0);
    let (again, second) = run(&node, 3);
    assert_eq!(again, sum);
    assert!(second.metrics.cached, "{:?}", second.metrics);
    assert_eq!(second.metrics.bytes_read, 0);
    assert_eq!(second.batches, first.batches);
    assert_eq!(second.metrics.rows_in, first.metrics.rows_in);
    // Another predicate is another task.
    let (other, third) = run(&node, 4);
    assert_eq!(other, expected(4, 0));
    assert!(!third.metrics.cached);
    let stats = node.result_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses, stats.entries), (1, 2, 2));

    // The file is written again, same size, other values: never the old answer.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_table(&path, 1);
    let (changed, fourth) = run(&node, 3);
    assert!(!fourth.metrics.cached);
    assert_eq!(changed, expected(3, 1));
    assert_ne!(changed, sum);
    let (_, fifth) = run(&node, 3);
    assert!(fifth.metrics.cached);

    // Without a budget there is no cache.
    let options = NodeOptions {
        sandbox,
        ..Default::default()
    };
    let node = StorageNode::open(dir.path(), options).unwrap();
    assert!(node.result_cache_stats().is_none());
    let (_, out) = run(&node, 3);
    let (_, out2) = run(&node, 3);
    assert!(!out.metrics.cached && !out2.metrics.cached);
}
