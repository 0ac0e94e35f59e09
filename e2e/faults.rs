//! Issue #27 (and #24's fault mode) on the real control plane: kube-apiserver
//! killed for 20 s in the middle of a convergence. The leader cannot renew
//! its Lease, stops its controllers, stays live and campaigns again in this
//! process (no exit, no restart back-off); once the API answers it leads
//! again and every Tenant is Ready soon after.
//!
//! Runs only against the local control plane of scripts/test-cluster.sh
//! (`KUBECONFIG` is its state dir's kubeconfig): the API server is killed and
//! started again by that script, by its pid file, and an [`ApiServerBack`]
//! guard starts it again whatever happens to the test.

use super::*;
use palisade::runtime::admin::Health;
use palisade::runtime::leader::LeaseSettings;
use palisade::runtime::{self, RuntimeSettings};
use signals::eventually;
use std::path::PathBuf;

/// The state dir of scripts/test-cluster.sh (its own default).
fn cluster_state() -> PathBuf {
    std::env::var_os("PALISADE_TEST_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("palisade-test-cluster"))
}

/// Runs `scripts/test-cluster.sh ARGS…` and says whether it succeeded.
fn cluster_script(args: &[&str]) -> bool {
    std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/test-cluster.sh"
    ))
    .args(args)
    .status()
    .is_ok_and(|s| s.success())
}

/// Starts kube-apiserver again when dropped (a no-op when it runs): a
/// failing test never leaves the cluster without its API server.
struct ApiServerBack;

impl Drop for ApiServerBack {
    fn drop(&mut self) {
        cluster_script(&["start-apiserver"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_killed_mid_convergence_the_leader_campaigns_again_and_converges() {
    if !enabled() {
        return;
    }
    let kubeconfig = std::env::var_os("KUBECONFIG").map(PathBuf::from);
    if kubeconfig != Some(cluster_state().join("kubeconfig")) || !cluster_script(&["status"]) {
        eprintln!(
            "skipping: needs the local control plane of scripts/test-cluster.sh (KUBECONFIG={})",
            cluster_state().join("kubeconfig").display()
        );
        return;
    }
    if std::env::var_os(palisade::runtime::telemetry::CLI_LOG_ENV).is_some() {
        let _ = palisade::runtime::telemetry::init_stderr();
    }
    let (client, operator) = clients().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let mut cleanup = Cleanup::default();
    let prefix = unique("flt");
    let n = 30;
    for i in 0..n {
        let name = format!("{prefix}-{i:02}");
        cleanup.tenant(&name);
        tenants
            .create(&PostParams::default(), &sample(&name, "Delete"))
            .await
            .expect("create");
    }
    let ready = || {
        let tenants = tenants.clone();
        let prefix = prefix.clone();
        async move {
            tenants
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|t| t.name_any().starts_with(&prefix))
                        .filter(|t| {
                            t.status.as_ref().is_some_and(|s| {
                                palisade::crd::condition::is_true(&s.conditions, "Ready")
                            })
                        })
                        .count()
                })
                .unwrap_or(0)
        }
    };

    // The controller process as `palisade controller` runs it, leader
    // election on with the shipped timings (lease 15 s, renew deadline 10 s).
    let metrics = Arc::new(palisade::metrics::Metrics::new());
    let health = Health::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let settings = RuntimeSettings {
        controller: Settings::default(),
        resync_interval: Duration::ZERO,
        leader: Some(LeaseSettings {
            name: unique("palisade-leader"),
            namespace: OPERATOR_NS.into(),
            identity: unique("e2e"),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }),
        shutdown_timeout: Duration::from_secs(10),
        sync_timeout: Duration::from_secs(300),
        exit_on_lost_leadership: false,
    };
    let task = tokio::spawn(runtime::run(
        operator,
        metrics.clone(),
        health.clone(),
        Arc::new(SystemClock),
        settings,
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(60), "a few Tenants Ready", ready, |r| {
        *r >= 3
    })
    .await;

    // Kill kube-apiserver for 20 s: longer than the renew deadline.
    let back = ApiServerBack;
    let restarted = tokio::task::spawn_blocking(|| cluster_script(&["restart-apiserver", "20"]))
        .await
        .expect("join");
    assert!(restarted, "test-cluster.sh restart-apiserver failed");
    drop(back);
    assert!(
        metrics.leadership_lost() >= 1,
        "the leader kept leading without its Lease for 20 s"
    );
    assert!(
        !task.is_finished(),
        "the controller process ended: {task:?}"
    );
    assert!(health.live(), "a re-campaigning replica is live");

    // It leads again in-process and converges what is left.
    let (_, took) = eventually(
        Duration::from_secs(30),
        "every Tenant Ready after the API server is back",
        ready,
        |r| *r >= n,
    )
    .await;
    eprintln!("all {n} Tenants Ready {took:?} after the API server answered again");
    assert!(metrics.leader(), "not leading again");
    eventually(
        Duration::from_secs(30),
        "/readyz again",
        || std::future::ready(health.ready()),
        |r| *r,
    )
    .await;

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the runtime stops")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}
