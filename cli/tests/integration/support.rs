//! Running the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary folder for data a test process keeps for its whole life (a `static`, whose
/// destructor never runs): made in `$CARGO_TARGET_TMPDIR/cli-tests/<pid>/`, and the folders
/// of test processes that have ended are deleted when the first one is made, so runs on a
/// used machine do not pile up copies of the generated datasets.
pub fn process_tempdir() -> tempfile::TempDir {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-tests");
        std::fs::create_dir_all(&parent).expect("the scratch folder");
        for entry in std::fs::read_dir(&parent)
            .expect("the scratch folder")
            .flatten()
        {
            let pid = entry.file_name().to_string_lossy().into_owned();
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| Path::new("/proc").join(p.to_string()).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let mine = parent.join(std::process::id().to_string());
        std::fs::create_dir_all(&mine).expect("the scratch folder");
        mine
    });
    tempfile::tempdir_in(root).expect("a temporary folder")
}

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
    let home = HOME.get_or_init(process_tempdir);
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
