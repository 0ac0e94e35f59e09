//! The admin server over real HTTP: readiness gated on cache sync, liveness,
//! and every documented metric name on `/metrics`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::client::ClientBuilder;
use palisade::controller::SystemClock;
use palisade::metrics::{Metrics, NAMES};
use palisade::runtime::admin::{AdminServer, Health};
use palisade::runtime::leader::LeaseSettings;
use palisade::runtime::{self, RuntimeError, RuntimeSettings};
use palisade_testkit::FakeApiServer;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// GET `path` over a plain TCP connection; returns (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn eventually_status(addr: SocketAddr, path: &str, want: u16) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, path).await;
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < WAIT,
            "{path} stayed {status}, wanted {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Process {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
    admin_stop: CancellationToken,
    runtime: JoinHandle<Result<(), RuntimeError>>,
    admin: JoinHandle<()>,
}

/// What `palisade controller` does, with a client on the in-process server
/// behind the same layers as production.
async fn start(server: &FakeApiServer, leader: Option<&str>) -> Process {
    start_with(server, leader, Duration::from_secs(300)).await
}

/// [`start`] with a deadline for the caches to sync.
async fn start_with(
    server: &FakeApiServer,
    leader: Option<&str>,
    sync_timeout: Duration,
) -> Process {
    let metrics = Arc::new(Metrics::new());
    let health = Health::default();
    let client = runtime::client::layered(
        ClientBuilder::new(server.clone(), "default"),
        metrics.clone(),
        1000.0,
        1000,
    )
    .build();
    let admin = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = admin.local_addr().expect("addr");
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin.serve(health.clone(), metrics.clone(), admin_stop.clone()));
    let shutdown = CancellationToken::new();
    let settings = RuntimeSettings {
        controller: fast_settings(),
        resync_interval: Duration::ZERO,
        leader: leader.map(|id| LeaseSettings {
            name: LEADER_LEASE.into(),
            namespace: "default".into(),
            identity: id.into(),
            lease_duration: Duration::from_millis(300),
            renew_deadline: Duration::from_millis(200),
            retry_period: Duration::from_millis(50),
        }),
        shutdown_timeout: Duration::from_secs(5),
        sync_timeout,
        exit_on_lost_leadership: false,
    };
    let runtime = tokio::spawn(runtime::run(
        client,
        metrics.clone(),
        health.clone(),
        Arc::new(SystemClock),
        settings,
        shutdown.clone(),
    ));
    Process {
        addr,
        metrics,
        health,
        shutdown,
        admin_stop,
        runtime,
        admin,
    }
}

impl Process {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.runtime).await;
        self.admin_stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.admin).await;
    }
}

