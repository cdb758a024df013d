//! Passthrough and quarantine: when a storage node should not run a task's pipeline, it
//! reads the task's input as usual and returns it raw ([`RawTask`]), and the tier above
//! runs the same pipeline over it in a sandbox of its own ([`PassthroughRunner`]). The
//! answer is the same either way: the same request, the same bytes, the same modules.
//!
//! A node passes a task through when
//!
//! * a user plugin of the task is quarantined on it: its calls trapped at least
//!   [`PassthroughPolicy::quarantine_traps`] times within
//!   [`PassthroughPolicy::quarantine_window`], the last less than
//!   [`PassthroughPolicy::quarantine_for`] ago (a node with tighter limits, or a plugin
//!   that only fails here);
//! * a user plugin traps in this very task (the task is then passed through instead of
//!   failing; if it traps above too, the query fails with that error);
//! * its server is saturated (more tasks waiting than it is told to queue; the Flight
//!   server decides that, [`crate::StorageNode::pass_through`]).
//!
//! This is Exadata's smart-scan fallback (a cell that cannot run a smart scan ships the
//! blocks and the database server filters them), applied to sandboxed plugins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pushdown_protocol::plugin::EXPORT_PARSE;
use pushdown_protocol::{FileFormat, PluginRef, Task, TaskUnit};

use crate::error::{Error, Result};
use crate::node::{decode_output, TaskMetrics, TaskOutput};
use crate::sandbox::{PluginModule, Sandbox, SandboxConfig};

/// When a node passes tasks through instead of running them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughPolicy {
    /// Traps of one plugin within `quarantine_window` that quarantine it (0: never).
    pub quarantine_traps: usize,
    /// The window the traps are counted in.
    pub quarantine_window: Duration,
    /// How long after its last trap a quarantined plugin stays quarantined.
    pub quarantine_for: Duration,
}

impl Default for PassthroughPolicy {
    fn default() -> Self {
        Self {
            quarantine_traps: 3,
            quarantine_window: Duration::from_secs(60),
            quarantine_for: Duration::from_secs(300),
        }
    }
}

/// A task a storage node did not run: the pipeline request it would have run and the input
/// it read for it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTask {
    /// The encoded [`pushdown_protocol::GuestRequest`], as the node's sandbox would get it.
    pub request: Vec<u8>,
    /// The input: the footer and column chunks (or pages), or the CSV or text chunk.
    pub input: Vec<u8>,
    /// The file's CSV dialect is lenient (the result carries a repaired-record count).
    pub lenient: bool,
    /// Why the node passed it through, one line.
    pub reason: String,
}

/// Where a runner gets a user plugin's module bytes (by name and SHA-256).
type ModuleBytes = Box<dyn Fn(&PluginRef) -> Result<Vec<u8>> + Send + Sync>;

/// Runs passed-through tasks: the built-in pipeline (compiled on first use) and the task's
/// user plugins, each loaded from module bytes checked against their SHA-256.
pub struct PassthroughRunner {
    sandbox: Sandbox,
    builtin: OnceLock<PluginModule>,
    modules: ModuleBytes,
    loaded: Mutex<HashMap<String, PluginModule>>,
}

impl std::fmt::Debug for PassthroughRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PassthroughRunner")
    }
}

impl PassthroughRunner {
    /// A runner under `limits`, fetching user plugins' module bytes with `modules`.
    ///
    /// # Errors
    /// When the Wasm engine cannot be configured.
    pub fn new(
        limits: SandboxConfig,
        modules: impl Fn(&PluginRef) -> Result<Vec<u8>> + Send + Sync + 'static,
    ) -> Result<Self> {
        Ok(Self {
            sandbox: Sandbox::new(limits)?,
            builtin: OnceLock::new(),
            modules: Box::new(modules),
            loaded: Mutex::default(),
        })
    }

