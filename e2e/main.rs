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

mod backup_pod_labels;
mod diff_modes;
mod fail_closed;
mod fail_closed_policy;
mod faults;
mod mtb;
mod self_service;
mod signals;

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
    let client = Client::try_from(config).expect("operator client");
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

/// Starts the Tenant controller in this process, as the operator's
/// ServiceAccount (`client` must come from [`operator_client`]).
fn start_controller(client: &Client) -> (Controller, Arc<Context>) {
    // `PALISADE_LOG=palisade=debug` shows the in-process controller's log
    // (stderr, redacted as in production) when a test needs tracing.
    if std::env::var_os(palisade::runtime::telemetry::CLI_LOG_ENV).is_some() {
        let _ = palisade::runtime::telemetry::init_stderr();
    }
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
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(tenant::run(
        ctx.clone(),
        streams,
        async move {
            let _ = rx.await;
        },
        futures::stream::pending(),
    ));
    (Controller { stop: Some(tx) }, ctx)
}

/// Starts the BackupSchedule controller in this process, as the operator's
/// ServiceAccount; it stops when the returned guard is dropped.
fn start_backup_controller(operator: &Client) -> Controller {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(palisade::controller::backup_schedule::run(
        operator_shared(operator),
        async move {
            let _ = rx.await;
        },
    ));
    Controller { stop: Some(tx) }
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

/// Creates `tenant` and waits until it is Ready.
async fn create_ready(tenants: &Api<Tenant>, tenant: &Tenant) {
    let name = tenant.name_any();
    tenants
        .create(&PostParams::default(), tenant)
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
}

async fn delete_tenant(client: &Client, name: &str) {
    let api: Api<Tenant> = Api::all(client.clone());
    let uid = api.get(name).await.ok().and_then(|t| t.uid());
    let _ = api.delete(name, &DeleteParams::default()).await;
    if let Some(uid) = uid {
        wait(await_condition(api, name, conditions::is_deleted(&uid))).await;
    }
}

#[tokio::test]
async fn tenant_converges_heals_and_deletes() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let name = unique("e2e");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;

    let ns_a = format!("{name}-a");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces.get(&ns_a).await.expect("namespace");
    assert_eq!(ns.labels().get("palisade.dev/tenant"), Some(&name));
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    let rb: Api<RoleBinding> = Api::namespaced(client.clone(), &ns_a);
    assert!(rb.get("palisade:admin").await.is_ok());

    // Drift: a policy deleted by hand comes back.
    let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_a);
    let old_uid = np
        .get("palisade-default-deny")
        .await
        .expect("default deny")
        .uid();
    np.delete("palisade-default-deny", &DeleteParams::default())
        .await
        .expect("delete");
    wait(await_condition(
        np.clone(),
        "palisade-default-deny",
        move |p: Option<&NetworkPolicy>| p.is_some_and(|p| p.uid() != old_uid),
    ))
    .await;

    // Drift: a quota loosened by hand is restored.
    let rq: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns_a);
    rq.patch(
        "palisade-quota",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"hard": {"pods": "999"}}})),
    )
    .await
    .expect("edit quota");
    wait(await_condition(
        rq.clone(),
        "palisade-quota",
        |q: Option<&ResourceQuota>| {
            q.and_then(|q| q.spec.as_ref()?.hard.as_ref()?.get("pods").cloned())
                .is_some_and(|p| p.0 == "10")
        },
    ))
    .await;

    // Spec edit: a namespace removed from the spec is deleted (Delete policy).
    let t = tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"namespaces": [{"name": ns_a}]}})),
        )
        .await
        .expect("edit");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_ready(t.meta().generation),
    ))
    .await;
    let ns_b = format!("{name}-b");
    let gone = namespaces.get_opt(&ns_b).await.expect("get");
    assert!(
        gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "removed namespace is being deleted"
    );

    delete_tenant(&client, &name).await;
    let a = namespaces.get_opt(&ns_a).await.expect("get");
    assert!(
        a.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "Delete policy deletes the namespaces"
    );
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
            .filter(|ar| ar.kind != "Namespace")
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
    out
}

/// A restarted controller (empty caches, fresh process state) re-derives a
/// converged tenant and writes nothing: no managed object's resourceVersion
/// moves, on the real API server's defaulting and server-side apply.
#[tokio::test]
async fn restarted_controller_changes_nothing() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (controller, _) = start_controller(&operator);
    let name = unique("e2e");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let namespaces = vec![format!("{name}-a"), format!("{name}-b")];
    // The cluster's quota controller writes each quota's status once: wait
    // for it, so only Palisade could move a resourceVersion afterwards.
    for ns in &namespaces {
        let rq: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
        wait(await_condition(
            rq,
            "palisade-quota",
            |q: Option<&ResourceQuota>| q.and_then(|q| q.status.as_ref()?.used.as_ref()).is_some(),
        ))
        .await;
    }
    let before = managed_rvs(&client, &namespaces).await;
    assert!(before.len() >= 2 * 10, "managed objects: {before:#?}");
    drop(controller);

    let (restarted, ctx) = start_controller(&operator);
    let all = tenants
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .len() as u64;
    let start = std::time::Instant::now();
    while ctx.reconciles() < all {
        assert!(
            start.elapsed() < TIMEOUT,
            "the restarted controller never reconciled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stable, not just unchanged once: check for a few seconds.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(managed_rvs(&client, &namespaces).await, before);
    }
    drop(restarted);
    let (_controller, _) = start_controller(&operator);
    delete_tenant(&client, &name).await;
}

#[tokio::test]
async fn retain_policy_keeps_namespaces() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let name = unique("e2r");
    let mut cleanup = Cleanup::default();
    cleanup
        .tenant(&name)
        .namespace(&format!("{name}-a"))
        .namespace(&format!("{name}-b"));
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Retain"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    delete_tenant(&client, &name).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [format!("{name}-a"), format!("{name}-b")] {
        let n = namespaces.get(&ns).await.expect("retained");
        assert_eq!(
            n.labels().get("palisade.dev/released").map(String::as_str),
            Some("true")
        );
        let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        assert!(
            np.get_opt("palisade-default-deny")
                .await
                .expect("get")
                .is_none(),
            "policy objects removed"
        );
        // Palisade keeps no power in a namespace it let go of.
        let rb: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        assert!(
            rb.get_opt(palisade::resources::rbac::OPERATOR_BINDING)
                .await
                .expect("get")
                .is_none(),
            "the operator's RoleBinding was left in a released namespace"
        );
        let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    }
}

