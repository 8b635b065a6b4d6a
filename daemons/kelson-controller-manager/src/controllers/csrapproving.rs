//! The CSR approver: auto-approves kubelet client certificate requests, as upstream's
//! `csrapproving` controller (`pkg/controller/certificates/approver/sarapprove.go`).
//!
//! Only requests for `kubernetes.io/kube-apiserver-client-kubelet` that are valid kubelet
//! client requests (the signer's own rules, [`super::csrsigning::validate_kubelet_client`]) are
//! considered, and only while pending (no Approved/Denied/Failed condition, no certificate).
//! Two recognisers, as upstream:
//! - `selfnodeclient`: the requester *is* the node the certificate names (`spec.username` ==
//!   the CN) — a kubelet renewing its own certificate; needs `create` on
//!   `certificatesigningrequests/selfnodeclient`.
//! - `nodeclient`: anyone else (a bootstrap token); needs `create` on
//!   `certificatesigningrequests/nodeclient`.
//!
//! Whether the requester holds the permission is asked of the API server with a
//! SubjectAccessReview carrying the identity the API server stamped into the request
//! (`spec.username/uid/groups/extra`), so RBAC (or any authorizer) stays the single source of
//! truth. Approval goes through the `/approval` subresource (PUT with the resourceVersion read)
//! with upstream's reason and message. A request no permission covers stays pending (someone may
//! approve it by hand, or RBAC may change): it is looked at again after a minute.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

use super::csrsigning::{self, KUBELET_CLIENT_SIGNER};
use super::{is_status, Controller, Ctx, Result};
use crate::informer::key_of;
use crate::queue::WorkQueue;

pub const REASON: &str = "AutoApproved";
pub const MESSAGE: &str = "Auto approving kubelet client certificate after SubjectAccessReview.";

/// Which permission a request needs to be auto-approved (None: not ours to approve).
pub fn recognize(csr: &CertificateSigningRequest) -> Option<&'static str> {
    if csr.spec.signer_name != KUBELET_CLIENT_SIGNER {
        return None;
    }
    let usages = csr.spec.usages.clone().unwrap_or_default();
    let facts = csrsigning::parse_request(&csr.spec.request.0).ok()?;
    csrsigning::validate_kubelet_client(&facts, &usages).ok()?;
    if facts.common_name.as_deref() == csr.spec.username.as_deref() {
        Some("selfnodeclient")
    } else {
        Some("nodeclient")
    }
}

fn is_pending(csr: &CertificateSigningRequest) -> bool {
    let Some(st) = &csr.status else {
        return true;
    };
    let decided = st.conditions.as_ref().is_some_and(|cs| {
        cs.iter()
            .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
    });
    !decided && st.certificate.as_ref().is_none_or(|c| c.0.is_empty())
}

pub fn controller(ctx: &Ctx) -> Controller {
    let queue = WorkQueue::new();
    let q = queue.clone();
    ctx.inf.csrs.on_change(move |c, _| q.add(key_of(c)));
    let c = ctx.clone();
    Controller::new(
        "certificatesigningrequest-approving-controller",
        queue,
        1,
        move |key| {
            let c = c.clone();
            async move { reconcile(&c, &key).await }
        },
    )
}

async fn allowed(ctx: &Ctx, csr: &CertificateSigningRequest, subresource: &str) -> Result<bool> {
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: csr.spec.username.clone(),
            uid: csr.spec.uid.clone(),
            groups: csr.spec.groups.clone(),
            extra: csr.spec.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some("certificates.k8s.io".into()),
                resource: Some("certificatesigningrequests".into()),
                subresource: Some(subresource.into()),
                verb: Some("create".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let r = api.create(&PostParams::default(), &sar).await?;
    Ok(r.status.is_some_and(|s| s.allowed))
}

async fn reconcile(ctx: &Ctx, key: &str) -> Result<Option<Duration>> {
    let Some(csr) = ctx.inf.csrs.get(None, key) else {
        return Ok(None);
    };
    if !is_pending(&csr) {
        return Ok(None);
    }
    let Some(sub) = recognize(&csr) else {
        return Ok(None);
    };
    if !allowed(ctx, &csr, sub).await? {
        tracing::info!(csr = key, recognizer = sub, user = ?csr.spec.username,
            "recognized the request but the SubjectAccessReview did not allow it");
        return Ok(Some(Duration::from_secs(60)));
    }
    let mut updated = CertificateSigningRequest::clone(&csr);
    let now = Time(Timestamp::now());
    updated
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some(REASON.into()),
            message: Some(MESSAGE.into()),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
    let api: Api<CertificateSigningRequest> = Api::all(ctx.client.clone());
    match api
        .replace_subresource("approval", key, &PostParams::default(), &updated)
        .await
    {
        Ok(_) => {
            tracing::info!(csr = key, recognizer = sub, "approved");
            Ok(None)
        }
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn csr(cn: &str, username: &str, usages: &[&str]) -> CertificateSigningRequest {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "system:nodes");
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x"},
            "spec": {
                "request": k8s_openapi::ByteString(pem.into_bytes()),
                "signerName": KUBELET_CLIENT_SIGNER,
                "usages": usages,
                "username": username,
            }
        }))
        .unwrap()
    }

    #[test]
    fn recognizers() {
        let u = ["digital signature", "client auth"];
        assert_eq!(
            recognize(&csr("system:node:a", "system:bootstrap:abcdef", &u)),
            Some("nodeclient")
        );
        assert_eq!(
            recognize(&csr("system:node:a", "system:node:a", &u)),
            Some("selfnodeclient")
        );
        assert_eq!(
            recognize(&csr("system:node:a", "x", &["server auth"])),
            None
        );
        assert_eq!(recognize(&csr("alice", "alice", &u)), None);
        let mut other = csr("system:node:a", "x", &u);
        other.spec.signer_name = "kubernetes.io/kube-apiserver-client".into();
        assert_eq!(recognize(&other), None);
        assert!(is_pending(&other));
    }
}
