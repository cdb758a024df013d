//! Parsers: one Parquet row group or one CSV chunk into Arrow record batches.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema};
use bytes::{Buf, Bytes};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use parquet::arrow::ProjectionMask;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataReader};
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::reader::{ChunkReader, Length};
use pushdown_protocol::{ByteRange, CsvDialect, PageSelection};

/// The bytes of a file that a task was handed: a few segments at known offsets.
/// Reading outside them is an error, not a read of the file.
struct Segments {
    file_len: u64,
    parts: Vec<(u64, Bytes)>,
}

impl Segments {
    fn find(&self, start: u64, len: u64) -> parquet::errors::Result<Bytes> {
        for (offset, bytes) in &self.parts {
            let end = offset + bytes.len() as u64;
            if start >= *offset && start.saturating_add(len) <= end {
                let from = (start - offset) as usize;
                return Ok(bytes.slice(from..from + len as usize));
            }
        }
        Err(ParquetError::General(format!(
            "bytes {start}..{} were not handed to the task (a column chunk outside its row group?)",
            start.saturating_add(len)
        )))
    }
}

impl Length for Segments {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for Segments {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        for (offset, bytes) in &self.parts {
            let end = offset + bytes.len() as u64;
            if start >= *offset && start < end {
                return Ok(bytes.slice((start - offset) as usize..).reader());
            }
        }
        Err(ParquetError::General(format!(
            "byte {start} was not handed to the task"
        )))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length as u64)
    }
}

/// False when the chunk of column `name` has page encoding statistics and they show data
/// pages that are not dictionary-encoded (true without statistics: the caller's request
/// stands). The test the `parquet` crate documents for `page_encoding_stats_mask`.
fn dictionary_encoded(chunks: &[parquet::file::metadata::ColumnChunkMetaData], name: &str) -> bool {
    use parquet::basic::Encoding;
    let Some(chunk) = chunks.iter().find(|c| c.column_path().string() == name) else {
        return true;
    };
    match chunk.page_encoding_stats_mask() {
        None => true,
        Some(mask) => {
            chunk.dictionary_page_offset().is_some()
                && (mask.is_only(Encoding::PLAIN_DICTIONARY)
                    || mask.is_only(Encoding::RLE_DICTIONARY))
        }
    }
}

