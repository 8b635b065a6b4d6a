//! Logging: the run-time filter changes what is recorded; bad filters are rejected.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kelson_runtime::logging::{self, LogOutput};
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn set_level_good_and_bad() {
    let (subscriber, handle) = logging::build("test", "info", LogOutput::Stderr).unwrap();
    assert!(!handle.is_journald());
    assert_eq!(handle.level(), "info");
    tracing::subscriber::with_default(subscriber, || {
        assert!(tracing::enabled!(tracing::Level::INFO));
        assert!(!tracing::enabled!(tracing::Level::DEBUG));
        handle.set_level("debug").unwrap();
        assert!(tracing::enabled!(tracing::Level::DEBUG));
        assert_eq!(handle.level(), "debug");

        for bad in ["verbose", "", "info,foo=loud"] {
            let err = handle.set_level(bad).unwrap_err();
            assert!(err.to_string().contains("invalid log level"), "{err}");
        }
        assert_eq!(handle.level(), "debug", "rejected filters change nothing");
        assert!(tracing::enabled!(tracing::Level::DEBUG));

        handle.set_level("warn,logging=trace").unwrap();
        assert!(tracing::enabled!(target: "logging", tracing::Level::TRACE));
        assert!(!tracing::enabled!(target: "other", tracing::Level::INFO));
    });
}

#[test]
fn bad_initial_level_is_rejected() {
    assert!(logging::build("test", "loud", LogOutput::Stderr).is_err());
}

#[test]
fn handle_without_live_subscriber_reports_error() {
    let (subscriber, handle) = logging::build("test", "info", LogOutput::Stderr).unwrap();
    drop(subscriber);
    assert!(handle.set_level("debug").is_err());
}

#[test]
fn journald_requested_without_journal_falls_back() {
    // No journald in the test environment (or there is one): either way build succeeds and
    // says which output it chose.
    let (_s, handle) = logging::build("test", "info", LogOutput::Journald).unwrap();
    let journal_up = std::path::Path::new("/run/systemd/journal/socket").exists();
    if !journal_up {
        assert!(!handle.is_journald());
    }
}

/// Sanity check that a filter swap also applies to layers composed by a daemon.
#[test]
fn reload_affects_events() {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let b2 = buf.clone();
    let filter = logging::parse_filter("info").unwrap();
    let (layer, reload) = tracing_subscriber::reload::Layer::new(filter);
    let sub = tracing_subscriber::registry().with(layer).with(
        tracing_subscriber::fmt::layer()
            .with_writer(move || b2.clone())
            .with_ansi(false),
    );
    tracing::subscriber::with_default(sub, || {
        tracing::debug!("hidden");
        reload
            .reload(logging::parse_filter("debug").unwrap())
            .unwrap();
        tracing::debug!(raft_term = 7, "shown");
    });
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(!out.contains("hidden"), "{out}");
    assert!(
        out.contains("shown") && out.contains("raft_term=7"),
        "{out}"
    );
}
