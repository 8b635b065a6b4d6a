//! Key operational events with fixed journald `MESSAGE_ID`s, as systemd catalogs do.
//!
//! A handful of log lines matter enough that operators alert on them or look them up by ID:
//! `journalctl MESSAGE_ID=<id>` finds every occurrence whatever the wording, the message text can
//! change between releases without breaking anyone's filter, and a catalog entry (rendered by
//! [`catalog`], documented in docs/journald.md) explains what happened and what to do. Each kind
//! is an [`EventKind`]; the IDs are random 128-bit values written once and never changed (the
//! same convention as `systemd-id128 new`).
//!
//! Daemons log such an event with [`log_event!`](crate::log_event), which is `tracing::event!`
//! plus the `message_id` field (and `kelson_event`, the kind's short name, so the stderr output
//! is greppable too). Under journald both become fields by the rule in
//! [`crate::logging`]: `message_id` → `MESSAGE_ID`, `kelson_event` → `KELSON_EVENT`. Per-event
//! fields follow the same rule, so a leader change logged with `raft_term`/`raft_leader`
//! carries `RAFT_TERM`/`RAFT_LEADER`.
//!
//! ```
//! use kelson_runtime::{events, log_event};
//! log_event!(tracing::Level::WARN, events::NODE_NOT_READY, node = "n1", "node stopped reporting");
//! ```

/// One kind of key event: a stable journald `MESSAGE_ID` and its catalog text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKind {
    /// Short name, also logged as `KELSON_EVENT` (`kv-leader-changed`).
    pub name: &'static str,
    /// journald `MESSAGE_ID`: 32 lowercase hex digits, no dashes (what journald expects).
    pub id: &'static str,
    /// Catalog `Subject:` line.
    pub subject: &'static str,
    /// Catalog body: what happened and what to do about it.
    pub description: &'static str,
    /// Structured fields (journald names) every event of this kind carries besides the common ones.
    pub fields: &'static [&'static str],
}

/// The store's Raft leader changed (a member saw a new leader or a new term with a leader).
pub const KV_LEADER_CHANGED: EventKind = EventKind {
    name: "kv-leader-changed",
    id: "bd66c767a11f4efdabbd4e2bdf0abfc6",
    subject: "kelson-kv: the Raft leader changed",
    description:
        "The store member saw a new Raft leader. RAFT_LEADER is the leader's member ID (hex, \
                  0 = no leader), RAFT_TERM the Raft term, RAFT_MEMBER this member. An occasional \
                  change (restart, upgrade) is normal; frequent changes mean the members cannot \
                  hear each other's heartbeats in time: check network latency between members, \
                  disk fsync latency, and CPU starvation.",
    fields: &["RAFT_TERM", "RAFT_LEADER", "RAFT_MEMBER"],
};

/// A node's Ready condition went to Unknown/False.
pub const NODE_NOT_READY: EventKind = EventKind {
    name: "node-not-ready",
    id: "528bec09b3a74ddfa23ecb2387959c2d",
    subject: "A node is not ready",
    description: "The node named in NODE is not Ready: its kubelet stopped renewing its status \
                  (logged by the controller manager, which then taints the node and, after the \
                  eviction timeout, evicts its pods) or the kubelet itself reports a failed \
                  readiness check (container runtime or network not ready). Check the kubelet \
                  and containerd on that node: `journalctl -u kelson-kubelet -u containerd`.",
    fields: &["NODE"],
};

/// A certificate the daemon uses expires within 30 days (or has expired).
///
/// The ID is the one `tls::MESSAGE_ID_CERT_EXPIRING` logs with (a unit test keeps them equal).
pub const CERT_NEAR_EXPIRY: EventKind = EventKind {
    name: "cert-near-expiry",
    id: "8d2b5c7e4f0a4e6b9c1d3e5f7a9b0c21",
    subject: "A certificate is near expiry",
    description: "The certificate in CERT_FILE expires at CERT_NOT_AFTER (Unix seconds), \
                  CERT_SECONDS_LEFT from now; this warning repeats daily. Renew it before it \
                  expires or every connection using it fails: `kelsonctl pki renew` for the \
                  control plane (daemons reload renewed files without restart); kubelets rotate \
                  their client certificate themselves.",
    fields: &["CERT_FILE", "CERT_NOT_AFTER", "CERT_SECONDS_LEFT"],
};

