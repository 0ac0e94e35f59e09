//! Kubernetes Events: the one place that builds, publishes and decides which
//! condition transitions deserve an Event.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use crate::crd::Condition;
use crate::crd::condition::transitions;

/// An Event; the note is cut to the API's 1 KiB limit.
pub fn event(type_: EventType, reason: &str, action: &str, note: impl Into<String>) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.into().chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    }
}

/// Publishes an Event; a failure is logged, never fatal to a reconcile.
pub async fn publish(recorder: &Recorder, on: &ObjectReference, ev: Event) {
    if let Err(e) = recorder.publish(&ev, on).await {
        warn!(error = %e, reason = %ev.reason, "could not publish event");
    }
}

/// One Event per condition transition (see [`transitions`]): Normal when it
/// became True, Warning otherwise, with the condition's reason and message.
pub async fn publish_transitions(
    recorder: &Recorder,
    on: &ObjectReference,
    previous: &[Condition],
    current: &[Condition],
) {
    for c in transitions(previous, current) {
        let type_ = if c.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let note = if c.message.is_empty() {
            format!("{} is {}", c.type_, c.status)
        } else {
            format!("{} is {}: {}", c.type_, c.status, c.message)
        };
        publish(recorder, on, event(type_, &c.reason, &c.type_, note)).await;
    }
}
