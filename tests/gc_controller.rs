//! TTL garbage collection through the real Tenant controller on the in-process
//! API server, with an injected clock. Objects get their creationTimestamp from
//! the fake server's wall clock; the tests move the injected clock relative to
//! those timestamps.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use palisade_testkit::{FakeApiServer, ResourceType, Verb};
use serde_json::{Value, json};
use support::create_tenant as create;
use support::*;

/// A Tenant `name` with one namespace `<name>-a` and the
/// `garbageCollection` section `gc` (YAML, indented as its own document).
fn gc_tenant(name: &str, gc: &str) -> String {
    let gc: String = gc.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  namespaces: [{{name: {name}-a}}]\n  garbageCollection:\n{gc}"
    )
}

fn put(server: &FakeApiServer, resource: &str, ns: &str, name: &str, meta: Value) -> Value {
    let mut obj = json!({"metadata": {"name": name, "namespace": ns}});
    if let (Some(m), Some(extra)) = (obj["metadata"].as_object_mut(), meta.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    server.put_json(resource, obj).expect("put object")
}

fn created(obj: &Value) -> Timestamp {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .expect("creationTimestamp")
        .parse()
        .expect("timestamp")
}

fn set(clock: &ManualClock, t: Timestamp) {
    *clock.0.lock().expect("clock") = t;
}

fn at(t: Timestamp, secs: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(secs))
        .expect("time")
}

fn exists(server: &FakeApiServer, resource: &str, ns: &str, name: &str) -> bool {
    server.get_json(resource, Some(ns), name).is_some()
}

/// Resyncs and waits for a reconcile to run and settle.
async fn resync_and_settle(server: &FakeApiServer, running: &Running) {
    running.resync_and_wait(server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn gone(server: &FakeApiServer, resource: &str, ns: &str, name: &str) {
    let r = server.wait_for_absent(resource, Some(ns), name, WAIT).await;
    assert!(
        r.is_ok(),
        "{ns}/{name} was never collected; tenants: {:?}",
        server
            .list_json("tenants.palisade.dev")
            .iter()
            .map(|t| t["status"].clone())
            .collect::<Vec<_>>()
    );
}

fn gc_status(server: &FakeApiServer, tenant: &str) -> Value {
    server
        .get_json("tenants.palisade.dev", None, tenant)
        .and_then(|t| t.pointer("/status/garbageCollection").cloned())
        .unwrap_or(Value::Null)
}

/// A frozen clock a little ahead of the server's: creation timestamps have
/// whole seconds, so an object created a few hundred milliseconds after the
/// clock froze would otherwise lie in the clock's future (and a "due at
/// creation" object would never be due).
fn now_clock() -> Arc<ManualClock> {
    ManualClock::new(at(Timestamp::now(), 3))
}

const TENANT: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: gc}
spec:
  namespaces: [{name: gc-a}, {name: gc-b}]
  garbageCollection:
    maxDeletionsPerMinute: 100
    rules:
      - {name: old-runs, kinds: [ConfigMap], selector: {matchLabels: {kind: run}}, maxAge: 1h}
      - {name: last-reports, kinds: [configmaps], selector: {matchLabels: {kind: report}}, keepLast: 2}
"#;

const OTHER: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: other}
spec:
  namespaces: [{name: other-a}]
"#;

