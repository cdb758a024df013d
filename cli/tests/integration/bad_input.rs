//! Bad input: a clear one-line error naming the file (and row group or byte offset), a
//! non-zero exit, no panic, nothing printed as a result.

use std::path::Path;

use crate::support::{assert_error, folder, query, testdata};

#[test]
fn missing_path() {
    let out = query(Path::new("/nonexistent/pushdown-data"), &[], "SELECT 1");
    assert_error(
        &out,
        &["/nonexistent/pushdown-data", "No such file or directory"],
    );
}

#[test]
fn file_that_is_not_parquet() {
    let dir = folder(&[("t.parquet", b"id,name\n1,a\n")]);
    let out = query(dir.path(), &[], "SELECT * FROM t");
    assert_error(&out, &["t.parquet", "not a Parquet file"]);
}

#[test]
fn truncated_parquet_file() {
    let good =
        std::fs::read(testdata().join("parquet-testing/data/alltypes_plain.parquet")).unwrap();
    for cut in [good.len() / 2, good.len() - 3, 10] {
        let dir = folder(&[("t.parquet", &good[..cut])]);
        let out = query(dir.path(), &[], "SELECT * FROM t");
        assert_error(&out, &["t.parquet"]);
    }
}

#[test]
fn parquet_with_corrupt_data_pages_names_the_row_group() {
    // Keep the footer, damage the data: the sandboxed parser reports the row group.
    let mut bytes =
        std::fs::read(testdata().join("parquet-testing/data/alltypes_plain.parquet")).unwrap();
    for b in bytes[4..200].iter_mut() {
        *b = 0xA5;
    }
    let dir = folder(&[("t.parquet", &bytes)]);
    let out = query(dir.path(), &[], "SELECT * FROM t");
    assert_error(&out, &["t.parquet: row group 0", "plugin pushdown-builtin"]);
}

#[test]
fn every_bad_data_file_is_a_clear_error() {
    let bad = testdata().join("parquet-testing/bad_data");
    let mut seen = 0;
    for entry in std::fs::read_dir(&bad).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&path, dir.path().join("t.parquet")).unwrap();
        let out = query(dir.path(), &[], "SELECT * FROM t");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // A file may be readable after all (bad only for some readers); then it must print a result.
        if out.status.success() {
            assert!(
                !out.stdout.is_empty(),
                "{}: success without a result",
                path.display()
            );
        } else {
            assert_error(&out, &["t.parquet"]);
        }
        eprintln!(
            "{}: {}",
            path.file_name().unwrap().to_string_lossy(),
            stderr.trim()
        );
        seen += 1;
    }
    assert!(seen >= 8, "found {seen} files in {}", bad.display());
}

#[test]
fn csv_row_with_the_wrong_number_of_fields() {
    // Within the rows sampled for the schema: the host's schema inference names the line.
    let dir = folder(&[("t.csv", b"a,b,c\n1,2,3\n4,5\n6,7,8\n")]);
    let out = query(dir.path(), &[], "SELECT * FROM t");
    assert_error(
        &out,
        &[
            "t.csv: line 3: 2 fields where the first record has 3",
            "--csv-lenient",
        ],
    );
    // Past the sample: the sandboxed parser names the chunk's byte range and the line in it.
    let mut csv = b"a,b,c\n".to_vec();
    for i in 0..20_000 {
        csv.extend_from_slice(format!("{i},{i},{i}\n").as_bytes());
    }
    csv.extend_from_slice(b"4,5\n");
    let dir = folder(&[("t.csv", &csv)]);
    let out = query(dir.path(), &[], "SELECT sum(a) FROM t");
    assert_error(
        &out,
        &[
            "t.csv: bytes 6..",
            "plugin pushdown-builtin",
            "line 20001",
            "expected 3",
            "--csv-lenient",
        ],
    );
    // With --csv-lenient the record is read, its missing field NULL.
    let out = query(
        dir.path(),
        &["--csv-lenient", "--output", "csv"],
        "SELECT count(*), count(c) FROM t",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "count(*),count(t.c)\r\n20001,20000\r\n"
    );
}

#[test]
fn empty_csv_file_is_an_empty_table_as_in_duckdb() {
    let dir = folder(&[("t.csv", b"")]);
    let out = query(dir.path(), &["--output", "csv"], "SELECT * FROM t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "column0\r\n");
}

#[test]
fn unknown_table_and_column() {
    let dir = folder(&[("t.csv", b"a,b\n1,2\n")]);
    let out = query(dir.path(), &[], "SELECT * FROM nosuch");
    assert_error(&out, &["nosuch", "not found"]);
    let out = query(dir.path(), &[], "SELECT nosuchcolumn FROM t");
    assert_error(&out, &["nosuchcolumn"]);
}

#[test]
fn sql_syntax_error_and_unsupported_sql() {
    let dir = folder(&[("t.csv", b"a,b\n1,2\n")]);
    let out = query(dir.path(), &[], "SELEC a FROM t");
    assert_error(&out, &["SELEC"]);
    let out = query(dir.path(), &[], "DELETE FROM t WHERE a = 1");
    assert_error(&out, &["error: "]);
}

#[test]
fn two_sources_for_one_table_name_both_named() {
    let dir = folder(&[("t.csv", b"a\n1\n"), ("t.parquet", b"x")]);
    std::fs::create_dir(dir.path().join("u")).unwrap();
    let out = query(dir.path(), &[], "SELECT * FROM t");
    assert_error(&out, &["table t is defined twice", "t.csv", "t.parquet"]);
}
