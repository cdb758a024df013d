//! CSV dialects: what the user fixed, what the sniffer finds in the rest, and where a
//! file's records start.
//!
//! The sniffer follows DuckDB's (<https://duckdb.org/docs/stable/data/csv/auto_detection>):
//! every candidate dialect parses a sample of the file's start, and the one whose records
//! agree on the most columns wins; leading lines with fewer fields are skipped (titles,
//! notes); the first record is a header unless every one of its fields has the type of its
//! column below (or every column is text, when it is a header too).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use pushdown_protocol::CsvDialect;

use crate::error::{Error, Result};

/// Bytes of a CSV file's start that the sniffer reads.
pub const SNIFF_BYTES: usize = 64 << 10;

/// Candidate field delimiters, in order of preference on a tie.
const DELIMITERS: [u8; 4] = [b',', b';', b'|', b'\t'];

/// At most this many leading records with fewer fields are skipped by the sniffer.
const MAX_SNIFFED_SKIP: usize = 20;

/// A UTF-8 byte order mark; never part of the data.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// What the user fixed of a CSV dialect; `None` fields are sniffed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvOverrides {
    /// `--csv-delimiter`.
    pub delimiter: Option<u8>,
    /// `--csv-quote` (`Some(None)`: no quoting).
    pub quote: Option<Option<u8>>,
    /// `--csv-escape` (`Some(None)`: quotes are doubled).
    pub escape: Option<Option<u8>>,
    /// `--csv-comment` (`Some(None)`: no comment lines).
    pub comment: Option<Option<u8>>,
    /// `--csv-header`.
    pub header: Option<bool>,
    /// `--csv-skip`: lines before the header or first record.
    pub skip: Option<u64>,
    /// `--csv-null`: the text read as NULL.
    pub null: Option<String>,
    /// `--csv-lenient`: records with missing fields padded with NULL.
    pub lenient: Option<bool>,
    /// `--csv-dateformat`: the `strftime` format of DATE columns.
    pub date_format: Option<String>,
    /// `--csv-timestampformat`: the `strftime` format of TIMESTAMP columns.
    pub timestamp_format: Option<String>,
}

impl CsvOverrides {
    /// `self`, with the fields it leaves open taken from `fallback`.
    pub fn or(&self, fallback: &CsvOverrides) -> CsvOverrides {
        CsvOverrides {
            delimiter: self.delimiter.or(fallback.delimiter),
            quote: self.quote.or(fallback.quote),
            escape: self.escape.or(fallback.escape),
            comment: self.comment.or(fallback.comment),
            header: self.header.or(fallback.header),
            skip: self.skip.or(fallback.skip),
            null: self.null.clone().or_else(|| fallback.null.clone()),
            lenient: self.lenient.or(fallback.lenient),
            date_format: self
                .date_format
                .clone()
                .or_else(|| fallback.date_format.clone()),
            timestamp_format: self
                .timestamp_format
                .clone()
                .or_else(|| fallback.timestamp_format.clone()),
        }
    }
}

/// The CSV options of a node or query: for every table, and per table (`TABLE=` prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvOptions {
    /// Options without a table prefix.
    pub all: CsvOverrides,
    /// Options of one table, by table name; they win over `all`.
    pub tables: BTreeMap<String, CsvOverrides>,
}

impl CsvOptions {
    /// What is fixed for `table`.
    pub fn for_table(&self, table: &str) -> CsvOverrides {
        match self.tables.get(table) {
            Some(t) => t.or(&self.all),
            None => self.all.clone(),
        }
    }
}

/// A CSV file's dialect and where its parts start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLayout {
    /// The dialect the file is read with.
    pub dialect: CsvDialect,
    /// Byte offset of the header (or, without one, the first record): after a byte order
    /// mark and the skipped lines.
    pub header_start: u64,
    /// Byte offset of the first data record.
    pub data_start: u64,
}

/// A column type the sniffer tells apart, narrowest first within a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Bool,
    Int,
    Float,
    Date,
    Timestamp,
    Text,
}

fn kind_of(value: &[u8], null: Option<&str>) -> Kind {
    let Ok(v) = std::str::from_utf8(value) else {
        return Kind::Text;
    };
    let v = v.trim();
    if v.is_empty() || Some(v) == null {
        return Kind::Empty;
    }
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        return Kind::Bool;
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Kind::Int;
    }
    if digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && v.parse::<f64>().is_ok()
    {
        return Kind::Float;
    }
    let b = v.as_bytes();
    let date = b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit);
    if date && b.len() == 10 {
        return Kind::Date;
    }
    if date && matches!(b[10], b' ' | b'T') && b.len() >= 16 && b[13] == b':' {
        return Kind::Timestamp;
    }
    Kind::Text
}

