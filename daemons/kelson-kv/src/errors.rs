//! Translation of store and consensus errors into the gRPC statuses etcd clients check.
//!
//! etcd clients (etcdctl, clientv3, etcd-client, the Kubernetes API server) recognise errors by
//! gRPC code *and* message text (`rpctypes.ErrGRPC*`), so both must match etcd exactly. This is the
//! single place where that translation happens.

use kelson_raft::RaftError;
use tonic::{Code, Status};

pub const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const ERR_FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const ERR_NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub const ERR_LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const ERR_LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const ERR_REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const ERR_EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const ERR_NOT_LEADER: &str = "etcdserver: not leader";
pub const ERR_NO_LEADER: &str = "etcdserver: no leader";
pub const ERR_TIMEOUT: &str = "etcdserver: request timed out";
pub const ERR_STOPPED: &str = "etcdserver: server stopped";
pub const ERR_BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const ERR_TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";

/// The gRPC status etcd sends for an error message (its `rpctypes` table).
pub fn status_for_message(msg: &str) -> Status {
    let code = match msg {
        ERR_COMPACTED | ERR_FUTURE_REV => Code::OutOfRange,
        ERR_NO_SPACE => Code::ResourceExhausted,
        ERR_LEASE_NOT_FOUND => Code::NotFound,
        "etcdserver: member not found" => Code::NotFound,
        "etcdserver: lease already exists"
        | "etcdserver: member ID already exist"
        | "etcdserver: Peer URLs already exists"
        | "etcdserver: can only promote a learner member"
        | "etcdserver: can only promote a learner member which is in sync with leader"
        | "etcdserver: too many learner members in cluster"
        | "etcdserver: re-configuration failed due to not enough started members"
        | ERR_NOT_LEADER
        | ERR_BAD_LEADER_TRANSFEREE => Code::FailedPrecondition,
        ERR_NO_LEADER | ERR_TIMEOUT | ERR_STOPPED => Code::Unavailable,
        _ => Code::InvalidArgument,
    };
    Status::new(code, msg)
}

/// Maps a failed state-machine apply (message + code recorded in the `InternalResponse`).
pub fn status_from_apply(code: u32, msg: &str) -> Status {
    if code == 0 {
        return status_for_message(msg);
    }
    Status::new(Code::from_i32(code as i32), msg)
}

pub fn mvcc_status(e: &kelson_mvcc::MvccError) -> Status {
    match e {
        kelson_mvcc::MvccError::Storage(_) | kelson_mvcc::MvccError::Corrupt(_) => {
            tracing::error!(error = %e, "storage error");
            Status::internal(format!("etcdserver: {e}"))
        }
        other => Status::new(
            Code::from_i32(other.grpc_code() as i32),
            other.etcd_message(),
        ),
    }
}

pub fn raft_status(e: &RaftError) -> Status {
    match e {
        RaftError::NoLeader => status_for_message(ERR_NO_LEADER),
        RaftError::Timeout => status_for_message(ERR_TIMEOUT),
        RaftError::Stopped => status_for_message(ERR_STOPPED),
        RaftError::TooLarge => status_for_message(ERR_REQUEST_TOO_LARGE),
        other => {
            let msg = other.to_string();
            if msg.starts_with("etcdserver:") {
                status_for_message(&msg)
            } else {
                Status::internal(format!("etcdserver: {msg}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_etcd_rpctypes() {
        assert_eq!(status_for_message(ERR_COMPACTED).code(), Code::OutOfRange);
        assert_eq!(
            status_for_message(ERR_NO_SPACE).code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            status_for_message(ERR_LEASE_NOT_FOUND).code(),
            Code::NotFound
        );
        assert_eq!(status_for_message(ERR_NO_LEADER).code(), Code::Unavailable);
        assert_eq!(
            status_for_message(ERR_REQUEST_TOO_LARGE).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status_for_message(ERR_REQUEST_TOO_LARGE).message(),
            ERR_REQUEST_TOO_LARGE
        );
    }
}
