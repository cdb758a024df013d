//! End to end in process: TPC-H Q1 and Q6 over lineitem (SF 0.1) as Parquet and CSV,
//! planned by DataFusion, pushed down into the Wasm sandbox, merged. Whole-process timings
//! beside DuckDB are `pushdown bench`'s job.
//!
//! Run: `cargo bench -p pushdown-benches --bench tpch`.

use criterion::{criterion_group, criterion_main, Criterion};
use pushdown_benches::harness::{Q1_SQL, Q6_SQL};
use pushdown_benches::TpchFixture;
use pushdown_intermediary::Engine;

fn benches(c: &mut Criterion) {
    let fixture = TpchFixture::new(0.1, 122_880);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for (format, dir) in [("parquet", &fixture.parquet), ("csv", &fixture.csv)] {
        let engine = Engine::embedded(dir, Default::default(), None).expect("engine");
        let mut group = c.benchmark_group(format!("tpch_sf0.1/{format}"));
        group.sample_size(10);
        for (name, sql) in [("q1", Q1_SQL), ("q6", Q6_SQL)] {
            group.bench_function(name, |b| {
                b.iter(|| runtime.block_on(engine.sql(sql)).expect("runs"))
            });
        }
        group.finish();
    }
}

criterion_group!(tpch, benches);
criterion_main!(tpch);
