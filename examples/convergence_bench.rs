//! `make bench` (convergence): N Tenants converged by the real `palisade
//! controller` binary (a separate process, so its RSS is its own), compared in
//! the same run with the floor: the same objects (`palisade render`'s
//! builders) applied by a bare kube client at the same concurrency. Then: a
//! forced resync and a restart must make zero writes and change no
//! resourceVersion; one Tenant edit → children updated, p50/p99 over 100
//! edits. Writes docs/PERFORMANCE.md.
//!
//! Targets: the in-process API server (testkit) served over loopback HTTP,
//! and with `--cluster` also the cluster of `KUBECONFIG` (`make
//! bench-convergence` uses the local real control plane of
//! scripts/test-cluster.sh): the benchmark installs the CRDs, refuses a cluster
//! with Tenants it did not make or a running Palisade, names everything after
//! this run (so a run never meets the terminating namespaces of the last one),
//! and deletes what it made and waits for it to be gone, also on failure.
//! Request counts come from the fake's request log, or on a cluster from the
//! controller's own `palisade_api_requests_total`. Resource versions that only
//! the cluster's quota controller moves (ResourceQuota status) are not counted.
//!
//! With `--rates shipped,0:0,…` (on a cluster; `qps:burst`, `shipped` = the
//! controller's defaults) one batch of `--tenants` (default 200) per rate, with
//! the API server's priority-and-fairness figures; with `--faults` the fault
//! scenarios of issue #27 on the local control plane (scripts/test-cluster.sh
//! restarts kube-apiserver and etcd). Each writes its own section of `--out`.
//!
//! Usage: convergence_bench [--tenants 100,1000] [--binary target/release/palisade]
//!                          [--out docs/PERFORMANCE.md] [--edits 100] [--cluster]
//!        convergence_bench --cluster --rates shipped,0:0 [--tenants 200] [--binary …]
//!        convergence_bench --cluster --faults [--tenants 200] [--cluster-script scripts/test-cluster.sh]
//!                          [--only apiserver,etcd,exit,leader] [--keep-logs FILE]
//!                          [--fault-flags "--kube-qps 50 --kube-burst 100"]
//!        convergence_bench --serve-fake KUBECONFIG_OUT   (a fake cluster to try --cluster on)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, ResourceExt};
use palisade::crd::{BackupSchedule, RolePolicy, Tenant};
use palisade_testkit::{FakeApiServer, ResourceType, procfs};
use serde_json::{Value, json};

const CONCURRENCY: usize = 16;
/// Label on every Tenant the benchmark creates.
const BENCH_LABEL: &str = "palisade.dev/bench";
/// A short id of this run, in every name the benchmark makes.
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        format!("{:x}", secs % 0x100_0000)
    })
}

/// Tenant name prefixes: the operator's tenants and the floor's objects
/// (`pb<run>-<n>` and `pf<run>-<n>`).
fn operator_prefix(n: usize) -> String {
    format!("pb{}-{n}", run_id())
}
fn floor_prefix(n: usize) -> String {
    format!("pf{}-{n}", run_id())
}
const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// Whether a request writes: a write verb on a stored kind. A review
/// (SelfSubjectReview, SubjectAccessReview, TokenReview, …) is a `create`
/// the API server answers without storing anything: a question, not a write.
fn is_write(verb: &str, resource: &str) -> bool {
    WRITE_VERBS.contains(&verb) && !resource.ends_with("reviews")
}

fn tenant(prefix: &str, i: usize) -> Tenant {
    let name = format!("{prefix}-{i:04}");
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name, "labels": {BENCH_LABEL: "convergence"}},
        "spec": {
            "namespaces": [{"name": format!("{name}-a")}, {"name": format!("{name}-b")}],
            "quota": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi", "pods": "40"}},
            "limits": {"default": {"cpu": "500m", "memory": "256Mi"}},
            "owners": [{"kind": "User", "name": format!("{name}-owner")}],
            "deletionPolicy": "Delete"
        }
    }))
    .expect("tenant")
}

fn fake_server() -> FakeApiServer {
    let s = FakeApiServer::new();
    s.register(ResourceType::of::<Tenant>().with_status(true));
    s.register(ResourceType::of::<RolePolicy>().with_status(true));
    s.register(ResourceType::of::<BackupSchedule>().with_status(true));
    s
}

/// Where the benchmark runs: a fresh in-process API server, or a cluster.
struct Target {
    label: String,
    /// The API server's port: the controller's connections to it are counted.
    api_port: u16,
    client: kube::Client,
    /// Kubeconfig file for the controller process.
    kubeconfig: PathBuf,
    fake: Option<FakeApiServer>,
    _serving: Option<(tokio::task::JoinHandle<()>, tempfile::TempDir)>,
}

impl Target {
    async fn fake() -> anyhow::Result<Self> {
        let server = fake_server();
        let (addr, task) = server.serve_http().await?;
        let text = FakeApiServer::kubeconfig(addr);
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, &text)?;
        let kc = kube::config::Kubeconfig::from_yaml(&text)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(Self {
            label: "in-process API server".into(),
            api_port: addr.port(),
            client: kube::Client::try_from(config)?,
            kubeconfig,
            fake: Some(server),
            _serving: Some((task, dir)),
        })
    }

    async fn cluster() -> anyhow::Result<Self> {
        let kubeconfig: PathBuf = std::env::var_os("KUBECONFIG")
            .context("--cluster needs KUBECONFIG (one file)")?
            .into();
        let config = kube::Config::infer().await?;
        let label = format!("cluster {}", config.cluster_url);
        let api_port = config.cluster_url.port_u16().unwrap_or(443);
        let client = kube::Client::try_from(config)?;
        install_crds(&client).await?;
        let tenants: Api<Tenant> = Api::all(client.clone());
        let existing = tenants
            .list(&ListParams::default())
            .await
            .context("listing Tenants")?;
        let foreign: Vec<String> = existing
            .iter()
            .filter(|t| !t.labels().contains_key(BENCH_LABEL))
            .map(|t| t.name_any())
            .collect();
        if !foreign.is_empty() {
            bail!(
                "the cluster has {} Tenant(s) not made by this benchmark (e.g. {}); its controller would reconcile them: use a dedicated cluster",
                foreign.len(),
                foreign[0]
            );
        }
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::all(client.clone());
        if let Some(l) = leases
            .list(&ListParams::default().fields("metadata.name=palisade-leader"))
            .await?
            .items
            .first()
            && l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_ref())
                .is_some()
        {
            bail!(
                "a Palisade controller holds the leader Lease in namespace {}: scale it to 0 first (two controllers would share the work and the numbers)",
                l.namespace().unwrap_or_default()
            );
        }
        Ok(Self {
            label,
            api_port,
            client,
            kubeconfig,
            fake: None,
            _serving: None,
        })
    }

    /// A target for the floor: a fresh fake (nothing else in it), or the same cluster.
    async fn for_floor(&self) -> anyhow::Result<Self> {
        match self.fake {
            Some(_) => Self::fake().await,
            None => Self::cluster().await,
        }
    }
}

fn ar_of(v: &Value) -> ApiResource {
    let api_version = v["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = v["kind"].as_str().unwrap_or_default();
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn api_for(client: &kube::Client, v: &Value) -> Api<DynamicObject> {
    let ar = ar_of(v);
    match v["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Memory of a process from /proc (KiB).
#[derive(Default, Clone, Copy)]
struct Mem {
    rss: u64,
    peak: u64,
    anon: u64,
    file: u64,
}

fn mem_of(pid: u32) -> Mem {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Field n is at index n - 3 here; the kernel's USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// Requests by "verb resource" (writes) and by verb (reads), from the fake's log.
fn traffic_from_log(
    server: &FakeApiServer,
    mark: palisade_testkit::LogMark,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut writes, mut reads) = (BTreeMap::new(), BTreeMap::new());
    for r in server.log_since(mark) {
        if r.resource == "leases" {
            continue;
        }
        if r.is_write() {
            let sub = r.subresource.map(|s| format!("/{s}")).unwrap_or_default();
            let resource = r.resource.split('.').next().unwrap_or_default();
            *writes
                .entry(format!("{} {resource}{sub}", r.verb.as_str()))
                .or_insert(0) += 1;
        } else {
            *reads.entry(r.verb.as_str().to_string()).or_insert(0) += 1;
        }
    }
    (writes, reads)
}

/// `palisade_api_requests_total` of one controller process, by (verb, resource).
fn requests_from_metrics(text: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("palisade_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        if label("resource") == "leases" {
            continue;
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry((label("verb"), label("resource"))).or_insert(0) += n;
    }
    out
}

fn split_traffic(
    requests: &BTreeMap<(String, String), u64>,
) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut writes, mut reads) = (BTreeMap::new(), BTreeMap::new());
    for ((verb, resource), n) in requests {
        if is_write(verb, resource) {
            *writes.entry(format!("{verb} {resource}")).or_insert(0) += n;
        } else {
            *reads.entry(verb.clone()).or_insert(0) += n;
        }
    }
    (writes, reads)
}

fn managed_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<ResourceQuota>(&()),
        ApiResource::erase::<LimitRange>(&()),
        ApiResource::erase::<Role>(&()),
        ApiResource::erase::<RoleBinding>(&()),
    ]
}

