//! A group commit's callers are answered through one hand-off to the runtime (see
//! `Loop::answer`): every caller still gets its own answer, only after its write is visible.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_get_their_own_answers_after_the_write_is_visible() {
    let (cfg, dir) = solo();
    let m = start(cfg, dir).await;
    assert!(
        wait_leader(&[&m.node], Duration::from_secs(3))
            .await
            .is_some(),
        "the lone member never led"
    );
    const CALLERS: usize = 128;
    const EACH: usize = 8;
    let mut tasks = Vec::new();
    for c in 0..CALLERS {
        let node = m.node.clone();
        let view = m.view.clone();
        tasks.push(tokio::spawn(async move {
            let mut indexes = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let (k, v) = (format!("c{c}-{i}"), format!("v{c}.{i}"));
                let res = tokio::time::timeout(
                    Duration::from_secs(10),
                    node.propose(format!("{k}={v}").into_bytes()),
                )
                .await
                .expect("proposal answered in time")
                .expect("proposal applied");
                // Answered only after on_durable: the write is visible to the caller at once.
                assert_eq!(view.get(&k).as_deref(), Some(v.as_str()), "{k} not visible");
                indexes.push(u64::from_be_bytes(res.try_into().expect("an index")));
            }
            indexes
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        let indexes = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("caller finished in time")
            .expect("caller task");
        // One caller's proposals are sequential, so its entries' indexes increase.
        assert!(
            indexes.windows(2).all(|w| w[0] < w[1]),
            "indexes of one caller: {indexes:?}"
        );
        all.extend(indexes);
    }
    // No answer went to two callers (each answer is the applied entry's own index).
    assert_eq!(all.len(), CALLERS * EACH);
    assert_eq!(m.view.len(), CALLERS * EACH);
    m.node.shutdown().await;
}
