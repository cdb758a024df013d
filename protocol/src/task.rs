//! The task: one row group or CSV chunk, and what to compute over it.

use arrow_schema::Schema;
use serde::{Deserialize, Serialize};

use crate::csv::CsvDialect;
use crate::expr::{AggregateFunction, Expr, PartialAggregate};
use crate::plugin::PluginRef;

/// Version of the JSON encoding of [`Task`] and [`GuestRequest`]. A guest refuses a
/// request whose version differs.
pub const PROTOCOL_VERSION: u32 = 1;

/// The on-disk format of a table's files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileFormat {
    /// Apache Parquet; one task per row group.
    Parquet,
    /// RFC 4180 CSV with a header row; one task per chunk of whole records.
    Csv,
    /// Lines read by a registered parser plugin; one task per chunk of whole lines. The
    /// storage node runs the parser on the chunk and hands its Arrow IPC output to the
    /// built-in pipeline as the input.
    Plugin(PluginRef),
}

impl std::fmt::Display for FileFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileFormat::Parquet => f.write_str("Parquet"),
            FileFormat::Csv => f.write_str("CSV"),
            FileFormat::Plugin(p) => write!(f, "parser {}", p.name),
        }
    }
}

/// A half-open byte range `[start, end)` of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte, counted from the start of the file.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True when the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one task reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskUnit {
    /// One row group of a Parquet file, by index in the footer.
    RowGroup(usize),
    /// One chunk of a CSV file: whole records, starting after the header.
    CsvChunk(ByteRange),
    /// One chunk of whole lines for a parser plugin; `first_line` is the 1-based line
    /// number of its first line in the file.
    Lines {
        /// The chunk's bytes.
        range: ByteRange,
        /// Line number of the chunk's first line, counted from 1.
        first_line: u64,
    },
}

/// What the sandboxed pipeline computes over the rows that pass the predicate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pushdown {
    /// Evaluate these named expressions per row (a projection).
    Project(Vec<(String, Expr)>),
    /// Group by the named expressions and return one row per group holding the
    /// group values followed by the partial aggregate states.
    PartialAggregate {
        /// Named group-by expressions; empty for a global aggregate (one output row).
        group_by: Vec<(String, Expr)>,
        /// The state columns, in output order after the group columns.
        aggregates: Vec<(String, PartialAggregate)>,
    },
}

impl Pushdown {
    /// Adds the names of the columns the projection, or the aggregate's group keys and
    /// arguments, read to `out`.
    pub fn collect_columns(&self, out: &mut std::collections::BTreeSet<String>) {
        match self {
            Pushdown::Project(exprs) => exprs.iter().for_each(|(_, e)| e.collect_columns(out)),
            Pushdown::PartialAggregate {
                group_by,
                aggregates,
            } => {
                group_by.iter().for_each(|(_, e)| e.collect_columns(out));
                aggregates
                    .iter()
                    .for_each(|(_, a)| a.argument.collect_columns(out));
            }
        }
    }
}

/// One pushdown task, the unit the intermediary sends to a storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Path of the file on the storage node, relative to its data directory.
    pub file: String,
    /// The file's format.
    pub format: FileFormat,
    /// The row group or byte range.
    pub unit: TaskUnit,
    /// Rows for which this is not true are dropped before [`Task::pushdown`].
    pub predicate: Option<Expr>,
    /// What to compute.
    pub pushdown: Pushdown,
    /// The schema of the record batches the task returns.
    pub output_schema: Schema,
    /// At most this many rows are needed (a `LIMIT` above a scan without a predicate or
    /// aggregate): a projecting task stops once it has them. `None`: all rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Fold this task's partial aggregate into a job held on the storage node instead of
    /// returning it ([`FoldRef`]). `None`: return the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<FoldRef>,
}

/// Where a storage node folds a task's partial aggregate: the job, one per scan partition
/// of a query, holding the merged states of its tasks in one Wasm instance that the node
/// may checkpoint to disk (`pushdown-plugins/ABI.md`, "Checkpointed aggregates").
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FoldRef {
    /// The job: hex SHA-256 of the scan's shape and the partition's task list
    /// ([`fold_job_id`]), the same when the same query runs again, so a node that restarted
    /// resumes from its checkpoint.
    pub job: String,
    /// The run of the query that holds the job (random): folds of another run are
    /// refused while this one is active.
    pub lease: u64,
}

impl Task {
    /// This task without its [`Task::fold`]: what it computes.
    pub fn unfolded(&self) -> Task {
        Task {
            fold: None,
            ..self.clone()
        }
    }

