//! CSV dialects as users have them: the field delimiter is sniffed from the file (`,` `;`
//! `|` tab; tab for `.tsv`), and each file reads as DuckDB's `read_csv` defaults read it.

use std::fmt::Write as _;
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

/// What DuckDB's `read_csv` gives for a file: its CSV text (a header row of the column
/// names, then the rows; NULL as an empty field; CRLF, quoted where needed, as
/// `pushdown query --output csv` writes) or the first line of its error.
fn duckdb_csv(cases: &[(std::path::PathBuf, &str)]) -> Vec<Result<String, String>> {
    const SCRIPT: &str = r#"
import csv, datetime, duckdb, io, json, sys
out = []
for path, options in json.loads(sys.argv[1]):
    try:
        rel = duckdb.sql(f"SELECT * FROM read_csv('{path}'{options})")
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(rel.columns)
        # Timestamps as `--output csv` writes them (arrow-csv: 2024-01-31T10:30:00).
        show = lambda v: ("" if v is None else str(v).lower() if isinstance(v, bool)
            else v.isoformat() if isinstance(v, datetime.datetime) else str(v))
        for row in rel.fetchall():
            w.writerow([show(v) for v in row])
        out.append({"Ok": buf.getvalue()})
    except Exception as e:
        out.append({"Err": str(e).splitlines()[0] + " " + " ".join(str(e).splitlines()[1:4])})
print(json.dumps(out))
"#;
    let input: Vec<(String, &str)> = cases
        .iter()
        .map(|(p, o)| (p.display().to_string(), *o))
        .collect();
    let out = std::process::Command::new(crate::support::python())
        .args(["-c", SCRIPT])
        .arg(serde_json::to_string(&input).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `pushdown query --output csv` of `SELECT * FROM <table>`: its output, or its one-line
/// error.
fn ours_csv(dir: &Path, table: &str, args: &[&str]) -> Result<String, String> {
    let out = pushdown()
        .args(["query", "--output", "csv"])
        .args(args)
        .arg("--data")
        .arg(dir)
        .arg(format!("SELECT * FROM \"{table}\""))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        Err(err.trim_end().to_string())
    }
}

/// How a case's answer relates to DuckDB's.
enum Expect {
    /// The same table, names and values.
    Same,
    /// pushdown fails with an error containing this; DuckDB's answer is shown beside it.
    Fails(&'static str),
}

/// One file of the dialect corpus: a name for the report, the file, pushdown's options and
/// the equivalent `read_csv` options, and what is expected.
struct Case {
    name: &'static str,
    file: &'static str,
    bytes: &'static [u8],
    ours: &'static [&'static str],
    theirs: &'static str,
    expect: Expect,
}

const CORPUS: &[Case] = &[
    Case {
        name: "comma, header, LF",
        file: "comma.csv",
        bytes: b"id,name,score\n1,ann,2.5\n2,bob,3\n3,,4.25\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "semicolon",
        file: "semi.csv",
        bytes: b"id;name\n1;a,b\n2;c\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "pipe",
        file: "pipe.csv",
        bytes: b"id|name|n\n1|x|7\n2|y|8\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "tab, .tsv",
        file: "tabs.tsv",
        bytes: b"id\tname\n1\tx y\n2\tz\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "tab, .csv",
        file: "tabs.csv",
        bytes: b"id\tname\n1\tx,y\n2\tz\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "CRLF",
        file: "crlf.csv",
        bytes: b"id,name\r\n1,x\r\n2,y\r\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "UTF-8 BOM",
        file: "bom.csv",
        bytes: b"\xef\xbb\xbfid,name\n1,x\n2,y\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "no header (numbers)",
        file: "nohdr.csv",
        bytes: b"1,2\n3,4\n5,6\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "no header (text, numbers)",
        file: "nohdr2.csv",
        bytes: b"ann,1\nbob,2\ncid,3\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "header, all text",
        file: "names.csv",
        bytes: b"name,city\nann,paris\nbob,rome\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "single quotes",
        file: "squote.csv",
        bytes: b"a,b\n'x, y',1\n'z',2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "backslash escape",
        file: "bslash.csv",
        bytes: b"a,b\n\"x\\\"y\",1\n\"z\",2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "doubled quotes",
        file: "dquote.csv",
        bytes: b"a,b\n\"say \"\"hi\"\"\",1\n\"z\",2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "newline inside quotes",
        file: "nl.csv",
        bytes: b"a,b\n\"line1\nline2\",1\nz,2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "title lines before the header",
        file: "title.csv",
        bytes: b"Sales report\nmade 2026\nid,amount\n1,10\n2,20\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "comment lines",
        file: "comments.csv",
        bytes: b"id,v\n1,10\n# a note, with \"quotes\n2,20\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "empty fields",
        file: "empties.csv",
        bytes: b"a,b,c\n1,,x\n,2,\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "trailing delimiter",
        file: "trail.csv",
        bytes: b"a,b,\n1,2,\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "repeated and empty names",
        file: "dup.csv",
        bytes: b"a,a,,b\n1,2,3,4\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "empty file",
        file: "nothing.csv",
        bytes: b"",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "header only",
        file: "hdr.csv",
        bytes: b"a,b\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "one column",
        file: "one.csv",
        bytes: b"v\n1\n2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "no final newline",
        file: "nofinal.csv",
        bytes: b"a,b\n1,2\n3,4",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-delimiter :",
        file: "colon.csv",
        bytes: b"a:b\n1:2\n",
        ours: &["--csv-delimiter", ":"],
        theirs: ", delim=':'",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-header false",
        file: "hfalse.csv",
        bytes: b"a,b\nc,d\n",
        ours: &["--csv-header", "false"],
        theirs: ", header=false",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-null NA",
        file: "na.csv",
        bytes: b"a,b\n1,NA\nNA,2\n",
        ours: &["--csv-null", "NA"],
        theirs: ", nullstr='NA'",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-skip 1",
        file: "skip.csv",
        bytes: b"junk,junk,junk\na,b\n1,2\n",
        ours: &["--csv-skip", "1"],
        theirs: ", skip=1",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-quote '",
        file: "quote1.csv",
        bytes: b"a,b\n'p,q',\"r\n",
        ours: &["--csv-quote", "'"],
        theirs: ", quote=''''",
        expect: Expect::Same,
    },
    Case {
        name: "ISO dates",
        file: "iso.csv",
        bytes: b"d,n\n2024-01-31,1\n2024-02-01,2\n",
        ours: &[],
        theirs: "",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-dateformat %d/%m/%Y",
        file: "dates.csv",
        bytes: b"d,n\n31/01/2024,1\n01/02/2024,2\n",
        ours: &["--csv-dateformat", "%d/%m/%Y"],
        theirs: ", dateformat='%d/%m/%Y'",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-timestampformat",
        file: "stamps.csv",
        bytes: b"t,n\n31/01/2024 10:30,1\n01/02/2024 23:59,2\n",
        ours: &["--csv-timestampformat", "%d/%m/%Y %H:%M"],
        theirs: ", timestampformat='%d/%m/%Y %H:%M'",
        expect: Expect::Same,
    },
    Case {
        name: "--csv-lenient (ragged rows)",
        file: "ragged_ok.csv",
        bytes: b"a,b,c\n1,2,3\n4,5\n6,7,8\n",
        ours: &["--csv-lenient"],
        theirs: ", null_padding=true",
        expect: Expect::Same,
    },
    Case {
        name: "ragged rows",
        file: "ragged.csv",
        bytes: b"a,b,c\n1,2,3\n4,5\n6,7,8\n",
        ours: &[],
        theirs: "",
        expect: Expect::Fails("ragged.csv: line 3: 2 fields where the first record has 3"),
    },
    Case {
        name: "Latin-1",
        file: "latin1.csv",
        bytes: b"a,b\ncaf\xe9,1\n",
        ours: &[],
        theirs: "",
        expect: Expect::Fails("line 2: byte 0xe9 at offset 7 is not UTF-8"),
    },
];

/// Every case of [`CORPUS`] through pushdown (whole and in 8-byte chunks, one thread, so
/// chunk boundaries fall everywhere) and through DuckDB's `read_csv`; prints them side by
/// side (`-- --nocapture`).
#[test]
fn the_dialect_corpus_reads_as_duckdb_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut theirs_in = Vec::new();
    for case in CORPUS {
        let sub = dir.path().join(case.file.replace('.', "_"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(case.file), case.bytes).unwrap();
        theirs_in.push((sub.join(case.file), case.theirs));
    }
    let theirs = duckdb_csv(&theirs_in);
    let show = |r: &Result<String, String>| match r {
        Ok(text) => text.trim_end().replace("\r\n", " ⏎ ").replace('\n', "\\n"),
        Err(e) => format!("error: {e}"),
    };
    let mut report = String::from("| case | pushdown | DuckDB read_csv |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for (case, theirs) in CORPUS.iter().zip(&theirs) {
        let sub = dir.path().join(case.file.replace('.', "_"));
        let table = case.file.split('.').next().unwrap();
        let whole = ours_csv(&sub, table, case.ours);
        let mut chunked_args = vec!["--threads", "1", "--csv-chunk-size", "8"];
        chunked_args.extend_from_slice(case.ours);
        let chunked = ours_csv(&sub, table, &chunked_args);
        let _ = writeln!(
            report,
            "| {} (`{}`) | {} | {} |",
            case.name,
            case.ours.join(" "),
            show(&whole),
            show(theirs)
        );
        let ok = match &case.expect {
            Expect::Same => {
                whole.is_ok() && whole.as_ref().ok() == theirs.as_ref().ok() && chunked == whole
            }
            Expect::Fails(message) => {
                whole.as_ref().is_err_and(|e| e.contains(message)) && chunked.is_err()
            }
        };
        if !ok {
            failures.push(format!(
                "{}: ours {whole:?}, in 8-byte chunks {chunked:?}, DuckDB {theirs:?}",
                case.name
            ));
        }
    }
    println!("{report}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Two tables written differently, each given its own options with `TABLE=`, and the same
/// options on a storage node behind an intermediary: the same answer, and `--explain`
/// shows each table's dialect. A `TABLE=` naming no CSV table is refused.
#[test]
fn per_table_options_work_embedded_and_on_a_storage_node() {
    use crate::cluster::{connect, start_intermediary, start_node, stdout_ok, TOKEN};
    // `prices`: a title line, `:` between fields, `NA` for NULL. `notes`: no header, `'`
    // around text. `plain`: sniffed as it is.
    let dir = folder(&[
        (
            "prices.csv",
            b"exported by a tool\nid:price\n1:2.5\n2:NA\n3:4\n",
        ),
        ("notes.csv", b"1,'one, uno'\n2,'two'\n"),
        ("plain.csv", b"id,n\n1,10\n2,20\n"),
    ]);
    let options = [
        "--csv-delimiter",
        "prices=:",
        "--csv-skip",
        "prices=1",
        "--csv-null",
        "prices=NA",
        "--csv-header",
        "notes=false",
        "--csv-quote",
        "notes='",
    ];
    let sql = "SELECT p.id, p.price, n.column1 AS note, x.n FROM prices p \
               JOIN notes n ON n.column0 = p.id JOIN plain x ON x.id = p.id ORDER BY p.id";
    let mut args = options.to_vec();
    args.push("--explain");
    let out = pushdown()
        .args(["query", "--output", "csv"])
        .args(&args)
        .arg("--data")
        .arg(dir.path())
        .arg(sql)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let embedded = stdout_ok(out);
    assert_eq!(
        embedded,
        "id,price,note,n\r\n1,2.5,\"one, uno\",10\r\n2,,two,20\r\n"
    );
    assert!(
        stderr.contains("CSV dialect: delimiter ':', quote '\"', escape doubled quote, header yes, skip 1 line(s), comment none, NULL \"NA\"")
            && stderr.contains("CSV dialect: delimiter ',', quote ''', escape doubled quote, header no"),
        "{stderr}"
    );
    // The same options on the node that holds the files.
    let registry = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), registry.path(), &options);
    let intermediary = start_intermediary(&[&node.url], &[]);
    assert_eq!(stdout_ok(connect(&intermediary.url, TOKEN, sql)), embedded);
    // A TABLE= prefix must name a CSV table of the folder.
    let out = crate::support::query(dir.path(), &["--csv-null", "price=NA"], "SELECT 1");
    crate::support::assert_error(
        &out,
        &["a --csv-* option names table price, which is not a CSV table"],
    );
    let out = crate::support::query(dir.path(), &["--csv-delimiter", ";;"], "SELECT 1");
    crate::support::assert_error(
        &out,
        &["--csv-delimiter: \";;\" is not one ASCII character"],
    );
}