#[tokio::test]
async fn invalid_tenants_report_reasons() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique("e2i");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let mut bad = sample(&name, "Delete");
    bad.spec.network.allow_egress_cidrs = vec![palisade::crd::tenant::EgressCidr {
        cidr: "10.0.0.0/33".into(),
        ..Default::default()
    }];
    tenants
        .create(&PostParams::default(), &bad)
        .await
        .expect("create");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("InvalidCidr"),
    ))
    .await;
    delete_tenant(&client, &name).await;

    // A namespace that exists and belongs to nobody is never taken over.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let squatted = scratch_namespace(&client, "e2s", &mut cleanup).await;
    let name = unique("e2c");
    cleanup.tenant(&name);
    let conflict: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"namespaces": [{"name": squatted}], "deletionPolicy": "Delete"}
    }))
    .expect("tenant");
    tenants
        .create(&PostParams::default(), &conflict)
        .await
        .expect("create");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("NamespaceConflict"),
    ))
    .await;
    delete_tenant(&client, &name).await;
    let still = namespaces
        .get(&squatted)
        .await
        .expect("untouched namespace survives");
    assert!(still.labels().get("palisade.dev/tenant").is_none());
    let _ = namespaces.delete(&squatted, &DeleteParams::default()).await;
}

#[tokio::test]
async fn secrets_are_created_rotated_on_demand_and_published_as_jwks() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let (client, _controller) = setup().await;
    let name = unique("e2k");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": ns}],
            "deletionPolicy": "Delete",
            "secrets": [
                {"name": "api-key", "type": "Random", "rotateEvery": "720h"},
                {"name": "signing", "type": "JwtSigningKey", "algorithm": "EdDSA", "rotateEvery": "720h", "keepPrevious": 1}
            ]
        }
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let version = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("version"))
            .map(|v| v.0.clone())
    };
    let first = secrets.get("api-key").await.expect("secret");
    assert_eq!(version(&first).as_deref(), Some(&b"v1"[..]));
    let signing = secrets.get("signing").await.expect("signing key");
    let kid1 =
        String::from_utf8(signing.data.as_ref().expect("data")["kid"].0.clone()).expect("kid");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let jwks = cms.get("signing-jwks").await.expect("jwks");
    let doc: serde_json::Value =
        serde_json::from_str(&jwks.data.expect("data")["jwks.json"]).expect("json");
    assert_eq!(doc["keys"][0]["kid"], kid1.as_str());
    assert_eq!(doc["keys"][0]["alg"], "EdDSA");
    assert_eq!(doc["keys"][0]["use"], "sig");

    // Forced rotation of the signing key: the JWKS keeps the previous key.
    secrets
        .patch(
            "signing",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"palisade.dev/rotate-now": "true"}}}),
            ),
        )
        .await
        .expect("annotate");
    let kid_before = kid1.clone();
    wait(await_condition(
        secrets.clone(),
        "signing",
        move |s: Option<&Secret>| {
            s.and_then(|s| {
                s.data
                    .as_ref()?
                    .get("kid")
                    .map(|k| k.0 != kid_before.as_bytes())
            })
            .unwrap_or(false)
        },
    ))
    .await;
    let kid1_for_wait = kid1.clone();
    wait(await_condition(
        cms.clone(),
        "signing-jwks",
        move |c: Option<&ConfigMap>| {
            c.and_then(|c| c.data.as_ref()?.get("jwks.json").cloned())
                .is_some_and(|j| j.matches("\"kid\"").count() == 2 && j.contains(&kid1_for_wait))
        },
    ))
    .await;
    let rotated = secrets.get("signing").await.expect("secret");
    assert!(
        !rotated
            .annotations()
            .contains_key("palisade.dev/rotate-now"),
        "annotation cleared"
    );
    delete_tenant(&client, &name).await;
}

#[tokio::test]
async fn ttl_garbage_collection_of_configmaps_and_finished_jobs() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::ConfigMap;
    let (client, _controller) = setup().await;
    let name = unique("e2g");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": ns}],
            "deletionPolicy": "Delete",
            "garbageCollection": {
                "rules": [
                    {"name": "finished-jobs", "kinds": ["Job"], "maxAge": "5s", "ageFrom": "Completion"},
                    {"name": "scratch", "kinds": ["ConfigMap"], "selector": {"matchLabels": {"e2e": "scratch"}}, "maxAge": "8s"}
                ]
            }
        }
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let expires = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(6))
        .expect("time")
        .to_string();
    let mut created = Vec::new();
    for (cm_name, labels, annotations) in [
        ("ttl", json!({}), json!({"palisade.dev/ttl": "4s"})),
        (
            "expires",
            json!({}),
            json!({"palisade.dev/expires": expires}),
        ),
        ("scratch", json!({"e2e": "scratch"}), json!({})),
        (
            "kept",
            json!({"e2e": "scratch"}),
            json!({"palisade.dev/keep": "true"}),
        ),
        ("invalid", json!({}), json!({"palisade.dev/ttl": "soon"})),
        ("plain", json!({}), json!({})),
    ] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": cm_name, "labels": labels, "annotations": annotations},
            "data": {"k": "v"},
        }))
        .expect("configmap");
        let cm = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("create cm");
        created.push((cm_name, cm.uid().expect("uid")));
    }

    // A Job (restricted Pod Security profile) whose Pod this test reports as
    // finished, as the kubelet would; the real Job controller completes it.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "done"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Always", "command": ["true"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }}}
    }))
    .expect("job");
    let job = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let job_uid = job.uid().expect("uid");
    finish_job_pods(&client, &ns, "done", 0, "").await;
    wait(await_condition(
        jobs.clone(),
        "done",
        conditions::is_job_completed(),
    ))
    .await;
    wait(await_condition(
        jobs.clone(),
        "done",
        conditions::is_deleted(&job_uid),
    ))
    .await;

    for (cm_name, uid) in &created {
        // palisade.dev/keep does not exempt from the rule (issue #30).
        if ["ttl", "expires", "scratch", "kept"].contains(cm_name) {
            wait(await_condition(
                cms.clone(),
                cm_name,
                conditions::is_deleted(uid),
            ))
            .await;
        }
    }
    for survivor in ["invalid", "plain"] {
        assert!(
            cms.get_opt(survivor).await.expect("get").is_some(),
            "{survivor} must survive"
        );
    }
    wait(await_condition(
        tenants.clone(),
        &name,
        |t: Option<&Tenant>| {
            t.and_then(|t| t.status.as_ref()?.garbage_collection.as_ref())
                .is_some_and(|g| g.deleted >= 5)
        },
    ))
    .await;
    delete_tenant(&client, &name).await;
}

