//! sd_notify: real datagrams to a socket we bind, including the watchdog task and the
//! notifications `DaemonState` sends on lifecycle changes.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use kelson_runtime::dbus::{DaemonState, Lifecycle};
use kelson_runtime::notify::{format_message, Notifier, NotifyState};

fn socket() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (dir, path, sock)
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 5 s");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn messages_reach_the_socket() {
    let (_dir, path, sock) = socket();
    let n = Notifier::with_socket(&path, None);
    assert!(n.is_enabled());
    n.ready().unwrap();
    assert_eq!(recv(&sock), "READY=1\n");
    n.status("serving 3 members\nsecond line").unwrap();
    assert_eq!(recv(&sock), "STATUS=serving 3 members second line\n");
    n.stopping().unwrap();
    assert_eq!(recv(&sock), "STOPPING=1\n");
    n.reloading().unwrap();
    let msg = recv(&sock);
    let mut lines = msg.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC with a number");
    assert!(usec > 0);
    assert_eq!(
        format_message(&[NotifyState::Watchdog, NotifyState::Status("x")]),
        "WATCHDOG=1\nSTATUS=x\n"
    );
}

#[test]
fn send_to_missing_socket_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let n = Notifier::with_socket(dir.path().join("absent"), None);
    assert!(n.ready().is_err());
}

#[tokio::test]
async fn watchdog_pings_only_while_healthy() {
    let (_dir, path, sock) = socket();
    sock.set_nonblocking(true).unwrap();
    let n = Notifier::with_socket(&path, Some(Duration::from_millis(100)));
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let task = n
        .spawn_watchdog(move || h.load(std::sync::atomic::Ordering::SeqCst))
        .expect("watchdog configured");
    // Pings every 50 ms; wait (bounded) for three of them.
    let mut buf = [0u8; 64];
    let mut pings = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok(len) = sock.recv(&mut buf) {
            assert_eq!(&buf[..len], b"WATCHDOG=1\n");
            pings += 1;
        }
        if pings >= 3 {
            break;
        }
    }
    assert!(pings >= 3, "expected 3 pings within 2 s, got {pings}");

    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    while sock.recv(&mut buf).is_ok() {} // a ping may have been in flight
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sock.recv(&mut buf).is_err(), "no pings while unhealthy");
    task.abort();

    assert!(Notifier::with_socket(&path, None)
        .spawn_watchdog(|| true)
        .is_none());
    assert!(Notifier::disabled().spawn_watchdog(|| true).is_none());
}

#[tokio::test]
async fn daemon_state_notifies_systemd() {
    let (_dir, path, sock) = socket();
    let state = DaemonState::with_notifier("1", Notifier::with_socket(&path, None));
    state.set_status("recovering");
    assert_eq!(recv(&sock), "STATUS=recovering\n");
    state.set_state(Lifecycle::Running);
    assert_eq!(recv(&sock), "READY=1\n");
    state.on_reload(|| Box::pin(async { Err("bad config".to_string()) }));
    assert_eq!(state.reload().await.unwrap_err(), "bad config");
    assert!(recv(&sock).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(
        recv(&sock),
        "READY=1\n",
        "READY=1 after a reload, even a failed one"
    );
    assert_eq!(state.state(), Lifecycle::Running);
    state.set_state(Lifecycle::Stopping);
    assert_eq!(recv(&sock), "STOPPING=1\n");
}
