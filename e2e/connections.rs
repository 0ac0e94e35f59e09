//! Issue #24: with `--http2` the controller's TCP connections to the API
//! server do not grow with the number of tenants. Over HTTP/1.1 (still the
//! default, see `--http2`) every watch is its own connection (two per
//! managed namespace); with `--http2` the controller binary speaks HTTP/2 over
//! a fixed pool of connections (`runtime::client`).
//!
//! Measured on the real binary (`palisade controller`, as the kubeconfig's
//! user), by its open sockets: `/proc/<pid>/fd` matched against
//! `/proc/net/tcp{,6}` for established connections to the API server's port.

use super::*;

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

/// Socket inodes of process `pid`.
fn socket_inodes(pid: u32) -> std::collections::BTreeSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_str()?.to_string();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Established TCP connections of process `pid` to remote `port`.
pub(super) fn connections_to(pid: u32, port: u16) -> usize {
    let mine = socket_inodes(pid);
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (f.get(2), f.get(3), f.get(9)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode: u64 = inode.parse().unwrap_or(0);
            if *state == "01" && remote_port == Some(port) && mine.contains(&inode) {
                n += 1;
            }
        }
    }
    n
}

/// 30 tenants (60 namespaces, 120 per-namespace watches besides the
/// cluster-wide ones) converge under the controller binary (`--http2`) with at most 50
/// connections to the API server (issue #24's bound, at any size); over
/// HTTP/1.1 it was one per watch.
#[tokio::test]
async fn connections_do_not_grow_with_tenants() {
    if !enabled() {
        return;
    }
    const TENANTS: usize = 30;
    let (client, _operator) = clients().await;
    let port = api_server_port().await;
    let mut cleanup = Cleanup::default();
    let names: Vec<String> = (0..TENANTS).map(|_| unique("conn")).collect();
    for n in &names {
        cleanup.tenant(n);
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args([
            "controller",
            "--leader-election=false",
            "--log-format",
            "text",
            "--admin-addr",
            "127.0.0.1:0",
            "--http2",
        ])
        .env("PALISADE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start palisade controller");
    let controller = ControllerProcess(child);
    let pid = controller.0.id();
    let tenants: Api<Tenant> = Api::all(client.clone());
    for n in &names {
        tenants
            .create(&PostParams::default(), &sample(n, "Delete"))
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
            most = most.max(connections_to(pid, port));
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
    let settled = connections_to(pid, port);
    most = most.max(settled);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("RssAnon"))
        .collect();
    println!(
        "{TENANTS} tenants, {} namespaces: {settled} connections to the API server when converged, at most {most} while converging; {rss:?}",
        2 * TENANTS
    );
    assert!(settled > 0, "the count sees the controller's connections");
    assert!(
        most <= 50,
        "{most} connections for {TENANTS} tenants: they must not grow with the tenants"
    );
    drop(controller);
}
