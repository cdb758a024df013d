//! Native-vs-Wasm audits: with `audit_rate` 1 every task runs again with the native build
//! of the pipeline and the two results agree; a deliberately different native build (one
//! that adds 1 to the first value) is reported as a mismatch, while the task keeps the
//! sandbox's (right) answer.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::{CmpOp, Expr, FileFormat, Literal, Pushdown, Task};
use pushdown_storage_node::audit::AuditPipeline;
use pushdown_storage_node::{NodeOptions, SandboxConfig, StorageNode, TaskOutput};

fn node(dir: &Path, pipeline: Option<AuditPipeline>) -> StorageNode {
    let options = NodeOptions {
        audit_rate: 1.0,
        audit_pipeline: pipeline,
        csv_chunk_size: 4096,
        sandbox: SandboxConfig {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache")),
            ..Default::default()
        },
        ..Default::default()
    };
    StorageNode::open(dir, options).unwrap()
}

/// `SELECT a, x FROM t WHERE b = 3`, task by task.
fn run_all(node: &StorageNode) -> Vec<TaskOutput> {
    let table = node.table("t").unwrap().unwrap();
    let file = &table.files[0];
    file.units
        .iter()
        .map(|unit| {
            let task = Task {
                file: file.path.clone(),
                format: FileFormat::Csv,
                unit: unit.clone(),
                predicate: Some(Expr::Cmp(
                    CmpOp::Eq,
                    Box::new(Expr::Column("b".into())),
                    Box::new(Expr::Literal(Literal::Int(3, DataType::Int64))),
                )),
                pushdown: Pushdown::Project(vec![
                    ("a".into(), Expr::Column("a".into())),
                    ("x".into(), Expr::Column("x".into())),
                ]),
                output_schema: Schema::new(vec![
                    Field::new("a", DataType::Int64, true),
                    Field::new("x", DataType::Float64, true),
                ]),
                limit: None,
                fold: None,
            };
            node.run_task(&task).expect("the task succeeds")
        })
        .collect()
}

fn sum_a(outputs: &[TaskOutput]) -> i64 {
    outputs
        .iter()
        .flat_map(|o| &o.batches)
        .map(|b| {
            let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            a.iter().flatten().sum::<i64>()
        })
        .sum()
}

/// The real native pipeline, then the first value of column 0 plus one: a native build
/// with an off-by-one bug.
fn off_by_one(request: &[u8], input: Vec<u8>) -> Result<Vec<u8>, String> {
    let out = pushdown_plugins_builtin::run_task(request, input)?;
    let (header, ipc) = out.split_at(16);
    let reader = StreamReader::try_new(Cursor::new(ipc), None).unwrap();
    let schema = reader.schema();
    let mut batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    if let Some(first) = batches.iter_mut().find(|b| b.num_rows() > 0) {
        let a = first
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let mut values: Vec<Option<i64>> = a.iter().collect();
        values[0] = values[0].map(|v| v + 1);
        let mut columns = first.columns().to_vec();
        columns[0] = Arc::new(Int64Array::from(values));
        *first = RecordBatch::try_new(schema.clone(), columns).unwrap();
    }
    let mut bytes = header.to_vec();
    let mut writer = StreamWriter::try_new(&mut bytes, &schema).unwrap();
    for b in &batches {
        writer.write(b).unwrap();
    }
    writer.finish().unwrap();
    drop(writer);
    Ok(bytes)
}

#[test]
fn every_task_audited_agrees_and_a_different_native_build_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b,x\n");
    for i in 0..5000 {
        csv.push_str(&format!("{i},{},{}\n", i % 7, i as f64 * 0.1));
    }
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();
    let expected: i64 = (0..5000).filter(|i| i % 7 == 3).sum();

    let honest = node(dir.path(), None);
    let outputs = run_all(&honest);
    assert!(outputs.len() > 3, "several chunks: {}", outputs.len());
    assert_eq!(sum_a(&outputs), expected);
    assert!(outputs
        .iter()
        .all(|o| o.metrics.audited && !o.metrics.audit_mismatch));
    let stats = honest.audit_stats().unwrap();
    assert_eq!((stats.audited, stats.mismatches), (outputs.len() as u64, 0));
    let x: f64 = outputs
        .iter()
        .flat_map(|o| &o.batches)
        .map(|b| {
            let x = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
            assert_eq!(x.null_count(), 0);
            x.values().iter().sum::<f64>()
        })
        .sum();
    assert!(x > 0.0);

    let tampered = node(dir.path(), Some(AuditPipeline(Arc::new(off_by_one))));
    let outputs = run_all(&tampered);
    // The sandbox's answer stands; every audited task with a row is a mismatch.
    assert_eq!(sum_a(&outputs), expected);
    let with_rows = outputs.iter().filter(|o| o.metrics.rows_out > 0).count() as u64;
    assert!(with_rows > 0);
    let stats = tampered.audit_stats().unwrap();
    assert_eq!(
        (stats.audited, stats.mismatches),
        (outputs.len() as u64, with_rows)
    );
    assert!(outputs
        .iter()
        .all(|o| o.metrics.audit_mismatch == (o.metrics.rows_out > 0)));
}

#[test]
fn a_rate_audits_that_fraction_of_tasks() {
    let auditor = pushdown_storage_node::audit::Auditor::new(
        0.25,
        pushdown_storage_node::audit::native_pipeline(),
    );
    let picked = (0..100).filter(|_| auditor.sample()).count();
    assert_eq!(picked, 25);
    assert!(pushdown_storage_node::audit::parse_rate("1.5").is_err());
    assert!(pushdown_storage_node::audit::parse_rate("x").is_err());
    assert_eq!(pushdown_storage_node::audit::parse_rate("0.1"), Ok(0.1));
}