#[tokio::test]
async fn expiry_at_the_exact_time_keep_last_annotations_and_safety() {
    let server = server();
    let clock = now_clock();
    let running = start(&server, clock.clone());
    create(&server, TENANT).await;
    create(&server, OTHER).await;
    wait_ready(&server, "gc").await;
    wait_ready(&server, "other").await;
    server
        .put_json("namespaces", json!({"metadata": {"name": "loose"}}))
        .expect("ns");

    let run = json!({"labels": {"kind": "run"}});
    let run1 = put(&server, "configmaps", "gc-a", "run-1", run.clone());
    let kept = put(
        &server,
        "configmaps",
        "gc-a",
        "run-kept",
        json!({"labels": {"kind": "run"}, "annotations": {"palisade.dev/keep": "true"}}),
    );
    put(&server, "configmaps", "other-a", "run-theirs", run.clone());
    put(&server, "configmaps", "loose", "run-loose", run.clone());
    put(&server, "configmaps", "gc-a", "config", json!({}));
    let ttl = put(
        &server,
        "configmaps",
        "gc-b",
        "ttl",
        json!({"annotations": {"palisade.dev/ttl": "30m"}}),
    );
    let expires_at = at(palisade::controller::Clock::now(clock.as_ref()), 45 * 60);
    put(
        &server,
        "configmaps",
        "gc-b",
        "expires",
        json!({"annotations": {"palisade.dev/expires": expires_at.to_string()}}),
    );
    let bad = put(
        &server,
        "configmaps",
        "gc-b",
        "bad",
        json!({"labels": {"kind": "run"}, "annotations": {"palisade.dev/ttl": "soon"}}),
    );
    for r in ["r1", "r2", "r3", "r4"] {
        put(
            &server,
            "configmaps",
            "gc-a",
            r,
            json!({"labels": {"kind": "report"}}),
        );
    }

    // keepLast: 2 with no maxAge: the two oldest go at once, the newest two stay.
    gone(&server, "configmaps", "gc-a", "r1").await;
    gone(&server, "configmaps", "gc-a", "r2").await;
    assert!(exists(&server, "configmaps", "gc-a", "r3"));
    assert!(exists(&server, "configmaps", "gc-a", "r4"));

    // An invalid annotation: an Event on the object, never a deletion.
    server
        .wait_until(WAIT, |s| {
            !events_with_reason(s, "InvalidAnnotation").is_empty()
        })
        .await
        .expect("InvalidAnnotation event");
    let ev = &events_with_reason(&server, "InvalidAnnotation")[0];
    assert_eq!(ev["regarding"]["name"], "bad");
    assert_eq!(ev["regarding"]["namespace"], "gc-b");

    // palisade.dev/ttl: not one second early, exactly at the deadline.
    let ttl_deadline = at(created(&ttl), 30 * 60);
    set(&clock, at(ttl_deadline, -1));
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "configmaps", "gc-b", "ttl"));
    assert_eq!(
        gc_status(&server, "gc")["nextExpiry"],
        json!(ttl_deadline.to_string()),
        "status: {}",
        gc_status(&server, "gc")
    );
    set(&clock, ttl_deadline);
    resync_and_settle(&server, &running).await;
    gone(&server, "configmaps", "gc-b", "ttl").await;

    // palisade.dev/expires.
    set(&clock, at(expires_at, -1));
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "configmaps", "gc-b", "expires"));
    set(&clock, expires_at);
    resync_and_settle(&server, &running).await;
    gone(&server, "configmaps", "gc-b", "expires").await;

    // A rule's maxAge.
    let run_deadline = at(created(&run1), 3600);
    set(&clock, at(run_deadline, -1));
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "configmaps", "gc-a", "run-1"));
    set(&clock, run_deadline);
    resync_and_settle(&server, &running).await;
    gone(&server, "configmaps", "gc-a", "run-1").await;
    // An invalid palisade.dev/ttl counts as absent: the rule still applies
    // (issue #30: a tenant-written annotation never exempts an object).
    set(&clock, at(created(&bad), 3600));
    resync_and_settle(&server, &running).await;
    gone(&server, "configmaps", "gc-b", "bad").await;
    // palisade.dev/keep is a tenant-written annotation too: the rule applies.
    set(&clock, at(created(&kept), 3600));
    resync_and_settle(&server, &running).await;
    gone(&server, "configmaps", "gc-a", "run-kept").await;

    // Survivors: unmatched, other tenants' and foreign namespaces.
    set(&clock, at(run_deadline, 30 * 86_400));
    resync_and_settle(&server, &running).await;
    for (ns, name) in [
        ("gc-a", "config"),
        ("gc-a", "r3"),
        ("gc-a", "r4"),
        ("other-a", "run-theirs"),
        ("loose", "run-loose"),
    ] {
        assert!(
            exists(&server, "configmaps", ns, name),
            "{ns}/{name} must survive"
        );
    }
    // Palisade's own managed objects in the namespaces survive too.
    assert!(
        !server
            .list_json_in("networkpolicies", Some("gc-a"))
            .is_empty(),
        "managed objects untouched"
    );

    // Status and Events: one Event per deletion, naming the object and the rule.
    let status = gc_status(&server, "gc");
    assert_eq!(status["deleted"], 7, "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    let deleted = events_with_reason(&server, "ObjectDeleted");
    assert_eq!(deleted.len(), 7, "{deleted:?}");
    let notes: Vec<String> = deleted
        .iter()
        .map(|e| e["note"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("gc-a/run-1") && n.contains("rule old-runs")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("gc-a/r1") && n.contains("rule last-reports")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("gc-b/ttl") && n.contains("palisade.dev/ttl")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("gc-b/bad") && n.contains("rule old-runs")),
        "{notes:?}"
    );
    wait_condition(&server, "gc", "GarbageCollected", "True", Some("Collected")).await;

    // Nothing due: once converged, a resync costs no request at all (caches,
    // no polling, no status write).
    resync_and_settle(&server, &running).await;
    let mark = server.mark();
    resync_and_settle(&server, &running).await;
    let traffic = server.log_since(mark);
    assert!(
        traffic.is_empty(),
        "requests while nothing is due: {:?}",
        traffic
            .iter()
            .map(|r| format!("{} {}", r.verb.as_str(), r.path))
            .collect::<Vec<_>>()
    );
    running.stop().await;
}

