//! A storage node as an Arrow Flight server.
//!
//! * `DoAction("tables")` returns, as one JSON result, every table the node holds with its
//!   schema and files: path, size in bytes, SHA-256 of the content (to check replicas), and
//!   the units (row groups, chunks) a scan is cut into ([`TableDescription`]).
//! * `DoGet(ticket)` runs one pushdown task, the ticket being the JSON of a
//!   [`pushdown_protocol::Task`], and streams its record batches; the first (schema)
//!   message carries the task's metrics as JSON in `app_metadata` ([`pushdown_storage_node::TaskMetrics`]): the
//!   task has finished before its first byte is sent.
//!
//! * `DoAction("put_module")` stores a user plugin's module an intermediary sends, by its
//!   SHA-256 only (it never creates or replaces a named plugin): a JSON line
//!   `{"name", "sha256"}` then the module's bytes; refused unless the call carries the
//!   node's admin token in [`ADMIN_HEADER`], the bytes hash to `sha256` and the module is a
//!   valid plugin. It waits for a task permit, like a task.
//!
//! * Passthrough ([`pushdown_storage_node::passthrough`]): a task the node does not run
//!   (more than `--passthrough-queue` tasks waiting for a permit, or a plugin that traps
//!   or is quarantined here) comes back with `passed_through` in its metrics and, instead
//!   of the output schema, one `Binary` column ([`raw_batch`]): the reason, the lenient
//!   flag, the pipeline request, then the input in chunks of at most 1 MiB. The
//!   intermediary runs the pipeline over it. At most `2 × max_tasks` passthrough reads
//!   are in flight; beyond that a task waits for a permit as usual.
//!
//! * Checkpointed aggregates ([`pushdown_storage_node::fold`]): a task whose `fold` names
//!   a job may be folded into it (`folded` in its metrics, no batches); a `DoGet` whose
//!   ticket is `{"finish_fold": ...}` ([`FinishFoldTicket`]) drains the job and streams the
//!   merged partial aggregate like a task's result.
//!
//! A task error (bad data, a plugin error) is `FAILED_PRECONDITION`: running it elsewhere
//! would fail the same way. At most `max_tasks` tasks run or wait to be read at once (a
//! task holds its permit until its last batch is sent); the others wait, so the node's
//! memory is bounded by the tasks in flight.

use std::collections::HashMap;
use std::io::Read;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt};
use pushdown_protocol::Task;
use pushdown_storage_node::StorageNode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};

/// Largest request message a storage node decodes: a module sent by `put_module` (at most
/// 64 MiB) with its header line. Larger ones are refused from their length prefix, before
/// they are read.
pub const MAX_REQUEST_BYTES: usize = (64 << 20) + (64 << 10);

/// One table as a storage node describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableDescription {
    /// The table's name.
    pub name: String,
    /// Its files' format.
    pub format: pushdown_protocol::FileFormat,
    /// The schema its files are read with.
    pub schema: arrow_schema::Schema,
    /// Its files.
    pub files: Vec<FileDescription>,
}

/// One file of a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileDescription {
    /// Path relative to the node's data directory; the same on every replica.
    pub path: String,
    /// Size in bytes.
    pub len: u64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// The units a scan is cut into.
    pub units: Vec<pushdown_protocol::TaskUnit>,
    /// Parquet only: per row group, from the footer, its rows and bytes and each column
    /// chunk's min/max statistics (as the footer stores them, displayed), by column path.
    #[serde(default)]
    pub row_groups: Vec<RowGroupSummary>,
    /// CSV only: the dialect the node reads the file with (sniffed, or as its options fix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<pushdown_protocol::CsvDialect>,
}

/// A row group's statistics from a Parquet footer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowGroupSummary {
    /// Rows.
    pub rows: i64,
    /// Uncompressed bytes of its column chunks.
    pub bytes: i64,
    /// `(column path, min, max)` of the column chunks that have statistics.
    pub min_max: Vec<(String, String, String)>,
}

/// SHA-256 of each file by (path, size, modification time).
type Checksums = Mutex<HashMap<(String, u64, std::time::SystemTime), String>>;

/// The start of a `DoGet` ticket that finishes a fold job rather than running a task.
pub const FINISH_FOLD_PREFIX: &[u8] = b"{\"finish_fold\"";

/// What a finish ticket asks: drain fold job `job` of run `lease`, which saw the tasks
/// with these content hashes folded on this node
/// ([`pushdown_storage_node::StorageNode::finish_fold`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FinishFold {
    /// The job id (64 hex digits).
    pub job: String,
    /// The run of the query.
    pub lease: u64,
    /// Content hashes of the tasks the run saw folded on this node.
    pub tasks: std::collections::BTreeSet<String>,
    /// The tasks' output schema: the partial aggregate's.
    pub schema: arrow_schema::Schema,
}

