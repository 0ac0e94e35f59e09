//! Kubernetes Events: the one place that builds, publishes and decides which
//! condition transitions deserve an Event.
//!
//! [`Recorder`] is kube's recorder with one difference: a series (`x12 over
//! 49s`) only ever counts Events with the same note. kube's keys a series on
//! the object and reason alone and keeps the first note, so twelve different
//! rotations showed as twelve of the first (#31).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
pub use kube::runtime::events::{Event, EventType};
use tracing::warn;

/// How long an Event can still grow a series (kube's and client-go's value).
const SERIES_WINDOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(6 * 60);

/// Series remembered at most (the oldest go first): bounds memory at any size.
const SERIES_MAX: usize = 4096;

/// What makes two Events the same occurrence: everything a reader sees.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    type_: &'static str,
    reason: String,
    action: String,
    note: Option<String>,
    regarding: (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
}

/// Publishes `events.k8s.io/v1` Events; repeats of the exact same Event
/// within [`SERIES_WINDOW`] update one Event's series instead.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    series: Arc<Mutex<HashMap<SeriesKey, K8sEvent>>>,
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Arc::default(),
        }
    }

    /// Publishes `ev` about `regarding` (cluster-scoped objects' Events land
    /// in `default`, as kubectl describe looks for them).
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = SeriesKey {
            type_: type_name(ev.type_),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            note: ev.note.clone(),
            regarding: (
                regarding.kind.clone(),
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
        };
        let earlier = self.series.lock().ok().and_then(|mut m| {
            m.retain(|_, e| last_seen(e).is_some_and(|t| now.duration_since(t) < SERIES_WINDOW));
            m.get(&key).cloned()
        });
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let event = match earlier {
            Some(mut e) => {
                let count = e.series.as_ref().map_or(2, |s| s.count + 1);
                e.series = Some(EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                });
                let patch = serde_json::json!({ "series": e.series });
                api.patch(
                    e.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
                e
            }
            None => {
                let e = self.generate(ev, regarding, now);
                api.create(&PostParams::default(), &e).await?
            }
        };
        if let Ok(mut m) = self.series.lock() {
            if m.len() >= SERIES_MAX
                && let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, e)| last_seen(e))
                    .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
            m.insert(key, event);
        }
        Ok(())
    }

    fn generate(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> K8sEvent {
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(type_name(ev.type_).to_string()),
            ..Default::default()
        }
    }
}

fn last_seen(e: &K8sEvent) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or(e.event_time.as_ref().map(|t| t.0))
}

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
