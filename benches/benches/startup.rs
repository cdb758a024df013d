//! Plugin start-up: compile the built-in module from its bytes, load the precompiled
//! artefact (a cache hit), instantiate a task's instance from the pre-linked template
//! with the pooling allocator and copy-on-write memory images.
//!
//! Run: `cargo bench -p pushdown-benches --bench startup`.

use criterion::{criterion_group, criterion_main, Criterion};
use pushdown_benches::TpchFixture;
use pushdown_storage_node::{BUILTIN_PLUGIN, BUILTIN_WASM};

fn benches(c: &mut Criterion) {
    let fixture = TpchFixture::new(0.01, 122_880);
    let node = TpchFixture::node(&fixture.parquet);
    let sandbox = node.sandbox();
    let mut group = c.benchmark_group("startup");
    group.sample_size(10);
    group.bench_function("compile_from_bytes", |b| {
        b.iter(|| {
            sandbox
                .compile_uncached(BUILTIN_PLUGIN, BUILTIN_WASM)
                .expect("compiles")
        })
    });
    let artefact = sandbox
        .compile_uncached(BUILTIN_PLUGIN, BUILTIN_WASM)
        .expect("compiles");
    group.bench_function("load_precompiled", |b| {
        b.iter(|| {
            sandbox
                .load_precompiled(BUILTIN_PLUGIN, &artefact)
                .expect("loads")
        })
    });
    group.sample_size(100);
    let module = node.builtin();
    group.bench_function("instantiate_pooled", |b| {
        b.iter(|| module.instantiate_once().expect("instantiates"))
    });
    group.finish();
}

criterion_group!(startup, benches);
criterion_main!(startup);
