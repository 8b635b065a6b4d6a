//! `kelsonctl status`, `kelsonctl reload` and `kelsonctl log-level`: the local daemons over D-Bus.
//!
//! Every Kelson daemon owns `io.kelson.<Component>1` at `/io/kelson/<Component>1` and serves the
//! common `io.kelson.Daemon1` interface (Version, State, StatusText, Health; Reload(),
//! SetLogLevel(s)) next to its own. These commands are plain D-Bus clients of that surface, so
//! they show exactly what `busctl` would and obey the same bus policy: anyone may read, only root
//! and `kelson-admin` may reload or change log levels (the daemon's bus refuses the others, and
//! the error says so).
//!
//! A component whose name has no owner on the bus is "not running"; that is not an error for
//! `status` (a worker node has no API server), but it is for `reload`/`log-level`.

use std::collections::HashMap;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use zbus::zvariant::OwnedValue;

/// The daemons `kelsonctl` knows, by their D-Bus component name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    Kv,
    Apiserver,
    Scheduler,
    ControllerManager,
    CloudControllerManager,
    Kubelet,
    Proxy,
    Dns,
}

impl Component {
    pub const ALL: [Component; 8] = [
        Component::Kv,
        Component::Apiserver,
        Component::Scheduler,
        Component::ControllerManager,
        Component::CloudControllerManager,
        Component::Kubelet,
        Component::Proxy,
        Component::Dns,
    ];

    /// The `<Component>` in `io.kelson.<Component>1`.
    pub fn bus_component(self) -> &'static str {
        match self {
            Component::Kv => "KV",
            Component::Apiserver => "APIServer",
            Component::Scheduler => "Scheduler",
            Component::ControllerManager => "ControllerManager",
            Component::CloudControllerManager => "CloudControllerManager",
            Component::Kubelet => "Kubelet",
            Component::Proxy => "Proxy",
            Component::Dns => "DNS",
        }
    }

    /// The daemon's binary / unit name.
    pub fn unit(self) -> &'static str {
        match self {
            Component::Kv => "kelson-kv",
            Component::Apiserver => "kelson-apiserver",
            Component::Scheduler => "kelson-scheduler",
            Component::ControllerManager => "kelson-controller-manager",
            Component::CloudControllerManager => "kelson-cloud-controller-manager",
            Component::Kubelet => "kelson-kubelet",
            Component::Proxy => "kelson-proxy",
            Component::Dns => "kelson-dns",
        }
    }

    fn bus_name(self) -> String {
        format!("io.kelson.{}1", self.bus_component())
    }

    fn path(self) -> String {
        format!("/io/kelson/{}1", self.bus_component())
    }
}

/// Which bus to use.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// D-Bus address (`unix:path=…`); default: the private bus of `kelsonctl up` under the
    /// default data dir when it exists, else the system bus.
    #[arg(long, value_name = "ADDR", env = "KELSON_DBUS_ADDRESS")]
    pub bus: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Print one JSON object per daemon instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// The daemon to reload (its configuration and certificates).
    pub component: Component,
}

#[derive(Debug, Args)]
pub struct LogLevelArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// The daemon.
    pub component: Component,
    /// A tracing filter: error, warn, info, debug, trace, or directives like `info,kelson_raft=debug`.
    pub level: String,
}

async fn connect(bus: &BusArgs) -> anyhow::Result<zbus::Connection> {
    match &bus.bus {
        Some(addr) => zbus::connection::Builder::address(addr.as_str())?
            .build()
            .await
            .with_context(|| format!("connecting to D-Bus at {addr}")),
        None => {
            // `kelsonctl up` runs its daemons on a private bus under the data dir; prefer it
            // when it is there, as `up` is the way most people run a cluster on one machine.
            let up_bus = crate::up::dbus_socket(&crate::default_data_dir());
            if up_bus.exists() {
                let addr = format!("unix:path={}", up_bus.display());
                if let Ok(c) = zbus::connection::Builder::address(addr.as_str())?
                    .build()
                    .await
                {
                    return Ok(c);
                }
            }
            zbus::Connection::system()
                .await
                .context("connecting to the system bus")
        }
    }
}

/// One daemon's row in `kelsonctl status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DaemonStatus {
    pub component: &'static str,
    pub running: bool,
    pub state: String,
    pub health: String,
    pub role: String,
    pub version: String,
    pub status_text: String,
}

async fn props(
    conn: &zbus::Connection,
    c: Component,
    iface: &str,
) -> zbus::Result<HashMap<String, OwnedValue>> {
    let p = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(c.bus_name())?
        .path(c.path())?
        .build()
        .await?;
    let iface = zbus::names::InterfaceName::try_from(iface.to_string())?;
    Ok(p.get_all(iface).await?)
}

