//! The built-in pipeline on one task, native vs Wasm side by side: the same plugin code,
//! compiled natively and run in a wasmtime instance by the storage node.
//!
//! Run: `cargo bench -p pushdown-benches --bench pipeline` (reports in target/criterion).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pushdown_benches::{q1_task, q6_task, TpchFixture};
use pushdown_protocol::{FileFormat, Task, TaskUnit};
use pushdown_storage_node::StorageNode;

fn native_vs_wasm(c: &mut Criterion, group_name: &str, node: &StorageNode, task: &Task) {
    let (request, input) = node.guest_input(task).expect("plans").expect("not pruned");
    let mut group = c.benchmark_group(group_name);
    group.sample_size(10);
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function(BenchmarkId::new("native", ""), |b| {
        b.iter(|| pushdown_plugins_builtin::run_task(&request, input.clone()).expect("runs"))
    });
    group.bench_function(BenchmarkId::new("wasm", ""), |b| {
        b.iter(|| node.run_task(task).expect("runs"))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let fixture = TpchFixture::new(0.1, 122_880);
    let parquet = TpchFixture::node(&fixture.parquet);
    native_vs_wasm(
        c,
        "q6_row_group_parquet",
        &parquet,
        &q6_task(
            "lineitem.parquet",
            TaskUnit::RowGroup(0),
            FileFormat::Parquet,
        ),
    );
    native_vs_wasm(
        c,
        "q1_row_group_parquet",
        &parquet,
        &q1_task("lineitem.parquet", 0),
    );
    let csv = TpchFixture::node(&fixture.csv);
    let table = csv.table("lineitem").unwrap().unwrap();
    let unit = table.files[0].units[0].clone();
    native_vs_wasm(
        c,
        "q6_chunk_csv",
        &csv,
        &q6_task("lineitem.csv", unit, FileFormat::Csv),
    );
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
