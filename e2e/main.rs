//! End-to-end tests against a real cluster through `KUBECONFIG`.
//!
//! `make e2e` starts the local real control plane (scripts/test-cluster.sh:
//! etcd, kube-apiserver, kube-controller-manager, no nodes) unless `KUBECONFIG`
//! is set. Without `PALISADE_E2E=1` every test returns early with a note
//! (skipped, not failed). Each test installs the CRDs (server-side apply), runs
//! the controller in-process, uses unique names, waits on conditions (never a
//! fixed sleep) and cleans up after itself through a [`Cleanup`] guard, also
//! when it fails.
//!
//! There are no nodes: where a test needs a Pod to have run, it acts as the
//! kubelet through the API ([`finish_job_pods`]) and lets the real Job
//! controller finish the Job. Tests that need a real node sit behind
//! `PALISADE_E2E_NODES=1`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{Condition, conditions};
use kube::{Client, Resource, ResourceExt};
use palisade::controller::tenant::{self, Context};
use palisade::controller::{Settings, SystemClock};
use palisade::crd::Tenant;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

#[path = "../tests/support/mod.rs"]
mod support;

mod backup_pod_labels;
mod backup_schedule;
mod connections;
mod crds;
mod diff;
mod diff_modes;
mod fail_closed;
mod fail_closed_policy;
mod faults;
mod gc;
mod kstatus;
mod mtb;
mod operator_confinement;
mod rolepolicy;
mod secrets;
mod self_service;
mod signals;
mod tenant_budget;
mod tenant_lifecycle;

const TIMEOUT: Duration = Duration::from_secs(120);

fn enabled() -> bool {
    if std::env::var("PALISADE_E2E").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipping: set PALISADE_E2E=1 (and KUBECONFIG) to run against a real cluster");
    false
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{:x}", n % 0xffff_ffff)
}

async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in palisade::crd::all() {
        let name = crd.name_any();
        api.patch(
            &name,
            &PatchParams::apply("palisade-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("apply CRD");
        wait(await_condition(
            api.clone(),
            &name,
            conditions::is_crd_established(),
        ))
        .await;
    }
}

/// Deletes what a test made when it goes out of scope, pass or fail: Tenants
/// (their finalizer removed first, since the controller may be gone),
/// namespaces, and cluster-scoped RolePolicies. Runs on its own thread and
/// runtime, so it also works while a failed test unwinds.
#[derive(Default)]
struct Cleanup {
    tenants: Vec<String>,
    namespaces: Vec<String>,
    policies: Vec<String>,
}

impl Cleanup {
    fn tenant(&mut self, name: &str) -> &mut Self {
        self.tenants.push(name.to_string());
        self
    }
    fn namespace(&mut self, name: &str) -> &mut Self {
        self.namespaces.push(name.to_string());
        self
    }
    fn policy(&mut self, name: &str) -> &mut Self {
        self.policies.push(name.to_string());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let tenants = std::mem::take(&mut self.tenants);
        let mut namespaces = std::mem::take(&mut self.namespaces);
        let policies = std::mem::take(&mut self.policies);
        let run = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(client) = Client::try_default().await else {
                    return;
                };
                let dp = DeleteParams::background();
                let tapi: Api<Tenant> = Api::all(client.clone());
                let nsapi: Api<Namespace> = Api::all(client.clone());
                for t in &tenants {
                    // Namespaces the tenant made (or adopted), whatever its policy.
                    let lp = kube::api::ListParams::default()
                        .labels(&format!("palisade.dev/tenant={t}"));
                    if let Ok(list) = nsapi.list_metadata(&lp).await {
                        namespaces.extend(list.items.into_iter().map(|n| n.name_any()));
                    }
                    let _ = tapi
                        .patch(
                            t,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                        )
                        .await;
                    let _ = tapi.delete(t, &dp).await;
                }
                let papi: Api<palisade::crd::RolePolicy> = Api::all(client.clone());
                for p in &policies {
                    let _ = papi.delete(p, &dp).await;
                }
                for ns in &namespaces {
                    let _ = nsapi.delete(ns, &dp).await;
                }
            });
        });
        let _ = run.join();
    }
}

/// Creates a namespace `<prefix>-<unique>` that `cleanup` deletes.
async fn scratch_namespace(client: &Client, prefix: &str, cleanup: &mut Cleanup) -> String {
    let ns = unique(prefix);
    cleanup.namespace(&ns);
    let api: Api<Namespace> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
    )
    .await
    .expect("create namespace");
    ns
}

