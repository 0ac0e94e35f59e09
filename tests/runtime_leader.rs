//! Leader election: electors and whole controller instances against one
//! in-process API server, with sub-second lease timings.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::controller::SystemClock;
use palisade::metrics::Metrics;
use palisade::runtime::admin::Health;
use palisade::runtime::leader::{Attempt, LeaderElector, LeaseSettings, LostLeadership};
use palisade::runtime::{self, RuntimeError, RuntimeSettings};
use palisade_testkit::FakeApiServer;
use serde_json::json;
use support::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_millis(300);
const RENEW_DEADLINE: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_millis(50);

fn lease(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: LEADER_LEASE.into(),
        namespace: "default".into(),
        identity: identity.into(),
        lease_duration: LEASE,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY,
    }
}

fn elector(server: &FakeApiServer, identity: &str) -> Arc<LeaderElector> {
    Arc::new(LeaderElector::new(
        server.client(),
        lease(identity),
        Arc::new(SystemClock),
    ))
}

fn holder(server: &FakeApiServer) -> Option<String> {
    leader_lease(server).and_then(|l| {
        l.pointer("/spec/holderIdentity")?
            .as_str()
            .map(String::from)
    })
}

/// Polls `cond` until it holds (true) or `within` passes (false).
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Spawns an elector that acquires, then holds until told to stop.
fn spawn_leader(e: Arc<LeaderElector>) -> (JoinHandle<Option<LostLeadership>>, CancellationToken) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move {
        if !e.acquire(&s, |_| {}).await {
            return None;
        }
        tokio::select! {
            lost = e.hold() => Some(lost),
            () = s.cancelled() => None,
        }
    });
    (h, stop)
}

#[tokio::test]
async fn one_leads_release_hands_over_at_once_and_expiry_hands_over_later() {
    let server = server();
    let (a, b, c) = (
        elector(&server, "a"),
        elector(&server, "b"),
        elector(&server, "c"),
    );

    assert_eq!(a.try_acquire_or_renew().await.expect("a"), Attempt::Leading);
    assert_eq!(
        b.try_acquire_or_renew().await.expect("b"),
        Attempt::Standby { holder: "a".into() }
    );

    // a holds (renewing); b keeps trying and must not take over, even after
    // several lease durations.
    let (a_task, a_stop) = spawn_leader(a.clone());
    let (b_task, _b_stop) = spawn_leader(b.clone());
    let changed = eventually(LEASE * 3, || holder(&server).as_deref() != Some("a")).await;
    assert!(!changed, "b took over from a live leader");
    assert!(!b_task.is_finished());

    // a steps down cleanly: b leads within about a retry period, well before expiry.
    a_stop.cancel();
    assert_eq!(a_task.await.expect("a task"), None);
    let released = Instant::now();
    a.release().await.expect("release");
    assert!(
        eventually(LEASE * 10, || holder(&server).as_deref() == Some("b")).await,
        "b never took over after release"
    );
    let handover = released.elapsed();
    assert!(
        handover < LEASE,
        "release handover took {handover:?}, as long as an expiry"
    );

    // b dies without releasing: c takes over only once the lease has expired.
    let (c_task, c_stop) = spawn_leader(c.clone());
    b_task.abort();
    let killed = Instant::now();
    assert!(
        eventually(LEASE * 10, || holder(&server).as_deref() == Some("c")).await,
        "c never took over after b died"
    );
    let takeover = killed.elapsed();
    assert!(
        takeover >= LEASE - RETRY * 2,
        "c took over after {takeover:?}, before b's lease expired"
    );
    let lease = leader_lease(&server).expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], json!(2), "{lease:#}");
    c_stop.cancel();
    let _ = c_task.await;
}

#[tokio::test]
async fn a_leader_that_loses_the_lease_says_so() {
    let server = server();
    let a = elector(&server, "a");
    assert_eq!(a.try_acquire_or_renew().await.expect("a"), Attempt::Leading);
    // Someone else writes the lease (e.g. a replica with a skewed clock).
    let mut l = leader_lease(&server).expect("lease");
    l["spec"]["holderIdentity"] = json!("intruder");
    l["spec"]["renewTime"] = json!("2999-01-01T00:00:00.000000Z");
    server
        .put_json("leases.coordination.k8s.io", l)
        .expect("overwrite lease");
    let lost = tokio::time::timeout(WAIT, a.hold())
        .await
        .expect("leader noticed");
    assert_eq!(
        lost,
        LostLeadership::TakenOver {
            holder: "intruder".into()
        }
    );
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let server = server();
    let a = elector(&server, "a");
    let (task, _stop) = spawn_leader(a.clone());
    assert!(eventually(WAIT, || holder(&server).as_deref() == Some("a")).await);
    server.fail_when(500, None, |r| r.resource == "leases");
    let started = Instant::now();
    let lost = joined(task, "leader gave up").await;
    assert_eq!(lost, Some(LostLeadership::RenewDeadline(RENEW_DEADLINE)));
    assert!(
        started.elapsed() < LEASE,
        "stepped down after {:?}: later than the lease expiry",
        started.elapsed()
    );
}

