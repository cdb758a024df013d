//! What a worker of an intermediary tier accepts from a peer: a scan round-trips through
//! the codec and answers as the local scan does, a scan naming a table, file or unit this
//! intermediary's storage does not list fails before any task runs, and a stage plan that
//! writes is refused.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::{DefaultPhysicalProtoConverter, PhysicalExtensionCodec};
use pushdown_intermediary::tier::{check_peer_plan, ScanCodec};
use pushdown_intermediary::{Engine, LocalStorage, PushdownScanExec, StorageClient};
use pushdown_storage_node::StorageNode;

use crate::support::{node_options, tpch};

/// The first pushdown scan of `sql`'s plan over TPC-H lineitem (Parquet), and the storage
/// it runs on.
async fn scan_of(sql: &str) -> (Arc<dyn ExecutionPlan>, Arc<dyn StorageClient>) {
    let dir = tpch().join("parquet");
    let node = Arc::new(StorageNode::open(&dir, node_options(16 << 20)).unwrap());
    let storage: Arc<dyn StorageClient> = Arc::new(LocalStorage::new(node, 2).unwrap());
    let engine = Engine::with_partitions(storage.clone(), None, None, 2);
    let query = engine.plan(sql).await.unwrap();
    let mut scan = None;
    query
        .plan()
        .apply(|n| {
            if n.downcast_ref::<PushdownScanExec>().is_some() {
                scan = Some(n.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .unwrap();
    (scan.expect("the plan has a pushdown scan"), storage)
}

fn encode(codec: &ScanCodec, scan: &Arc<dyn ExecutionPlan>) -> String {
    let mut buf = Vec::new();
    codec
        .try_encode(scan.clone(), &mut buf, &DefaultPhysicalProtoConverter {})
        .unwrap();
    String::from_utf8(buf).unwrap()
}

/// Decodes `text` as a peer's scan and runs all its partitions.
async fn run_decoded(codec: &ScanCodec, text: &str) -> datafusion::common::Result<usize> {
    let ctx = SessionContext::new();
    let plan = codec.try_decode(
        text.as_bytes(),
        &[],
        &ctx.task_ctx(),
        &DefaultPhysicalProtoConverter {},
    )?;
    let plan: Arc<dyn ExecutionPlan> =
        Arc::new(datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(plan));
    let batches = collect(plan, ctx.task_ctx()).await?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_scan_runs_as_the_local_one_and_only_over_units_this_intermediary_lists() {
    let sql = "SELECT l_orderkey, l_quantity FROM lineitem WHERE l_quantity > 45";
    let (scan, storage) = scan_of(sql).await;
    let codec = ScanCodec::new(storage);
    let local = {
        let ctx = SessionContext::new();
        let plan: Arc<dyn ExecutionPlan> = Arc::new(
            datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec::new(
                scan.clone(),
            ),
        );
        let batches = collect(plan, ctx.task_ctx()).await.unwrap();
        batches.iter().map(|b| b.num_rows()).sum::<usize>()
    };
    assert!(local > 0);
    let text = encode(&codec, &scan);
    // The encoding names files relative to the data folder and units, never where the
    // files are on disk.
    assert!(text.contains("\"lineitem.parquet\""), "{text}");
    assert!(!text.contains(tpch().to_str().unwrap()), "{text}");
    assert_eq!(run_decoded(&codec, &text).await.unwrap(), local);

    // A file the table does not have, a unit the file does not have, a table this
    // intermediary's storage does not have: refused when the scan runs, naming what.
    let cases = [
        (
            text.replace("\"lineitem.parquet\"", "\"../../etc/passwd\""),
            "which is not a file of that table here",
        ),
        (
            text.replacen("{\"RowGroup\":0}", "{\"RowGroup\":999}", 1),
            "which is not a row group or chunk of that file here",
        ),
        (
            text.replacen("\"table\":\"lineitem\"", "\"table\":\"secrets\"", 1),
            "table secrets, which the storage nodes of this intermediary do not have",
        ),
        (
            text.replacen("\"version\":1", "\"version\":99", 1),
            "encoding version 99",
        ),
    ];
    for (tampered, expected) in cases {
        assert_ne!(tampered, text, "the tampering applies: {expected}");
        let err = run_decoded(&codec, &tampered)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_plan_that_writes_is_refused_and_one_that_reads_values_is_not() {
    let ctx = SessionContext::new();
    ctx.sql("CREATE TABLE t (a INT)").await.unwrap();
    let check = |plan: Arc<dyn ExecutionPlan>| {
        let config = ctx.state().config().clone();
        check_peer_plan(datafusion_distributed::WorkerPlanRewriteEvent {
            plan,
            session_config: &config,
        })
        .map(|_| ())
    };
    let insert = ctx
        .sql("INSERT INTO t VALUES (1)")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let err = check(insert).unwrap_err().to_string();
    assert!(err.contains("writes (DataSinkExec): refused"), "{err}");
    let values = ctx
        .sql("SELECT column1 + 1 FROM (VALUES (1), (2))")
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    check(values).unwrap();
}
