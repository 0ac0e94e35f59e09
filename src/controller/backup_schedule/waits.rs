//! Watches for the Secrets that blocked schedules wait for.
//!
//! Palisade reads no Secret cluster-wide and keeps none of a tenant's own
//! Secrets in memory, so a schedule whose Secret is missing was only looked at
//! again every 30 s (`SecretNotFound` stayed that long after the Secret was
//! created). Instead, each blocked (schedule, Secret) pair gets a watch on that
//! one Secret, by name and metadata only, in the schedule's namespace; its
//! first change reconciles the schedule, and the watch ends. Waits are few
//! (one per blocked reference), end by themselves after [`WAIT_AT_MOST`] (the
//! periodic re-check starts a new one), and never read a value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use crate::crd::backup_schedule::BackupSchedule;

/// How long one wait lasts before the periodic re-check takes over again.
const WAIT_AT_MOST: Duration = Duration::from_secs(600);

/// What ends a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The Secret appears (or already exists when the watch starts).
    Created,
    /// The Secret changes (a key is added).
    Changed,
}

type Key = (String, String, String);

/// The open waits and where their wake-ups go.
pub struct SecretWaits {
    client: kube::Client,
    wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<BackupSchedule>>,
    open: Mutex<HashMap<Key, tokio::task::JoinHandle<()>>>,
}

impl SecretWaits {
    pub fn new(
        client: kube::Client,
        wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<BackupSchedule>>,
    ) -> Self {
        Self {
            client,
            wake,
            open: Mutex::default(),
        }
    }

    /// Reconciles `schedule` when Secret `namespace/name` is created or
    /// changes (`until`); at most one wait per (schedule, Secret).
    pub fn wait(
        &self,
        namespace: &str,
        name: &str,
        until: Until,
        schedule: ObjectRef<BackupSchedule>,
    ) {
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        open.retain(|_, task| !task.is_finished());
        let key = (
            namespace.to_string(),
            name.to_string(),
            schedule.name.clone(),
        );
        if open.contains_key(&key) {
            return;
        }
        let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(self.client.clone(), namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let wake = self.wake.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(api, cfg).default_backoff().boxed();
            let first_change = async {
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(watcher::Event::InitApply(_)) if until == Until::Created => return,
                        Ok(watcher::Event::Apply(_)) => return,
                        // Refused or broken: the periodic re-check goes on.
                        Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            if tokio::time::timeout(WAIT_AT_MOST, first_change)
                .await
                .is_ok()
            {
                let _ = wake.send(schedule);
            }
        });
        open.insert(key, task);
    }
}

impl Drop for SecretWaits {
    fn drop(&mut self) {
        if let Ok(open) = self.open.lock() {
            for task in open.values() {
                task.abort();
            }
        }
    }
}