/// The narrowest kind holding both.
fn join(a: Kind, b: Kind) -> Kind {
    use Kind::*;
    match (a, b) {
        (Empty, k) | (k, Empty) => k,
        (a, b) if a == b => a,
        (Int, Float) | (Float, Int) => Float,
        (Date, Timestamp) | (Timestamp, Date) => Timestamp,
        _ => Text,
    }
}

/// Whether a value of kind `value` can be read as a column of kind `column`.
fn fits(value: Kind, column: Kind) -> bool {
    join(value, column) == column
}

/// One candidate dialect's reading of the sample.
struct Reading {
    /// Fields of each whole record, from the first after the skipped lines.
    records: Vec<Vec<Vec<u8>>>,
    /// Columns: the fields of the first record.
    columns: usize,
    /// Lines skipped before it.
    skip: u64,
    /// Lines this reading accounts for: skipped lines, its records and its comment lines.
    rows: usize,
}

/// A reader of `input`'s records in dialect `d`: every record (a header too), any number of
/// fields each.
pub(crate) fn csv_reader<R: Read>(d: &CsvDialect, input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(d.delimiter)
        .quote(d.quote.unwrap_or(0))
        .escape(d.escape)
        .comment(d.comment)
        .from_reader(input)
}

/// Reads the sample with `d`. With a fixed `skip`, that many lines go first; otherwise up to
/// [`MAX_SNIFFED_SKIP`] leading records with fewer fields than the ones after them. `None`
/// when the records after the skipped ones do not agree on their number of fields (with
/// `d.lenient`: when one has more than the first).
fn read_sample(
    d: &CsvDialect,
    sample: &[u8],
    complete: bool,
    skip: Option<u64>,
) -> Option<Reading> {
    let start = skip.map_or(0, |n| skip_lines(sample, n));
    let mut reader = csv_reader(d, &sample[start..]);
    let mut records: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => return None,
        }
        // A record cut off by the end of the sample is not counted.
        let ends_at = usize::try_from(reader.position().byte()).unwrap_or(usize::MAX);
        if !complete && start + ends_at >= sample.len() {
            break;
        }
        // Where the record starts, in the sample.
        let at = start + record.position().map_or(0, |p| p.byte() as usize);
        records.push((at, record.iter().map(<[u8]>::to_vec).collect()));
    }
    if records.is_empty() {
        return Some(Reading {
            records: Vec::new(),
            columns: 1,
            skip: skip.unwrap_or(0),
            rows: 0,
        });
    }
    let counts: Vec<usize> = records.iter().map(|(_, r)| r.len()).collect();
    let agree = |from: usize| {
        let n = counts[from];
        counts[from..]
            .iter()
            .all(|&c| if d.lenient { c <= n } else { c == n })
    };
    let first = match skip {
        Some(_) => 0,
        None => {
            let limit = MAX_SNIFFED_SKIP.min(counts.len().saturating_sub(1));
            // Lines are skipped only before at least two records that agree (a header
            // and a row): one longer record is no reason to drop the lines above it.
            (0..=limit).find(|&s| {
                (s == 0 || counts.len() - s >= 2)
                    && counts
                        .get(s)
                        .is_some_and(|&n| counts[..s].iter().all(|&c| c < n))
                    && agree(s)
            })?
        }
    };
    if !agree(first) {
        return None;
    }
    // Lines (newlines) before the first record kept.
    let skip = skip.unwrap_or_else(|| {
        // A CRLF record ends at its `\r`: the next one may start at the `\n`.
        let mut at = records[first].0.min(sample.len());
        while at < sample.len() && matches!(sample[at], b'\r' | b'\n') {
            at += 1;
        }
        memchr::memchr_iter(b'\n', &sample[..at]).count() as u64
    });
    let records: Vec<_> = records.into_iter().skip(first).map(|(_, r)| r).collect();
    let comments = d.comment.map_or(0, |c| {
        usize::from(sample.first() == Some(&c))
            + memchr::memmem::find_iter(sample, &[b'\n', c]).count()
    });
    Some(Reading {
        columns: records[0].len(),
        // Skipped lines count as read: a title above a table does not lose to a
        // reading of every line as one column.
        rows: first + records.len() + comments,
        records,
        skip,
    })
}

