//! Untrusted Parquet footers on the host (the storage node), outside the sandbox:
//!
//! * [`decode_footer`]: the magic bytes, a bounded footer length, the Thrift `FileMetaData`
//!   decoded by arrow-rs, every column chunk's byte range checked against the data section,
//!   and the Arrow schema;
//! * [`row_group_metadata`]: one row group's metadata with its page index, read per task
//!   (a catalog holding every row group's page index would grow with the file);
//! * [`prune`]: row groups and pages ruled out by statistics, Bloom filters and page index;
//! * [`plan`]: the byte segments of the pages a task reads.
//!
//! Everything here reads bytes a stranger may have written, so every function turns a
//! decoder panic into an error or a conservative answer ([`catch_quietly`]), and `fuzz`
//! holds the entry points of the cargo-fuzz targets `parquet_footer` and `page_plan`
//! (`fuzz/`). The caller bounds time: the storage node decodes a footer on a thread of its
//! own and gives up on it after a deadline.
//!
//! Formats: [Parquet file format](https://parquet.apache.org/docs/file-format/),
//! [page index](https://github.com/apache/parquet-format/blob/master/PageIndex.md).
#![warn(missing_docs)]

use std::sync::Arc;

use arrow_schema::Schema;
use bytes::Bytes;
use parquet::arrow::parquet_to_arrow_schema;
use parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataReader,
    ParquetMetaDataWriter,
};
use parquet::file::reader::ChunkReader;
use pushdown_protocol::ByteRange;

pub mod fuzz;
pub mod plan;
pub mod prune;

/// The largest footer (Thrift `FileMetaData`) decoded: 64 MiB. Footers of real files are
/// kilobytes to a few megabytes; the decoded metadata takes a few times the footer's size.
pub const MAX_FOOTER_BYTES: u64 = 64 << 20;

/// The deepest schema (nested groups) accepted: 64 levels. arrow-rs builds the schema tree
/// recursively, so a footer of nested single-child groups could exhaust the stack; the
/// depth is checked on the flat Thrift list before arrow-rs sees it.
pub const MAX_SCHEMA_DEPTH: usize = 64;

/// A Parquet file's footer, decoded and checked.
#[derive(Debug)]
pub struct Footer {
    /// The decoded metadata, without the page index ([`row_group_metadata`] reads one row
    /// group's).
    pub metadata: Arc<ParquetMetaData>,
    /// The raw Thrift `FileMetaData` bytes (without the length and magic trailer).
    pub raw: Bytes,
    /// Where `raw` sits in the file.
    pub range: ByteRange,
    /// The file's schema in Arrow terms.
    pub schema: Schema,
    /// The file's length in bytes.
    pub len: u64,
}

/// Why a footer was refused.
#[derive(Debug)]
pub enum FooterError {
    /// The bytes are not a valid, supported Parquet footer (the message says why).
    Bad(String),
    /// The file could not be read.
    Read(String),
}

impl std::fmt::Display for FooterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FooterError::Bad(m) | FooterError::Read(m) => f.write_str(m),
        }
    }
}

