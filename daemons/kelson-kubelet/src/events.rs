//! core/v1 Events about pods, posted like upstream's kubelet event recorder.
//!
//! Events are fire-and-forget: each is posted from its own task so a slow or unavailable API
//! server never stalls a pod worker (upstream's recorder drops events under pressure too).
//! The reason strings are upstream's (`Unhealthy`, `Killing`, `FailedPostStartHook`, …)
//! because people and tools grep for them.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

/// Posts events about pods on behalf of one node's kubelet.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    node: String,
}

impl Recorder {
    pub fn new(client: kube::Client, node: String) -> Self {
        Recorder { client, node }
    }

    /// Records `reason`/`message` about `pod` (and, with `container`, about that container's
    /// field path, as upstream's `spec.containers{name}`). `warning` picks the event type.
    pub fn pod_event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        warning: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let ns = crate::pod::namespace(pod);
        let name = crate::pod::name(pod);
        let now = k8s_openapi::jiff::Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{name}.{:x}",
                    now.as_nanosecond() as u64 ^ (std::process::id() as u64)
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            // Legacy core/v1 style (no eventTime), like upstream's kubelet recorder.
            event_time: None,
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            action: None,
            related: None,
            series: None,
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tracing::info!(
            pod = %ev.involved_object.name.as_deref().unwrap_or(""),
            namespace = %ns,
            reason,
            message = %ev.message.as_deref().unwrap_or(""),
            "event"
        );
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "posting an event");
            }
        });
    }
}