#[tokio::test]
async fn dry_run_reports_and_deletes_nothing() {
    let server = server();
    let clock = now_clock();
    let tenant = gc_tenant(
        "dry",
        "dryRun: true\nrules: [{name: minute, kinds: [ConfigMap], selector: {matchLabels: {kind: run}}, maxAge: 1m}]\n",
    );
    let running = start_ready(&server, clock.clone(), &tenant).await;
    let a = put(
        &server,
        "configmaps",
        "dry-a",
        "a",
        json!({"labels": {"kind": "run"}}),
    );
    put(
        &server,
        "configmaps",
        "dry-a",
        "b",
        json!({"labels": {"kind": "run"}}),
    );
    set(&clock, at(created(&a), 3600));
    running.resync();
    wait_condition(&server, "dry", "GarbageCollected", "True", Some("DryRun")).await;
    server
        .wait_until(WAIT, |s| gc_status(s, "dry")["pending"] == 2)
        .await
        .expect("pending 2");
    server
        .wait_until(WAIT, |s| events_with_reason(s, "WouldDelete").len() == 2)
        .await
        .expect("two WouldDelete events");
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "configmaps", "dry-a", "a"));
    assert!(exists(&server, "configmaps", "dry-a", "b"));
    assert_eq!(gc_status(&server, "dry")["deleted"], 0);
    assert_eq!(
        events_with_reason(&server, "WouldDelete").len(),
        2,
        "reported once per object"
    );
    assert!(
        !server
            .log()
            .iter()
            .any(|r| r.verb == Verb::Delete && r.resource == "configmaps"),
        "dry run sent a delete"
    );
    running.stop().await;
}

#[tokio::test]
async fn an_object_recreated_with_the_same_name_survives() {
    let server = server();
    let clock = now_clock();
    let tenant = gc_tenant(
        "same",
        "rules: [{name: minute, kinds: [ConfigMap], selector: {matchLabels: {kind: run}}, maxAge: 1m}]\n",
    );
    let running = start_ready(&server, clock.clone(), &tenant).await;
    let old = put(
        &server,
        "configmaps",
        "same-a",
        "job-output",
        json!({"labels": {"kind": "run"}}),
    );
    let deadline = at(created(&old), 60);
    server
        .wait_until(WAIT, |s| {
            gc_status(s, "same")["nextExpiry"] == json!(deadline.to_string())
        })
        .await
        .expect("the GC cache saw the object");

    // Freeze the GC cache: watches of ConfigMaps fail from now on.
    let fault = server.fail_when(500, None, |r| {
        r.resource == "configmaps" && matches!(r.verb, Verb::Watch | Verb::List)
    });
    server.close_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .delete_direct("configmaps", Some("same-a"), "job-output")
        .expect("delete");
    let new = put(
        &server,
        "configmaps",
        "same-a",
        "job-output",
        json!({"labels": {"kind": "run"}}),
    );
    assert_ne!(new["metadata"]["uid"], old["metadata"]["uid"]);

    // The stale cache says the old object is due; the uid precondition saves the new one.
    set(&clock, deadline);
    let mark = server.mark();
    running.resync();
    server
        .wait_until(WAIT, |s| {
            s.log_since(mark)
                .iter()
                .any(|r| r.verb == Verb::Delete && r.resource == "configmaps")
        })
        .await
        .expect("a delete was attempted");
    let attempt: Vec<u16> = server
        .log_since(mark)
        .iter()
        .filter(|r| r.verb == Verb::Delete && r.resource == "configmaps")
        .map(|r| r.code)
        .collect();
    assert_eq!(attempt, vec![409], "uid precondition failed the delete");
    let survivor = server
        .get_json("configmaps", Some("same-a"), "job-output")
        .expect("the new object survives");
    assert_eq!(survivor["metadata"]["uid"], new["metadata"]["uid"]);
    assert!(events_with_reason(&server, "ObjectDeleted").is_empty());
    running.stop().await;
    server.clear_fault(fault);
}

/// A custom "run" kind, as CI systems define them.
fn run_kind() -> ResourceType {
    ResourceType::new("ci.example.com", "v1", "runs", "Run", true)
}

/// A tenant whose GC rule names the run kind.
const CI_TENANT: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: ci}
spec:
  namespaces: [{name: ci-a}]
  garbageCollection:
    rules: [{name: last-run, kinds: [Run.ci.example.com], keepLast: 1}]
"#;

