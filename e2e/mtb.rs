//! Issue #25: the Kubernetes multi-tenancy benchmarks (kubernetes-sigs
//! multi-tenancy, `kubectl-mtb`; check definitions in
//! /work/shared/reference/mtb) as tests on a real API server, one test per
//! check id (named after it), each run as the tenant owner by impersonation,
//! on the sample Tenant (`config/samples/tenant-acme.yaml`) under a unique
//! name with its own owner.
//!
//! The Pod checks send a probe that Pod Security `restricted` admits, changed
//! in the one property under test (MTB's own pods break several rules at
//! once, so their refusal proves little); the unchanged probe is admitted
//! first, so each refusal is about that property.
//!
//! Two upstream checks share the id MTB-PL1-BC-HI-1 (host path volumes and
//! NodePort Services); the issue calls MTB-PL1-CC-DI-1 (image pull policy)
//! "BC-DI-1". The PL2 self-service checks (OPS-3, OPS-4) run on the sample
//! Tenant with its opt-in on (`spec.selfService`), and also show that the
//! sample without it keeps Palisade's NetworkPolicies and RoleBindings.

use super::*;
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::Role;
use palisade::operator_rbac::tenant_policies;

/// A client that acts as `user` (impersonated by the admin of the
/// kubeconfig, as `kubectl --as` does), authenticated like any user.
pub(super) async fn impersonating(user: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_string()]);
    Client::try_from(config).expect("impersonating client")
}

pub(super) fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

pub(super) fn dry_patch() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

/// Whether the authenticated `user` may `verb` a `resource` in `ns` ([`can_i`]).
pub(super) async fn user_may(
    client: &Client,
    user: &str,
    verb: &str,
    resource: &str,
    ns: &str,
) -> bool {
    can_i(
        client,
        user,
        &authenticated(),
        verb,
        resource,
        Some(ns),
        None,
    )
    .await
}

/// The groups an authenticated user has (what a SubjectAccessReview must
/// name to ask what `kubectl auth can-i` as that user would).
pub(super) fn authenticated() -> Vec<String> {
    vec!["system:authenticated".to_string()]
}

/// A tenant made for one test: its name, first namespace and owner.
pub(super) struct TestTenant {
    pub name: String,
    pub ns: String,
    pub namespaces: Vec<String>,
    pub owner: String,
}

/// The sample Tenant under `name`: its namespaces renamed `<name>-prod` and
/// `<name>-dev`, one owner `<name>-owner@example.com` (so tenants of one test
/// have different owners), `deletionPolicy: Delete`, and `extra` merged
/// into the spec (JSON merge patch).
pub(super) fn sample_tenant(name: &str, extra: serde_json::Value) -> Tenant {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/samples/tenant-acme.yaml"
    );
    let text = std::fs::read_to_string(path).expect("sample tenant");
    let mut t: serde_json::Value = serde_yaml::from_str(&text).expect("sample yaml");
    t["metadata"] = json!({"name": name});
    let spec = &mut t["spec"];
    for ns in spec["namespaces"].as_array_mut().expect("namespaces") {
        let n = ns["name"].as_str().expect("name").replacen("acme", name, 1);
        ns["name"] = json!(n);
    }
    for s in spec["secrets"].as_array_mut().into_iter().flatten() {
        if let Some(list) = s.get_mut("namespaces").and_then(|l| l.as_array_mut()) {
            for n in list {
                *n = json!(n.as_str().expect("ns").replacen("acme", name, 1));
            }
        }
    }
    spec["owners"] = json!([{"kind": "User", "name": format!("{name}-owner@example.com")}]);
    spec["deletionPolicy"] = json!("Delete");
    json_merge(spec, &extra);
    serde_json::from_value(t).expect("tenant")
}

