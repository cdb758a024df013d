//! Local storage: which tables a data directory holds, their schemas, and the units
//! (row groups, CSV chunks) a scan of each file is cut into.
//!
//! Every `DIR/<t>.parquet`, `DIR/<t>.csv` and folder `DIR/<t>/` of such files is table `<t>`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow_schema::{Schema, SchemaRef};
use parquet::file::metadata::ParquetMetaData;
use pushdown_footer::FooterError;
use pushdown_protocol::{ByteRange, CsvDialect, FileFormat, PluginRef, TaskUnit};

use crate::dialect::{csv_layout, csv_reader, CsvLayout, CsvOverrides};
use crate::error::{Error, Result};

/// Rows sampled to infer a CSV file's schema.
const CSV_INFER_RECORDS: usize = 10_000;

/// Where a table's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// The table's name.
    pub name: String,
    /// The file format.
    pub format: FileFormat,
    /// Paths relative to the data directory, sorted.
    pub files: Vec<String>,
    /// What the user sees: `lineitem.parquet` or `lineitem/`.
    pub origin: String,
}

/// A Parquet file's footer, read and decoded once.
#[derive(Debug)]
pub struct ParquetFooter {
    /// The decoded metadata (schema, row groups, column chunk statistics), without the page
    /// index: a task reads its row group's ([`pushdown_footer::row_group_metadata`]), so
    /// what the catalog holds grows with the row groups, not the pages.
    pub metadata: Arc<ParquetMetaData>,
    /// Where the Thrift `FileMetaData` sits in the file (a task whose one-row-group footer
    /// does not encode reads it from there).
    pub range: ByteRange,
}

/// One file of a table.
#[derive(Debug)]
pub struct FileInfo {
    /// Path relative to the data directory.
    pub path: String,
    /// Absolute path.
    pub abs_path: PathBuf,
    /// Size in bytes.
    pub len: u64,
    /// Its format.
    pub format: FileFormat,
    /// The units a scan is cut into: one per row group, or one per CSV chunk.
    pub units: Vec<TaskUnit>,
    /// The footer, for Parquet files.
    pub footer: Option<ParquetFooter>,
    /// The schema the file is read with.
    pub schema: SchemaRef,
    /// CSV only: the dialect the file is read with ([`crate::dialect::csv_layout`]).
    pub csv: Option<CsvDialect>,
}

/// A table: its schema and files.
#[derive(Debug)]
pub struct TableInfo {
    /// The table's name.
    pub name: String,
    /// The format of all its files.
    pub format: FileFormat,
    /// The schema of the first file; every other file must have the same.
    pub schema: SchemaRef,
    /// The files, sorted by path.
    pub files: Vec<Arc<FileInfo>>,
}

/// The format of a file of table `table`: a parser plugin's when `formats` names one for
/// the table (any extension), else by extension (`.parquet`, `.csv`).
fn format_of(
    path: &Path,
    table: &str,
    formats: &BTreeMap<String, PluginRef>,
) -> Option<FileFormat> {
    if let Some(parser) = formats.get(table) {
        return Some(FileFormat::Plugin(parser.clone()));
    }
    match path.extension()?.to_str()? {
        "parquet" => Some(FileFormat::Parquet),
        "csv" | "tsv" => Some(FileFormat::Csv),
        _ => None,
    }
}

