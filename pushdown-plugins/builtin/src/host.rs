//! Calls from the pipeline to user plugins (scalar functions, aggregate updates), through
//! the host: in Wasm the imports `pushdown.call_plugin` and `pushdown.take_result` (see
//! `pushdown-plugins/ABI.md`); natively a function installed with [`set_native_host`].
//!
//! Data crosses as Arrow IPC streams of one record batch, as between host and plugin.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{DataType, Field, Schema};
use pushdown_protocol::PluginRef;

/// What the pipeline asks of a user plugin; the code is the `op` of `pushdown.call_plugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum PluginOp {
    /// `pushdown_scalar`.
    Scalar = 0,
    /// `pushdown_aggregate_update`.
    Update = 1,
    /// `pushdown_aggregate_merge`.
    Merge = 2,
    /// `pushdown_aggregate_finalize`.
    Finalize = 3,
}

/// A native stand-in for the host: `(plugin name, operation, input) -> result or message`.
pub type NativeHost = dyn Fn(&str, PluginOp, &[u8]) -> Result<Vec<u8>, String>;

thread_local! {
    static NATIVE_HOST: RefCell<Option<Arc<NativeHost>>> = const { RefCell::new(None) };
}

/// Installs (or with `None` removes) the function that serves plugin calls of native runs
/// of the pipeline on this thread. Wasm builds call the real host instead.
pub fn set_native_host(host: Option<Arc<NativeHost>>) {
    NATIVE_HOST.with(|h| *h.borrow_mut() = host);
}

#[cfg(target_arch = "wasm32")]
fn call_raw(name: &str, op: PluginOp, input: &[u8]) -> Result<Vec<u8>, String> {
    #[link(wasm_import_module = "pushdown")]
    extern "C" {
        fn call_plugin(name_ptr: u32, name_len: u32, op: u32, in_ptr: u32, in_len: u32) -> i64;
        fn take_result(dst: u32);
    }
    // SAFETY: the host reads the two regions (inside linear memory, alive for the call)
    // and returns a length; `take_result` writes exactly that many bytes into `buf`.
    unsafe {
        let code = call_plugin(
            name.as_ptr() as u32,
            name.len() as u32,
            op as u32,
            input.as_ptr() as u32,
            input.len() as u32,
        );
        let len = if code >= 0 { code } else { -1 - code } as usize;
        let mut buf = vec![0u8; len];
        take_result(buf.as_mut_ptr() as u32);
        if code >= 0 {
            Ok(buf)
        } else {
            Err(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn call_raw(name: &str, op: PluginOp, input: &[u8]) -> Result<Vec<u8>, String> {
    let host = NATIVE_HOST.with(|h| h.borrow().clone());
    match host {
        Some(host) => host(name, op, input),
        None => Err(format!(
            "plugin {name}: no plugin host in this native run (see set_native_host)"
        )),
    }
}

/// Checks the call's deadline: in Wasm the host import `pushdown.check_deadline`, which
/// traps (`trapped: deadline of ... exceeded`) once it has passed, as epoch interruption
/// would in a module compiled with it; natively nothing. The built-in module runs without
/// epoch checks, so the pipeline calls this between record batches (ABI.md).
#[cfg(target_arch = "wasm32")]
pub(crate) fn check_deadline() {
    #[link(wasm_import_module = "pushdown")]
    extern "C" {
        #[link_name = "check_deadline"]
        fn host_check_deadline();
    }
    // SAFETY: the import takes no arguments and touches no guest memory.
    unsafe { host_check_deadline() }
}

/// Checks the call's deadline (natively, nothing: see the Wasm build).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn check_deadline() {}

/// Encodes `columns` (all of length `num_rows`) as an IPC stream of one batch, with
/// `metadata` on the schema.
pub(crate) fn encode(
    columns: Vec<ArrayRef>,
    num_rows: usize,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, String> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let options = RecordBatchOptions::new().with_row_count(Some(num_rows));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema).map_err(|e| e.to_string())?;
    writer.write(&batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    drop(writer);
    Ok(out)
}

/// Calls `plugin` and returns the single column of its single-batch result, checked to
/// have `expected_type` and `expected_len` rows.
///
/// # Errors
/// The plugin's message, or a message naming the plugin when its result is malformed.
pub(crate) fn call_column(
    plugin: &PluginRef,
    op: PluginOp,
    input: &[u8],
    expected_type: &DataType,
    expected_len: usize,
) -> Result<ArrayRef, String> {
    let out = call_raw(&plugin.name, op, input)?;
    let bad = |m: String| format!("plugin {}: {m}", plugin.name);
    let reader = StreamReader::try_new(Cursor::new(out), None)
        .map_err(|e| bad(format!("returned malformed Arrow IPC: {e}")))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("returned malformed Arrow IPC: {e}")))?;
    let column = match batches.as_slice() {
        [b] if b.num_columns() == 1 => b.column(0).clone(),
        _ => return Err(bad("must return one batch of one column".into())),
    };
    if column.data_type() != expected_type || column.len() != expected_len {
        return Err(bad(format!(
            "returned {} values of {}, expected {expected_len} of {expected_type}",
            column.len(),
            column.data_type()
        )));
    }
    Ok(column)
}