    /// Hex SHA-256 of what the task computes over which unit (its JSON without
    /// [`Task::fold`]): how a fold job names the tasks it holds.
    pub fn content_hash(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&self.unfolded()).expect("a Task always serializes");
        hex(&sha2::Sha256::digest(json))
    }

    /// Hex SHA-256 of what the task computes, without the file and unit: equal for the
    /// tasks of one scan, and what a fold job checks each task against.
    pub fn shape_hash(&self) -> String {
        use sha2::Digest;
        let shape = Task {
            file: String::new(),
            unit: TaskUnit::RowGroup(0),
            fold: None,
            ..self.clone()
        };
        hex(&sha2::Sha256::digest(
            serde_json::to_vec(&shape).expect("a Task always serializes"),
        ))
    }
}

/// The job id of a fold over `tasks` (one scan partition's, in order): hex SHA-256 of
/// their content hashes.
pub fn fold_job_id(tasks: &[Task]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"pushdown fold job v1\0");
    for t in tasks {
        h.update(t.content_hash().as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the built-in pipeline's `pushdown_fold` needs to merge a task's partial aggregate
/// into the states its instance holds: the aggregate and its partial output schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FoldRequest {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The task's [`Pushdown::PartialAggregate`].
    pub pushdown: Pushdown,
    /// The partial output schema: group columns, then one state column per aggregate.
    pub output_schema: Schema,
}

impl Task {
    /// The file columns the task reads (its projection), in `file_schema` order; see
    /// [`needed_columns`].
    pub fn needed_columns(&self, file_schema: &Schema) -> Vec<String> {
        needed_columns(self.predicate.as_ref(), &self.pushdown, file_schema)
    }

    /// Every plugin the task runs besides the built-in pipeline: its parser, the scalar
    /// functions it calls and its aggregate plugins, each once, sorted by name.
    pub fn plugins(&self) -> Vec<PluginRef> {
        let mut out = std::collections::BTreeSet::new();
        if let FileFormat::Plugin(p) = &self.format {
            out.insert(p.clone());
        }
        if let Some(p) = &self.predicate {
            p.collect_plugins(&mut out);
        }
        match &self.pushdown {
            Pushdown::Project(exprs) => exprs.iter().for_each(|(_, e)| e.collect_plugins(&mut out)),
            Pushdown::PartialAggregate {
                group_by,
                aggregates,
            } => {
                group_by
                    .iter()
                    .for_each(|(_, e)| e.collect_plugins(&mut out));
                for (_, a) in aggregates {
                    a.argument.collect_plugins(&mut out);
                    if let AggregateFunction::Plugin(p) = &a.function {
                        out.insert(p.clone());
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The file columns that `predicate` and `pushdown` read, in `file_schema` order.
///
/// When they need no column (e.g. `COUNT(*)`), the first column is read for its row count,
/// so the result is empty only for a schema without columns.
pub fn needed_columns(
    predicate: Option<&Expr>,
    pushdown: &Pushdown,
    file_schema: &Schema,
) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    if let Some(p) = predicate {
        p.collect_columns(&mut names);
    }
    pushdown.collect_columns(&mut names);
    let mut ordered: Vec<String> = file_schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| names.contains(n))
        .collect();
    if ordered.is_empty() {
        if let Some(first) = file_schema.fields().first() {
            ordered.push(first.name().clone());
        }
    }
    ordered
}

/// The request the storage node hands to the Wasm pipeline together with the input bytes.
///
/// The input bytes are the concatenation of `segments`, in order: for Parquet the file's
/// footer (metadata, without the trailing length and magic) followed by the needed column
/// chunks (or, with [`GuestRequest::pages`], the needed pages of them); for CSV the chunk
/// itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestRequest {
    /// Must equal [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The task.
    pub task: Task,
    /// The schema the file is read with (CSV: the inferred schema; Parquet: derived from the footer).
    pub file_schema: Schema,
    /// Where each segment of the input bytes sits in the file.
    pub segments: Vec<ByteRange>,
    /// Total length of the file in bytes.
    pub file_len: u64,
    /// Rows per record batch the parser produces.
    pub batch_size: usize,
    /// CSV only: every column is text and an empty field is an empty string, not NULL
    /// (DuckDB's `all_varchar`). Defaults to false.
    #[serde(default)]
    pub csv_all_varchar: bool,
    /// CSV only: the file's dialect (the storage node sniffs it from the file's first
    /// records, or takes what the user set). Defaults to RFC 4180 with a header.
    #[serde(default)]
    pub csv: CsvDialect,
    /// Benchmarks only: run one stage of the pipeline `repeat` times instead of the task
    /// (see [`StageRun`]). Absent in every request a query sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageRun>,
    /// Parquet only: set when the page index let the storage node skip pages of the row
    /// group. The segments then hold only the listed pages (and each column chunk's
    /// dictionary page), and the parser decodes only the selected rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<PageSelection>,
    /// Parquet only: set when the footer segment holds only some of the file's row groups
    /// (the storage node hands each task just its own): the index of the task's row group
    /// in that footer. Absent: the task's own row group index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub footer_row_group: Option<usize>,
    /// The byte lengths of the Bloom filter bitsets of `task.predicate`, in the order of
    /// [`Expr::bloom_bitsets_mut`], when they travel as raw bytes after the segments'
    /// bytes in the input instead of as base64 in this JSON (where they are then `""`).
    /// A bitset of 512 KiB is decoded from base64 by every task otherwise. Absent: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<u64>,
}

impl GuestRequest {
    /// Moves the Bloom filter bitsets of `task.predicate` out of the request, into
    /// [`GuestRequest::blobs`] (their lengths) and the returned bytes, which go after the
    /// segments' bytes in the input. Returns no bytes when the predicate has no bitset.
    pub fn take_blobs(&mut self) -> Vec<Vec<u8>> {
        let mut bitsets = Vec::new();
        if let Some(p) = &mut self.task.predicate {
            p.bloom_bitsets_mut(&mut bitsets);
        }
        let blobs: Vec<Vec<u8>> = bitsets
            .into_iter()
            .map(|b| std::mem::take(&mut b.0))
            .collect();
        self.blobs = blobs.iter().map(|b| b.len() as u64).collect();
        blobs
    }

    /// Puts the bitsets that follow the segments in `input` back into `task.predicate`
    /// (the inverse of [`GuestRequest::take_blobs`]) and truncates `input` to the segments'
    /// bytes. Does nothing without [`GuestRequest::blobs`].
    ///
    /// # Errors
    /// A one-line message when the input is shorter than the blobs or the predicate has
    /// another number of Bloom filters.
    pub fn restore_blobs(&mut self, input: &mut Vec<u8>) -> Result<(), String> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let total = self
            .blobs
            .iter()
            .try_fold(0u64, |a, &b| a.checked_add(b))
            .and_then(|t| usize::try_from(t).ok())
            .filter(|&t| t <= input.len())
            .ok_or_else(|| {
                format!(
                    "the request's {} Bloom filter bitsets do not fit the {}-byte input",
                    self.blobs.len(),
                    input.len()
                )
            })?;
        let mut bitsets = Vec::new();
        if let Some(p) = &mut self.task.predicate {
            p.bloom_bitsets_mut(&mut bitsets);
        }
        if bitsets.len() != self.blobs.len() {
            return Err(format!(
                "the request lists {} Bloom filter bitsets, its predicate has {}",
                self.blobs.len(),
                bitsets.len()
            ));
        }
        let mut at = input.len() - total;
        for (bitset, &len) in bitsets.into_iter().zip(&self.blobs) {
            let len = len as usize;
            bitset.0 = input[at..at + len].to_vec();
            at += len;
        }
        input.truncate(input.len() - total);
        self.blobs.clear();
        Ok(())
    }
}

/// The rows and pages of one row group a task reads, from the Parquet page index
/// ([PageIndex.md](https://github.com/apache/parquet-format/blob/master/PageIndex.md)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageSelection {
    /// Consecutive runs of rows of the row group, from its first row: each skipped or
    /// selected (arrow-rs's `RowSelector`). They cover every row of the row group.
    pub rows: Vec<RowRun>,
    /// The offset index of every column chunk read: its leaf column index and its pages.
    pub columns: Vec<ColumnPages>,
}

/// A run of rows, skipped or selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRun {
    /// Number of rows.
    pub rows: u64,
    /// True when the rows are skipped.
    pub skip: bool,
}

/// The offset index of one column chunk: where each of its data pages is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnPages {
    /// Leaf column index in the file's Parquet schema.
    pub leaf: usize,
    /// Per data page, in order: `[offset in the file, size in bytes with its header,
    /// index of its first row in the row group]` (the Thrift `PageLocation`).
    pub pages: Vec<[i64; 3]>,
}