/// BackupSchedule: a due schedule becomes a Job with the right spec; when its
/// Pod terminates with the JSON result (reported as the kubelet would) and the
/// real Job controller completes the Job, the schedule's status shows the
/// snapshot. The run Pod is pinned to a node that does not exist.
#[tokio::test]
async fn backup_schedule_job_spec_and_simulated_completion() {
    if !enabled() {
        return;
    }
    use futures::TryStreamExt;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::{WatchStreamExt, watcher};
    use palisade::crd::BackupSchedule;

    let (client, operator) = clients().await;
    let _controller = start_backup_controller(&operator);
    // Backups run in tenant namespaces: that is where Palisade may read the
    // credentials Secret and create Jobs (crate::operator_rbac).
    let (_tenants, _) = start_controller(&operator);
    let name = unique("e2b");
    let ns = format!("{name}-a");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("create tenant");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "db"}, "stringData": {"password": "e2e-password"}
            }))
            .expect("secret"),
        )
        .await
        .expect("create secret");
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns);
    let bs: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "* * * * *",
            "postgres": {"host": "db", "database": "app", "user": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "destination": {"path": "/backups"},
            "jobTemplate": {"nodeSelector": {"palisade.dev/e2e": "no-such-node"},
                            "activeDeadlineSeconds": 600},
        }
    }))
    .expect("schedule");
    schedules
        .create(&PostParams::default(), &bs)
        .await
        .expect("create schedule");

    // Schedule → Job (within a minute).
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait(async {
        let mut stream = std::pin::pin!(
            watcher(
                jobs.clone(),
                watcher::Config::default().labels("palisade.dev/backup-schedule=nightly"),
            )
            .applied_objects()
        );
        stream.try_next().await.map(|j| j.expect("a job"))
    })
    .await;
    let job_name = job.name_any();

    // The run Pods may reach DNS and PostgreSQL under default-deny: the
    // schedule's egress NetworkPolicy, accepted by the real API server.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let egress = policies
        .get("nightly-backup-egress")
        .await
        .expect("egress NetworkPolicy");
    let pod_labels = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = egress
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the egress policy selects the run pods: {selector:?} vs {pod_labels:?}"
    );
    assert!(job_name.starts_with("nightly-"), "{job_name}");
    assert_eq!(
        job.owner_references()[0].kind,
        "BackupSchedule",
        "owned by the schedule"
    );
    let spec = job.spec.clone().expect("spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    let pod_spec = spec.template.spec.expect("pod spec");
    let c = &pod_spec.containers[0];
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.starts_with("backup run --config /etc/palisade/backup.yaml --output json"),
        "{args}"
    );
    assert!(!args.contains("e2e-password"));
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert!(
        pod_spec.volumes.unwrap_or_default().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("db"))
    );

    // Completion: this test reports the Job's own Pod as terminated with the
    // JSON result as its termination message (as the kubelet would); the real
    // Job controller completes the Job.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let message = format!(
        r#"{{"op":"run","ok":true,"id":"e2e-snap","key":"/backups/e2e-snap.pgsnap","time":"{now}","bytes":2048,"sha256":"00ff","durationSeconds":1.5}}"#
    );
    finish_job_pods(&client, &ns, &job_name, 0, &message).await;
    wait(await_condition(
        jobs.clone(),
        &job_name,
        conditions::is_job_completed(),
    ))
    .await;

    wait(await_condition(
        schedules.clone(),
        "nightly",
        |b: Option<&BackupSchedule>| {
            b.and_then(|b| b.status.as_ref())
                .and_then(|s| s.last_successful_backup.as_ref())
                .is_some_and(|r| r.id == "e2e-snap" && r.bytes == 2048)
        },
    ))
    .await;
    let st = schedules
        .get("nightly")
        .await
        .expect("schedule")
        .status
        .expect("status");
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "LastBackupSucceeded" && c.status == "True")
    );
    assert!(st.last_schedule_time.is_some() && st.next_schedule_time.is_some());
    drop(namespaces);
    delete_tenant(&client, &name).await;
}

/// A RolePolicy produces working RBAC: a SubjectAccessReview for a bound user
/// says yes to the granted verbs and no to everything else.
#[tokio::test]
async fn rolepolicy_grants_exactly_what_it_says() {
    if !enabled() {
        return;
    }
    use palisade::crd::RolePolicy;
    let (client, operator) = clients().await;
    let (_controller, _) = start_controller(&operator);
    let stop = {
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(palisade::controller::rolepolicy::run(
            operator_shared(&operator),
            async move {
                let _ = rx.await;
            },
        ));
        tx
    };
    let name = unique("e2p");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name).policy(&name);
    let ns = format!("{name}-a");
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("tenant");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let user = format!("{name}-deployer@example.com");
    let policy: RolePolicy = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy", "metadata": {"name": name},
        "spec": {
            "tenants": [name],
            "roles": [{"name": "deployer", "permissions": ["workloads:write", "config:read"]}],
            "bindings": [{"role": "deployer", "subjects": [{"kind": "User", "name": user}]}]
        }
    }))
    .expect("policy");
    let policies: Api<RolePolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");
    let rb: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    wait(await_condition(
        rb,
        "palisade:deployer",
        |b: Option<&RoleBinding>| b.is_some(),
    ))
    .await;

    let can = |verb: &'static str, group: &'static str, resource: &'static str| {
        let (client, user, ns) = (client.clone(), user.clone(), ns.clone());
        async move {
            let resource = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            can_i(&client, &user, &[], verb, &resource, Some(&ns), None).await
        }
    };
    assert!(
        can("create", "apps", "deployments").await,
        "granted: workloads:write"
    );
    assert!(can("get", "", "configmaps").await, "granted: config:read");
    assert!(!can("get", "", "secrets").await, "not granted: secrets");
    assert!(
        !can("create", "rbac.authorization.k8s.io", "rolebindings").await,
        "not granted: RBAC"
    );
    assert!(!can("delete", "", "configmaps").await, "read-only config");

    // An escalating edit is refused and the RBAC stays as it was.
    policies
        .patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"roles": [{"name": "deployer", "permissions": ["workloads:write"], "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]}]}})))
        .await
        .expect("edit");
    wait(await_condition(
        policies.clone(),
        &name,
        |p: Option<&RolePolicy>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| palisade::crd::condition::find(&s.conditions, "Valid"))
                .is_some_and(|c| c.status == "False" && c.reason == "WildcardVerb")
        },
    ))
    .await;
    assert!(
        !can("get", "", "secrets").await,
        "an invalid policy grants nothing new"
    );
    let _ = policies.delete(&name, &DeleteParams::default()).await;
    delete_tenant(&client, &name).await;
    let _ = stop.send(());
}

