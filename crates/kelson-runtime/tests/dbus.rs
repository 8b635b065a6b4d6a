//! D-Bus: serve on a private dbus-daemon, read properties, call methods, see PropertiesChanged,
//! and check that a component interface lives at the same path.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use kelson_runtime::dbus::{DaemonState, DbusOptions, DbusServer, Lifecycle};
use kelson_runtime::logging::{self, LogOutput};
use kelson_runtime::notify::Notifier;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedValue;

/// A private bus; killed and reaped on drop.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:path={}", dir.path().join("bus").display());
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile", "--print-address"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed");
        // The daemon prints its address once it is listening.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("unix:"), "dbus-daemon said {line:?}");
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component's own interface, served at the same path.
struct Kv1 {
    members: u32,
}

#[zbus::interface(name = "io.kelson.KV1")]
impl Kv1 {
    #[zbus(property)]
    fn members(&self) -> u32 {
        self.members
    }

    #[zbus(signal)]
    async fn leader_changed(emitter: &SignalEmitter<'_>, term: u64) -> zbus::Result<()>;
}

async fn get(props: &PropertiesProxy<'_>, name: &str) -> String {
    let v: OwnedValue = props
        .get(
            InterfaceName::from_static_str_unchecked("io.kelson.Daemon1"),
            name,
        )
        .await
        .unwrap();
    String::try_from(v).unwrap()
}

#[tokio::test]
async fn daemon1_properties_methods_and_signals() {
    let bus = Bus::start();
    let (_sub, log) = logging::build("test", "info", LogOutput::Stderr).unwrap();
    let state = DaemonState::with_notifier("1.2.3", Notifier::disabled());
    let reloads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = reloads.clone();
    state.on_reload(move || {
        let r = r.clone();
        Box::pin(async move {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
    });

    let opts = DbusOptions::for_component("KV", Some(bus.address.clone()));
    assert_eq!(opts.name, "io.kelson.KV1");
    let handle = DbusServer::new(opts, state.clone(), log.clone())
        .unwrap()
        .interface(Kv1 { members: 3 })
        .unwrap()
        .serve()
        .await
        .unwrap();

    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let props = PropertiesProxy::builder(&client)
        .destination("io.kelson.KV1")
        .unwrap()
        .path("/io/kelson/KV1")
        .unwrap()
        .build()
        .await
        .unwrap();

    assert_eq!(get(&props, "Version").await, "1.2.3");
    assert_eq!(get(&props, "State").await, "starting");
    assert_eq!(get(&props, "Health").await, "healthy");
    assert_eq!(get(&props, "StatusText").await, "");

    // The component interface is at the same path.
    let members: OwnedValue = props
        .get(
            InterfaceName::from_static_str_unchecked("io.kelson.KV1"),
            "Members",
        )
        .await
        .unwrap();
    assert_eq!(u32::try_from(members).unwrap(), 3);

    // PropertiesChanged on state change.
    let mut changes = props.receive_properties_changed().await.unwrap();
    state.set_state(Lifecycle::Running);
    let sig = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("PropertiesChanged within 5 s")
        .unwrap();
    let args = sig.args().unwrap();
    assert_eq!(args.interface_name().as_str(), "io.kelson.Daemon1");
    let v = args
        .changed_properties()
        .get("State")
        .expect("State changed");
    assert_eq!(String::try_from(v.try_clone().unwrap()).unwrap(), "running");
    assert_eq!(get(&props, "State").await, "running");

    state.set_health(false);
    let sig = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert!(sig
        .args()
        .unwrap()
        .changed_properties()
        .contains_key("Health"));
    assert_eq!(get(&props, "Health").await, "unhealthy");

    // Methods.
    let proxy = zbus::Proxy::new(
        &client,
        "io.kelson.KV1",
        "/io/kelson/KV1",
        "io.kelson.Daemon1",
    )
    .await
    .unwrap();
    let () = proxy
        .call("SetLogLevel", &("debug,zbus=warn",))
        .await
        .unwrap();
    assert_eq!(log.level(), "debug,zbus=warn");
    let err = proxy
        .call::<_, _, ()>("SetLogLevel", &("verbose",))
        .await
        .unwrap_err();
    match err {
        zbus::Error::MethodError(name, _, _) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.InvalidArgs")
        }
        other => panic!("expected InvalidArgs, got {other:?}"),
    }
    assert_eq!(
        log.level(),
        "debug,zbus=warn",
        "bad level leaves the filter alone"
    );

    let () = proxy.call("Reload", &()).await.unwrap();
    assert_eq!(reloads.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        get(&props, "State").await,
        "running",
        "back to running after reload"
    );

    // A component signal through the handle's emitter reaches a subscriber.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("io.kelson.KV1")
        .unwrap()
        .member("LeaderChanged")
        .unwrap()
        .build();
    let mut sigs = zbus::MessageStream::for_match_rule(rule, &client, None)
        .await
        .unwrap();
    Kv1::leader_changed(&handle.signal_emitter(), 7)
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sigs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (term,): (u64,) = msg.body().deserialize().unwrap();
    assert_eq!(term, 7);
}

#[tokio::test]
async fn reload_without_handler_and_connection_errors() {
    let bus = Bus::start();
    let (_sub, log) = logging::build("test", "info", LogOutput::Stderr).unwrap();
    let state = DaemonState::with_notifier("0", Notifier::disabled());
    let _h = kelson_runtime::dbus::serve(
        DbusOptions::for_component("Test", Some(bus.address.clone())),
        state.clone(),
        log.clone(),
    )
    .await
    .unwrap();
    let client = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let proxy = zbus::Proxy::new(
        &client,
        "io.kelson.Test1",
        "/io/kelson/Test1",
        "io.kelson.Daemon1",
    )
    .await
    .unwrap();
    let err = proxy.call::<_, _, ()>("Reload", &()).await.unwrap_err();
    assert!(
        matches!(&err, zbus::Error::MethodError(n, _, _) if n.as_str() == "org.freedesktop.DBus.Error.Failed"),
        "{err:?}"
    );

    // The name is taken: a second daemon gets a clear error, not a hang.
    let second = kelson_runtime::dbus::serve(
        DbusOptions::for_component("Test", Some(bus.address.clone())),
        DaemonState::with_notifier("0", Notifier::disabled()),
        log.clone(),
    )
    .await
    .unwrap_err();
    assert!(second.to_string().contains("io.kelson.Test1"), "{second}");

    // Nothing listening at the address.
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:path={}", dir.path().join("none").display());
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        kelson_runtime::dbus::serve(
            DbusOptions::for_component("Test", Some(nowhere.clone())),
            DaemonState::with_notifier("0", Notifier::disabled()),
            log,
        ),
    )
    .await
    .expect("fails fast")
    .unwrap_err();
    assert!(err.to_string().contains(&nowhere), "{err}");
}