/// A stage of the built-in pipeline, for benchmarks that time stages one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Decode the row group or CSV chunk into record batches.
    Parse,
    /// Evaluate the predicate and keep the selected rows.
    Filter,
    /// Update a partial aggregate with the selected rows and finish it.
    PartialAggregate,
    /// Merge partial aggregate states (one per batch) into one.
    Merge,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 4] = [
        Stage::Parse,
        Stage::Filter,
        Stage::PartialAggregate,
        Stage::Merge,
    ];

    /// The stage's name: `parse`, `filter`, `partial_aggregate`, `merge`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Filter => "filter",
            Stage::PartialAggregate => "partial_aggregate",
            Stage::Merge => "merge",
        }
    }
}

/// Run `stage` of a task `repeat` times over input the guest prepares once beforehand
/// (the stages before it, run once). The result is the 16-byte row-count header only, no
/// Arrow IPC. A benchmark times a call with `repeat = n` against one with `repeat = 0` to
/// get the stage's own cost, the same way natively and in Wasm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRun {
    /// The stage timed.
    pub stage: Stage,
    /// How many times it runs.
    pub repeat: u32,
}

/// Encodes a request as JSON bytes.
pub fn encode_request(request: &GuestRequest) -> Vec<u8> {
    serde_json::to_vec(request).expect("a GuestRequest always serializes")
}