/// Byte offset after the first `n` lines of `bytes` (its length when it has fewer).
fn skip_lines(bytes: &[u8], n: u64) -> usize {
    let mut at = 0;
    for _ in 0..n {
        match memchr::memchr(b'\n', &bytes[at..]) {
            Some(i) => at += i + 1,
            None => return bytes.len(),
        }
    }
    at
}

/// Whether the first record is a header: with one record, or when every column below it is
/// text, yes; otherwise when one of its fields does not have its column's type.
fn has_header(reading: &Reading, null: Option<&str>) -> bool {
    let Some((first, rest)) = reading.records.split_first() else {
        return true;
    };
    if rest.is_empty() {
        return true;
    }
    let kinds: Vec<Kind> = (0..reading.columns)
        .map(|j| {
            rest.iter()
                .filter_map(|r| r.get(j))
                .fold(Kind::Empty, |k, v| join(k, kind_of(v, null)))
        })
        .collect();
    if kinds.iter().all(|k| matches!(k, Kind::Text | Kind::Empty)) {
        return true;
    }
    first
        .iter()
        .zip(&kinds)
        .any(|(v, &k)| !fits(kind_of(v, null), k))
}

/// The line ending of the sample: `\r\n`, `\n` or `\r`.
fn line_ending(sample: &[u8]) -> &'static str {
    match memchr::memchr(b'\n', sample) {
        Some(i) if i > 0 && sample[i - 1] == b'\r' => "\r\n",
        Some(_) => "\n",
        None if sample.contains(&b'\r') => "\r",
        None => "\n",
    }
}

/// The dialect of the sample `sample` (the file's first bytes, a byte order mark removed;
/// `complete` when it is the whole file), with what `fixed` gives taken as given. `tsv`:
/// the file is named `.tsv`, so its delimiter is tab unless fixed.
pub fn sniff(sample: &[u8], complete: bool, fixed: &CsvOverrides, tsv: bool) -> CsvDialect {
    let delimiters: Vec<u8> = match (fixed.delimiter, tsv) {
        (Some(d), _) => vec![d],
        (None, true) => vec![b'\t'],
        (None, false) => DELIMITERS.to_vec(),
    };
    // The quote that opens more fields in the sample (after a delimiter or at a line's
    // start) is tried first, so it wins a tie.
    let opens = |q: u8| {
        sample
            .windows(2)
            .filter(|w| w[1] == q && (w[0] == b'\n' || delimiters.contains(&w[0])))
            .count()
            + usize::from(sample.first() == Some(&q))
    };
    let quotes: Vec<Option<u8>> = match fixed.quote {
        Some(q) => vec![q],
        None if opens(b'\'') > opens(b'"') => vec![Some(b'\''), Some(b'"')],
        None => vec![Some(b'"'), Some(b'\'')],
    };
    // `#` comment lines are read as comments when the sample has any (as DuckDB does).
    let has_comments =
        sample.first() == Some(&b'#') || memchr::memmem::find(sample, b"\n#").is_some();
    let comments: Vec<Option<u8>> = match fixed.comment {
        Some(c) => vec![c],
        None if has_comments => vec![Some(b'#'), None],
        None => vec![None],
    };
    let lenient = fixed.lenient.unwrap_or(false);
    // The most lines read consistently, then the most columns, then the comment
    // preference, the fewest lines skipped and the candidates' order pick the best.
    let mut best: Option<((usize, usize, usize, u64, usize), CsvDialect, Reading)> = None;
    let mut order = 0;
    for (comment_rank, &comment) in comments.iter().enumerate() {
        for &quote in &quotes {
            let escapes: Vec<Option<u8>> = match (fixed.escape, quote) {
                (Some(e), _) => vec![e],
                // A backslash before a quote in the sample: try it as the escape first.
                (None, Some(q)) if sample.windows(2).any(|w| w == [b'\\', q]) => {
                    vec![Some(b'\\'), None]
                }
                (None, _) => vec![None],
            };
            for &escape in &escapes {
                for &delimiter in &delimiters {
                    order += 1;
                    let dialect = CsvDialect {
                        delimiter,
                        quote,
                        escape,
                        comment,
                        lenient,
                        null: fixed.null.clone(),
                        ..CsvDialect::default()
                    };
                    let Some(reading) = read_sample(&dialect, sample, complete, fixed.skip) else {
                        continue;
                    };
                    // One column is the reading of the first delimiter only: a file that
                    // no delimiter splits consistently is not one column of text but
                    // ragged, and its parse names the record that does not fit.
                    if reading.columns < 2 && delimiter != delimiters[0] {
                        continue;
                    }
                    let key = (
                        usize::MAX - reading.rows,
                        usize::MAX - reading.columns,
                        comment_rank,
                        reading.skip,
                        order,
                    );
                    let better = best.as_ref().is_none_or(|(k, _, _)| key < *k);
                    if better {
                        best = Some((key, dialect, reading));
                    }
                }
            }
        }
    }
    let (mut dialect, reading) = match best {
        Some((_, d, r)) => (d, Some(r)),
        // No candidate reads the sample consistently: the first one, and the parser
        // reports the record that does not fit.
        None => (
            CsvDialect {
                delimiter: delimiters[0],
                quote: quotes[0],
                escape: fixed.escape.unwrap_or(None),
                comment: comments[0],
                lenient,
                null: fixed.null.clone(),
                ..CsvDialect::default()
            },
            None,
        ),
    };
    dialect.skip = reading.as_ref().map_or(fixed.skip.unwrap_or(0), |r| r.skip);
    dialect.header = fixed.header.unwrap_or_else(|| {
        reading
            .as_ref()
            .is_none_or(|r| has_header(r, fixed.null.as_deref()))
    });
    dialect.line_ending = line_ending(sample).to_string();
    dialect.date_format = fixed.date_format.clone();
    dialect.timestamp_format = fixed.timestamp_format.clone();
    dialect
}

