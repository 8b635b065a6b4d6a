//! Storage errors, classified once at the etcd boundary.
//!
//! Every etcd failure is translated here into a Kubernetes-meaningful variant so the API
//! server's handler only has to attach group/resource/name when it builds a `metav1.Status`
//! (`http_code`/`reason` say which Status; the handler decides the wording that names the
//! object). Messages that upstream's etcd3 store puts on the wire verbatim (expired lists,
//! too-large resource versions, precondition failures) are produced here with upstream's text.
//!
//! Callbacks passed to `guaranteed_update`/`delete` return their own error type `E` (the API
//! server uses `kelson_apimachinery::ApiError`); [`UpdateError`] carries either a storage error
//! or the callback's error untouched, so this crate does not depend on the API error type.

use std::fmt;

use kelson_apimachinery::error::{ApiError, StatusCause, StatusDetails};

/// A failure of a storage operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The key does not exist (404 NotFound).
    #[error("key {key:?} not found")]
    NotFound { key: String },
    /// Create found the key already present (409 AlreadyExists).
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    /// A precondition did not hold, or the update kept losing races (409 Conflict). `message`
    /// is upstream's ("Precondition failed: UID in precondition: ...").
    #[error("{message}")]
    Conflict { key: String, message: String },
    /// Create was given an object whose `metadata.resourceVersion` is set (500, as upstream).
    #[error("resourceVersion should not be set on objects to be created")]
    ResourceVersionSetOnCreate,
    /// The requested revision has been compacted (410 Expired). On a list with `continue`,
    /// `continue_token` is a fresh token that continues at the latest revision; the handler puts
    /// it in the Status' `metadata.continue`.
    #[error("{message}")]
    Expired {
        message: String,
        continue_token: Option<String>,
    },
    /// A minimum resource version newer than the store (504 Timeout, cause
    /// `ResourceVersionTooLarge`, Retry-After 1 s, as upstream).
    #[error("Too large resource version: {requested}, current: {current}")]
    TooLargeResourceVersion { requested: u64, current: u64 },
    /// Malformed input: resource version, continue token, key (400 BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// The store refused the request's size (413 RequestEntityTooLarge).
    #[error("{0}")]
    TooLarge(String),
    /// The store cannot be reached or has no leader (503 ServiceUnavailable).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time (504 Timeout).
    #[error("storage request timed out: {0}")]
    Timeout(String),
    /// An object that is not a JSON object, or stored bytes that do not decode (500).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// Anything else (500 InternalError).
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl StorageError {
    /// The HTTP status code of the `metav1.Status` this error becomes.
    pub fn http_code(&self) -> u16 {
        match self {
            StorageError::NotFound { .. } => 404,
            StorageError::AlreadyExists { .. } | StorageError::Conflict { .. } => 409,
            StorageError::Expired { .. } => 410,
            StorageError::TooLargeResourceVersion { .. } | StorageError::Timeout(_) => 504,
            StorageError::BadRequest(_) => 400,
            StorageError::TooLarge(_) => 413,
            StorageError::Unavailable(_) => 503,
            StorageError::ResourceVersionSetOnCreate
            | StorageError::InvalidObject(_)
            | StorageError::Internal(_) => 500,
        }
    }

    /// The `metav1.StatusReason` of the `metav1.Status` this error becomes.
    pub fn reason(&self) -> &'static str {
        match self {
            StorageError::NotFound { .. } => "NotFound",
            StorageError::AlreadyExists { .. } => "AlreadyExists",
            StorageError::Conflict { .. } => "Conflict",
            StorageError::Expired { .. } => "Expired",
            StorageError::TooLargeResourceVersion { .. } | StorageError::Timeout(_) => "Timeout",
            StorageError::BadRequest(_) => "BadRequest",
            StorageError::TooLarge(_) => "RequestEntityTooLarge",
            StorageError::Unavailable(_) => "ServiceUnavailable",
            StorageError::ResourceVersionSetOnCreate
            | StorageError::InvalidObject(_)
            | StorageError::Internal(_) => "InternalError",
        }
    }

    /// The fresh continue token of an expired paged list, for `Status.metadata.continue`.
    pub fn continue_token(&self) -> Option<&str> {
        match self {
            StorageError::Expired { continue_token, .. } => continue_token.as_deref(),
            _ => None,
        }
    }

    /// Seconds a client should wait before retrying (`Status.details.retryAfterSeconds`).
    pub fn retry_after_seconds(&self) -> Option<u32> {
        match self {
            StorageError::TooLargeResourceVersion { .. } => Some(1),
            _ => None,
        }
    }
}

