//! Step 1, observe: everything one reconcile of a BackupSchedule decides from,
//! read once into one plain value ([`Observed`]).
//!
//! Most of it comes from the controller's caches (the schedule, its Jobs and
//! their Pods, its BackupRun requests, every other schedule). Two things are
//! read from the API because the controller does not watch Secrets: whether
//! every referenced Secret and key exists, and, only when a finished run still
//! has to be folded into status, the schedule's encryption key, which is used
//! here to authenticate the runs' results and goes no further (the key
//! material never enters [`Observed`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::BackupContext;
use super::Invalid;
use crate::backup::format::EncryptionKey;
use crate::backup::result::{self, JobResult, ResultError};
use crate::crd::backup_run::BackupRun;
use crate::crd::backup_schedule::{BackupSchedule, BackupScheduleStatus};
use crate::resources::backup_jobs::{
    self as jobs, RUN_KIND_LABEL, RUN_LABEL, RunKind, SCHEDULE_LABEL, SCHEDULED_TIME_ANNOTATION,
    TRIGGER_ANNOTATION, Trigger,
};
use crate::resources::labels;

/// What one reconcile sees.
#[derive(Debug, Clone)]
pub struct Observed {
    pub schedule: Arc<BackupSchedule>,
    /// The clock, read once.
    pub now: Timestamp,
    /// The schedule's Jobs (labelled with it and owned by it), as runs.
    pub runs: Vec<Run>,
    /// What the finished runs not yet folded into status reported, by Job name
    /// (a run without an entry reported nothing yet).
    pub reports: BTreeMap<String, Report>,
    /// The schedule's BackupRun requests that are not being deleted.
    pub requests: Vec<Arc<BackupRun>>,
    /// Every BackupSchedule (two must not share a destination).
    pub schedules: Vec<Arc<BackupSchedule>>,
    /// Whether every Secret and key the spec references exists.
    pub secrets: Result<(), Invalid>,
}

impl Observed {
    /// The status as stored (the base every decision starts from).
    pub fn previous(&self) -> BackupScheduleStatus {
        self.schedule.status.clone().unwrap_or_default()
    }

    pub fn namespace(&self) -> String {
        self.schedule.namespace().unwrap_or_default()
    }

    pub fn name(&self) -> String {
        self.schedule.name_any()
    }
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    Failed { reason: String, message: String },
}

/// One run Job as the controller sees it.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub kind: RunKind,
    pub trigger: Trigger,
    pub scheduled: Option<Timestamp>,
    /// The unix minute in the name (orders runs even when the Job is gone).
    pub minute: i64,
    pub finished: Option<Finished>,
    pub finished_at: Option<Timestamp>,
    pub job: Arc<Job>,
}

impl Run {
    /// Still running and not being deleted.
    pub fn is_active(&self) -> bool {
        self.finished.is_none() && self.job.metadata.deletion_timestamp.is_none()
    }
}

/// A finished run's result, as far as it authenticates. An unauthenticated
/// success is dropped (it never counts); an unauthenticated failure is kept so
/// the failure stays visible.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub result: Option<JobResult>,
    /// Why the result did not authenticate, when it did not.
    pub unauthenticated: Option<ResultError>,
}

impl Report {
    /// Nothing arrived (yet).
    pub fn is_empty(&self) -> bool {
        self.result.is_none() && self.unauthenticated.is_none()
    }
}