/// Decodes a request from JSON bytes.
///
/// # Errors
/// A message naming the problem when the bytes are not a request of [`PROTOCOL_VERSION`].
pub fn decode_request(bytes: &[u8]) -> Result<GuestRequest, String> {
    let request: GuestRequest =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed pushdown request: {e}"))?;
    if request.version != PROTOCOL_VERSION {
        return Err(format!(
            "pushdown request version {} is not the supported version {PROTOCOL_VERSION}",
            request.version
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{BloomBits, CmpOp, Literal};
    use arrow_schema::{DataType, Field};

    fn bloom(column: &str, fill: u8, bytes: usize) -> Expr {
        Expr::BloomFilter {
            expr: Box::new(Expr::Column(column.into())),
            bitset: BloomBits(vec![fill; bytes]),
        }
    }

    fn request(predicate: Option<Expr>) -> GuestRequest {
        let schema = Schema::new(vec![Field::new("k", DataType::Int64, false)]);
        GuestRequest {
            version: PROTOCOL_VERSION,
            task: Task {
                file: "t.parquet".into(),
                format: FileFormat::Parquet,
                unit: TaskUnit::RowGroup(0),
                predicate,
                pushdown: Pushdown::Project(vec![("k".into(), Expr::Column("k".into()))]),
                output_schema: schema.clone(),
                limit: None,
                fold: None,
            },
            file_schema: schema,
            segments: vec![ByteRange { start: 4, end: 10 }],
            file_len: 20,
            batch_size: 1024,
            csv_all_varchar: false,
            csv: CsvDialect::default(),
            stage: None,
            pages: None,
            footer_row_group: None,
            blobs: Vec::new(),
        }
    }

    #[test]
    fn bloom_bitsets_travel_after_the_input_and_come_back_in_order() {
        // Two filters, one nested under an OR, of different sizes and contents.
        let predicate = Expr::And(vec![
            bloom("k", 1, 64),
            Expr::Or(vec![
                Expr::Cmp(
                    CmpOp::Lt,
                    Box::new(Expr::Column("k".into())),
                    Box::new(Expr::Literal(Literal::Int(3, DataType::Int64))),
                ),
                bloom("k", 2, 32),
            ]),
        ]);
        let original = request(Some(predicate));
        let mut sent = original.clone();
        let blobs = sent.take_blobs();
        assert_eq!(blobs, vec![vec![1; 64], vec![2; 32]]);
        assert_eq!(sent.blobs, vec![64, 32]);
        let json = encode_request(&sent);
        let text = String::from_utf8(json.clone()).unwrap();
        assert_eq!(text.matches(r#""bitset":"""#).count(), 2, "{text}");

        let segments = b"abcdef".to_vec();
        let mut input = segments.clone();
        blobs.iter().for_each(|b| input.extend_from_slice(b));
        let mut received = decode_request(&json).unwrap();
        received.restore_blobs(&mut input).unwrap();
        assert_eq!(input, segments, "the input is the segments' bytes again");
        assert_eq!(received, original);

        // The blobs must fit the input, one per Bloom filter.
        let mut short = vec![0; 95];
        assert!(decode_request(&json)
            .unwrap()
            .restore_blobs(&mut short)
            .unwrap_err()
            .contains("do not fit"));
        let mut other = decode_request(&json).unwrap();
        other.blobs.push(8);
        let mut long = vec![0; 200];
        assert!(other
            .restore_blobs(&mut long)
            .unwrap_err()
            .contains("lists 3"));
        // Without blobs nothing moves; a request without a Bloom filter has none.
        let mut plain = request(None);
        assert!(plain.take_blobs().is_empty() && plain.blobs.is_empty());
        let mut bytes = b"xyz".to_vec();
        plain.restore_blobs(&mut bytes).unwrap();
        assert_eq!(bytes, b"xyz");
    }
}
