//! `--output table|csv|json` and `--explain`.

use crate::support::{folder, query};

const PEOPLE: &[u8] =
    b"id,name,city,score\n1,Ann,\"Paris, FR\",3.5\n2,Bob,Oslo,\n3,\"Chloe \"\"C\"\"\",,7.25\n";

#[test]
fn csv_output_is_a_header_and_rfc4180_rows() {
    let dir = folder(&[("people.csv", PEOPLE)]);
    let out = query(
        dir.path(),
        &["--output", "csv"],
        "SELECT id, name, city, score FROM people ORDER BY id",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, "id,name,city,score\r\n1,Ann,\"Paris, FR\",3.5\r\n2,Bob,Oslo,\r\n3,\"Chloe \"\"C\"\"\",,7.25\r\n");
}

#[test]
fn csv_output_of_an_empty_result_is_the_header() {
    let dir = folder(&[("people.csv", PEOPLE)]);
    let out = query(
        dir.path(),
        &["--output", "csv"],
        "SELECT id, name FROM people WHERE id > 10",
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "id,name\r\n");
}

#[test]
fn json_output_is_an_array_of_objects() {
    let dir = folder(&[("people.csv", PEOPLE)]);
    let out = query(
        dir.path(),
        &["--output", "json"],
        "SELECT id, city IS NULL AS no_city FROM people ORDER BY id",
    );
    assert!(out.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{"id": 1, "no_city": false}, {"id": 2, "no_city": false}, {"id": 3, "no_city": true}])
    );
}

#[test]
fn table_output_and_explain() {
    let dir = folder(&[("people.csv", PEOPLE)]);
    let out = query(
        dir.path(),
        &["--explain"],
        "SELECT count(*) AS n, sum(score) AS s FROM people WHERE id >= 2",
    );
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("| n | s    |"), "{stdout}");
    assert!(stdout.contains("| 2 | 7.25 |"), "{stdout}");
    assert!(stderr.contains("predicate: id >= 2"), "{stderr}");
    assert!(stderr.contains("partial aggregate"), "{stderr}");
    assert!(
        stderr.contains("table people: tasks 1 scanned, 0 pruned, 0 not run (of 1)"),
        "{stderr}"
    );
    assert!(stderr.contains("rows in 3, selected 2, out 1"), "{stderr}");
}