/// Acts as the kubelet for the Pods of Job `job` (there are no nodes): waits
/// for the real Job controller to create its Pod, then reports through the
/// status subresource that its first container terminated with `exit_code`
/// and `message` (the termination message). The Job controller then
/// completes or fails the Job itself; Job status is never written here.
async fn finish_job_pods(client: &Client, ns: &str, job: &str, exit_code: i32, message: &str) {
    use futures::TryStreamExt;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{WatchStreamExt, watcher};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = wait(async {
        let mut stream = std::pin::pin!(
            watcher(
                pods.clone(),
                watcher::Config::default().labels(&format!("batch.kubernetes.io/job-name={job}")),
            )
            .applied_objects()
        );
        stream.try_next().await.map(|p| p.expect("a pod"))
    })
    .await;
    let spec = pod.spec.clone().expect("pod spec");
    let container = &spec.containers[0];
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (phase, reason) = if exit_code == 0 {
        ("Succeeded", "Completed")
    } else {
        ("Failed", "Error")
    };
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "phase": phase,
            "startTime": now,
            "containerStatuses": [{
                "name": container.name,
                "image": container.image.clone().unwrap_or_default(),
                "imageID": "",
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"terminated": {
                    "exitCode": exit_code, "reason": reason,
                    "startedAt": now, "finishedAt": now, "message": message
                }}
            }]
        }})),
    )
    .await
    .expect("pod status, as the kubelet reports it");
}

/// Waits until `name` satisfies `cond` (`None`: it does not exist), like kube's
/// `await_condition`, except that a failed watch is restarted (with backoff)
/// instead of failing the test: on a real API server a watch can end with
/// `410 Gone` (its resourceVersion compacted away, e.g. while another test
/// reinstalls CRDs), which kube's helper returns as an error.
async fn await_condition<K>(
    api: Api<K>,
    name: &str,
    cond: impl Condition<K>,
) -> Result<Option<K>, std::convert::Infallible>
where
    K: Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + kube::Resource + 'static,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    let mut updates = std::pin::pin!(
        kube::runtime::watcher::watch_object(api, name)
            .default_backoff()
            .filter_map(|update| async move {
                update
                    .inspect_err(|e| eprintln!("watch restarted: {e}"))
                    .ok()
            })
    );
    while let Some(obj) = updates.next().await {
        if cond.matches_object(obj.as_ref()) {
            return Ok(obj);
        }
    }
    // A watch with backoff does not end; if it did, the caller's timeout says so.
    std::future::pending().await
}

async fn wait<T, E: std::fmt::Debug>(fut: impl std::future::Future<Output = Result<T, E>>) -> T {
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("timed out waiting on a condition")
        .expect("watch failed")
}

/// The controller, running in this process until dropped.
struct Controller {
    stop: Option<oneshot::Sender<()>>,
}