/// The unix minute in a run's name (`i64::MIN` when there is none).
pub fn minute_of(name: &str) -> i64 {
    name.rsplit('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(i64::MIN)
}

/// The minute of the newest run of `kind` already folded into `status`: runs up
/// to it are history, later finished runs still have to be folded.
pub fn folded_minute(status: &BackupScheduleStatus, kind: RunKind) -> i64 {
    match kind {
        RunKind::Backup => status.last_backup_job.as_deref(),
        RunKind::Verify => status.last_restore_test_job.as_deref(),
    }
    .map(minute_of)
    .unwrap_or(i64::MIN)
}

/// Reads everything the reconcile of `schedule` decides from.
pub async fn observe(ctx: &BackupContext, schedule: Arc<BackupSchedule>) -> Observed {
    let ns = schedule.namespace().unwrap_or_default();
    let name = schedule.name_any();
    let now = ctx.clock.now();
    let runs = runs_of(&schedule, &ctx.jobs.state());
    let previous = schedule.status.clone().unwrap_or_default();
    let unfolded: Vec<&Run> = runs
        .iter()
        .filter(|r| r.finished.is_some() && r.minute > folded_minute(&previous, r.kind))
        .collect();
    // Results first: they are facts whatever the spec says now. With encryption
    // they must be signed with the schedule's key (read only when a run is due
    // to be folded).
    let keys = if unfolded.is_empty() {
        None
    } else {
        result_keys(ctx, &schedule).await
    };
    let pods = ctx.pods.state();
    let reports = unfolded
        .into_iter()
        .map(|r| (r.name.clone(), report(&pods, &ns, r, keys.as_deref())))
        .filter(|(_, rep)| !rep.is_empty())
        .collect();
    let requests = ctx
        .requests
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| r.spec.schedule_name == name)
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    let secrets = check_secrets(ctx, &schedule).await;
    Observed {
        schedule,
        now,
        runs,
        reports,
        requests,
        schedules: ctx.schedules.state(),
        secrets,
    }
}

