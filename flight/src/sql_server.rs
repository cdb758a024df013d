//! The intermediary as an Arrow Flight SQL server, and a Flight SQL client.
//!
//! `GetFlightInfo(CommandStatementQuery)` plans the SQL and answers its schema with one
//! endpoint whose ticket carries the statement; `DoGet` runs it and streams the result.
//! Standard clients work: the ADBC Flight SQL driver, JDBC, `pushdown query --connect`.

use std::pin::Pin;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use arrow_schema::SchemaRef;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use pushdown_intermediary::{Engine, SqlLimits};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::Error;

/// Bounds on what one client request may cost the intermediary.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// SQL text size and nesting depth.
    pub sql: SqlLimits,
    /// A query not answered within this time (planning included) fails. Defaults to 300 s.
    pub timeout: Duration,
    /// Queries running at once; more are refused with `RESOURCE_EXHAUSTED`. Defaults to 16.
    pub max_queries: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self {
            sql: SqlLimits::default(),
            timeout: Duration::from_secs(300),
            max_queries: 16,
        }
    }
}

/// The Flight SQL service over an [`Engine`]: read-only SQL, each request planned in a
/// session state of its own, within [`QueryLimits`].
pub struct SqlService {
    engine: Arc<Engine>,
    limits: QueryLimits,
    running: Arc<Semaphore>,
    /// The runtime queries execute on, apart from the one serving the network; `None`:
    /// the serving runtime.
    cpu: Option<tokio::runtime::Handle>,
    /// In a tier: the peers, named in the error of a query that failed while one is down.
    peers: Option<Arc<crate::Peers>>,
}

impl SqlService {
    /// Serves queries with `engine` within the default [`QueryLimits`].
    pub fn new(engine: Arc<Engine>) -> Self {
        Self::with_limits(engine, QueryLimits::default())
    }

    /// Serves queries with `engine` within `limits`.
    pub fn with_limits(engine: Arc<Engine>, limits: QueryLimits) -> Self {
        Self {
            engine,
            running: Arc::new(Semaphore::new(limits.max_queries.max(1))),
            limits,
            cpu: None,
            peers: None,
        }
    }

    /// Names, in the error of a failed query, the peers of `peers` found down at that
    /// moment (a peer that died mid-query fails it with a bare transport error).
    pub fn with_peers(mut self, peers: Arc<crate::Peers>) -> Self {
        self.peers = Some(peers);
        self
    }

    /// Executes queries on `cpu`, a runtime for CPU-bound work: an operator that computes
    /// for seconds between two batches then never holds up the network, other clients'
    /// requests or a query's deadline (as DataFusion advises for servers).
    pub fn with_cpu_runtime(mut self, cpu: tokio::runtime::Handle) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// The refusal of a query over the cap on queries running at once.
    fn busy(&self) -> Status {
        Status::resource_exhausted(format!(
            "{} queries are running, the limit of this server; try again later",
            self.limits.max_queries
        ))
    }

    /// Plans `sql` as an untrusted client's query, within the time limit.
    async fn plan(&self, sql: &str) -> Result<pushdown_intermediary::Query, Status> {
        let timeout = self.limits.timeout;
        tokio::time::timeout(timeout, self.engine.plan_read_only(sql, self.limits.sql))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "the query was not planned within its deadline of {} s",
                    timeout.as_secs_f64()
                ))
            })?
            .map_err(query_error)
    }
}

fn query_error(e: pushdown_intermediary::Error) -> Status {
    match e {
        pushdown_intermediary::Error::Storage(e) => Status::internal(e.to_string()),
        pushdown_intermediary::Error::Refused(m) => Status::permission_denied(m),
        other => Status::invalid_argument(other.to_string()),
    }
}

