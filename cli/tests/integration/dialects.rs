//! CSV dialects as users have them: the field delimiter is sniffed from the file (`,` `;`
//! `|` tab; tab for `.tsv`), and each file reads as DuckDB's `read_csv` defaults read it.

use std::path::Path;

use crate::plugins::{duckdb, text};
use crate::support::{folder, pushdown};

/// A table of `n` rows with an integer, a decimal and a text column (some text holds the
/// other delimiters, quoted where it holds this one), joined by `d`.
fn table(d: char, n: usize) -> String {
    let mut out = format!("id{d}price{d}note\n");
    for i in 0..n {
        let note = match i % 4 {
            0 => "plain".to_string(),
            1 => "a,b;c|d".to_string(),
            2 => format!("has {d} inside"),
            _ => "tab\tlike".to_string(),
        };
        let note = if note.contains(d) {
            format!("\"{note}\"")
        } else {
            note
        };
        out.push_str(&format!("{i}{d}{}.{:02}{d}{note}\n", i * 3, i % 100));
    }
    out
}

/// `pushdown query --output csv ARGS --data DIR SQL`'s output; the query must succeed.
fn ours(dir: &Path, args: &[&str], sql: &str) -> String {
    let out = pushdown()
        .args(["query", "--output", "csv"])
        .args(args)
        .arg("--data")
        .arg(dir)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn semicolon_pipe_and_tab_files_read_as_duckdb_reads_them() {
    let files = [
        ("semi.csv", table(';', 500)),
        ("pipe.csv", table('|', 500)),
        ("tabs.csv", table('\t', 500)),
        ("tabs2.tsv", table('\t', 500)),
        ("comma.csv", table(',', 500)),
    ];
    let owned: Vec<(&str, &[u8])> = files.iter().map(|(n, t)| (*n, t.as_bytes())).collect();
    let dir = folder(&owned);
    for (name, _) in &files {
        let stem = name.split('.').next().unwrap();
        let sql = |from: &str| {
            format!(
                "SELECT count(*), sum(id), CAST(round(sum(price) * 100) AS BIGINT), count(DISTINCT note), min(note), max(note) FROM {from}"
            )
        };
        let ours = ours(dir.path(), &["--threads", "2"], &sql(stem));
        let row: Vec<String> = ours
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .map(str::to_string)
            .collect();
        let path = dir.path().join(name);
        let theirs = duckdb(&sql(&format!("read_csv('{}')", path.display())));
        let theirs: Vec<String> = theirs[0].iter().map(text).collect();
        // min and max notes contain commas, which the CSV output quotes: compare the
        // unquoted leading fields exactly and the notes by their quoted forms.
        assert_eq!(row[..4], theirs[..4], "{name}: {ours}");
        assert!(
            ours.contains(&theirs[4]) && ours.contains(&theirs[5]),
            "{name}: {ours} vs {theirs:?}"
        );
    }
}

#[test]
fn duplicate_and_empty_header_names_are_made_unique_as_duckdb_makes_them() {
    let csv = b"a,a,,b,a,a_1\n1,2,3,4,5,6\n";
    let dir = folder(&[("dup.csv", csv)]);
    let ours = ours(dir.path(), &[], "SELECT * FROM dup");
    let header = ours.lines().next().unwrap().trim_end().to_string();
    let path = dir.path().join("dup.csv");
    let python = crate::support::python();
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import duckdb, sys; print(','.join(duckdb.sql(f\"SELECT * FROM read_csv('{sys.argv[1]}')\").columns))",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(header, theirs);
    assert_eq!(ours.lines().nth(1).unwrap().trim_end(), "1,2,3,4,5,6");
}

#[test]
fn a_byte_order_mark_and_crlf_line_ends_read_as_in_duckdb() {
    let csv = b"\xef\xbb\xbfid;name\r\n1;x\r\n2;y\r\n";
    let dir = folder(&[("bom.csv", csv)]);
    let ours = ours(dir.path(), &[], "SELECT id, name FROM bom ORDER BY id");
    let path = dir.path().join("bom.csv");
    let theirs = duckdb(&format!(
        "SELECT id, name FROM read_csv('{}') ORDER BY id",
        path.display()
    ));
    let theirs: String = theirs
        .iter()
        .map(|r| format!("{},{}\r\n", text(&r[0]), text(&r[1])))
        .collect();
    assert_eq!(ours, format!("id,name\r\n{theirs}"));
}