impl StorageError {
    /// The Kubernetes error for this failure on object `name` of `group`/`resource`, with
    /// upstream's messages (`pods "x" not found`, `Operation cannot be fulfilled on ...`).
    /// An expired paged list's fresh continue token is not part of [`ApiError`]: use
    /// [`StorageError::to_status`] (or [`StorageError::continue_token`]) for the wire form.
    pub fn to_api_error(&self, group: &str, resource: &str, name: &str) -> ApiError {
        match self {
            StorageError::NotFound { .. } => ApiError::not_found(group, resource, name),
            StorageError::AlreadyExists { .. } => ApiError::already_exists(group, resource, name),
            StorageError::Conflict { message, .. } => {
                ApiError::conflict(group, resource, name, message)
            }
            StorageError::Expired { message, .. } => ApiError::expired(message.clone()),
            StorageError::TooLargeResourceVersion { .. } => {
                // Upstream's NewTooLargeResourceVersionError: a Timeout with a typed cause
                // that clients (reflectors) recognise, and retry after one second.
                let mut e = ApiError::timeout(self.to_string());
                e.details = Some(StatusDetails {
                    causes: vec![StatusCause {
                        reason: "ResourceVersionTooLarge".into(),
                        message: "Too large resource version".into(),
                        field: String::new(),
                    }],
                    retry_after_seconds: 1,
                    ..StatusDetails::default()
                });
                e
            }
            StorageError::BadRequest(m) => ApiError::bad_request(m.clone()),
            StorageError::TooLarge(m) => ApiError::too_large(m),
            StorageError::Unavailable(m) => ApiError::service_unavailable(m.clone()),
            StorageError::Timeout(m) => ApiError::timeout(m),
            StorageError::ResourceVersionSetOnCreate
            | StorageError::InvalidObject(_)
            | StorageError::Internal(_) => ApiError::internal(self.to_string()),
        }
    }

    /// The `metav1.Status` JSON, including `metadata.continue` for an expired paged list.
    pub fn to_status(&self, group: &str, resource: &str, name: &str) -> serde_json::Value {
        let mut status = self.to_api_error(group, resource, name).to_status();
        if let (Some(token), Some(meta)) = (self.continue_token(), status.get_mut("metadata")) {
            meta["continue"] = serde_json::Value::String(token.to_string());
        }
        status
    }
}

/// What an etcd failure means; compaction and future revisions need the caller's context
/// (list vs. continue vs. watch) to become the right Kubernetes error.
#[derive(Debug)]
pub(crate) enum EtcdFailure {
    Compacted,
    FutureRevision,
    Other(StorageError),
}

pub(crate) fn classify(err: etcd_client::Error) -> EtcdFailure {
    use tonic::Code;
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message().to_string();
            match status.code() {
                // etcd's ErrGRPCCompacted / ErrGRPCFutureRev are both OutOfRange.
                Code::OutOfRange if msg.contains("compacted") => EtcdFailure::Compacted,
                Code::OutOfRange if msg.contains("future revision") => EtcdFailure::FutureRevision,
                Code::InvalidArgument if msg.contains("too large") => {
                    EtcdFailure::Other(StorageError::TooLarge(msg))
                }
                Code::ResourceExhausted => EtcdFailure::Other(StorageError::TooLarge(msg)),
                Code::Unavailable => EtcdFailure::Other(StorageError::Unavailable(msg)),
                // The request's HTTP/2 stream or connection was cut (a member stopping or
                // restarting): not an answer. As Unavailable it is retried (reads) or resolved
                // by reading back (writes: it may have been applied), like a lost connection.
                Code::Cancelled => {
                    EtcdFailure::Other(StorageError::Unavailable(format!("etcd: Cancelled: {msg}")))
                }
                Code::DeadlineExceeded => EtcdFailure::Other(StorageError::Timeout(msg)),
                _ => EtcdFailure::Other(StorageError::Internal(format!(
                    "etcd: {:?}: {msg}",
                    status.code()
                ))),
            }
        }
        etcd_client::Error::TransportError(e) => {
            EtcdFailure::Other(StorageError::Unavailable(format!("transport: {e}")))
        }
        etcd_client::Error::IoError(e) => {
            EtcdFailure::Other(StorageError::Unavailable(format!("io: {e}")))
        }
        other => EtcdFailure::Other(StorageError::Internal(other.to_string())),
    }
}

/// Classifies an etcd error where compaction means "the resource version is too old" with
/// `expired_message`.
pub(crate) fn etcd_error(err: etcd_client::Error, expired_message: &str) -> StorageError {
    match classify(err) {
        EtcdFailure::Compacted => StorageError::Expired {
            message: expired_message.to_string(),
            continue_token: None,
        },
        EtcdFailure::FutureRevision => {
            StorageError::Timeout("etcdserver: mvcc: required revision is a future revision".into())
        }
        EtcdFailure::Other(e) => e,
    }
}

/// The error of an operation that runs a caller's callback: either the storage failed, or the
/// callback rejected the object (its error is returned as it was produced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError<E> {
    Storage(StorageError),
    Rejected(E),
}

impl<E> From<StorageError> for UpdateError<E> {
    fn from(e: StorageError) -> Self {
        UpdateError::Storage(e)
    }
}