#[tonic::async_trait]
impl FlightSqlService for SqlService {
    type FlightService = SqlService;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // A server at its cap refuses before planning, too.
        if self.running.available_permits() == 0 {
            return Err(self.busy());
        }
        let planned = self.plan(&query.query).await?;
        let schema = planned.plan().schema();
        let ticket = TicketStatementQuery {
            statement_handle: query.query.into_bytes().into(),
        };
        let ticket = Ticket::new(ticket.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(request.into_inner());
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let wants_report = request.metadata().contains_key(RUN_REPORT_HEADER);
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the statement is not UTF-8"))?;
        let permit = self
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| self.busy())?;
        let started = tokio::time::Instant::now();
        let planned = self.plan(&sql).await?;
        // The query's slot is held until its work has ended on the CPU runtime.
        let (stream, permit) = match &self.cpu {
            Some(cpu) => (planned.stream_on(cpu, permit), None),
            None => (planned.stream().map_err(query_error)?, Some(permit)),
        };
        let schema = stream.schema();
        let timeout = self.limits.timeout;
        let stream = with_deadline(stream, started + timeout, timeout);
        let peers = self.peers.clone();
        let stream = stream.then(move |item| {
            let peers = peers.clone();
            async move {
                match (item, peers) {
                    (Err(e), Some(peers)) => {
                        let down = peers.down_now().await;
                        let text = e.to_string();
                        if down.is_empty() && refused_between_peers(&text) {
                            Err(datafusion::common::DataFusionError::Execution(format!(
                                "{text}; a call between this tier's intermediaries (this one and {}) was refused: they must trust each other's certificates (--peer-tls-ca) and share one --peer-token-file",
                                url_list(&peers.peer_urls())
                            )))
                        } else if down.is_empty() {
                            Err(e)
                        } else {
                            Err(datafusion::common::DataFusionError::Execution(format!(
                                "{e}; peer intermediary {} of this tier is not answering: run the query again, the tier that is left answers it",
                                url_list(&down)
                            )))
                        }
                    }
                    (item, _) => item,
                }
            }
        });
        // Reports what crossed between the tiers once the result has been sent.
        let report = Arc::new(RunReport {
            query: planned,
            started: std::time::Instant::now(),
        });
        let for_client = report.clone();
        // The report lives as long as the stream: it logs when the stream is dropped.
        let batches = stream.map(move |r| {
            let _alive = (&report, &permit);
            r.map_err(|e| {
                FlightError::ExternalError(Box::new(pushdown_intermediary::Error::Query(e)))
            })
        });
        // A client that asked for the run report gets it after the result: one more,
        // empty batch whose message carries the report as `app_metadata`.
        let last = wants_report.then(|| Ok(RecordBatch::new_empty(schema.clone())));
        let batches = batches.chain(futures::stream::iter(last));
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(inner) => Status::internal(inner.to_string()),
                other => Status::internal(other.to_string()),
            });
        let data = with_report_on_last(data, wants_report.then_some(for_client));
        let data: Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>> =
            Box::pin(data);
        Ok(Response::new(data))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// `stream`, ending with an error once `deadline` has passed (dropping `stream`, which
/// stops its tasks).
fn with_deadline(
    stream: datafusion::physical_plan::SendableRecordBatchStream,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> impl Stream<Item = datafusion::common::Result<RecordBatch>> + Send {
    futures::stream::unfold(Some(stream), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => Some((item, Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(datafusion::common::DataFusionError::Execution(format!(
                    "the query ran past its deadline of {} s and was stopped",
                    timeout.as_secs_f64()
                ))),
                None,
            )),
        }
    })
}

/// The request header (any value) with which a client asks for the run report after the
/// result ([`query_remote_with_report`]).
pub const RUN_REPORT_HEADER: &str = "x-pushdown-run-report";