/// Reads, decodes and checks the footer of the Parquet file `file` (a `std::fs::File`, or
/// `Bytes` holding a whole file).
///
/// Checks, in order: the file is at least 12 bytes; it starts and ends with `PAR1` (an
/// encrypted footer, `PARE`, is refused); the footer length is at most
/// [`MAX_FOOTER_BYTES`] and fits the file; the schema is at most [`MAX_SCHEMA_DEPTH`] deep;
/// the metadata decodes; every column chunk's offsets are non-negative and its bytes lie
/// before the footer; the schema converts to Arrow. The page index is not read: it takes
/// more memory than the rest of the metadata (59 % of 821 KB for TPC-H SF 1 `lineitem`), so
/// [`row_group_metadata`] reads one row group's when a task can use it.
///
/// # Errors
/// [`FooterError::Bad`] with a one-line reason for any failed check (a panic in the
/// decoder included); [`FooterError::Read`] when `file` cannot be read.
pub fn decode_footer<R: ChunkReader>(file: &R) -> Result<Footer, FooterError> {
    let bad = |m: String| FooterError::Bad(m);
    let read = |start: u64, n: usize| {
        file.get_bytes(start, n)
            .map_err(|e| FooterError::Read(e.to_string()))
            .and_then(|b| {
                if b.len() == n {
                    Ok(b)
                } else {
                    Err(FooterError::Read(format!(
                        "short read: {} of {n} bytes at offset {start}",
                        b.len()
                    )))
                }
            })
    };
    let len = file.len();
    if len < 12 {
        return Err(bad(format!(
            "not a Parquet file: {len} bytes, too short for a footer"
        )));
    }
    let tail = read(len - 8, 8)?;
    let head = read(0, 4)?;
    if &tail[4..] == b"PARE" {
        return Err(bad("encrypted Parquet footers are not supported".into()));
    }
    if &tail[4..] != b"PAR1" || &head[..] != b"PAR1" {
        return Err(bad(
            "not a Parquet file: the PAR1 magic bytes are missing".into()
        ));
    }
    let metadata_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if metadata_len > MAX_FOOTER_BYTES {
        return Err(bad(format!(
            "footer of {metadata_len} bytes exceeds the limit of {MAX_FOOTER_BYTES} bytes"
        )));
    }
    if metadata_len + 12 > len {
        return Err(bad(format!(
            "footer length {metadata_len} exceeds the file's {len} bytes (truncated file?)"
        )));
    }
    let start = len - 8 - metadata_len;
    let raw = read(start, metadata_len as usize)?;
    match schema_depth(&raw) {
        Ok(depth) if depth > MAX_SCHEMA_DEPTH => {
            return Err(bad(format!(
                "schema nested more than {MAX_SCHEMA_DEPTH} levels deep (the limit)"
            )))
        }
        Ok(_) => {}
        Err(message) => return Err(bad(format!("invalid footer: {message}"))),
    }
    // Page encoding statistics in full, not reduced to a mask: a task's footer
    // ([`row_group_footer`]) re-encodes them, and the sandbox reads from them whether a
    // chunk is all dictionary-encoded (the mask does not encode back).
    let options =
        parquet::file::metadata::ParquetMetaDataOptions::new().with_encoding_stats_as_mask(false);
    let metadata = match catch_quietly(|| {
        ParquetMetaDataReader::decode_metadata_with_options(&raw, Some(&options))
    }) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(bad(format!("invalid footer: {e}"))),
        Err(_) => return Err(bad("invalid footer: the decoder gave up on it".into())),
    };
    for (i, rg) in metadata.row_groups().iter().enumerate() {
        for col in rg.columns() {
            let chunk_start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            if chunk_start < 0 || col.compressed_size() < 0 {
                return Err(bad(format!(
                    "row group {i}: column chunk {} has a negative offset or size (corrupt footer)",
                    col.column_path()
                )));
            }
            let (s, l) = col.byte_range();
            if s.checked_add(l).is_none_or(|end| end > start) {
                return Err(bad(format!(
                    "row group {i}: column chunk {} claims bytes {s}..{} beyond the data section (truncated or corrupt file)",
                    col.column_path(),
                    s.saturating_add(l)
                )));
            }
        }
    }
    let schema = match catch_quietly(std::panic::AssertUnwindSafe(|| {
        parquet_to_arrow_schema(metadata.file_metadata().schema_descr(), None)
    })) {
        Ok(Ok(schema)) => schema,
        Ok(Err(e)) => return Err(bad(format!("schema not representable in Arrow: {e}"))),
        Err(_) => return Err(bad("schema not representable in Arrow".into())),
    };
    Ok(Footer {
        metadata: Arc::new(metadata),
        raw,
        range: ByteRange {
            start,
            end: len - 8,
        },
        schema,
        len,
    })
}