#[tokio::test]
async fn custom_resources_are_collected_and_unknown_kinds_are_a_condition() {
    let server = server();
    server.register(run_kind());
    let clock = now_clock();
    // Not a default kind: the platform team allows it (Helm value
    // rbac.garbageCollectionKinds, which also grants Palisade delete on it).
    let mut settings = support::fast_settings();
    settings
        .gc_kinds
        .push(("ci.example.com".into(), "runs".into()));
    let running = support::start_with(&server, clock.clone(), settings);
    create(&server, CI_TENANT).await;
    wait_ready(&server, "ci").await;
    for (i, name) in ["run-a", "run-b", "run-c"].iter().enumerate() {
        let obj = json!({
            "apiVersion": "ci.example.com/v1", "kind": "Run",
            "metadata": {"name": name, "namespace": "ci-a", "labels": {"i": i.to_string()}},
            "spec": {"image": "busybox"},
        });
        server.put_json("runs.ci.example.com", obj).expect("run");
    }
    gone(&server, "runs.ci.example.com", "ci-a", "run-a").await;
    gone(&server, "runs.ci.example.com", "ci-a", "run-b").await;
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "runs.ci.example.com", "ci-a", "run-c"));
    assert!(
        running
            .ctx
            .gc
            .watched()
            .contains(&"ci.example.com/Run".to_string()),
        "{:?}",
        running.ctx.gc.watched()
    );

    // An unknown kind is a condition (and keeps the tenant from Ready), not a crash.
    create(
        &server,
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: typo}
spec:
  namespaces: [{name: typo-a}]
  garbageCollection:
    rules: [{name: r, kinds: [Runz.ci.example.com], maxAge: 1h}]
"#,
    )
    .await;
    let c = wait_condition(
        &server,
        "typo",
        "GarbageCollected",
        "False",
        Some("UnknownKind"),
    )
    .await;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Runz.ci.example.com"),
        "{c}"
    );
    wait_condition(&server, "typo", "Ready", "False", Some("UnknownKind")).await;
    running.stop().await;
}

#[tokio::test]
async fn the_rate_limit_leaves_the_rest_pending_until_the_window_frees() {
    let server = server();
    let clock = now_clock();
    let tenant = gc_tenant(
        "slow",
        "maxDeletionsPerMinute: 2\nrules: [{name: all, kinds: [ConfigMap], selector: {matchLabels: {kind: run}}, maxAge: 1s}]\n",
    );
    let running = start_ready(&server, clock.clone(), &tenant).await;
    let mut first = None;
    for i in 0..5 {
        let o = put(
            &server,
            "configmaps",
            "slow-a",
            &format!("c{i}"),
            json!({"labels": {"kind": "run"}}),
        );
        first.get_or_insert(created(&o));
    }
    let t0 = at(first.expect("created"), 10);
    set(&clock, t0);
    running.resync();
    wait_condition(
        &server,
        "slow",
        "GarbageCollected",
        "True",
        Some("RateLimited"),
    )
    .await;
    server
        .wait_until(WAIT, |s| gc_status(s, "slow")["pending"] == 3)
        .await
        .expect("3 pending");
    let runs = |s: &FakeApiServer| {
        s.list_json_in("configmaps", Some("slow-a"))
            .iter()
            .filter(|c| c["metadata"]["labels"]["kind"] == "run")
            .count()
    };
    assert_eq!(runs(&server), 3);
    set(&clock, at(t0, 60));
    running.resync();
    server
        .wait_until(WAIT, |s| gc_status(s, "slow")["pending"] == 1)
        .await
        .expect("1 pending");
    set(&clock, at(t0, 120));
    running.resync();
    server
        .wait_until(WAIT, |s| runs(s) == 0)
        .await
        .expect("all collected");
    wait_condition(
        &server,
        "slow",
        "GarbageCollected",
        "True",
        Some("Collected"),
    )
    .await;
    running.stop().await;
}

/// A kind outside the operator's allow-list is a condition naming the Helm
/// value, and nothing of it is watched or deleted.
#[tokio::test]
async fn kinds_outside_the_allow_list_are_refused() {
    let server = server();
    server.register(run_kind());
    let running = start(&server, now_clock());
    create(&server, CI_TENANT).await;
    let c = wait_condition(
        &server,
        "ci",
        "GarbageCollected",
        "False",
        Some("KindNotAllowed"),
    )
    .await;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rbac.garbageCollectionKinds"),
        "{c}"
    );
    for name in ["run-a", "run-b"] {
        let obj = json!({
            "apiVersion": "ci.example.com/v1", "kind": "Run",
            "metadata": {"name": name, "namespace": "ci-a"},
        });
        server.put_json("runs.ci.example.com", obj).expect("run");
    }
    resync_and_settle(&server, &running).await;
    assert!(exists(&server, "runs.ci.example.com", "ci-a", "run-a"));
    let watched = running.ctx.gc.watched();
    assert!(
        !watched.iter().any(|w| w.starts_with("ci.example.com/")),
        "{watched:?}"
    );
    running.stop().await;
}