/// The kind's API resource, for applying YAML documents of Palisade's kinds.
fn palisade_resource(kind: &str) -> Option<(kube::core::ApiResource, bool)> {
    use palisade::crd::{BackupRun, BackupSchedule, RolePolicy};
    Some(match kind {
        "BackupRun" => (kube::core::ApiResource::erase::<BackupRun>(&()), true),
        "Tenant" => (kube::core::ApiResource::erase::<Tenant>(&()), false),
        "RolePolicy" => (kube::core::ApiResource::erase::<RolePolicy>(&()), false),
        "BackupSchedule" => (kube::core::ApiResource::erase::<BackupSchedule>(&()), true),
        _ => return None,
    })
}

/// Every `x-kubernetes-validations` message in a CRD's schemas.
fn rule_messages(crd: &CustomResourceDefinition) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(rules) = m.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r["message"].as_str().map(str::to_string)),
                    );
                }
                m.values().for_each(|c| walk(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(crd).expect("crd json"), &mut out);
    out
}

/// Every generated CRD (crds/, the chart's copy, the kustomize base's copy) is
/// accepted by the real API server (CEL cost budget included), every sample
/// under config/samples/ is accepted, and every CEL rule of every CRD refuses
/// an object that breaks it with that rule's message. A rule added without an
/// invalid object here fails this test.
#[tokio::test]
async fn crds_and_samples_install_and_every_cel_rule_refuses() {
    if !enabled() {
        return;
    }
    use kube::api::DynamicObject;
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at a cluster");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for dir in ["crds", "charts/palisade/crds", "config/default/crds"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("crd dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 4, "{dir} holds the four CRDs");
        for file in files {
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&file).expect("read"))
                    .expect("CRD YAML");
            let name = crd.name_any();
            if let Err(e) = crd_api
                .patch(
                    &name,
                    &PatchParams::apply("palisade-e2e").force(),
                    &Patch::Apply(&crd),
                )
                .await
            {
                panic!("the API server refused {}: {e}", file.display());
            }
            wait(await_condition(
                crd_api.clone(),
                &name,
                conditions::is_crd_established(),
            ))
            .await;
        }
    }

    let mut cleanup = Cleanup::default();
    let ns = scratch_namespace(&client, "e2v", &mut cleanup).await;
    let api_for = |kind: &str| -> Api<DynamicObject> {
        let (ar, namespaced) = palisade_resource(kind).unwrap_or_else(|| panic!("kind {kind}"));
        if namespaced {
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        }
    };
    let dry_create = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // Samples: every document of every file, as a server-side dry run (the
    // namespaced ones in this test's namespace).
    let mut samples = 0;
    let mut dir: Vec<_> = std::fs::read_dir(root.join("config/samples"))
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .collect();
    dir.sort();
    for file in dir {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("YAML");
            if value.is_null() {
                continue;
            }
            let mut obj: DynamicObject = serde_json::from_value(value).expect("object");
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            obj.metadata.namespace = None;
            if let Err(e) = api_for(&kind).create(&dry_create, &obj).await {
                panic!("sample {} ({kind}) refused: {e}", file.display());
            }
            samples += 1;
        }
    }
    assert!(samples >= 1, "config/samples/ holds objects");

    // One invalid object per rule: (kind, message, object).
    let tenant = |spec: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
               "metadata": {"name": unique("e2v")}, "spec": spec})
    };
    let policy = |spec: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
               "metadata": {"name": unique("e2v")}, "spec": spec})
    };
    let schedule = |destination: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
               "metadata": {"name": "bad"}, "spec": {
                   "schedule": "0 3 * * *",
                   "postgres": {"host": "db", "database": "app", "user": "backup",
                                "passwordSecretRef": {"name": "db", "key": "password"}},
                   "destination": destination}})
    };
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "Tenant",
            "spec.forceTenantPrefix is set",
            tenant(json!({"forceTenantPrefix": true, "namespaces": [{"name": "elsewhere"}]})),
        ),
        (
            "Tenant",
            "namespace is required for ServiceAccount owners",
            tenant(json!({"owners": [{"kind": "ServiceAccount", "name": "deployer"}]})),
        ),
        (
            "Tenant",
            "algorithm is required for type JwtSigningKey",
            tenant(
                json!({"secrets": [{"name": "k", "type": "JwtSigningKey", "rotateEvery": "720h"}]}),
            ),
        ),
        (
            "Tenant",
            "an empty allowFromNamespaces selector admits every namespace",
            tenant(json!({"network": {"allowFromNamespaces": [{}]}})),
        ),
        (
            "Tenant",
            "an allowEgressCidrs entry of 0.0.0.0/0 or ::/0",
            tenant(json!({"network": {"allowEgressCidrs": [{"cidr": "::/0"}]}})),
        ),
        (
            "Tenant",
            "a rule needs maxAge, keepLast or both",
            tenant(json!({"garbageCollection": {"rules": [{"name": "r", "kinds": ["Job"]}]}})),
        ),
        (
            "RolePolicy",
            "use either tenantSelector or tenants, not both",
            policy(json!({"tenantSelector": {}, "tenants": ["a"]})),
        ),
        (
            "RolePolicy",
            "token can only be requested for ServiceAccount subjects",
            policy(
                json!({"bindings": [{"role": "viewer", "token": {"ttl": "15m"},
                          "subjects": [{"kind": "User", "name": "u"}]}]}),
            ),
        ),
        (
            "RolePolicy",
            "reserved role name",
            policy(json!({"roles": [{"name": "operator", "permissions": ["config:read"]}]})),
        ),
        (
            "RolePolicy",
            "reserved role name",
            policy(
                json!({"bindings": [{"role": "operator", "subjects": [{"kind": "User", "name": "u"}]}]}),
            ),
        ),
        (
            "BackupSchedule",
            "exactly one of s3, persistentVolumeClaim or path",
            schedule(json!({"path": "/b", "persistentVolumeClaim": {"claimName": "c"}})),
        ),
        (
            "BackupSchedule",
            "kmsKeyId is only allowed with serverSideEncryption: aws:kms",
            schedule(json!({"s3": {"bucket": "b", "kmsKeyId": "k"}})),
        ),
    ];
    // The transition rule needs an update: a real Tenant (no controller runs
    // here, so it has no finalizer) and a dry-run patch of it.
    let transition = "type is immutable";
    let run_transition = "spec is immutable";
    let mut covered: Vec<&str> = cases.iter().map(|c| c.1).collect();
    covered.push(transition);
    covered.push(run_transition);
    for crd in palisade::crd::all() {
        for message in rule_messages(&crd) {
            assert!(
                covered.iter().any(|c| message.starts_with(c)),
                "CEL rule without an invalid object in this test: {message}"
            );
        }
    }
    for (kind, message, value) in cases {
        let obj: DynamicObject = serde_json::from_value(value).expect("object");
        match api_for(kind).create(&dry_create, &obj).await {
            Err(kube::Error::Api(e)) => assert!(
                e.code == 422 && e.message.contains(message),
                "{kind}: expected 422 with {message:?}, got {} {}",
                e.code,
                e.message
            ),
            other => {
                panic!("{kind}: the API server accepted an object breaking {message:?}: {other:?}")
            }
        }
    }
    let name = unique("e2v");
    cleanup.tenant(&name);
    let tenants = api_for("Tenant");
    let t: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"secrets": [{"name": "k", "type": "Random", "rotateEvery": "720h"}]}
    }))
    .expect("tenant");
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("a valid Tenant is accepted");
    let patch = json!({"spec": {"secrets": [{"name": "k", "type": "JwtSigningKey", "algorithm": "EdDSA", "rotateEvery": "720h"}]}});
    match tenants
        .patch(
            &name,
            &PatchParams::default().dry_run(),
            &Patch::Merge(patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains(transition),
            "expected 422 with {transition:?}, got {} {}",
            e.code,
            e.message
        ),
        other => panic!("a secret's type changed: {other:?}"),
    }
    // A BackupRun is a request: its spec never changes (no controller runs
    // here, so nothing acts on it).
    let runs = api_for("BackupRun");
    let run: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupRun", "metadata": {"name": "once"},
        "spec": {"scheduleName": "nightly", "type": "Backup"}
    }))
    .expect("run");
    runs.create(&PostParams::default(), &run)
        .await
        .expect("a valid BackupRun is accepted");
    match runs
        .patch(
            "once",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"type": "RestoreTest"}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains(run_transition),
            "expected 422 with {run_transition:?}, got {} {}",
            e.code,
            e.message
        ),
        other => panic!("a BackupRun's spec changed: {other:?}"),
    }
}

