//! Writing core/v1 Events (what `kubectl describe` and `kubectl get events` show), with the
//! reporting component named like upstream's (`cloud-controller-manager`'s controllers).
//! Failures to write an event are logged and otherwise ignored: an event is a hint to a
//! human, never a reason to stop reconciling.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};

pub const COMPONENT: &str = "kelson-cloud-controller-manager";

pub async fn emit(
    client: &kube::Client,
    namespace: &str,
    involved: ObjectReference,
    type_: &str,
    reason: &str,
    message: &str,
) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let name = format!(
        "{}.{:x}",
        involved.name.clone().unwrap_or_default(),
        now.as_nanosecond()
    );
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        involved_object: involved,
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        // Legacy core/v1 style (no eventTime), as upstream's cloud controllers record through
        // client-go's legacy recorder: with eventTime set the API server would require `action`.
        event_time: None,
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(COMPONENT.into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    if let Err(e) = api.create(&PostParams::default(), &ev).await {
        tracing::warn!(reason, error = %e, "writing event failed");
    }
}
