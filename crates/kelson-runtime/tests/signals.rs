//! Signals: SIGHUP arrives on the reload stream, SIGTERM ends `shutdown_signal`.
//! (One test per binary because signals are process-wide.)

use std::time::Duration;

use futures::StreamExt;
use kelson_runtime::signals::{self, Shutdown};
use nix::sys::signal::{raise, Signal};

#[tokio::test]
async fn hup_reloads_and_term_shuts_down() {
    let mut hup = signals::reload_signals().unwrap();
    let mut shutdown = signals::ShutdownSignals::new().unwrap();

    raise(Signal::SIGHUP).unwrap();
    tokio::time::timeout(Duration::from_secs(5), hup.next())
        .await
        .expect("SIGHUP delivered")
        .unwrap();

    raise(Signal::SIGTERM).unwrap();
    let sig = tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
        .await
        .expect("SIGTERM delivered");
    assert_eq!(sig, Shutdown::Terminate);
    assert_eq!(sig.name(), "SIGTERM");

    raise(Signal::SIGINT).unwrap();
    let sig = tokio::time::timeout(Duration::from_secs(5), shutdown.recv())
        .await
        .unwrap();
    assert_eq!(sig, Shutdown::Interrupt);
}
