//! Untrusted footers: the fuzz corpora and the shared Parquet corpora replayed through the
//! fuzz entry points (each input must return, without a panic), and each bound of
//! `decode_footer` met by a file made to cross it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use pushdown_footer::{decode_footer, fuzz, FooterError, MAX_FOOTER_BYTES, MAX_SCHEMA_DEPTH};

fn testdata() -> PathBuf {
    match std::env::var_os("PUSHDOWN_TESTDATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn corpus(target: &str) -> Vec<PathBuf> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target),
    )
}

fn shared_parquet() -> Vec<PathBuf> {
    let mut inputs = Vec::new();
    for dir in ["parquet-testing/data", "parquet-testing/bad_data"] {
        inputs.extend(
            files(&testdata().join(dir))
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "parquet")),
        );
    }
    inputs
}

#[test]
fn parquet_footer_corpus() {
    let mut inputs = corpus("parquet_footer");
    inputs.extend(shared_parquet());
    assert!(inputs.len() >= 50, "{} inputs", inputs.len());
    for path in inputs {
        fuzz::parquet_footer(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn page_plan_corpus() {
    let mut inputs = corpus("page_plan");
    inputs.extend(shared_parquet());
    assert!(inputs.len() >= 50, "{} inputs", inputs.len());
    for path in inputs {
        fuzz::page_plan(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn the_shared_corpus_decodes_or_is_refused_with_a_reason() {
    let mut decoded = 0;
    for path in shared_parquet() {
        let bytes = Bytes::from(std::fs::read(&path).unwrap());
        match decode_footer(&bytes) {
            Ok(footer) => {
                assert_eq!(footer.len, bytes.len() as u64);
                assert_eq!(footer.range.end, footer.len - 8);
                decoded += 1;
            }
            Err(FooterError::Bad(m)) => assert!(!m.is_empty(), "{}", path.display()),
            Err(FooterError::Read(m)) => panic!("{}: read error {m}", path.display()),
        }
    }
    assert!(decoded >= 40, "only {decoded} files decoded");
}

/// A Parquet file with no row groups whose schema nests `depth` groups around one leaf.
fn nested_schema_file(depth: usize) -> Vec<u8> {
    let mut message = String::from("message m {");
    for i in 0..depth {
        message.push_str(&format!(" optional group g{i} {{"));
    }
    message.push_str(" optional int32 leaf;");
    message.push_str(&" }".repeat(depth));
    message.push_str(" }");
    let schema = Arc::new(parse_message_type(&message).unwrap());
    let mut out = Vec::new();
    let writer =
        SerializedFileWriter::new(&mut out, schema, Arc::new(WriterProperties::new())).unwrap();
    writer.close().unwrap();
    out
}

#[test]
fn a_schema_nested_beyond_the_limit_is_refused_before_decoding() {
    let ok = decode_footer(&Bytes::from(nested_schema_file(MAX_SCHEMA_DEPTH - 2)));
    assert!(ok.is_ok(), "{:?}", ok.err());
    let deep = nested_schema_file(200);
    match decode_footer(&Bytes::from(deep)) {
        Err(FooterError::Bad(m)) => assert!(
            m == "schema nested more than 64 levels deep (the limit)",
            "{m}"
        ),
        other => panic!("{:?}", other.map(|f| f.len)),
    }
}

#[test]
fn a_footer_longer_than_the_limit_is_refused_before_it_is_read() {
    let mut file = b"PAR1".to_vec();
    file.extend([0u8; 64]);
    let claimed = u32::try_from(MAX_FOOTER_BYTES + 1).unwrap();
    file.extend(claimed.to_le_bytes());
    file.extend(b"PAR1");
    match decode_footer(&Bytes::from(file)) {
        Err(FooterError::Bad(m)) => assert_eq!(
            m,
            format!("footer of {claimed} bytes exceeds the limit of {MAX_FOOTER_BYTES} bytes")
        ),
        other => panic!("{:?}", other.map(|f| f.len)),
    }
}

#[test]
fn truncated_and_foreign_files_are_refused_with_a_reason() {
    let good = nested_schema_file(1);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PAR1".to_vec(), "too short for a footer"),
        (
            b"not a parquet file at all".to_vec(),
            "PAR1 magic bytes are missing",
        ),
        (
            [&good[..4], &[0u8; 8], &1000u32.to_le_bytes(), b"PAR1"].concat(),
            "exceeds the file's",
        ),
        (
            [&good[..good.len() - 4], b"PARE"].concat(),
            "encrypted Parquet footers",
        ),
    ];
    for (bytes, expected) in cases {
        match decode_footer(&Bytes::from(bytes)) {
            Err(FooterError::Bad(m)) => assert!(m.contains(expected), "{m} lacks {expected}"),
            other => panic!("{:?}", other.map(|f| f.len)),
        }
    }
}

#[test]
fn a_schema_element_claiming_more_children_than_follow_is_refused() {
    // Found by the page_plan fuzz target: arrow-rs reserved 11.5 GB for the children.
    let path = corpus("page_plan")
        .into_iter()
        .find(|p| p.ends_with("oom-2c4d73123bb15cac1e56fc1ee5ea27851bfceb1b"))
        .unwrap();
    match decode_footer(&Bytes::from(std::fs::read(path).unwrap())) {
        Err(FooterError::Bad(m)) => assert!(
            m.starts_with("invalid footer: schema element") && m.contains("children, but only"),
            "{m}"
        ),
        other => panic!("{:?}", other.map(|f| f.len)),
    }
}

#[test]
fn a_task_footer_keeps_the_page_encoding_statistics() {
    use parquet::basic::Encoding;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::metadata::ParquetMetaDataReader;
    // One string column of three distinct values (dictionary-encoded), in two row groups.
    let schema = Arc::new(parse_message_type("message m { required binary s (UTF8); }").unwrap());
    let mut out = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut out, schema, Arc::new(WriterProperties::new())).unwrap();
    for _ in 0..2 {
        let mut rg = writer.next_row_group().unwrap();
        let mut column = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = (0..300)
            .map(|i| ByteArray::from(["MAIL", "SHIP", "AIR"][i % 3]))
            .collect();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
    let footer = decode_footer(&Bytes::from(out)).unwrap();
    let task = pushdown_footer::row_group_footer(&footer.metadata, 1).unwrap();
    // Decoded as the sandbox decodes it (the statistics as a mask).
    let metadata = ParquetMetaDataReader::decode_metadata(&task).unwrap();
    assert_eq!(metadata.num_row_groups(), 1);
    let mask = metadata.row_group(0).column(0).page_encoding_stats_mask();
    assert!(
        mask.is_some_and(|m| m.is_only(Encoding::RLE_DICTIONARY)),
        "{mask:?}"
    );
}

#[test]
fn a_row_groups_page_index_is_read_for_that_row_group_alone() {
    use parquet::data_type::Int64Type;
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    use pushdown_footer::row_group_metadata;
    // Three row groups of 3000 rows, pages of at most 1000 rows, values rising by row.
    let schema = Arc::new(parse_message_type("message m { required int64 v; }").unwrap());
    let props = WriterProperties::builder()
        .set_data_page_row_count_limit(1000)
        .set_write_batch_size(100)
        .build();
    let mut out = Vec::new();
    let mut writer = SerializedFileWriter::new(&mut out, schema, Arc::new(props)).unwrap();
    for rg in 0..3i64 {
        let mut row_group = writer.next_row_group().unwrap();
        let mut column = row_group.next_column().unwrap().unwrap();
        let values: Vec<i64> = (rg * 3000..(rg + 1) * 3000).collect();
        column
            .typed::<Int64Type>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
        row_group.close().unwrap();
    }
    writer.close().unwrap();
    let file = Bytes::from(out);
    let footer = decode_footer(&file).unwrap();
    assert!(
        footer.metadata.offset_index().is_none(),
        "the catalog holds no page index"
    );
    let whole = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(&file)
        .unwrap();

    let (one, bytes) = row_group_metadata(&footer.metadata, 2, Some(&file)).unwrap();
    assert_eq!(one.num_row_groups(), 1);
    assert_eq!(one.row_group(0).num_rows(), 3000);
    let pages = one.offset_index().unwrap()[0][0].page_locations();
    assert!(pages.len() >= 3, "{} pages", pages.len());
    assert_eq!(pages, whole.offset_index().unwrap()[2][0].page_locations());
    assert_eq!(one.column_index().unwrap().len(), 1);
    let chunk = whole.row_group(2).column(0);
    let expected = chunk.column_index_length().unwrap() + chunk.offset_index_length().unwrap();
    assert_eq!(bytes, expected as u64);
    // Read as its two ranges: only the row group's own column and offset indexes, not
    // the span from its column index to its offset index (row group 0's spans the other
    // row groups' column indexes).
    let counting = Counting(file.clone(), Default::default());
    let (first, _) = row_group_metadata(&footer.metadata, 0, Some(&counting)).unwrap();
    assert_eq!(
        first.offset_index().unwrap()[0][0].page_locations(),
        whole.offset_index().unwrap()[0][0].page_locations()
    );
    let chunk = whole.row_group(0).column(0);
    let own = chunk.column_index_length().unwrap() + chunk.offset_index_length().unwrap();
    let span = chunk.offset_index_offset().unwrap()
        + i64::from(chunk.offset_index_length().unwrap())
        - chunk.column_index_offset().unwrap();
    assert!(
        span > i64::from(own),
        "the test file spreads the indexes apart"
    );
    assert_eq!(
        counting.1.load(std::sync::atomic::Ordering::Relaxed),
        own as u64
    );

    // Without the file, or with a page index that is not there any more, no index.
    let (bare, bytes) = row_group_metadata::<Bytes>(&footer.metadata, 0, None).unwrap();
    assert!(bare.offset_index().is_none() && bytes == 0);
    let index_start = whole.row_group(0).column(0).column_index_offset().unwrap() as usize;
    let truncated = file.slice(..index_start);
    let (bare, bytes) = row_group_metadata(&footer.metadata, 1, Some(&truncated)).unwrap();
    assert!(bare.offset_index().is_none() && bytes == 0);
    assert_eq!(bare.row_group(0).num_rows(), 3000);
    assert!(row_group_metadata::<Bytes>(&footer.metadata, 3, None).is_none());
}

/// A file in memory that counts the bytes read from it with `get_bytes`.
struct Counting(Bytes, std::sync::atomic::AtomicU64);

impl parquet::file::reader::Length for Counting {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for Counting {
    type T = <Bytes as parquet::file::reader::ChunkReader>::T;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        self.0.get_read(start)
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.1
            .fetch_add(length as u64, std::sync::atomic::Ordering::Relaxed);
        self.0.get_bytes(start, length)
    }
}
