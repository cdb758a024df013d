//! Every stage of the built-in pipeline, native vs Wasm side by side in one group: the same
//! plugin code, compiled for the host and for `wasm32-wasip1`, on the same row group or
//! CSV chunk of TPC-H lineitem (SF 0.1). Then whole tasks, native vs Wasm.
//!
//! A stage's time is `(call with repeat = n) − (call with repeat = 0)`, divided by `n` by
//! criterion (see `pushdown_benches::harness`).
//!
//! Run: `cargo bench -p pushdown-benches --bench stages` (reports in target/criterion).

use criterion::{criterion_group, criterion_main, Criterion};
use pushdown_benches::harness::{Mode, Nodes};
use pushdown_benches::TpchFixture;

fn benches(c: &mut Criterion) {
    let fixture = TpchFixture::new(0.1, 122_880);
    let nodes = Nodes::open(fixture.dir()).expect("nodes open");
    for case in nodes.stage_cases().expect("cases") {
        let mut group = c.benchmark_group(format!("stage/{}", case.id));
        group.sample_size(20);
        for mode in [Mode::Native, Mode::Wasm] {
            let baseline = case.baseline(mode).expect("runs");
            group.bench_function(mode.name(), |b| {
                b.iter_custom(|iters| {
                    let t = case.time(mode, iters as u32).expect("runs");
                    t.saturating_sub(baseline)
                })
            });
        }
        group.finish();
    }
    for case in nodes.task_cases().expect("cases") {
        let mut group = c.benchmark_group(format!("task/{}", case.id));
        group.sample_size(10);
        for mode in [Mode::Native, Mode::Wasm] {
            group.bench_function(mode.name(), |b| b.iter(|| case.call(mode).expect("runs")));
        }
        group.finish();
    }
}

criterion_group!(stages, benches);
criterion_main!(stages);
