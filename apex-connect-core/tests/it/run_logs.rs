// The events logged inside a sync run are stored as its log lines when a `RunLogLayer` is in
// the subscriber: levels, the minimum level, the caps, and nothing without a layer.

use std::sync::Arc;

use apex_connect_core::store::{LogLevel, MemoryStore, RunLogLine, RunStatus, RunStore};
use apex_connect_core::{
    Capabilities, ConnectionId, Connector, ConnectorInfo, CursorToken, Error, NullSink, Page,
    Record, Result, RunLogLayer, StreamId, SyncEngine, SyncOptions, async_trait,
};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

/// Three pages of two records; logs on each read, more on the second page; fails on the
/// third page when asked to; logs `noise` more info lines on the first.
#[derive(Debug)]
struct Chatty {
    info: ConnectorInfo,
    fail: bool,
    noise: usize,
}

impl Chatty {
    fn new() -> Self {
        Chatty {
            info: ConnectorInfo::new("chatty", "1", Capabilities::default()),
            fail: false,
            noise: 0,
        }
    }
}

#[async_trait]
impl Connector for Chatty {
    fn info(&self) -> &ConnectorInfo {
        &self.info
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn read(&self, stream: &StreamId, cursor: Option<&CursorToken>) -> Result<Page> {
        let page: u32 = cursor.map_or(0, |c| c.as_str().parse().unwrap());
        tracing::info!(page, "reading page");
        tracing::debug!(page, "debug detail");
        if page == 0 {
            for i in 0..self.noise {
                tracing::info!(i, "noise");
            }
        }
        if page == 1 {
            tracing::warn!(page, retry_in_ms = 250, "slow page");
            tracing::info!("{}", "x".repeat(1_000));
        }
        if page == 2 && self.fail {
            tracing::error!(page, "platform answered 500");
            return Err(Error::storage("platform down"));
        }
        let records = (0..2)
            .map(|i| {
                Record::upsert(
                    stream.clone(),
                    format!("r{page}-{i}"),
                    serde_json::json!({}),
                )
            })
            .collect();
        Ok(Page::new(
            records,
            Some(CursorToken::from_string((page + 1).to_string())),
            page < 2,
        ))
    }
}

async fn sync(
    store: &Arc<MemoryStore>,
    connector: &Chatty,
) -> (apex_connect_core::store::RunId, bool) {
    let engine = SyncEngine::new(store.clone());
    let result = engine
        .run(
            connector,
            &ConnectionId::from("acme"),
            &StreamId::from("contacts"),
            &NullSink::new(),
            SyncOptions::new().full(true).read_ahead(false),
        )
        .await;
    let run = store.list_runs(None, 1).await.unwrap()[0].id;
    (run, result.is_ok())
}

fn texts(lines: &[RunLogLine]) -> Vec<(LogLevel, &str)> {
    lines
        .iter()
        .map(|l| (l.level, l.message.as_str()))
        .collect()
}

#[tokio::test]
async fn a_runs_events_are_stored_as_its_log() {
    let store = Arc::new(MemoryStore::new());
    // As `apex-connect serve` does: the fmt layer keeps its own (stricter) filter.
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(LevelFilter::WARN),
        )
        .with(RunLogLayer::new().filtered());
    let _guard = tracing::subscriber::set_default(subscriber);

    let (run, ok) = sync(&store, &Chatty::new()).await;
    assert!(ok);
    tracing::info!("after the run: not in its log");
    let lines = store.run_logs(run, None, 100).await.unwrap();
    let got = texts(&lines);
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(got[0], (LogLevel::Info, "reading page page=0"));
    assert_eq!(got[1], (LogLevel::Info, "reading page page=1"));
    assert_eq!(got[2], (LogLevel::Warn, "slow page page=1 retry_in_ms=250"));
    assert_eq!(got[3].0, LogLevel::Info);
    assert_eq!(got[3].1.len(), 500, "cut to 500 bytes");
    assert!(got[3].1.ends_with("x…"));
    assert_eq!(got[4], (LogLevel::Info, "reading page page=2"));
    assert_eq!(got[5].0, LogLevel::Info);
    assert!(
        got[5]
            .1
            .starts_with("sync run succeeded run=1 connection=acme stream=contacts read=6"),
        "{}",
        got[5].1
    );
    assert!(
        lines
            .iter()
            .all(|l| l.target == "it::run_logs" || l.target == "apex_connect_core::engine")
    );
    assert!(lines.windows(2).all(|w| w[0].at <= w[1].at));