/// One `palisade controller` process: the runtime with its own metrics and health.
struct Instance {
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), RuntimeError>>,
}

fn start_instance(server: &FakeApiServer, identity: &str) -> Instance {
    start_instance_with(server, identity, false)
}

fn start_instance_with(server: &FakeApiServer, identity: &str, exit_on_lost: bool) -> Instance {
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let shutdown = CancellationToken::new();
    let settings = RuntimeSettings {
        controller: fast_settings(),
        resync_interval: Duration::ZERO,
        leader: Some(lease(identity)),
        shutdown_timeout: Duration::from_secs(5),
        sync_timeout: Duration::from_secs(300),
        exit_on_lost_leadership: exit_on_lost,
    };
    let task = tokio::spawn(runtime::run(
        server.client(),
        metrics.clone(),
        health.clone(),
        Arc::new(SystemClock),
        settings,
        shutdown.clone(),
    ));
    Instance {
        metrics,
        health,
        shutdown,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controller_instances_one_active_standby_takes_over() {
    let server = server();
    let a = start_instance(&server, "a");
    assert!(eventually(WAIT, || a.metrics.leader()).await, "a never led");
    let b = start_instance(&server, "b");

    // b is a ready standby: it reaches the API server but runs no controller.
    assert!(
        eventually(WAIT, || b.health.ready()).await,
        "standby b never ready"
    );
    assert!(!b.metrics.leader());
    create_app_tenant(&server, "first").await;
    wait_ready(&server, "first").await;
    assert!(
        eventually(WAIT, || a.health.ready()).await,
        "leader a never ready"
    );
    let b_text = b.metrics.encode().expect("metrics");
    assert!(b_text.contains("palisade_leader 0"), "{b_text}");
    assert!(
        !b_text.contains("palisade_reconciles_total{"),
        "standby reconciled:\n{b_text}"
    );

    // SIGTERM to a: it drains, releases the lease and exits cleanly; b leads.
    a.shutdown.cancel();
    let exited = joined(a.task, "a stopped").await;
    assert!(exited.is_ok(), "{exited:?}");
    assert!(!a.metrics.leader());
    assert!(
        eventually(WAIT, || b.metrics.leader()).await,
        "b never took over"
    );
    create_app_tenant(&server, "second").await;
    wait_ready(&server, "second").await;

    // b crashes (no release): a new replica c takes over after the lease expires.
    let c = start_instance(&server, "c");
    b.task.abort();
    assert!(
        eventually(WAIT, || c.metrics.leader()).await,
        "c never took over"
    );
    create_app_tenant(&server, "third").await;
    wait_ready(&server, "third").await;
    c.shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, c.task).await;
    assert_eq!(holder(&server), None, "c did not release the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_exit_on_lost_leadership_an_instance_that_loses_it_stops_and_fails() {
    let server = server();
    let a = start_instance_with(&server, "a", true);
    assert!(eventually(WAIT, || a.metrics.leader()).await);
    server.fail_when(500, None, |r| r.resource == "leases");
    let result = joined(a.task, "a stopped").await;
    assert!(
        matches!(result, Err(RuntimeError::LostLeadership(_))),
        "{result:?}"
    );
    assert!(!a.metrics.leader());
    assert!(!a.health.live());
}

/// Writes to anything but the Lease since `mark`.
fn writes_since(server: &FakeApiServer, mark: palisade_testkit::LogMark) -> usize {
    server
        .log_since(mark)
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .count()
}

/// #27: a leader that cannot renew (the API server or etcd is away) stops
/// every controller before its Lease could pass to another replica, stays
/// live, and campaigns again in-process: when the API answers again one
/// replica leads (never two at once) and the work goes on, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_stops_then_campaigns_again_in_process() {
    let server = server();
    let a = start_instance(&server, "a");
    assert!(eventually(WAIT, || a.metrics.leader()).await, "a never led");
    let b = start_instance(&server, "b");
    assert!(eventually(WAIT, || b.health.ready()).await, "b never ready");
    create_app_tenant(&server, "first").await;
    wait_ready(&server, "first").await;

    // Never two leaders, sampled all along.
    let both = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (am, bm, both) = (a.metrics.clone(), b.metrics.clone(), both.clone());
        tokio::spawn(async move {
            loop {
                if am.leader() && bm.leader() {
                    both.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    // The Lease cannot be written or read: a stops its controllers within
    // the renew deadline and stays live (no exit, no restart).
    let fault = server.fail_when(500, None, |r| r.resource == "leases");
    let cut = Instant::now();
    assert!(
        eventually(WAIT, || !a.metrics.leader()).await,
        "a kept leading"
    );
    assert!(
        cut.elapsed() < LEASE,
        "a stopped after {:?}, later than its lease could expire",
        cut.elapsed()
    );
    assert_eq!(a.metrics.leadership_lost(), 1);
    assert!(a.health.live(), "a re-campaigning replica is live");
    assert!(!a.task.is_finished(), "a exited");

    // Nobody leads while the Lease is unreachable: a Tenant waits, unwritten.
    create_app_tenant(&server, "second").await;
    let mark = server.mark();
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        writes_since(&server, mark),
        0,
        "a controller wrote while no replica held the lease"
    );
    assert!(!a.health.ready() && !b.health.ready());

    // The API answers again: one replica leads and converges the new Tenant.
    server.clear_fault(fault);
    assert!(
        eventually(WAIT, || a.metrics.leader() || b.metrics.leader()).await,
        "nobody leads again"
    );
    wait_ready(&server, "second").await;
    assert!(
        eventually(WAIT, || a.health.ready() && b.health.ready()).await,
        "leader and standby are ready again"
    );
    sampler.abort();
    assert!(
        !both.load(std::sync::atomic::Ordering::SeqCst),
        "two replicas led at once"
    );
    a.shutdown.cancel();
    b.shutdown.cancel();
    for task in [a.task, b.task] {
        let r = joined(task, "stopped").await;
        assert!(r.is_ok(), "{r:?}");
    }
}

/// #27: a replica that leads again after a lost term starts its controllers
/// on the caches it kept: the namespaces it already watched are not listed
/// again (one list per namespace and kind is what made a new term slow), and
/// it still converges new work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_leads_again_keeps_its_caches() {
    let server = server();
    let a = start_instance(&server, "a");
    assert!(eventually(WAIT, || a.metrics.leader()).await, "a never led");
    create_app_tenant(&server, "first").await;
    wait_ready(&server, "first").await;
    assert!(eventually(WAIT, || a.health.ready()).await, "a never ready");

    let fault = server.fail_when(500, None, |r| r.resource == "leases");
    assert!(
        eventually(WAIT, || !a.metrics.leader()).await,
        "a kept leading"
    );
    let mark = server.mark();
    server.clear_fault(fault);
    assert!(
        eventually(WAIT, || a.metrics.leader()).await,
        "a never led again"
    );
    assert!(
        eventually(WAIT, || a.health.ready()).await,
        "a never ready again"
    );
    create_app_tenant(&server, "second").await;
    wait_ready(&server, "second").await;
    assert_eq!(a.metrics.leadership_lost(), 1);

    let cached: std::collections::HashSet<String> =
        palisade::controller::cache::tenant_child_kinds()
            .into_iter()
            .map(|ar| ar.plural)
            .collect();
    let relisted: Vec<String> = server
        .log_since(mark)
        .iter()
        .filter(|r| r.verb == palisade_testkit::Verb::List && cached.contains(&r.resource))
        .filter(|r| r.namespace.as_deref() != Some("second-app"))
        .map(|r| format!("{} in {:?}", r.resource, r.namespace))
        .collect();
    // The one Namespace list is the Tenant controller's own watch of owners'
    // new namespaces (it starts with each term); no cached kind is listed.
    assert_eq!(
        relisted,
        ["namespaces in None"],
        "the new term listed cached kinds again"
    );
    a.shutdown.cancel();
    let r = tokio::time::timeout(WAIT, a.task)
        .await
        .expect("stopped")
        .expect("task");
    assert!(r.is_ok(), "{r:?}");
}
