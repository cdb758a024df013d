//! A storage node on loopback against a Flight client that crafts its own task tickets:
//! every name and range in a task is checked against what the node itself listed.

use std::sync::Arc;

use arrow_flight::{FlightClient, Ticket};
use futures::TryStreamExt;
use pushdown_flight::{NodeService, Security};
use pushdown_protocol::{ByteRange, Expr, FileFormat, Pushdown, Task, TaskUnit};
use pushdown_storage_node::{NodeOptions, StorageNode};

/// A node over a folder holding `t.csv` (1000 rows, chunks of 4 KiB), served on loopback;
/// returns the node, a client and the table's units.
async fn node() -> (tempfile::TempDir, FlightClient, Arc<StorageNode>) {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("a,b\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i},row {i}\n"));
    }
    std::fs::write(dir.path().join("t.csv"), csv).unwrap();
    let options = NodeOptions {
        csv_chunk_size: 4096,
        ..Default::default()
    };
    let node = Arc::new(StorageNode::open(dir.path(), options).unwrap());
    let (listener, addr) = pushdown_flight::bind("127.0.0.1:0").await.unwrap();
    let service = NodeService::new(node.clone(), 2);
    tokio::spawn(pushdown_flight::serve_node(
        service,
        listener,
        Security::default(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (dir, FlightClient::new(channel), node)
}

fn task(node: &StorageNode, unit: TaskUnit, format: FileFormat, file: &str) -> Task {
    let table = node.table("t").unwrap().unwrap();
    let schema = table.schema.project(&[0]).unwrap();
    Task {
        file: file.to_string(),
        format,
        unit,
        predicate: None,
        pushdown: Pushdown::Project(vec![("a".into(), Expr::Column("a".into()))]),
        output_schema: schema,
        limit: None,
        fold: None,
    }
}

/// Rows returned, or the error the node answered.
async fn run(client: &mut FlightClient, task: &Task) -> Result<usize, String> {
    let ticket = Ticket::new(serde_json::to_vec(task).unwrap());
    let stream = client.do_get(ticket).await.map_err(|e| e.to_string())?;
    let batches: Vec<_> = stream.try_collect().await.map_err(|e| e.to_string())?;
    Ok(batches.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_name_only_the_files_units_and_formats_the_node_listed() {
    let (_dir, mut client, node) = node().await;
    let table = node.table("t").unwrap().unwrap();
    let units = table.files[0].units.clone();
    assert!(units.len() > 1, "{units:?}");
    let mut rows = 0;
    for unit in &units {
        rows += run(
            &mut client,
            &task(&node, unit.clone(), FileFormat::Csv, "t.csv"),
        )
        .await
        .unwrap();
    }
    assert_eq!(rows, 1000);
    // A byte range of the client's choosing: the header parsed as data, the whole file as
    // one task, or 4 GiB.
    for (start, end) in [(0, 200), (0, 1 << 40), (0, u64::from(u32::MAX))] {
        let unit = TaskUnit::CsvChunk(ByteRange { start, end });
        let err = run(&mut client, &task(&node, unit, FileFormat::Csv, "t.csv"))
            .await
            .unwrap_err();
        assert!(
            err.contains("t.csv") && err.contains("is not one of the file's units"),
            "{err}"
        );
    }
    // The CSV file read as Parquet.
    let err = run(
        &mut client,
        &task(&node, TaskUnit::RowGroup(0), FileFormat::Parquet, "t.csv"),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("the task reads it as Parquet, but it is a CSV file"),
        "{err}"
    );
    // Files the node did not list.
    for file in ["../t.csv", "/etc/passwd", "t.csv/../../x"] {
        let err = run(
            &mut client,
            &task(&node, units[0].clone(), FileFormat::Csv, file),
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("not a file of a table of this storage node"),
            "{file}: {err}"
        );
    }
    // The node still answers a proper task.
    assert!(run(
        &mut client,
        &task(&node, units[0].clone(), FileFormat::Csv, "t.csv")
    )
    .await
    .is_ok());
}