fn json_merge(into: &mut serde_json::Value, patch: &serde_json::Value) {
    match (into, patch) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Creates [`sample_tenant`] `<prefix>-<unique>` and waits until it is Ready
/// and its owner's RoleBinding exists.
pub(super) async fn ready_tenant(
    client: &Client,
    prefix: &str,
    extra: serde_json::Value,
    cleanup: &mut Cleanup,
) -> TestTenant {
    let name = unique(prefix);
    cleanup.tenant(&name);
    let tenant = sample_tenant(&name, extra);
    let namespaces: Vec<String> = tenant
        .spec
        .namespaces
        .iter()
        .map(|n| n.name.clone())
        .collect();
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create tenant");
    wait(await_condition(tenants, &name, tenant_ready(None))).await;
    for ns in &namespaces {
        wait(await_condition(
            Api::<RoleBinding>::namespaced(client.clone(), ns),
            "palisade:admin",
            |b: Option<&RoleBinding>| b.is_some(),
        ))
        .await;
    }
    TestTenant {
        owner: format!("{name}-owner@example.com"),
        ns: namespaces[0].clone(),
        namespaces,
        name,
    }
}

/// The refusal's status; panics when `result` was admitted or failed otherwise.
pub(super) fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(e)) => {
            println!("refused as expected: {what}: {} {}", e.code, e.message);
            *e
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// [`refused`], and the refusal's message says `says`.
pub(super) fn refused_saying<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, kube::Error>,
    says: &str,
) -> kube::core::Status {
    let status = refused(what, result);
    assert!(status.message.contains(says), "{what}: {}", status.message);
    status
}

pub(super) fn admitted<T>(what: &str, result: Result<T, kube::Error>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected admission, got {e}"))
}

/// Retries `attempt` until it is refused (admission policies installed
/// moments ago reach the API server's informer within a second or two), then
/// returns the refusal; times out if it never is.
pub(super) async fn eventually_refused<T, F, Fut>(what: &str, attempt: F) -> kube::core::Status
where
    T: std::fmt::Debug,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let result = wait(async {
        loop {
            match attempt().await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                other => break Ok::<_, std::convert::Infallible>(other),
            }
        }
    })
    .await;
    refused(what, result)
}

/// The probe: [`pending_pod`] as JSON (Pod Security `restricted`,
/// imagePullPolicy Always), for a test to change in one property.
pub(super) fn probe() -> serde_json::Value {
    serde_json::to_value(pending_pod("probe")).expect("probe")
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).expect("pod")
}

/// The admin client and a Ready [`sample_tenant`] `mtb-…`, with the controller
/// that keeps it so and the cleanup that deletes it when dropped: what most
/// checks start from.
async fn mtb_tenant() -> (Client, TestTenant, (Cleanup, Controller)) {
    let (client, controller) = setup().await;
    let mut cleanup = Cleanup::default();
    let t = ready_tenant(&client, "mtb", json!({}), &mut cleanup).await;
    (client, t, (cleanup, controller))
}

/// Admits the unchanged probe, then asserts the changed one is refused by
/// Pod Security with `expect` in the message.
async fn pod_check(id: &str, change: impl Fn(&mut serde_json::Value), expect: &str) {
    let (_client, t, _running) = mtb_tenant().await;
    let pods: Api<Pod> = Api::namespaced(impersonating(&t.owner).await, &t.ns);
    admitted(
        &format!("{id}: the restricted probe"),
        pods.create(&dry_run(), &pod(probe())).await,
    );
    let mut changed = probe();
    change(&mut changed);
    let status = refused(id, pods.create(&dry_run(), &pod(changed)).await);
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains("violates PodSecurity \"restricted:latest\"")
            && status.message.contains(expect),
        "{id}: {}",
        status.message
    );
}

fn container(v: &mut serde_json::Value) -> &mut serde_json::Value {
    &mut v["spec"]["containers"][0]
}