impl Controller {
    /// A guard and the shutdown signal of the controller it keeps running: the
    /// signal fires when the guard is dropped.
    fn new() -> (
        Self,
        impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ) {
        let (tx, rx) = oneshot::channel::<()>();
        (Controller { stop: Some(tx) }, async move {
            let _ = rx.await;
        })
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The admin client (for the test's own actions) and a Tenant controller
/// running as the operator's ServiceAccount.
async fn setup() -> (Client, Controller) {
    let (client, operator) = clients().await;
    let (controller, _) = start_controller(&operator);
    (client, controller)
}

/// The admin client (CRDs installed) and the operator's client.
async fn clients() -> (Client, Client) {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at a cluster");
    install_crds(&client).await;
    let operator = operator_client(&client).await;
    (client, operator)
}

/// Whether `user` (in `groups`) may `verb` a `resource`
/// (`plural[.group][/subresource]`) in `namespace` (None: cluster-wide),
/// optionally one object `name`, per the real API server's authorizer: a
/// SubjectAccessReview, what `kubectl auth can-i --as` asks.
async fn can_i(
    client: &Client,
    user: &str,
    groups: &[String],
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_string()),
            groups: (!groups.is_empty()).then(|| groups.to_vec()),
            resource_attributes: Some(ResourceAttributes {
                namespace: namespace.map(str::to_string),
                verb: Some(verb.to_string()),
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                subresource,
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// The operator's ServiceAccount: every controller in this suite runs as it.
const OPERATOR_NS: &str = "palisade-system";
const OPERATOR_SA: &str = "palisade";

/// Installs the operator's RBAC as `palisade rbac --yaml` prints it (the
/// kustomize base; tests/manifests checks that the chart renders the same
/// table): both ClusterRoles, the bindings, the leader-election Role and the
/// admission policy, for the ServiceAccount `palisade` in `palisade-system`.
/// Idempotent (server-side apply); left installed, like the CRDs.
async fn install_operator_rbac(admin: &Client) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::DynamicObject;
    use kube::core::{ApiResource, GroupVersionKind};
    let ssa = PatchParams::apply("palisade-e2e").force();
    let nss: Api<Namespace> = Api::all(admin.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": OPERATOR_NS}})).expect("ns");
    nss.patch(OPERATOR_NS, &ssa, &Patch::Apply(&ns))
        .await
        .expect("operator namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": OPERATOR_SA}
    }))
    .expect("sa");
    sas.patch(OPERATOR_SA, &ssa, &Patch::Apply(&sa))
        .await
        .expect("operator ServiceAccount");
    let yaml = palisade::operator_rbac::to_kustomize_yaml();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let mut obj: DynamicObject = serde::Deserialize::deserialize(doc).expect("rbac document");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("group/version/kind");
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = if matches!(types.kind.as_str(), "Role" | "RoleBinding") {
            obj.metadata.namespace = Some(OPERATOR_NS.to_string());
            Api::namespaced_with(admin.clone(), OPERATOR_NS, &ar)
        } else {
            Api::all_with(admin.clone(), &ar)
        };
        api.patch(&obj.name_any(), &ssa, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {} {}: {e}", types.kind, obj.name_any()));
    }
}

/// A client authenticated as the operator's ServiceAccount (a bound token
/// from the TokenRequest API, as `kubectl create token` gets one), not as
/// the admin of the kubeconfig.
async fn operator_client(admin: &Client) -> Client {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    install_operator_rbac(admin).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(OPERATOR_SA, &PostParams::default(), &request)
        .await
        .expect("token for the operator's ServiceAccount")
        .status
        .expect("token status")
        .token;
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    // Built as the controller binary builds its client (unlimited rate):
    // HTTP/2 on Palisade's connection pool by default; `PALISADE_E2E_HTTP1=1`
    // runs it over kube's HTTP/1.1 stack instead (`--http2=false`).
    let client = palisade::runtime::client::from_config(
        config,
        Arc::new(palisade::metrics::Metrics::new()),
        0.0,
        1,
        std::env::var_os("PALISADE_E2E_HTTP1").is_none(),
    )
    .expect("operator client");
    // RBAC just applied reaches the authorizer within moments.
    let who = wait(async {
        loop {
            let api: Api<k8s_openapi::api::authentication::v1::SelfSubjectReview> =
                Api::all(client.clone());
            match api
                .create(&PostParams::default(), &Default::default())
                .await
            {
                Ok(r) => break Ok::<_, kube::Error>(r),
                Err(e) => {
                    eprintln!("operator token not usable yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(
        who.status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username),
        Some(palisade::operator_rbac::service_account_user(
            OPERATOR_NS,
            OPERATOR_SA
        ))
    );
    client
}

/// Every warning and error the in-process controllers (and kube under them)
/// log in this process, as an operator's alerts would see them; unless
/// `PALISADE_LOG=palisade=debug` sends the log to stderr instead, for a test
/// that needs tracing.
fn warnings() -> &'static support::Capture {
    use palisade::runtime::telemetry;
    static CAPTURE: std::sync::OnceLock<support::Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture = support::Capture::default();
        if std::env::var_os(telemetry::CLI_LOG_ENV).is_some() {
            let _ = telemetry::init_stderr();
        } else {
            let to = capture.clone();
            let s = telemetry::subscriber(telemetry::LogFormat::Text, "warn", move || to.clone())
                .expect("log subscriber");
            let _ = tracing::subscriber::set_global_default(s);
        }
        capture
    })
}

/// Starts the Tenant controller in this process, as the operator's
/// ServiceAccount (`client` must come from [`operator_client`]).
fn start_controller(client: &Client) -> (Controller, Arc<Context>) {
    warnings();
    let (cache, streams) = tenant::child_cache(client);
    let ctx = Arc::new(Context::new(
        client.clone(),
        cache,
        Arc::new(SystemClock),
        // The forced-rotation test annotates a Secret created seconds before; the
        // interval itself is covered by tests/secret_rotation.rs with a clock.
        Settings {
            min_forced_rotation_interval: Duration::ZERO,
            ..Settings::default()
        },
    ));
    let (guard, stop) = Controller::new();
    tokio::spawn(tenant::run(
        ctx.clone(),
        streams,
        stop,
        futures::stream::pending(),
    ));
    (guard, ctx)
}

/// Starts the BackupSchedule controller in this process, as the operator's
/// ServiceAccount; it stops when the returned guard is dropped.
fn start_backup_controller(operator: &Client) -> Controller {
    let (guard, stop) = Controller::new();
    tokio::spawn(palisade::controller::backup_schedule::run(
        operator_shared(operator),
        stop,
    ));
    guard
}

/// Starts the RolePolicy controller in this process, as the operator's
/// ServiceAccount; it stops when the returned guard is dropped.
fn start_policy_controller(operator: &Client) -> Controller {
    let (guard, stop) = Controller::new();
    tokio::spawn(palisade::controller::rolepolicy::run(
        operator_shared(operator),
        stop,
    ));
    guard
}

/// The chassis of the RolePolicy and BackupSchedule controllers, as the operator.
fn operator_shared(operator: &Client) -> palisade::controller::driver::Shared {
    palisade::controller::driver::Shared::new(
        operator.clone(),
        Arc::new(SystemClock),
        Settings::default(),
    )
}

fn tenant_ready(generation_of: Option<i64>) -> impl Fn(Option<&Tenant>) -> bool {
    move |t: Option<&Tenant>| {
        t.and_then(|t| t.status.as_ref()).is_some_and(|s| {
            palisade::crd::condition::is_true(&s.conditions, "Ready")
                && generation_of.is_none_or(|g| s.observed_generation >= Some(g))
        })
    }
}

fn tenant_reason(reason: &'static str) -> impl Fn(Option<&Tenant>) -> bool {
    move |t: Option<&Tenant>| {
        t.and_then(|t| t.status.as_ref())
            .and_then(|s| palisade::crd::condition::find(&s.conditions, "Ready"))
            .is_some_and(|c| c.status == "False" && c.reason == reason)
    }
}

fn sample(name: &str, policy: &str) -> Tenant {
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {
            "forceTenantPrefix": true,
            "namespaces": [{"name": format!("{name}-a")}, {"name": format!("{name}-b")}],
            "quota": {"hard": {"pods": "10", "requests.cpu": "2"}},
            "limits": {"default": {"cpu": "200m", "memory": "128Mi"}},
            "owners": [{"kind": "User", "name": "e2e-owner@example.com"}],
            "deletionPolicy": policy,
        }
    }))
    .expect("tenant")
}

