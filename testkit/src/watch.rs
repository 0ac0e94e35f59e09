//! Watch streams: newline-delimited `{"type","object"}` JSON, replayed from the
//! event history and then fed live from a broadcast channel, with bookmarks,
//! `timeoutSeconds` and selector-aware ADDED/DELETED synthesis.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::selectors::Selector;
use crate::store::{EventType, StoredEvent};

/// Converts a stored object into the representation the client asked for.
pub(crate) type Render = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// Everything a watch stream needs, captured at watch start under the store lock.
pub(crate) struct WatchSpec {
    pub group: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub replay: Vec<Arc<StoredEvent>>,
    pub rx: broadcast::Receiver<Arc<StoredEvent>>,
    pub close_rx: watch::Receiver<u64>,
    /// resourceVersion up to which this stream has seen every event.
    pub start_rv: u64,
    pub bookmarks: bool,
    pub bookmark_interval: Duration,
    /// Send the `k8s.io/initial-events-end` bookmark after the replay.
    pub initial_events_end: bool,
    pub timeout: Duration,
    /// (apiVersion, kind) used for bookmark objects.
    pub bookmark_type: (String, String),
    pub render: Render,
}

struct State {
    spec: WatchSpec,
    pending: VecDeque<Bytes>,
    seen_rv: u64,
    deadline: Instant,
    next_bookmark: Instant,
    done: bool,
}

fn line(etype: &str, object: Value) -> Bytes {
    let mut s = json!({"type": etype, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// A single ERROR event (e.g. 410 Gone for an expired resourceVersion).
pub(crate) fn error_line(err: &ApiError) -> Bytes {
    line("ERROR", err.to_status())
}

impl State {
    fn bookmark(&self, initial_end: bool) -> Bytes {
        let (api_version, kind) = &self.spec.bookmark_type;
        let mut metadata = json!({"resourceVersion": self.seen_rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            json!({"apiVersion": api_version, "kind": kind, "metadata": metadata}),
        )
    }

    fn relevant(&self, ev: &StoredEvent) -> bool {
        ev.key.group == self.spec.group
            && ev.key.plural == self.spec.plural
            && (self.spec.namespace.is_none() || ev.key.namespace == self.spec.namespace)
    }

    /// Turns a store event into the event this watch must see, if any.
    fn translate(&self, ev: &StoredEvent) -> Option<Bytes> {
        if !self.relevant(ev) {
            return None;
        }
        let sel = &self.spec.selector;
        let now = sel.matches(&ev.object);
        let etype = match ev.etype {
            EventType::Added | EventType::Deleted => now.then_some(ev.etype)?,
            EventType::Modified => {
                let before = ev.old.as_ref().is_some_and(|o| sel.matches(o));
                match (before, now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
        };
        Some(line(etype.as_str(), (self.spec.render)(&ev.object)))
    }
}

/// Builds the stream of body chunks for a watch.
pub(crate) fn stream(spec: WatchSpec) -> impl futures::Stream<Item = Bytes> + Send {
    let now = Instant::now();
    let mut state = State {
        deadline: now + spec.timeout,
        next_bookmark: now + spec.bookmark_interval,
        seen_rv: spec.start_rv,
        pending: VecDeque::new(),
        done: false,
        spec,
    };
    let replay = std::mem::take(&mut state.spec.replay);
    for ev in &replay {
        if let Some(l) = state.translate(ev) {
            state.pending.push_back(l);
        }
    }
    if state.spec.initial_events_end {
        let b = state.bookmark(true);
        state.pending.push_back(b);
    } else if state.spec.bookmarks {
        let b = state.bookmark(false);
        state.pending.push_back(b);
    }
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(l) = st.pending.pop_front() {
                return Some((l, st));
            }
            if st.done {
                return None;
            }
            let wake = if st.spec.bookmarks {
                st.deadline.min(st.next_bookmark)
            } else {
                st.deadline
            };
            tokio::select! {
                // Closing wins over pending events so tests can make a watcher
                // miss changes deterministically (see `close_watches`).
                biased;
                _ = st.spec.close_rx.changed() => st.done = true,
                r = st.spec.rx.recv() => match r {
                    Ok(ev) => {
                        st.seen_rv = st.seen_rv.max(ev.rv);
                        if let Some(l) = st.translate(&ev) {
                            st.pending.push_back(l);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        st.pending.push_back(error_line(&ApiError::gone(
                            "watch fell behind: too old resource version",
                        )));
                        st.done = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => st.done = true,
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= st.deadline {
                        st.done = true;
                    } else {
                        let b = st.bookmark(false);
                        st.pending.push_back(b);
                        st.next_bookmark = Instant::now() + st.spec.bookmark_interval;
                    }
                }
            }
        }
    })
}