    // The store's min_level filter and limit.
    let warn = store
        .run_logs(run, Some(LogLevel::Warn), 100)
        .await
        .unwrap();
    assert_eq!(
        texts(&warn),
        [(LogLevel::Warn, "slow page page=1 retry_in_ms=250")]
    );
    assert_eq!(store.run_logs(run, None, 2).await.unwrap(), lines[..2]);

    // A failed run: the error and the engine's last line are in its log.
    let (run2, ok) = sync(
        &store,
        &Chatty {
            fail: true,
            ..Chatty::new()
        },
    )
    .await;
    assert!(!ok);
    assert_eq!(
        store.get_run(run2).await.unwrap().unwrap().status,
        RunStatus::Failed
    );
    let errors = store
        .run_logs(run2, Some(LogLevel::Warn), 100)
        .await
        .unwrap();
    let got = texts(&errors);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[1], (LogLevel::Error, "platform answered 500 page=2"));
    assert_eq!(got[2].0, LogLevel::Warn);
    assert!(
        got[2].1.starts_with("sync run stopped run=2"),
        "{}",
        got[2].1
    );
    // Runs do not see each other's lines.
    assert_eq!(store.run_logs(run, None, 100).await.unwrap(), lines);
}

#[tokio::test]
async fn the_minimum_level_and_the_line_cap() {
    let store = Arc::new(MemoryStore::new());
    let layer = RunLogLayer::new().with_min_level(tracing::Level::WARN);
    let subscriber = tracing_subscriber::registry().with(layer.filtered());
    let guard = tracing::subscriber::set_default(subscriber);
    let (run, _) = sync(&store, &Chatty::new()).await;
    drop(guard);
    let lines = store.run_logs(run, None, 100).await.unwrap();
    assert_eq!(
        texts(&lines),
        [(LogLevel::Warn, "slow page page=1 retry_in_ms=250")]
    );

    // 2,100 noise lines: the first 2,000 lines are kept, then one line counts the others, at
    // the level of the most severe of them (the warning of page 1).
    let layer = RunLogLayer::new();
    let subscriber = tracing_subscriber::registry().with(layer.clone().filtered());
    let _guard = tracing::subscriber::set_default(subscriber);
    let (run, ok) = sync(
        &store,
        &Chatty {
            noise: 2_100,
            ..Chatty::new()
        },
    )
    .await;
    assert!(ok);
    assert!(layer.open_runs().is_empty(), "the run's buffer is gone");
    let lines = store.run_logs(run, None, 10_000).await.unwrap();
    assert_eq!(lines.len(), 2_001);
    assert_eq!(lines[1999].message, "noise i=1998");
    // Dropped: noise 1999..2100 (101), page 1's 3 lines, page 2's, the engine's last one.
    let last = &lines[2_000];
    assert_eq!(
        (last.level, last.message.as_str()),
        (LogLevel::Warn, "106 more lines dropped")
    );
    let warn = store.run_logs(run, Some(LogLevel::Warn), 10).await.unwrap();
    assert_eq!(warn, std::slice::from_ref(last));
}

#[tokio::test]
async fn without_a_layer_nothing_is_captured() {
    let store = Arc::new(MemoryStore::new());
    let subscriber =
        tracing_subscriber::registry().with(tracing_subscriber::fmt::layer().with_test_writer());
    let _guard = tracing::subscriber::set_default(subscriber);
    let (run, ok) = sync(&store, &Chatty::new()).await;
    assert!(ok);
    assert!(store.run_logs(run, None, 100).await.unwrap().is_empty());
}