/// Builds the kstatus helper (e2e/kstatus: cli-utils' `status.Compute`, the
/// library Flux and kstatus-based tooling use) once per run.
fn kstatus_helper() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kstatus-check");
            let go = ["/usr/local/go/bin/go", "go"]
                .into_iter()
                .find(|g| {
                    std::process::Command::new(g)
                        .arg("version")
                        .output()
                        .is_ok()
                })
                .expect("Go is needed for the kstatus helper (e2e/kstatus)");
            let status = std::process::Command::new(go)
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/kstatus"))
                .status()
                .expect("go build");
            assert!(status.success(), "building e2e/kstatus failed");
            out
        })
        .clone()
}

/// kstatus's verdict on the object as the API server has it now: the status
/// (`Current`, `InProgress`, `Failed`, …) and its message.
async fn kstatus_of<K>(client: &Client, name: &str) -> (String, String)
where
    K: Resource<DynamicType = ()>,
{
    use std::io::Write;
    let ar = kube::core::ApiResource::erase::<K>(&());
    let api: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj = api.get(name).await.expect("get object");
    let mut child = std::process::Command::new(kstatus_helper())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run kstatus helper");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(&obj).expect("json"))
        .expect("write object");
    let out = child.wait_with_output().expect("kstatus helper");
    assert!(out.status.success(), "kstatus helper failed");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (status, message) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    (status.to_string(), message.to_string())
}

/// Waits until kstatus says `want` for the Tenant (status writes are not
/// instantaneous after the condition the caller waited on).
async fn wait_kstatus(client: &Client, name: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, message) = kstatus_of::<Tenant>(client, name).await;
        if status == want {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kstatus still says {status} ({message}), want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kstatus_reads_current_in_progress_and_failed() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (controller, _) = start_controller(&operator);
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique("e2k");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    wait_kstatus(&client, &name, "Current").await;

    // `kubectl wait --for=condition=Ready` works on a Tenant.
    let kubectl = std::process::Command::new("kubectl")
        .args(["wait", "--for=condition=Ready", "--timeout=60s"])
        .arg(format!("tenant/{name}"))
        .output()
        .expect("kubectl on PATH (scripts/test-cluster.sh env)");
    assert!(
        kubectl.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&kubectl.stderr)
    );

    // Converging: a spec edit the controller has not seen yet.
    drop(controller);
    let edited = tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"hard": {"pods": "11"}}}})),
        )
        .await
        .expect("edit");
    wait_kstatus(&client, &name, "InProgress").await;
    let (controller, _) = start_controller(&operator);
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_ready(edited.meta().generation),
    ))
    .await;
    wait_kstatus(&client, &name, "Current").await;

    // An invalid spec fails at once: Stalled=True with the reason.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"network": {"allowEgressCidrs": [{"cidr": "10.0.0.0/33"}]}}}),
            ),
        )
        .await
        .expect("break");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("InvalidCidr"),
    ))
    .await;
    let message = wait_kstatus(&client, &name, "Failed").await;
    assert!(message.contains("allowEgressCidrs"), "{message}");
    let t = tenants.get(&name).await.expect("get");
    let conditions = t.status.expect("status").conditions;
    let stalled = palisade::crd::condition::find(&conditions, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidCidr")
    );
    assert!(palisade::crd::condition::find(&conditions, "Reconciling").is_none());

    // Fixed: Stalled disappears (kstatus wants it absent, not False).
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"network": {"allowEgressCidrs": null}}})),
        )
        .await
        .expect("fix");
    wait_kstatus(&client, &name, "Current").await;
    let t = tenants.get(&name).await.expect("get");
    let conditions = t.status.expect("status").conditions;
    assert!(palisade::crd::condition::find(&conditions, "Stalled").is_none());
    delete_tenant(&client, &name).await;
    drop(controller);
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

