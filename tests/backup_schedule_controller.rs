//! BackupSchedule controller against the in-process API server with an injected
//! clock. The test plays the Job controller and the kubelet: it writes Job status
//! and a Pod whose container terminated with the `palisade backup` JSON result.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use palisade::backup::schedule::Schedule;
use palisade::controller::Clock;
use palisade_testkit::{FakeApiServer, RequestRecord, Verb};
use serde_json::{Value, json};
use support::{ManualClock, WAIT, events_with_reason, fast_settings, server};
use tokio::sync::{mpsc, oneshot};

const NS: &str = "team-a";
const BS: &str = "backupschedules.palisade.dev";
const JOBS: &str = "jobs.batch";

struct Controller {
    resync: mpsc::UnboundedSender<()>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Controller {
    fn start(server: &FakeApiServer, clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let (resync, resync_rx) = mpsc::unbounded_channel();
        let stream = futures::stream::unfold(resync_rx, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let shared =
            palisade::controller::driver::Shared::new(server.client(), clock, fast_settings());
        let handle = tokio::spawn(palisade::controller::backup_schedule::run_with_resync(
            shared,
            stream,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            resync,
            stop: Some(tx),
            handle,
        }
    }

    fn resync(&self) {
        let _ = self.resync.send(());
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.handle).await;
        self.handle.abort();
    }
}

/// A clock at the real time (the fake server stamps `creationTimestamp` with it).
fn clock_now() -> Arc<ManualClock> {
    ManualClock::new(Timestamp::from_second(Timestamp::now().as_second()).expect("time"))
}

fn setup() -> FakeApiServer {
    let s = server();
    s.put_json("namespaces", json!({"metadata": {"name": NS}}))
        .expect("namespace");
    s.put_json(
        "secrets",
        json!({"metadata": {"name": "db", "namespace": NS}, "data": {"password": "c2VjcmV0"}}),
    )
    .expect("secret");
    s
}

fn schedule_json(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "schedule": "0 3 * * *",
        "postgres": {"host": "db", "database": "app", "user": "backup",
                     "passwordSecretRef": {"name": "db", "key": "password"}},
        "destination": {"path": format!("/backups/{name}")},
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    })
}

fn create_schedule(s: &FakeApiServer, name: &str, extra: Value) {
    s.put_json(BS, schedule_json(name, extra))
        .expect("schedule");
}

/// The common prologue: the namespace and its Secret, one schedule `name`
/// (`extra`: spec fields over the defaults), a clock at the real time, the
/// controller started.
fn start_schedule(name: &str, extra: Value) -> (FakeApiServer, Arc<ManualClock>, Controller) {
    let s = setup();
    let clock = clock_now();
    create_schedule(&s, name, extra);
    let c = Controller::start(&s, clock.clone());
    (s, clock, c)
}

/// [`start_schedule`], then waits until the schedule is `Ready`.
async fn ready_schedule(name: &str, extra: Value) -> (FakeApiServer, Arc<ManualClock>, Controller) {
    let (s, clock, c) = start_schedule(name, extra);
    wait(&s, "Ready", |s| cond(s, name, "Ready")["status"] == "True").await;
    (s, clock, c)
}

fn next_due(clock: &ManualClock, expr: &str) -> Timestamp {
    Schedule::parse(expr, None)
        .expect("schedule")
        .next_after(clock.now())
        .expect("next")
}

fn set_clock(clock: &ManualClock, at: Timestamp) {
    *clock.0.lock().expect("clock") = at;
}