/// The JSON of a finish ticket: `{"finish_fold": {...}}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FinishFoldTicket {
    /// The request.
    pub finish_fold: FinishFold,
}

/// The Flight service of one storage node.
pub struct NodeService {
    node: Arc<StorageNode>,
    permits: Arc<Semaphore>,
    /// SHA-256 of each file by (path, size, modification time), computed once.
    checksums: Arc<Checksums>,
    /// Digest of `Bearer <admin token>`: `put_module` needs it in [`ADMIN_HEADER`].
    admin: Option<Vec<u8>>,
    /// Tasks waiting for a permit beyond which a task is passed through; `None`: never.
    passthrough_queue: Option<usize>,
    /// Tasks waiting for a permit now.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Passthrough reads in flight (they hold their input until it is sent).
    pass_permits: Arc<Semaphore>,
}

/// Counts a task as waiting for a permit while it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes of input per row of a [`raw_batch`].
const RAW_CHUNK: usize = 1 << 20;

/// The batch a passed-through task travels in: one `Binary` column `raw` whose rows are
/// the reason, the lenient flag (`1`/`0`), the encoded request, then the input in chunks
/// of at most 1 MiB.
///
/// # Panics
/// Never: the schema is fixed and the column non-null.
pub fn raw_batch(raw: &pushdown_storage_node::passthrough::RawTask) -> arrow_array::RecordBatch {
    let mut rows: Vec<&[u8]> = vec![
        raw.reason.as_bytes(),
        if raw.lenient { b"1" } else { b"0" },
        &raw.request,
    ];
    rows.extend(raw.input.chunks(RAW_CHUNK));
    if raw.input.is_empty() {
        rows.push(&[]);
    }
    let column = arrow_array::BinaryArray::from_iter_values(rows);
    arrow_array::RecordBatch::try_new(raw_schema(), vec![Arc::new(column)])
        .expect("the raw schema fits")
}

fn raw_schema() -> arrow_schema::SchemaRef {
    Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "raw",
        arrow_schema::DataType::Binary,
        false,
    )]))
}

/// The [`pushdown_storage_node::passthrough::RawTask`] of the batches of a passed-through
/// task ([`raw_batch`]), or `None` when they are not one.
pub fn raw_from_batches(
    batches: &[arrow_array::RecordBatch],
) -> Option<pushdown_storage_node::passthrough::RawTask> {
    use arrow_array::cast::AsArray;
    let mut rows = Vec::new();
    for b in batches {
        let column = b.columns().first()?.as_binary_opt::<i32>()?;
        rows.extend(column.iter().map(|v| v.unwrap_or_default()));
    }
    let [reason, lenient, request, input @ ..] = rows.as_slice() else {
        return None;
    };
    Some(pushdown_storage_node::passthrough::RawTask {
        reason: String::from_utf8_lossy(reason).into_owned(),
        lenient: *lenient == b"1",
        request: request.to_vec(),
        input: input.concat(),
    })
}

/// The request header carrying the admin credential (`Bearer <admin token>`) that
/// `put_module` needs, apart from the query token in `authorization`.
pub const ADMIN_HEADER: &str = "x-pushdown-admin";

impl NodeService {
    /// Serves `node`, running at most `max_tasks` tasks at once, accepting no modules.
    pub fn new(node: Arc<StorageNode>, max_tasks: usize) -> Self {
        Self {
            node,
            permits: Arc::new(Semaphore::new(max_tasks.max(1))),
            checksums: Arc::default(),
            admin: None,
            passthrough_queue: None,
            waiting: Arc::default(),
            pass_permits: Arc::new(Semaphore::new(2 * max_tasks.max(1))),
        }
    }

    /// One of the `max_tasks` permits: a task (or a module check) runs while holding it.
    async fn task_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the node is shutting down"))
    }

    /// `DoGet` of a finish ticket: drains the fold job on a task slot and streams the
    /// merged partial aggregate, with its metrics, as a task's result.
    async fn finish_fold(
        &self,
        finish: FinishFold,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let permit = self.task_permit().await?;
        let node = self.node.clone();
        let schema = Arc::new(finish.schema.clone());
        let output = tokio::task::spawn_blocking(move || {
            node.finish_fold(&finish.job, finish.lease, &finish.tasks, &finish.schema)
        })
        .await
        .map_err(|e| Status::internal(format!("finish panicked: {e}")))?
        .map_err(|e| Status::failed_precondition(e.to_string()))?;
        let metrics = serde_json::to_vec(&output.metrics).expect("metrics serialize");
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_metadata(metrics.into())
            .build(futures::stream::iter(output.batches.into_iter().map(Ok)))
            .map(move |r| {
                let _held = &permit;
                r.map_err(|e| Status::internal(e.to_string()))
            });
        Ok(Response::new(Box::pin(data)))
    }

    /// Passes a task through (returns its input for the intermediary to run) when more
    /// than `queue` tasks are waiting for a permit. `None` (the default): tasks wait.
    pub fn with_passthrough_queue(mut self, queue: Option<usize>) -> Self {
        self.passthrough_queue = queue;
        self
    }

    /// Accepts `put_module` from callers that send `admin_token` in [`ADMIN_HEADER`].
    /// `None` (the default): every `put_module` is refused.
    pub fn with_admin_token(mut self, admin_token: Option<String>) -> Self {
        self.admin = admin_token.map(|t| crate::auth::bearer_digest(&t));
        self
    }
}

fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Describes every table of `node`.
fn describe_tables(
    node: &StorageNode,
    checksums: &Checksums,
) -> pushdown_storage_node::Result<Vec<TableDescription>> {
    let mut out = Vec::new();
    for name in node.list_tables()?.into_keys() {
        let Some(table) = node.table(&name)? else {
            continue;
        };
        let mut files = Vec::new();
        for f in &table.files {
            let io = |error| pushdown_storage_node::Error::Io {
                path: f.path.clone(),
                error,
            };
            let modified = std::fs::metadata(&f.abs_path)
                .and_then(|m| m.modified())
                .map_err(io)?;
            let key = (f.path.clone(), f.len, modified);
            let known = checksums.lock().expect("not poisoned").get(&key).cloned();
            let sha256 = match known {
                Some(s) => s,
                None => {
                    let s = file_sha256(&f.abs_path).map_err(io)?;
                    checksums
                        .lock()
                        .expect("not poisoned")
                        .insert(key, s.clone());
                    s
                }
            };
            let row_groups = f
                .footer
                .iter()
                .flat_map(|footer| footer.metadata.row_groups())
                .map(|rg| RowGroupSummary {
                    rows: rg.num_rows(),
                    bytes: rg.total_byte_size(),
                    min_max: rg
                        .columns()
                        .iter()
                        .filter_map(|c| {
                            let s = c.statistics()?;
                            let (min, max) = statistic_bounds(s)?;
                            Some((c.column_path().string(), min, max))
                        })
                        .collect(),
                })
                .collect();
            files.push(FileDescription {
                path: f.path.clone(),
                len: f.len,
                sha256,
                units: f.units.clone(),
                row_groups,
                csv: f.csv.clone(),
            });
        }
        out.push(TableDescription {
            name,
            format: table.format.clone(),
            schema: table.schema.as_ref().clone(),
            files,
        });
    }
    Ok(out)
}

/// The min and max of a column chunk's statistics, displayed.
fn statistic_bounds(s: &parquet::file::statistics::Statistics) -> Option<(String, String)> {
    use parquet::file::statistics::Statistics as S;
    fn pair<T: std::fmt::Debug + ?Sized>(
        min: Option<&T>,
        max: Option<&T>,
    ) -> Option<(String, String)> {
        Some((format!("{:?}", min?), format!("{:?}", max?)))
    }
    match s {
        S::Boolean(v) => pair(v.min_opt(), v.max_opt()),
        S::Int32(v) => pair(v.min_opt(), v.max_opt()),
        S::Int64(v) => pair(v.min_opt(), v.max_opt()),
        S::Int96(v) => pair(v.min_opt(), v.max_opt()),
        S::Float(v) => pair(v.min_opt(), v.max_opt()),
        S::Double(v) => pair(v.min_opt(), v.max_opt()),
        S::ByteArray(v) => Some((
            String::from_utf8_lossy(v.min_bytes_opt()?).into_owned(),
            String::from_utf8_lossy(v.max_bytes_opt()?).into_owned(),
        )),
        S::FixedLenByteArray(v) => pair(v.min_bytes_opt(), v.max_bytes_opt()),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "{what} is not served by a pushdown storage node"
    )))
}

