//! A CSV file's dialect: how its bytes split into records and fields.

use serde::{Deserialize, Serialize};

/// How a CSV file is written: delimiter, quoting, escaping, comments, the lines before the
/// data, and what NULL looks like. The storage node sniffs it from the start of each file
/// (or takes what the user gives) and hands it, unchanged, to the guest's parser for every
/// chunk of the file. The fields and their names follow DuckDB's `read_csv` options
/// (<https://duckdb.org/docs/stable/data/csv/overview>); the parser is arrow-csv.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CsvDialect {
    /// The field delimiter byte (`,`, `;`, `|`, tab, or any other the user names).
    pub delimiter: u8,
    /// The quote byte; `None`: fields are never quoted.
    pub quote: Option<u8>,
    /// The byte that escapes a quote inside a quoted field; `None`: a quote is written
    /// twice (RFC 4180).
    pub escape: Option<u8>,
    /// Lines starting with this byte are skipped wherever they are; `None`: no comments.
    pub comment: Option<u8>,
    /// Whether the first record after the skipped lines is a header of column names.
    pub header: bool,
    /// Lines skipped at the start of the file, before the header (or the first record).
    pub skip: u64,
    /// The field text read as NULL; `None`: an empty field (or, with `all_varchar`,
    /// nothing).
    pub null: Option<String>,
    /// With `lenient`, a record with fewer fields than the header gets NULL for the missing
    /// ones (and is counted as repaired) instead of failing the query.
    pub lenient: bool,
    /// The `strftime` format (chrono's syntax, as DuckDB's `dateformat`) of the file's DATE
    /// columns; `None`: ISO 8601 dates (`2024-01-31`) as arrow-csv reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_format: Option<String>,
    /// The `strftime` format of the file's TIMESTAMP columns (DuckDB's `timestampformat`);
    /// `None`: ISO 8601 timestamps as arrow-csv reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_format: Option<String>,
    /// The line ending seen in the file (`\n`, `\r\n` or `\r`), for `--explain`; the parser
    /// accepts all three.
    pub line_ending: String,
}

impl Default for CsvDialect {
    /// RFC 4180 with a header row: `,` `"`, quotes doubled, no comments, `\n`.
    fn default() -> Self {
        Self {
            delimiter: b',',
            quote: Some(b'"'),
            escape: None,
            comment: None,
            header: true,
            skip: 0,
            null: None,
            lenient: false,
            date_format: None,
            timestamp_format: None,
            line_ending: "\n".into(),
        }
    }
}

/// A byte shown as users write it: `','`, `tab`, `none`.
fn show(byte: Option<u8>) -> String {
    match byte {
        None => "none".into(),
        Some(b'\t') => "tab".into(),
        Some(b) if b.is_ascii_graphic() || b == b' ' => format!("'{}'", b as char),
        Some(b) => format!("0x{b:02x}"),
    }
}

impl std::fmt::Display for CsvDialect {
    /// `delimiter ',', quote '"', escape: doubled quote, header: yes, skip 0 lines,
    /// comment none, NULL: empty field, line ending \n`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let escape = match self.escape {
            None => "doubled quote".to_string(),
            e => show(e),
        };
        let null = match &self.null {
            None => "empty field".to_string(),
            Some(s) => format!("{s:?}"),
        };
        let ending = self.line_ending.replace('\r', "\\r").replace('\n', "\\n");
        write!(
            f,
            "delimiter {}, quote {}, escape {escape}, header {}, skip {} line(s), comment {}, NULL {null}, line ending {ending}{}{}{}",
            show(Some(self.delimiter)),
            show(self.quote),
            if self.header { "yes" } else { "no" },
            self.skip,
            show(self.comment),
            if self.lenient { ", lenient" } else { "" },
            self.date_format
                .as_ref()
                .map_or(String::new(), |f| format!(", dates {f}")),
            self.timestamp_format
                .as_ref()
                .map_or(String::new(), |f| format!(", timestamps {f}")),
        )
    }
}