/// What only Palisade changes in a managed object: its resourceVersion, but
/// for a ResourceQuota (whose status the cluster's quota controller rewrites)
/// its spec, labels and annotations.
fn palisade_fingerprint(ar: &ApiResource, o: &DynamicObject) -> String {
    if ar.kind == "ResourceQuota" {
        let part = json!({
            "spec": o.data.get("spec"),
            "labels": o.metadata.labels,
            "annotations": o.metadata.annotations,
        });
        return format!("{:016x}", palisade::resources::stable_hash(&part));
    }
    o.resource_version().unwrap_or_default()
}

/// A fingerprint ([`palisade_fingerprint`]) of every object Palisade manages
/// for the benchmark's tenants.
async fn managed_rvs(client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
    managed_rvs_of(client, &format!("pb{}-", run_id())).await
}

/// [`managed_rvs`] of the tenants whose names start with `prefix`.
async fn managed_rvs_of(
    client: &kube::Client,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=palisade");
    for ar in managed_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        for o in api.list(&lp).await? {
            let ours = o
                .labels()
                .get("palisade.dev/tenant")
                .is_some_and(|t| t.starts_with(prefix));
            if ours {
                out.insert(
                    format!(
                        "{}/{}/{}",
                        ar.plural,
                        o.namespace().unwrap_or_default(),
                        o.name_any()
                    ),
                    palisade_fingerprint(&ar, &o),
                );
            }
        }
    }
    Ok(out)
}

fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .count()
}

/// A Tenant's `Ready` condition is True.
fn tenant_ready(t: &Tenant) -> bool {
    t.status
        .as_ref()
        .is_some_and(|s| palisade::crd::condition::is_true(&s.conditions, "Ready"))
}

