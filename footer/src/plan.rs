//! Page planning: which bytes of a row group a task reads once the page index has ruled
//! out some of its rows.
//!
//! Source: [page index](https://github.com/apache/parquet-format/blob/master/PageIndex.md)
//! (`OffsetIndex.page_locations`: offset, compressed size and first row of each data page).

use parquet::arrow::arrow_reader::RowSelection;
use parquet::file::metadata::ParquetMetaData;
use pushdown_protocol::{ByteRange, ColumnPages, PageSelection, RowRun};

use crate::prune::page_rows;

/// The request's page selection, the byte segments to read (each projected column chunk's
/// dictionary page and the data pages holding selected rows, adjacent ones merged) and the
/// number of data pages skipped. `None` when an offset index is missing or does not fit its
/// column chunk: then whole column chunks are read.
///
/// `leaves` are the projected leaf columns; `selection` covers the row group's rows.
pub fn page_segments(
    metadata: &ParquetMetaData,
    rg: usize,
    leaves: &[usize],
    selection: &RowSelection,
) -> Option<(PageSelection, Vec<ByteRange>, u64)> {
    let row_group = metadata.row_groups().get(rg)?;
    let num_rows = usize::try_from(row_group.num_rows()).ok()?;
    let offset_index = metadata.offset_index()?.get(rg)?;
    let mut selected = Vec::new();
    let mut at = 0usize;
    for run in selection.iter() {
        if !run.skip {
            selected.push(at..at.checked_add(run.row_count)?);
        }
        at = at.checked_add(run.row_count)?;
    }
    let mut ranges = Vec::new();
    let mut columns = Vec::new();
    let mut skipped = 0u64;
    for &leaf in leaves {
        let locations = offset_index.get(leaf)?.page_locations();
        let rows = page_rows(locations, num_rows)?;
        let (chunk_start, chunk_len) = row_group.columns().get(leaf)?.byte_range();
        let chunk_end = chunk_start.checked_add(chunk_len)?;
        let first = u64::try_from(locations.first()?.offset).ok()?;
        if first < chunk_start {
            return None;
        }
        if first > chunk_start {
            // The dictionary page, read whenever any data page is.
            ranges.push(chunk_start..first);
        }
        for (page, rows) in locations.iter().zip(rows) {
            let start = u64::try_from(page.offset).ok()?;
            let end = start.checked_add(u64::try_from(page.compressed_page_size).ok()?)?;
            if start < first || end > chunk_end {
                return None;
            }
            if selected
                .iter()
                .any(|s| s.start < rows.end && rows.start < s.end)
            {
                ranges.push(start..end);
            } else {
                skipped += 1;
            }
        }
        columns.push(ColumnPages {
            leaf,
            pages: locations
                .iter()
                .map(|p| {
                    [
                        p.offset,
                        i64::from(p.compressed_page_size),
                        p.first_row_index,
                    ]
                })
                .collect(),
        });
    }
    ranges.sort_by_key(|r| r.start);
    let mut segments: Vec<ByteRange> = Vec::new();
    for r in ranges {
        match segments.last_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => segments.push(ByteRange {
                start: r.start,
                end: r.end,
            }),
        }
    }
    let rows = selection
        .iter()
        .map(|run| RowRun {
            rows: run.row_count as u64,
            skip: run.skip,
        })
        .collect();
    Some((PageSelection { rows, columns }, segments, skipped))
}
