//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the shared test corpora through
//! the fuzz entry points, natively: every input must return without a panic.

use std::path::{Path, PathBuf};

use pushdown_plugins_builtin::fuzz;

fn testdata() -> PathBuf {
    match std::env::var_os("PUSHDOWN_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn corpus(target: &str) -> Vec<PathBuf> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target),
    )
}

#[test]
fn csv_chunk_corpus() {
    let mut inputs = corpus("csv_chunk");
    inputs.extend(files(&testdata().join("csv-spectrum/csvs")));
    assert!(inputs.len() >= 10, "{} inputs", inputs.len());
    for path in inputs {
        fuzz::csv_chunk(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn parquet_file_corpus() {
    let mut inputs = corpus("parquet_file");
    let data = testdata().join("parquet-testing/data");
    inputs.extend(
        files(&data)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet")),
    );
    assert!(inputs.len() >= 20, "{} inputs", inputs.len());
    for path in inputs {
        fuzz::parquet_file(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn task_request_corpus() {
    let inputs = corpus("task_request");
    assert!(!inputs.is_empty());
    for path in inputs {
        fuzz::task_request(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn parquet_bad_data_corpus() {
    let inputs: Vec<PathBuf> = files(&testdata().join("parquet-testing/bad_data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    assert!(inputs.len() >= 8, "{} inputs", inputs.len());
    for path in inputs {
        fuzz::parquet_file(&std::fs::read(&path).unwrap());
    }
}