/// Decodes one row group.
///
/// `input` is the concatenation of `segments`: the first is the footer's metadata
/// (the Thrift `FileMetaData`, without the 8-byte length and magic trailer), the others
/// column chunks at their file offsets. `columns` are the names of the root columns to
/// read (the projection). Batches hold at most `batch_size` rows.
///
/// With `pages` (from the page index) the column chunk segments hold only the listed
/// pages and each chunk's dictionary page, and only the selected rows are decoded.
/// String columns named in `dictionary` come out as `Dictionary(Int32, Utf8)`, unless the
/// chunk's page encoding statistics show data pages that are not dictionary-encoded (the
/// reader would then build a dictionary by hashing every value). With
/// `narrow_decimals`, decimals of precision at most 18 stored as INT64 come out as
/// `Decimal64`, the stored values as they are, rather than widened to `Decimal128` (the
/// type SQL sees); [`crate::eval`] compares them with literals as they are and widens
/// them when the rows are selected.
///
/// # Errors
/// A message when the metadata or a page is malformed, the row group does not exist,
/// or a needed column chunk is not among the segments.
pub fn parse_parquet(
    input: Bytes,
    segments: &[ByteRange],
    file_len: u64,
    row_group: usize,
    columns: &[String],
    batch_size: usize,
    pages: Option<&PageSelection>,
    dictionary: &[String],
    narrow_decimals: bool,
) -> Result<Vec<RecordBatch>, String> {
    let mut parts = Vec::with_capacity(segments.len());
    let mut at = 0usize;
    for s in segments {
        let len = usize::try_from(s.len()).map_err(|_| "segment too large".to_string())?;
        if at + len > input.len() {
            return Err(format!(
                "input holds {} bytes, segments need more",
                input.len()
            ));
        }
        parts.push((s.start, input.slice(at..at + len)));
        at += len;
    }
    let Some((_, footer)) = parts.first().cloned() else {
        return Err("no footer segment".into());
    };
    let metadata =
        ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| format!("footer: {e}"))?;
    if row_group >= metadata.num_row_groups() {
        return Err(format!(
            "row group {row_group} does not exist ({} row groups)",
            metadata.num_row_groups()
        ));
    }
    // `ColumnChunkMetaData::byte_range` asserts on negative offsets; refuse them first.
    for col in metadata.row_group(row_group).columns() {
        let start = col
            .dictionary_page_offset()
            .unwrap_or(col.data_page_offset());
        if start < 0 || col.compressed_size() < 0 {
            return Err(format!(
                "column chunk {} has a negative offset or size",
                col.column_path()
            ));
        }
    }
    let mut selection = None;
    let metadata = match pages {
        None => metadata,
        Some(pages) => {
            selection = Some(RowSelection::from(
                pages
                    .rows
                    .iter()
                    .map(|r| {
                        let n = usize::try_from(r.rows).unwrap_or(usize::MAX);
                        if r.skip {
                            RowSelector::skip(n)
                        } else {
                            RowSelector::select(n)
                        }
                    })
                    .collect::<Vec<_>>(),
            ));
            with_offset_index(metadata, row_group, pages)?
        }
    };
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let metadata = Arc::new(metadata);
    let mut reader_metadata = ArrowReaderMetadata::try_new(metadata.clone(), options.clone())
        .map_err(|e| format!("schema: {e}"))?;
    let schema = reader_metadata.schema();
    let parquet_fields = reader_metadata.parquet_schema().root_schema().get_fields();
    let chunks = metadata.row_group(row_group).columns();
    let hint = |f: &Field, stored: Option<&parquet::schema::types::TypePtr>| -> Option<DataType> {
        match f.data_type() {
            DataType::Utf8
                if dictionary.contains(f.name()) && dictionary_encoded(chunks, f.name()) =>
            {
                Some(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            }
            DataType::Decimal128(p, s)
                if narrow_decimals
                    && *p <= 18
                    && stored.is_some_and(|t| {
                        t.is_primitive() && t.get_physical_type() == parquet::basic::Type::INT64
                    }) =>
            {
                Some(DataType::Decimal64(*p, *s))
            }
            _ => None,
        }
    };
    let hints: Vec<Option<DataType>> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| hint(f, parquet_fields.get(i)))
        .collect();
    if hints.iter().any(Option::is_some) {
        // String group keys stay dictionary-encoded, as Parquet stores them: no string is
        // copied, and the keys are what the group-by reads. INT64 decimals stay 64-bit.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .zip(hints)
            .map(|(f, hint)| {
                let field = f.as_ref().clone();
                match hint {
                    Some(t) => field.with_data_type(t),
                    None => field,
                }
            })
            .collect();
        let hinted = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        reader_metadata = ArrowReaderMetadata::try_new(metadata, options.with_schema(hinted))
            .map_err(|e| format!("schema: {e}"))?;
    }
    let roots: Vec<usize> = columns
        .iter()
        .map(|c| {
            reader_metadata
                .schema()
                .index_of(c)
                .map_err(|_| format!("column {c} is not in the file"))
        })
        .collect::<Result<_, _>>()?;
    let mask = ProjectionMask::roots(reader_metadata.parquet_schema(), roots);
    let source = Segments {
        file_len,
        parts: parts.split_off(1),
    };
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(source, reader_metadata)
        .with_row_groups(vec![row_group])
        .with_projection(mask)
        .with_batch_size(batch_size.max(1));
    if let Some(selection) = selection {
        builder = builder.with_row_selection(selection);
    }
    let reader = builder.build().map_err(|e| e.to_string())?;
    reader
        .map(|b| {
            crate::host::check_deadline();
            b.map_err(|e| e.to_string())
        })
        .collect()
}

