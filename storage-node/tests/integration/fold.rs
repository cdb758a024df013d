//! Checkpointed aggregates on one node: tasks folded into a job, the node dropped and
//! opened again over the same checkpoint folder (a restart), the job resumed from its
//! checkpoint without running the folded tasks again, and the drained states equal to a
//! direct computation. A file written since, a torn checkpoint, another run's lease and a
//! finish that does not match what was folded are handled as `pushdown_storage_node::fold`
//! says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow_array::{Array, Int64Array};
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{
    fold_job_id, AggregateFunction, Expr, FileFormat, FoldRef, PartialAggregate, Pushdown, Task,
};
use pushdown_storage_node::fold::FoldOptions;
use pushdown_storage_node::{NodeOptions, SandboxConfig, StorageNode};

/// `a,b` with a = 0..3000 and b = (a + shift) % 5.
fn write_table(path: &Path, shift: i64) {
    let mut csv = String::from("a,b\n");
    for i in 0..3000 {
        csv.push_str(&format!("{i},{}\n", (i + shift) % 5));
    }
    std::fs::write(path, csv).unwrap();
}

fn open(data: &Path, checkpoints: &Path) -> StorageNode {
    let options = NodeOptions {
        csv_chunk_size: 2048,
        sandbox: SandboxConfig {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache")),
            ..Default::default()
        },
        fold: FoldOptions {
            checkpoint_dir: Some(checkpoints.to_path_buf()),
            checkpoint_every: std::time::Duration::ZERO,
            ..Default::default()
        },
        ..Default::default()
    };
    StorageNode::open(data, options).unwrap()
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("b", DataType::Int64, true),
        Field::new("n", DataType::Int64, true),
        Field::new("s", DataType::Int64, true),
    ])
}

/// `SELECT b, count(a), sum(a) FROM t GROUP BY b`, one task per chunk, folded into one job
/// under `lease`.
fn tasks(node: &StorageNode, lease: u64) -> Vec<Task> {
    let table = node.table("t").unwrap().unwrap();
    let file = &table.files[0];
    let mut tasks: Vec<Task> = file
        .units
        .iter()
        .map(|unit| Task {
            file: file.path.clone(),
            format: FileFormat::Csv,
            unit: unit.clone(),
            predicate: None,
            pushdown: Pushdown::PartialAggregate {
                group_by: vec![("b".into(), Expr::Column("b".into()))],
                aggregates: vec![
                    (
                        "n".into(),
                        PartialAggregate {
                            function: AggregateFunction::Count,
                            argument: Expr::Column("a".into()),
                            state_type: DataType::Int64,
                        },
                    ),
                    (
                        "s".into(),
                        PartialAggregate {
                            function: AggregateFunction::Sum,
                            argument: Expr::Column("a".into()),
                            state_type: DataType::Int64,
                        },
                    ),
                ],
            },
            output_schema: schema(),
            limit: None,
            fold: None,
        })
        .collect();
    let job = fold_job_id(&tasks);
    for t in &mut tasks {
        t.fold = Some(FoldRef {
            job: job.clone(),
            lease,
        });
    }
    tasks
}

/// b -> (count, sum) of the drained batches.
fn groups(batches: &[arrow_array::RecordBatch]) -> BTreeMap<i64, (i64, i64)> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let col = |i: usize| {
            batch
                .column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let (b, n, s) = (col(0), col(1), col(2));
        for i in 0..batch.num_rows() {
            assert!(b.is_valid(i));
            let entry = out.entry(b.value(i)).or_insert((0, 0));
            entry.0 += n.value(i);
            entry.1 += s.value(i);
        }
    }
    out
}

fn expected(shift: i64) -> BTreeMap<i64, (i64, i64)> {
    let mut out = BTreeMap::new();
    for a in 0..3000i64 {
        let e = out.entry((a + shift) % 5).or_insert((0, 0));
        e.0 += 1;
        e.1 += a;
    }
    out
}

fn hashes(tasks: &[Task]) -> BTreeSet<String> {
    tasks.iter().map(Task::content_hash).collect()
}

fn checkpoints_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ckpt"))
        .count()
}

