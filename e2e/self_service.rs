//! Issue #25: what a Tenant loosens or narrows, enforced in the API server by
//! ValidatingAdmissionPolicies that read the labels and annotations Palisade
//! writes on the tenant's namespaces (`resources::admission`), tested as the
//! owner (allowed and refused, messages naming the Tenant field); and the
//! RolePolicy guard against writes on the kinds Palisade manages. The
//! self-service RoleBindings and NetworkPolicies themselves are MTB's
//! PL2-BC-OPS-3/OPS-4, in `mtb.rs`.

use super::mtb::{
    admitted, authenticated, dry_run, eventually_refused, impersonating, probe, ready_tenant,
    refused, refused_saying, service, user_may,
};
use super::signals::eventually;
use super::*;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use palisade::resources::admission;

fn pod_from(image: &str, pull: &str) -> Pod {
    let mut p = probe();
    p["spec"]["containers"][0]["image"] = json!(image);
    p["spec"]["containers"][0]["imagePullPolicy"] = json!(pull);
    serde_json::from_value(p).expect("pod")
}

fn claim(class: Option<&str>) -> PersistentVolumeClaim {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    serde_json::from_value(json!({"metadata": {"name": "data"}, "spec": spec})).expect("pvc")
}

fn ingress(class: &str) -> Ingress {
    serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ingressClassName": class, "rules": [{"host": "web.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    }))
    .expect("ingress")
}

/// A Tenant that allows NodePort Services and any pull policy, and narrows
/// registries, StorageClasses and IngressClasses: as the owner, what it
/// allows is admitted, the rest refused with the field to change; the
/// settings reach each namespace as Palisade's labels and annotations, which
/// the owner cannot write; changing the Tenant changes admission.
#[tokio::test]
async fn tenant_settings_loosen_and_narrow_admission() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let mut cleanup = Cleanup::default();
    let t = ready_tenant(
        &client,
        "ss",
        json!({
            "services": {"allowNodePort": true},
            "images": {"allowAnyPullPolicy": true,
                       "allowedRegistries": ["registry.example.com", "ghcr.io/acme"]},
            "allowedClasses": {"storage": ["fast-ssd"], "ingress": ["nginx"]},
        }),
        &mut cleanup,
    )
    .await;
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for ns in &t.namespaces {
        let n = nsapi.get(ns).await.expect("namespace");
        assert_eq!(
            n.labels()
                .get(admission::ALLOW_NODE_PORT)
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            n.labels()
                .get(admission::ALLOW_LOAD_BALANCER)
                .map(String::as_str),
            Some("false")
        );
        assert_eq!(
            n.annotations()
                .get(admission::ALLOWED_REGISTRIES)
                .map(String::as_str),
            Some("registry.example.com,ghcr.io/acme")
        );
        for verb in ["update", "patch"] {
            assert!(
                !can_i(
                    &client,
                    &t.owner,
                    &authenticated(),
                    verb,
                    "namespaces",
                    None,
                    Some(ns)
                )
                .await,
                "the owner may {verb} its namespace (and so its settings)"
            );
        }
    }
    let owner = impersonating(&t.owner).await;

    // Services: NodePort allowed, LoadBalancer still not.
    let services: Api<Service> = Api::namespaced(owner.clone(), &t.ns);
    let status = eventually_refused("LoadBalancer", || async {
        services
            .create(&dry_run(), &service("web", "LoadBalancer"))
            .await
    })
    .await;
    assert!(
        status.message.contains("spec.services.allowLoadBalancer"),
        "{}",
        status.message
    );
    admitted(
        "NodePort (spec.services.allowNodePort)",
        services
            .create(&dry_run(), &service("web", "NodePort"))
            .await,
    );

    // Images: any pull policy, listed registries only.
    let pods: Api<Pod> = Api::namespaced(owner.clone(), &t.ns);
    admitted(
        "IfNotPresent from registry.example.com (spec.images.allowAnyPullPolicy)",
        pods.create(
            &dry_run(),
            &pod_from("registry.example.com/app:1", "IfNotPresent"),
        )
        .await,
    );
    admitted(
        "ghcr.io/acme/…",
        pods.create(&dry_run(), &pod_from("ghcr.io/acme/app:1", "Always"))
            .await,
    );
    for image in [
        "docker.io/library/nginx:1",
        "ghcr.io/acmeevil/app:1",
        "nginx",
    ] {
        let status = refused(
            image,
            pods.create(&dry_run(), &pod_from(image, "Always")).await,
        );
        assert!(
            status.message.contains("palisade-images-pods")
                && status.message.contains("spec.images.allowedRegistries"),
            "{image}: {}",
            status.message
        );
    }

    // StorageClasses.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(owner.clone(), &t.ns);
    admitted(
        "a claim of fast-ssd",
        claims.create(&dry_run(), &claim(Some("fast-ssd"))).await,
    );
    for class in [Some("slow-hdd"), None] {
        let status = refused(
            &format!("a claim of {class:?}"),
            claims.create(&dry_run(), &claim(class)).await,
        );
        assert!(
            status.message.contains("palisade-allowed-storage-classes")
                && status.message.contains("spec.allowedClasses.storage"),
            "{}",
            status.message
        );
    }

    // IngressClasses.
    let ingresses: Api<Ingress> = Api::namespaced(owner.clone(), &t.ns);
    admitted(
        "an Ingress of nginx",
        ingresses.create(&dry_run(), &ingress("nginx")).await,
    );
    let status = refused(
        "an Ingress of traefik",
        ingresses.create(&dry_run(), &ingress("traefik")).await,
    );
    assert!(
        status.message.contains("palisade-allowed-ingress-classes")
            && status.message.contains("spec.allowedClasses.ingress"),
        "{}",
        status.message
    );

    // The Tenant changes: NodePort no longer allowed, registries open, pull
    // policy Always again. The namespaces follow, and admission with them.
    let tenants: Api<Tenant> = Api::all(client.clone());
    tenants
        .patch(
            &t.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "services": null,
                "images": {"allowAnyPullPolicy": false, "allowedRegistries": null},
            }})),
        )
        .await
        .expect("patch tenant");
    let status = eventually_refused("NodePort after the Tenant took it back", || async {
        services
            .create(&dry_run(), &service("web", "NodePort"))
            .await
    })
    .await;
    assert!(
        status.message.contains("spec.services.allowNodePort"),
        "{}",
        status.message
    );
    let status = refused(
        "IfNotPresent after the Tenant took it back",
        pods.create(
            &dry_run(),
            &pod_from("registry.example.com/app:1", "IfNotPresent"),
        )
        .await,
    );
    assert!(
        status.message.contains("spec.images.allowAnyPullPolicy"),
        "{}",
        status.message
    );
    admitted(
        "docker.io once the registries are open",
        pods.create(&dry_run(), &pod_from("docker.io/library/nginx:1", "Always"))
            .await,
    );
}

