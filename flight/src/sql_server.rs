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
        }
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
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
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
        // Reports what crossed between the tiers once the result has been sent.
        let report = RunReport {
            query: planned,
            started: std::time::Instant::now(),
        };
        // The report lives as long as the stream: it logs when the stream is dropped.
        let batches = stream.map(move |r| {
            let _alive = (&report, &permit);
            r.map_err(|e| {
                FlightError::ExternalError(Box::new(pushdown_intermediary::Error::Query(e)))
            })
        });
        let data = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| match e {
                FlightError::ExternalError(inner) => Status::internal(inner.to_string()),
                other => Status::internal(other.to_string()),
            });
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

/// Serves Flight SQL over `engine` on `listener` until the process ends, executing
/// queries on `cpu` when given (see [`SqlService::with_cpu_runtime`]).
///
/// # Errors
/// [`Error::Transport`] when serving fails.
pub async fn serve_sql(
    engine: Arc<Engine>,
    listener: TcpListener,
    security: crate::Security,
    limits: QueryLimits,
    cpu: Option<tokio::runtime::Handle>,
) -> Result<(), Error> {
    let mut service = SqlService::with_limits(engine, limits);
    if let Some(cpu) = cpu {
        service = service.with_cpu_runtime(cpu);
    }
    crate::serve(service, listener, security, MAX_REQUEST_BYTES).await
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
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let Some(ticket) = endpoint.ticket else {
            continue;
        };
        let mut stream = client.do_get(ticket).await.map_err(remote)?;
        while let Some(b) = stream.next().await {
            batches.push(b.map_err(|e| Error::Remote(describe_flight(e)))?);
        }
    }
    Ok((schema, batches))
}

fn describe_flight(e: FlightError) -> String {
    match e {
        FlightError::Tonic(status) => status.message().to_string(),
        other => other.to_string(),
    }
}