/// `metadata` with the offset index of `row_group`'s listed column chunks, so the reader
/// fetches pages one by one and skips those outside the row selection.
fn with_offset_index(
    metadata: ParquetMetaData,
    row_group: usize,
    pages: &PageSelection,
) -> Result<ParquetMetaData, String> {
    let num_columns = metadata.row_group(row_group).num_columns();
    let mut chunks = vec![
        OffsetIndexMetaData {
            page_locations: Vec::new(),
            unencoded_byte_array_data_bytes: None,
        };
        num_columns
    ];
    for column in &pages.columns {
        let chunk = chunks.get_mut(column.leaf).ok_or_else(|| {
            format!(
                "page index names leaf column {}, not in the file",
                column.leaf
            )
        })?;
        chunk.page_locations = column
            .pages
            .iter()
            .map(|&[offset, size, first_row]| PageLocation {
                offset,
                compressed_page_size: i32::try_from(size).unwrap_or(i32::MAX),
                first_row_index: first_row,
            })
            .collect();
    }
    let mut index = vec![Vec::new(); metadata.num_row_groups()];
    index[row_group] = chunks;
    Ok(ParquetMetaDataBuilder::new_from_metadata(metadata)
        .set_offset_index(Some(index))
        .build())
}

/// Parses one CSV chunk of whole records (no header, no skipped lines) written in
/// `dialect`, with the given file schema.
///
/// Only the named `columns` are materialised. An empty field (or the dialect's NULL
/// string) is NULL unless `empty_is_null` is false and the dialect names no NULL string.
/// Batches hold at most `batch_size` rows. With [`CsvDialect::lenient`], a record with
/// fewer fields than the schema gets NULL for the missing ones; the second value returned
/// counts those records (0 otherwise).
///
/// # Errors
/// A message naming the line (counted from 1 at the start of the chunk) when a field
/// does not parse as its column's type, a record has the wrong number of fields, or the
/// chunk is not UTF-8.
pub fn parse_csv(
    input: Bytes,
    file_schema: &Schema,
    columns: &[String],
    batch_size: usize,
    empty_is_null: bool,
    dialect: &CsvDialect,
) -> Result<(Vec<RecordBatch>, u64), String> {
    let projection: Vec<usize> = columns
        .iter()
        .map(|c| {
            file_schema
                .index_of(c)
                .map_err(|_| format!("column {c} is not in the file"))
        })
        .collect::<Result<_, _>>()?;
    // Columns in the dialect's date or timestamp format are read as text, then converted.
    let formatted = |ty: &DataType| match ty {
        DataType::Date32 => dialect.date_format.as_deref(),
        DataType::Timestamp(_, None) => dialect.timestamp_format.as_deref(),
        _ => None,
    };
    let read_schema = Schema::new(
        file_schema
            .fields()
            .iter()
            .map(|f| match formatted(f.data_type()) {
                Some(_) => f.as_ref().clone().with_data_type(DataType::Utf8),
                None => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    );
    let conversions: Vec<Option<(&str, DataType)>> = projection
        .iter()
        .map(|&i| {
            let ty = file_schema.field(i).data_type();
            formatted(ty).map(|f| (f, ty.clone()))
        })
        .collect();
    let read_schema = Arc::new(read_schema);
    let mut builder = arrow_csv::ReaderBuilder::new(read_schema.clone());
    match &dialect.null {
        Some(null) => {
            let pattern = format!("^{}$", regex::escape(null));
            builder =
                builder.with_null_regex(regex::Regex::new(&pattern).map_err(|e| e.to_string())?);
        }
        // A pattern that matches no string: no field is NULL.
        None if !empty_is_null => {
            builder = builder
                .with_null_regex(regex::Regex::new(r"[^\x00-\x{10FFFF}]").expect("valid regex"));
        }
        None => {}
    }
    // arrow-csv always quotes; a byte that is never in text stands for "no quote".
    builder = builder.with_quote(dialect.quote.unwrap_or(0));
    if let Some(escape) = dialect.escape {
        builder = builder.with_escape(escape);
    }
    if let Some(comment) = dialect.comment {
        builder = builder.with_comment(comment);
    }
    let repaired = if dialect.lenient {
        short_records(&input, file_schema.fields().len(), dialect)
    } else {
        0
    };
    // Chunks without quotes (most machine-written CSV) take the fast reader; it leaves
    // to arrow-csv every chunk it would not read exactly as arrow-csv does.
    let nulls = match (&dialect.null, empty_is_null) {
        (Some(null), _) => crate::csv_fast::Nulls::Exact(null),
        (None, true) => crate::csv_fast::Nulls::Empty,
        (None, false) => crate::csv_fast::Nulls::Never,
    };
    let fast = if dialect.lenient || dialect.comment.is_some() {
        None
    } else {
        crate::csv_fast::read_unquoted(
            &input,
            &read_schema,
            &projection,
            batch_size.max(1),
            nulls,
            dialect.delimiter,
            dialect.quote.unwrap_or(0),
        )
    };
    let fast_or_slow: Box<dyn Iterator<Item = Result<RecordBatch, String>>> = match fast {
        Some(batches) => Box::new(batches.into_iter().map(Ok)),
        None => Box::new(
            builder
                .with_header(false)
                .with_delimiter(dialect.delimiter)
                .with_truncated_rows(dialect.lenient)
                .with_batch_size(batch_size.max(1))
                .with_projection(projection.clone())
                .build_buffered(Cursor::new(input))
                .map_err(|e| e.to_string())?
                .map(|batch| batch.map_err(|e| with_hint(e.to_string()))),
        ),
    };
    let mut batches = Vec::new();
    let mut first_line = 1;
    for batch in fast_or_slow {
        crate::host::check_deadline();
        let batch = batch?;
        let rows = batch.num_rows();
        batches.push(if conversions.iter().all(Option::is_none) {
            batch
        } else {
            let columns = batch
                .columns()
                .iter()
                .zip(&conversions)
                .map(|(c, conversion)| match conversion {
                    Some((format, ty)) => parse_formatted(c, format, ty, first_line),
                    None => Ok(c.clone()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let schema = Arc::new(
                file_schema
                    .project(&projection)
                    .map_err(|e| e.to_string())?,
            );
            RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?
        });
        first_line += rows;
    }
    Ok((batches, repaired))
}

/// A text column of dates or timestamps in `format` (chrono's `strftime` syntax) as
/// `ty` (Date32, or Timestamp in µs); `first_line` is the chunk line of its first row.
fn parse_formatted(
    column: &arrow_array::ArrayRef,
    format: &str,
    ty: &DataType,
    first_line: usize,
) -> Result<arrow_array::ArrayRef, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::{Date32Array, TimestampMicrosecondArray};
    let text = column.as_string::<i32>();
    let bad = |row: usize, value: &str, what: &str| {
        format!(
            "line {}: {value:?} is not a {what} in the format {format}",
            first_line + row
        )
    };
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
    match ty {
        DataType::Date32 => {
            let days = text
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|v| {
                        chrono::NaiveDate::parse_from_str(v.trim(), format)
                            .ok()
                            .and_then(|d| i32::try_from((d - epoch).num_days()).ok())
                            .ok_or_else(|| bad(row, v, "date"))
                    })
                    .transpose()
                })
                .collect::<Result<Date32Array, _>>()?;
            Ok(Arc::new(days))
        }
        _ => {
            let micros = text
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|v| {
                        chrono::NaiveDateTime::parse_from_str(v.trim(), format)
                            .map(|t| t.and_utc().timestamp_micros())
                            .map_err(|_| bad(row, v, "timestamp"))
                    })
                    .transpose()
                })
                .collect::<Result<TimestampMicrosecondArray, _>>()?;
            Ok(Arc::new(micros))
        }
    }
}

/// Records of `input` with fewer than `fields` fields (those `lenient` pads with NULL).
fn short_records(input: &[u8], fields: usize, dialect: &CsvDialect) -> u64 {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(dialect.delimiter)
        .quote(dialect.quote.unwrap_or(0))
        .escape(dialect.escape)
        .comment(dialect.comment)
        .from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut short = 0;
    while let Ok(true) = reader.read_byte_record(&mut record) {
        if record.len() < fields {
            short += 1;
        }
    }
    short
}

/// arrow-csv's message, with what to do about it when there is something to do.
fn with_hint(message: String) -> String {
    if message.contains("incorrect number of fields") {
        format!("{message} (--csv-lenient reads a record with missing fields with NULL for them)")
    } else if message.contains("invalid UTF-8") {
        format!(
            "{message}: the file is not UTF-8 (Latin-1 or another encoding?); convert it first, \
             e.g. iconv -f LATIN1 -t UTF-8"
        )
    } else {
        message
    }
}