/// Lists the tables of `root`. `formats` maps a table name to the parser plugin that reads
/// its files: `DIR/<t>.<any extension>` or every file of folder `DIR/<t>/`.
///
/// # Errors
/// [`Error::NotFound`] when `root` is not a readable directory; [`Error::DuplicateTable`]
/// when two sources claim one name; [`Error::BadData`] for a folder that mixes formats.
pub fn list_tables(
    root: &Path,
    formats: &BTreeMap<String, PluginRef>,
) -> Result<BTreeMap<String, TableSource>> {
    let not_found = |message: String| Error::NotFound {
        path: root.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(root).map_err(|e| not_found(e.to_string()))?;
    if !meta.is_dir() {
        return Err(not_found("not a directory".into()));
    }
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(|e| not_found(e.to_string()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut tables: BTreeMap<String, TableSource> = BTreeMap::new();
    for path in entries {
        let Some(file_name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let source = if path.is_dir() {
            let mut files: Vec<(String, FileFormat)> = std::fs::read_dir(&path)
                .map_err(|e| Error::NotFound {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter_map(|p| {
                    Some((
                        format!("{file_name}/{}", p.file_name()?.to_str()?),
                        format_of(&p, &file_name, formats)?,
                    ))
                })
                .collect();
            files.sort_by(|a, b| a.0.cmp(&b.0));
            let Some((_, format)) = files.first().cloned() else {
                continue;
            };
            if let Some((other, _)) = files.iter().find(|(_, f)| *f != format) {
                return Err(Error::BadData {
                    file: format!("{file_name}/"),
                    message: format!(
                        "mixes Parquet and CSV files ({other}); a table has one format"
                    ),
                });
            }
            TableSource {
                name: file_name.clone(),
                format,
                files: files.into_iter().map(|(p, _)| p).collect(),
                origin: format!("{file_name}/"),
            }
        } else if let Some((stem, format)) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|stem| Some((stem, format_of(&path, stem, formats)?)))
        {
            TableSource {
                name: stem.to_string(),
                format,
                files: vec![file_name.clone()],
                origin: file_name.clone(),
            }
        } else {
            continue;
        };
        if let Some(existing) = tables.get(&source.name) {
            return Err(Error::DuplicateTable {
                table: source.name.clone(),
                first: root.join(&existing.origin).display().to_string(),
                second: root.join(&source.origin).display().to_string(),
            });
        }
        tables.insert(source.name.clone(), source);
    }
    Ok(tables)
}

/// How long decoding one Parquet footer (with its page index) may take: 10 s. The footer
/// is at most [`pushdown_footer::MAX_FOOTER_BYTES`]; real ones decode in milliseconds.
pub const FOOTER_DEADLINE: Duration = Duration::from_secs(10);

/// Reads and decodes a Parquet footer within [`FOOTER_DEADLINE`]; see
/// [`read_parquet_footer_within`].
///
/// # Errors
/// As [`read_parquet_footer_within`].
pub fn read_parquet_footer(path: &str, abs_path: &Path) -> Result<(u64, ParquetFooter, Schema)> {
    read_parquet_footer_within(path, abs_path, FOOTER_DEADLINE)
}

/// Reads, decodes and checks a Parquet footer ([`pushdown_footer::decode_footer`]: magic
/// bytes, bounded length and schema depth, column chunk ranges, page index, Arrow schema)
/// on a thread of its own, waiting at most `deadline`. A footer that takes longer is
/// refused; its thread finishes in the background, bounded by the footer's size limit.
///
/// # Errors
/// [`Error::BadData`] naming the file when a check fails or the deadline passes;
/// [`Error::Io`] when the file cannot be read.
pub fn read_parquet_footer_within(
    path: &str,
    abs_path: &Path,
    deadline: Duration,
) -> Result<(u64, ParquetFooter, Schema)> {
    let bad = |message: String| Error::BadData {
        file: path.to_string(),
        message,
    };
    let io = |error| Error::Io {
        path: path.to_string(),
        error,
    };
    let file = File::open(abs_path).map_err(io)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("footer".into())
        .spawn(move || {
            let _ = tx.send(pushdown_footer::decode_footer(&file));
        })
        .map_err(io)?;
    let footer = match rx.recv_timeout(deadline) {
        Ok(Ok(footer)) => footer,
        Ok(Err(FooterError::Bad(m))) => return Err(bad(m)),
        Ok(Err(FooterError::Read(m))) => return Err(io(std::io::Error::other(m))),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(bad(format!(
                "footer decoding did not finish within its deadline of {deadline:?}; the file is refused"
            )))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(bad("invalid footer: the decoder gave up on it".into()))
        }
    };
    let parquet_footer = ParquetFooter {
        metadata: footer.metadata,
        range: footer.range,
    };
    Ok((footer.len, parquet_footer, footer.schema))
}

/// Infers a CSV file's schema from its header (or, without one, names `column0`,
/// `column1`, …) and first records (types as arrow-csv infers them: Int64, Float64,
/// Boolean, Date32, Timestamp or Utf8), or, with `all_varchar`, makes every column Utf8.
/// A file with nothing after its skipped lines is one Utf8 column `column0`, as DuckDB
/// reads an empty file.
///
/// # Errors
/// [`Error::BadData`] for a file that does not parse as CSV in `layout`'s dialect.
pub fn infer_csv_schema(
    path: &str,
    abs_path: &Path,
    all_varchar: bool,
    layout: &CsvLayout,
) -> Result<Schema> {
    let bad = |message: String| Error::BadData {
        file: path.to_string(),
        message,
    };
    let io = |error| Error::Io {
        path: path.to_string(),
        error,
    };
    let mut file = File::open(abs_path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if layout.header_start >= len {
        return Ok(Schema::new(vec![arrow_schema::Field::new(
            "column0",
            arrow_schema::DataType::Utf8,
            true,
        )]));
    }
    file.seek(SeekFrom::Start(layout.header_start))
        .map_err(io)?;
    let d = &layout.dialect;
    let schema = if all_varchar {
        let mut reader = csv_reader(d, file);
        let mut first = csv::StringRecord::new();
        reader
            .read_record(&mut first)
            .map_err(|e| bad(format!("CSV header: {e}")))?;
        let fields: Vec<_> = first
            .iter()
            .map(|n| arrow_schema::Field::new(n, arrow_schema::DataType::Utf8, true))
            .collect();
        Schema::new(fields)
    } else {
        let mut format = arrow_csv::reader::Format::default()
            .with_header(d.header)
            .with_delimiter(d.delimiter)
            .with_quote(d.quote.unwrap_or(0))
            .with_truncated_rows(d.lenient);
        if let Some(escape) = d.escape {
            format = format.with_escape(escape);
        }
        if let Some(comment) = d.comment {
            format = format.with_comment(comment);
        }
        if let Some(null) = &d.null {
            let pattern = format!("^{}$", regex::escape(null));
            format = format.with_null_regex(
                regex::Regex::new(&pattern).map_err(|e| bad(format!("--csv-null: {e}")))?,
            );
        }
        let (schema, _) = format
            .infer_schema(std::io::BufReader::new(&mut file), Some(CSV_INFER_RECORDS))
            .map_err(|e| bad(ragged_message(&e.to_string(), d.skip)))?;
        if d.date_format.is_some() || d.timestamp_format.is_some() {
            file.seek(SeekFrom::Start(layout.header_start))
                .map_err(io)?;
            with_formats(schema, &mut file, d)
        } else {
            schema
        }
    };
    if d.header {
        return Ok(unique_header_names(schema));
    }
    // No header: DuckDB's names, column0, column1, ...
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_name(format!("column{i}")))
        .collect();
    Ok(Schema::new(fields))
}

/// The inferred `schema` with the dialect's date and timestamp formats applied: a text,
/// integer or date column whose sampled values all parse with `--csv-dateformat` is
/// Date32 (and a date column that does not, text); likewise Timestamp(µs) for
/// `--csv-timestampformat`. `file` is at the header (or first record).
fn with_formats(schema: Schema, file: &mut File, d: &CsvDialect) -> Schema {
    use arrow_schema::{DataType, TimeUnit};
    let mut reader = csv_reader(d, file);
    let columns = schema.fields().len();
    // Per column: whether every value seen parses as a date / a timestamp, and whether one was seen.
    let mut dates = vec![(true, false); columns];
    let mut stamps = vec![(true, false); columns];
    let mut record = csv::StringRecord::new();
    if d.header && !matches!(reader.read_record(&mut record), Ok(true)) {
        return schema;
    }
    let mut seen = 0;
    while seen < CSV_INFER_RECORDS && matches!(reader.read_record(&mut record), Ok(true)) {
        seen += 1;
        for (j, value) in record.iter().enumerate().take(columns) {
            let value = value.trim();
            if value.is_empty() || Some(value) == d.null.as_deref() {
                continue;
            }
            if let Some(f) = &d.date_format {
                let ok = chrono::NaiveDate::parse_from_str(value, f).is_ok();
                dates[j] = (dates[j].0 && ok, true);
            }
            if let Some(f) = &d.timestamp_format {
                let ok = chrono::NaiveDateTime::parse_from_str(value, f).is_ok();
                stamps[j] = (stamps[j].0 && ok, true);
            }
        }
    }
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(j, f)| {
            let ty = f.data_type();
            let candidate = matches!(ty, DataType::Utf8 | DataType::Int64);
            let new = if d.date_format.is_some() && (candidate || *ty == DataType::Date32) {
                match dates[j] {
                    (true, true) => DataType::Date32,
                    _ if *ty == DataType::Date32 => DataType::Utf8,
                    _ => ty.clone(),
                }
            } else {
                ty.clone()
            };
            let new = if d.timestamp_format.is_some()
                && (matches!(
                    new,
                    DataType::Utf8 | DataType::Int64 | DataType::Timestamp(_, _)
                )) {
                match stamps[j] {
                    (true, true) => DataType::Timestamp(TimeUnit::Microsecond, None),
                    _ if matches!(new, DataType::Timestamp(_, _)) => DataType::Utf8,
                    _ => new,
                }
            } else {
                new
            };
            f.as_ref().clone().with_data_type(new)
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// arrow-csv's schema-inference error, said plainly when a record has another number of
/// fields than the first: `line 3: 2 fields where the first record has 3 (...)`, the line
/// counted in the file (`skipped` lines came before the part arrow-csv read).
fn ragged_message(message: &str, skipped: u64) -> String {
    // "... Expected 3 records, found 2 records at line 3"
    let number_after = |key: &str| -> Option<u64> {
        let rest = &message[message.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    match (
        message.contains("unequal lengths"),
        number_after("Expected "),
        number_after("found "),
        number_after("at line "),
    ) {
        (true, Some(expected), Some(found), Some(line)) => format!(
            "line {}: {found} fields where the first record has {expected} \
             (--csv-lenient reads a record with missing fields with NULL for them)",
            line + skipped
        ),
        _ => format!("CSV schema inference: {message}"),
    }
}

/// Header names made non-empty and unique as DuckDB's `read_csv` makes them (a leading
/// UTF-8 byte order mark dropped): an empty name
/// becomes `column<i>` (its 0-based position); from left to right, a name already used gets
/// the first free suffix `_1`, `_2`, …: `a,a,,b,a,a_1` → `a, a_1, column2, b, a_2, a_1_1`.
pub fn unique_header_names(schema: Schema) -> Schema {
    let named: Vec<String> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            // A UTF-8 byte order mark (Excel writes one) is not part of the first name.
            let name = f.name().trim_start_matches('\u{feff}');
            if name.trim().is_empty() {
                format!("column{i}")
            } else {
                name.to_string()
            }
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let fields: Vec<arrow_schema::Field> = schema
        .fields()
        .iter()
        .zip(named)
        .map(|(f, name)| {
            let name = if seen.insert(name.clone()) {
                name
            } else {
                let unique = (1..)
                    .map(|k| format!("{name}_{k}"))
                    .find(|n| !seen.contains(n))
                    .expect("an unused suffix");
                seen.insert(unique.clone());
                unique
            };
            f.as_ref().clone().with_name(name)
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// Cuts a CSV file into chunks of whole records of about `chunk_size` bytes, from the
/// first data record (`layout.data_start`: after the skipped lines and the header). Record
/// boundaries are newlines outside quotes (RFC 4180: a quote toggles quoting, `""` toggles
/// twice; the dialect's escape byte inside quotes takes the next byte literally; a comment
/// line is skipped whole), found by one pass over the file.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::BadData`] naming the byte offset
/// when a quoted field never closes.
pub fn csv_chunks(
    path: &str,
    abs_path: &Path,
    chunk_size: u64,
    layout: &CsvLayout,
) -> Result<Vec<ByteRange>> {
    let io = |error| Error::Io {
        path: path.to_string(),
        error,
    };
    let mut file = File::open(abs_path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if layout.data_start >= len {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(layout.data_start)).map_err(io)?;
    let d = &layout.dialect;
    // Bytes that change the state; a missing one stands in as another newline.
    let quote = d.quote.unwrap_or(b'\n');
    let escape = d.escape.filter(|_| d.quote.is_some()).unwrap_or(b'\n');
    let chunk_size = chunk_size.max(1);
    let mut chunks = Vec::new();
    let mut in_quotes = false;
    let mut quote_opened = 0u64;
    // Where the last quoted field's closing quote was: a quote right after it is a
    // doubled (literal) quote, and the field goes on.
    let mut closed_at = u64::MAX;
    // The next byte is taken literally (it follows an escape inside quotes).
    let mut escaped = false;
    let mut line_start = true;
    let mut in_comment = false;
    // The byte before the current buffer.
    let mut last = b'\n';
    let mut chunk_start = layout.data_start;
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = layout.data_start;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            if escaped {
                escaped = false;
                i += 1;
                continue;
            }
            if line_start {
                line_start = false;
                in_comment = d.comment == Some(buf[i]);
            }
            let found = if in_comment {
                memchr::memchr(b'\n', &buf[i..n])
            } else {
                memchr::memchr3(quote, b'\n', escape, &buf[i..n])
            };
            let Some(k) = found else {
                break;
            };
            let at = i + k;
            i = at + 1;
            let byte = buf[at];
            let position = offset + at as u64;
            if byte == b'\n' && !in_quotes {
                in_comment = false;
                line_start = true;
                let boundary = position + 1;
                if boundary - chunk_start >= chunk_size {
                    chunks.push(ByteRange {
                        start: chunk_start,
                        end: boundary,
                    });
                    chunk_start = boundary;
                }
            } else if byte == escape && in_quotes && Some(byte) == d.escape {
                escaped = true;
            } else if byte == quote && Some(byte) == d.quote {
                if in_quotes {
                    in_quotes = false;
                    closed_at = position;
                } else if position == closed_at.wrapping_add(1) {
                    // `""` inside a quoted field: still inside.
                    in_quotes = true;
                } else {
                    // As csv-core reads it: a quote opens a quoted field only at the
                    // field's start; elsewhere it is text.
                    let prev = if at > 0 { buf[at - 1] } else { last };
                    if prev == d.delimiter || prev == b'\n' || prev == b'\r' {
                        in_quotes = true;
                        quote_opened = position;
                    }
                }
            }
        }
        last = buf[n - 1];
        offset += n as u64;
    }
    if in_quotes {
        return Err(Error::BadData {
            file: path.to_string(),
            message: format!(
                "unterminated quote: the quoted field opened at byte {quote_opened} never closes"
            ),
        });
    }
    if chunk_start < len {
        chunks.push(ByteRange {
            start: chunk_start,
            end: len,
        });
    }
    Ok(chunks)
}

/// Cuts a file into chunks of whole lines of about `chunk_size` bytes for a parser plugin,
/// numbering each chunk's first line (from 1) in the same pass. Returns the file's length
/// and the units.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read.
pub fn line_chunks(path: &str, abs_path: &Path, chunk_size: u64) -> Result<(u64, Vec<TaskUnit>)> {
    let io = |error| Error::Io {
        path: path.to_string(),
        error,
    };
    let mut file = File::open(abs_path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let chunk_size = chunk_size.max(1);
    let mut units = Vec::new();
    let (mut chunk_start, mut chunk_line, mut line) = (0u64, 1u64, 1u64);
    let mut buf = vec![0u8; 4 << 20];
    let mut offset = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            let boundary = offset + i as u64 + 1;
            line += 1;
            if boundary - chunk_start >= chunk_size {
                units.push(TaskUnit::Lines {
                    range: ByteRange {
                        start: chunk_start,
                        end: boundary,
                    },
                    first_line: chunk_line,
                });
                (chunk_start, chunk_line) = (boundary, line);
            }
        }
        offset += n as u64;
    }
    if chunk_start < len {
        units.push(TaskUnit::Lines {
            range: ByteRange {
                start: chunk_start,
                end: len,
            },
            first_line: chunk_line,
        });
    }
    Ok((len, units))
}

/// Opens a table: reads every file's footer or header and cuts it into units.
///
/// # Errors
/// The errors of [`read_parquet_footer`], [`infer_csv_schema`] and [`csv_chunks`], and
/// [`Error::BadData`] when a file's schema differs from the first file's.
pub fn open_table(
    root: &Path,
    source: &TableSource,
    csv_chunk_size: u64,
    csv_all_varchar: bool,
    csv: &CsvOverrides,
    parser_schemas: &BTreeMap<String, SchemaRef>,
) -> Result<TableInfo> {
    let mut files = Vec::with_capacity(source.files.len());
    let mut table_schema: Option<SchemaRef> = None;
    for path in &source.files {
        let abs_path = root.join(path);
        let mut csv_dialect = None;
        let (len, units, footer, schema) = match &source.format {
            FileFormat::Parquet => {
                let (len, footer, schema) = read_parquet_footer(path, &abs_path)?;
                let units = (0..footer.metadata.num_row_groups())
                    .map(TaskUnit::RowGroup)
                    .collect();
                (len, units, Some(footer), schema)
            }
            FileFormat::Csv => {
                let layout = csv_layout(path, &abs_path, csv)?;
                let schema = match &table_schema {
                    Some(s) => s.as_ref().clone(),
                    None => infer_csv_schema(path, &abs_path, csv_all_varchar, &layout)?,
                };
                let len = std::fs::metadata(&abs_path)
                    .map_err(|error| Error::Io {
                        path: path.clone(),
                        error,
                    })?
                    .len();
                let units = csv_chunks(path, &abs_path, csv_chunk_size, &layout)?
                    .into_iter()
                    .map(TaskUnit::CsvChunk)
                    .collect();
                csv_dialect = Some(layout.dialect);
                (len, units, None, schema)
            }
            FileFormat::Plugin(parser) => {
                let schema = parser_schemas.get(&parser.sha256).ok_or_else(|| {
                    Error::Internal(format!("no schema for parser {}", parser.name))
                })?;
                let (len, units) = line_chunks(path, &abs_path, csv_chunk_size)?;
                (len, units, None, schema.as_ref().clone())
            }
        };
        let info = FileInfo {
            path: path.clone(),
            abs_path,
            len,
            format: source.format.clone(),
            units,
            footer,
            schema: Arc::new(schema),
            csv: csv_dialect,
        };
        match &table_schema {
            None => table_schema = Some(info.schema.clone()),
            Some(s) if s.fields() != info.schema.fields() => {
                return Err(Error::BadData {
                    file: path.clone(),
                    message: format!(
                        "its schema differs from the first file of table {}",
                        source.name
                    ),
                });
            }
            Some(_) => {}
        }
        files.push(Arc::new(info));
    }
    Ok(TableInfo {
        name: source.name.clone(),
        format: source.format.clone(),
        schema: table_schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks_of(text: &[u8], chunk_size: u64) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, text).unwrap();
        let layout = csv_layout("t.csv", &path, &CsvOverrides::default()).unwrap();
        csv_chunks("t.csv", &path, chunk_size, &layout)
            .unwrap()
            .iter()
            .map(|r| String::from_utf8(text[r.start as usize..r.end as usize].to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn chunks_hold_whole_records_after_the_header() {
        let text = b"a,b\n1,2\n3,4\n5,6\n";
        assert_eq!(chunks_of(text, 1), ["1,2\n", "3,4\n", "5,6\n"]);
        assert_eq!(chunks_of(text, 5), ["1,2\n3,4\n", "5,6\n"]);
        assert_eq!(chunks_of(text, 1 << 20), ["1,2\n3,4\n5,6\n"]);
    }

    #[test]
    fn newlines_inside_quotes_are_not_boundaries() {
        let text = b"a,b\n\"x\ny\",1\n\"\"\"q\"\"\n\",2\nlast,3";
        assert_eq!(
            chunks_of(text, 1),
            ["\"x\ny\",1\n", "\"\"\"q\"\"\n\",2\n", "last,3"]
        );
    }

    #[test]
    fn quotes_open_only_at_a_field_start_and_comments_and_escapes_are_skipped() {
        // `5"7` is text; the comment's quote opens nothing; `\"` inside quotes ends nothing.
        let text = b"a,b\n5\"7,1\n# it's \"odd\n\"x\\\"\ny\",2\n3,4\n";
        assert_eq!(
            chunks_of(text, 1),
            ["5\"7,1\n", "# it's \"odd\n", "\"x\\\"\ny\",2\n", "3,4\n"]
        );
    }

    #[test]
    fn header_only_and_crlf() {
        assert!(chunks_of(b"a,b\n", 1).is_empty());
        assert!(chunks_of(b"a,b", 1).is_empty());
        assert_eq!(
            chunks_of(b"a,b\r\n1,2\r\n3,4\r\n", 1),
            ["1,2\r\n", "3,4\r\n"]
        );
    }

    #[test]
    fn tables_are_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/1.csv"), "x\n1\n").unwrap();
        std::fs::write(dir.path().join("b/2.csv"), "x\n2\n").unwrap();
        let tables = list_tables(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(tables.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(tables["b"].files, ["b/1.csv", "b/2.csv"]);
        std::fs::write(dir.path().join("b.parquet"), "x").unwrap();
        let err = list_tables(dir.path(), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("table b is defined twice")
                && err.contains("b/")
                && err.contains("b.parquet"),
            "{err}"
        );
    }
}
