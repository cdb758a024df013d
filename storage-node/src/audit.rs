//! Native-vs-Wasm audits (`--audit-rate R`): a storage node runs a sample of its tasks a
//! second time with the native build of the same pipeline (the `pushdown-plugins-builtin`
//! crate compiled for the host, [`pushdown_plugins_builtin::run_task`]) over the same
//! request and input bytes, and compares the two results: row counts exactly, columns
//! exactly except floating-point ones, which may differ by the order of additions
//! (relative difference at most [`FLOAT_TOLERANCE`]). A difference is logged (warn) and
//! counted; the query keeps the sandbox's result. User plugins the pipeline calls run in
//! their sandboxes in both runs, so an audit checks the pipeline's toolchain and engine,
//! not the plugins.
//!
//! The native run is outside the sandbox (no fuel, deadline or memory cap; a panic is
//! caught and reported as a difference): audit data the node's operator trusts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;

/// A pipeline run outside the sandbox: `(encoded request, input) -> result payload` in the
/// layout of `pushdown_run` (ABI.md) without the status byte, or an error message.
pub type NativePipeline = dyn Fn(&[u8], Vec<u8>) -> Result<Vec<u8>, String> + Send + Sync;

/// Most relative difference between a float of the sandbox's result and the native one.
pub const FLOAT_TOLERANCE: f64 = 1e-9;

/// The native build of the built-in pipeline.
pub fn native_pipeline() -> Arc<NativePipeline> {
    Arc::new(pushdown_plugins_builtin::run_task)
}

/// Counters of the audits of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Tasks run again natively and compared.
    pub audited: u64,
    /// Of those, results that differed.
    pub mismatches: u64,
}

/// Picks the tasks to audit (exactly a fraction `rate` of them, evenly spread) and counts.
pub struct Auditor {
    rate: f64,
    native: Arc<NativePipeline>,
    seen: AtomicU64,
    audited: AtomicU64,
    mismatches: AtomicU64,
}

impl Auditor {
    /// Audits a fraction `rate` (clamped to 0..=1) of tasks against `native`.
    pub fn new(rate: f64, native: Arc<NativePipeline>) -> Self {
        Self {
            rate: rate.clamp(0.0, 1.0),
            native,
            seen: AtomicU64::new(0),
            audited: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
        }
    }

    /// Whether the next task is audited: task n is when ⌊(n+1)·rate⌋ > ⌊n·rate⌋.
    pub fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }

    /// Runs the native pipeline (a panic becomes an error).
    pub fn run_native(&self, request: &[u8], input: Vec<u8>) -> Result<Vec<u8>, String> {
        let native = self.native.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| native(request, input)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("the native pipeline panicked: {message}"))
            })
    }

    /// Counts one audit, and its mismatch when `differed`.
    pub fn record(&self, differed: bool) {
        self.audited.fetch_add(1, Ordering::Relaxed);
        if differed {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            audited: self.audited.load(Ordering::Relaxed),
            mismatches: self.mismatches.load(Ordering::Relaxed),
        }
    }
}

/// Compares the sandbox's batches with the native ones, row by row across batch
/// boundaries: `Err` names the first difference (column, row, both values).
pub fn compare(wasm: &[RecordBatch], native: &[RecordBatch]) -> Result<(), String> {
    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    if rows(wasm) != rows(native) {
        return Err(format!(
            "{} rows in the sandbox, {} natively",
            rows(wasm),
            rows(native)
        ));
    }
    let Some(first) = wasm.first().or(native.first()) else {
        return Ok(());
    };
    let schema = first.schema();
    let concat = |b: &[RecordBatch]| {
        arrow_select::concat::concat_batches(&schema, b).map_err(|e| format!("concat: {e}"))
    };
    let (a, b) = (concat(wasm)?, concat(native)?);
    if a.num_columns() != b.num_columns() {
        return Err(format!(
            "{} columns in the sandbox, {} natively",
            a.num_columns(),
            b.num_columns()
        ));
    }
    for (i, field) in schema.fields().iter().enumerate() {
        let (x, y) = (a.column(i), b.column(i));
        if x.data_type() != y.data_type() {
            return Err(format!(
                "column {}: {} in the sandbox, {} natively",
                field.name(),
                x.data_type(),
                y.data_type()
            ));
        }
        let float = matches!(
            x.data_type(),
            DataType::Float16 | DataType::Float32 | DataType::Float64
        );
        if float {
            let cast = |c: &dyn Array| {
                arrow_cast::cast(c, &DataType::Float64).map_err(|e| format!("cast: {e}"))
            };
            let (x, y) = (cast(x.as_ref())?, cast(y.as_ref())?);
            let (x, y) = (
                x.as_primitive::<Float64Type>(),
                y.as_primitive::<Float64Type>(),
            );
            for row in 0..x.len() {
                let same = match (x.is_null(row), y.is_null(row)) {
                    (true, true) => true,
                    (false, false) => {
                        let (p, q) = (x.value(row), y.value(row));
                        p == q
                            || (p.is_nan() && q.is_nan())
                            || (p - q).abs() <= FLOAT_TOLERANCE * p.abs().max(q.abs()).max(1.0)
                    }
                    _ => false,
                };
                if !same {
                    return Err(format!(
                        "column {} row {row}: {:?} in the sandbox, {:?} natively",
                        field.name(),
                        (!x.is_null(row)).then(|| x.value(row)),
                        (!y.is_null(row)).then(|| y.value(row)),
                    ));
                }
            }
        } else if x.as_ref() != y.as_ref() {
            let row = (0..x.len())
                .find(|&r| x.slice(r, 1).as_ref() != y.slice(r, 1).as_ref())
                .unwrap_or(0);
            let show = |c: &dyn Array| {
                arrow_cast::display::ArrayFormatter::try_new(c, &Default::default())
                    .map(|f| f.value(row).to_string())
                    .unwrap_or_else(|_| "?".into())
            };
            return Err(format!(
                "column {} row {row}: {} in the sandbox, {} natively",
                field.name(),
                show(x.as_ref()),
                show(y.as_ref())
            ));
        }
    }
    Ok(())
}

/// A [`NativePipeline`] in the node's options (`Debug` without showing the function).
#[derive(Clone)]
pub struct AuditPipeline(pub Arc<NativePipeline>);

impl std::fmt::Debug for AuditPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditPipeline(..)")
    }
}

/// Parses `--audit-rate`: a fraction from 0 to 1.
///
/// # Errors
/// Not a number, or outside 0..=1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number (a fraction of tasks, 0 to 1)"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{rate} is not between 0 and 1"));
    }
    Ok(rate)
}