/// Item 3 of #25: a RolePolicy whose raw rules grant writes on a kind
/// Palisade manages (here: deleting NetworkPolicies, which would let a tenant
/// delete palisade-default-deny) is `Valid=False/ManagedKindWrite` without
/// `allowPrivileged`, and its role never reaches the tenant's namespaces.
#[tokio::test]
async fn rolepolicy_writes_on_managed_kinds_are_rejected() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_tenants, _) = start_controller(&operator);
    let _policies = start_policy_controller(&operator);
    let mut cleanup = Cleanup::default();
    let t = ready_tenant(&client, "ssr", json!({}), &mut cleanup).await;
    cleanup.policy(&t.name);
    let policy: palisade::crd::RolePolicy = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy", "metadata": {"name": t.name},
        "spec": {"tenants": [t.name],
                 "roles": [{"name": "netops", "rules": [{"apiGroups": ["networking.k8s.io"],
                            "resources": ["networkpolicies"], "verbs": ["get", "delete"]}]}],
                 "bindings": [{"role": "netops", "subjects": [{"kind": "User", "name": "mallory@example.com"}]}]}
    }))
    .expect("policy");
    let policies: Api<palisade::crd::RolePolicy> = Api::all(client.clone());
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create RolePolicy");
    let rejected = wait(await_condition(
        policies.clone(),
        &t.name,
        |p: Option<&palisade::crd::RolePolicy>| {
            p.and_then(|p| p.status.as_ref())
                .and_then(|s| palisade::crd::condition::find(&s.conditions, "Valid"))
                .is_some_and(|c| c.status == "False" && c.reason == "ManagedKindWrite")
        },
    ))
    .await
    .expect("policy");
    let valid = rejected
        .status
        .as_ref()
        .and_then(|s| palisade::crd::condition::find(&s.conditions, "Valid"))
        .expect("Valid")
        .clone();
    println!("Valid=False/ManagedKindWrite: {}", valid.message);
    assert!(
        valid.message.contains("spec.roles[0].rules[0]"),
        "{}",
        valid.message
    );
    assert!(
        !user_may(
            &client,
            "mallory@example.com",
            "delete",
            "networkpolicies.networking.k8s.io",
            &t.ns
        )
        .await,
        "the rejected role reached the tenant"
    );
    assert!(
        Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &t.ns)
            .get_opt("palisade:netops")
            .await
            .expect("get")
            .is_none()
    );
}