/// The runs of `bs` among `jobs`: labelled with its name and owned by it (a
/// Job of a deleted and re-created schedule of the same name is not its run).
pub fn runs_of(bs: &BackupSchedule, jobs: &[Arc<Job>]) -> Vec<Run> {
    let ns = bs.namespace();
    let name = bs.name_any();
    let uid = bs.metadata.uid.clone();
    jobs.iter()
        .filter(|j| j.namespace() == ns)
        .filter(|j| j.labels().get(SCHEDULE_LABEL) == Some(&name))
        .filter(|j| {
            j.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .cloned()
        .filter_map(run_of)
        .collect()
}

/// A Job as a run; `None` when it is not one (no run-kind label).
pub fn run_of(job: Arc<Job>) -> Option<Run> {
    let labels = job.metadata.labels.as_ref()?;
    let kind = RunKind::from_label(labels.get(RUN_KIND_LABEL)?)?;
    let ann = job.metadata.annotations.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let mut finished = None;
    let mut transition = None;
    for c in status.conditions.unwrap_or_default() {
        if c.status != "True" {
            continue;
        }
        if matches!(c.type_.as_str(), "Complete" | "Failed") {
            transition = c.last_transition_time.map(|t| t.0);
        }
        match c.type_.as_str() {
            "Complete" => finished = Some(Finished::Succeeded),
            "Failed" => {
                finished = Some(Finished::Failed {
                    reason: c.reason.unwrap_or_else(|| "JobFailed".into()),
                    message: c.message.unwrap_or_default(),
                })
            }
            _ => {}
        }
    }
    let name = job.name_any();
    Some(Run {
        minute: minute_of(&name),
        name,
        kind,
        trigger: match ann.get(TRIGGER_ANNOTATION).map(String::as_str) {
            Some("manual") => Trigger::Manual,
            _ => Trigger::Schedule,
        },
        scheduled: ann
            .get(SCHEDULED_TIME_ANNOTATION)
            .and_then(|s| s.parse().ok()),
        finished_at: status.completion_time.map(|t| t.0).or(transition),
        finished,
        job,
    })
}

/// Whether `pod` was created by `job` itself: its controlling ownerReference is that
/// Job's UID. Anyone who can create Pods in the namespace can copy the labels; only the
/// Job controller sets this reference.
fn owned_by_job(pod: &Pod, job: &Job) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    pod.owner_references().iter().any(|o| {
        o.controller == Some(true) && o.kind == "Job" && o.api_version == "batch/v1" && o.uid == uid
    })
}

/// The termination message of the run's own pod that holds a result, if any. Pods
/// that merely carry the run's label are ignored.
fn pod_message(pods: &[Arc<Pod>], ns: &str, job: &Job) -> Option<String> {
    let name = job.name_any();
    let mut best: Option<(Timestamp, String)> = None;
    for p in pods {
        if p.namespace().as_deref() != Some(ns)
            || p.labels().get(RUN_LABEL) != Some(&name)
            || !owned_by_job(p, job)
        {
            continue;
        }
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for cs in statuses {
            let Some(t) = cs.state.and_then(|s| s.terminated) else {
                continue;
            };
            let Some(m) = t.message.filter(|m| result::parse(m).is_ok()) else {
                continue;
            };
            let at = t.finished_at.map(|f| f.0).unwrap_or(Timestamp::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(b, _)| at >= *b) {
                best = Some((at, m));
            }
        }
    }
    best.map(|(_, m)| m)
}

/// Keys a run's result must be signed with: `None` when the schedule has no
/// encryption (results are trusted as the Job's own Pod reported them), else the
/// schedule's key (empty when it cannot be read: then no success is accepted).
async fn result_keys(ctx: &BackupContext, bs: &BackupSchedule) -> Option<Vec<EncryptionKey>> {
    let e = bs.spec.encryption.as_ref()?;
    let ns = bs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = api.get_opt(&e.key_secret_ref.name).await.ok().flatten();
    let material = secret.and_then(|s| {
        s.data
            .and_then(|d| d.get(&e.key_secret_ref.key).map(|b| b.0.clone()))
            .or_else(|| {
                s.string_data
                    .and_then(|d| d.get(&e.key_secret_ref.key).map(|v| v.clone().into_bytes()))
            })
    });
    Some(
        material
            .and_then(|m| EncryptionKey::new(m, e.key_id.clone()).ok())
            .into_iter()
            .collect(),
    )
}

/// What `run`'s own Pod reported, checked against `keys` (see [`result_keys`]).
fn report(pods: &[Arc<Pod>], ns: &str, run: &Run, keys: Option<&[EncryptionKey]>) -> Report {
    let Some(text) = pod_message(pods, ns, &run.job) else {
        return Report::default();
    };
    let checked = match keys {
        None => result::parse_authenticated(&text, &[], &run.name),
        Some([]) => result::parse(&text).map(|r| {
            (
                r,
                Err(result::ResultError::Unauthenticated("key unavailable")),
            )
        }),
        Some(keys) => result::parse_authenticated(&text, keys, &run.name),
    };
    let (result, unauthenticated) = match checked {
        Err(_) => (None, None),
        Ok((r, Ok(()))) => (Some(r), None),
        Ok((r, Err(e))) if r.ok => (None, Some(e)),
        Ok((r, Err(e))) => (Some(r), Some(e)),
    };
    Report {
        result,
        unauthenticated,
    }
}

/// Whether every Secret and key the spec references exists (only names and
/// key names are looked at, never a value).
async fn check_secrets(ctx: &BackupContext, bs: &BackupSchedule) -> Result<(), Invalid> {
    let ns = bs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut seen: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let this = ObjectRef::from_obj(bs);
    for (name, key) in jobs::referenced_secret_keys(&bs.spec) {
        if !seen.contains_key(&name) {
            let got = match api.get_opt(&name).await {
                Ok(got) => got,
                Err(e) => {
                    // Refused: most often a schedule outside any tenant
                    // namespace, where Palisade has no role; say so.
                    if matches!(&e, kube::Error::Api(s) if s.code == 403) {
                        tenant_namespace(ctx, &ns).await?;
                    }
                    return Err(Invalid {
                        reason: "SecretUnreadable",
                        message: format!(
                            "cannot read Secret {ns}/{name}: {}",
                            crate::apply::api_message(&e)
                        ),
                    });
                }
            };
            seen.insert(name.clone(), got);
        }
        // Refused until the Secret is created or changed: a watch wakes the schedule.
        let wait_for = |until: super::waits::Until, reason: &'static str, message: String| {
            ctx.secret_waits.wait(&ns, &name, until, this.clone());
            Invalid { reason, message }
        };
        let Some(secret) = seen.get(&name).and_then(Option::as_ref) else {
            return Err(wait_for(
                super::waits::Until::Created,
                "SecretNotFound",
                format!(
                    "Secret {name} does not exist in namespace {ns}; create it or fix the reference in spec"
                ),
            ));
        };
        let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(&key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&key));
        if !has_key {
            return Err(wait_for(
                super::waits::Until::Changed,
                "SecretKeyMissing",
                format!("Secret {ns}/{name} has no key {key:?}; add it or fix the key in spec"),
            ));
        }
    }
    Ok(())
}

