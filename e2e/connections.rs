//! Issue #24: the controller's TCP connections to the API server do not grow
//! with the number of tenants. Over HTTP/2 (the default, `--http2`) the
//! controller opens connections only as the streams in flight need, 90 each
//! (`runtime::client::Pool`); over HTTP/1.1 (`--http2=false`) every watch is
//! its own connection: two per namespace where Palisade generates Secrets
//! (none elsewhere, `palisade.dev/secrets-watched`).
//!
//! Measured on the real binary (`palisade controller`, as the kubeconfig's
//! user), by its open sockets ([`palisade_testkit::procfs`]).

use super::*;
use palisade_testkit::procfs::established_to;

/// The `palisade controller` process of a test, killed when dropped.
struct ControllerProcess(std::process::Child);

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port of the API server the kubeconfig points at.
async fn api_server_port() -> u16 {
    let config = kube::Config::infer().await.expect("kubeconfig");
    config
        .cluster_url
        .port_u16()
        .unwrap_or(if config.cluster_url.scheme_str() == Some("http") {
            80
        } else {
            443
        })
}

/// Starts `palisade controller` (over HTTP/2 with `http2`), converges
/// `TENANTS` tenants of `sample` spec plus `extra`, and returns the most
/// established connections to the API server seen while they converged and
/// the count once they had.
async fn converge_counting_connections(
    prefix: &str,
    http2: bool,
    extra: impl Fn(&str) -> serde_json::Value,
) -> (usize, usize) {
    let (client, _operator) = clients().await;
    let port = api_server_port().await;
    let mut cleanup = Cleanup::default();
    let names: Vec<String> = (0..TENANTS).map(|_| unique(prefix)).collect();
    for n in &names {
        cleanup.tenant(n);
    }
    let mut args = vec![
        "controller",
        "--leader-election=false",
        "--log-format",
        "text",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    args.push(if http2 {
        "--http2=true"
    } else {
        "--http2=false"
    });
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env("PALISADE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start palisade controller");
    let controller = ControllerProcess(child);
    let pid = controller.0.id();
    let tenants: Api<Tenant> = Api::all(client.clone());
    for n in &names {
        let mut tenant = serde_json::to_value(sample(n, "Delete")).expect("tenant");
        if let (Some(spec), Some(extra)) = (tenant["spec"].as_object_mut(), extra(n).as_object()) {
            spec.extend(extra.clone());
        }
        tenants
            .create(
                &PostParams::default(),
                &serde_json::from_value(tenant).expect("tenant"),
            )
            .await
            .expect("create");
    }
    let mut most = 0;
    for n in &names {
        let ready = await_condition(tenants.clone(), n, tenant_ready(None));
        tokio::pin!(ready);
        // Sample the connections while the tenants converge.
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            most = most.max(established_to(pid, port));
            tokio::select! {
                r = &mut ready => { r.expect("watch"); break; }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tenant {n} not Ready"
            );
        }
    }
    let settled = established_to(pid, port);
    most = most.max(settled);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("RssAnon"))
        .collect();
    println!(
        "{TENANTS} tenants, {} namespaces, http2 {http2}: {settled} connections to the API server when converged, at most {most} while converging; {rss:?}",
        2 * TENANTS
    );
    assert!(settled > 0, "the count sees the controller's connections");
    drop(controller);
    (most, settled)
}

const TENANTS: usize = 30;

/// 30 tenants with a rotated Secret in each of their 60 namespaces (120
/// per-namespace watches besides the cluster-wide ones) converge under the
/// controller binary (HTTP/2, the default) on a handful of connections: the
/// streams in flight ÷ 90, where HTTP/1.1 needs one per watch (issue #24's
/// bound is 50).
#[tokio::test]
async fn connections_do_not_grow_with_tenants() {
    if !enabled() {
        return;
    }
    let (most, _) = converge_counting_connections(
        "conn",
        true,
        |_| json!({"secrets": [{"name": "api-key", "type": "Random", "rotateEvery": "720h"}]}),
    )
    .await;
    // 120 namespace watches, the cluster-wide ones and 16 reconciles'
    // requests are two or three connections' worth of streams; HTTP/1.1
    // would hold over 130.
    assert!(
        most <= 6,
        "{most} connections for {TENANTS} tenants: they must follow the streams in flight, not the tenants"
    );
}

/// Over HTTP/1.1 (`--http2=false`), 30 tenants without generated Secrets (60
/// namespaces) cost no per-namespace watch: at most 50 connections.
#[tokio::test]
async fn namespaces_without_generated_secrets_cost_no_connection() {
    if !enabled() {
        return;
    }
    // Namespaces of earlier tests that are still being deleted may have their
    // Secrets watched (the test above generates some): wait until they are gone.
    let (client, _) = clients().await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let watched: Vec<String> = namespaces
            .list_metadata(
                &kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=palisade"),
            )
            .await
            .expect("list namespaces")
            .items
            .into_iter()
            .filter(|n| {
                n.annotations()
                    .get("palisade.dev/secrets-watched")
                    .is_none_or(|v| v != "false")
            })
            .map(|n| n.name_any())
            .collect();
        if watched.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "namespaces with watched Secrets are still there: {watched:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (most, _) = converge_counting_connections("conq", false, |_| json!({})).await;
    assert!(
        most <= 50,
        "{most} connections for {TENANTS} tenants without generated Secrets over HTTP/1.1"
    );
}