/// The metadata of row group `rg` alone (then at index 0), with that row group's page
/// index (column and offset index) read from `file` when `file` is given and the file has
/// a readable one; `None` when `rg` is out of range. Also returns the page index bytes
/// read. A missing, unreadable or corrupt page index is left out (page pruning is then off
/// for the task), and a decoder panic is caught.
///
/// Format: [page index](https://github.com/apache/parquet-format/blob/master/PageIndex.md);
/// the index of one row group's column chunks is one contiguous range per kind.
pub fn row_group_metadata<R: ChunkReader>(
    metadata: &ParquetMetaData,
    rg: usize,
    file: Option<&R>,
) -> Option<(ParquetMetaData, u64)> {
    let row_group = metadata.row_groups().get(rg)?.clone();
    let one = ParquetMetaDataBuilder::new(metadata.file_metadata().clone())
        .add_row_group(row_group)
        .build();
    let Some(file) = file else {
        return Some((one, 0));
    };
    let index_bytes: i64 = one.row_groups()[0]
        .columns()
        .iter()
        .map(|c| {
            c.column_index_length().unwrap_or(0).max(0) as i64
                + c.offset_index_length().unwrap_or(0).max(0) as i64
        })
        .sum();
    if index_bytes == 0 {
        return Some((one, 0));
    }
    let with_index = catch_quietly(std::panic::AssertUnwindSafe(|| {
        match page_index_relocated(&one, file) {
            Some(Ok((relocated, bytes))) => {
                let mut reader = ParquetMetaDataReader::new_with_metadata(relocated)
                    .with_page_index_policy(PageIndexPolicy::Optional);
                reader.read_page_indexes(&bytes)?;
                let read = reader.finish()?;
                // The row group's own offsets again, with the index read at the new ones.
                Ok(one
                    .clone()
                    .into_builder()
                    .set_column_index(read.column_index().cloned())
                    .set_offset_index(read.offset_index().cloned())
                    .build())
            }
            Some(Err(e)) => Err(e),
            None => {
                let mut reader = ParquetMetaDataReader::new_with_metadata(one.clone())
                    .with_page_index_policy(PageIndexPolicy::Optional);
                reader.read_page_indexes(file)?;
                reader.finish()
            }
        }
    }));
    Some(match with_index {
        Ok(Ok(m)) if m.offset_index().is_some() => (m, index_bytes as u64),
        _ => (one, 0),
    })
}

