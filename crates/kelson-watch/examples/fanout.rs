//! Fan-out benchmark: W watch streams, each with one prefix watcher, all fed by one publisher.
//! Prints a table of delivered events per second (events x watchers / wall time).
//!
//! `cargo run --release -p kelson-watch --example fanout -- [watchers] [events] [value_bytes]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kelson_etcdpb::etcdserverpb::watch_request::RequestUnion;
use kelson_etcdpb::etcdserverpb::{ResponseHeader, WatchCreateRequest, WatchRequest};
use kelson_etcdpb::mvccpb::{Event, KeyValue};
use kelson_watch::{EventSource, HeaderSource, WatchHub, WatchService, WatchSourceError};

/// The benchmark never replays history: watchers start at the current revision.
struct NoHistory;
impl EventSource for NoHistory {
    fn events(&self, _: i64, _: i64, _: usize) -> Result<Vec<Event>, WatchSourceError> {
        Err(WatchSourceError::Unavailable(
            "no history in this benchmark".into(),
        ))
    }
    fn current_revision(&self) -> i64 {
        0
    }
    fn compact_revision(&self) -> i64 {
        0
    }
}

struct Header;
impl HeaderSource for Header {
    fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            revision,
            ..Default::default()
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let watchers = args.first().copied().unwrap_or(1000);
    let events = args.get(1).copied().unwrap_or(2000) as i64;
    let value_bytes = args.get(2).copied().unwrap_or(128);

    // A ring large enough that no watcher falls back to the (absent) history.
    let hub = WatchHub::with_config(
        Arc::new(NoHistory),
        kelson_watch::HubConfig {
            ring_events: events as usize + 1,
            catchup_batch: 1000,
        },
    );
    let svc = WatchService::new(hub.clone(), Arc::new(Header), Duration::ZERO);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..watchers {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut out = svc.serve_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        tx.send(Ok(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"bench/".to_vec(),
                range_end: b"bench0".to_vec(),
                ..Default::default()
            })),
        }))
        .await
        .unwrap();
        let created = out.next().await.unwrap().unwrap();
        assert!(created.created);
        senders.push(tx);
        readers.push(tokio::spawn(async move {
            let mut got = 0i64;
            while let Some(Ok(resp)) = out.next().await {
                got += resp.events.len() as i64;
                if resp
                    .events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .map(|kv| kv.mod_revision)
                    == Some(events)
                {
                    break;
                }
            }
            got
        }));
    }

    let value = vec![b'v'; value_bytes];
    let start = Instant::now();
    for rev in 1..=events {
        let ev = Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: format!("bench/{}", rev % 100).into_bytes(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
                value: value.clone(),
                lease: 0,
            }),
            prev_kv: None,
        };
        hub.publish(Arc::new(vec![ev]), rev);
        if rev % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let publish_time = start.elapsed();
    let mut delivered = 0i64;
    for r in readers {
        delivered += r.await.unwrap();
    }
    let total = start.elapsed();
    assert_eq!(
        delivered,
        events * watchers as i64,
        "every watcher must get every event"
    );
    println!("| watchers | events | value B | publish ms | total ms | delivered events/s |");
    println!("|---------:|-------:|--------:|-----------:|---------:|-------------------:|");
    println!(
        "| {watchers} | {events} | {value_bytes} | {:.1} | {:.1} | {:.0} |",
        publish_time.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        delivered as f64 / total.as_secs_f64()
    );
    drop(senders);
}
