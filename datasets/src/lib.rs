//! Dataset generators for pushdown: TPC-H tables from the `tpchgen` crates (a port of the
//! TPC-H `dbgen` reference generator), written as Parquet and as CSV.
//!
//! ```text
//! tpchgen generator ─▶ tpchgen-arrow record batches ─┬─▶ DIR/parquet/<table>.parquet (row groups of N rows, Snappy)
//!                                                     └─▶ DIR/csv/<table>.csv (header row, RFC 4180)
//! ```
//!
//! * To write TPC-H tables, use [`generate_tpch`] with [`TpchOptions`].
#![warn(missing_docs)]

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow,
    RecordBatchIterator, RegionArrow, SupplierArrow,
};

/// Errors of dataset generation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// Writing a file failed.
    #[error("{path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct TpchOptions {
    /// TPC-H scale factor: 1 is about 6 million lineitem rows (1 GB as CSV). Defaults to 0.1.
    pub scale: f64,
    /// Output folder; files go to `out/parquet/` and `out/csv/`.
    pub out: PathBuf,
    /// Rows per Parquet row group. Defaults to 122 880 (DuckDB's default).
    pub row_group_size: usize,
    /// Tables to write, from [`TPCH_TABLES`]. Defaults to `["lineitem"]`.
    pub tables: Vec<String>,
    /// Write Parquet files. Defaults to true.
    pub parquet: bool,
    /// Write CSV files. Defaults to true.
    pub csv: bool,
}

impl Default for TpchOptions {
    fn default() -> Self {
        Self {
            scale: 0.1,
            out: PathBuf::from("datasets/generated/tpch-sf0.1"),
            row_group_size: 122_880,
            tables: vec!["lineitem".into()],
            parquet: true,
            csv: true,
        }
    }
}

/// Approximate rows of `table` at scale factor `scale` (TPC-H specification, clause 4.2.5).
pub fn tpch_rows(table: &str, scale: f64) -> u64 {
    let per_sf = match table {
        "lineitem" => 6_001_215.0,
        "orders" => 1_500_000.0,
        "customer" => 150_000.0,
        "part" => 200_000.0,
        "partsupp" => 800_000.0,
        "supplier" => 10_000.0,
        "nation" => return 25,
        "region" => return 5,
        _ => 0.0,
    };
    (per_sf * scale) as u64
}

fn batches(table: &str, scale: f64) -> Result<Box<dyn RecordBatchIterator>> {
    const BATCH: usize = 65_536;
    Ok(match table {
        "lineitem" => {
            Box::new(LineItemArrow::new(LineItemGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "orders" => {
            Box::new(OrderArrow::new(OrderGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "customer" => {
            Box::new(CustomerArrow::new(CustomerGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, 1, 1)).with_batch_size(BATCH)),
        "partsupp" => {
            Box::new(PartSuppArrow::new(PartSuppGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "supplier" => {
            Box::new(SupplierArrow::new(SupplierGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "nation" => {
            Box::new(NationArrow::new(NationGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        "region" => {
            Box::new(RegionArrow::new(RegionGenerator::new(scale, 1, 1)).with_batch_size(BATCH))
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown TPC-H table {other}; the tables are {}",
                TPCH_TABLES.join(", ")
            )))
        }
    })
}

/// String views become plain strings, which every reader (and DuckDB) handles alike.
fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn plain_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| cast(c, f.data_type()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Writes the requested TPC-H tables as `out/parquet/<table>.parquet` and
/// `out/csv/<table>.csv`, calling `progress(table, rows_written)` after every batch.
/// Returns the files written.
///
/// # Errors
/// [`Error::InvalidArgument`] for a scale factor that is not positive, a row-group size
/// of 0 or an unknown table; [`Error::Write`] naming the file when writing fails.
pub fn generate_tpch(
    options: &TpchOptions,
    mut progress: impl FnMut(&str, u64),
) -> Result<Vec<PathBuf>> {
    if !(options.scale > 0.0 && options.scale.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "scale factor must be positive, got {}",
            options.scale
        )));
    }
    if options.row_group_size == 0 {
        return Err(Error::InvalidArgument(
            "row-group size must be at least 1".into(),
        ));
    }
    let mut written = Vec::new();
    for table in &options.tables {
        let mut iter = batches(table, options.scale)?;
        let schema = plain_schema(iter.schema());
        let parquet_path = options.out.join("parquet").join(format!("{table}.parquet"));
        let csv_path = options.out.join("csv").join(format!("{table}.csv"));
        let write_err = |path: &Path, e: &dyn std::fmt::Display| Error::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let create = |path: &Path| -> Result<File> {
            std::fs::create_dir_all(path.parent().expect("has a parent"))
                .map_err(|e| write_err(path, &e))?;
            File::create(path).map_err(|e| write_err(path, &e))
        };
        let mut parquet = if options.parquet {
            let props = WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .set_max_row_group_row_count(Some(options.row_group_size))
                .build();
            let file = create(&parquet_path)?;
            Some(
                ArrowWriter::try_new(file, schema.clone(), Some(props))
                    .map_err(|e| write_err(&parquet_path, &e))?,
            )
        } else {
            None
        };
        let mut csv = if options.csv {
            let file = BufWriter::with_capacity(1 << 20, create(&csv_path)?);
            Some(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file),
            )
        } else {
            None
        };
        let mut rows = 0u64;
        for batch in iter.by_ref() {
            let batch = plain_batch(&batch, &schema)?;
            if let Some(w) = parquet.as_mut() {
                w.write(&batch).map_err(|e| write_err(&parquet_path, &e))?;
            }
            if let Some(w) = csv.as_mut() {
                w.write(&batch).map_err(|e| write_err(&csv_path, &e))?;
            }
            rows += batch.num_rows() as u64;
            progress(table, rows);
        }
        if let Some(w) = parquet {
            w.close().map_err(|e| write_err(&parquet_path, &e))?;
            written.push(parquet_path);
        }
        if let Some(w) = csv {
            let mut inner = w.into_inner();
            std::io::Write::flush(&mut inner).map_err(|e| write_err(&csv_path, &e))?;
            written.push(csv_path);
        }
    }
    Ok(written)
}
