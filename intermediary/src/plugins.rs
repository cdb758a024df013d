//! Registered user plugins as DataFusion functions.
//!
//! A scalar plugin becomes a [`ScalarUDF`]; the pushdown split sends calls to the storage
//! node ([`pushdown_protocol::Expr::Call`]), and the intermediary runs the same module in
//! its own sandbox instance for calls that stay above the scan. An aggregate plugin
//! becomes an [`AggregateUDF`] whose state is one `Binary` column, the plugin's opaque
//! partial state: storage nodes run its update, the intermediary its merge and finalize,
//! all in Wasm.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, RecordBatch, RecordBatchOptions, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::{exec_datafusion_err, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use pushdown_protocol::plugin::{
    EXPORT_FINALIZE, EXPORT_MERGE, EXPORT_SCALAR, EXPORT_UPDATE, NUM_GROUPS_KEY,
};
use pushdown_protocol::{PluginKind, PluginRef};
use pushdown_storage_node::{PluginModule, RegisteredPlugin};

/// Loads (compiles once, then caches) the module of a registered plugin.
pub type PluginLoader =
    Arc<dyn Fn(&PluginRef) -> pushdown_storage_node::Result<PluginModule> + Send + Sync>;

/// A registered plugin and how to load it; equality and hashing by module hash.
#[derive(Clone)]
struct Plugin {
    reference: PluginRef,
    loader: PluginLoader,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sha256 {})",
            self.reference.name, self.reference.sha256
        )
    }
}

impl PartialEq for Plugin {
    fn eq(&self, other: &Self) -> bool {
        self.reference == other.reference
    }
}

impl Eq for Plugin {}

impl Hash for Plugin {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.reference.hash(state);
    }
}

impl Plugin {
    /// Runs `export` over the IPC of `columns` and returns the single result column.
    fn call(
        &self,
        export: &str,
        columns: Vec<ArrayRef>,
        num_rows: usize,
        num_groups: Option<usize>,
    ) -> Result<ArrayRef> {
        let module =
            (self.loader)(&self.reference).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let metadata: HashMap<String, String> = num_groups
            .map(|n| (NUM_GROUPS_KEY.to_string(), n.to_string()))
            .into_iter()
            .collect();
        let input = encode(columns, num_rows, metadata)?;
        let out = module
            .invoke(export, &input, None)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let bad = |m: String| exec_datafusion_err!("plugin {}: {m}", self.reference.name);
        let reader = StreamReader::try_new(Cursor::new(out.payload), None)
            .map_err(|e| bad(format!("returned malformed Arrow IPC: {e}")))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("returned malformed Arrow IPC: {e}")))?;
        match batches.as_slice() {
            [b] if b.num_columns() == 1 => Ok(b.column(0).clone()),
            _ => Err(bad("must return one batch of one column".into())),
        }
    }
}

/// Encodes columns of `num_rows` rows as an Arrow IPC stream of one batch.
fn encode(
    columns: Vec<ArrayRef>,
    num_rows: usize,
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let options = RecordBatchOptions::new().with_row_count(Some(num_rows));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &schema)?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// A scalar plugin as a DataFusion scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PluginScalar {
    plugin: Plugin,
    signature: Signature,
    returns: DataType,
}

impl PluginScalar {
    /// The plugin this function calls.
    pub fn reference(&self) -> &PluginRef {
        &self.plugin.reference
    }
}

impl ScalarUDFImpl for PluginScalar {
    fn name(&self) -> &str {
        &self.plugin.reference.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = self.plugin.call(EXPORT_SCALAR, arrays, n, None)?;
        if out.data_type() != &self.returns || out.len() != n {
            return Err(exec_datafusion_err!(
                "plugin {}: returned {} values of {}, expected {n} of {}",
                self.name(),
                out.len(),
                out.data_type(),
                self.returns
            ));
        }
        Ok(ColumnarValue::Array(out))
    }
}

/// An aggregate plugin as a DataFusion aggregate function with one `Binary` state column.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PluginAggregate {
    plugin: Plugin,
    signature: Signature,
    returns: DataType,
}

impl PluginAggregate {
    /// The plugin this aggregate runs.
    pub fn reference(&self) -> &PluginRef {
        &self.plugin.reference
    }
}

impl AggregateUDFImpl for PluginAggregate {
    fn name(&self) -> &str {
        &self.plugin.reference.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.returns.clone())
    }

    fn accumulator(&self, _acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(PluginAccumulator {
            plugin: self.plugin.clone(),
            returns: self.returns.clone(),
            states: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "state"),
            DataType::Binary,
            true,
        ))])
    }
}