    fn builtin(&self) -> Result<&PluginModule> {
        if let Some(b) = self.builtin.get() {
            return Ok(b);
        }
        let module = self.sandbox.load_builtin()?;
        Ok(self.builtin.get_or_init(|| module))
    }

    fn plugin(&self, p: &PluginRef) -> Result<PluginModule> {
        if let Some(m) = self.loaded.lock().expect("not poisoned").get(&p.sha256) {
            return Ok(m.clone());
        }
        let (module, _) = self.sandbox.load_plugin(&p.name, &(self.modules)(p)?)?;
        if module.sha256() != p.sha256 {
            return Err(Error::Plugin {
                plugin: p.name.clone(),
                message: format!("module hashes to {}, not {}", module.sha256(), p.sha256),
            });
        }
        self.loaded
            .lock()
            .expect("not poisoned")
            .insert(p.sha256.clone(), module.clone());
        Ok(module)
    }

    /// Runs `raw`, which a storage node returned for `task`, and returns what the node would
    /// have: the batches, and metrics with `passed_through` set (bytes read are the node's,
    /// `node_metrics`).
    ///
    /// # Errors
    /// As [`crate::StorageNode::run_task`], with the task's place in the message.
    pub fn run(&self, task: &Task, raw: &RawTask, node_metrics: TaskMetrics) -> Result<TaskOutput> {
        let context = crate::task_context(task);
        let mut plugins = HashMap::new();
        for p in task.plugins() {
            plugins.insert(
                p.name.clone(),
                self.plugin(&p).map_err(|e| e.context(context.clone()))?,
            );
        }
        let parser = match (&task.format, &task.unit) {
            (FileFormat::Plugin(parser), TaskUnit::Lines { first_line, .. }) => Some((
                self.plugin(parser)
                    .map_err(|e| e.context(context.clone()))?,
                *first_line,
            )),
            _ => None,
        };
        let (payload, _) = run_pipeline(
            self.builtin()?,
            Arc::new(plugins),
            parser.as_ref().map(|(m, line)| (m, *line)),
            &raw.request,
            raw.input.len(),
            |slot| {
                slot.copy_from_slice(&raw.input);
                Ok(())
            },
        )
        .map_err(|e| e.context(context.clone()))?;
        let (rows_in, rows_selected, rows_repaired, batches, ipc_len) =
            decode_output(&payload, raw.lenient, &task.output_schema)
                .map_err(|e| e.context(context))?;
        let rows_out = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(TaskOutput {
            batches,
            metrics: TaskMetrics {
                bytes_returned: ipc_len,
                rows_in,
                rows_selected,
                rows_out,
                rows_repaired,
                passed_through: true,
                ..node_metrics
            },
            passthrough: None,
            passthrough_reason: Some(raw.reason.clone()),
        })
    }
}

/// Runs the pipeline of one task: the parser plugin first when the task reads a plugin
/// format (its output is the pipeline's input), then the built-in module with the task's
/// user plugins reachable through the host calls. Returns the pipeline's payload and, for a
/// parser, the parser's output.
///
/// # Errors
/// The error of the parser or of the pipeline.
pub(crate) fn run_pipeline(
    builtin: &PluginModule,
    plugins: Arc<HashMap<String, PluginModule>>,
    parser: Option<(&PluginModule, u64)>,
    request: &[u8],
    input_len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<()>,
) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
    match parser {
        Some((parser, first_line)) => {
            // The parser reads the chunk straight from storage; its Arrow IPC output is
            // the pipeline's input.
            let parsed = parser.invoke_with(EXPORT_PARSE, input_len, fill, Some(first_line))?;
            let out = builtin.call_with_plugins(
                request,
                parsed.payload.len(),
                |slot| {
                    slot.copy_from_slice(&parsed.payload);
                    Ok(())
                },
                plugins,
            )?;
            Ok((out.payload, Some(parsed.payload)))
        }
        None => Ok((
            builtin
                .call_with_plugins(request, input_len, fill, plugins)?
                .payload,
            None,
        )),
    }
}