/// `data` with, when `report` is given, the run report (what the storage nodes did: tasks,
/// pruning, cache, passthrough, folds) set as `app_metadata` of its last message, written
/// once that message is the last: after the query finished.
fn with_report_on_last(
    data: impl Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static,
    report: Option<Arc<RunReport>>,
) -> impl Stream<Item = Result<arrow_flight::FlightData, Status>> + Send {
    let Some(report) = report else {
        return data.left_stream();
    };
    let data = Box::pin(data);
    futures::stream::unfold(
        (data, None::<arrow_flight::FlightData>, Some(report)),
        |(mut data, mut held, report)| async move {
            let report = report?;
            loop {
                match data.next().await {
                    Some(Ok(next)) => {
                        // Each message is sent once the next one exists: the last is kept.
                        if let Some(previous) = held.replace(next) {
                            return Some((Ok(previous), (data, held, Some(report))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (data, None, None))),
                    None => {
                        let mut last = held?;
                        last.app_metadata = report.query.run_report().into_bytes().into();
                        return Some((Ok(last), (data, None, None)));
                    }
                }
            }
        },
    )
    .right_stream()
}

/// Logs (info) a query's tasks, bytes and rows when dropped, after its result was sent.
struct RunReport {
    query: pushdown_intermediary::Query,
    started: std::time::Instant,
}

impl Drop for RunReport {
    fn drop(&mut self) {
        let report = self.query.run_report();
        let (read, returned) = self.query.scan_bytes();
        log::info!(
            "query done in {:.3} s: bytes read on the storage nodes {read}, bytes returned to the intermediary {returned}; {}",
            self.started.elapsed().as_secs_f64(),
            report.lines().skip(1).collect::<Vec<_>>().join("; ")
        );
    }
}

/// An intermediary's tier, as its server needs it.
#[derive(Debug, Clone)]
pub struct TierServe {
    /// The peers (named in failed queries' errors while down).
    pub peers: Arc<crate::Peers>,
    /// Bearer token the peers' calls to this intermediary's worker must carry; `None`: no
    /// check.
    pub token: Option<String>,
}

/// Serves Flight SQL over `engine` on `listener` until the process ends, executing
/// queries on `cpu` when given (see [`SqlService::with_cpu_runtime`]). An engine in a tier
/// ([`Engine::with_tier`]) also serves its worker on the same port, to calls carrying
/// `tier`'s token.
///
/// # Errors
/// [`Error::Transport`] when serving fails.
pub async fn serve_sql(
    engine: Arc<Engine>,
    listener: TcpListener,
    security: crate::Security,
    limits: QueryLimits,
    cpu: Option<tokio::runtime::Handle>,
    tier: Option<TierServe>,
) -> Result<(), Error> {
    // Peers' stages run on the CPU runtime, as client queries do.
    let worker = engine.worker().map(|worker| crate::WorkerServe {
        worker,
        token: tier.as_ref().and_then(|t| t.token.clone()),
        cpu: cpu.clone(),
    });
    let mut service = SqlService::with_limits(engine, limits);
    if let Some(cpu) = cpu {
        service = service.with_cpu_runtime(cpu);
    }
    if let Some(tier) = tier {
        service = service.with_peers(tier.peers);
    }
    crate::serve(service, listener, security, MAX_REQUEST_BYTES, worker).await
}

/// Largest request message the intermediary decodes (a Flight SQL command carrying the
/// SQL text): 4 MiB. Larger ones are refused from their length prefix, before they are read.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Runs `sql` on the Flight SQL server at `url` (`http://host:port`, or `https://` with
/// `tls`), with `token` as the bearer token, and returns the result's schema and batches.
///
/// # Errors
/// [`Error::Transport`] when the server cannot be reached; [`Error::Remote`] with the
/// server's message when the query fails.
pub async fn query_remote(
    url: &str,
    token: Option<&str>,
    tls: Option<&crate::ClientTls>,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>), Error> {
    query_remote_with_report(url, token, tls, sql, false)
        .await
        .map(|(schema, batches, _)| (schema, batches))
}

/// [`query_remote`], and with `report` the intermediary's run report of the query (what
/// the storage nodes did: tasks scanned and pruned, cache hits, passthrough, folds), which
/// it sends after the result to a client that asks ([`RUN_REPORT_HEADER`]).
///
/// # Errors
/// As [`query_remote`].
pub async fn query_remote_with_report(
    url: &str,
    token: Option<&str>,
    tls: Option<&crate::ClientTls>,
    sql: &str,
    report: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>, Option<String>), Error> {
    let channel = crate::endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| Error::Transport(format!("cannot connect to {url}: {e}")))?;
    let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel)
        .max_decoding_message_size(usize::MAX);
    let mut client = FlightSqlServiceClient::new_from_inner(inner);
    if let Some(t) = token {
        client.set_token(t.to_string());
    }
    if report {
        client.set_header(RUN_REPORT_HEADER, "1");
    }
    let remote = |e: FlightError| Error::Remote(describe_flight(e));
    let info = client
        .execute(sql.to_string(), None)
        .await
        .map_err(remote)?;
    let schema: SchemaRef = Arc::new(
        info.clone()
            .try_decode_schema()
            .map_err(|e| Error::Remote(e.to_string()))?,
    );
    let (mut batches, mut run_report) = (Vec::new(), None);
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let mut stream = client.do_get(ticket).await.map_err(remote)?.into_inner();
        while let Some(data) = stream.next().await {
            let data = data.map_err(|e| Error::Remote(describe_flight(e)))?;
            let carries_report = report && !data.inner.app_metadata.is_empty();
            if carries_report {
                run_report = Some(String::from_utf8_lossy(&data.inner.app_metadata).into_owned());
            }
            if let arrow_flight::decode::DecodedPayload::RecordBatch(b) = data.payload {
                if !(carries_report && b.num_rows() == 0) {
                    batches.push(b);
                }
            }
        }
    }
    Ok((schema, batches, run_report))
}

fn describe_flight(e: FlightError) -> String {
    match e {
        FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

/// Peer URLs for an error message: `http://a:1, http://b:2` (no trailing slashes).
fn url_list(urls: &[url::Url]) -> String {
    urls.iter()
        .map(|u| u.as_str().trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a failed query's error is a peer refusing this intermediary (or this one
/// refusing the peer's certificate) rather than a fault in the query: a TLS handshake
/// that failed, or a peer's worker refusing the tier's bearer token.
fn refused_between_peers(error: &str) -> bool {
    error.contains("invalid peer certificate")
        || error.contains("wrong bearer token")
        || error.contains("missing or wrong token")
        || error.contains("certificate required")
        || error.contains("HandshakeFailure")
}