/// Partial states waiting to be merged before one Wasm call merges them.
const MERGE_EVERY: usize = 256;

/// Keeps partial states (from `update` over raw rows, or from storage nodes) and merges
/// them with the plugin's `merge` in batches.
#[derive(Debug)]
struct PluginAccumulator {
    plugin: Plugin,
    returns: DataType,
    states: Vec<Vec<u8>>,
}

impl PluginAccumulator {
    /// Merges every kept state into one (the plugin's initial state when there is none).
    fn merged(&mut self) -> Result<Vec<u8>> {
        if self.states.len() == 1 {
            return Ok(self.states[0].clone());
        }
        let n = self.states.len();
        let states: ArrayRef = Arc::new(BinaryArray::from_iter_values(self.states.iter()));
        let groups: ArrayRef = Arc::new(UInt32Array::from(vec![0u32; n]));
        let out = self
            .plugin
            .call(EXPORT_MERGE, vec![groups, states], n, Some(1))?;
        let state = out
            .as_any()
            .downcast_ref::<BinaryArray>()
            .filter(|a| a.len() == 1 && a.is_valid(0))
            .ok_or_else(|| {
                exec_datafusion_err!(
                    "plugin {}: merge must return one Binary state",
                    self.plugin.reference.name
                )
            })?
            .value(0)
            .to_vec();
        self.states = vec![state.clone()];
        Ok(state)
    }

    fn keep(&mut self, state: &[u8]) -> Result<()> {
        self.states.push(state.to_vec());
        if self.states.len() >= MERGE_EVERY {
            self.merged()?;
        }
        Ok(())
    }
}

impl Accumulator for PluginAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        if n == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt32Array::from(vec![0u32; n]))];
        columns.extend(values.iter().cloned());
        let out = self.plugin.call(EXPORT_UPDATE, columns, n, Some(1))?;
        let state = out
            .as_any()
            .downcast_ref::<BinaryArray>()
            .filter(|a| a.len() == 1 && a.is_valid(0))
            .ok_or_else(|| {
                exec_datafusion_err!(
                    "plugin {}: update must return one Binary state",
                    self.plugin.reference.name
                )
            })?
            .value(0)
            .to_vec();
        self.keep(&state)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let Some(states) = states
            .first()
            .and_then(|s| s.as_any().downcast_ref::<BinaryArray>())
        else {
            return Err(exec_datafusion_err!(
                "plugin {}: partial states must be Binary",
                self.plugin.reference.name
            ));
        };
        for state in states.iter().flatten() {
            self.keep(state)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.merged()?))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.merged()?;
        let states: ArrayRef = Arc::new(BinaryArray::from_iter_values([state]));
        let out = self.plugin.call(EXPORT_FINALIZE, vec![states], 1, None)?;
        if out.data_type() != &self.returns || out.len() != 1 {
            return Err(exec_datafusion_err!(
                "plugin {}: finalize returned {} values of {}, expected one {}",
                self.plugin.reference.name,
                out.len(),
                out.data_type(),
                self.returns
            ));
        }
        ScalarValue::try_from_array(&out, 0)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.states.iter().map(|s| s.capacity() + 24).sum::<usize>()
    }
}

/// The DataFusion functions of registered scalar and aggregate plugins (parsers have none).
///
/// # Errors
/// When a stored signature has malformed types (the registry checked them at registration).
pub fn functions(
    plugins: &[RegisteredPlugin],
    loader: PluginLoader,
) -> std::result::Result<(Vec<ScalarUDF>, Vec<AggregateUDF>), String> {
    let (mut scalars, mut aggregates) = (Vec::new(), Vec::new());
    for p in plugins {
        let plugin = Plugin {
            reference: p.reference(),
            loader: loader.clone(),
        };
        let describe = |m: String| format!("plugin {}: {m}", p.name);
        let signature = || -> std::result::Result<Signature, String> {
            Ok(Signature::exact(
                p.signature.argument_types().map_err(describe)?,
                Volatility::Immutable,
            ))
        };
        match p.kind {
            PluginKind::Scalar => scalars.push(ScalarUDF::new_from_impl(PluginScalar {
                plugin,
                signature: signature()?,
                returns: p.signature.return_type().map_err(describe)?,
            })),
            PluginKind::Aggregate => {
                aggregates.push(AggregateUDF::new_from_impl(PluginAggregate {
                    plugin,
                    signature: signature()?,
                    returns: p.signature.return_type().map_err(describe)?,
                }))
            }
            PluginKind::Parser => {}
        }
    }
    Ok((scalars, aggregates))
}
