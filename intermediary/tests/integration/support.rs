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

/// Node options with CSV chunks of `csv_chunk_size` bytes and the tests' own module cache
/// (in the target's temporary folder, never the user's).
pub fn node_options(csv_chunk_size: u64) -> NodeOptions {
    let mut options = NodeOptions {
        csv_chunk_size,
        ..Default::default()
    };
    options.sandbox.cache_dir = Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("module-cache"));
    options
}

/// An embedded engine over `dir`, with CSV chunks of `csv_chunk_size` bytes.
pub fn engine(dir: &Path, csv_chunk_size: u64) -> Arc<Engine> {
    Arc::new(Engine::embedded(dir, node_options(csv_chunk_size), None).expect("engine opens"))
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

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
];

/// All eight TPC-H tables at [`SCALE`], as `parquet/` and `csv/` folders (row groups of
/// 20 000 rows: several tasks per table); generated on first use into the target's
/// temporary folder and kept between runs.
pub fn tpch_all() -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _guard = LOCK
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tpch-all-sf{SCALE}-rg20000"));
    let done = dir.join("done");
    if !done.exists() {
        let options = pushdown_datasets::TpchOptions {
            scale: SCALE,
            out: dir.clone(),
            row_group_size: 20_000,
            tables: TPCH_TABLES.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        pushdown_datasets::generate_tpch(&options, |_, _| {}).expect("TPC-H data generates");
        std::fs::write(&done, b"").unwrap();
    }
    dir
}