/// The store exceeded its backend quota and raised the NOSPACE alarm: writes are refused.
pub const KV_QUOTA_ALARM: EventKind = EventKind {
    name: "kv-quota-alarm",
    id: "9484a0ec783148fa94364eaa7b6b31c1",
    subject: "kelson-kv: backend quota exceeded, NOSPACE alarm raised",
    description:
        "The store's database (DB_SIZE bytes) would exceed --quota-backend-bytes (QUOTA), \
                  so the member raised the NOSPACE alarm: every write is refused until an operator \
                  frees space and disarms it. Compact old revisions, defragment, then disarm: \
                  `etcdctl compact <rev>`, `etcdctl defrag`, `etcdctl alarm disarm`; or raise \
                  the quota.",
    fields: &["DB_SIZE", "QUOTA"],
};

/// The daemon finished starting and serves (`READY=1` was sent).
pub const DAEMON_READY: EventKind = EventKind {
    name: "daemon-ready",
    id: "f59f8a3e70a64abf835b61d62b3231dc",
    subject: "A Kelson daemon is ready",
    description: "The daemon in KELSON_COMPONENT finished starting and serves requests; systemd \
                  got READY=1 at the same moment.",
    fields: &[],
};

/// The daemon began a graceful stop (`STOPPING=1` was sent).
pub const DAEMON_STOPPING: EventKind = EventKind {
    name: "daemon-stopping",
    id: "81bfe21a7ee24978aabe3f364c804982",
    subject: "A Kelson daemon is stopping",
    description:
        "The daemon in KELSON_COMPONENT began a graceful stop (signal or systemctl stop); \
                  systemd got STOPPING=1. A stop nobody asked for, followed by a restart, points \
                  at the watchdog or a crash: see the unit's previous log lines.",
    fields: &[],
};

/// Every event kind, in documentation order.
pub const ALL: [EventKind; 6] = [
    KV_LEADER_CHANGED,
    NODE_NOT_READY,
    CERT_NEAR_EXPIRY,
    KV_QUOTA_ALARM,
    DAEMON_READY,
    DAEMON_STOPPING,
];

/// The systemd catalog (`catalog(7)` format) for every event kind: install it as
/// `/usr/lib/systemd/catalog/kelson.catalog` and run `journalctl --update-catalog`, and
/// `journalctl -x` shows the explanation next to each event.
pub fn catalog() -> String {
    let mut out = String::from(
        "# Kelson journald message catalog (generated by kelson_runtime::events::catalog)\n",
    );
    for e in ALL {
        out.push_str(&format!(
            "\n-- {}\nSubject: {}\nDefined-By: kelson\n\n{}\n",
            e.id,
            e.subject,
            wrap(&squash(e.description), 78)
        ));
    }
    out
}

/// The description literals are indented continuation lines; collapse runs of whitespace.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn wrap(s: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in s.split(' ') {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// Log a key event: `log_event!(level, kind, fields..., "message", args...)`.
///
/// Expands to `tracing::event!` with `message_id = kind.id` and `kelson_event = kind.name`
/// prepended, so the fields and message take `tracing`'s usual syntax. `level` must be a
/// `tracing::Level` constant (tracing needs it at compile time).
#[macro_export]
macro_rules! log_event {
    ($lvl:expr, $kind:expr, $($rest:tt)+) => {
        $crate::__tracing::event!(
            $lvl,
            message_id = $kind.id,
            kelson_event = $kind.name,
            $($rest)+
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_journald_ids_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for e in ALL {
            assert_eq!(
                e.id.len(),
                32,
                "{}: MESSAGE_ID must be 32 hex digits",
                e.name
            );
            assert!(
                e.id.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}: MESSAGE_ID must be lowercase hex",
                e.name
            );
            assert!(seen.insert(e.id), "{}: duplicate MESSAGE_ID", e.name);
        }
    }

    #[test]
    fn cert_expiry_id_matches_tls() {
        assert_eq!(CERT_NEAR_EXPIRY.id, crate::tls::MESSAGE_ID_CERT_EXPIRING);
    }

    /// docs/journald.md is the operator's reference: every ID must be in it.
    #[test]
    fn documented() {
        let doc = include_str!("../../../docs/journald.md");
        for e in ALL {
            assert!(
                doc.contains(e.id),
                "docs/journald.md lacks {} ({})",
                e.name,
                e.id
            );
            for f in e.fields {
                assert!(
                    doc.contains(f),
                    "docs/journald.md lacks field {f} of {}",
                    e.name
                );
            }
        }
    }

    #[test]
    fn catalog_has_every_entry() {
        let c = catalog();
        for e in ALL {
            assert!(c.contains(&format!("\n-- {}\nSubject: {}\n", e.id, e.subject)));
        }
        assert!(c.lines().all(|l| l.len() <= 100), "{c}");
    }
}