#[test]
fn a_restarted_node_resumes_its_fold_from_the_checkpoint_and_drains_exact_states() {
    let data = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    write_table(&data.path().join("t.csv"), 0);
    let node = open(data.path(), checkpoints.path());
    let first = tasks(&node, 1);
    assert!(first.len() >= 6, "{} chunks", first.len());
    let half = first.len() / 2;
    for t in &first[..half] {
        let out = node.run_task(t).unwrap();
        assert!(
            out.metrics.folded && out.batches.is_empty(),
            "{:?}",
            out.metrics
        );
        assert!(!out.metrics.from_checkpoint);
        assert!(out.metrics.rows_in > 0);
    }
    assert_eq!(
        node.fold_stats()
            .tasks_folded
            .load(std::sync::atomic::Ordering::Relaxed),
        half as u64
    );
    node.flush_checkpoints();
    assert_eq!(checkpoints_in(checkpoints.path()), 1);
    // A restart: the node's memory is gone, its checkpoint folder is not.
    drop(node);
    let node = open(data.path(), checkpoints.path());
    let second = tasks(&node, 2);
    assert_eq!(hashes(&first), hashes(&second));
    let job = second[0].fold.clone().unwrap().job;
    for (i, t) in second.iter().enumerate() {
        let out = node.run_task(t).unwrap();
        assert!(out.metrics.folded, "task {i}: {:?}", out.metrics);
        assert_eq!(out.metrics.from_checkpoint, i < half, "task {i}");
        assert_eq!(
            out.metrics.rows_in == 0,
            i < half,
            "task {i}: only new tasks run"
        );
    }
    let drained = node
        .finish_fold(&job, 2, &hashes(&second), &schema())
        .unwrap();
    assert_eq!(groups(&drained.batches), expected(0));
    assert_eq!(
        checkpoints_in(checkpoints.path()),
        0,
        "a drained job leaves no checkpoint"
    );
}

#[test]
fn a_checkpoint_of_a_file_written_since_or_a_torn_one_is_discarded() {
    let data = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let path = data.path().join("t.csv");
    write_table(&path, 0);
    let node = open(data.path(), checkpoints.path());
    let first = tasks(&node, 1);
    for t in &first[..2] {
        node.run_task(t).unwrap();
    }
    drop(node);
    // The same size and chunks, other values: the tasks are the same, the data is not.
    write_table(&path, 2);
    let node = open(data.path(), checkpoints.path());
    let second = tasks(&node, 2);
    for t in &second {
        let out = node.run_task(t).unwrap();
        assert!(out.metrics.folded && !out.metrics.from_checkpoint);
    }
    let job = second[0].fold.clone().unwrap().job;
    let drained = node
        .finish_fold(&job, 2, &hashes(&second), &schema())
        .unwrap();
    assert_eq!(groups(&drained.batches), expected(2));
    drop(node);

    // A torn checkpoint (its last bytes cut) is not resumed.
    let node = open(data.path(), checkpoints.path());
    let third = tasks(&node, 3);
    for t in &third[..2] {
        node.run_task(t).unwrap();
    }
    drop(node);
    let file = std::fs::read_dir(checkpoints.path())
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ckpt"))
        .unwrap()
        .path();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let node = open(data.path(), checkpoints.path());
    let fourth = tasks(&node, 4);
    let out = node.run_task(&fourth[0]).unwrap();
    assert!(
        out.metrics.folded && !out.metrics.from_checkpoint,
        "{:?}",
        out.metrics
    );
}

#[test]
fn another_run_does_not_fold_into_an_active_job_and_a_mismatched_finish_fails() {
    let data = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    write_table(&data.path().join("t.csv"), 0);
    let node = open(data.path(), checkpoints.path());
    let mine = tasks(&node, 7);
    let theirs = tasks(&node, 8);
    assert!(node.run_task(&mine[0]).unwrap().metrics.folded);
    // The job is run 7's: run 8's task runs as usual and returns its partial aggregate.
    let out = node.run_task(&theirs[1]).unwrap();
    assert!(!out.metrics.folded);
    assert!(!out.batches.is_empty());
    // Run 7 saw one task folded; claiming two is refused, and so is run 8's finish.
    let job = mine[0].fold.clone().unwrap().job;
    let err = node
        .finish_fold(&job, 8, &hashes(&mine[..1]), &schema())
        .unwrap_err();
    assert!(err.to_string().contains("another run"), "{err}");
    let err = node
        .finish_fold(&job, 7, &hashes(&mine[..2]), &schema())
        .unwrap_err();
    assert!(err.to_string().contains("run the query again"), "{err}");
    // A job id that is not one is refused before anything touches the folder.
    let mut bad = mine[0].clone();
    bad.fold = Some(FoldRef {
        job: "../../etc/passwd".into(),
        lease: 7,
    });
    assert!(node.run_task(&bad).is_err());
}
