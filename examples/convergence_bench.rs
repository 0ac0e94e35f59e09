//! `make bench` (convergence): N Tenants converged by the real `palisade
//! controller` binary (a separate process, so its RSS is its own) against the
//! in-process API server served over loopback HTTP, compared in the same run
//! with the floor: the same objects (`palisade render`'s builders) applied by a
//! bare kube client at the same concurrency. Then: a forced resync and a
//! restart must make zero writes and change no resourceVersion; one Tenant edit
//! → children updated, p50/p99 over 100 edits. Writes docs/PERFORMANCE.md.
//!
//! Usage: convergence_bench [--tenants 100,1000] [--binary target/release/palisade] [--out docs/PERFORMANCE.md]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use palisade::crd::{BackupSchedule, RolePolicy, Tenant};
use palisade_testkit::{FakeApiServer, ResourceType};
use serde_json::json;

const CONCURRENCY: usize = 16;

fn tenant(i: usize) -> Tenant {
    let name = format!("t{i:04}");
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": format!("{name}-a")}, {"name": format!("{name}-b")}],
            "quota": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi", "pods": "40"}},
            "limits": {"default": {"cpu": "500m", "memory": "256Mi"}},
            "owners": [{"kind": "User", "name": format!("{name}-owner")}]
        }
    }))
    .expect("tenant")
}

fn server() -> FakeApiServer {
    let s = FakeApiServer::new();
    s.register(ResourceType::of::<Tenant>().with_status(true));
    s.register(ResourceType::of::<RolePolicy>().with_status(true));
    s.register(ResourceType::of::<BackupSchedule>().with_status(true));
    s
}

async fn http_client(
    server: &FakeApiServer,
) -> anyhow::Result<(kube::Client, String, tokio::task::JoinHandle<()>)> {
    let (addr, task) = server.serve_http().await?;
    let kubeconfig = FakeApiServer::kubeconfig(addr);
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok((kube::Client::try_from(config)?, kubeconfig, task))
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn writes_by(server: &FakeApiServer, mark: palisade_testkit::LogMark) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in server.log_since(mark) {
        if r.is_write() {
            let sub = r.subresource.map(|s| format!("/{s}")).unwrap_or_default();
            *m.entry(format!("{} {}{}", r.verb.as_str(), r.resource, sub))
                .or_insert(0) += 1;
        }
    }
    m
}