/// The Pod checks, one test per check id: each test sends the probe changed as
/// each of its cases says ([`pod_check`]: `(id, change, what the refusal names)`).
macro_rules! pod_checks {
    ($($(#[doc = $doc:expr])* $name:ident: [$(($id:expr, $change:expr, $expect:expr $(,)?)),+ $(,)?];)+) => {
        $(
            $(#[doc = $doc])*
            #[tokio::test]
            async fn $name() {
                if !enabled() {
                    return;
                }
                $(pod_check($id, $change, $expect).await;)+
            }
        )+
    };
}

pod_checks! {
    /// MTB-PL1-BC-CPI-3: a container that adds capabilities is refused.
    mtb_pl1_bc_cpi_3_block_add_capabilities: [
        (
            "MTB-PL1-BC-CPI-3",
            |p| container(p)["securityContext"]["capabilities"]["add"] = json!(["SYS_ADMIN"]),
            "unrestricted capabilities",
        ),
    ];

    /// MTB-PL1-BC-CPI-4: a pod that does not set runAsNonRoot is refused, and
    /// so is one that runs as uid 0 (both cases of the check).
    mtb_pl1_bc_cpi_4_require_run_as_non_root_user: [
        (
            "MTB-PL1-BC-CPI-4 (runAsNonRoot unset)",
            |p| {
                p["spec"]["securityContext"]
                    .as_object_mut()
                    .expect("securityContext")
                    .remove("runAsNonRoot");
            },
            "runAsNonRoot",
        ),
        (
            "MTB-PL1-BC-CPI-4 (runAsUser 0)",
            |p| container(p)["securityContext"]["runAsUser"] = json!(0),
            "runAsUser=0",
        ),
    ];

    /// MTB-PL1-BC-CPI-5: a privileged container is refused. (The API server
    /// itself refuses privileged with allowPrivilegeEscalation: false, so the
    /// probe leaves allowPrivilegeEscalation unset: the least it can change.)
    mtb_pl1_bc_cpi_5_block_privileged_containers: [
        (
            "MTB-PL1-BC-CPI-5",
            |p| {
                let sc = &mut container(p)["securityContext"];
                sc["privileged"] = json!(true);
                sc.as_object_mut()
                    .expect("securityContext")
                    .remove("allowPrivilegeEscalation");
            },
            "privileged",
        ),
    ];

    /// MTB-PL1-BC-CPI-6: allowPrivilegeEscalation: true is refused.
    mtb_pl1_bc_cpi_6_block_privilege_escalation: [
        (
            "MTB-PL1-BC-CPI-6",
            |p| container(p)["securityContext"]["allowPrivilegeEscalation"] = json!(true),
            "allowPrivilegeEscalation != false",
        ),
    ];

    /// MTB-PL1-BC-HI-1 (block_use_of_host_path): a hostPath volume is refused.
    mtb_pl1_bc_hi_1_block_use_of_host_path: [
        (
            "MTB-PL1-BC-HI-1 (host path)",
            |p| p["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/etc"}}]),
            "restricted volume type \"hostPath\"",
        ),
    ];

    /// MTB-PL1-BC-HI-3: a host port is refused, and so is the host network.
    mtb_pl1_bc_hi_3_block_use_of_host_networking_and_ports: [
        (
            "MTB-PL1-BC-HI-3 (hostPort)",
            |p| container(p)["ports"] = json!([{"containerPort": 8080, "hostPort": 8080}]),
            "hostPort",
        ),
        (
            "MTB-PL1-BC-HI-3 (hostNetwork)",
            |p| p["spec"]["hostNetwork"] = json!(true),
            "hostNetwork=true",
        ),
    ];

    /// MTB-PL1-BC-HI-4: hostPID is refused.
    mtb_pl1_bc_hi_4_block_use_of_host_pid: [
        ("MTB-PL1-BC-HI-4", |p| p["spec"]["hostPID"] = json!(true), "hostPID=true"),
    ];

    /// MTB-PL1-BC-HI-5: hostIPC is refused.
    mtb_pl1_bc_hi_5_block_use_of_host_ipc: [
        ("MTB-PL1-BC-HI-5", |p| p["spec"]["hostIPC"] = json!(true), "hostIPC=true"),
    ];
}

/// A Service of `type_` for the probe's pods.
pub(super) fn service(name: &str, type_: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"type": type_, "selector": {"app": "probe"},
                 "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service")
}