fn quota_pods(q: &ResourceQuota) -> i64 {
    q.spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .and_then(|h| h.get("pods"))
        .and_then(|p| p.0.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn tenant_budget_hands_out_every_unit_under_concurrent_creation() {
    use k8s_openapi::api::core::v1::Pod;
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique("e2q");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let budget: i64 = 5;
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("{name}-{s}"))
        .collect();
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "quota": {"scope": "Tenant", "hard": {"pods": budget.to_string()}},
            "deletionPolicy": "Delete",
        }
    }))
    .expect("tenant");
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;

    let hard_sum = || {
        let client = client.clone();
        let names = names.clone();
        async move {
            let mut sum = 0;
            for ns in &names {
                let rq: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
                if let Some(q) = rq.get_opt("palisade-quota").await.expect("get quota") {
                    sum += quota_pods(&q);
                }
            }
            sum
        }
    };
    let pod_count = || {
        let client = client.clone();
        let names = names.clone();
        async move {
            let mut n = 0;
            for ns in &names {
                let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                n += pods
                    .list_metadata(&Default::default())
                    .await
                    .expect("list")
                    .items
                    .len() as i64;
            }
            n
        }
    };
    // Idle: 5 pods over 3 namespaces is 1 each plus a remainder of 2 that is
    // not stranded.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hard_sum().await != budget {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sum(hard) never reached the budget"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A burst: four Pods per namespace at once. The quota admits no more than
    // the budget.
    let mut attempts = Vec::new();
    for ns in &names {
        for i in 0..4 {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            attempts.push(async move {
                pods.create(&PostParams::default(), &pending_pod(&format!("burst-{i}")))
                    .await
                    .is_ok()
            });
        }
    }
    let admitted = futures::future::join_all(attempts)
        .await
        .into_iter()
        .filter(|ok| *ok)
        .count() as i64;
    assert!(
        admitted <= budget,
        "admitted {admitted} pods over a budget of {budget}"
    );
    assert!(pod_count().await <= budget);

    // Then one at a time, wherever the quota lets a Pod in, until the budget is
    // used up: the last unit must be usable, and never one more.
    let mut serial = 0;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while pod_count().await < budget {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {} of {budget} pods: a unit of the budget is stranded",
            pod_count().await
        );
        for ns in &names {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            serial += 1;
            let _ = pods
                .create(
                    &PostParams::default(),
                    &pending_pod(&format!("one-{serial}")),
                )
                .await;
        }
        assert!(pod_count().await <= budget, "over budget");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pod_count().await, budget);
    for ns in &names {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let refused = pods
            .create(&PostParams::default(), &pending_pod("one-too-many"))
            .await;
        assert!(
            refused.is_err(),
            "a pod beyond the budget was admitted in {ns}"
        );
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hard_sum().await != budget {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sum(hard) != budget at full use"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    delete_tenant(&client, &name).await;
}

/// What the operator's ServiceAccount may do, asked of the real API server's
/// authorizer (a SubjectAccessReview per row, what `kubectl auth can-i --as`
/// asks): nothing of the review's table outside tenant namespaces, what it
/// needs inside them. Then what RBAC cannot say: with its own token, the
/// operator is refused by the admission policy when it binds itself in a
/// namespace it does not manage or relabels one.
#[tokio::test]
async fn operator_is_confined_to_tenant_namespaces() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_controller, _) = start_controller(&operator);
    let name = unique("e2r");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &sample(&name, "Delete"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let tenant_ns = format!("{name}-a");

    let user = palisade::operator_rbac::service_account_user(OPERATOR_NS, OPERATOR_SA);
    let groups = [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{OPERATOR_NS}"),
        "system:authenticated".to_string(),
    ];
    let can =
        |verb: &'static str, resource: &'static str, ns: Option<String>, name: Option<String>| {
            let (client, user, groups) = (client.clone(), user.clone(), groups.clone());
            async move {
                can_i(
                    &client,
                    &user,
                    &groups,
                    verb,
                    resource,
                    ns.as_deref(),
                    name.as_deref(),
                )
                .await
            }
        };
    let ks = || Some("kube-system".to_string());
    let mut table = String::from("| request | answer |\n|---|---|\n");
    // The review's rows: all no.
    for (verb, resource, ns, obj, label) in [
        ("get", "secrets", ks(), None, "get secrets -n kube-system"),
        ("list", "secrets", None, None, "list secrets -A"),
        ("create", "pods", ks(), None, "create pods -n kube-system"),
        (
            "create",
            "pods/exec",
            ks(),
            None,
            "create pods/exec -n kube-system",
        ),
        (
            "delete",
            "deployments.apps",
            ks(),
            None,
            "delete deployments -n kube-system",
        ),
        (
            "patch",
            "deployments.apps",
            ks(),
            None,
            "patch deployments -n kube-system",
        ),
        (
            "delete",
            "configmaps",
            ks(),
            None,
            "delete configmaps -n kube-system",
        ),
        ("get", "nodes/proxy", None, None, "get nodes/proxy"),
        ("delete", "namespaces", None, None, "delete namespaces"),
        (
            "delete",
            "namespaces",
            ks(),
            Some("kube-system".to_string()),
            "delete namespace kube-system",
        ),
        (
            "create",
            "jobs.batch",
            ks(),
            None,
            "create jobs -n kube-system",
        ),
        (
            "bind",
            "clusterroles.rbac.authorization.k8s.io",
            None,
            Some("cluster-admin".to_string()),
            "bind clusterrole cluster-admin",
        ),
        (
            "escalate",
            "roles.rbac.authorization.k8s.io",
            ks(),
            None,
            "escalate roles -n kube-system",
        ),
    ] {
        let allowed = can(verb, resource, ns, obj).await;
        table.push_str(&format!(
            "| {label} | {} |\n",
            if allowed { "yes" } else { "no" }
        ));
        assert!(!allowed, "the operator may {label}");
    }
    // Inside a tenant namespace: what it needs.
    for (verb, resource, label) in [
        ("get", "secrets", "get secrets"),
        ("create", "secrets", "create secrets"),
        ("patch", "deployments.apps", "patch deployments"),
        ("create", "jobs.batch", "create jobs"),
        ("delete", "configmaps", "delete configmaps"),
        ("create", "roles.rbac.authorization.k8s.io", "create roles"),
    ] {
        let allowed = can(verb, resource, Some(tenant_ns.clone()), None).await;
        table.push_str(&format!(
            "| {label} -n <tenant ns> | {} |\n",
            if allowed { "yes" } else { "no" }
        ));
        assert!(
            allowed,
            "the operator may not {label} in its tenant namespace"
        );
    }
    assert!(
        can(
            "delete",
            "namespaces",
            Some(tenant_ns.clone()),
            Some(tenant_ns.clone())
        )
        .await,
        "the operator may delete its tenant namespace"
    );
    table.push_str("| delete namespace <tenant ns> | yes |\n");
    println!("operator can-i (SubjectAccessReview on the real API server):\n{table}");

    // RBAC says yes to creating RoleBindings anywhere (a new namespace's
    // binding); the admission policy refuses it outside managed namespaces.
    let stranger = scratch_namespace(&client, "e2r", &mut cleanup).await;
    let binding = palisade::resources::rbac::operator_binding(
        &stranger,
        palisade::operator_rbac::TENANT_NAMESPACE_ROLE,
        OPERATOR_NS,
        OPERATOR_SA,
    );
    let rb: Api<RoleBinding> = Api::namespaced(operator.clone(), &stranger);
    let refused = wait(async {
        // The policy's informer may lag its creation by a moment.
        loop {
            match rb.create(&PostParams::default(), &binding).await {
                Err(kube::Error::Api(e)) => break Ok::<_, kube::Error>(e),
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => {
                    let _ = rb
                        .delete(
                            palisade::resources::rbac::OPERATOR_BINDING,
                            &DeleteParams::default(),
                        )
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    })
    .await;
    assert!(
        refused
            .message
            .contains("may write only inside namespaces it manages"),
        "{refused:?}"
    );
    // Nor may it relabel a namespace it does not manage into a tenant one.
    let nss: Api<Namespace> = Api::all(operator.clone());
    let relabel = nss
        .patch(
            &stranger,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "palisade", "palisade.dev/tenant": name}}})),
        )
        .await;
    let err = relabel.expect_err("relabelled a foreign namespace");
    assert!(
        err.to_string()
            .contains("only namespaces labelled palisade.dev/tenant"),
        "{err}"
    );
    // And RBAC alone refuses what it never holds outside tenant namespaces.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(operator.clone(), &stranger);
    match cms.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("listed ConfigMaps of a foreign namespace: {other:?}"),
    }
    delete_tenant(&client, &name).await;
}