#[tonic::async_trait]
impl FlightService for NodeService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake (send the bearer token in the authorization header)")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights (use DoAction \"tables\")")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented("GetFlightInfo")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented("GetSchema")
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = &request.get_ref().ticket;
        if ticket.starts_with(FINISH_FOLD_PREFIX) {
            let finish: FinishFoldTicket = serde_json::from_slice(ticket)
                .map_err(|e| Status::invalid_argument(format!("malformed finish ticket: {e}")))?;
            return self.finish_fold(finish.finish_fold).await;
        }
        let task: Task = serde_json::from_slice(ticket)
            .map_err(|e| Status::invalid_argument(format!("malformed task ticket: {e}")))?;
        let node = self.node.clone();
        let mut schema = Arc::new(task.output_schema.clone());
        let waiting = Waiting(self.waiting.clone());
        let now_waiting = waiting.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let saturated = self
            .passthrough_queue
            .is_some_and(|q| now_waiting >= q && self.permits.available_permits() == 0);
        let pass_permit = match saturated {
            true => self.pass_permits.clone().try_acquire_owned().ok(),
            false => None,
        };
        let (permit, run) = match pass_permit {
            Some(permit) => {
                let reason = format!(
                    "the storage node was saturated (more than {} tasks waiting)",
                    self.passthrough_queue.unwrap_or_default()
                );
                let run = tokio::task::spawn_blocking(move || {
                    node.pass_through(&task.unfolded(), &reason)
                });
                (permit, run)
            }
            None => {
                let permit = self.task_permit().await?;
                (
                    permit,
                    tokio::task::spawn_blocking(move || node.run_task(&task)),
                )
            }
        };
        drop(waiting);
        let mut output = run
            .await
            .map_err(|e| Status::internal(format!("task panicked: {e}")))?
            .map_err(|e| match e.root() {
                // A module this node does not hold (never sent, or forgotten): the
                // intermediary sends it again.
                pushdown_storage_node::Error::NotFound { .. } => Status::not_found(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            })?;
        if let Some(raw) = output.passthrough.take() {
            schema = raw_schema();
            output.batches = vec![raw_batch(&raw)];
        }
        let metrics = serde_json::to_vec(&output.metrics).expect("metrics serialize");
        let batches = futures::stream::iter(output.batches.into_iter().map(Ok));
        // The task permit is held until the last batch is sent (or the client goes away):
        // results waiting for a slow reader count against `max_tasks` too.
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_metadata(metrics.into())
            .build(batches)
            .map(move |r| {
                let _held = &permit;
                r.map_err(|e| Status::internal(e.to_string()))
            });
        Ok(Response::new(Box::pin(data)))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented("DoPut")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("DoExchange")
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        match request.get_ref().r#type.as_str() {
            "tables" => {
                let (node, checksums) = (self.node.clone(), self.checksums.clone());
                let tables =
                    tokio::task::spawn_blocking(move || describe_tables(&node, &checksums))
                        .await
                        .map_err(|e| Status::internal(format!("listing panicked: {e}")))?
                        .map_err(|e| Status::failed_precondition(e.to_string()))?;
                let body = serde_json::to_vec(&tables).expect("descriptions serialize");
                let result = arrow_flight::Result { body: body.into() };
                Ok(Response::new(Box::pin(futures::stream::once(async move {
                    Ok(result)
                }))))
            }
            "put_module" => {
                let Some(admin) = &self.admin else {
                    return Err(Status::permission_denied(
                        "put_module: this node accepts no modules (start it with --admin-token-file to let an intermediary send them)",
                    ));
                };
                let given = request
                    .metadata()
                    .get(ADMIN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| Sha256::digest(v).to_vec());
                if given.as_deref() != Some(admin.as_slice()) {
                    log::warn!(
                        "refused put_module from {}: no or a wrong admin token",
                        request
                            .remote_addr()
                            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string())
                    );
                    return Err(Status::permission_denied(format!(
                        "put_module: refused: it needs the node's admin token in {ADMIN_HEADER}"
                    )));
                }
                // Validating and compiling a module is a task's worth of CPU: it waits for
                // a task permit like one.
                let permit = self.task_permit().await?;
                // Body: one line of JSON `{"name": ..., "sha256": ...}`, then the module's bytes.
                let body = request.into_inner().body;
                let split = body
                    .iter()
                    .position(|&b| b == b'\n')
                    .ok_or_else(|| Status::invalid_argument("put_module: no header line"))?;
                let plugin: pushdown_protocol::PluginRef = serde_json::from_slice(&body[..split])
                    .map_err(|e| {
                    Status::invalid_argument(format!("put_module: malformed header: {e}"))
                })?;
                let bytes = body.slice(split + 1..);
                let node = self.node.clone();
                tokio::task::spawn_blocking(move || {
                    let installed = node.install_plugin(&plugin, &bytes);
                    drop(permit);
                    installed
                })
                .await
                .map_err(|e| Status::internal(format!("put_module panicked: {e}")))?
                .map_err(|e| {
                    log::warn!("refused a module: {e}");
                    Status::invalid_argument(e.to_string())
                })?;
                let result = arrow_flight::Result {
                    body: Vec::new().into(),
                };
                Ok(Response::new(Box::pin(futures::stream::once(async move {
                    Ok(result)
                }))))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action {other:?}; a storage node serves \"tables\" and \"put_module\""
            ))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let action = ActionType {
            r#type: "tables".into(),
            description: "the node's tables with their schemas, files, checksums and units (JSON)"
                .into(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(action)
        }))))
    }
}