/// MTB-PL1-BC-HI-1 (block_use_of_nodeport_services): a NodePort Service is
/// refused (admission policy `palisade-service-types`), naming the Tenant
/// field that allows it; LoadBalancer too; ClusterIP is fine. Before #25 the
/// NodePort Service was admitted.
#[tokio::test]
async fn mtb_pl1_bc_hi_1_block_use_of_nodeport_services() {
    if !enabled() {
        return;
    }
    let (_client, t, _running) = mtb_tenant().await;
    let services: Api<Service> = Api::namespaced(impersonating(&t.owner).await, &t.ns);
    let status = eventually_refused("MTB-PL1-BC-HI-1 (NodePort)", || async {
        services
            .create(&dry_run(), &service("probe", "NodePort"))
            .await
    })
    .await;
    assert!(
        status.message.contains("palisade-service-types")
            && status
                .message
                .contains("set spec.services.allowNodePort: true on the Tenant"),
        "{}",
        status.message
    );
    let status = refused(
        "LoadBalancer",
        services
            .create(&dry_run(), &service("probe", "LoadBalancer"))
            .await,
    );
    assert!(
        status.message.contains("spec.services.allowLoadBalancer"),
        "{}",
        status.message
    );
    admitted(
        "ClusterIP",
        services
            .create(&dry_run(), &service("probe", "ClusterIP"))
            .await,
    );
}

/// MTB-PL1-CC-DI-1 (the "BC-DI-1"): imagePullPolicy Always is
/// required on every container: Never, IfNotPresent, unset (defaulted to
/// IfNotPresent for a tagged image), an init container's and an ephemeral
/// container's are refused (admission policy `palisade-images-pods`), with
/// the Tenant field that allows them; a Deployment's template too. Before
/// #25 the restricted probe with imagePullPolicy Never was admitted.
#[tokio::test]
async fn mtb_pl1_cc_di_1_require_always_pull_image() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = mtb_tenant().await;
    let owner = impersonating(&t.owner).await;
    let pods: Api<Pod> = Api::namespaced(owner.clone(), &t.ns);
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut p = probe();
        change(&mut p);
        pod(p)
    };
    let never = with(&|p| container(p)["imagePullPolicy"] = json!("Never"));
    let status = eventually_refused("MTB-PL1-CC-DI-1 (Never)", || async {
        pods.create(&dry_run(), &never).await
    })
    .await;
    assert!(
        status.message.contains("palisade-images-pods")
            && status
                .message
                .contains(&tenant_policies::pull_policy_refusal()),
        "{}",
        status.message
    );
    let cases: [(&str, Pod); 3] = [
        (
            "IfNotPresent",
            with(&|p| container(p)["imagePullPolicy"] = json!("IfNotPresent")),
        ),
        (
            "unset",
            with(&|p| {
                container(p)
                    .as_object_mut()
                    .expect("container")
                    .remove("imagePullPolicy");
            }),
        ),
        (
            "an init container's IfNotPresent",
            with(&|p| {
                let mut init = container(p).clone();
                init["name"] = json!("init");
                init["imagePullPolicy"] = json!("IfNotPresent");
                p["spec"]["initContainers"] = json!([init]);
            }),
        ),
    ];
    for (what, p) in cases {
        let status = refused(what, pods.create(&dry_run(), &p).await);
        assert!(
            status.message.contains("spec.images.allowAnyPullPolicy"),
            "{what}: {}",
            status.message
        );
    }
    admitted(
        "Always",
        pods.create(&PostParams::default(), &pod(probe())).await,
    );
    // An ephemeral container (kubectl debug) on that pod: the owner may not
    // add any (RBAC), and the policy holds for whoever may, administrators
    // included.
    assert!(
        !user_may(
            &client,
            &t.owner,
            "patch",
            "pods/ephemeralcontainers",
            &t.ns
        )
        .await
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &t.ns);
    let mut debug = probe();
    let mut eph = container(&mut debug).clone();
    eph["name"] = json!("debug");
    eph["imagePullPolicy"] = json!("IfNotPresent");
    let status = refused(
        "an ephemeral container's IfNotPresent",
        pods.patch_ephemeral_containers(
            "probe",
            &dry_patch(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [eph.clone()]}})),
        )
        .await,
    );
    assert!(
        status.message.contains("spec.images.allowAnyPullPolicy"),
        "{}",
        status.message
    );
    eph["imagePullPolicy"] = json!("Always");
    admitted(
        "an ephemeral container's Always",
        pods.patch_ephemeral_containers(
            "probe",
            &dry_patch(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [eph]}})),
        )
        .await,
    );
    // A workload's template says it at once (not through a stuck ReplicaSet).
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(owner, &t.ns);
    let mut spec = probe()["spec"].clone();
    spec["containers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    let deployment = |spec: serde_json::Value| {
        serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"selector": {"matchLabels": {"app": "probe"}},
                     "template": {"metadata": {"labels": {"app": "probe"}}, "spec": spec}}
        }))
        .expect("deployment")
    };
    let status = refused(
        "a Deployment's template",
        deployments.create(&dry_run(), &deployment(spec)).await,
    );
    assert!(
        status.message.contains("palisade-images-workloads"),
        "{}",
        status.message
    );
    admitted(
        "a Deployment's template with Always",
        deployments
            .create(&dry_run(), &deployment(probe()["spec"].clone()))
            .await,
    );
}

