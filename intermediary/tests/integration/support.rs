//! Shared fixtures: TPC-H data generated once per test binary, paths of the shared corpora.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use pushdown_intermediary::Engine;
use pushdown_storage_node::NodeOptions;

/// Scale factor of the TPC-H data the tests use.
pub const SCALE: f64 = 0.1;

/// `../shared/testdata` of the workspace, or `$PUSHDOWN_TESTDATA`.
pub fn testdata() -> PathBuf {
    match std::env::var_os("PUSHDOWN_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

/// TPC-H lineitem at [`SCALE`], as `parquet/` and `csv/` folders; generated on first use
/// into the target's temporary folder and kept between runs.
pub fn tpch() -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tpch-sf{SCALE}-rg50000"));
    let done = dir.join("done");
    if !done.exists() {
        let options = pushdown_datasets::TpchOptions {
            scale: SCALE,
            out: dir.clone(),
            // Smaller row groups than the default: more tasks, and pruning has something to skip.
            row_group_size: 50_000,
            ..Default::default()
        };
        pushdown_datasets::generate_tpch(&options, |_, _| {}).expect("TPC-H data generates");
        std::fs::write(&done, b"").unwrap();
    }
    dir
}

/// An embedded engine over `dir`, with CSV chunks of `csv_chunk_size` bytes.
pub fn engine(dir: &Path, csv_chunk_size: u64) -> Arc<Engine> {
    let options = NodeOptions {
        csv_chunk_size,
        ..Default::default()
    };
    Arc::new(Engine::embedded(dir, options, None).expect("engine opens"))
}

/// The number after `label` in a run report (`bytes read from storage 123; ...`).
pub fn figure(report: &str, label: &str) -> u64 {
    let at = report
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {report}"))
        + label.len();
    report[at..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}
