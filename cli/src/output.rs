//! Printing result batches: an aligned table, RFC 4180 CSV, or JSON.

use std::io::Write;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// An aligned text table (arrow's pretty printer). An empty result prints its header.
pub fn table(out: &mut impl Write, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    writeln!(
        out,
        "{}",
        arrow::util::pretty::pretty_format_batches_with_schema(schema, batches)?
    )?;
    Ok(())
}

/// A header row, then one RFC 4180 record (CRLF-terminated, quoted where needed) per row.
/// NULL is the empty field.
pub fn csv(out: &mut impl Write, schema: SchemaRef, batches: &[RecordBatch]) -> Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    writer.write_record(schema.fields().iter().map(|f| f.name().as_str()))?;
    let options = FormatOptions::default().with_null("");
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            writer.write_record(formatters.iter().map(|f| f.value(row).to_string()))?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// A JSON array with one object per row.
pub fn json(out: &mut impl Write, batches: &[RecordBatch]) -> Result<()> {
    let mut writer = arrow::json::ArrayWriter::new(out);
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs)?;
    writer.finish()?;
    let out = writer.into_inner();
    writeln!(out)?;
    Ok(())
}