/// Every (group, plural) the API server serves with `scope`, per discovery.
async fn served(client: &Client, scope: kube::discovery::Scope) -> Vec<(String, String)> {
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope == scope {
                out.push((ar.group.clone(), ar.plural.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `plural[.group]`, as [`can_i`] takes it.
fn resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

const VERBS: &[&str] = &[
    "get",
    "list",
    "create",
    "update",
    "patch",
    "watch",
    "delete",
    "deletecollection",
];

/// MTB-PL1-CC-CPI-1: for every cluster-scoped resource the API server serves
/// (Palisade's Tenants and RolePolicies included) and every verb, the owner
/// (an authenticated user) may do nothing. The self-reviews every
/// authenticated user may create about itself (`system:basic-user`) are
/// not access to cluster resources and are left out.
#[tokio::test]
async fn mtb_pl1_cc_cpi_1_block_access_to_cluster_resources() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = mtb_tenant().await;
    let self_reviews = [
        "selfsubjectaccessreviews",
        "selfsubjectrulesreviews",
        "selfsubjectreviews",
    ];
    let resources = served(&client, kube::discovery::Scope::Cluster).await;
    assert!(resources.contains(&("palisade.dev".to_string(), "tenants".to_string())));
    let mut allowed = Vec::new();
    for (group, plural) in &resources {
        if self_reviews.contains(&plural.as_str()) {
            continue;
        }
        for verb in VERBS {
            let r = resource(group, plural);
            if can_i(&client, &t.owner, &authenticated(), verb, &r, None, None).await {
                allowed.push(format!("{verb} {r}"));
            }
        }
    }
    assert!(allowed.is_empty(), "the owner may: {allowed:?}");
    println!(
        "MTB-PL1-CC-CPI-1: {} cluster-scoped resources x {} verbs: all 'no'",
        resources.len() - self_reviews.len(),
        VERBS.len()
    );
}

/// Annotates (dry run) and deletes (dry run) every object `K` labelled
/// managed-by=palisade in `ns` as `owner`: each must be 403 Forbidden
/// (RBAC, or the `managed-objects` policy where a role grants the writes).
/// Returns how many objects were tried.
pub(super) async fn owner_cannot_touch<K>(admin: &Client, owner: &Client, ns: &str) -> usize
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let lp = kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=palisade");
    let objects = Api::<K>::namespaced(admin.clone(), ns)
        .list(&lp)
        .await
        .expect("list");
    let api: Api<K> = Api::namespaced(owner.clone(), ns);
    for o in &objects.items {
        let name = o.name_any();
        let what = format!("{} {ns}/{name}", K::kind(&()));
        let status = refused(
            &format!("annotate {what}"),
            api.patch(
                &name,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"annotations": {"key1": "value1"}}})),
            )
            .await,
        );
        assert_eq!(status.code, 403, "annotate {what}: {status:?}");
        let status = refused(
            &format!("delete {what}"),
            api.delete(
                &name,
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
        );
        assert_eq!(status.code, 403, "delete {what}: {status:?}");
    }
    objects.items.len()
}