fn labelled_namespace(name: &str, tenant: &str, extra: &[(&str, &str)]) -> Namespace {
    let mut labels = json!({palisade::resources::labels::TENANT: tenant});
    for (k, v) in extra {
        labels[*k] = json!(v);
    }
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))
        .expect("namespace")
}

fn plain_namespace(name: &str) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace")
}

/// Issue #25 item 5: an owner creates a namespace for its Tenant with
/// `kubectl create namespace`, no webhook: the namespace-create admission
/// policy admits it only from an owner (authorizer, on the Tenant by name),
/// named '<tenant>-…', labelled only for the tenant, while the Tenant has room
/// (spec.maxNamespaces); Palisade adopts it within seconds (isolation, the
/// owner's RoleBindings, status), owners read their own Tenant (not another)
/// and delete the namespaces they created, never the listed ones.
#[tokio::test]
async fn owners_create_and_delete_their_own_namespaces() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let mut cleanup = Cleanup::default();
    // The sample lists two namespaces: room for two of the owner's.
    let t = ready_tenant(&client, "own", json!({"maxNamespaces": 4}), &mut cleanup).await;
    let other = ready_tenant(&client, "oth", json!({}), &mut cleanup).await;
    let owner = impersonating(&t.owner).await;
    let stranger = impersonating(&other.owner).await;

    // The owners' grants go with the Tenant (garbage collector), even when
    // its finalizer is taken off by hand.
    let role = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
        .get(&palisade::resources::rbac::owner_cluster_role_name(&t.name))
        .await
        .expect("owners' ClusterRole");
    let uid = Api::<Tenant>::all(client.clone())
        .get(&t.name)
        .await
        .expect("tenant")
        .uid();
    assert_eq!(
        role.owner_references().first().map(|o| Some(o.uid.clone())),
        Some(uid)
    );

    // Owners read their own Tenant, not another one.
    let as_owner: Api<Tenant> = Api::all(owner.clone());
    admitted("get own tenant", as_owner.get(&t.name).await);
    refused("get another tenant", as_owner.get(&other.name).await);

    let namespaces: Api<Namespace> = Api::all(owner.clone());
    let mine = format!("{}-feature", t.name);
    cleanup.namespace(&mine);
    // Refused: no tenant label, another's tenant, the wrong prefix, labels
    // Palisade owns. Each refusal names what to do.
    let status = eventually_refused("unlabelled", || async {
        namespaces.create(&dry_run(), &plain_namespace(&mine)).await
    })
    .await;
    assert!(
        status.message.contains("palisade.dev/tenant=<tenant>"),
        "{}",
        status.message
    );
    refused_saying(
        "for another tenant",
        namespaces
            .create(
                &dry_run(),
                &labelled_namespace(&format!("{}-x", other.name), &other.name, &[]),
            )
            .await,
        "only an owner",
    );
    refused_saying(
        "without the prefix",
        namespaces
            .create(&dry_run(), &labelled_namespace("feature-x", &t.name, &[]))
            .await,
        "'<tenant>-<name>'",
    );
    refused_saying(
        "with Palisade's labels",
        namespaces
            .create(
                &dry_run(),
                &labelled_namespace(
                    &mine,
                    &t.name,
                    &[("pod-security.kubernetes.io/enforce", "privileged")],
                ),
            )
            .await,
        "carries only the label",
    );
    // Another tenant's owner may not create one for this tenant.
    refused(
        "a stranger's namespace for this tenant",
        Api::<Namespace>::all(stranger.clone())
            .create(
                &dry_run(),
                &labelled_namespace(&format!("{}-y", t.name), &t.name, &[]),
            )
            .await,
    );

    // Admitted, then adopted within seconds.
    let start = std::time::Instant::now();
    admitted(
        "an owner's namespace",
        namespaces
            .create(
                &PostParams::default(),
                &labelled_namespace(&mine, &t.name, &[]),
            )
            .await,
    );
    let tenants: Api<Tenant> = Api::all(client.clone());
    let (_, took) = super::signals::eventually(
        Duration::from_secs(30),
        "adopted and listed in status",
        || async { tenants.get(&t.name).await.expect("tenant") },
        |tenant| {
            tenant.status.as_ref().is_some_and(|s| {
                s.namespaces
                    .iter()
                    .any(|n| n.name == mine && n.phase == "Ready" && n.created_by_owner)
            })
        },
    )
    .await;
    println!(
        "owner namespace adopted in {:?} ({:?} since create)",
        took,
        start.elapsed()
    );
    wait(await_condition(
        tenants.clone(),
        &t.name,
        tenant_ready(None),
    ))
    .await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &mine);
    admitted(
        "default-deny in the owner's namespace",
        policies
            .get(palisade::resources::network::DEFAULT_DENY)
            .await,
    );
    // The owner works in it as in the listed ones (admin RoleBinding).
    wait(await_condition(
        Api::<RoleBinding>::namespaced(client.clone(), &mine),
        "palisade:admin",
        |b: Option<&RoleBinding>| b.is_some(),
    ))
    .await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(owner.clone(), &mine);
    let cm = serde_json::from_value(json!({"metadata": {"name": "app"}, "data": {"a": "b"}}))
        .expect("configmap");
    let _ = eventually(
        Duration::from_secs(10),
        "owner writes in its namespace",
        || async { cms.create(&dry_run(), &cm).await.is_ok() },
        |ok| *ok,
    )
    .await;

    // `palisade diff` decides as the controller does: the owner's namespace
    // and its contents are the tenant's, nothing of it would be pruned.
    let scratch = tempfile::tempdir().expect("tmp");
    let yaml = serde_yaml::to_string(&super::mtb::sample_tenant(
        &t.name,
        json!({"maxNamespaces": 4}),
    ))
    .expect("yaml");
    let file = super::diff_modes::write(scratch.path(), "tenant.yaml", &yaml);
    let (_, report, _) = run_diff(file.parent().expect("dir"), true);
    let about_mine: Vec<&serde_json::Value> = report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["name"] == mine.as_str() || o["namespace"] == mine.as_str())
        .collect();
    assert!(
        !about_mine.is_empty(),
        "diff looked at the owner's namespace: {report:#}"
    );
    assert!(
        about_mine.iter().all(|o| o["action"] == "unchanged"),
        "{about_mine:#?}"
    );

    // Room for one more (4 in all), then none.
    let last = format!("{}-last", t.name);
    cleanup.namespace(&last);
    admitted(
        "the fourth namespace",
        namespaces
            .create(
                &PostParams::default(),
                &labelled_namespace(&last, &t.name, &[]),
            )
            .await,
    );
    let status = eventually_refused("over maxNamespaces", || async {
        namespaces
            .create(
                &dry_run(),
                &labelled_namespace(&format!("{}-more", t.name), &t.name, &[]),
            )
            .await
    })
    .await;
    assert!(
        status.message.contains("maxNamespaces"),
        "{}",
        status.message
    );

    // Owners delete what they created, not what the spec lists.
    refused(
        "delete a listed namespace",
        namespaces.delete(&t.ns, &DeleteParams::default()).await,
    );
    let _ = eventually(
        Duration::from_secs(10),
        "owner may delete its namespace",
        || async {
            namespaces
                .delete(
                    &mine,
                    &DeleteParams {
                        dry_run: true,
                        ..Default::default()
                    },
                )
                .await
                .is_ok()
        },
        |ok| *ok,
    )
    .await;
    admitted(
        "delete own namespace",
        namespaces.delete(&mine, &DeleteParams::default()).await,
    );
    // Gone from status once deleted, room again.
    super::signals::eventually(
        Duration::from_secs(120),
        "deleted namespace leaves the status",
        || async { tenants.get(&t.name).await.expect("tenant") },
        |tenant| {
            tenant
                .status
                .as_ref()
                .is_some_and(|s| !s.namespaces.iter().any(|n| n.name == mine))
        },
    )
    .await;
    let _ = eventually(
        Duration::from_secs(20),
        "room again",
        || async {
            namespaces
                .create(
                    &dry_run(),
                    &labelled_namespace(&format!("{}-more", t.name), &t.name, &[]),
                )
                .await
                .is_ok()
        },
        |ok| *ok,
    )
    .await;
}
