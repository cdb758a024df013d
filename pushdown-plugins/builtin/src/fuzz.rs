//! Entry points for fuzzing (`fuzz/`, cargo-fuzz) and for replaying its corpus in tests:
//! each feeds arbitrary bytes to one parse path of the pipeline and must return, never
//! panic. The fuzz targets are one-line wrappers around these functions.

use bytes::Bytes;
use pushdown_protocol::{ByteRange, CsvDialect};

/// Parses `data` as a CSV chunk of records against a three-column text schema and an
/// inferred-type schema.
pub fn csv_chunk(data: &[u8]) {
    use arrow_schema::{DataType, Field, Schema};
    let columns: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    for types in [
        [DataType::Utf8, DataType::Utf8, DataType::Utf8],
        [DataType::Int64, DataType::Float64, DataType::Date32],
    ] {
        let schema = Schema::new(
            columns
                .iter()
                .zip(types)
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        );
        let tsv = CsvDialect {
            delimiter: b'\t',
            ..CsvDialect::default()
        };
        let lenient = CsvDialect {
            quote: Some(b'\''),
            escape: Some(b'\\'),
            comment: Some(b'#'),
            null: Some("NA".into()),
            lenient: true,
            ..CsvDialect::default()
        };
        for (empty_is_null, dialect) in [
            (true, CsvDialect::default()),
            (false, CsvDialect::default()),
            (true, tsv),
            (true, lenient),
        ] {
            let _ = crate::parse_csv(
                Bytes::copy_from_slice(data),
                &schema,
                &columns,
                1024,
                empty_is_null,
                &dialect,
            );
        }
    }
}

/// Treats `data` as a whole Parquet file: hands its footer and every row group's bytes to
/// the row-group parser, reading all columns, as the storage node does per task.
pub fn parquet_file(data: &[u8]) {
    let len = data.len() as u64;
    if len < 12 || &data[data.len() - 4..] != b"PAR1" {
        return;
    }
    let metadata_len = u64::from(u32::from_le_bytes(
        data[data.len() - 8..data.len() - 4]
            .try_into()
            .expect("4 bytes"),
    ));
    let Some(footer_start) = len.checked_sub(8 + metadata_len) else {
        return;
    };
    let footer = ByteRange {
        start: footer_start,
        end: len - 8,
    };
    let Ok(metadata) = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(
        &data[footer_start as usize..(len - 8) as usize],
    ) else {
        return;
    };
    let Ok(schema) =
        parquet::arrow::parquet_to_arrow_schema(metadata.file_metadata().schema_descr(), None)
    else {
        return;
    };
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    // The whole data section as one segment after the footer, as a task with every column gets it.
    let data_section = ByteRange {
        start: 0,
        end: footer_start,
    };
    let mut input = data[footer.start as usize..footer.end as usize].to_vec();
    input.extend_from_slice(&data[..footer_start as usize]);
    for row_group in 0..metadata.num_row_groups().min(64) {
        let _ = crate::parse_parquet(
            Bytes::from(input.clone()),
            &[footer, data_section],
            len,
            row_group,
            &columns,
            1024,
            None,
            &[],
            row_group % 2 == 0,
        );
    }
}

/// Decodes `data` as a pushdown request, and when it decodes (and its blobs, if it lists
/// any, fit the empty input), runs it over empty input.
pub fn task_request(data: &[u8]) {
    if let Ok(mut request) = pushdown_protocol::decode_request(data) {
        if request.restore_blobs(&mut Vec::new()).is_ok() {
            let _ = crate::run_pipeline(&request, Bytes::new());
        }
    }
}
