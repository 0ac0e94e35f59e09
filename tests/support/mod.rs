//! Shared harness for controller tests: the real controllers running against the
//! in-process API server from `palisade-testkit`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use palisade::controller::tenant::{self, Context};
use palisade::controller::{Clock, Settings};
use palisade::crd::{BackupRun, BackupSchedule, RolePolicy, Tenant};
use palisade_testkit::{FakeApiServer, ResourceType};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(10);

/// A fake API server with Palisade's kinds registered.
pub fn server() -> FakeApiServer {
    let s = FakeApiServer::new();
    s.register(ResourceType::of::<Tenant>().with_status(true));
    s.register(ResourceType::of::<RolePolicy>().with_status(true));
    s.register(ResourceType::of::<BackupSchedule>().with_status(true));
    s.register(ResourceType::of::<BackupRun>().with_status(true));
    s.set_require_namespaces(true);
    s
}

/// A running Tenant controller.
pub struct Running {
    pub ctx: Arc<Context>,
    resync: tokio::sync::mpsc::UnboundedSender<()>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Running {
    /// Asks the controller to reconcile every Tenant.
    pub fn resync(&self) {
        let _ = self.resync.send(());
    }

    /// [`Running::resync`], then waits until a reconcile has run.
    pub async fn resync_and_wait(&self, server: &FakeApiServer) {
        let before = self.ctx.reconciles();
        self.resync();
        server
            .wait_until(WAIT, |_| self.ctx.reconciles() > before)
            .await
            .expect("resync reconciled the tenant");
    }

    /// Stops the controller and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(WAIT, h).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

pub fn fast_settings() -> Settings {
    Settings {
        backoff: palisade::controller::Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        ..Settings::default()
    }
}

/// Starts the Tenant controller against `server`.
pub fn start(server: &FakeApiServer, clock: Arc<dyn Clock>) -> Running {
    start_with(server, clock, fast_settings())
}

/// [`start`] with other settings.
pub fn start_with(server: &FakeApiServer, clock: Arc<dyn Clock>, settings: Settings) -> Running {
    let client = server.client();
    let (cache, streams) = tenant::child_cache(&client);
    let ctx = Arc::new(Context::new(client, cache, clock, settings));
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let (resync, resync_rx) = tokio::sync::mpsc::unbounded_channel();
    let resync_stream = futures::stream::unfold(resync_rx, |mut rx| async move {
        rx.recv().await.map(|()| ((), rx))
    });
    let handle = tokio::spawn(tenant::run(ctx.clone(), streams, shutdown, resync_stream));
    Running {
        ctx,
        resync,
        stop: Some(tx),
        handle: Some(handle),
    }
}

/// Starts the RolePolicy controller against `server`; stops when dropped.
pub fn start_policies(server: &FakeApiServer, clock: Arc<dyn Clock>) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    let shared = palisade::controller::driver::Shared::new(server.client(), clock, fast_settings());
    tokio::spawn(palisade::controller::rolepolicy::run(shared, async move {
        let _ = rx.await;
    }));
    tx
}

/// Creates the Tenant of `yaml` as a client would; returns it as stored.
pub async fn create_tenant(server: &FakeApiServer, yaml: &str) -> Tenant {
    let api: kube::Api<Tenant> = kube::Api::all(server.client());
    api.create(&kube::api::PostParams::default(), &tenant_from_yaml(yaml))
        .await
        .expect("create tenant")
}

/// The common prologue of a Tenant controller test: the controller started
/// against `server` on `clock`, the Tenant of `yaml` created and `Ready`.
pub async fn start_ready(server: &FakeApiServer, clock: Arc<dyn Clock>, yaml: &str) -> Running {
    let running = start(server, clock);
    let tenant = create_tenant(server, yaml).await;
    wait_ready(server, tenant.metadata.name.as_deref().unwrap_or_default()).await;
    running
}

/// Deletes the Tenant `name` as a client would and waits until it is gone
/// (its finalizer removed).
pub async fn delete_tenant(server: &FakeApiServer, name: &str) {
    let api: kube::Api<Tenant> = kube::Api::all(server.client());
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .expect("delete tenant");
    server
        .wait_for_absent("tenants.palisade.dev", None, name, WAIT)
        .await
        .expect("finalizer removed, tenant gone");
}

/// The writes the server saw since `mark`.
pub fn writes_since(
    server: &FakeApiServer,
    mark: palisade_testkit::LogMark,
) -> Vec<palisade_testkit::RequestRecord> {
    server
        .log_since(mark)
        .into_iter()
        .filter(|r| r.is_write())
        .collect()
}

/// The writes of one forced resync of every tenant, after the watches had
/// time to deliver the controller's own writes (none, for a converged
/// tenant).
pub async fn resync_writes(
    server: &FakeApiServer,
    running: &Running,
) -> Vec<palisade_testkit::RequestRecord> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = server.mark();
    running.resync_and_wait(server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    writes_since(server, mark)
}

/// A condition of any cluster-scoped Palisade object, as JSON.
pub fn condition_of(
    server: &FakeApiServer,
    resource: &str,
    name: &str,
    type_: &str,
) -> Option<Value> {
    let o = server.get_json(resource, None, name)?;
    o.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The status condition `type_` of a tenant, as JSON.
pub fn condition(server: &FakeApiServer, tenant: &str, type_: &str) -> Option<Value> {
    let t = server.get_json("tenants.palisade.dev", None, tenant)?;
    t.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until the tenant's condition has the given status (and reason, if given).
pub async fn wait_condition(
    server: &FakeApiServer,
    tenant: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Value {
    let ok = server
        .wait_until(WAIT, |s| {
            condition(s, tenant, type_)
                .is_some_and(|c| c["status"] == status && reason.is_none_or(|r| c["reason"] == r))
        })
        .await;
    let last = condition(server, tenant, type_);
    assert!(
        ok.is_ok(),
        "tenant {tenant}: condition {type_} never became {status} {reason:?}; last: {last:?}"
    );
    last.unwrap_or(Value::Null)
}

/// Waits until the tenant is Ready and its status describes its current generation.
pub async fn wait_ready(server: &FakeApiServer, tenant: &str) {
    let ok = server
        .wait_until(WAIT, |s| {
            let Some(t) = s.get_json("tenants.palisade.dev", None, tenant) else {
                return false;
            };
            let generation = t.pointer("/metadata/generation").cloned();
            let observed = t.pointer("/status/observedGeneration").cloned();
            generation == observed
                && condition(s, tenant, "Ready").is_some_and(|c| c["status"] == "True")
        })
        .await;
    assert!(
        ok.is_ok(),
        "tenant {tenant} never became Ready: {:?}",
        server.get_json("tenants.palisade.dev", None, tenant)
    );
}

/// Events (events.k8s.io/v1) whose reason is `reason`.
pub fn events_with_reason(server: &FakeApiServer, reason: &str) -> Vec<Value> {
    server
        .list_json("events.events.k8s.io")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// Parses a YAML Tenant.
pub fn tenant_from_yaml(yaml: &str) -> Tenant {
    serde_yaml::from_str(yaml).expect("test tenant YAML")
}

/// Creates the Tenant `name` with one namespace, `<name>-app`.
pub async fn create_app_tenant(server: &FakeApiServer, name: &str) -> Tenant {
    let yaml = format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  namespaces: [{{name: {name}-app}}]\n"
    );
    create_tenant(server, &yaml).await
}

/// A writer that keeps everything written to it (a log subscriber's output).
#[derive(Clone, Default)]
pub struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("capture")).into_owned()
    }
}

/// A manual clock for tests.
pub struct ManualClock(pub std::sync::Mutex<k8s_openapi::jiff::Timestamp>);

impl ManualClock {
    pub fn new(at: k8s_openapi::jiff::Timestamp) -> Arc<Self> {
        Arc::new(Self(std::sync::Mutex::new(at)))
    }
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().expect("clock");
        *t = t
            .checked_add(k8s_openapi::jiff::SignedDuration::try_from(by).expect("duration"))
            .expect("time");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> k8s_openapi::jiff::Timestamp {
        *self.0.lock().expect("clock")
    }
}

pub fn clock() -> Arc<ManualClock> {
    ManualClock::new(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time"))
}

/// Whether `token` verifies with the key of `set` its header's `kid` names (as a
/// service picks it), under the validation `rules` give for the header's algorithm.
pub fn jwt_verifies(
    token: &str,
    set: &jsonwebtoken::jwk::JwkSet,
    rules: impl FnOnce(jsonwebtoken::Algorithm) -> jsonwebtoken::Validation,
) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    let Some(jwk) = header.kid.as_deref().and_then(|k| set.find(k)) else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_jwk(jwk) else {
        return false;
    };
    jsonwebtoken::decode::<Value>(token, &key, &rules(header.alg)).is_ok()
}

/// Awaits a task that must finish within [`WAIT`] (`what` names it when it does
/// not) and returns what it returned.
pub async fn joined<T>(task: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, task)
        .await
        .expect(what)
        .expect("joined")
}

/// The name of the leader-election Lease the runtime tests use.
pub const LEADER_LEASE: &str = "palisade-leader";

/// The leader-election Lease ([`LEADER_LEASE`] in `default`), if there is one.
pub fn leader_lease(server: &FakeApiServer) -> Option<Value> {
    server.get_json("leases.coordination.k8s.io", Some("default"), LEADER_LEASE)
}

/// Merge-patches Tenant `name` with `patch`, as a client other than the
/// controller would.
pub async fn patch_tenant(server: &FakeApiServer, name: &str, patch: Value) {
    kube::Api::<Tenant>::all(server.client())
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch tenant");
}