/// Creates `tenant` and waits until it is Ready and kube-controller-manager
/// has given each of its namespaces the `default` ServiceAccount: until then
/// the API server refuses every Pod there (`serviceaccount "default" not
/// found`), which a test creating Pods right away would take for a refusal
/// of its own (on a freshly started control plane that takes a moment).
async fn create_ready(tenants: &Api<Tenant>, tenant: &Tenant) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let name = tenant.name_any();
    tenants
        .create(&PostParams::default(), tenant)
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let client = tenants.clone().into_client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ours = kube::api::ListParams::default()
        .labels(&format!("{}={name}", palisade::resources::labels::TENANT));
    for ns in namespaces
        .list_metadata(&ours)
        .await
        .expect("list namespaces")
    {
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name_any());
        wait(await_condition(
            accounts,
            "default",
            |a: Option<&ServiceAccount>| a.is_some(),
        ))
        .await;
    }
}

/// Starts the Tenant controller ([`setup`]), creates Tenant
/// `<prefix>-<unique>` with one namespace `<name>-a`, `deletionPolicy: Delete`
/// and the fields of `extra` in its spec, and waits until it is Ready: the
/// admin client, `(name, namespace)`, and the cleanup that deletes the Tenant
/// and the controller, both kept until dropped.
async fn one_namespace_ready(
    prefix: &str,
    extra: serde_json::Value,
) -> (Client, (String, String), (Cleanup, Controller)) {
    let (client, controller) = setup().await;
    let mut cleanup = Cleanup::default();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique(prefix);
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let mut spec = json!({"namespaces": [{"name": ns}], "deletionPolicy": "Delete"});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("tenant");
    create_ready(&tenants, &tenant).await;
    (client, (name, ns), (cleanup, controller))
}