fn is_ready(t: &Value) -> bool {
    t["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Waits until every benchmark Tenant is Ready. On the fake this reads the
/// store in-process (only the still-pending tenants, so polling costs the
/// server under test almost nothing); on a cluster it watches them.
async fn wait_all_ready(target: &Target, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let Some(fake) = &target.fake else {
        return watch_all_ready(target, n, timeout).await;
    };
    let start = Instant::now();
    let mut pending: Vec<String> = (0..n)
        .map(|i| format!("{}-{i:04}", operator_prefix(n)))
        .collect();
    while start.elapsed() < timeout {
        // Tenants become Ready in roughly creation order: stop at the first
        // one that is not.
        let done = pending
            .iter()
            .take_while(|name| {
                fake.get_json("tenants.palisade.dev", None, name)
                    .is_some_and(|t| is_ready(&t))
            })
            .count();
        pending.drain(..done);
        if pending.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{} tenant(s) not Ready after {timeout:?}", pending.len())
}

/// [`wait_all_ready`] on a cluster: one watch on the benchmark's Tenants, so
/// the API server sends each status change once. Listing every Tenant four
/// times a second instead (the benchmark until 2026-12-07) made the server
/// encode 5,000 Tenants per list while it served the controller being measured.
async fn watch_all_ready(target: &Target, n: usize, timeout: Duration) -> anyhow::Result<()> {
    use kube::runtime::{WatchStreamExt, watcher};
    let mut pending: std::collections::HashSet<String> = (0..n)
        .map(|i| format!("{}-{i:04}", operator_prefix(n)))
        .collect();
    let api: Api<Tenant> = Api::all(target.client.clone());
    let config = watcher::Config::default().labels(&format!("{BENCH_LABEL}=convergence"));
    let mut tenants = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let deadline = tokio::time::Instant::now() + timeout;
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, tenants.next()).await {
            Err(_) => bail!("{} tenant(s) not Ready after {timeout:?}", pending.len()),
            Ok(None) => bail!("the watch on Tenants ended"),
            // The watcher re-lists after its backoff; the next event says more.
            Ok(Some(Err(e))) => eprintln!("   watching Tenants: {e}"),
            Ok(Some(Ok(t))) => {
                if tenant_ready(&t) {
                    pending.remove(&t.name_any());
                }
            }
        }
    }
    Ok(())
}

struct Floor {
    seconds: f64,
    objects: usize,
}

/// The floor on `target`; on a cluster its objects are removed after it,
/// also when it failed, so the next phase meets the cluster it had before.
async fn floor_on(target: &Target, n: usize, on_cluster: bool) -> anyhow::Result<Floor> {
    let f = floor(&target.for_floor().await?, n).await;
    if let Ok(f) = &f {
        eprintln!("   floor: {} objects in {:.2}s", f.objects, f.seconds);
    }
    if on_cluster {
        eprintln!("   removing the floor's objects");
        remove_floor(target, n).await?;
    }
    f
}

async fn floor(target: &Target, n: usize) -> anyhow::Result<Floor> {
    let mut values = Vec::new();
    for i in 0..n {
        let t = tenant(&floor_prefix(n), i);
        let plan = palisade::resources::rolepolicy::plan_for(&t, &[]);
        let mut objects =
            palisade::resources::tenant::build(&t, &Default::default(), &plan)?.to_values()?;
        // Not Palisade's: the controller started later must not cache them.
        for o in &mut objects {
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = "palisade-bench-floor".into();
        }
        values.push(objects);
    }
    let objects = values.iter().map(Vec::len).sum();
    let client = target.client.clone();
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = stream::iter(values)
        .map(|objs| {
            let client = client.clone();
            async move {
                for v in objs {
                    let name = v["metadata"]["name"].as_str().unwrap_or_default();
                    api_for(&client, &v)
                        .patch(
                            name,
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
    Ok(Floor {
        seconds: start.elapsed().as_secs_f64(),
        objects,
    })
}

struct Controller {
    child: tokio::process::Child,
    admin: String,
}

impl Controller {
    async fn start(binary: &str, target: &Target, resync: &str) -> anyhow::Result<Self> {
        let args = [
            "--leader-election=false",
            "--resync-interval",
            resync,
            "--kube-qps",
            "0",
        ];
        Self::spawn(binary, &target.kubeconfig, &args, &[], None).await
    }

    /// `palisade controller` with `args` (after the admin address and log
    /// format), `env`, and its stderr appended to `log` (else inherited).
    async fn spawn(
        binary: &str,
        kubeconfig: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let admin = format!("127.0.0.1:{port}");
        // Logs (stdout) and panics (stderr) into `log`, if given.
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::inherit()),
        };
        // `PALISADE_LOG=info convergence_bench …` to look into a run.
        let level = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "warn".into());
        let child = tokio::process::Command::new(binary)
            .args(["controller", "--log-format", "text", "--admin-addr", &admin])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("PALISADE_LOG", &level)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("starting the palisade binary (build it with `cargo build --release`)")?;
        Ok(Self { child, admin })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// GET `path` on the admin server: (status code, body).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// A gauge or counter without labels, or summed over the series whose
    /// labels contain `with`.
    async fn metric(&self, name: &str, with: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || (r.starts_with('{') && r.contains(with)))
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    async fn reconciles(&self) -> u64 {
        self.metric("palisade_reconciles_total", "controller=\"tenant\"")
            .await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_for(
            "the controller to be ready",
            Duration::from_secs(120),
            async || self.get("/readyz").await.is_some_and(|(c, _)| c == 200),
        )
        .await
        .map(|_| ())
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
    cond: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    wait_for_every(what, timeout, Duration::from_millis(10), cond).await
}

/// [`wait_for`], checking every `every`: for conditions that list thousands
/// of objects, where polling hard slows what is awaited.
async fn wait_for_every(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl AsyncFnMut() -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(every).await;
    }
    bail!("timed out waiting for {what}")
}

/// Writes since `mark` (fake) or in the controller's metrics since `before`.
fn writes_since(
    target: &Target,
    mark: Option<palisade_testkit::LogMark>,
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
) -> u64 {
    match (&target.fake, mark) {
        (Some(fake), Some(mark)) => traffic_from_log(fake, mark).0.values().sum(),
        _ => after
            .iter()
            .filter(|((verb, resource), _)| is_write(verb, resource))
            .map(|(k, n)| n - before.get(k).copied().unwrap_or(0))
            .sum(),
    }
}

impl Run {
    /// What convergence is compared with: the floor, or the mean of the
    /// floors before and after the controller's run.
    fn floor_mean(&self) -> f64 {
        self.floor_after_s
            .map_or(self.floor_s, |after| (self.floor_s + after) / 2.0)
    }

    fn floor_text(&self) -> String {
        match self.floor_after_s {
            Some(after) => format!("{:.2} / {after:.2}", self.floor_s),
            None => format!("{:.2}", self.floor_s),
        }
    }
}

#[derive(Default)]
struct Run {
    target: String,
    n: usize,
    floor_s: f64,
    /// On a cluster: the floor again, after the controller's run and its
    /// cleanup. The machine's speed drifts over minutes, and a later phase
    /// meets a control plane with more history; bracketing the controller's
    /// run with two floors keeps both out of the ratio.
    floor_after_s: Option<f64>,
    floor_objects: usize,
    converge_s: f64,
    writes: BTreeMap<String, u64>,
    reads: BTreeMap<String, u64>,
    reconciles: u64,
    idle: Mem,
    peak_rss_kib: u64,
    /// Established TCP connections from the controller to the API server:
    /// the most seen while converging, and once converged.
    peak_connections: u64,
    connections: u64,
    steady: Mem,
    converge_cpu_s: f64,
    cached_objects: u64,
    cache_bytes: u64,
    resync_writes: u64,
    resync_rv_changes: usize,
    restart_writes: u64,
    restart_rv_changes: usize,
    edit_p50_ms: f64,
    edit_p99_ms: f64,
}

impl Run {
    /// Objects the controller holds: the child caches plus the Tenants.
    fn cached(&self) -> u64 {
        self.cached_objects + self.n as u64
    }

    fn steady_rss_kib(&self) -> u64 {
        self.steady.rss
    }

    fn budget_kib(&self) -> u64 {
        12 * 1024 + 6 * self.cached()
    }

    /// RSS beyond the idle controller's, per cached object.
    fn bytes_per_object(&self) -> u64 {
        self.steady.rss.saturating_sub(self.idle.rss) * 1024 / self.cached().max(1)
    }
}

/// Creates the Tenants `prefix-0000` … of `n`, [`CONCURRENCY`] at a time.
async fn create_tenants(api: &Api<Tenant>, prefix: &str, n: usize) -> anyhow::Result<()> {
    let created: Vec<anyhow::Result<()>> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &tenant(prefix, i))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    created.into_iter().collect()
}

async fn operator(target: &Target, n: usize, binary: &str, edits: usize) -> anyhow::Result<Run> {
    let api: Api<Tenant> = Api::all(target.client.clone());
    let mut run = Run {
        target: target.label.clone(),
        n,
        ..Default::default()
    };

    // The idle controller (nothing to manage): the baseline of bytes per object.
    let idle = Controller::start(binary, target, "10h").await?;
    idle.wait_ready().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.idle = mem_of(idle.pid());
    idle.stop().await;

    create_tenants(&api, &operator_prefix(n), n).await?;
    let mark = target.fake.as_ref().map(FakeApiServer::mark);
    // Longer than convergence takes (about 0.1 s per Tenant on the real
    // server here), or the forced resync lands inside it and its reconciles
    // are counted as convergence's: the 1,000-tenant row once showed 1.63
    // reconciles per Tenant with a 60 s resync and a 98 s convergence.
    // The in-process server converges ten times faster (5,000 tenants in 27 s).
    let per_tenant = if target.fake.is_some() { 40 } else { 4 };
    let resync_every = Duration::from_secs((n as u64 / per_tenant).max(20));
    let controller =
        Controller::start(binary, target, &format!("{}s", resync_every.as_secs())).await?;
    let pid = controller.pid();
    let started = Instant::now();
    let cpu_at_start = cpu_seconds(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let peak_connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, peak_connections) = (peak.clone(), peak_connections.clone());
        let port = target.api_port;
        tokio::spawn(async move {
            for i in 0u64.. {
                peak.fetch_max(mem_of(pid).peak, std::sync::atomic::Ordering::Relaxed);
                // Reading the socket tables costs more than /proc status.
                if i % 4 == 0 {
                    let n = procfs::established_to(pid, port) as u64;
                    peak_connections.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    wait_all_ready(target, n, Duration::from_secs(1800)).await?;
    run.converge_s = started.elapsed().as_secs_f64();
    let cpu_at_ready = cpu_seconds(pid) - cpu_at_start;
    // Let the echoes of our own writes settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = requests_from_metrics(&controller.metrics().await);
    (run.writes, run.reads) = match (&target.fake, mark) {
        (Some(fake), Some(mark)) => traffic_from_log(fake, mark),
        _ => split_traffic(&requests),
    };
    run.reconciles = controller.reconciles().await;
    run.steady = mem_of(pid);
    run.connections = procfs::established_to(pid, target.api_port) as u64;
    run.peak_connections = peak_connections
        .load(std::sync::atomic::Ordering::Relaxed)
        .max(run.connections);
    run.converge_cpu_s = cpu_at_ready;
    run.cached_objects = controller.metric("palisade_cached_objects", "").await;
    run.cache_bytes = controller.metric("palisade_cache_bytes", "").await;

    // Forced resync (the controller's --resync-interval): zero writes, no RV changes.
    let before = managed_rvs(&target.client).await?;
    let mark = target.fake.as_ref().map(FakeApiServer::mark);
    let requests_before = requests_from_metrics(&controller.metrics().await);
    let target_reconciles = controller.reconciles().await + n as u64;
    wait_for("a full resync", resync_every * 3, async || {
        controller.reconciles().await >= target_reconciles
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests_after = requests_from_metrics(&controller.metrics().await);
    run.resync_writes = writes_since(target, mark, &requests_before, &requests_after);
    run.resync_rv_changes = changed(&before, &managed_rvs(&target.client).await?);

    // One edit → both namespaces' quotas updated.
    let mut latencies = Vec::new();
    for e in 0..edits {
        let t = format!("{}-{:04}", operator_prefix(n), e % n);
        let pods = format!("{}", 100 + e);
        let quotas: Vec<Api<ResourceQuota>> = ["a", "b"]
            .iter()
            .map(|x| Api::namespaced(target.client.clone(), &format!("{t}-{x}")))
            .collect();
        let t0 = Instant::now();
        api.patch(&t, &PatchParams::default(), &Patch::Merge(json!({"spec": {"quota": {"hard": {"requests.cpu": "4", "requests.memory": "8Gi", "pods": pods}}}}))).await?;
        wait_for("children updated", Duration::from_secs(30), async || {
            for q in &quotas {
                let hard = q
                    .get_opt("palisade-quota")
                    .await
                    .ok()
                    .flatten()
                    .and_then(|q| q.spec?.hard?.get("pods").cloned());
                if hard.is_none_or(|h| h.0 != pods) {
                    return false;
                }
            }
            true
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
    let before = managed_rvs(&target.client).await?;
    let mark = target.fake.as_ref().map(FakeApiServer::mark);
    let restarted = Controller::start(binary, target, "10h").await?;
    wait_for(
        "the restarted controller to reconcile every tenant",
        Duration::from_secs(600),
        async || restarted.reconciles().await >= n as u64,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let requests_after = requests_from_metrics(&restarted.metrics().await);
    run.restart_writes = writes_since(target, mark, &BTreeMap::new(), &requests_after);
    run.restart_rv_changes = changed(&before, &managed_rvs(&target.client).await?);
    restarted.stop().await;
    Ok(run)
}

/// How long a cleanup of `n` Tenants' objects may take: the namespace
/// controller deletes about 10 namespaces a second here (2 cores).
fn patience(n: usize) -> Duration {
    Duration::from_secs(900.max(n as u64))
}

/// Deletes what the floor applied (its namespaces, and its ClusterRoles and
/// ClusterRoleBindings, which nothing else would remove) and waits until its
/// namespaces are gone: the controller is then measured on the cluster the
/// floor had, not one also holding the floor's objects.
async fn remove_floor(target: &Target, n: usize) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let floor = ListParams::default().labels("app.kubernetes.io/managed-by=palisade-bench-floor");
    let all = DeleteParams::background();
    Api::<ClusterRole>::all(target.client.clone())
        .delete_collection(&all, &floor)
        .await?;
    Api::<ClusterRoleBinding>::all(target.client.clone())
        .delete_collection(&all, &floor)
        .await?;
    let ns: Api<Namespace> = Api::all(target.client.clone());
    for n in ns.list_metadata(&floor).await? {
        let _ = ns.delete(&n.name_any(), &all).await;
    }
    wait_for_every(
        "the floor's namespaces to be gone",
        patience(n),
        Duration::from_secs(2),
        async || {
            ns.list_metadata(&floor)
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await
    .map(|_| ())
}

/// Removes what this run made on a cluster (Tenants are deleted with
/// `deletionPolicy: Delete`, so a controller takes their namespaces) and waits
/// until every namespace of the run is gone.
async fn clean_cluster(target: &Target, binary: &str, n: usize) -> anyhow::Result<()> {
    remove_floor(target, n).await?;
    let api: Api<Tenant> = Api::all(target.client.clone());
    let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=convergence"));
    let controller = Controller::start(binary, target, "10h").await?;
    for t in api.list_metadata(&lp).await? {
        let _ = api.delete(&t.name_any(), &DeleteParams::default()).await;
    }
    let every = Duration::from_secs(2);
    let gone = wait_for_every(
        "the benchmark's Tenants to be deleted",
        patience(n),
        every,
        async || {
            api.list_metadata(&lp)
                .await
                .is_ok_and(|l| l.items.is_empty())
        },
    )
    .await;
    controller.stop().await;
    gone?;
    let ours = [format!("pb{}-", run_id()), format!("pf{}-", run_id())];
    namespaces_gone(&target.client, &ours, patience(n), every).await
}

/// Waits until no namespace's name starts with one of `prefixes`, listing
/// them every `every`.
async fn namespaces_gone(
    client: &kube::Client,
    prefixes: &[String],
    timeout: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let ns: Api<Namespace> = Api::all(client.clone());
    let what = format!("the namespaces {prefixes:?}* to be gone");
    wait_for_every(&what, timeout, every, async || {
        ns.list_metadata(&ListParams::default())
            .await
            .is_ok_and(|l| {
                !l.items.iter().any(|n| {
                    prefixes
                        .iter()
                        .any(|p| n.name_any().starts_with(p.as_str()))
                })
            })
    })
    .await
    .map(|_| ())
}

/// Installs (server-side applies) the CRDs on a cluster target.
async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in palisade::crd::all() {
        api.patch(
            &crd.name_any(),
            &PatchParams::apply("palisade-bench").force(),
            &Patch::Apply(&crd),
        )
        .await
        .context("installing the CRDs")?;
    }
    wait_for(
        "the CRDs to be established",
        Duration::from_secs(60),
        async || {
            let Ok(list) = api.list(&ListParams::default()).await else {
                return false;
            };
            palisade::crd::all().iter().all(|want| {
                list.items.iter().any(|c| {
                    c.name_any() == want.name_any()
                        && c.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|cs| {
                                cs.iter()
                                    .any(|c| c.type_ == "Established" && c.status == "True")
                            })
                })
            })
        },
    )
    .await
    .map(|_| ())
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

fn report(rows: &[Run]) -> String {
    let mut md = String::new();
    md.push_str("# Palisade performance\n\n");
    md.push_str("Regenerated by `make bench-convergence` (examples/convergence_bench.rs). The controller is the\n");
    md.push_str("release `palisade controller` binary in its own process. Target \"in-process API server\" is the\n");
    md.push_str(
        "testkit fake served over loopback HTTP; \"cluster\" rows are a real kube-apiserver +\n",
    );
    md.push_str("kube-controller-manager (`--cluster`: the local control plane of scripts/test-cluster.sh, or\n");
    md.push_str("`KUBECONFIG`). The floor applies the same rendered objects with a bare kube\n");
    md.push_str(&format!(
        "client (kube's own stack, HTTP/1.1; the controller speaks HTTP/2 to the cluster, its default,\nand HTTP/1.1 to the plain-HTTP fake) at the same concurrency ({CONCURRENCY}), in the same run; on a cluster once before the controller's run and once after it
(and after removing what each made), and convergence is compared with the mean of the two. These rows run\nthe controller with `--kube-qps 0` (unlimited) as the kubeconfig's admin: the shipped\ndefault's row, as a ServiceAccount, is in \"The shipped rate limit\" below.\n\n"
    ));
    md.push_str(&format!(
        "Machine: {}. Date: {}.\n\n",
        machine(),
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d")
    ));
    md.push_str("Each Tenant: 2 namespaces, default-deny + intra-tenant + DNS policies, quota, limits, the five\nbuilt-in roles, one owner (24 managed objects), no generated Secret: its namespaces are annotated\n`palisade.dev/secrets-watched: \"false\"` and cost no Secret or ConfigMap watch (a namespace with\ngenerated Secrets costs two, see docs/SCALING.md). Connections are the controller's established TCP\nconnections to the API server (/proc), over HTTP/2 (the default; `PALISADE_HTTP2=false` in the\nbenchmark's environment measures HTTP/1.1). Targets are from issues #9 and #24.\n\n");
    md.push_str("| target | tenants | managed objects | floor (s): before / after | converge (s) | converge ÷ floor (≤ 1.25) | writes | writes ÷ (objects + 1 status/tenant) (≤ 1.05) | reconciles/tenant (≤ 1.3) | edit p50 / p99 (ms) (p99 ≤ 1000) | resync writes / RV changes (0 / 0) | restart writes / RV changes (0 / 0) | connections to the API server: converging peak / converged (≤ 50) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let writes: u64 = r.writes.values().sum();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.3} | {:.2} | {:.0} / {:.0} | {} / {} | {} / {} | {} / {} |\n",
            r.target,
            r.n,
            r.floor_objects,
            r.floor_text(),
            r.converge_s,
            r.converge_s / r.floor_mean(),
            writes,
            writes as f64 / (r.floor_objects + r.n) as f64,
            r.reconciles as f64 / r.n as f64,
            r.edit_p50_ms,
            r.edit_p99_ms,
            r.resync_writes,
            r.resync_rv_changes,
            r.restart_writes,
            r.restart_rv_changes,
            r.peak_connections,
            r.connections,
        ));
    }
    md.push_str("\n## Memory\n\n");
    md.push_str("Cached objects = the child caches (`palisade_cached_objects`) plus the Tenants. Bytes per object =\n");
    md.push_str("(steady RSS − RSS of the same controller idle, measured first in the same run) ÷ cached objects;\n");
    md.push_str("cache bytes = the caches' own accounting (`palisade_cache_bytes`: compact JSON, keys, index).\n");
    md.push_str(
        "anon = heap and stacks (RssAnon); file = mapped pages of the binary (RssFile).\n\n",
    );
    md.push_str("| target | tenants | cached objects | idle RSS (MiB): anon + file | peak RSS (MiB) | steady RSS (MiB): anon + file | budget 12 MiB + 6 KiB/object (MiB) | RSS bytes/object | cache bytes/object | controller CPU to converge (s) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let mib = |kib: u64| kib as f64 / 1024.0;
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1}: {:.1} + {:.1} | {:.1} | {:.1}: {:.1} + {:.1} | {:.1} ({}) | {} | {} | {:.2} |\n",
            r.target,
            r.n,
            r.cached(),
            mib(r.idle.rss),
            mib(r.idle.anon),
            mib(r.idle.file),
            mib(r.peak_rss_kib),
            mib(r.steady.rss),
            mib(r.steady.anon),
            mib(r.steady.file),
            mib(r.budget_kib()),
            if r.steady_rss_kib() <= r.budget_kib() {
                "met"
            } else {
                "missed"
            },
            r.bytes_per_object(),
            r.cache_bytes / r.cached_objects.max(1),
            r.converge_cpu_s,
        ));
    }
    md.push_str("\n## How to read this\n\n");
    md.push_str("- *converge* runs from starting the controller process (Tenants already created) to every Tenant\n");
    md.push_str("  `Ready`: process start, cache listing and all reconciles. On this machine the controller, the\n");
    md.push_str("  fake API server and the benchmark share the same cores, so the controller's CPU time (last\n");
    md.push_str("  column of the memory table) is what bounds the ratio; the floor's client does no caching,\n");
    md.push_str("  comparing or status work, and the fake serves it no watches.\n");
    md.push_str("- *writes* counts every write the controller made (server-side log; on a cluster the controller's\n");
    md.push_str("  `palisade_api_requests_total`): the managed objects, one status and one finalizer per Tenant.\n");
    md.push_str("- *RV changes* compares the resourceVersion of every managed object before and after (for a\n");
    md.push_str("  ResourceQuota its spec and metadata: the cluster's quota controller rewrites its status).\n");
    md.push_str("- RSS *file* is the binary's mapped code (one binary also carries the backup engine and the S3\n");
    md.push_str("  client); *anon* is what the controller allocates.\n");
    md.push_str("\n## Requests during cold convergence\n\n");
    for r in rows {
        md.push_str(&format!(
            "### {} tenants, {}\n\nWrites by verb and resource:\n\n",
            r.n, r.target
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
    md
}

// ---- #27: the shipped rate limit, and what a fault costs -----------------------------

/// The operator's ServiceAccount the `--rates` and `--faults` runs use: in
/// production Palisade runs as one, so the API server's priority and fairness
/// puts its requests in the `service-accounts` flow schema (priority level
/// `workload-low`), not in the `exempt` level of the kubeconfig's admin.
const OPERATOR_NS: &str = "palisade-system";
const OPERATOR_SA: &str = "palisade";

/// Installs the operator's RBAC (`palisade rbac --yaml`) for
/// `palisade-system/palisade` and writes a kubeconfig with a bound token of
/// that ServiceAccount (`kubectl create token`) into `dir`.
async fn operator_kubeconfig(
    admin: &kube::Client,
    admin_kubeconfig: &std::path::Path,
    dir: &std::path::Path,
    namespace: &str,
    name: &str,
) -> anyhow::Result<PathBuf> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let ssa = PatchParams::apply("palisade-bench").force();
    let nss: Api<Namespace> = Api::all(admin.clone());
    nss.patch(
        namespace,
        &ssa,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        ),
    )
    .await?;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    sas.patch(
        name,
        &ssa,
        &Patch::Apply(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
        ),
    )
    .await?;
    if namespace == OPERATOR_NS && name == OPERATOR_SA {
        for doc in serde_yaml::Deserializer::from_str(&palisade::operator_rbac::to_kustomize_yaml())
        {
            let mut obj: DynamicObject = serde::Deserialize::deserialize(doc)?;
            let types = obj.types.clone().context("apiVersion and kind")?;
            let ar = ApiResource::from_gvk(&GroupVersionKind::try_from(&types)?);
            let api: Api<DynamicObject> = if matches!(types.kind.as_str(), "Role" | "RoleBinding") {
                obj.metadata.namespace = Some(namespace.to_string());
                Api::namespaced_with(admin.clone(), namespace, &ar)
            } else {
                Api::all_with(admin.clone(), &ar)
            };
            api.patch(&obj.name_any(), &ssa, &Patch::Apply(&obj))
                .await
                .with_context(|| format!("applying {} {}", types.kind, obj.name_any()))?;
        }
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(6 * 3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .context("token status")?
        .token;
    let mut kc = kube::config::Kubeconfig::read_from(admin_kubeconfig)?;
    for a in &mut kc.auth_infos {
        a.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc)?)?;
    Ok(path)
}

/// The sum of every series of `name` (a counter, gauge, or a histogram's
/// `_sum`/`_count`) in Prometheus text whose labels contain `with`.
fn prom_sum(text: &str, name: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || (r.starts_with('{') && r.contains(with)))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// The API server's own /metrics (as the admin).
async fn apiserver_metrics(client: &kube::Client) -> String {
    let Ok(req) = http::Request::get("/metrics").body(Vec::new()) else {
        return String::new();
    };
    client.request_text(req).await.unwrap_or_default()
}

/// API Priority and Fairness, from the API server's metrics between two scrapes.
#[derive(Default, Clone, Copy)]
struct Apf {
    /// apiserver_flowcontrol_rejected_requests_total, all priority levels.
    rejected: f64,
    /// The most requests waiting in APF queues at one sample
    /// (apiserver_flowcontrol_current_inqueue_requests, all levels).
    max_inqueue: f64,
    /// Mean queue wait of requests executed at `workload-low` (Palisade's
    /// level) in ms (apiserver_flowcontrol_request_wait_duration_seconds).
    mean_wait_ms: f64,
}

const WAIT_METRIC: &str = "apiserver_flowcontrol_request_wait_duration_seconds";

fn apf_between(before: &str, after: &str, max_inqueue: f64) -> Apf {
    let d = |name: &str, with: &str| prom_sum(after, name, with) - prom_sum(before, name, with);
    let level = "priority_level=\"workload-low\"";
    let sum = d(&format!("{WAIT_METRIC}_sum"), level);
    let count = d(&format!("{WAIT_METRIC}_count"), level);
    Apf {
        rejected: d("apiserver_flowcontrol_rejected_requests_total", ""),
        max_inqueue,
        mean_wait_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
    }
}

/// One batch of benchmark Tenants, named `<prefix>-<i>`.
struct Batch {
    prefix: String,
    n: usize,
}

impl Batch {
    fn new(kind: &str, k: usize, n: usize) -> Self {
        Self {
            prefix: format!("{kind}{}-{k}", run_id()),
            n,
        }
    }

    async fn create(&self, client: &kube::Client) -> anyhow::Result<()> {
        create_tenants(&Api::all(client.clone()), &self.prefix, self.n).await
    }

    /// How many of the batch's Tenants are Ready.
    async fn ready(&self, client: &kube::Client) -> usize {
        let api: Api<Tenant> = Api::all(client.clone());
        let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=convergence"));
        let Ok(list) = api.list(&lp).await else {
            return 0;
        };
        let prefix = format!("{}-", self.prefix);
        list.items
            .iter()
            .filter(|t| t.name_any().starts_with(&prefix) && tenant_ready(t))
            .count()
    }

    /// Managed objects' fingerprints ([`palisade_fingerprint`]).
    async fn rvs(&self, client: &kube::Client) -> anyhow::Result<BTreeMap<String, String>> {
        managed_rvs_of(client, &format!("{}-", self.prefix)).await
    }

    /// Deletes the batch (a controller must run: `deletionPolicy: Delete`)
    /// and waits until its Tenants and their namespaces are gone, so that the
    /// next scenario runs on a cluster as quiet as the baseline's. (Starting
    /// it while the namespace controller still deleted 400 namespaces made
    /// its requests twice as slow as the baseline's: measured, 2026-12-07.)
    async fn delete(&self, client: &kube::Client) -> anyhow::Result<()> {
        let api: Api<Tenant> = Api::all(client.clone());
        for i in 0..self.n {
            let _ = api
                .delete(&format!("{}-{i:04}", self.prefix), &DeleteParams::default())
                .await;
        }
        let prefix = format!("{}-", self.prefix);
        let every = Duration::from_millis(500);
        wait_for_every(
            "the batch's Tenants to be gone",
            Duration::from_secs(900),
            every,
            async || {
                api.list_metadata(&ListParams::default())
                    .await
                    .is_ok_and(|l| !l.items.iter().any(|t| t.name_any().starts_with(&prefix)))
            },
        )
        .await?;
        namespaces_gone(client, &[prefix], Duration::from_secs(900), every).await
    }
}

/// Ready counts over time (seconds since the start, ready Tenants).
#[derive(Default, Clone)]
struct Timeline(Vec<(f64, usize)>);

impl Timeline {
    /// When at least `k` were first Ready.
    fn when(&self, k: usize) -> Option<f64> {
        self.0.iter().find(|(_, r)| *r >= k).map(|(t, _)| *t)
    }
}

/// Polls the batch of `n` every 250 ms until a quarter is Ready (at most 15 minutes
/// after `start`), recording each count in `timeline` when given; the count reached.
async fn quarter_ready(
    client: &kube::Client,
    batch: &Batch,
    n: usize,
    start: Instant,
    mut timeline: Option<&mut Timeline>,
) -> anyhow::Result<usize> {
    loop {
        let r = batch.ready(client).await;
        if let Some(timeline) = timeline.as_mut() {
            timeline.0.push((start.elapsed().as_secs_f64(), r));
        }
        if r >= n / 4 {
            return Ok(r);
        }
        if start.elapsed() > Duration::from_secs(900) {
            bail!("a quarter of the batch never got Ready");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Polls the batch every 250 ms until all are Ready (or 30 minutes), calling
/// `at` with each count (to start a fault at the right moment).
async fn watch_batch(
    client: &kube::Client,
    batch: &Batch,
    start: Instant,
    timeline: &mut Timeline,
) -> anyhow::Result<f64> {
    let timeout = Duration::from_secs(1800);
    while start.elapsed() < timeout {
        let ready = batch.ready(client).await;
        let t = start.elapsed().as_secs_f64();
        timeline.0.push((t, ready));
        if ready >= batch.n {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!(
        "{} tenant(s) of {} not Ready after {timeout:?}",
        batch.n - timeline.0.last().map_or(0, |p| p.1),
        batch.prefix
    )
}

/// One `--rates` row: `qps`/`burst` as flags (None: the shipped defaults).
struct RateRow {
    label: String,
    n: usize,
    converge_s: f64,
    writes: u64,
    apf: Apf,
    probe_p50_ms: f64,
    probe_p99_ms: f64,
}

/// A client of another ServiceAccount creating SelfSubjectReviews every
/// 100 ms: what "other clients" see of the API server meanwhile (the same
/// priority level as Palisade, another flow). Latencies in ms.
fn spawn_probe(client: kube::Client) -> (tokio::task::JoinHandle<Vec<f64>>, CancellationFlag) {
    let stop = CancellationFlag::default();
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let api: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> = Api::all(client);
        let mut out = Vec::new();
        while !flag.is_set() {
            let t0 = Instant::now();
            if api
                .create(&PostParams::default(), &Default::default())
                .await
                .is_ok()
            {
                out.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out
    });
    (task, stop)
}

#[derive(Default, Clone)]
struct CancellationFlag(Arc<std::sync::atomic::AtomicBool>);

impl CancellationFlag {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values
        .get(((values.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Writes in a controller's metrics (leases excluded).
async fn controller_writes(c: &Controller) -> u64 {
    write_breakdown(c).await.values().sum()
}

/// A controller's writes by `verb resource` (leases excluded).
async fn write_breakdown(c: &Controller) -> BTreeMap<String, u64> {
    split_traffic(&requests_from_metrics(&c.metrics().await)).0
}

/// What the `--rates` and `--faults` runs share: the admin client, the
/// operator's kubeconfig, a probe client, a scratch dir for logs.
struct Bench {
    client: kube::Client,
    operator: PathBuf,
    probe: kube::Client,
    binary: String,
    dir: tempfile::TempDir,
    n: usize,
    /// Flags of every controller of the fault scenarios (`--fault-flags`;
    /// empty: the shipped defaults).
    fault_flags: Vec<String>,
}

impl Bench {
    async fn new(binary: &str, n: usize) -> anyhow::Result<Self> {
        let target = Target::cluster().await?;
        let dir = tempfile::tempdir()?;
        let operator = operator_kubeconfig(
            &target.client,
            &target.kubeconfig,
            dir.path(),
            OPERATOR_NS,
            OPERATOR_SA,
        )
        .await?;
        let probe_kc = operator_kubeconfig(
            &target.client,
            &target.kubeconfig,
            dir.path(),
            "default",
            "default",
        )
        .await?;
        let kc = kube::config::Kubeconfig::read_from(&probe_kc)?;
        let probe = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?,
        )?;
        Ok(Self {
            client: target.client,
            operator,
            probe,
            binary: binary.to_string(),
            dir,
            n,
            fault_flags: Vec::new(),
        })
    }

    /// A controller of a fault scenario: [`Bench::controller`] with the
    /// fault flags, then `args`.
    async fn fault_controller(&self, identity: &str, args: &[&str]) -> anyhow::Result<Controller> {
        let mut all: Vec<&str> = self.fault_flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        self.controller(identity, &all).await
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("controllers.log")
    }

    /// A controller as the operator's ServiceAccount with leader election on
    /// (the Lease in palisade-system) and `args`.
    async fn controller(&self, identity: &str, args: &[&str]) -> anyhow::Result<Controller> {
        Controller::spawn(
            &self.binary,
            &self.operator,
            args,
            &[("POD_NAME", identity), ("POD_NAMESPACE", OPERATOR_NS)],
            Some(&self.log()),
        )
        .await
    }

    /// Panics any controller of this run logged.
    fn panics(&self) -> usize {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("panicked") || l.contains("reason=Panic"))
            .count()
    }

    /// Converges a fresh batch with `args`, measuring APF and the probe.
    async fn rate_row(&self, k: usize, label: &str, args: &[&str]) -> anyhow::Result<RateRow> {
        let batch = Batch::new("pr", k, self.n);
        batch.create(&self.client).await?;
        let before = apiserver_metrics(&self.client).await;
        let (probe, stop_probe) = spawn_probe(self.probe.clone());
        let c = self.controller(&format!("rate-{k}"), args).await?;
        let start = Instant::now();
        let max_inqueue = Arc::new(std::sync::Mutex::new(0.0f64));
        let sampler = {
            let (client, max) = (self.client.clone(), max_inqueue.clone());
            tokio::spawn(async move {
                loop {
                    let text = apiserver_metrics(&client).await;
                    let v = prom_sum(&text, "apiserver_flowcontrol_current_inqueue_requests", "");
                    if let Ok(mut m) = max.lock() {
                        *m = m.max(v);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let mut timeline = Timeline::default();
        let converged = watch_batch(&self.client, &batch, start, &mut timeline).await;
        sampler.abort();
        let after = apiserver_metrics(&self.client).await;
        stop_probe.set();
        let mut probes = probe.await.unwrap_or_default();
        let max_inqueue = max_inqueue.lock().map(|m| *m).unwrap_or_default();
        let writes = controller_writes(&c).await;
        let deleted = batch.delete(&self.client).await;
        c.stop().await;
        let converge_s = converged?;
        deleted?;
        Ok(RateRow {
            label: label.to_string(),
            n: self.n,
            converge_s,
            writes,
            apf: apf_between(&before, &after, max_inqueue),
            probe_p50_ms: percentile(&mut probes, 0.5),
            probe_p99_ms: percentile(&mut probes, 0.99),
        })
    }
}

/// One row of the fault table.
struct FaultRow {
    scenario: String,
    target: String,
    /// Seconds from the API answering again (or the kill, or the start) to
    /// the goal (all Ready, or /readyz).
    recover_s: f64,
    /// What the same remaining work took without the fault, in this run.
    baseline_s: Option<f64>,
    /// Seconds from the API answering again (`/readyz`) to the first write
    /// that succeeds: after etcd's restart the API server reconnects to it
    /// first, and nothing can be Ready before that.
    writable_s: Option<f64>,
    writes: String,
    panics: usize,
    met: bool,
}

impl FaultRow {
    fn overhead(&self) -> Option<f64> {
        self.baseline_s.map(|b| self.recover_s - b)
    }
}

/// Seconds until a write through the API server succeeds (a ConfigMap in
/// `default` patched, each try bounded to 1 s), at most 5 minutes.
async fn first_write(client: kube::Client) -> anyhow::Result<f64> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let start = Instant::now();
    let apply = PatchParams::apply("palisade-bench").force();
    while start.elapsed() < Duration::from_secs(300) {
        let probe = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "palisade-bench-write-probe"},
            "data": {"at": format!("{:?}", start.elapsed())}});
        let probe = Patch::Apply(probe);
        let write = api.patch("palisade-bench-write-probe", &apply, &probe);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), write).await {
            return Ok(start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no write succeeded within 5 minutes of the API answering again")
}

/// How the no-fault run converged: its ready timeline and total.
struct Baseline {
    timeline: Timeline,
    total_s: f64,
    writes: u64,
}

impl Baseline {
    /// Seconds the no-fault run needed from `k` Ready to all Ready.
    fn remaining_from(&self, k: usize) -> f64 {
        self.total_s - self.timeline.when(k).unwrap_or(0.0)
    }
}

/// The kubelet's first restart delay of a container that exited
/// (CrashLoopBackOff starts at 10 s).
const KUBELET_BACKOFF: Duration = Duration::from_secs(10);

impl Bench {
    /// Waits until `c` leads (its `palisade_leader` is 1).
    async fn leads(c: &Controller, within: Duration) -> anyhow::Result<Duration> {
        wait_for("a controller to lead", within, async || {
            c.metric("palisade_leader", "").await == 1
        })
        .await
    }

    async fn baseline(&self) -> anyhow::Result<Baseline> {
        let batch = Batch::new("pq", 0, self.n);
        batch.create(&self.client).await?;
        let c = self.fault_controller("baseline", &[]).await?;
        let start = Instant::now();
        let mut timeline = Timeline::default();
        let done = watch_batch(&self.client, &batch, start, &mut timeline).await;
        let writes = controller_writes(&c).await;
        let deleted = batch.delete(&self.client).await;
        c.stop().await;
        let total_s = done?;
        deleted?;
        Ok(Baseline {
            timeline,
            total_s,
            writes,
        })
    }

    /// kube-apiserver or etcd (`what`) killed for `secs` once a quarter of a
    /// fresh batch is Ready; `exit`: the controller runs with
    /// --exit-on-lost-leadership and is restarted like a kubelet would.
    async fn api_fault(
        &self,
        k: usize,
        what: &str,
        secs: u32,
        exit: bool,
        script: &str,
        base: &Baseline,
    ) -> anyhow::Result<FaultRow> {
        let batch = Batch::new("pq", k, self.n);
        batch.create(&self.client).await?;
        let args: &[&str] = if exit {
            &["--exit-on-lost-leadership=true"]
        } else {
            &[]
        };
        let identity = format!("fault-{k}");
        let mut c = self.fault_controller(&identity, args).await?;
        let start = Instant::now();
        let mut timeline = Timeline::default();
        // Until a quarter is Ready.
        let ready_at_kill =
            quarter_ready(&self.client, &batch, self.n, start, Some(&mut timeline)).await?;
        eprintln!("   {ready_at_kill} Ready: killing {what} for {secs} s");
        let mut fault = tokio::process::Command::new(script)
            .args([format!("restart-{what}"), secs.to_string()])
            .kill_on_drop(true)
            .spawn()
            .context("running scripts/test-cluster.sh")?;
        let mut exited_at: Option<Instant> = None;
        let mut restarts = 0;
        let mut back: Option<Instant> = None;
        let mut writable = None;
        let deadline = start + Duration::from_secs(1800);
        let result = loop {
            if back.is_none()
                && let Ok(Some(status)) = fault.try_wait()
            {
                if !status.success() {
                    break Err(anyhow::anyhow!("test-cluster.sh restart-{what} failed"));
                }
                back = Some(Instant::now());
                writable = Some(tokio::spawn(first_write(self.client.clone())));
            }
            // The kubelet: an exited container is started again after its back-off.
            if let Ok(Some(_)) = c.child.try_wait() {
                let at = *exited_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= KUBELET_BACKOFF {
                    c = self.fault_controller(&identity, args).await?;
                    exited_at = None;
                    restarts += 1;
                }
            }
            if let Some(back) = back {
                let r = batch.ready(&self.client).await;
                if r >= self.n {
                    break Ok(back.elapsed().as_secs_f64());
                }
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!(
                    "the batch did not converge after the fault"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let _ = fault.wait().await;
        let writable_s = match writable {
            Some(task) => Some(task.await??),
            None => None,
        };
        let writes = controller_writes(&c).await;
        let deleted = batch.delete(&self.client).await;
        c.stop().await;
        let recover_s = result?;
        deleted?;
        let baseline_s = base.remaining_from(ready_at_kill);
        let mode = if exit {
            format!(
                "exit and restart after the kubelet's {} s back-off ({restarts} restart(s))",
                KUBELET_BACKOFF.as_secs()
            )
        } else {
            "re-campaign in-process (default)".to_string()
        };
        Ok(FaultRow {
            scenario: format!(
                "{what} killed for {secs} s at {ready_at_kill}/{} Ready, one replica: {mode}",
                self.n
            ),
            target: "all Ready ≤ 10 s after the API answers again; overhead ≤ 10 s".into(),
            recover_s,
            baseline_s: Some(baseline_s),
            writable_s,
            writes: if exit {
                format!("{writes} (last process only)")
            } else {
                format!("{writes} (no fault: {})", base.writes)
            },
            panics: self.panics(),
            met: recover_s - baseline_s <= 10.0,
        })
    }

    /// Two replicas; the leader SIGKILLed once a quarter is Ready; then 60 s
    /// of quiet; then SIGTERM + restart of the converged leader.
    async fn leader_faults(
        &self,
        k: usize,
        base: &Baseline,
        lease_s: f64,
    ) -> anyhow::Result<Vec<FaultRow>> {
        let batch = Batch::new("pq", k, self.n);
        batch.create(&self.client).await?;
        let mut a = self.fault_controller("bench-a", &[]).await?;
        let start = Instant::now();
        Self::leads(&a, Duration::from_secs(60)).await?;
        let b = self.fault_controller("bench-b", &[]).await?;
        b.wait_ready().await?;
        let ready_at_kill = quarter_ready(&self.client, &batch, self.n, start, None).await?;
        eprintln!("   {ready_at_kill} Ready: SIGKILL to the leader");
        a.child.start_kill()?;
        let killed = Instant::now();
        let _ = a.child.wait().await;
        let takeover = Self::leads(&b, Duration::from_secs(120)).await?;
        let mut timeline = Timeline::default();
        let converged = watch_batch(&self.client, &batch, killed, &mut timeline).await?;
        let mut rows = vec![FaultRow {
            scenario: format!(
                "leader SIGKILLed at {ready_at_kill}/{} Ready, two replicas: the standby leads after",
                self.n
            ),
            target: format!("≤ lease + 2 s = {:.0} s", lease_s + 2.0),
            recover_s: takeover.as_secs_f64(),
            baseline_s: None,
            writable_s: None,
            writes: "-".into(),
            panics: self.panics(),
            met: takeover.as_secs_f64() <= lease_s + 2.0,
        }];
        let baseline_s = base.remaining_from(ready_at_kill);
        rows.push(FaultRow {
            scenario: "… and all Ready after the kill".into(),
            target: "overhead ≤ lease + 10 s".into(),
            recover_s: converged,
            baseline_s: Some(baseline_s),
            writable_s: None,
            writes: format!("{} (standby's)", controller_writes(&b).await),
            panics: self.panics(),
            met: converged - baseline_s <= lease_s + 10.0,
        });
        // 60 s of quiet: no managed object changes.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = batch.rvs(&self.client).await?;
        let w0 = controller_writes(&b).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let changed_rvs = changed(&before, &batch.rvs(&self.client).await?);
        let w1 = controller_writes(&b).await;
        rows.push(FaultRow {
            scenario: "… then 60 s converged: changed resourceVersions of managed objects".into(),
            target: "0 changed, 0 writes".into(),
            recover_s: 0.0,
            baseline_s: None,
            writable_s: None,
            writes: format!("{} writes, {changed_rvs} changed", w1 - w0),
            panics: self.panics(),
            met: changed_rvs == 0 && w1 == w0,
        });
        // SIGTERM + restart on the converged cluster.
        let before = batch.rvs(&self.client).await?;
        b.stop().await;
        let c = self.fault_controller("bench-c", &[]).await?;
        let t0 = Instant::now();
        c.wait_ready().await?;
        let ready_s = t0.elapsed().as_secs_f64();
        wait_for(
            "the restarted controller to reconcile every tenant",
            Duration::from_secs(600),
            async || c.reconciles().await >= self.n as u64,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let by_kind = write_breakdown(&c).await;
        let writes: u64 = by_kind.values().sum();
        let changed_rvs = changed(&before, &batch.rvs(&self.client).await?);
        // Which writes, when there are any: a row that misses says why.
        let which = by_kind
            .iter()
            .map(|(what, n)| format!("{what}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(FaultRow {
            scenario: "SIGTERM + restart on the converged cluster: /readyz 200 after the start"
                .into(),
            target: "ready ≤ 10 s, 0 writes, 0 changed".into(),
            recover_s: ready_s,
            baseline_s: None,
            writable_s: None,
            writes: if which.is_empty() {
                format!("0 writes, {changed_rvs} changed")
            } else {
                format!("{writes} writes ({which}), {changed_rvs} changed")
            },
            panics: self.panics(),
            met: ready_s <= 10.0 && writes == 0 && changed_rvs == 0,
        });
        batch.delete(&self.client).await?;
        c.stop().await;
        Ok(rows)
    }
}

/// Replaces (or appends) the section that starts at `heading` (up to the
/// next `## `) in `md`.
fn put_section(md: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    match md.find(heading) {
        Some(i) => {
            let rest = &md[i + heading.len()..];
            let end = rest.find("\n## ").map(|j| i + heading.len() + j + 1);
            match end {
                Some(end) => format!("{}{section}\n{}", &md[..i], &md[end..]),
                None => format!("{}{section}", &md[..i]),
            }
        }
        None => format!("{}\n\n{section}", md.trim_end()),
    }
}

const RATES_SECTION: &str = "## The shipped rate limit";
const FAULTS_SECTION: &str = "## Faults";

fn rates_report(rows: &[RateRow]) -> String {
    let mut md = format!("{RATES_SECTION}\n\n");
    md.push_str("`make bench-rates` (`convergence_bench --cluster --rates …`): one batch of Tenants per row,\n");
    md.push_str("converged by the controller with leader election on, **as its ServiceAccount** (so API Priority\n");
    md.push_str("and Fairness puts it in the `workload-low` priority level, as in production), with the flags of\n");
    md.push_str("the row; each batch is deleted before the next. APF figures are read from the API server's\n");
    md.push_str("`/metrics` (admin client): rejected = `apiserver_flowcontrol_rejected_requests_total` (all\n");
    md.push_str("levels), in queue = the most `apiserver_flowcontrol_current_inqueue_requests` in one 1 s sample,\n");
    md.push_str("wait = mean `apiserver_flowcontrol_request_wait_duration_seconds` at `workload-low`. The probe is\n");
    md.push_str("another ServiceAccount (`default/default`, same priority level, another flow) creating a\n");
    md.push_str("SelfSubjectReview every 100 ms: what other clients see meanwhile.\n\n");
    md.push_str(&format!(
        "Machine: {}. Date: {}. Binary: the one `--binary` named.\n\n",
        machine(),
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d")
    ));
    md.push_str("| flags | tenants | converge (s) | ÷ unlimited | writes | writes/s | APF rejected | APF in queue (max) | APF wait, workload-low (ms, mean) | probe p50 / p99 (ms) |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let unlimited = rows
        .iter()
        .find(|r| r.label.contains("--kube-qps 0 "))
        .map(|r| r.converge_s);
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} / {:.0} |\n",
            r.label,
            r.n,
            r.converge_s,
            unlimited.map_or("-".into(), |u| format!("{:.2}", r.converge_s / u)),
            r.writes,
            r.writes as f64 / r.converge_s,
            r.apf.rejected,
            r.apf.max_inqueue,
            r.apf.mean_wait_ms,
            r.probe_p50_ms,
            r.probe_p99_ms,
        ));
    }
    md
}

fn faults_report(
    rows: &[FaultRow],
    base: &Baseline,
    n: usize,
    binary: &str,
    flags: &str,
) -> String {
    let mut md = format!("{FAULTS_SECTION}\n\n");
    md.push_str("`make bench-faults` (`convergence_bench --cluster --faults`, on the local control plane of\n");
    md.push_str("scripts/test-cluster.sh, whose `restart-apiserver`/`restart-etcd` kill -9 the process and start it\n");
    md.push_str(
        "again): the controller with the flags below, leader election on, as its ServiceAccount;\n",
    );
    md.push_str(&format!("a fresh batch of {n} Tenants per scenario. *Recover* counts from the API answering again (or\n"));
    md.push_str("the kill, or the start) to every Tenant Ready (or /readyz 200). *Overhead* = recover − what the\n");
    md.push_str(
        "no-fault run of the same run needed from the same number of Ready Tenants to all Ready.\n",
    );
    md.push_str("*Writable* = from the API answering again (`/readyz`) to the first write through it that\n");
    md.push_str("succeeds (a probe, not the controller): the part of the recovery that is the API server's.\n\n");
    md.push_str(&format!(
        "Machine: {}. Date: {}. Binary: `{binary}`, flags: {flags}. No-fault baseline: {n} Tenants Ready in {:.1} s, {} writes.\n\n",
        machine(),
        k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%d"),
        base.total_s,
        base.writes,
    ));
    md.push_str("| scenario | target | recover (s) | writable (s) | no-fault, same work (s) | overhead (s) | writes | panics | met |\n");
    md.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.target,
            r.recover_s,
            r.writable_s.map_or("-".into(), |w| format!("{w:.1}")),
            r.baseline_s.map_or("-".into(), |b| format!("{b:.1}")),
            r.overhead().map_or("-".into(), |o| format!("{o:.1}")),
            r.writes,
            r.panics,
            if r.met && r.panics == 0 {
                "yes"
            } else {
                "**no**"
            },
        ));
    }
    md
}

/// `--rates 50:100,0:0,…` (qps:burst; `shipped` = no flags) or `--faults`.
async fn rates_and_faults(
    args: &[String],
    binary: &str,
    out: &str,
    n: usize,
) -> anyhow::Result<()> {
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut bench = Bench::new(binary, n).await?;
    if let Some(flags) = arg("--fault-flags") {
        bench.fault_flags = flags.split_whitespace().map(String::from).collect();
    }
    let mut md = std::fs::read_to_string(out).unwrap_or_default();
    if let Some(rates) = arg("--rates") {
        let mut rows = Vec::new();
        for (k, spec) in rates.split(',').enumerate() {
            let (label, flags): (String, Vec<String>) = match spec.split_once(':') {
                Some((q, b)) => (
                    format!("--kube-qps {q} --kube-burst {b} "),
                    vec![
                        "--kube-qps".into(),
                        q.into(),
                        "--kube-burst".into(),
                        b.into(),
                    ],
                ),
                None => ("shipped defaults (no flags)".into(), vec![]),
            };
            eprintln!("== {n} tenants, {label}");
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let row = bench.rate_row(k, label.trim(), &flags).await?;
            eprintln!(
                "   {:.1} s, {} writes, APF rejected {:.0}, in queue ≤ {:.0}, probe p99 {:.0} ms",
                row.converge_s, row.writes, row.apf.rejected, row.apf.max_inqueue, row.probe_p99_ms
            );
            rows.push(row);
        }
        md = put_section(&md, RATES_SECTION, &rates_report(&rows));
    }
    if args.iter().any(|a| a == "--faults") {
        let script = arg("--cluster-script").unwrap_or_else(|| "scripts/test-cluster.sh".into());
        let lease_s = 15.0;
        eprintln!("== faults: no-fault baseline, {n} tenants");
        let base = bench.baseline().await?;
        eprintln!("   {:.1} s", base.total_s);
        let mut rows = Vec::new();
        // `--only etcd,leader` (apiserver, etcd, exit, leader): a subset, to
        // look into one scenario; the report then has only those rows.
        let only = arg("--only");
        let wanted = |name: &str| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|x| x == name))
        };
        for (k, (what, secs, exit)) in [
            ("apiserver", 20, false),
            ("etcd", 15, false),
            ("apiserver", 20, true),
        ]
        .into_iter()
        .enumerate()
        {
            if !wanted(if exit { "exit" } else { what }) {
                continue;
            }
            eprintln!("== faults: {what} for {secs} s (exit: {exit})");
            let row = bench
                .api_fault(k + 1, what, secs, exit, &script, &base)
                .await?;
            eprintln!(
                "   recovered in {:.1} s, overhead {:.1} s",
                row.recover_s,
                row.overhead().unwrap_or_default()
            );
            rows.push(row);
        }
        if wanted("leader") {
            eprintln!("== faults: leader SIGKILL, quiet, SIGTERM + restart");
            rows.extend(bench.leader_faults(9, &base, lease_s).await?);
        }
        // `--keep-logs FILE`: the controllers' logs of every scenario.
        if let Some(keep) = arg("--keep-logs") {
            std::fs::copy(bench.log(), &keep)
                .with_context(|| format!("keeping the logs in {keep}"))?;
        }
        let flags = if bench.fault_flags.is_empty() {
            "the shipped defaults (no flags)".to_string()
        } else {
            format!("`{}`", bench.fault_flags.join(" "))
        };
        md = put_section(
            &md,
            FAULTS_SECTION,
            &faults_report(&rows, &base, n, binary, &flags),
        );
    }
    std::fs::write(out, &md)?;
    println!("{md}");
    Ok(())
}

/// Serves a fake API server with Palisade's CRDs until killed, writing its
/// kubeconfig to `path`: a stand-in cluster to try `--cluster` on.
async fn serve_fake(path: &str) -> anyhow::Result<()> {
    let server = fake_server();
    let (addr, task) = server.serve_http().await?;
    std::fs::write(path, FakeApiServer::kubeconfig(addr))?;
    eprintln!("serving a fake API server at http://{addr}; kubeconfig in {path}");
    task.await?;
    Ok(())
}

/// The heading of the section of docs/PERFORMANCE.md written from
/// `make bench-maxima` (scripts/bench-maxima.sh), kept when this regenerates.
const MAXIMA_SECTION: &str = "## At the documented maxima";

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
    if args.iter().any(|a| a == "--serve-fake") {
        return serve_fake(&arg("--serve-fake", "kubeconfig")).await;
    }
    let sizes: Vec<usize> = arg("--tenants", "100,1000")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let binary = arg("--binary", "target/release/palisade");
    let out = arg("--out", "docs/PERFORMANCE.md");
    let edits: usize = arg("--edits", "100").parse()?;
    let cluster = args.iter().any(|a| a == "--cluster");
    if args.iter().any(|a| a == "--rates" || a == "--faults") {
        let n = arg("--tenants", "200")
            .split(',')
            .find_map(|s| s.parse().ok())
            .unwrap_or(200);
        return rates_and_faults(&args, &binary, &out, n).await;
    }
    let mut rows = Vec::new();
    for on_cluster in [false, true] {
        if on_cluster && !cluster {
            continue;
        }
        for &n in &sizes {
            let target = if on_cluster {
                Target::cluster().await?
            } else {
                Target::fake().await?
            };
            let result = async {
                eprintln!("== {n} tenants on {}: floor", target.label);
                let f = floor_on(&target, n, on_cluster).await?;
                eprintln!("== {n} tenants on {}: palisade controller", target.label);
                let mut r = operator(&target, n, &binary, edits).await?;
                r.floor_s = f.seconds;
                r.floor_objects = f.objects;
                anyhow::Ok(r)
            }
            .await;
            // Before cleaning up: a run of hours (5,000 tenants on the real
            // server: most of it deleting 20,000 namespaces) that is stopped
            // or whose cleanup fails keeps the rows it measured.
            let failed = match result {
                Err(e) => Some(e),
                Ok(r) => {
                    eprintln!(
                        "   converged in {:.2}s ({:.2}x floor), {:.2} reconciles/tenant",
                        r.converge_s,
                        r.converge_s / r.floor_s,
                        r.reconciles as f64 / n as f64
                    );
                    rows.push(r);
                    write_report(&rows, &out)?;
                    None
                }
            };
            if on_cluster {
                // Whatever happened: leave the cluster as it was.
                eprintln!("   cleaning up the cluster");
                clean_cluster(&target, &binary, n).await?;
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if on_cluster && let Some(r) = rows.last_mut() {
                eprintln!("== {n} tenants on {}: floor again", target.label);
                r.floor_after_s = Some(floor_on(&target, n, true).await?.seconds);
                eprintln!(
                    "   converge {:.2}s = {:.2}x the floors' mean",
                    r.converge_s,
                    r.converge_s / r.floor_mean()
                );
                let md = write_report(&rows, &out)?;
                if n == *sizes.last().unwrap_or(&0) {
                    println!("{md}");
                }
            }
        }
    }
    Ok(())
}

/// Writes the report of `rows` to `out`; returns it.
fn write_report(rows: &[Run], out: &str) -> anyhow::Result<String> {
    // The sections `--rates`, `--faults` and `make bench-maxima` fill are
    // kept across regenerations.
    let kept = std::fs::read_to_string(out)
        .ok()
        .and_then(|old| {
            [RATES_SECTION, FAULTS_SECTION, MAXIMA_SECTION]
                .iter()
                .filter_map(|h| old.find(h))
                .min()
                .map(|i| old[i..].to_string())
        })
        .unwrap_or_default();
    let md = if kept.is_empty() {
        report(rows)
    } else {
        format!("{}\n\n{kept}", report(rows).trim_end())
    };
    std::fs::create_dir_all(
        std::path::Path::new(out)
            .parent()
            .unwrap_or(std::path::Path::new(".")),
    )?;
    std::fs::write(out, &md)?;
    Ok(md)
}
