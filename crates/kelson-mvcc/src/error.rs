//! Errors of the MVCC store, with the exact etcd messages and gRPC codes clients expect.
//!
//! `etcd_message` returns the string etcd's `rpctypes` put in the gRPC status, because clients
//! (`etcdctl`, `etcd-client`, the Kubernetes storage layer) match on those strings; `grpc_code` is
//! the numeric `tonic::Code` so this crate does not depend on tonic.

/// gRPC status codes used here (values of `tonic::Code`).
pub mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const NOT_FOUND: u32 = 5;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const OUT_OF_RANGE: u32 = 11;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const DATA_LOSS: u32 = 15;
}

#[derive(thiserror::Error, Debug)]
pub enum MvccError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// Lease ID 0 means "server picks" in etcd; here the proposer must have picked already.
    #[error("etcdserver: lease ID must be assigned by the proposer")]
    LeaseIdRequired,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: empty request")]
    EmptyRequest,
    /// `txn_read_only` was given a txn that writes: it must be proposed through Raft.
    #[error("etcdserver: txn with writes is not read-only")]
    NotReadOnly,
    /// Reads between `restore()` and `publish()`: the old keyspace is gone, the new one is not
    /// durable yet. Clients retry on Unavailable.
    #[error("etcdserver: restoring snapshot, retry")]
    Restoring,
    #[error("storage error: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("corrupt mvcc data: {0}")]
    Corrupt(String),
}

impl MvccError {
    /// The message etcd puts in the gRPC status for this error.
    pub fn etcd_message(&self) -> &'static str {
        match self {
            MvccError::Compacted => "etcdserver: mvcc: required revision has been compacted",
            MvccError::FutureRev => "etcdserver: mvcc: required revision is a future revision",
            MvccError::LeaseNotFound => "etcdserver: requested lease not found",
            MvccError::LeaseExists => "etcdserver: lease already exists",
            MvccError::LeaseIdRequired => "etcdserver: lease ID must be assigned by the proposer",
            MvccError::LeaseTtlTooLarge => "etcdserver: too large lease TTL",
            MvccError::KeyNotFound => "etcdserver: key not found",
            MvccError::ValueProvided => "etcdserver: value is provided",
            MvccError::LeaseProvided => "etcdserver: lease is provided",
            MvccError::DuplicateKey => "etcdserver: duplicate key given in txn request",
            MvccError::NoSpace => "etcdserver: mvcc: database space exceeded",
            MvccError::EmptyKey => "etcdserver: key is not provided",
            MvccError::EmptyRequest => "etcdserver: empty request",
            MvccError::NotReadOnly => "etcdserver: txn with writes is not read-only",
            MvccError::Restoring => "etcdserver: restoring snapshot, retry",
            MvccError::Storage(_) => "etcdserver: storage error",
            MvccError::Corrupt(_) => "etcdserver: corrupt cluster",
        }
    }

    /// The gRPC status code (as `tonic::Code as u32`) etcd uses for this error.
    pub fn grpc_code(&self) -> u32 {
        match self {
            MvccError::Compacted | MvccError::FutureRev | MvccError::LeaseTtlTooLarge => {
                code::OUT_OF_RANGE
            }
            MvccError::LeaseNotFound => code::NOT_FOUND,
            MvccError::LeaseExists => code::FAILED_PRECONDITION,
            MvccError::LeaseIdRequired
            | MvccError::KeyNotFound
            | MvccError::ValueProvided
            | MvccError::LeaseProvided
            | MvccError::DuplicateKey
            | MvccError::EmptyKey
            | MvccError::EmptyRequest
            | MvccError::NotReadOnly => code::INVALID_ARGUMENT,
            MvccError::NoSpace => code::RESOURCE_EXHAUSTED,
            MvccError::Restoring => code::UNAVAILABLE,
            MvccError::Storage(_) => code::INTERNAL,
            MvccError::Corrupt(_) => code::DATA_LOSS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_display_for_etcd_errors() {
        for e in [
            MvccError::Compacted,
            MvccError::FutureRev,
            MvccError::LeaseNotFound,
            MvccError::LeaseExists,
            MvccError::KeyNotFound,
            MvccError::ValueProvided,
            MvccError::LeaseProvided,
            MvccError::DuplicateKey,
            MvccError::NoSpace,
            MvccError::EmptyKey,
        ] {
            assert_eq!(e.to_string(), e.etcd_message());
        }
        assert_eq!(MvccError::Compacted.grpc_code(), 11);
        assert_eq!(MvccError::LeaseNotFound.grpc_code(), 5);
        assert_eq!(MvccError::NoSpace.grpc_code(), 8);
        assert_eq!(MvccError::LeaseExists.grpc_code(), 9);
        assert_eq!(MvccError::DuplicateKey.grpc_code(), 3);
    }
}
