//! Footers of the files a node serves are untrusted: decoding one has a deadline, and a
//! refused file names itself and the reason.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use pushdown_storage_node::catalog::{read_parquet_footer, read_parquet_footer_within};
use pushdown_storage_node::Error;

/// A Parquet file of `row_groups` one-row row groups of 8 Int64 columns: a footer of
/// about a megabyte that takes milliseconds to decode.
fn many_row_groups(path: &std::path::Path, row_groups: usize) {
    let fields: Vec<Field> = (0..8)
        .map(|i| Field::new(format!("c{i}"), DataType::Int64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(1))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    let columns = (0..8)
        .map(|c| {
            Arc::new(Int64Array::from_iter_values(
                (0..row_groups as i64).map(|r| r * c),
            )) as _
        })
        .collect();
    writer
        .write(&RecordBatch::try_new(schema, columns).unwrap())
        .unwrap();
    writer.close().unwrap();
}

#[test]
fn a_footer_that_misses_its_deadline_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.parquet");
    many_row_groups(&path, 5000);
    let (len, footer, schema) = read_parquet_footer("wide.parquet", &path).unwrap();
    assert_eq!(footer.metadata.num_row_groups(), 5000);
    assert_eq!(schema.fields().len(), 8);
    assert_eq!(len, std::fs::metadata(&path).unwrap().len());

    let deadline = Duration::from_micros(1);
    let err = read_parquet_footer_within("wide.parquet", &path, deadline).unwrap_err();
    match &err {
        Error::BadData { file, message } => {
            assert_eq!(file, "wide.parquet");
            assert!(
                message.contains("did not finish within its deadline"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
}
