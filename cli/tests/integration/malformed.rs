//! Malformed data: truncated and bit-flipped copies of valid Parquet files, broken CSV,
//! and the csv-spectrum corpus. Every run ends with a result or a one-line error naming
//! the file; never a panic or a hang.

use crate::support::{assert_error, folder, query, testdata};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn result_or_clear_error(bytes: &[u8], what: &str) {
    let dir = folder(&[("t.parquet", bytes)]);
    let out = query(dir.path(), &["--task-deadline", "10"], "SELECT * FROM t");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    match out.status.code() {
        Some(0) => assert!(!out.stdout.is_empty(), "{what}: success without a result"),
        Some(1) => {
            assert_error(&out, &["t.parquet"]);
        }
        other => panic!("{what}: exit {other:?}: {stderr}"),
    }
}

#[test]
fn bit_flipped_parquet_files() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for name in [
        "alltypes_plain.parquet",
        "alltypes_tiny_pages.parquet",
        "datapage_v2.snappy.parquet",
        "byte_stream_split.zstd.parquet",
    ] {
        let good = std::fs::read(testdata().join("parquet-testing/data").join(name)).unwrap();
        for copy in 0..20 {
            let mut bytes = good.clone();
            let flips = 1 + rng.next() % 8;
            for _ in 0..flips {
                let at = (rng.next() % bytes.len() as u64) as usize;
                bytes[at] ^= 1 << (rng.next() % 8);
            }
            result_or_clear_error(&bytes, &format!("{name} copy {copy}"));
        }
    }
}

#[test]
fn truncated_parquet_files() {
    let good =
        std::fs::read(testdata().join("parquet-testing/data/alltypes_tiny_pages.parquet")).unwrap();
    for cut in [
        0,
        4,
        8,
        12,
        100,
        good.len() / 3,
        good.len() / 2,
        good.len() - 100,
        good.len() - 8,
        good.len() - 1,
    ] {
        let dir = folder(&[("t.parquet", &good[..cut])]);
        let out = query(dir.path(), &[], "SELECT * FROM t");
        assert_error(&out, &["t.parquet"]);
    }
}

#[test]
fn broken_csv() {
    // A quote that never closes: as DuckDB's sniffer does, the file reads as unquoted
    // (`"abc` is text); with the quote fixed, the error names where it opened.
    let unclosed: &[u8] = b"a,b\n1,\"abc\n2,3\n";
    let cases: &[(&[u8], &[&str], &[&str])] = &[
        (
            unclosed,
            &["--csv-quote", "\""],
            &["t.csv", "unterminated quote", "byte 6"],
        ),
        (
            b"a,b\n1,x\xff\xfe\n2,y\n",
            &[],
            &["t.csv", "line 2: byte 0xff at offset 7 is not UTF-8"],
        ),
        (b"a,b\n1,2\n3\n", &[], &["t.csv", "line 3"]),
    ];
    for (bytes, args, needles) in cases {
        let dir = folder(&[("t.csv", bytes)]);
        let out = query(dir.path(), args, "SELECT * FROM t");
        assert_error(&out, needles);
    }
    let dir = folder(&[("t.csv", unclosed)]);
    let out = query(dir.path(), &["--output", "csv"], "SELECT * FROM t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "a,b\r\n1,\"\"\"abc\"\r\n2,3\r\n"
    );
}

#[test]
fn header_only_csv_is_an_empty_table() {
    let dir = folder(&[("t.csv", b"a,b\n")]);
    let out = query(dir.path(), &["--output", "csv"], "SELECT a, b FROM t");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "a,b\r\n");
}

#[test]
fn csv_spectrum_files_parse_to_what_their_json_says() {
    let root = testdata().join("csv-spectrum");
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("csvs")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let expected: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("json").join(format!("{stem}.json"))).unwrap(),
        )
        .unwrap();
        let dir = folder(&[("t.csv", &std::fs::read(&path).unwrap())]);
        let out = query(
            dir.path(),
            &["--csv-all-varchar", "--output", "json"],
            "SELECT * FROM t",
        );
        assert!(
            out.status.success(),
            "{stem}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ours, expected, "{stem}");
        seen += 1;
    }
    assert!(seen >= 10, "{seen} csv-spectrum files");
}

#[test]
fn inputs_the_fuzzer_found_are_clear_errors() {
    // Both made parquet 59.3.2 panic when fuzzed natively: the first is refused when the
    // footer is read, the second traps inside the sandbox.
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let cases = [
        (
            "corpus/parquet_file/negative-column-offset.parquet",
            vec!["t.parquet", "negative offset or size"],
        ),
        (
            "known-crashes/parquet_file/bit-width-assertion.parquet",
            vec!["t.parquet: row group 0: plugin pushdown-builtin: trapped"],
        ),
    ];
    for (file, needles) in cases {
        let dir = folder(&[("t.parquet", &std::fs::read(fuzz.join(file)).unwrap())]);
        let out = query(dir.path(), &[], "SELECT * FROM t");
        assert_error(&out, &needles);
    }
}