/// The sample's first byte that is not UTF-8, as `(line from 1, offset, byte)`; a
/// character cut off by the end of an incomplete sample is not an error.
fn not_utf8(sample: &[u8], complete: bool) -> Option<(u64, usize, u8)> {
    let e = std::str::from_utf8(sample).err()?;
    if e.error_len().is_none() && !complete {
        return None;
    }
    let at = e.valid_up_to();
    let line = 1 + memchr::memchr_iter(b'\n', &sample[..at]).count() as u64;
    Some((line, at, sample[at]))
}

/// Sniffs the dialect of CSV file `path` (at `abs_path`) from its first
/// [`SNIFF_BYTES`] bytes, with what `fixed` gives taken as given, and finds where its
/// header and data start.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::BadData`] when its start is not
/// UTF-8 (naming the line and byte).
pub fn csv_layout(path: &str, abs_path: &Path, fixed: &CsvOverrides) -> Result<CsvLayout> {
    let io = |error| Error::Io {
        path: path.to_string(),
        error,
    };
    let mut file = File::open(abs_path).map_err(io)?;
    let mut sample = Vec::with_capacity(SNIFF_BYTES);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut sample)
        .map_err(io)?;
    let complete = sample.len() < SNIFF_BYTES;
    let bom = if sample.starts_with(BOM) {
        BOM.len()
    } else {
        0
    };
    let body = &sample[bom..];
    if let Some((line, at, byte)) = not_utf8(body, complete) {
        return Err(Error::BadData {
            file: path.to_string(),
            message: format!(
                "line {line}: byte 0x{byte:02x} at offset {} is not UTF-8; pushdown reads UTF-8 CSV \
                 only (is the file Latin-1?): convert it first, e.g. iconv -f LATIN1 -t UTF-8",
                at + bom
            ),
        });
    }
    let tsv = abs_path.extension().is_some_and(|e| e == "tsv");
    let dialect = sniff(body, complete, fixed, tsv);
    // The header starts after the skipped lines (counted in the whole file, not the sample).
    file.seek(SeekFrom::Start(bom as u64)).map_err(io)?;
    let mut lines = BufReader::new(&mut file);
    let mut header_start = bom as u64;
    let mut line = Vec::new();
    for _ in 0..dialect.skip {
        line.clear();
        let n = lines.read_until(b'\n', &mut line).map_err(io)?;
        if n == 0 {
            break;
        }
        header_start += n as u64;
    }
    let data_start = if dialect.header {
        let mut reader = csv_reader(&dialect, lines);
        let mut record = csv::ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(true) => header_start + reader.position().byte(),
            Ok(false) => header_start,
            Err(e) => {
                return Err(Error::BadData {
                    file: path.to_string(),
                    message: format!("CSV header: {e}"),
                })
            }
        }
    } else {
        header_start
    };
    // The csv reader ends a CRLF record at its `\r`; the `\n` is not data.
    let mut next = [0u8; 1];
    file.seek(SeekFrom::Start(data_start)).map_err(io)?;
    let data_start = match file.read(&mut next).map_err(io)? {
        1 if next[0] == b'\n' && dialect.header => data_start + 1,
        _ => data_start,
    };
    Ok(CsvLayout {
        dialect,
        header_start,
        data_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sniffed(text: &str) -> CsvDialect {
        sniff(text.as_bytes(), true, &CsvOverrides::default(), false)
    }

    #[test]
    fn delimiters_quotes_and_escapes() {
        assert_eq!(sniffed("a;b\n1;2\n").delimiter, b';');
        assert_eq!(sniffed("a|b|c\n1|2|3\n").delimiter, b'|');
        let d = sniffed("a,b\n'x, y',1\n'z',2\n");
        assert_eq!((d.delimiter, d.quote), (b',', Some(b'\'')));
        let d = sniffed("a,b\n\"x\\\"y\",1\n\"z\",2\n");
        assert_eq!((d.quote, d.escape), (Some(b'"'), Some(b'\\')));
        assert_eq!(sniffed("a,b\n\"x\"\"y\",1\n").escape, None);
        // Quoted everywhere with `'`: `'` is the quote, though `"` reads alike.
        let d = sniffed("'a','b'\n'x','1'\n'z','2'\n");
        assert_eq!(d.quote, Some(b'\''));
        // More columns after a skipped line do not beat every line read alike.
        let d = sniffed("key,val\n1,\"{\"\"a\"\": 1, \"\"b\"\": [2, 3]}\"\n");
        assert_eq!((d.quote, d.skip, d.header), (Some(b'"'), 0, true));
    }

    #[test]
    fn headers_skipped_lines_and_comments() {
        let d = sniffed("1,2\n3,4\n");
        assert!(!d.header);
        let d = sniffed("name,city\nann,paris\n");
        assert!(d.header);
        let d = sniffed("x,n\n1,2\n");
        assert!(d.header);
        let d = sniffed("My report\nmade today\na,b\n1,2\n");
        assert_eq!((d.skip, d.header, d.comment), (2, true, None));
        let d = sniffed("My report\r\nmade today\r\na,b\r\n1,2\r\n");
        assert_eq!((d.skip, d.header), (2, true));
        // Not read as one column of `,`: the title lines are skipped.
        let d = sniffed("My report\nmade today\nid;name\n1;a\n2;b\n");
        assert_eq!((d.delimiter, d.skip), (b';', 2));
        let d = sniffed("a,b\n1,2\n# note\n3,4\n");
        assert_eq!((d.skip, d.comment), (0, Some(b'#')));
        // A comment line that happens to have as many fields is still a comment.
        let d = sniffed("a,b\n1,2\n# note, two\n3,4\n");
        assert_eq!((d.skip, d.comment), (0, Some(b'#')));
        assert_eq!(sniffed("a,b\r\n1,2\r\n").line_ending, "\r\n");
    }

    #[test]
    fn what_is_fixed_is_kept() {
        let fixed = CsvOverrides {
            delimiter: Some(b';'),
            header: Some(false),
            ..Default::default()
        };
        let d = sniff(b"a,b\n1,2\n", true, &fixed, false);
        assert_eq!((d.delimiter, d.header), (b';', false));
        let options = CsvOptions {
            all: CsvOverrides {
                delimiter: Some(b'|'),
                ..Default::default()
            },
            tables: BTreeMap::from([(
                "t".to_string(),
                CsvOverrides {
                    header: Some(true),
                    ..Default::default()
                },
            )]),
        };
        let t = options.for_table("t");
        assert_eq!((t.delimiter, t.header), (Some(b'|'), Some(true)));
        assert_eq!(options.for_table("u").header, None);
    }

    #[test]
    fn ragged_rows_are_not_a_dialect_unless_lenient() {
        let text = b"a,b,c\n1,2,3\n4,5\n";
        assert_eq!(
            sniff(text, true, &CsvOverrides::default(), false).delimiter,
            b','
        );
        let lenient = CsvOverrides {
            lenient: Some(true),
            ..Default::default()
        };
        let d = sniff(text, true, &lenient, false);
        assert_eq!((d.delimiter, d.header, d.lenient), (b',', true, true));
    }

    #[test]
    fn latin1_is_named() {
        assert_eq!(not_utf8(b"a,b\ncaf\xe9,1\n", true), Some((2, 7, 0xe9)));
        assert_eq!(not_utf8("a,b\ncafé".as_bytes(), true), None);
        assert_eq!(not_utf8(b"a,b\ncaf\xc3", false), None);
    }
}
