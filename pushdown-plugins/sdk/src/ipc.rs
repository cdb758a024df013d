//! Arrow IPC streams, the encoding of every batch that crosses the sandbox boundary.

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{Schema, SchemaRef};

/// Decodes an IPC stream into its schema and batches.
pub(crate) fn read(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)
        .map_err(|e| format!("malformed Arrow IPC input: {e}"))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed Arrow IPC input: {e}"))?;
    Ok((schema, batches))
}

/// Decodes an IPC stream of (at most) one batch; no batch is an empty batch.
pub(crate) fn read_one(bytes: &[u8]) -> Result<RecordBatch, String> {
    let (schema, mut batches) = read(bytes)?;
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema)),
        1 => Ok(batches.remove(0)),
        n => Err(format!("expected one record batch, got {n}")),
    }
}

/// Encodes batches of `schema` as an IPC stream.
pub(crate) fn write(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut writer =
        StreamWriter::try_new(&mut out, schema).map_err(|e| format!("Arrow IPC: {e}"))?;
    for b in batches {
        writer.write(b).map_err(|e| format!("Arrow IPC: {e}"))?;
    }
    writer.finish().map_err(|e| format!("Arrow IPC: {e}"))?;
    drop(writer);
    Ok(out)
}

/// A schema of one column.
pub(crate) fn one_column(name: &str, data_type: arrow_schema::DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![arrow_schema::Field::new(
        name, data_type, true,
    )]))
}