/// MTB-PL1-BC-CPI-2: every object Palisade set up in a tenant namespace
/// (labelled managed-by=palisade: NetworkPolicies, quota, limits, Roles,
/// RoleBindings, rotated Secrets, JWKS ConfigMaps) can be neither changed nor
/// deleted by the owner: 403 Forbidden, whether RBAC or the `managed-objects`
/// admission policy refuses it (the owner may write Secrets and ConfigMaps).
#[tokio::test]
async fn mtb_pl1_bc_cpi_2_block_multitenant_resources() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = mtb_tenant().await;
    let owner = impersonating(&t.owner).await;
    // The managed-objects policy, installed moments ago, is active.
    let secrets: Api<Secret> = Api::namespaced(owner.clone(), &t.ns);
    eventually_refused("annotate the rotated Secret", || async {
        secrets
            .patch(
                "db-password",
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"annotations": {"key1": "value1"}}})),
            )
            .await
    })
    .await;
    let mut tried = 0;
    for ns in &t.namespaces {
        tried += owner_cannot_touch::<NetworkPolicy>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<ResourceQuota>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<LimitRange>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<Role>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<RoleBinding>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<Secret>(&client, &owner, ns).await;
        tried += owner_cannot_touch::<ConfigMap>(&client, &owner, ns).await;
    }
    assert!(tried > 20, "only {tried} objects");
    // A forced rotation stays the owner's to ask for.
    admitted(
        "annotate the rotated Secret palisade.dev/rotate-now",
        secrets
            .patch(
                "db-password",
                &dry_patch(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"palisade.dev/rotate-now": "now"}}}),
                ),
            )
            .await,
    );
    println!("MTB-PL1-BC-CPI-2: {tried} objects, none changed nor deleted by the owner");
}

/// MTB-PL1-CC-TI-1: the owner may not create, update, patch, delete or
/// deletecollection ResourceQuotas in its namespaces.
#[tokio::test]
async fn mtb_pl1_cc_ti_1_block_ns_quota() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = mtb_tenant().await;
    for ns in &t.namespaces {
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            assert!(
                !user_may(&client, &t.owner, verb, "resourcequotas", ns).await,
                "the owner may {verb} quotas in {ns}"
            );
        }
    }
}

/// MTB-PL1-CC-TI-2: for every namespaced resource and verb, the owner of one
/// tenant may do nothing in another tenant's namespace.
#[tokio::test]
async fn mtb_pl1_cc_ti_2_block_other_tenant_resources() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let mut cleanup = Cleanup::default();
    let a = ready_tenant(&client, "mtba", json!({}), &mut cleanup).await;
    let b = ready_tenant(&client, "mtbb", json!({}), &mut cleanup).await;
    let resources = served(&client, kube::discovery::Scope::Namespaced).await;
    let mut allowed = Vec::new();
    for ns in &b.namespaces {
        for (group, plural) in &resources {
            for verb in VERBS {
                let r = resource(group, plural);
                if user_may(&client, &a.owner, verb, &r, ns).await {
                    allowed.push(format!("{verb} {r} in {ns}"));
                }
            }
        }
    }
    assert!(allowed.is_empty(), "tenant a's owner may: {allowed:?}");
    // And it may in its own (so the question was a real one).
    assert!(user_may(&client, &a.owner, "create", "pods", &a.ns).await);
}

/// On a new tenant: each namespace has, as its owner reads it, a quota key
/// that `names` each of `wants`.
async fn quotas_on(wants: &[&str], names: impl Fn(&str, &str) -> bool) {
    let (_client, t, _running) = mtb_tenant().await;
    for (ns, keys) in owner_quotas(&t).await {
        for want in wants {
            assert!(
                keys.iter().any(|k| names(k, want)),
                "{ns}: no quota on {want}: {keys:?}"
            );
        }
    }
}