/// Backups run only in a Tenant's namespaces: Palisade's role (its Jobs, the
/// Secrets they read, the backup egress policy) is granted there alone.
async fn tenant_namespace(ctx: &BackupContext, ns: &str) -> Result<(), Invalid> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.client.clone());
    let found = api.get_metadata_opt(ns).await.map_err(|e| Invalid {
        reason: "NamespaceUnreadable",
        message: format!(
            "cannot read namespace {ns}: {}",
            crate::apply::api_message(&e)
        ),
    })?;
    let labels = found.as_ref().map(|n| n.labels());
    let managed = labels.is_some_and(|l| {
        l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE)
            && l.contains_key(labels::TENANT)
    });
    if managed {
        return Ok(());
    }
    Err(Invalid {
        reason: "NotATenantNamespace",
        message: format!(
            "namespace {ns} belongs to no Tenant: Palisade runs backups only in a Tenant's namespaces (its role there lets it read the schedule's Secrets and run the Jobs); move the BackupSchedule into one, or add {ns} to a Tenant's spec.namespaces"
        ),
    })
}

/// Test fixtures shared by the pure steps' tests: a schedule, run Jobs and an
/// [`Observed`] built without a client.
#[cfg(test)]
pub mod fixtures {
    use super::*;
    use serde_json::{Value, json};

    /// The secrets check's verdict on a schedule whose Secret `db` is missing.
    pub fn missing_secret() -> Invalid {
        Invalid {
            reason: "SecretNotFound",
            message: "Secret db does not exist".into(),
        }
    }

