//! User plugins, native vs Wasm, on identical code and bytes: the example plugins build as
//! an rlib (called here through the SDK's byte-level entry points) and as a Wasm module
//! (built with `pushdown plugin build`'s code and called through the sandbox), over the
//! same Arrow IPC input of 65 536 rows.
//!
//! Run: `cargo bench -p pushdown-benches --bench plugins`.

use std::path::Path;
use std::sync::Arc;

use approx_distinct::ApproxDistinct;
use criterion::{criterion_group, criterion_main, Criterion};
use haversine_km::HaversineKm;
use pushdown_plugin::array::{ArrayRef, Float64Array, Int64Array, UInt32Array};
use pushdown_plugin::testing::{encode_input, raw};
use pushdown_protocol::plugin::{EXPORT_SCALAR, EXPORT_UPDATE};
use pushdown_storage_node::registry::build_crate;
use pushdown_storage_node::{Sandbox, SandboxConfig};

const ROWS: usize = 65_536;

/// A deterministic stream in [0, 1).
fn uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn benches(c: &mut Criterion) {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pushdown-plugins/examples");
    let sandbox = Sandbox::new(SandboxConfig::default()).expect("engine");
    let load = |name: &str| {
        let wasm = build_crate(&examples.join(name)).expect("builds for wasm32-wasip1");
        let bytes = std::fs::read(wasm).expect("readable");
        sandbox.load_plugin(name, &bytes).expect("loads").0
    };

    let mut next = uniform(7);
    let mut column = |scale: f64, offset: f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(
            (0..ROWS).map(|_| offset + scale * next()),
        ))
    };
    let points = vec![
        column(180.0, -90.0),
        column(360.0, -180.0),
        column(180.0, -90.0),
        column(360.0, -180.0),
    ];
    let input = encode_input(points, None).expect("encodes");
    let wasm = load("haversine_km");
    let mut group = c.benchmark_group("plugin/haversine_km");
    group.bench_function("native", |b| {
        b.iter(|| raw::scalar::<HaversineKm>(&input).expect("runs"))
    });
    group.bench_function("wasm", |b| {
        b.iter(|| wasm.invoke(EXPORT_SCALAR, &input, None).expect("runs"))
    });
    group.finish();

    let keys: ArrayRef = Arc::new(Int64Array::from_iter_values(
        (0..ROWS as i64).map(|i| (i * 7919) % 150_000),
    ));
    let groups: ArrayRef = Arc::new(UInt32Array::from(vec![0u32; ROWS]));
    let input = encode_input(vec![groups, keys], Some(1)).expect("encodes");
    let wasm = load("approx_distinct");
    let mut group = c.benchmark_group("plugin/approx_distinct_update");
    group.bench_function("native", |b| {
        b.iter(|| raw::update::<ApproxDistinct>(&input).expect("runs"))
    });
    group.bench_function("wasm", |b| {
        b.iter(|| wasm.invoke(EXPORT_UPDATE, &input, None).expect("runs"))
    });
    group.finish();
}

criterion_group!(plugin_benches, benches);
criterion_main!(plugin_benches);