/// Server-side applies every document of the YAML files under `dir` whose kind
/// is in `kinds`, with the field manager of `kubectl apply --server-side`.
async fn apply_files(client: &Client, dir: &std::path::Path, kinds: &[&str]) {
    use kube::api::DynamicObject;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("YAML");
            let kind = value["kind"].as_str().unwrap_or_default();
            if value.is_null() || !kinds.contains(&kind) {
                continue;
            }
            let api_version = value["apiVersion"].as_str().expect("apiVersion");
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let (ar, caps) = kube::discovery::pinned_kind(
                client,
                &kube::core::GroupVersionKind::gvk(group, version, kind),
            )
            .await
            .expect("discover");
            let name = value["metadata"]["name"].as_str().expect("name");
            let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                name,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        }
    }
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

/// `palisade diff` on the real control plane: the samples (plus the Secrets
/// the BackupSchedule reads), applied as `kubectl apply --server-side` would
/// and converged by the controllers, diff as unchanged (exit 0); a changed
/// field, a new object, a namespace dropped from the tenant, a changed Secret
/// and an escalating RolePolicy show as changed (with the field), created,
/// pruned, changed (value hidden) and a finding (exit 1) — and the dry-run
/// wrote nothing.
#[tokio::test]
async fn diff_reports_created_changed_pruned_unchanged_and_escalations() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_tenants, _) = start_controller(&operator);
    let _schedules = start_backup_controller(&operator);
    let name = unique("df");
    let mut cleanup = Cleanup::default();
    cleanup
        .tenant(&name)
        .policy(&format!("{name}-developers"))
        .policy(&format!("{name}-escalate"));

    // The samples under this test's names, and the Secrets the schedule reads.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(root.join("config/samples")).expect("samples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(
            dir.path().join(path.file_name().expect("name")),
            text.replace("acme", &name),
        )
        .expect("write");
    }
    let prod = format!("{name}-prod");
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db, namespace: {prod}}}\nstringData: {{password: e2e-db-password-1}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: backup-s3, namespace: {prod}}}\nstringData: {{AWS_ACCESS_KEY_ID: e2e-key-id, AWS_SECRET_ACCESS_KEY: e2e-s3-secret}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: backup-key, namespace: {prod}}}\nstringData: {{value: e2e-encryption-key-0123456789}}\n"
    );
    std::fs::write(dir.path().join("secrets.yaml"), &secrets).expect("write");

    // Nothing exists yet: everything would be created, objects in the
    // tenant's future namespaces included.
    let (code, report, stdout) = run_diff(dir.path(), true);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        diff_object(&report, "Tenant", None, &name)["action"],
        "created"
    );
    assert_eq!(
        diff_object(&report, "Namespace", None, &prod)["action"],
        "created"
    );
    assert_eq!(
        diff_object(&report, "BackupSchedule", Some(&prod), "orders")["action"],
        "created"
    );
    assert_eq!(report["summary"]["changed"], 0, "{stdout}");
    assert!(
        !stdout.contains("e2e-db-password") && !stdout.contains("e2e-s3-secret"),
        "{stdout}"
    );

    // Apply as `kubectl apply --server-side` would; let the controllers
    // converge: the samples work together (#31 item 6: the sample policy once
    // asked for a token where the signing key was not published).
    apply_files(&client, dir.path(), &["Tenant", "RolePolicy"]).await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    apply_files(&client, dir.path(), &["Secret", "BackupSchedule"]).await;

    // Unchanged once the controllers are done (they converge asynchronously:
    // wait for the diff to come out clean, as CI would re-run it).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (code, report, stdout) = loop {
        let (code, report, stdout) = run_diff(dir.path(), true);
        if code == Some(0) || tokio::time::Instant::now() > deadline {
            break (code, report, stdout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, Some(0), "{stdout}");
    let objects = report["objects"].as_array().expect("objects");
    assert!(
        objects.iter().all(|o| o["action"] == "unchanged"),
        "{stdout}"
    );
    assert!(report["findings"].as_array().expect("findings").is_empty());
    for (kind, ns, n) in [
        ("Tenant", None, name.as_str()),
        ("RolePolicy", None, &format!("{name}-developers")),
        ("BackupSchedule", Some(prod.as_str()), "orders"),
        ("Secret", Some(prod.as_str()), "orders-db"),
        ("Namespace", None, prod.as_str()),
        ("ResourceQuota", Some(prod.as_str()), "palisade-quota"),
        ("RoleBinding", Some(prod.as_str()), "palisade:deployer"),
        ("NetworkPolicy", Some(prod.as_str()), "orders-backup-egress"),
        ("Secret", Some(prod.as_str()), "api-signing-key"),
    ] {
        diff_object(&report, kind, ns, n);
    }

    // Change a field, drop a namespace, change a Secret, add an object and an
    // escalating RolePolicy.
    let tenant_file = dir.path().join("tenant-acme.yaml");
    let text = std::fs::read_to_string(&tenant_file).expect("read");
    let dev = format!("{name}-dev");
    let changed = text
        .replace("pods: \"50\"", "pods: \"60\"")
        .replace(&format!("    - name: {dev}\n"), "");
    assert_ne!(changed, text);
    std::fs::write(&tenant_file, changed).expect("write");
    std::fs::write(
        dir.path().join("secrets.yaml"),
        secrets.replace("e2e-db-password-1", "e2e-db-password-2"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("extra.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra, namespace: {prod}}}\ndata: {{k: v}}\n---\n\
             apiVersion: palisade.dev/v1alpha1\nkind: RolePolicy\nmetadata: {{name: {name}-escalate}}\n\
             spec:\n  tenants: [{name}-nobody]\n  roles:\n    - name: binder\n      rules:\n        - apiGroups: [rbac.authorization.k8s.io]\n          resources: [roles]\n          verbs: [get, bind]\n"
        ),
    )
    .expect("write");
    let (code, report, stdout) = run_diff(dir.path(), true);
    assert_eq!(code, Some(1), "{stdout}");
    let t = diff_object(&report, "Tenant", None, &name);
    assert_eq!(t["action"], "changed");
    let pods = t["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["path"] == "spec.quota.hard.pods")
        .unwrap_or_else(|| panic!("the pods field: {t:#}"));
    assert_eq!(
        (&pods["before"], &pods["after"]),
        (&json!("50"), &json!("60"))
    );
    let quota = diff_object(&report, "ResourceQuota", Some(&prod), "palisade-quota");
    assert_eq!(quota["action"], "changed");
    assert!(
        quota["fields"].to_string().contains("spec.hard.pods"),
        "{quota:#}"
    );
    assert_eq!(
        diff_object(&report, "ConfigMap", Some(&prod), "extra")["action"],
        "created"
    );
    // deletionPolicy defaults to Retain: the namespace is released, kept.
    assert_eq!(
        diff_object(&report, "Namespace", None, &dev)["action"],
        "released"
    );
    assert_eq!(
        diff_object(
            &report,
            "NetworkPolicy",
            Some(&dev),
            "palisade-default-deny"
        )["action"],
        "pruned"
    );
    let secret = diff_object(&report, "Secret", Some(&prod), "orders-db");
    assert_eq!(secret["action"], "changed");
    assert!(
        secret["fields"].to_string().contains("data.password"),
        "{secret:#}"
    );
    assert!(
        !stdout.contains("e2e-db-password") && !stdout.contains("ZTJlLWRiLXBhc3N3b3Jk"),
        "Secret values never appear: {stdout}"
    );
    let finding = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["name"] == format!("{name}-escalate").as_str())
        .unwrap_or_else(|| panic!("an escalation finding: {stdout}"));
    assert_eq!(
        (&finding["severity"], &finding["reason"], &finding["field"]),
        (
            &json!("rejected"),
            &json!("EscalationVerb"),
            &json!("spec.roles[0].rules[0]")
        )
    );

    // The text report says the same.
    let (code, _, text) = run_diff(dir.path(), false);
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("changed   Tenant {name} ("))
            && text.contains("~ spec.quota.hard.pods: \"50\" -> \"60\"")
            && text.contains(&format!("released  Namespace {dev} (Tenant {name})"))
            && text.contains(&format!(
                "finding   RolePolicy {name}-escalate: EscalationVerb"
            )),
        "{text}"
    );

    // Dry-runs only: the cluster still has what was applied.
    let live = tenants.get(&name).await.expect("tenant");
    assert_eq!(
        live.spec.quota.as_ref().map(|q| q.hard["pods"].0.clone()),
        Some("50".to_string())
    );
    let policies: Api<palisade::crd::RolePolicy> = Api::all(client.clone());
    assert!(
        policies
            .get_opt(&format!("{name}-escalate"))
            .await
            .expect("get")
            .is_none()
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &prod);
    assert!(cms.get_opt("extra").await.expect("get").is_none());
}
