//! The harness measures what it says: every stage and task gives the same rows natively and
//! in Wasm, whole-process runs report the child's own peak memory, and the report renders.

use std::process::Command;
use std::time::Duration;

use pushdown_benches::harness::{geometric_mean, run_process, Mode, Nodes, ProcessRun};
use pushdown_benches::report::{BenchOptions, EndToEnd, NativeVsWasm, Report};
use pushdown_benches::TpchFixture;

#[test]
fn stages_and_tasks_agree_native_and_wasm() {
    let fixture = TpchFixture::new(0.01, 20_000);
    let nodes = Nodes::open(fixture.dir()).unwrap();
    for case in nodes.stage_cases().unwrap() {
        let native = case.call(Mode::Native, 2).unwrap();
        let wasm = case.call(Mode::Wasm, 2).unwrap();
        assert!(native > 0, "{}: no rows", case.id);
        assert_eq!(
            native, wasm,
            "{}: native and Wasm saw different rows",
            case.id
        );
        // repeat = 0 still prepares the input; the stage simply does not run.
        assert!(case.time(Mode::Wasm, 0).is_ok(), "{}", case.id);
    }
    for case in nodes.task_cases().unwrap() {
        let native = case.call(Mode::Native).unwrap();
        assert!(native > 0, "{}: no result rows", case.id);
        assert_eq!(native, case.call(Mode::Wasm).unwrap(), "{}", case.id);
    }
}

#[test]
fn a_stage_needing_an_aggregate_on_a_projection_fails_clearly() {
    use pushdown_protocol::{Stage, StageRun};
    let fixture = TpchFixture::new(0.01, 20_000);
    let node = TpchFixture::node(&fixture.parquet);
    let mut task = pushdown_benches::q1_task("lineitem.parquet", 0);
    task.pushdown = pushdown_protocol::Pushdown::Project(vec![(
        "l_tax".into(),
        pushdown_protocol::Expr::Column("l_tax".into()),
    )]);
    let run = StageRun {
        stage: Stage::Merge,
        repeat: 1,
    };
    let err = node.run_stage(&task, run).unwrap_err().to_string();
    assert!(
        err.contains("stage merge needs a task with a partial aggregate"),
        "{err}"
    );
    assert!(err.contains("lineitem.parquet: row group 0"), "{err}");
}

#[test]
fn process_runs_report_the_childs_own_peak_memory() {
    // A child that touches 200 MiB: its peak is at least that, and a small child's is far
    // below it (not the test process's own peak, which Linux carries across fork and exec).
    let python = |code: &str| {
        let mut c = Command::new("python3");
        c.arg("-c").arg(code);
        c
    };
    let big = run_process(&python("b = bytearray(200 << 20)")).unwrap();
    let small = run_process(&python("pass")).unwrap();
    let (big, small) = (big.max_rss.unwrap(), small.max_rss.unwrap());
    assert!(big >= 200 << 20, "peak of {big} bytes");
    assert!(small < 100 << 20, "peak of {small} bytes");
    let err = run_process(&python("import sys; sys.exit('no such table: x')"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("python3 failed") && err.contains("no such table: x"),
        "{err}"
    );
}

#[test]
fn the_report_renders_tables_and_a_chart() {
    let ms = Duration::from_millis;
    let run = |t| ProcessRun {
        wall: ms(t),
        max_rss: Some(100 << 20),
    };
    let report = Report {
        options: BenchOptions {
            scale: 1.0,
            data: "data".into(),
            out: "out".into(),
            threads: 2,
            runs: 5,
            pushdown: "pushdown".into(),
            duckdb: Some("duckdb".into()),
        },
        machine: "test machine".into(),
        stages: vec![
            NativeVsWasm {
                label: "parse (x)".into(),
                native: ms(10),
                wasm: ms(20),
            },
            NativeVsWasm {
                label: "filter (y)".into(),
                native: ms(10),
                wasm: ms(5),
            },
        ],
        tasks: vec![],
        startup: (ms(7000), ms(20), Duration::from_micros(5), 1 << 20),
        end_to_end: vec![EndToEnd {
            query: "Q6",
            format: "Parquet",
            pushdown: run(150),
            duckdb: Some(run(100)),
            bytes_read: 63 << 20,
            bytes_returned: 2048,
        }],
    };
    let (geo, max) = report.stage_summary();
    assert!((geo - geometric_mean(&[2.0, 0.5])).abs() < 1e-9 && (geo - 1.0).abs() < 1e-9);
    assert_eq!(max, 2.0);
    let md = report.markdown();
    assert!(
        md.contains("| parse (x) | 10.00 ms | 20.00 ms | 2.00× |"),
        "{md}"
    );
    assert!(
        md.contains(
            "| Q6 | Parquet | 150.00 ms | 100.00 ms | 1.50× | 100.0 MiB | 63.0 MiB | 2.0 KiB |"
        ),
        "{md}"
    );
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("bench.svg");
    report.svg(&svg).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("Q6 Parquet") && text.contains("parse"));
}