fn string(m: &HashMap<String, OwnedValue>, k: &str) -> String {
    m.get(k)
        .and_then(|v| String::try_from(v.clone()).ok())
        .unwrap_or_default()
}

/// The leadership role from the component's own interface: kv compares Leader with MemberId,
/// the leader-elected controllers expose IsLeader.
fn role(c: Component, own: &HashMap<String, OwnedValue>) -> String {
    let u64_of = |k: &str| own.get(k).and_then(|v| u64::try_from(v.clone()).ok());
    match c {
        Component::Kv => match (u64_of("MemberId"), u64_of("Leader")) {
            (Some(me), Some(l)) if l != 0 && me == l => "leader".into(),
            (Some(_), Some(0)) => "no leader".into(),
            (Some(_), Some(_)) => "follower".into(),
            _ => "-".into(),
        },
        _ => match own
            .get("IsLeader")
            .and_then(|v| bool::try_from(v.clone()).ok())
        {
            Some(true) => "leader".into(),
            Some(false) => "standby".into(),
            None => "-".into(),
        },
    }
}

/// Every known daemon's state on the bus.
pub async fn collect(bus: &BusArgs) -> anyhow::Result<Vec<DaemonStatus>> {
    let conn = connect(bus).await?;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
    let mut out = Vec::new();
    for c in Component::ALL {
        let name = zbus::names::BusName::try_from(c.bus_name())?;
        let running = dbus.name_has_owner(name).await.unwrap_or(false);
        let mut row = DaemonStatus {
            component: c.unit(),
            running,
            state: "not running".into(),
            health: "-".into(),
            role: "-".into(),
            version: "-".into(),
            status_text: String::new(),
        };
        if running {
            match props(&conn, c, "io.kelson.Daemon1").await {
                Ok(m) => {
                    row.state = string(&m, "State");
                    row.health = string(&m, "Health");
                    row.version = string(&m, "Version");
                    row.status_text = string(&m, "StatusText");
                }
                Err(e) => row.state = format!("unreadable: {e}"),
            }
            let own = format!("io.kelson.{}1", c.bus_component());
            if let Ok(m) = props(&conn, c, &own).await {
                row.role = role(c, &m);
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// `kelsonctl status`: exit code 0 when every running daemon is healthy, 1 otherwise, 2 when
/// none runs.
pub async fn status(a: StatusArgs) -> anyhow::Result<i32> {
    let rows = collect(&a.bus).await?;
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        println!(
            "{:<33} {:<12} {:<10} {:<10} {:<9} STATUS",
            "DAEMON", "STATE", "HEALTH", "ROLE", "VERSION"
        );
        for r in &rows {
            println!(
                "{:<33} {:<12} {:<10} {:<10} {:<9} {}",
                r.component, r.state, r.health, r.role, r.version, r.status_text
            );
        }
    }
    let running: Vec<_> = rows.iter().filter(|r| r.running).collect();
    Ok(if running.is_empty() {
        2
    } else if running.iter().all(|r| r.health == "healthy") {
        0
    } else {
        1
    })
}

async fn call(bus: &BusArgs, c: Component, method: &str, arg: Option<&str>) -> anyhow::Result<()> {
    let conn = connect(bus).await?;
    let proxy = zbus::Proxy::new(&conn, c.bus_name(), c.path(), "io.kelson.Daemon1")
        .await
        .with_context(|| format!("{} on the bus", c.unit()))?;
    let r: zbus::Result<()> = match arg {
        Some(a) => proxy.call(method, &(a,)).await,
        None => proxy.call(method, &()).await,
    };
    match r {
        Ok(()) => Ok(()),
        Err(zbus::Error::MethodError(name, msg, _)) => {
            let msg = msg.unwrap_or_default();
            if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" {
                bail!("{} is not running (no owner of {})", c.unit(), c.bus_name())
            }
            if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" {
                bail!("{method} on {}: access denied by the bus policy (root or the kelson-admin group may do this): {msg}", c.unit())
            }
            bail!("{method} on {}: {name}: {msg}", c.unit())
        }
        Err(e) => Err(e).with_context(|| format!("{method} on {}", c.unit())),
    }
}

/// `kelsonctl reload <component>`.
pub async fn reload(a: ReloadArgs) -> anyhow::Result<i32> {
    call(&a.bus, a.component, "Reload", None).await?;
    println!("{} reloaded", a.component.unit());
    Ok(0)
}

/// `kelsonctl log-level <component> <level>`.
pub async fn log_level(a: LogLevelArgs) -> anyhow::Result<i32> {
    call(&a.bus, a.component, "SetLogLevel", Some(&a.level)).await?;
    println!("{} log level set to {}", a.component.unit(), a.level);
    Ok(0)
}