/// The quota of each namespace, as the owner reads it (`kubectl describe quota`).
async fn owner_quotas(t: &TestTenant) -> Vec<(String, Vec<String>)> {
    let owner = impersonating(&t.owner).await;
    let mut out = Vec::new();
    for ns in &t.namespaces {
        let list = admitted(
            "the owner lists its quotas",
            Api::<ResourceQuota>::namespaced(owner.clone(), ns)
                .list(&Default::default())
                .await,
        );
        let keys = list
            .items
            .iter()
            .flat_map(|q| {
                q.spec
                    .as_ref()
                    .and_then(|s| s.hard.as_ref())
                    .map(|h| h.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        out.push((ns.clone(), keys));
    }
    out
}

/// MTB-PL1-CC-FNS-1: each tenant namespace has a quota for CPU, memory and
/// storage, which the owner can read.
#[tokio::test]
async fn mtb_pl1_cc_fns_1_configure_ns_quotas() {
    if !enabled() {
        return;
    }
    quotas_on(&["cpu", "memory", "storage"], |k, want| k.ends_with(want)).await;
}

/// MTB-PL1-CC-FNS-2: each tenant namespace has object-count quotas (pods,
/// PersistentVolumeClaims), which the owner can read. NodePort and
/// LoadBalancer Services are refused outright unless the Tenant allows them
/// (MTB-PL1-BC-HI-1), rather than counted.
#[tokio::test]
async fn mtb_pl1_cc_fns_2_configure_ns_object_quota() {
    if !enabled() {
        return;
    }
    quotas_on(&["pods", "persistentvolumeclaims"], |k, want| k == want).await;
}

/// MTB PL2 self-service: without `spec.selfService.<field>` (the sample as
/// it is, [`mtb_tenant`]) the owner may not create `resource`; with it, it may
/// every verb of `verbs` (space-separated; `auth can-i`). Returns the admin
/// client and the tenant that opted in, with what keeps both.
async fn self_service_opt_in(
    field: &str,
    resource: &str,
    verbs: &str,
) -> (Client, TestTenant, (Cleanup, Controller)) {
    let (client, plain, (mut cleanup, controller)) = mtb_tenant().await;
    assert!(
        !user_may(&client, &plain.owner, "create", resource, &plain.ns).await,
        "without spec.selfService.{field} the owner may create no {resource}"
    );
    let t = ready_tenant(
        &client,
        "mtb",
        json!({"selfService": {field: true}}),
        &mut cleanup,
    )
    .await;
    for verb in verbs.split_whitespace() {
        assert!(
            user_may(&client, &t.owner, verb, resource, &t.ns).await,
            "the owner may not {verb} {resource}"
        );
    }
    (client, t, (cleanup, controller))
}

/// MTB-PL2-BC-OPS-3: with `spec.selfService.roleBindings`, the owner may
/// create, change and delete RoleBindings (`auth can-i` yes for every verb)
/// to the tenant's catalog Roles, and only to them: a ClusterRole, a Role
/// under another name, a public subject and Palisade's own RoleBindings are
/// refused; Roles stay Palisade's (MTB asks for Roles too: Palisade's
/// catalog is the tenant's roles). Without the opt-in (the sample as it is)
/// the owner writes no RoleBinding.
#[tokio::test]
async fn mtb_pl2_bc_ops_3_create_role_bindings() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = self_service_opt_in(
        "roleBindings",
        "rolebindings.rbac.authorization.k8s.io",
        "get list create update patch delete deletecollection",
    )
    .await;
    for verb in ["create", "update", "delete"] {
        assert!(
            !user_may(
                &client,
                &t.owner,
                verb,
                "roles.rbac.authorization.k8s.io",
                &t.ns
            )
            .await,
            "the owner may {verb} Roles"
        );
    }
    let bindings: Api<RoleBinding> = Api::namespaced(impersonating(&t.owner).await, &t.ns);
    let binding = |name: &str, kind: &str, role: &str, subject: &str| -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}]
        }))
        .expect("binding")
    };
    let status = eventually_refused("bind the ClusterRole view", || async {
        bindings
            .create(
                &dry_run(),
                &binding("viewers", "ClusterRole", "view", "bob@example.com"),
            )
            .await
    })
    .await;
    assert!(
        status
            .message
            .contains("palisade-self-service-role-bindings")
            && status.message.contains("may bind only a catalog Role"),
        "{}",
        status.message
    );
    admitted(
        "bind palisade:viewer",
        bindings
            .create(
                &PostParams::default(),
                &binding("viewers", "Role", "palisade:viewer", "bob@example.com"),
            )
            .await,
    );
    admitted(
        "change it",
        bindings
            .patch(
                "viewers",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "qa"}}})),
            )
            .await,
    );
    let status = refused(
        "a public subject",
        bindings
            .create(
                &dry_run(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "everyone"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "palisade:viewer"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]
                }))
                .expect("binding"),
            )
            .await,
    );
    assert!(
        status.message.contains("stands for everyone"),
        "{}",
        status.message
    );
    let status = refused(
        "a name of Palisade's",
        bindings
            .create(
                &dry_run(),
                &binding(
                    "palisade:extra",
                    "Role",
                    "palisade:viewer",
                    "bob@example.com",
                ),
            )
            .await,
    );
    assert!(
        status.message.contains("are Palisade's"),
        "{}",
        status.message
    );
    let status = refused(
        "delete Palisade's palisade:admin",
        bindings
            .delete(
                "palisade:admin",
                &DeleteParams {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .await,
    );
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains(&tenant_policies::managed_refusal()),
        "{}",
        status.message
    );
    admitted(
        "delete its own",
        bindings.delete("viewers", &DeleteParams::default()).await,
    );
}