#[tokio::test]
async fn readyz_waits_for_every_cache_to_sync() {
    let server = server();
    // Role lists fail: that child cache cannot sync.
    let fault = server.fail_when(500, None, |r| r.resource == "roles");
    let p = start(&server, None).await;
    let (live, _) = get(p.addr, "/livez").await;
    assert_eq!(live, 200);
    // Other caches sync and the controller runs, yet the process is not ready.
    assert!(
        tokio::time::timeout(WAIT, async {
            while !p.metrics.leader() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    );
    let (ready, _) = get(p.addr, "/readyz").await;
    assert_eq!(ready, 503);
    assert!(!p.health.ready());

    server.clear_fault(fault);
    eventually_status(p.addr, "/readyz", 200).await;

    // Shutting down: not ready any more (the admin server outlives the runtime).
    p.shutdown.cancel();
    let _ = tokio::time::timeout(WAIT, &mut { p.runtime }).await;
    let (ready, _) = get(p.addr, "/readyz").await;
    assert_eq!(ready, 503);
    p.admin_stop.cancel();
}

/// #31 item 1: a leader whose caches cannot sync does not stay not-ready
/// forever behind a green /livez: past `--sync-timeout` it is not live, gives
/// its Lease up for a standby and stops with an error (the process exits).
#[tokio::test]
async fn a_leader_that_cannot_sync_gives_up_its_lease() {
    let server = server();
    let _fault = server.fail_when(500, None, |r| r.resource == "roles");
    let p = start_with(&server, Some("a"), Duration::from_secs(1)).await;
    let result = joined(p.runtime, "the runtime gives up").await;
    assert!(
        matches!(result, Err(RuntimeError::NotSynced(_))),
        "{result:?}"
    );
    let (live, _) = get(p.addr, "/livez").await;
    assert_eq!(live, 503);
    let lease = leader_lease(&server).expect("lease");
    assert_ne!(lease["spec"]["holderIdentity"], "a", "{lease}");
    p.admin_stop.cancel();
}

#[tokio::test]
async fn a_standby_is_ready_and_exports_leader_zero() {
    let server = server();
    let leader = start(&server, Some("a")).await;
    eventually_status(leader.addr, "/readyz", 200).await;
    let standby = start(&server, Some("b")).await;
    eventually_status(standby.addr, "/readyz", 200).await;
    let (_, text) = get(standby.addr, "/metrics").await;
    assert!(text.contains("\npalisade_leader 0\n"), "{text}");
    let (_, text) = get(leader.addr, "/metrics").await;
    assert!(text.contains("\npalisade_leader 1\n"), "{text}");
    standby.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn metrics_are_exposed_with_the_documented_names() {
    let server = server();
    let p = start(&server, None).await;
    eventually_status(p.addr, "/readyz", 200).await;
    create_app_tenant(&server, "acme").await;
    wait_ready(&server, "acme").await;

    let start = Instant::now();
    let text = loop {
        let (status, text) = get(p.addr, "/metrics").await;
        assert_eq!(status, 200);
        if text.contains("palisade_tenants{ready=\"true\"} 1") {
            break text;
        }
        assert!(start.elapsed() < WAIT, "tenant gauge never 1:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    for name in NAMES {
        // OpenMetrics names a counter family without its `_total` suffix.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{name} missing:\n{text}"
        );
    }
    // The names the chart's alerts use, spelled out (not via NAMES).
    for series in [
        "palisade_reconciles_total{controller=\"tenant\"}",
        "palisade_reconcile_duration_seconds_bucket{le=\"+Inf\",controller=\"tenant\"}",
        "palisade_reconciles_in_flight{controller=\"tenant\"}",
        "palisade_writes_per_reconcile_count{controller=\"tenant\"}",
        "palisade_api_requests_total{verb=\"watch\",result=\"2xx\",resource=\"tenants\"}",
        "palisade_api_requests_total{verb=\"list\",result=\"2xx\",resource=\"tenants\"}",
        "palisade_api_requests_total{verb=\"create\",result=\"2xx\",resource=\"namespaces\"}",
        "palisade_leader 1",
        "# TYPE palisade_reconcile_errors counter",
        "# TYPE palisade_backup_last_success_timestamp_seconds gauge",
        "# TYPE palisade_backup_last_failure_timestamp_seconds gauge",
        "# TYPE palisade_restore_test_last_success_timestamp_seconds gauge",
        "# TYPE palisade_restore_test_last_result gauge",
        "# TYPE palisade_secret_next_rotation_timestamp_seconds gauge",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }

    // Failures are counted by bounded reason.
    server.fail_when(500, Some(3), |r| {
        r.is_write() && r.namespace.as_deref() == Some("globex-app")
    });
    create_app_tenant(&server, "globex").await;
    wait_ready(&server, "globex").await;
    let (_, text) = get(p.addr, "/metrics").await;
    assert!(
        text.contains("palisade_reconcile_errors_total{controller=\"tenant\",reason="),
        "{text}"
    );
    assert!(text.contains("result=\"5xx\""), "{text}");

    // Setters for the backup and secret controllers.
    p.metrics
        .set_backup_last_success("db", "nightly", 1_800_000_000.0);
    p.metrics.set_secret_rotations(
        "acme",
        &[("acme-app".into(), "db-creds".into(), 1_800_000_100.0)],
    );
    let (_, text) = get(p.addr, "/metrics").await;
    assert!(text.contains(
        "palisade_backup_last_success_timestamp_seconds{namespace=\"db\",schedule=\"nightly\"} 1800000000.0"
    ), "{text}");
    assert!(text.contains(
        "palisade_secret_next_rotation_timestamp_seconds{tenant=\"acme\",namespace=\"acme-app\",secret=\"db-creds\"} 1800000100.0"
    ), "{text}");
    p.stop().await;
}

#[tokio::test]
async fn the_client_rate_limit_paces_requests_but_not_the_caches() {
    let server = server();
    let metrics = Arc::new(Metrics::new());
    // 20 requests per second, burst 5: 15 requests beyond the burst take ~0.75 s.
    let client = runtime::client::layered(
        ClientBuilder::new(server.clone(), "default"),
        metrics.clone(),
        20.0,
        5,
    )
    .build();
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::default_namespaced(client);
    let start = Instant::now();
    for _ in 0..20 {
        api.get_opt("absent").await.expect("get");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "20 requests took {took:?}"
    );
    let text = metrics.encode().expect("encode");
    assert!(
        text.contains(
            "palisade_api_requests_total{verb=\"get\",result=\"4xx\",resource=\"configmaps\"} 20"
        ),
        "{text}"
    );
    // Lists (what fills a cache) do not wait behind the bucket, even when it
    // is in debt: 20 of them take far less than the 1 s the limit would.
    let start = Instant::now();
    for _ in 0..20 {
        api.list(&Default::default()).await.expect("list");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "20 lists took {took:?}: rate-limited"
    );
}