fn jobs_of(s: &FakeApiServer, name: &str) -> Vec<Value> {
    let mut v: Vec<Value> = s
        .list_json_in(JOBS, Some(NS))
        .into_iter()
        .filter(|j| j["metadata"]["labels"]["palisade.dev/backup-schedule"] == name)
        .collect();
    v.sort_by_key(|j| {
        j["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    v
}

fn status(s: &FakeApiServer, name: &str) -> Value {
    s.get_json(BS, Some(NS), name)
        .and_then(|b| b.get("status").cloned())
        .unwrap_or(Value::Null)
}

fn cond(s: &FakeApiServer, name: &str, type_: &str) -> Value {
    status(s, name)["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

async fn wait(s: &FakeApiServer, what: &str, f: impl FnMut(&FakeApiServer) -> bool) {
    s.wait_until(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Plays the Job controller and kubelet: the run's Pod terminated with `message`,
/// and the Job finished (`Complete` or `Failed`).
fn finish(s: &FakeApiServer, job: &str, succeeded: bool, message: &str, at: Timestamp) {
    let uid = job_uid(s, job);
    pod_terminated(
        s,
        job,
        &format!("{job}-abcde"),
        Some(&uid),
        succeeded,
        message,
        at,
    );
    finish_job(s, job, succeeded, at);
}

/// Moves the clock to `due`, lets the controller start that minute's backup Job and
/// returns its name.
/// [`start_due_run`] at the next time the default schedule (daily at 03:00) is due:
/// that time and the Job's name.
async fn start_next_run(
    s: &FakeApiServer,
    c: &Controller,
    clock: &ManualClock,
    schedule: &str,
) -> (Timestamp, String) {
    let due = next_due(clock, "0 3 * * *");
    (due, start_due_run(s, c, clock, schedule, due).await)
}

async fn start_due_run(
    s: &FakeApiServer,
    c: &Controller,
    clock: &ManualClock,
    schedule: &str,
    due: Timestamp,
) -> String {
    set_clock(clock, due);
    c.resync();
    run_job(s, schedule, due).await
}

/// Waits for the Job of `schedule`'s run due at `due`: its name.
async fn run_job(s: &FakeApiServer, schedule: &str, due: Timestamp) -> String {
    let name = format!("{schedule}-{}", due.as_second() / 60);
    s.wait_for_json(JOBS, Some(NS), &name, WAIT, |_| true)
        .await
        .expect("job");
    name
}

fn job_uid(s: &FakeApiServer, job: &str) -> String {
    s.get_json(JOBS, Some(NS), job)
        .and_then(|j| j["metadata"]["uid"].as_str().map(str::to_string))
        .expect("job uid")
}

/// A Pod labelled as `job`'s run whose container terminated with `message`; owned by
/// the Job (controller reference to `owner_uid`) only when given.
fn pod_terminated(
    s: &FakeApiServer,
    job: &str,
    pod: &str,
    owner_uid: Option<&str>,
    succeeded: bool,
    message: &str,
    at: Timestamp,
) {
    let owners = match owner_uid {
        Some(uid) => json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": uid,
                             "controller": true, "blockOwnerDeletion": true}]),
        None => json!([]),
    };
    s.put_json(
        "pods",
        json!({
            "metadata": {"name": pod, "namespace": NS, "ownerReferences": owners, "labels": {
                "palisade.dev/backup-schedule": job_schedule(s, job),
                "palisade.dev/run": job, "job-name": job}},
            "spec": {"containers": [{"name": "backup", "image": "x"}]},
            "status": {"phase": if succeeded {"Succeeded"} else {"Failed"}, "containerStatuses": [{
                "name": "backup", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": if succeeded {0} else {1},
                    "finishedAt": at.to_string(), "message": message}}}]},
        }),
    )
    .expect("pod");
}

/// Plays the Job controller: the Job finished (`Complete` or `Failed`).
fn finish_job(s: &FakeApiServer, job: &str, succeeded: bool, at: Timestamp) {
    let mut j = s.get_json(JOBS, Some(NS), job).expect("job");
    j["status"] = if succeeded {
        json!({"succeeded": 1, "completionTime": at.to_string(), "conditions": [
            {"type": "Complete", "status": "True"}]})
    } else {
        json!({"failed": 1, "conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}]})
    };
    s.put_json(JOBS, j).expect("job status");
}

fn job_schedule(s: &FakeApiServer, job: &str) -> String {
    s.get_json(JOBS, Some(NS), job)
        .and_then(|j| {
            j["metadata"]["labels"]["palisade.dev/backup-schedule"]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn run_result(id: &str) -> String {
    format!(
        r#"{{"op":"run","ok":true,"id":"{id}","key":"/backups/{id}.pgsnap","time":"2026-03-01T03:00:05Z","bytes":4096,"rawBytes":9000,"sha256":"ab12","durationSeconds":5.0,"encrypted":false,"tables":2,"rows":10,"alreadyExisted":false,"pruned":{{"kept":1,"deletedCount":0}},"snapshotCount":1,"totalBytes":4096}}"#
    )
}

#[tokio::test]
async fn run_is_created_at_the_scheduled_minute_and_only_once() {
    let (s, clock, c) = ready_schedule("nightly", json!({})).await;
    assert!(jobs_of(&s, "nightly").is_empty());
    let due = next_due(&clock, "0 3 * * *");
    assert_eq!(
        status(&s, "nightly")["nextScheduleTime"],
        json!(due.to_string())
    );
    // The configuration is there before any run.
    let cm = s
        .get_json("configmaps", Some(NS), "nightly-config")
        .expect("config map");
    assert!(
        cm["data"]["backup.yaml"]
            .as_str()
            .expect("yaml")
            .contains("/backups/nightly")
    );

    // A minute early: nothing.
    set_clock(
        &clock,
        Timestamp::from_second(due.as_second() - 60).expect("t"),
    );
    c.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(jobs_of(&s, "nightly").is_empty());

    // At the minute: exactly one run, named after it.
    set_clock(
        &clock,
        Timestamp::from_second(due.as_second() + 5).expect("t"),
    );
    c.resync();
    let name = run_job(&s, "nightly", due).await;
    wait(&s, "lastScheduleTime", |s| {
        status(s, "nightly")["lastScheduleTime"] == json!(due.to_string())
    })
    .await;
    let job = s.get_json(JOBS, Some(NS), &name).expect("job");
    assert_eq!(
        job["metadata"]["ownerReferences"][0]["kind"],
        "BackupSchedule"
    );
    assert_eq!(job["metadata"]["labels"]["palisade.dev/run-kind"], "backup");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"][0], "backup");
    assert_eq!(container["args"][1], "run");
    assert_eq!(
        container["terminationMessagePolicy"],
        "FallbackToLogsOnError"
    );

    // A resync and a restart in the same minute do not start it again.
    c.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.stop().await;
    let c = Controller::start(&s, clock.clone());
    c.resync();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(jobs_of(&s, "nightly").len(), 1);
    assert_eq!(events_with_reason(&s, "BackupStarted").len(), 1);
    c.stop().await;
}

#[tokio::test]
async fn only_the_jobs_own_pod_reports_its_result() {
    let (s, clock, c) = start_schedule("orders", json!({}));
    let (due, name) = start_next_run(&s, &c, &clock, "orders").await;
    let uid = job_uid(&s, &name);
    // Anyone who can create Pods can copy the run's labels, and report later than the
    // real Pod; without the Job's controller reference it is not heard.
    let later = Timestamp::from_second(due.as_second() + 60).expect("time");
    for (pod, uid) in [("impostor", None), ("impostor-2", Some("not-the-job-uid"))] {
        pod_terminated(&s, &name, pod, uid, true, &run_result("snap-forged"), later);
    }
    pod_terminated(
        &s,
        &name,
        &format!("{name}-abcde"),
        Some(&uid),
        true,
        &run_result("snap-real"),
        due,
    );
    finish_job(&s, &name, true, due);
    wait(&s, "lastSuccessfulBackup", |s| {
        status(s, "orders")["lastSuccessfulBackup"]["id"] == "snap-real"
    })
    .await;
    c.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&s, "orders")["lastSuccessfulBackup"]["id"],
        "snap-real"
    );
    c.stop().await;
}

/// With encryption, a run's result counts only when signed with the schedule's key
/// and naming its own run: an unsigned "ok", a forged MAC and a genuine result
/// replayed from another run are all refused (`BackupFailed`, reason Unauthenticated).
#[tokio::test]
async fn results_must_be_signed_with_the_schedules_key() {
    use palisade::backup::format::EncryptionKey;
    use palisade::backup::result::sign_line;
    let s = setup();
    let material = "a-tenant-rotated-random-secret-value";
    s.put_json(
        "secrets",
        json!({"metadata": {"name": "bk", "namespace": NS},
               "stringData": {"key": material}}),
    )
    .expect("key secret");
    let key = EncryptionKey::new(material.as_bytes().to_vec(), Some("v1".into())).expect("key");
    let clock = clock_now();
    create_schedule(
        &s,
        "orders",
        json!({"encryption": {"keySecretRef": {"name": "bk", "key": "key"}, "keyId": "v1"}}),
    );
    let c = Controller::start(&s, clock.clone());
    let signed = |id: &str, run: &str| {
        let line = run_result(id).replacen('{', &format!("{{\"run\":\"{run}\","), 1);
        sign_line(&line, &key)
    };
    let forged_mac = |run: &str| {
        let mut v: Value = serde_json::from_str(&signed("snap-forged", run)).expect("json");
        v["mac"] = json!("00".repeat(32));
        v.to_string()
    };
    for attempt in ["unsigned", "forged MAC", "replayed"] {
        let (due, name) = start_next_run(&s, &c, &clock, "orders").await;
        let line = match attempt {
            "unsigned" => run_result("snap-unsigned"),
            "forged MAC" => forged_mac(&name),
            _ => signed("snap-replayed", "orders-1"),
        };
        finish(&s, &name, true, &line, due);
        wait(&s, "refused result", |s| {
            status(s, "orders")["lastBackupJob"] == name.as_str()
        })
        .await;
        let c = cond(&s, "orders", "LastBackupSucceeded");
        assert_eq!(c["status"], "False", "{c}");
        assert_eq!(c["reason"], "BackupFailed", "{c}");
        assert!(
            c["message"]
                .as_str()
                .unwrap_or("")
                .contains("(Unauthenticated)"),
            "{c}"
        );
        assert!(status(&s, "orders")["lastSuccessfulBackup"].is_null());
    }
    let (due, name) = start_next_run(&s, &c, &clock, "orders").await;
    finish(&s, &name, true, &signed("snap-genuine", &name), due);
    wait(&s, "genuine result", |s| {
        status(s, "orders")["lastSuccessfulBackup"]["id"] == "snap-genuine"
    })
    .await;
    assert_eq!(cond(&s, "orders", "LastBackupSucceeded")["status"], "True");
    c.stop().await;
}

#[tokio::test]
async fn completed_job_result_updates_status() {
    let (s, clock, c) = ready_schedule("orders", json!({})).await;
    assert_eq!(
        cond(&s, "orders", "LastBackupSucceeded")["reason"],
        "NoRunYet"
    );
    let (due, name) = start_next_run(&s, &c, &clock, "orders").await;

    finish(&s, &name, true, &run_result("snap-1"), due);
    wait(&s, "lastSuccessfulBackup", |s| {
        status(s, "orders")["lastSuccessfulBackup"]["id"] == "snap-1"
    })
    .await;
    let st = status(&s, "orders");
    assert_eq!(st["lastSuccessfulBackup"]["bytes"], 4096);
    assert_eq!(st["lastSuccessfulBackup"]["sha256"], "ab12");
    assert_eq!(st["snapshotCount"], 1);
    assert_eq!(st["consecutiveFailures"], 0);
    assert_eq!(cond(&s, "orders", "LastBackupSucceeded")["status"], "True");
    assert!(
        cond(&s, "orders", "LastBackupSucceeded")["message"]
            .as_str()
            .expect("message")
            .contains("snap-1")
    );
    wait(&s, "event", |s| {
        events_with_reason(s, "BackupSucceeded").len() == 1
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn failed_job_sets_the_failure_condition() {
    let (s, clock, c) = start_schedule("flaky", json!({}));
    let (due, name) = start_next_run(&s, &c, &clock, "flaky").await;
    finish(
        &s,
        &name,
        false,
        r#"{"op":"run","ok":false,"reason":"DumpFailed","error":"pg_dump: connection refused"}"#,
        due,
    );
    wait(&s, "failure condition", |s| {
        cond(s, "flaky", "LastBackupSucceeded")["status"] == "False"
    })
    .await;
    let c_ = cond(&s, "flaky", "LastBackupSucceeded");
    assert_eq!(c_["reason"], "BackupFailed");
    let msg = c_["message"].as_str().expect("message");
    assert!(
        msg.contains("DumpFailed") && msg.contains("connection refused"),
        "{msg}"
    );
    assert!(msg.contains("kubectl logs"), "{msg}");
    assert_eq!(status(&s, "flaky")["consecutiveFailures"], 1);
    assert_eq!(cond(&s, "flaky", "Ready")["reason"], "BackupFailing");
    wait(&s, "event", |s| {
        !events_with_reason(s, "BackupFailed").is_empty()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn forbid_skips_while_a_run_is_active() {
    let (s, clock, c) = start_schedule("busy", json!({"schedule": "*/5 * * * *"}));
    let first = next_due(&clock, "*/5 * * * *");
    let first_name = start_due_run(&s, &c, &clock, "busy", first).await;

    // Next slot while the first still runs: skipped, and said so.
    let second = Timestamp::from_second(first.as_second() + 300).expect("t");
    set_clock(&clock, second);
    c.resync();
    wait(&s, "Ready note", |s| {
        cond(s, "busy", "Ready")["message"]
            .as_str()
            .is_some_and(|m| m.contains("still running"))
    })
    .await;
    assert_eq!(jobs_of(&s, "busy").len(), 1);

    // When it finishes, the waiting run starts (no startingDeadlineSeconds).
    finish(&s, &first_name, true, &run_result("snap-a"), second);
    run_job(&s, "busy", second).await;
    assert_eq!(jobs_of(&s, "busy").len(), 2);
    c.stop().await;
}

#[tokio::test]
async fn manual_annotations_trigger_one_run_and_are_cleared() {
    let (s, _clock, c) =
        ready_schedule("manual", json!({"restoreTest": {"schedule": "0 4 * * 0"}})).await;
    let mut bs = s.get_json(BS, Some(NS), "manual").expect("bs");
    bs["metadata"]["annotations"] =
        json!({"palisade.dev/run-now": "true", "palisade.dev/verify-now": "true"});
    s.put_json(BS, bs).expect("annotate");
    wait(&s, "two manual runs", |s| jobs_of(s, "manual").len() == 2).await;
    wait(&s, "annotations cleared", |s| {
        s.get_json(BS, Some(NS), "manual").is_some_and(|b| {
            b["metadata"]["annotations"].as_object().is_none_or(|a| {
                !a.contains_key("palisade.dev/run-now")
                    && !a.contains_key("palisade.dev/verify-now")
            })
        })
    })
    .await;
    let jobs = jobs_of(&s, "manual");
    let kinds: Vec<&str> = jobs
        .iter()
        .map(|j| {
            j["metadata"]["labels"]["palisade.dev/run-kind"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    assert!(
        kinds.contains(&"backup") && kinds.contains(&"verify"),
        "{kinds:?}"
    );
    for j in &jobs {
        assert_eq!(
            j["metadata"]["annotations"]["palisade.dev/run-trigger"],
            "manual"
        );
    }
    let verify = jobs
        .iter()
        .find(|j| j["metadata"]["labels"]["palisade.dev/run-kind"] == "verify")
        .expect("verify job");
    assert!(
        verify["metadata"]["name"]
            .as_str()
            .expect("name")
            .starts_with("manual-verify-")
    );
    assert_eq!(
        verify["spec"]["template"]["spec"]["containers"][0]["args"][1],
        "verify"
    );
    // Another reconcile does not start more.
    c.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs_of(&s, "manual").len(), 2);
    c.stop().await;
}

#[tokio::test]
async fn history_limits_delete_old_finished_jobs() {
    let (s, clock, c) = ready_schedule(
        "hist",
        json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}),
    )
    .await;
    let mut names = Vec::new();
    for i in 0..3 {
        clock.advance(Duration::from_secs(120));
        let mut bs = s.get_json(BS, Some(NS), "hist").expect("bs");
        bs["metadata"]["annotations"] = json!({"palisade.dev/run-now": "x"});
        s.put_json(BS, bs).expect("annotate");
        let name = run_job(&s, "hist", clock.now()).await;
        // Wait for the annotation to be cleared before the next one.
        wait(&s, "cleared", |s| {
            s.get_json(BS, Some(NS), "hist").is_some_and(|b| {
                b["metadata"]["annotations"]
                    .get("palisade.dev/run-now")
                    .is_none()
            })
        })
        .await;
        let ok = i != 1;
        let msg = if ok {
            run_result(&format!("snap-{i}"))
        } else {
            r#"{"op":"run","ok":false,"reason":"UploadFailed","error":"disk full"}"#.to_string()
        };
        finish(&s, &name, ok, &msg, clock.now());
        let n = name.clone();
        wait(&s, "folded", |s| {
            status(s, "hist")["lastBackupJob"] == json!(n)
        })
        .await;
        names.push(name);
    }
    // Kept: the newest success (2) and the newest failure (1); gone: 0.
    wait(&s, "history pruned", |s| {
        s.get_json(JOBS, Some(NS), &names[0]).is_none()
    })
    .await;
    assert!(s.get_json(JOBS, Some(NS), &names[1]).is_some());
    assert!(s.get_json(JOBS, Some(NS), &names[2]).is_some());
    assert_eq!(status(&s, "hist")["lastSuccessfulBackup"]["id"], "snap-2");
    assert_eq!(status(&s, "hist")["consecutiveFailures"], 0);
    c.stop().await;
}

#[tokio::test]
async fn bad_input_has_specific_reasons_and_keeps_state() {
    let s = setup();
    let clock = clock_now();
    create_schedule(&s, "badcron", json!({"schedule": "every night"}));
    create_schedule(&s, "badtz", json!({"timeZone": "Mars/Olympus"}));
    create_schedule(
        &s,
        "nosecret",
        json!({"postgres": {"host": "db", "database": "app", "user": "u",
                            "passwordSecretRef": {"name": "missing", "key": "password"}}}),
    );
    create_schedule(
        &s,
        "nokey",
        json!({"postgres": {"host": "db", "database": "app", "user": "u",
                            "passwordSecretRef": {"name": "db", "key": "pw"}}}),
    );
    create_schedule(
        &s,
        "first",
        json!({"destination": {"path": "/backups/shared"}}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_schedule(
        &s,
        "second",
        json!({"destination": {"path": "/backups/shared/"}}),
    );
    let c = Controller::start(&s, clock.clone());
    for (name, reason) in [
        ("badcron", "InvalidSchedule"),
        ("badtz", "InvalidTimeZone"),
        ("nosecret", "SecretNotFound"),
        ("nokey", "SecretKeyMissing"),
        ("second", "DestinationConflict"),
    ] {
        wait(&s, reason, |s| cond(s, name, "Ready")["reason"] == reason).await;
        assert_eq!(cond(&s, name, "Ready")["status"], "False");
    }
    assert_eq!(cond(&s, "first", "Ready")["status"], "True");
    assert!(
        cond(&s, "second", "Ready")["message"]
            .as_str()
            .expect("message")
            .contains("team-a/first")
    );
    let msg = cond(&s, "nokey", "Ready")["message"].to_string();
    assert!(
        !msg.contains("c2VjcmV0") && !msg.contains("secret\""),
        "{msg}"
    );

    // No runs start for invalid schedules, even when due.
    set_clock(&clock, next_due(&clock, "0 3 * * *"));
    c.resync();
    s.wait_for_json(
        JOBS,
        Some(NS),
        &format!("first-{}", clock.now().as_second() / 60),
        WAIT,
        |_| true,
    )
    .await
    .expect("valid schedule runs");
    for name in ["badcron", "badtz", "nosecret", "nokey", "second"] {
        assert!(jobs_of(&s, name).is_empty(), "{name}");
    }
    c.stop().await;
}

#[tokio::test]
async fn missed_deadline_is_skipped_and_reported_and_suspend_clears_next_time() {
    let (s, clock, c) = ready_schedule(
        "late",
        json!({"schedule": "*/10 * * * *", "startingDeadlineSeconds": 60}),
    )
    .await;
    // Downtime: three slots pass, the newest is 5 minutes old (> 60 s).
    let first = next_due(&clock, "*/10 * * * *");
    set_clock(
        &clock,
        Timestamp::from_second(first.as_second() + 1500).expect("t"),
    );
    c.resync();
    wait(&s, "missed", |s| {
        !status(s, "late")["lastMissedScheduleTime"].is_null()
    })
    .await;
    assert!(jobs_of(&s, "late").is_empty());
    let missed = events_with_reason(&s, "MissedSchedule");
    assert_eq!(missed.len(), 1);
    let note = missed[0]["note"].as_str().unwrap_or_default();
    assert!(note.contains("2 older missed run(s)"), "{note}");
    // Resyncs do not report it again; the next slot runs on time.
    c.resync();
    let next = Timestamp::from_second(first.as_second() + 1800).expect("t");
    set_clock(&clock, next);
    c.resync();
    s.wait_for_json(
        JOBS,
        Some(NS),
        &format!("late-{}", next.as_second() / 60),
        WAIT,
        |_| true,
    )
    .await
    .expect("next run");
    assert_eq!(events_with_reason(&s, "MissedSchedule").len(), 1);

    // Suspend: Ready says so and nextScheduleTime is removed.
    let mut bs = s.get_json(BS, Some(NS), "late").expect("bs");
    bs["spec"]["suspend"] = json!(true);
    s.put_json(BS, bs).expect("suspend");
    wait(&s, "suspended", |s| {
        cond(s, "late", "Ready")["reason"] == "Suspended"
            && status(s, "late")["nextScheduleTime"].is_null()
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn replace_stops_the_active_run() {
    let (s, clock, c) = start_schedule(
        "repl",
        json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Replace"}),
    );
    let first = next_due(&clock, "*/5 * * * *");
    let first_name = start_due_run(&s, &c, &clock, "repl", first).await;
    let second = Timestamp::from_second(first.as_second() + 300).expect("t");
    start_due_run(&s, &c, &clock, "repl", second).await;
    s.wait_for_absent(JOBS, Some(NS), &first_name, WAIT)
        .await
        .expect("first job deleted");
    assert_eq!(events_with_reason(&s, "RunReplaced").len(), 1);
    c.stop().await;
}

#[tokio::test]
async fn restore_test_results_update_status() {
    let (s, clock, c) = ready_schedule("rt", json!({"restoreTest": {"schedule": "0 4 * * 0", "checks": [{"name": "orders", "sql": "select true"}]}})).await;
    assert_eq!(
        cond(&s, "rt", "LastRestoreTestSucceeded")["reason"],
        "NoRunYet"
    );
    let due = next_due(&clock, "0 4 * * 0");
    let name = start_due_run(&s, &c, &clock, "rt-verify", due).await;
    assert_eq!(
        status(&s, "rt")["lastRestoreTestScheduleTime"],
        json!(due.to_string())
    );
    finish(
        &s,
        &name,
        false,
        r#"{"op":"verify","ok":false,"snapshot":"snap-9","time":"2026-03-01T04:00:09Z","result":"Failed","durationSeconds":9.0,"checks":[{"name":"orders","passed":true},{"name":"rowCounts","passed":false,"message":"shop.orders: 10 rows, expected 11"}]}"#,
        due,
    );
    wait(&s, "restore test failure", |s| {
        cond(s, "rt", "LastRestoreTestSucceeded")["status"] == "False"
    })
    .await;
    let st = status(&s, "rt");
    assert_eq!(st["lastRestoreTest"]["result"], "Failed");
    assert_eq!(st["lastRestoreTest"]["snapshot"], "snap-9");
    assert_eq!(st["lastRestoreTest"]["checks"][1]["name"], "rowCounts");
    let msg = cond(&s, "rt", "LastRestoreTestSucceeded")["message"].to_string();
    assert!(
        msg.contains("rowCounts") && msg.contains("expected 11"),
        "{msg}"
    );
    assert_eq!(cond(&s, "rt", "Ready")["reason"], "RestoreTestFailing");
    // A failed restore test is not a failed backup.
    assert_eq!(st["consecutiveFailures"], 0);
    wait(&s, "event", |s| {
        !events_with_reason(s, "RestoreTestFailed").is_empty()
    })
    .await;
    c.stop().await;
}

const RUNS: &str = "backupruns.palisade.dev";

fn create_run_request(s: &FakeApiServer, name: &str, schedule: &str, type_: &str) {
    s.put_json(
        RUNS,
        json!({
            "apiVersion": "palisade.dev/v1alpha1",
            "kind": "BackupRun",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"scheduleName": schedule, "type": type_},
        }),
    )
    .expect("backup run");
}

fn run_status(s: &FakeApiServer, name: &str) -> Value {
    s.get_json(RUNS, Some(NS), name)
        .and_then(|r| r.get("status").cloned())
        .unwrap_or(Value::Null)
}

/// Issue #15: a BackupRun (all a `backups:run` role may create) starts one run of
/// its schedule, exactly like a manual trigger, and gets the outcome in its status.
#[tokio::test]
async fn backup_run_requests_start_a_run_and_record_its_outcome() {
    let (s, clock, c) = ready_schedule("req", json!({})).await;

    create_run_request(&s, "req-now", "req", "Backup");
    wait(&s, "accepted", |s| {
        run_status(s, "req-now")["phase"] == "Running"
    })
    .await;
    let job = run_status(&s, "req-now")["jobName"]
        .as_str()
        .expect("jobName")
        .to_string();
    let j = s
        .wait_for_json(JOBS, Some(NS), &job, WAIT, |_| true)
        .await
        .expect("job");
    assert_eq!(
        j["metadata"]["annotations"]["palisade.dev/run-trigger"],
        "manual"
    );
    assert_eq!(j["metadata"]["labels"]["palisade.dev/run-kind"], "backup");
    let pod = &j["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "default");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let bs_uid = s
        .get_json(BS, Some(NS), "req")
        .and_then(|b| b["metadata"]["uid"].as_str().map(str::to_string))
        .expect("uid");
    let r = s.get_json(RUNS, Some(NS), "req-now").expect("run");
    assert!(
        r["metadata"]["ownerReferences"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["uid"] == json!(bs_uid))),
        "the run goes with its schedule: {r}"
    );
    // Reconciling again starts nothing more.
    c.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs_of(&s, "req").len(), 1);

    finish(&s, &job, true, &run_result("snap-req"), clock.now());
    wait(&s, "succeeded", |s| {
        run_status(s, "req-now")["phase"] == "Succeeded"
    })
    .await;
    let st = run_status(&s, "req-now");
    assert!(st["completionTime"].is_string());
    assert_eq!(st["conditions"][0]["type"], "Complete");
    assert_eq!(st["conditions"][0]["status"], "True");
    wait(&s, "folded", |s| {
        status(s, "req")["lastSuccessfulBackup"]["id"] == "snap-req"
    })
    .await;
    assert!(!events_with_reason(&s, "RunStarted").is_empty());
    c.stop().await;
}

/// A RestoreTest request for a schedule without one fails with a reason; finished
/// requests beyond the history are deleted.
#[tokio::test]
async fn backup_run_refusals_and_history() {
    let (s, clock, c) = ready_schedule("norestore", json!({})).await;
    for i in 0..7 {
        create_run_request(&s, &format!("verify-{i}"), "norestore", "RestoreTest");
        let name = format!("verify-{i}");
        wait(&s, "refused", |s| run_status(s, &name)["phase"] == "Failed").await;
        clock.advance(Duration::from_secs(1));
    }
    let st = run_status(&s, "verify-6");
    assert_eq!(st["conditions"][0]["reason"], "RestoreTestNotConfigured");
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.restoreTest")),
        "{st}"
    );
    assert!(jobs_of(&s, "norestore").is_empty());
    assert!(!events_with_reason(&s, "RestoreTestNotConfigured").is_empty());
    c.resync();
    wait(&s, "history of 5", |s| {
        s.list_json_in(RUNS, Some(NS)).len() == 5
    })
    .await;
    assert!(s.get_json(RUNS, Some(NS), "verify-6").is_some());
    c.stop().await;
}

/// Issue #15: a schedule that still names a Job image or ServiceAccount (stored
/// before the fields were removed) runs nothing and says which field to remove.
#[tokio::test]
async fn removed_job_template_fields_are_refused_by_name() {
    let (s, _clock, c) = start_schedule(
        "oldtpl",
        json!({"jobTemplate": {"image": "evil/image:1", "backoffLimit": 1}}),
    );
    wait(&s, "RemovedField", |s| {
        cond(s, "oldtpl", "Ready")["reason"] == "RemovedField"
    })
    .await;
    let msg = cond(&s, "oldtpl", "Ready")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("spec.jobTemplate.image"), "{msg}");
    assert!(!events_with_reason(&s, "InvalidSpec").is_empty());
    // A run request waits, with the reason.
    create_run_request(&s, "oldtpl-now", "oldtpl", "Backup");
    wait(&s, "pending", |s| {
        run_status(s, "oldtpl-now")["phase"] == "Pending"
    })
    .await;
    assert!(jobs_of(&s, "oldtpl").is_empty());
    c.stop().await;
}

fn job_creates(r: &RequestRecord) -> bool {
    r.resource == "jobs" && r.verb == Verb::Create
}

/// Issue #16: a step that fails reaches status. Creating the due run's Job is
/// refused (403), then fails (500): each time `Ready` turns False with the
/// step's reason and the API's answer, with a Warning Event (the second counted
/// as a repeat of the first in its events.k8s.io series); nothing is recorded
/// as started, so once the API works the retry starts the run and `Ready` is
/// True again.
#[tokio::test]
async fn a_failing_job_create_reaches_status_and_recovers() {
    let (s, clock, c) = ready_schedule("guarded", json!({})).await;
    let forbidden = s.fail_when(403, None, job_creates);
    let due = next_due(&clock, "0 3 * * *");
    set_clock(&clock, due);
    c.resync();
    let says = |s: &FakeApiServer, text: &str| {
        let r = cond(s, "guarded", "Ready");
        r["status"] == "False"
            && r["reason"] == "JobCreateFailed"
            && r["message"].as_str().is_some_and(|m| m.contains(text))
    };
    wait(&s, "Ready=False (Forbidden)", |s| says(s, "(Forbidden)")).await;
    let ready = cond(&s, "guarded", "Ready");
    let job = format!("guarded-{}", due.as_second() / 60);
    assert!(
        ready["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("starting backup Job {job} failed"))),
        "{ready}"
    );
    // RBAC needs a human: kstatus Stalled.
    assert_eq!(cond(&s, "guarded", "Stalled")["status"], "True");
    let warned = |s: &FakeApiServer, text: &str| {
        events_with_reason(s, "JobCreateFailed")
            .iter()
            .any(|e| e["type"] == "Warning" && e["note"].as_str().is_some_and(|n| n.contains(text)))
    };
    wait(&s, "Warning (Forbidden)", |s| warned(s, "(Forbidden)")).await;
    assert!(jobs_of(&s, "guarded").is_empty());
    assert!(status(&s, "guarded")["lastScheduleTime"].is_null());

    // The retry fails differently: said so, once more.
    s.clear_fault(forbidden);
    let broken = s.fail_when(500, None, job_creates);
    wait(&s, "Ready=False (ServerError)", |s| {
        says(s, "(ServerError)")
    })
    .await;
    assert_eq!(cond(&s, "guarded", "Reconciling")["status"], "True");
    assert!(cond(&s, "guarded", "Stalled").is_null());
    // A different failure is a new Warning with its own note (a series only
    // ever counts the same note: #31), and the first one is still there.
    wait(&s, "Warning (ServerError)", |s| warned(s, "(ServerError)")).await;
    assert!(warned(&s, "(Forbidden)"));

    // Fixed: the run starts and Ready is True again.
    s.clear_fault(broken);
    s.wait_for_json(JOBS, Some(NS), &job, WAIT, |_| true)
        .await
        .expect("the run starts once the API works");
    wait(&s, "Ready again", |s| {
        cond(s, "guarded", "Ready")["reason"] == "Scheduled"
            && status(s, "guarded")["lastScheduleTime"] == json!(due.to_string())
    })
    .await;
    assert!(cond(&s, "guarded", "Reconciling").is_null());
    assert_eq!(events_with_reason(&s, "BackupStarted").len(), 1);
    c.stop().await;
}

/// Issue #16: a child the schedule owns that cannot be applied (the run egress
/// NetworkPolicy) reaches status the same way, and recovers.
#[tokio::test]
async fn a_failing_egress_policy_reaches_status_and_recovers() {
    let s = setup();
    let clock = clock_now();
    let fault = s.fail_when(500, None, |r| {
        r.resource == "networkpolicies" && r.is_write()
    });
    create_schedule(&s, "walled", json!({}));
    let c = Controller::start(&s, clock.clone());
    wait(&s, "Ready=False", |s| {
        cond(s, "walled", "Ready")["reason"] == "NetworkPolicyFailed"
    })
    .await;
    assert_eq!(cond(&s, "walled", "Ready")["status"], "False");
    wait(&s, "Warning", |s| {
        events_with_reason(s, "NetworkPolicyFailed")
            .iter()
            .any(|e| e["type"] == "Warning")
    })
    .await;
    s.clear_fault(fault);
    wait(&s, "Ready", |s| {
        cond(s, "walled", "Ready")["status"] == "True"
    })
    .await;
    assert!(
        s.list_json_in("networkpolicies", Some(NS))
            .iter()
            .any(|p| p["metadata"]["labels"]["palisade.dev/backup-schedule"] == "walled"),
        "the egress policy is applied"
    );
    c.stop().await;
}
