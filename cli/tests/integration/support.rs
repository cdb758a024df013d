//! Running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn testdata() -> PathBuf {
    match std::env::var_os("PUSHDOWN_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

/// The `pushdown` binary, kept away from the user's data: its default registries and
/// caches are folders of this test run (fresh XDG data and cache folders per test process;
/// the compiled-module cache in the target's temporary folder, shared by runs, as it is
/// keyed by content). HOME stays, so `cargo` and `rustup` still find their toolchains.
pub fn pushdown() -> Command {
    pushdown_at(Path::new(env!("CARGO_BIN_EXE_pushdown")))
}

/// [`pushdown`] with another copy of the binary.
pub fn pushdown_at(binary: &Path) -> Command {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let home = HOME.get_or_init(|| tempfile::tempdir().expect("a temporary home"));
    let mut command = Command::new(binary);
    command
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env_remove("PUSHDOWN_REGISTRY")
        .env_remove("PUSHDOWN_TOKEN")
        .env(
            "PUSHDOWN_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("pushdown-module-cache"),
        );
    command
}

/// Runs `pushdown query --data DIR [extra...] SQL`.
pub fn query(data: &Path, extra: &[&str], sql: &str) -> Output {
    pushdown()
        .arg("query")
        .arg("--data")
        .arg(data)
        .args(extra)
        .arg(sql)
        .output()
        .expect("the binary runs")
}

/// Asserts a failed run: exit code 1, empty stdout, one stderr line `error: ...` that
/// contains every `needle`.
pub fn assert_error(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A folder holding `files` (name, bytes).
pub fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    dir
}

/// The Python with the test oracles (DuckDB, pyarrow, ADBC): `$PUSHDOWN_PYTHON`, else the
/// repository's `.venv` that `scripts/setup.sh` makes.
pub fn python() -> PathBuf {
    std::env::var_os("PUSHDOWN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}