fn reads_by(server: &FakeApiServer, mark: palisade_testkit::LogMark) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in server.log_since(mark) {
        if !r.is_write() {
            *m.entry(r.verb.as_str().to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// resourceVersions of every object Palisade manages.
fn managed_rvs(server: &FakeApiServer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for res in [
        "namespaces",
        "networkpolicies.networking.k8s.io",
        "resourcequotas",
        "limitranges",
        "roles.rbac.authorization.k8s.io",
        "rolebindings.rbac.authorization.k8s.io",
    ] {
        for o in server.list_json(res) {
            let managed = o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "palisade";
            if managed {
                let key = format!(
                    "{res}/{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                );
                out.insert(
                    key,
                    o["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
        }
    }
    out
}

fn all_ready(server: &FakeApiServer, n: usize) -> bool {
    let tenants = server.list_json("tenants.palisade.dev");
    tenants.len() == n
        && tenants.iter().all(|t| {
            t["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
}

struct Floor {
    seconds: f64,
    objects: usize,
}

async fn floor(n: usize) -> anyhow::Result<Floor> {
    let server = server();
    let (client, _, task) = http_client(&server).await?;
    let mut values = Vec::new();
    for i in 0..n {
        let t = tenant(i);
        let plan = palisade::resources::rolepolicy::plan_for(&t, &[]);
        let objects = palisade::resources::tenant::build(&t, &Default::default(), &plan)?;
        values.push(objects.to_values()?);
    }
    let objects = values.iter().map(Vec::len).sum();
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(values)
        .map(|objs| {
            let client = client.clone();
            async move {
                for v in objs {
                    let (group, version) =
                        match v["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
                            Some((g, v)) => (g.to_string(), v.to_string()),
                            None => (
                                String::new(),
                                v["apiVersion"].as_str().unwrap_or("v1").to_string(),
                            ),
                        };
                    let kind = v["kind"].as_str().unwrap_or_default().to_string();
                    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
                    let name = v["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let api: Api<DynamicObject> = match v["metadata"]["namespace"].as_str() {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    api.patch(
                        &name,
                        &PatchParams::apply("floor").force(),
                        &Patch::Apply(&v),
                    )
                    .await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let seconds = start.elapsed().as_secs_f64();
    task.abort();
    Ok(Floor { seconds, objects })
}

struct Controller {
    child: tokio::process::Child,
    admin: String,
}

impl Controller {
    async fn start(binary: &str, kubeconfig_path: &str, resync: &str) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let admin = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(binary)
            .args([
                "controller",
                "--leader-election=false",
                "--log-format",
                "text",
                "--admin-addr",
                &admin,
                "--resync-interval",
                resync,
                "--kube-qps",
                "0",
            ])
            .env("KUBECONFIG", kubeconfig_path)
            .env("PALISADE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the palisade binary (build it with `cargo build --release`)")?;
        Ok(Self { child, admin })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// palisade_reconciles_total{controller="tenant"} from /metrics.
    async fn reconciles(&self) -> u64 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(&self.admin).await else {
            return 0;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        if stream.write_all(req.as_bytes()).await.is_err() {
            return 0;
        }
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body).await;
        body.lines()
            .filter(|l| {
                l.starts_with("palisade_reconciles_total") && l.contains("controller=\"tenant\"")
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}")
}

#[derive(Default)]
struct Run {
    n: usize,
    floor_s: f64,
    floor_objects: usize,
    converge_s: f64,
    writes: BTreeMap<String, usize>,
    reads: BTreeMap<String, usize>,
    reconciles: u64,
    peak_rss_kib: u64,
    steady_rss_kib: u64,
    resync_writes: usize,
    resync_rv_changes: usize,
    restart_writes: usize,
    restart_rv_changes: usize,
    edit_p50_ms: f64,
    edit_p99_ms: f64,
}

async fn operator(n: usize, binary: &str, edits: usize) -> anyhow::Result<Run> {
    let server = server();
    let (client, kubeconfig, task) = http_client(&server).await?;
    let dir = tempfile::tempdir()?;
    let kc_path = dir.path().join("kubeconfig");
    std::fs::write(&kc_path, kubeconfig)?;
    let kc = kc_path.to_str().context("utf-8 path")?;
    let api: Api<Tenant> = Api::all(client.clone());
    for i in 0..n {
        api.create(&PostParams::default(), &tenant(i)).await?;
    }
    let mark = server.mark();
    let resync_every = Duration::from_secs(if n >= 1000 { 60 } else { 20 });
    let controller = Controller::start(binary, kc, &format!("{}s", resync_every.as_secs())).await?;
    let pid = controller.pid();
    let started = Instant::now();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let (_, hwm) = rss_kib(pid);
                peak.fetch_max(hwm, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let s = server.clone();
    wait_for("all tenants Ready", Duration::from_secs(900), async || {
        all_ready(&s, n)
    })
    .await?;
    let converge_s = started.elapsed().as_secs_f64();
    // Let the echoes of our own writes settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut run = Run {
        n,
        converge_s,
        writes: writes_by(&server, mark),
        reads: reads_by(&server, mark),
        reconciles: controller.reconciles().await,
        ..Default::default()
    };
    run.steady_rss_kib = rss_kib(pid).0;

    // Forced resync (the controller's --resync-interval): zero writes, no RV changes.
    let before = managed_rvs(&server);
    let mark = server.mark();
    let r0 = controller.reconciles().await;
    let target = r0 + n as u64;
    wait_for("a full resync", resync_every * 3, async || {
        controller.reconciles().await >= target
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.resync_writes = server
        .log_since(mark)
        .iter()
        .filter(|r| r.is_write())
        .count();
    let after = managed_rvs(&server);
    run.resync_rv_changes = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();

    // One edit → both namespaces' quotas updated.
    let mut latencies = Vec::new();
    for e in 0..edits {
        let t = format!("t{:04}", e % n);
        let pods = format!("{}", 100 + e);
        let t0 = Instant::now();
        api.patch(&t, &PatchParams::default(), &Patch::Merge(json!({"spec": {"quota": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi", "pods": pods}}}}))).await?;
        let s = server.clone();
        wait_for("children updated", Duration::from_secs(30), async || {
            ["a", "b"].iter().all(|x| {
                s.get_json(
                    "resourcequotas",
                    Some(&format!("{t}-{x}")),
                    "palisade-quota",
                )
                .is_some_and(|q| q["spec"]["hard"]["pods"] == pods.as_str())
            })
        })
        .await?;
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    run.edit_p50_ms = pct(0.50);
    run.edit_p99_ms = pct(0.99);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Restart: a new process converges from its caches with zero writes.
    controller.stop().await;
    sampler.abort();
    run.peak_rss_kib = peak.load(std::sync::atomic::Ordering::Relaxed);
    let before = managed_rvs(&server);
    let mark = server.mark();
    let restarted = Controller::start(binary, kc, "10h").await?;
    wait_for(
        "the restarted controller to reconcile every tenant",
        Duration::from_secs(600),
        async || restarted.reconciles().await >= n as u64,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.restart_writes = server
        .log_since(mark)
        .iter()
        .filter(|r| r.is_write() && r.resource != "leases")
        .count();
    let after = managed_rvs(&server);
    run.restart_rv_changes = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count();
    restarted.stop().await;
    task.abort();
    Ok(run)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / 1024
                    / 1024
            })
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str, d: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| d.to_string())
    };
    let sizes: Vec<usize> = arg("--tenants", "100,1000")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let binary = arg("--binary", "target/release/palisade");
    let out = arg("--out", "docs/PERFORMANCE.md");
    let edits: usize = arg("--edits", "100").parse()?;
    let mut rows = Vec::new();
    for &n in &sizes {
        eprintln!("== {n} tenants: floor");
        let f = floor(n).await?;
        eprintln!("   floor: {} objects in {:.2}s", f.objects, f.seconds);
        eprintln!("== {n} tenants: palisade controller");
        let mut r = operator(n, &binary, edits).await?;
        r.floor_s = f.seconds;
        r.floor_objects = f.objects;
        eprintln!(
            "   converged in {:.2}s ({:.2}x floor)",
            r.converge_s,
            r.converge_s / f.seconds
        );
        rows.push(r);
    }
    let mut md = String::new();
    md.push_str("# Palisade performance\n\n");
    md.push_str("Regenerated by `make bench-convergence` (examples/convergence_bench.rs). The controller is the\n");
    md.push_str("release `palisade controller` binary in its own process, talking HTTP to the in-process fake API\n");
    md.push_str("server (testkit) on loopback; the floor applies the same rendered objects with a bare kube client\n");
    md.push_str(&format!(
        "over the same transport at the same concurrency ({CONCURRENCY}), in the same run.\n\n"
    ));
    md.push_str(&format!(
        "Machine: {}. Date: {}.\n\n",
        machine(),
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d")
    ));
    md.push_str("Each Tenant: 2 namespaces, default-deny + intra-tenant + DNS policies, quota, limits, one owner (24 managed objects).\n\n");
    md.push_str("| tenants | managed objects | floor (s) | converge (s) | converge ÷ floor (≤ 1.25) | writes | writes ÷ (objects + 1 status/tenant) (≤ 1.05) | reconciles/tenant (≤ 1.3) | peak RSS (MiB) | steady RSS (MiB) | RSS budget 12 MiB + 6 KiB/object | resync writes / RV changes | restart writes / RV changes | edit p50 / p99 (ms) (p99 ≤ 1000) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let writes: usize = r.writes.values().sum();
        let budget_kib = 12 * 1024 + 6 * r.floor_objects as u64;
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.3} | {:.2} | {:.1} | {:.1} | {:.1} MiB ({}) | {} / {} | {} / {} | {:.0} / {:.0} |\n",
            r.n,
            r.floor_objects,
            r.floor_s,
            r.converge_s,
            r.converge_s / r.floor_s,
            writes,
            writes as f64 / (r.floor_objects + r.n) as f64,
            r.reconciles as f64 / r.n as f64,
            r.peak_rss_kib as f64 / 1024.0,
            r.steady_rss_kib as f64 / 1024.0,
            budget_kib as f64 / 1024.0,
            if r.steady_rss_kib <= budget_kib { "met" } else { "missed" },
            r.resync_writes,
            r.resync_rv_changes,
            r.restart_writes,
            r.restart_rv_changes,
            r.edit_p50_ms,
            r.edit_p99_ms,
        ));
    }
    md.push_str("\n## Requests during cold convergence\n\n");
    for r in &rows {
        md.push_str(&format!(
            "### {} tenants\n\nWrites by verb and resource:\n\n",
            r.n
        ));
        for (k, v) in &r.writes {
            md.push_str(&format!("- `{k}`: {v}\n"));
        }
        md.push_str("\nReads and watches by verb:\n\n");
        for (k, v) in &r.reads {
            md.push_str(&format!("- `{k}`: {v}\n"));
        }
        md.push('\n');
    }
    std::fs::create_dir_all(
        std::path::Path::new(&out)
            .parent()
            .unwrap_or(std::path::Path::new(".")),
    )?;
    std::fs::write(&out, &md)?;
    println!("{md}");
    Ok(())
}
