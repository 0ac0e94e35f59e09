//! Step 4, execute: carries out a [`Plan`] through the API, in its order —
//! the steps, the status write, the Events, the history pruning.
//!
//! A failing step stops the reconcile, but not silently: the stored status
//! gets `Ready=False` with the step's bounded reason and a message saying
//! what was being done and how the API answered, and a Warning Event with the
//! same reason is published when that changed the status (a failure that
//! repeats on every retry is reported once). Only `Ready` (and its kstatus
//! companion) changes: a run that could not be started is not recorded as
//! started, so the retry starts it. The next reconcile that gets through
//! writes the plan's `Ready` over it.

use crate::controller::driver::Reason;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::fold::{Note, RunMetric};
use super::observe::Observed;
use super::plan::{NewJob, Plan, RequestStep, Step};
use super::{BackupContext, Error, status};
use crate::controller::events;
use crate::crd::backup_run::BackupRun;
use crate::crd::backup_schedule::{BackupSchedule, BackupScheduleStatus};
use crate::resources::backup_jobs::{self as jobs, RunKind};
use crate::resources::backup_network;

/// A step that failed: its bounded reason, what was being done, the error.
struct Failure {
    reason: &'static str,
    what: String,
    error: Error,
}

impl Failure {
    fn of(failure: (&'static str, String), error: Error) -> Self {
        Self {
            reason: failure.0,
            what: failure.1,
            error,
        }
    }
}

/// Carries out `plan`. On a failed step the status says so (see the module
/// docs) and the step's error is returned.
pub async fn execute(ctx: &BackupContext, observed: &Observed, plan: &Plan) -> Result<(), Error> {
    record_metrics(ctx, observed, &plan.metrics);
    let previous = observed.previous();
    let mut started: Vec<Note> = Vec::new();
    for step in &plan.steps {
        match carry_out(ctx, observed, step).await {
            Ok(note) => started.extend(note),
            Err(f) => {
                publish(ctx, observed, &started).await;
                return Err(fail(ctx, observed, &previous, f).await);
            }
        }
    }
    if plan.status != previous {
        write_status(ctx, observed, &plan.status, &previous).await?;
    }
    publish(ctx, observed, &plan.events).await;
    publish(ctx, observed, &started).await;
    for step in &plan.prune {
        if let Err(f) = carry_out(ctx, observed, step).await {
            return Err(fail(ctx, observed, &plan.status, f).await);
        }
    }
    Ok(())
}

/// One step; the Event it earned, if any.
async fn carry_out(
    ctx: &BackupContext,
    observed: &Observed,
    step: &Step,
) -> Result<Option<Note>, Failure> {
    let bs = observed.schedule.as_ref();
    let failed = |e: Error| Failure::of(step.failure(), e);
    match step {
        Step::ApplyConfigMap => {
            let desired = jobs::config_map(bs).map_err(|e| failed(e.into()))?;
            let name = jobs::config_map_name(&bs.name_any());
            apply_child::<ConfigMap>(
                ctx,
                bs,
                &name,
                desired,
                "reading the configuration ConfigMap",
            )
            .await
            .map_err(failed)?;
            Ok(None)
        }
        Step::ApplyEgressPolicy => {
            let desired = serde_json::to_value(backup_network::egress_policy(bs))
                .map_err(|e| failed(Error::Serialize("the egress NetworkPolicy", e)))?;
            let name = backup_network::egress_policy_name(&bs.name_any());
            apply_child::<NetworkPolicy>(ctx, bs, &name, desired, "reading the egress policy")
                .await
                .map_err(failed)?;
            Ok(None)
        }
        Step::CreateJob(new) => create_job(ctx, bs, new).await,
        Step::ReplaceJob { job, event } => {
            let deleted = delete_job(ctx, job).await.map_err(failed)?;
            Ok(deleted.then(|| event.clone()))
        }
        Step::PruneJob(job) => {
            delete_job(ctx, job).await.map_err(failed)?;
            Ok(None)
        }
        Step::ClearAnnotations(names) => {
            let clear: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .map(|a| (a.to_string(), serde_json::Value::Null))
                .collect();
            ctx.applier
                .merge_patch(
                    &ApiResource::erase::<BackupSchedule>(&()),
                    bs.namespace().as_deref(),
                    &bs.name_any(),
                    json!({"metadata": {"annotations": clear}}),
                )
                .await
                .map_err(|e| failed(e.into()))?;
            Ok(None)
        }
        Step::Request(r) => answer_request(ctx, bs, r).await.map(|()| None),
        Step::DeleteRequest(r) => {
            if let Some(obj) = as_dynamic(r.as_ref()) {
                let ar = ApiResource::erase::<BackupRun>(&());
                ctx.applier
                    .delete(&ar, &obj)
                    .await
                    .map_err(|e| failed(e.into()))?;
            }
            Ok(None)
        }
    }
}

/// Creates a run Job; its `started` Event when it did not exist (409: started
/// before, by this or another replica).
async fn create_job(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    new: &NewJob,
) -> Result<Option<Note>, Failure> {
    let desired = jobs::job(
        bs,
        new.kind,
        new.scheduled,
        new.trigger,
        &ctx.settings.job_image,
    );
    match ctx.applier.create(&job_ar(), desired).await {
        Ok(_) => Ok(new.started.clone()),
        Err(e) if e.code() == Some(409) => Ok(None),
        Err(e) => Err(Failure::of(new.failure(), e.into())),
    }
}

/// Deletes a run Job (with preconditions); false when it is not a valid object.
async fn delete_job(ctx: &BackupContext, job: &Job) -> Result<bool, Error> {
    let Some(obj) = as_dynamic(job) else {
        return Ok(false);
    };
    ctx.applier.delete(&job_ar(), &obj).await?;
    Ok(true)
}

/// A BackupRun request: owner first, then its status, then its Job (so a retry
/// converges on the same Job), then its Event.
async fn answer_request(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    r: &RequestStep,
) -> Result<(), Failure> {
    let ns = bs.namespace().unwrap_or_default();
    let name = r.request.name_any();
    if let Some(patch) = &r.owner_patch {
        let ar = ApiResource::erase::<BackupRun>(&());
        ctx.applier
            .merge_patch(&ar, Some(&ns), &name, patch.clone())
            .await
            .map_err(|e| Failure::of(r.failure(), e.into()))?;
    }
    if let Some(status) = &r.status {
        let api: Api<BackupRun> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|e| {
            let e = Error::Kube("updating BackupRun status", Box::new(e));
            Failure::of(r.failure(), e)
        })?;
    }
    if let Some(new) = &r.create {
        create_job(ctx, bs, new).await?;
    }
    if let Some(note) = &r.event {
        let on = r.request.object_ref(&());
        events::publish(&ctx.recorder, &on, event(note)).await;
    }
    Ok(())
}