/// Merge-patches Tenant `name` with `patch` and waits until it is Ready at
/// the generation the patch made.
async fn edit_ready(tenants: &Api<Tenant>, name: &str, patch: serde_json::Value) -> Tenant {
    let t = tenants
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("edit tenant");
    wait(await_condition(
        tenants.clone(),
        name,
        tenant_ready(t.meta().generation),
    ))
    .await;
    t
}

async fn delete_tenant(client: &Client, name: &str) {
    let api: Api<Tenant> = Api::all(client.clone());
    let uid = api.get(name).await.ok().and_then(|t| t.uid());
    let _ = api.delete(name, &DeleteParams::default()).await;
    if let Some(uid) = uid {
        wait(await_condition(api, name, conditions::is_deleted(&uid))).await;
    }
}

/// [`managed_rvs`] once the cluster's quota controller has written each
/// namespace's quota status (it does so once): from then on only Palisade
/// could move a resourceVersion.
async fn settled_rvs(
    client: &Client,
    namespaces: &[String],
) -> std::collections::BTreeMap<String, String> {
    for ns in namespaces {
        let rq: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
        wait(await_condition(
            rq,
            "palisade-quota",
            |q: Option<&ResourceQuota>| q.and_then(|q| q.status.as_ref()?.used.as_ref()).is_some(),
        ))
        .await;
    }
    managed_rvs(client, namespaces).await
}

/// resourceVersions of every object Palisade manages in `namespaces`.
async fn managed_rvs(
    client: &Client,
    namespaces: &[String],
) -> std::collections::BTreeMap<String, String> {
    use kube::api::{DynamicObject, ListParams};
    let mut out = std::collections::BTreeMap::new();
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=palisade");
    let all: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let n = all.get(ns).await.expect("namespace");
        out.insert(format!("ns/{ns}"), n.resource_version().unwrap_or_default());
        for ar in palisade::controller::cache::tenant_child_kinds()
            .into_iter()
            .filter(|ar| !palisade::controller::cache::is_cluster_scoped(ar))
        {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            for o in api.list(&lp).await.expect("list") {
                out.insert(
                    format!("{}/{ns}/{}", ar.kind, o.name_any()),
                    o.resource_version().unwrap_or_default(),
                );
            }
        }
    }
    // The owners' ClusterRole and binding (cluster-scoped) of the tenants
    // of those namespaces.
    let mut tenants = std::collections::BTreeSet::new();
    for ns in namespaces {
        let n = all.get(ns).await.expect("namespace");
        tenants.extend(n.labels().get("palisade.dev/tenant").cloned());
    }
    for (ar, tenant) in palisade::controller::cache::tenant_child_kinds()
        .into_iter()
        .filter(|ar| ar.kind != "Namespace" && palisade::controller::cache::is_cluster_scoped(ar))
        .flat_map(|ar| tenants.iter().map(move |t| (ar.clone(), t)))
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let lp =
            ListParams::default().labels(&palisade::resources::labels::tenant_selector(tenant));
        for o in api.list(&lp).await.expect("list") {
            out.insert(
                format!("{}/{}", ar.kind, o.name_any()),
                o.resource_version().unwrap_or_default(),
            );
        }
    }
    out
}

/// A minimal Pod the restricted Pod Security level admits (and the
/// `images-pods` admission policy: imagePullPolicy Always); it stays Pending
/// (there are no nodes) and counts against the `pods` quota.
fn pending_pod(name: &str) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c", "image": "registry.invalid/none:1", "imagePullPolicy": "Always",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))
    .expect("pod")
}

/// `palisade diff -o json -f dir`: (exit code, parsed report, raw stdout).
fn run_diff(dir: &std::path::Path, json: bool) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["diff", "-f", dir.to_str().expect("utf-8")];
    if json {
        args.extend(["-o", "json"]);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(&args)
        .output()
        .expect("run palisade diff");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c < 2),
        "palisade diff failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = if json {
        serde_json::from_str(&stdout).expect("JSON report")
    } else {
        serde_json::Value::Null
    };
    (out.status.code(), report, stdout)
}

fn diff_object<'a>(
    report: &'a serde_json::Value,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> &'a serde_json::Value {
    report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .find(|o| o["kind"] == kind && o["name"] == name && o["namespace"].as_str() == ns)
        .unwrap_or_else(|| panic!("{kind} {ns:?}/{name} in the report: {report:#}"))
}