impl<E: fmt::Display> fmt::Display for UpdateError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Storage(e) => e.fmt(f),
            UpdateError::Rejected(e) => e.fmt(f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for UpdateError<E> {}

impl UpdateError<ApiError> {
    /// The Kubernetes error of an update or delete whose callback speaks [`ApiError`] (what
    /// the API server's handlers do): a rejection is returned as the callback made it, a
    /// storage failure is named after `group`/`resource`/`name` as
    /// [`StorageError::to_api_error`] does.
    pub fn into_api_error(self, group: &str, resource: &str, name: &str) -> ApiError {
        match self {
            UpdateError::Storage(e) => e.to_api_error(group, resource, name),
            UpdateError::Rejected(e) => e,
        }
    }

    /// Whether the object was missing (so "already gone" can be told from real failures).
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpdateError::Storage(StorageError::NotFound { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons_follow_upstream() {
        let e = StorageError::TooLargeResourceVersion {
            requested: 10,
            current: 5,
        };
        assert_eq!(e.http_code(), 504);
        assert_eq!(e.reason(), "Timeout");
        assert_eq!(e.to_string(), "Too large resource version: 10, current: 5");
        assert_eq!(e.retry_after_seconds(), Some(1));
        let e = StorageError::Expired {
            message: "m".into(),
            continue_token: Some("tok".into()),
        };
        assert_eq!((e.http_code(), e.reason()), (410, "Expired"));
        assert_eq!(e.continue_token(), Some("tok"));
        assert_eq!(
            StorageError::AlreadyExists { key: "k".into() }.http_code(),
            409
        );
    }

    #[test]
    fn grpc_errors_are_classified() {
        let compacted = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted",
        ));
        assert!(matches!(classify(compacted), EtcdFailure::Compacted));
        let future = etcd_client::Error::GRpcStatus(tonic::Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision",
        ));
        assert!(matches!(classify(future), EtcdFailure::FutureRevision));
        let big = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
            "etcdserver: request is too large",
        ));
        assert!(matches!(
            classify(big),
            EtcdFailure::Other(StorageError::TooLarge(_))
        ));
        let down = etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader"));
        assert_eq!(etcd_error(down, "x").http_code(), 503);
        // A stream cut by a stopping member (seen in the lab's rolling upgrade) is no answer.
        let cut =
            etcd_client::Error::GRpcStatus(tonic::Status::cancelled("operation was canceled"));
        assert!(matches!(
            classify(cut),
            EtcdFailure::Other(StorageError::Unavailable(_))
        ));
    }

    #[test]
    fn update_errors_become_api_errors() {
        let rejected: UpdateError<ApiError> =
            UpdateError::Rejected(ApiError::bad_request("no such field"));
        assert!(!rejected.is_not_found());
        let e = rejected.into_api_error("", "pods", "p");
        assert_eq!((e.code, e.message.as_str()), (400, "no such field"));
        let missing: UpdateError<ApiError> = StorageError::NotFound { key: "/k".into() }.into();
        assert!(missing.is_not_found());
        assert_eq!(
            missing.into_api_error("apps", "deployments", "web").message,
            "deployments.apps \"web\" not found"
        );
    }

    #[test]
    fn converts_to_upstream_status() {
        let nf = StorageError::NotFound {
            key: "/registry/pods/ns/x".into(),
        };
        let s = nf.to_status("", "pods", "x");
        assert_eq!(s["message"], "pods \"x\" not found");
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(404), Some("NotFound"))
        );
        let c = StorageError::Conflict {
            key: "k".into(),
            message: "Precondition failed: UID in precondition: a, UID in object meta: b".into(),
        };
        assert_eq!(
            c.to_api_error("apps", "deployments", "web").message,
            "Operation cannot be fulfilled on deployments.apps \"web\": Precondition failed: \
             UID in precondition: a, UID in object meta: b"
        );
        let exp = StorageError::Expired {
            message: "too old".into(),
            continue_token: Some("tok".into()),
        };
        let s = exp.to_status("", "pods", "");
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(410), Some("Expired"))
        );
        assert_eq!(s["metadata"]["continue"], "tok");
        let big = StorageError::TooLargeResourceVersion {
            requested: 9,
            current: 3,
        };
        let s = big.to_status("", "pods", "");
        assert_eq!(
            s["message"],
            "Timeout: Too large resource version: 9, current: 3"
        );
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
        assert_eq!(
            s["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert_eq!(
            StorageError::ResourceVersionSetOnCreate
                .to_api_error("", "pods", "x")
                .code,
            500
        );
        for e in [
            StorageError::BadRequest("b".into()),
            StorageError::Unavailable("u".into()),
            StorageError::Timeout("t".into()),
            StorageError::TooLarge("l".into()),
        ] {
            assert_eq!(e.to_api_error("", "pods", "x").code, e.http_code(), "{e:?}");
        }
    }
}