/// Server-side applies one child of the schedule in its namespace, comparing
/// with what exists first (no write when nothing changed).
async fn apply_child<K: Resource<DynamicType = ()>>(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    name: &str,
    desired: serde_json::Value,
    reading: &'static str,
) -> Result<(), Error> {
    let ns = bs.namespace().unwrap_or_default();
    let ar = &ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, ar);
    let actual = api
        .get_opt(name)
        .await
        .map_err(|e| Error::Kube(reading, Box::new(e)))?
        .and_then(|o| serde_json::to_value(o).ok());
    ctx.applier.apply(ar, desired, actual.as_ref()).await?;
    Ok(())
}

async fn write_status(
    ctx: &BackupContext,
    observed: &Observed,
    status: &BackupScheduleStatus,
    stored: &BackupScheduleStatus,
) -> Result<(), Error> {
    let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &observed.namespace());
    api.patch_status(
        &observed.name(),
        &PatchParams::default(),
        &Patch::Merge(status::patch(status, stored)),
    )
    .await
    .map_err(|e| Error::Kube("updating BackupSchedule status", Box::new(e)))?;
    Ok(())
}

/// Reports a failed step in status (over `stored`, what is stored now) and as
/// a Warning Event when that changed the status; returns the step's error.
async fn fail(
    ctx: &BackupContext,
    observed: &Observed,
    stored: &BackupScheduleStatus,
    f: Failure,
) -> Error {
    let reason = f.error.reason();
    let message = format!("{} failed ({reason}): {}; retrying", f.what, f.error);
    let failed = status::failed(
        stored,
        f.reason,
        message.clone(),
        status::stalled(reason),
        observed.schedule.metadata.generation,
        observed.now,
    );
    if failed != *stored {
        match write_status(ctx, observed, &failed, stored).await {
            Ok(()) => publish(ctx, observed, &[Note::warning(f.reason, message)]).await,
            Err(e) => {
                warn!(error = %e, step = f.reason, "could not report the failed step in status")
            }
        }
    }
    f.error
}

fn record_metrics(ctx: &BackupContext, observed: &Observed, metrics: &[RunMetric]) {
    let m = &ctx.metrics;
    let (ns, name) = (observed.namespace(), observed.name());
    for r in metrics {
        match (r.kind, r.ok) {
            (RunKind::Backup, true) => m.set_backup_last_success(&ns, &name, r.finished_at),
            (RunKind::Backup, false) => m.set_backup_last_failure(&ns, &name, r.finished_at),
            (RunKind::Verify, ok) => m.set_restore_test_result(&ns, &name, ok, r.finished_at),
        }
    }
}

fn event(note: &Note) -> kube::runtime::events::Event {
    events::event(note.type_, note.reason, "Run", note.note.clone())
}

/// Publishes Events on the schedule.
async fn publish(ctx: &BackupContext, observed: &Observed, notes: &[Note]) {
    let on = observed.schedule.object_ref(&());
    for note in notes {
        events::publish(&ctx.recorder, &on, event(note)).await;
    }
}

fn job_ar() -> ApiResource {
    ApiResource::erase::<Job>(&())
}

fn as_dynamic(obj: &impl serde::Serialize) -> Option<DynamicObject> {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}