    pub fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    /// A schedule `orders` in `team-a` (daily at 03:00 UTC) created at
    /// 2026-03-01T00:00:00Z, with `spec` merged over the defaults.
    pub fn schedule(spec: Value) -> BackupSchedule {
        let mut s = json!({
            "schedule": "0 3 * * *",
            "postgres": {"host": "db", "database": "app", "user": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "destination": {"path": "/backups/orders"},
        });
        if let (Some(s), Some(e)) = (s.as_object_mut(), spec.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "orders", "namespace": "team-a", "uid": "bs-uid",
                         "generation": 1, "creationTimestamp": "2026-03-01T00:00:00Z"},
            "spec": s,
        }))
        .expect("schedule")
    }

    /// A run Job of `orders`: `finished` is `None` (running), `Some(true)`
    /// (Complete) or `Some(false)` (Failed); it finished at `scheduled` + 60 s.
    pub fn job(
        kind: RunKind,
        trigger: Trigger,
        scheduled: Timestamp,
        finished: Option<bool>,
    ) -> Arc<Job> {
        let name = jobs::job_name("orders", kind, scheduled.as_second().div_euclid(60));
        let end = Timestamp::from_second(scheduled.as_second() + 60).expect("time");
        let status = match finished {
            None => json!({}),
            Some(true) => json!({"completionTime": end.to_string(), "conditions": [
                {"type": "Complete", "status": "True"}]}),
            Some(false) => json!({"conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit",
                 "lastTransitionTime": end.to_string()}]}),
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                    "labels": {SCHEDULE_LABEL: "orders", RUN_KIND_LABEL: kind.as_str()},
                    "annotations": {SCHEDULED_TIME_ANNOTATION: scheduled.to_string(),
                                    TRIGGER_ANNOTATION: trigger.as_str()},
                    "ownerReferences": [{"apiVersion": "palisade.dev/v1alpha1",
                        "kind": "BackupSchedule", "name": "orders", "uid": "bs-uid"}]},
                "status": status,
            }))
            .expect("job"),
        )
    }

    pub fn run(kind: RunKind, scheduled: Timestamp, finished: Option<bool>) -> Run {
        run_of(job(kind, Trigger::Schedule, scheduled, finished)).expect("run")
    }

    /// What the controller would observe for `bs` at `now` with `runs`, every
    /// Secret present and no other schedule or request.
    pub fn observed(bs: BackupSchedule, now: Timestamp, runs: Vec<Run>) -> Observed {
        let schedule = Arc::new(bs);
        Observed {
            schedules: vec![schedule.clone()],
            schedule,
            now,
            runs,
            reports: BTreeMap::new(),
            requests: Vec::new(),
            secrets: Ok(()),
        }
    }

    /// A successful backup result of snapshot `id`.
    pub fn backup_ok(id: &str) -> Report {
        Report {
            result: Some(
                result::parse(&format!(
                    r#"{{"op":"run","ok":true,"id":"{id}","key":"/backups/{id}.pgsnap","time":"2026-03-02T03:00:05Z","bytes":4096,"rawBytes":9000,"sha256":"ab12","durationSeconds":5.0,"encrypted":false,"tables":2,"rows":10,"alreadyExisted":false,"snapshotCount":3,"totalBytes":12288}}"#
                ))
                .expect("result"),
            ),
            unauthenticated: None,
        }
    }

    /// A result line parsed as the run's Pod would report it.
    pub fn reported(line: &str) -> Report {
        Report {
            result: Some(result::parse(line).expect("result")),
            unauthenticated: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn jobs_become_runs() {
        let t = at("2026-03-02T03:00:00Z");
        let cases = [
            (RunKind::Backup, None, None, "orders-29540340"),
            (
                RunKind::Backup,
                Some(true),
                Some(Finished::Succeeded),
                "orders-29540340",
            ),
            (
                RunKind::Verify,
                Some(false),
                Some(Finished::Failed {
                    reason: "BackoffLimitExceeded".into(),
                    message: "Job has reached the specified backoff limit".into(),
                }),
                "orders-verify-29540340",
            ),
        ];
        for (kind, finished, want, name) in cases {
            let r = run(kind, t, finished);
            assert_eq!(r.name, name);
            assert_eq!(r.kind, kind);
            assert_eq!(r.finished, want, "{name}");
            assert_eq!(r.minute, 29_540_340);
            assert_eq!(r.scheduled, Some(t));
            // Finished Jobs carry their end (completionTime, else the condition's
            // transition time).
            assert_eq!(
                r.finished_at.is_some(),
                finished.is_some(),
                "{name}: {:?}",
                r.finished_at
            );
            assert_eq!(r.is_active(), finished.is_none());
        }
        assert_eq!(minute_of("orders-verify-29000000"), 29_000_000);
        assert_eq!(minute_of("orders"), i64::MIN);
    }

    #[test]
    fn only_the_schedules_own_jobs_are_runs() {
        let bs = schedule(json!({}));
        let t = at("2026-03-02T03:00:00Z");
        let mine = job(RunKind::Backup, Trigger::Schedule, t, None);
        let mut foreign = (*job(RunKind::Backup, Trigger::Manual, t, None)).clone();
        if let Some(o) = foreign.metadata.owner_references.as_mut() {
            o[0].uid = "someone-else".into();
        }
        let mut unlabelled = (*job(RunKind::Verify, Trigger::Schedule, t, None)).clone();
        unlabelled.metadata.labels = None;
        let runs = runs_of(&bs, &[mine, Arc::new(foreign), Arc::new(unlabelled)]);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].trigger, Trigger::Schedule);
    }

    #[test]
    fn the_folded_marker_is_per_kind() {
        let status = BackupScheduleStatus {
            last_backup_job: Some("orders-100".into()),
            last_restore_test_job: Some("orders-verify-90".into()),
            ..Default::default()
        };
        assert_eq!(folded_minute(&status, RunKind::Backup), 100);
        assert_eq!(folded_minute(&status, RunKind::Verify), 90);
        assert_eq!(
            folded_minute(&BackupScheduleStatus::default(), RunKind::Backup),
            i64::MIN
        );
    }
}