/// MTB-PL2-BC-OPS-4: with `spec.selfService.networkPolicies`, the owner may
/// get, create, update, patch, delete and deletecollection NetworkPolicies
/// (`auth can-i` yes) and adds an allow of its own; Palisade's policies,
/// default-deny first, stay untouchable (403) and its names stay Palisade's.
/// Without the opt-in the owner writes none. Before #25 there was no opt-in.
#[tokio::test]
async fn mtb_pl2_bc_ops_4_create_network_policies() {
    if !enabled() {
        return;
    }
    let (client, t, _running) = self_service_opt_in(
        "networkPolicies",
        "networkpolicies.networking.k8s.io",
        "get create update patch delete deletecollection",
    )
    .await;
    let owner = impersonating(&t.owner).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(owner.clone(), &t.ns);
    let allow = |name: &str| -> NetworkPolicy {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"port": 8080}]}]}
        }))
        .expect("policy")
    };
    let status = eventually_refused("delete palisade-default-deny", || async {
        nps.delete(
            palisade::resources::network::DEFAULT_DENY,
            &DeleteParams {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
    })
    .await;
    assert_eq!(status.code, 403);
    assert!(
        status.message.contains(&tenant_policies::managed_refusal()),
        "{}",
        status.message
    );
    let status = refused(
        "widen palisade-default-deny",
        nps.patch(
            palisade::resources::network::DEFAULT_DENY,
            &dry_patch(),
            &Patch::Merge(json!({"spec": {"ingress": [{}]}})),
        )
        .await,
    );
    assert_eq!(status.code, 403);
    let status = refused(
        "a policy under Palisade's names",
        nps.create(&dry_run(), &allow("palisade-allow-web")).await,
    );
    assert!(
        status.message.contains("are Palisade's"),
        "{}",
        status.message
    );
    admitted(
        "the owner's own allow",
        nps.create(&PostParams::default(), &allow("allow-web"))
            .await,
    );
    admitted(
        "change it",
        nps.patch(
            "allow-web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "web"}}})),
        )
        .await,
    );
    admitted(
        "delete it",
        nps.delete("allow-web", &DeleteParams::default()).await,
    );
    // Palisade's policies are all still there, unchanged.
    let mine = owner_cannot_touch::<NetworkPolicy>(&client, &owner, &t.ns).await;
    assert!(mine >= 4, "{mine}");
}