/// The page index of `one`'s single row group read as two ranges of `file`, its column
/// indexes and its offset indexes, and `one` with the chunks' index offsets moved to
/// where those ranges sit in the returned buffer (column indexes first).
///
/// arrow-rs reads the page index as one range, from the first index of the row group to
/// its last. Writers put every row group's column indexes before all offset indexes, so
/// that range spans the indexes of about half the file's row groups: 0.87 MB per task
/// for 3.5 KB of index in a TPC-H SF 10 lineitem of 489 row groups. `None` when either
/// kind is missing or the two ranges overlap (the caller then reads arrow-rs's range).
///
/// # Errors
/// When `file` cannot give the bytes.
fn page_index_relocated<R: ChunkReader>(
    one: &ParquetMetaData,
    file: &R,
) -> Option<parquet::errors::Result<(ParquetMetaData, Bytes)>> {
    let columns = one.row_groups().first()?.columns();
    let span =
        |part: &dyn Fn(&parquet::file::metadata::ColumnChunkMetaData) -> Option<(i64, i32)>| {
            columns
                .iter()
                .try_fold(None::<std::ops::Range<u64>>, |acc, c| {
                    let (offset, len) = part(c)?;
                    let start = u64::try_from(offset).ok()?;
                    let end = start.checked_add(u64::try_from(len).ok()?)?;
                    Some(Some(match acc {
                        Some(r) => r.start.min(start)..r.end.max(end),
                        None => start..end,
                    }))
                })?
        };
    let column = span(&|c| Some((c.column_index_offset()?, c.column_index_length()?)))?;
    let offset = span(&|c| Some((c.offset_index_offset()?, c.offset_index_length()?)))?;
    if column.start < offset.end && offset.start < column.end {
        return None;
    }
    let read = |r: &std::ops::Range<u64>| file.get_bytes(r.start, (r.end - r.start) as usize);
    let (column_bytes, offset_bytes) = match (read(&column), read(&offset)) {
        (Ok(c), Ok(o)) => (c, o),
        (Err(e), _) | (_, Err(e)) => return Some(Err(e)),
    };
    let shift = column_bytes.len() as u64;
    let row_group = one.row_groups()[0].clone();
    let moved = row_group
        .columns()
        .iter()
        .map(|c| {
            let mut b = c.clone().into_builder();
            if let Some(o) = c.column_index_offset() {
                b = b.set_column_index_offset(Some(o - column.start as i64));
            }
            if let Some(o) = c.offset_index_offset() {
                b = b.set_offset_index_offset(Some(o - offset.start as i64 + shift as i64));
            }
            b.build()
        })
        .collect::<parquet::errors::Result<Vec<_>>>();
    let moved = match moved {
        Ok(m) => m,
        Err(e) => return Some(Err(e)),
    };
    let row_group = match row_group.into_builder().set_column_metadata(moved).build() {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let relocated = ParquetMetaDataBuilder::new(one.file_metadata().clone())
        .add_row_group(row_group)
        .build();
    // arrow-rs wants the index to end before the end of its "file" (a footer follows it
    // in a real one): eight bytes of padding stand for the footer's length and magic.
    let mut buffer = Vec::with_capacity(column_bytes.len() + offset_bytes.len() + 8);
    buffer.extend_from_slice(&column_bytes);
    buffer.extend_from_slice(&offset_bytes);
    buffer.extend_from_slice(&[0; 8]);
    Some(Ok((relocated, Bytes::from(buffer))))
}

/// The footer of a task on row group `rg`: the file's metadata with only that row group
/// (then at index 0), as the Thrift `FileMetaData` without the length and magic trailer.
/// `None` when `rg` is out of range or the metadata does not encode (a panic included).
pub fn row_group_footer(metadata: &ParquetMetaData, rg: usize) -> Option<Vec<u8>> {
    let row_group = metadata.row_groups().get(rg)?.clone();
    catch_quietly(std::panic::AssertUnwindSafe(|| {
        let one = ParquetMetaDataBuilder::new(metadata.file_metadata().clone())
            .add_row_group(row_group)
            .build();
        let mut bytes = Vec::new();
        ParquetMetaDataWriter::new(&mut bytes, &one).finish().ok()?;
        bytes.truncate(bytes.len().checked_sub(8)?);
        Some(bytes)
    }))
    .ok()
    .flatten()
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err` without the panic message on stderr (the caller
/// reports it as an error of its own). Other threads' panics print as before.
pub fn catch_quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(f);
    QUIET.with(|q| q.set(false));
    result
}

/// The nesting depth of the schema in a Thrift compact-protocol `FileMetaData`, read from
/// its flat `schema` list (field 2: `SchemaElement`s, each with an optional
/// `num_children`, field 5) without recursion. Also refuses an element that claims more
/// children than elements follow it (arrow-rs would reserve memory for them all).
///
/// # Errors
/// A one-line reason when the bytes up to the end of the schema list do not decode.
///
/// Source: [Thrift compact protocol](https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md),
/// `parquet.thrift` (`FileMetaData`, `SchemaElement`).
fn schema_depth(raw: &[u8]) -> Result<usize, String> {
    let undecodable = || "the schema list does not decode".to_string();
    let mut r = thrift::Compact::new(raw);
    let mut last_field = 0i16;
    loop {
        let (kind, id) = r.field_header(&mut last_field).ok_or_else(undecodable)?;
        if kind == thrift::STOP {
            // No schema list at all: arrow-rs reports the missing field.
            return Ok(0);
        }
        if id == 2 && kind == thrift::LIST {
            break;
        }
        r.skip(kind, 0).ok_or_else(undecodable)?;
    }
    let (elem_kind, count) = r.list_header().ok_or_else(undecodable)?;
    if elem_kind != thrift::STRUCT {
        return Err(undecodable());
    }
    r.fits(count).ok_or_else(undecodable)?;
    // Open groups as a stack of remaining child counts; depth is its height.
    let mut open: Vec<u64> = Vec::new();
    let mut deepest = 0usize;
    for index in 0..count {
        let mut children = 0u64;
        let mut last = 0i16;
        loop {
            let (kind, id) = r.field_header(&mut last).ok_or_else(undecodable)?;
            if kind == thrift::STOP {
                break;
            }
            if id == 5 && kind == thrift::I32 {
                children = u64::try_from(r.zigzag_i32().ok_or_else(undecodable)?).unwrap_or(0);
            } else {
                r.skip(kind, 0).ok_or_else(undecodable)?;
            }
        }
        let after = count - index - 1;
        if children > after {
            return Err(format!(
                "schema element {index} claims {children} children, but only {after} elements follow it"
            ));
        }
        // This element fills a slot of the innermost open group.
        while let Some(top) = open.last_mut() {
            if *top == 0 {
                open.pop();
            } else {
                *top -= 1;
                break;
            }
        }
        if children > 0 {
            open.push(children);
            deepest = deepest.max(open.len());
        }
        if open.len() > MAX_SCHEMA_DEPTH {
            return Ok(open.len());
        }
    }
    Ok(deepest)
}

/// Just enough of the Thrift compact protocol to walk a struct without building it.
mod thrift {
    pub const STOP: u8 = 0;
    pub const I32: u8 = 5;
    pub const LIST: u8 = 9;
    pub const STRUCT: u8 = 12;
    /// Nesting beyond which a skipped value is refused (as arrow-rs's own skip depth).
    const MAX_SKIP_DEPTH: u32 = 64;

    pub struct Compact<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Compact<'a> {
        pub fn new(bytes: &'a [u8]) -> Self {
            Compact { bytes, at: 0 }
        }

        fn byte(&mut self) -> Option<u8> {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            Some(b)
        }

        fn varint(&mut self) -> Option<u64> {
            let mut value = 0u64;
            for shift in (0..70).step_by(7) {
                let b = self.byte()?;
                value |= u64::from(b & 0x7f).checked_shl(shift)?;
                if b & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }

        pub fn zigzag_i32(&mut self) -> Option<i32> {
            let v = u32::try_from(self.varint()?).ok()?;
            Some(((v >> 1) as i32) ^ -((v & 1) as i32))
        }

        /// The next field's type and id (`STOP` ends a struct).
        pub fn field_header(&mut self, last: &mut i16) -> Option<(u8, i16)> {
            let b = self.byte()?;
            let kind = b & 0x0f;
            if kind == STOP {
                return Some((STOP, 0));
            }
            let delta = b >> 4;
            let id = if delta == 0 {
                let v = u32::try_from(self.varint()?).ok()?;
                i16::try_from(((v >> 1) as i32) ^ -((v & 1) as i32)).ok()?
            } else {
                last.checked_add(i16::from(delta))?
            };
            *last = id;
            Some((kind, id))
        }

        /// A list or set header: element type and count.
        pub fn list_header(&mut self) -> Option<(u8, u64)> {
            let b = self.byte()?;
            let count = match b >> 4 {
                15 => self.varint()?,
                n => u64::from(n),
            };
            Some((b & 0x0f, count))
        }

        /// Skips a value of compact type `kind`.
        pub fn skip(&mut self, kind: u8, depth: u32) -> Option<()> {
            if depth > MAX_SKIP_DEPTH {
                return None;
            }
            match kind {
                1 | 2 => Some(()), // booleans live in the field header
                3 => self.byte().map(|_| ()),
                4..=6 => self.varint().map(|_| ()),
                7 => self.advance(8),
                8 => {
                    let n = usize::try_from(self.varint()?).ok()?;
                    self.advance(n)
                }
                9 | 10 => {
                    let (elem, count) = self.list_header()?;
                    self.fits(count)?;
                    for _ in 0..count {
                        self.skip_element(elem, depth + 1)?;
                    }
                    Some(())
                }
                11 => {
                    let count = self.varint()?;
                    if count == 0 {
                        return Some(());
                    }
                    let kinds = self.byte()?;
                    self.fits(count)?;
                    for _ in 0..count {
                        self.skip_element(kinds >> 4, depth + 1)?;
                        self.skip_element(kinds & 0x0f, depth + 1)?;
                    }
                    Some(())
                }
                12 => {
                    let mut last = 0i16;
                    loop {
                        let (k, _) = self.field_header(&mut last)?;
                        if k == STOP {
                            return Some(());
                        }
                        self.skip(k, depth + 1)?;
                    }
                }
                _ => None,
            }
        }

        /// Skips an element of a list, set or map: there a boolean takes a byte of its own.
        fn skip_element(&mut self, kind: u8, depth: u32) -> Option<()> {
            match kind {
                1 | 2 => self.advance(1),
                _ => self.skip(kind, depth),
            }
        }

        /// `Some` when `count` elements of at least a byte each can fit in what is left.
        pub fn fits(&self, count: u64) -> Option<()> {
            (count <= (self.bytes.len() - self.at) as u64).then_some(())
        }

        fn advance(&mut self, n: usize) -> Option<()> {
            let end = self.at.checked_add(n)?;
            (end <= self.bytes.len()).then(|| self.at = end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_depth_counts_nested_groups() {
        // FileMetaData { 2: list<SchemaElement> [root(children 1), group(children 1), leaf] }
        let element = |children: Option<u8>| {
            let mut e = vec![0x48, 1, b'a']; // field 4 (name), binary "a"
            if let Some(c) = children {
                e.extend([0x15, c * 2]); // field 5 (num_children), i32 zigzag
            }
            e.push(0);
            e
        };
        let mut raw = vec![0x15, 2, 0x19, 0x3c]; // version 1; field 2: list of 3 structs
        raw.extend(element(Some(1)));
        raw.extend(element(Some(1)));
        raw.extend(element(None));
        raw.push(0);
        assert_eq!(schema_depth(&raw), Ok(2));
        assert!(schema_depth(&raw[..6]).is_err());
    }
}
