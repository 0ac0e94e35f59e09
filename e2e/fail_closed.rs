//! Issue #30 "Fail closed", on the real API server, as a hostile tenant or a
//! careless platform engineer would try it:
//! - content someone else adds to an object Palisade owns (a rule appended to
//!   the default-deny policy, a key added to the quota) is removed, with an
//!   Event naming who changed it, and `palisade diff` shows it meanwhile;
//! - `deletionPolicy: Retain` keeps the Secrets and JWKS Palisade generated,
//!   values untouched, and the same Tenant adopts them back;
//! - a spec the API server would refuse a child of, or that opens the tenant
//!   to everything, changes nothing: no namespace, no object, a reason naming
//!   the field in status (never a client Debug dump).

use super::*;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};

/// Events about the cluster-scoped Tenant `name` (they land in `default`).
async fn tenant_events(client: &Client, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let lp = kube::api::ListParams::default().fields(&format!(
        "involvedObject.kind=Tenant,involvedObject.name={name}"
    ));
    api.list(&lp).await.expect("events").items
}

/// Waits (bounded) until `check` holds for the Tenant's Events.
async fn wait_event(client: &Client, name: &str, check: impl Fn(&Event) -> bool) -> Event {
    let start = std::time::Instant::now();
    loop {
        if let Some(e) = tenant_events(client, name).await.into_iter().find(&check) {
            return e;
        }
        assert!(start.elapsed() < TIMEOUT, "no such Event for Tenant {name}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn condition_true(t: Option<&Tenant>, ty: &str) -> bool {
    t.and_then(|t| t.status.as_ref())
        .is_some_and(|s| palisade::crd::condition::is_true(&s.conditions, ty))
}

fn no_rules(p: Option<&NetworkPolicy>) -> bool {
    p.and_then(|p| p.spec.as_ref())
        .is_some_and(|s| s.ingress.is_none() && s.egress.is_none())
}

/// Finding 1: a default-deny opened with `ingress: [{}], egress: [{}]` and a
/// quota with an extra key are put back exactly; the Event names the manager;
/// while no controller runs, `palisade diff` shows the fields it will remove,
/// and a restarted controller heals what it finds widened.
#[tokio::test]
async fn widened_objects_are_restored_whole() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (controller, _) = start_controller(&operator);
    let name = unique("e2w");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let ns_a = format!("{name}-a");
    let by_hand = PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..Default::default()
    };
    let open = json!({"spec": {"ingress": [{}], "egress": [{}]}});
    let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_a);
    let widened = np
        .patch("palisade-default-deny", &by_hand, &Patch::Merge(&open))
        .await
        .expect("open the default deny");
    assert!(!no_rules(Some(&widened)), "the patch opened the policy");
    wait(await_condition(
        np.clone(),
        "palisade-default-deny",
        no_rules,
    ))
    .await;
    let event = wait_event(&client, &name, |e| {
        e.reason.as_deref() == Some("DriftReverted")
            && e.message
                .as_deref()
                .is_some_and(|m| m.contains("palisade-default-deny") && m.contains("kubectl-patch"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));

    let rq: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns_a);
    rq.patch(
        "palisade-quota",
        &by_hand,
        &Patch::Merge(json!({"spec": {"hard": {"services": "50"}}})),
    )
    .await
    .expect("add a quota key");
    wait(await_condition(
        rq.clone(),
        "palisade-quota",
        |q: Option<&ResourceQuota>| {
            q.and_then(|q| q.spec.as_ref()?.hard.clone())
                .is_some_and(|h| {
                    !h.contains_key("services") && h.get("pods").is_some_and(|p| p.0 == "10")
                })
        },
    ))
    .await;
    let t = tenants.get(&name).await.expect("tenant");
    assert!(
        condition_true(Some(&t), "NetworkIsolated"),
        "{:?}",
        t.status
    );
    assert!(condition_true(Some(&t), "QuotaEnforced"), "{:?}", t.status);

    // No controller: the widening stays, and the preview says it goes.
    drop(controller);
    np.patch("palisade-default-deny", &by_hand, &Patch::Merge(&open))
        .await
        .expect("open it again");
    let dir = tempfile::tempdir().expect("tmp");
    let mut input = sample(&name, "Delete");
    input.metadata.uid = None;
    std::fs::write(
        dir.path().join("tenant.yaml"),
        serde_yaml::to_string(&input).expect("yaml"),
    )
    .expect("write");
    let (code, report, _) = run_diff(dir.path(), true);
    assert_eq!(code, Some(1), "{report:#}");
    let policy = diff_object(
        &report,
        "NetworkPolicy",
        Some(&ns_a),
        "palisade-default-deny",
    );
    assert_eq!(policy["action"], "changed", "{policy:#}");
    let fields = policy["fields"].to_string();
    assert!(
        fields.contains("spec.ingress") && fields.contains("spec.egress"),
        "{policy:#}"
    );
    assert!(
        policy["note"]
            .as_str()
            .is_some_and(|n| n.contains("kubectl-patch")),
        "{policy:#}"
    );
    // The dry-run wrote nothing.
    assert!(!no_rules(
        np.get_opt("palisade-default-deny")
            .await
            .expect("get")
            .as_ref()
    ));

    // A restarted controller heals what it finds widened.
    let (_controller, _) = start_controller(&operator);
    wait(await_condition(
        np.clone(),
        "palisade-default-deny",
        no_rules,
    ))
    .await;
    delete_tenant(&client, &name).await;
}

fn with_secrets(name: &str, policy: &str) -> Tenant {
    let mut t = sample(name, policy);
    t.spec.secrets = serde_json::from_value(json!([
        {"name": "db-password", "type": "Random", "rotateEvery": "720h"},
        {"name": "signing", "type": "JwtSigningKey", "algorithm": "ES256", "rotateEvery": "720h"}
    ]))
    .expect("secrets");
    t
}

async fn data_of(client: &Client, ns: &str) -> (Secret, ConfigMap) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    (
        secrets
            .get("db-password")
            .await
            .expect("the Secret is there"),
        cms.get("signing-jwks").await.expect("the JWKS is there"),
    )
}

fn is_released(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get("palisade.dev/released").map(String::as_str) == Some("true")
        && !labels.contains_key("app.kubernetes.io/managed-by")
}

/// Finding 3: Retain keeps generated data, on namespace removal and on Tenant
/// deletion: same values, labelled released, no longer managed; policy
/// objects and Palisade's own binding go. Listing the namespace again adopts
/// the data back without a new version.
#[tokio::test]
async fn retain_keeps_generated_secrets_and_jwks() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let name = unique("e2k");
    let (ns_a, ns_b) = (format!("{name}-a"), format!("{name}-b"));
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name).namespace(&ns_a).namespace(&ns_b);
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &with_secrets(&name, "Retain")).await;
    let (secret_b, jwks_b) = data_of(&client, &ns_b).await;

    // The namespace leaves the tenant.
    edit_ready(
        &tenants,
        &name,
        json!({"spec": {"namespaces": [{"name": ns_a}]}}),
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait(await_condition(
        namespaces.clone(),
        &ns_b,
        |n: Option<&Namespace>| {
            n.is_some_and(|n| {
                n.labels().get("palisade.dev/released").map(String::as_str) == Some("true")
            })
        },
    ))
    .await;
    let (kept, kept_jwks) = data_of(&client, &ns_b).await;
    assert_eq!(kept.data, secret_b.data, "values untouched");
    assert_eq!(kept_jwks.data, jwks_b.data);
    assert!(is_released(kept.labels()), "{:?}", kept.labels());
    assert!(is_released(kept_jwks.labels()), "{:?}", kept_jwks.labels());
    let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns_b);
    assert!(
        np.get_opt("palisade-default-deny")
            .await
            .expect("get")
            .is_none()
    );
    let rb: Api<RoleBinding> = Api::namespaced(client.clone(), &ns_b);
    assert!(
        rb.get_opt(palisade::resources::rbac::OPERATOR_BINDING)
            .await
            .expect("get")
            .is_none()
    );

    // Listed again: adopted back with the same values (no new version).
    edit_ready(
        &tenants,
        &name,
        json!({"spec": {"namespaces": [{"name": ns_a}, {"name": ns_b}]}}),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_b);
    let adopted = wait(await_condition(
        secrets,
        "db-password",
        |s: Option<&Secret>| {
            s.is_some_and(|s| {
                s.labels()
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str)
                    == Some("palisade")
            })
        },
    ))
    .await
    .expect("adopted");
    assert_eq!(adopted.data, secret_b.data, "adopted, not regenerated");
    assert!(!adopted.labels().contains_key("palisade.dev/released"));

    // The Tenant goes: every namespace keeps its data.
    let (secret_a, jwks_a) = data_of(&client, &ns_a).await;
    delete_tenant(&client, &name).await;
    for (ns, secret, jwks) in [(&ns_a, &secret_a, &jwks_a), (&ns_b, &secret_b, &jwks_b)] {
        let (kept, kept_jwks) = data_of(&client, ns).await;
        assert_eq!(kept.data, secret.data, "{ns}: values untouched");
        assert_eq!(kept_jwks.data, jwks.data, "{ns}");
        assert!(is_released(kept.labels()), "{ns}: {:?}", kept.labels());
    }
}

/// Finding 4 (and the risky intents): each spec is refused before anything
/// is applied: Ready=False with the reason, the field in the message, no
/// namespace created. A converged tenant edited into an invalid spec keeps
/// every object as it was. A secret name too long for a label is refused by
/// the API server itself.
#[tokio::test]
async fn invalid_specs_change_nothing() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut cleanup = Cleanup::default();
    let cases: Vec<(&str, serde_json::Value, &'static str, &str)> = vec![
        (
            "pods",
            json!({"quota": {"hard": {"pods": "1.5"}}}),
            "InvalidQuantity",
            "spec.quota.hard[pods]",
        ),
        (
            "limits",
            json!({"limits": {"default": {"cpu": "500m"}, "max": {"cpu": "200m"}}}),
            "InvalidLimits",
            "spec.limits.max[cpu]",
        ),
        (
            "selector",
            json!({"network": {"allowFromNamespaces": [{"matchLabels": {"team": "a b"}}]}}),
            "InvalidSelector",
            "allowFromNamespaces[0]",
        ),
        // Not a literal the CRD rule refuses (0.0.0.0/0, ::/0): every address all the same.
        (
            "every-ip",
            json!({"network": {"allowEgressCidrs": [{"cidr": "::0/0"}]}}),
            "UnrestrictedPeer",
            "allowUnrestricted",
        ),
        (
            "host-bits",
            json!({"network": {"allowEgressCidrs": [{"cidr": "10.0.0.1/8"}]}}),
            "InvalidCidr",
            "host bits",
        ),
        (
            "sa-owner",
            json!({"owners": [{"kind": "ServiceAccount", "name": "ci", "namespace": "Bad_NS"}]}),
            "InvalidOwner",
            "spec.owners[0].namespace",
        ),
    ];
    for (what, patch, reason, says) in cases {
        let name = unique("e2v");
        cleanup.tenant(&name);
        let mut t = serde_json::to_value(sample(&name, "Delete")).expect("json");
        json_patch::merge(&mut t["spec"], &patch);
        let t: Tenant = serde_json::from_value(t).expect("tenant");
        tenants
            .create(&PostParams::default(), &t)
            .await
            .expect("create");
        let got = wait(await_condition(
            tenants.clone(),
            &name,
            tenant_reason(reason),
        ))
        .await
        .expect("tenant");
        let ready = palisade::crd::condition::find(
            &got.status.as_ref().expect("status").conditions,
            "Ready",
        )
        .expect("Ready")
        .message
        .clone();
        assert!(ready.contains(says), "{what}: {ready}");
        assert!(!ready.contains("Status {"), "{what}: {ready}");
        let lp = kube::api::ListParams::default().labels(&format!("palisade.dev/tenant={name}"));
        assert!(
            namespaces
                .list_metadata(&lp)
                .await
                .expect("list")
                .items
                .is_empty(),
            "{what}: nothing may be applied for an invalid spec"
        );
        delete_tenant(&client, &name).await;
    }

    // Refused by the API server itself (CRD schema and CEL rules): a secret
    // name that cannot be a label value, and the intents that open the tenant
    // to everything without the opt-in.
    for (what, patch, says) in [
        (
            "secret-name",
            json!({"secrets": [{"name": "s".repeat(64), "type": "Random", "rotateEvery": "720h"}]}),
            "spec.secrets[0].name",
        ),
        (
            "every-ns",
            json!({"network": {"allowFromNamespaces": [{}]}}),
            "allowUnrestricted",
        ),
        (
            "every-ip",
            json!({"network": {"allowEgressCidrs": [{"cidr": "0.0.0.0/0"}]}}),
            "allowUnrestricted",
        ),
    ] {
        let name = unique("e2v");
        let mut t = serde_json::to_value(sample(&name, "Delete")).expect("json");
        json_patch::merge(&mut t["spec"], &patch);
        let t: Tenant = serde_json::from_value(t).expect("tenant");
        match tenants.create(&PostParams::default(), &t).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {s:?}");
                assert!(s.message.contains(says), "{what}: {}", s.message);
            }
            other => {
                cleanup.tenant(&name);
                panic!("{what} was admitted: {other:?}");
            }
        }
    }

    // With the documented opt-in, the same intent is admitted and applied.
    let name = unique("e2v");
    cleanup.tenant(&name);
    let mut t = sample(&name, "Delete");
    t.spec.network.allow_unrestricted = true;
    t.spec.network.allow_from_namespaces = vec![Default::default()];
    create_ready(&tenants, &t).await;
    let np: Api<NetworkPolicy> = Api::namespaced(client.clone(), &format!("{name}-a"));
    let from = np
        .get("palisade-allow-from-namespaces")
        .await
        .expect("the policy of the opted-in intent");
    assert!(from.spec.is_some());
    delete_tenant(&client, &name).await;

    // A converged tenant edited into an invalid spec: nothing moves.
    let name = unique("e2v");
    cleanup.tenant(&name);
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let names = vec![format!("{name}-a"), format!("{name}-b")];
    let before = settled_rvs(&client, &names).await;
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "quota": {"hard": {"pods": "1.5"}},
                "network": {"allowInternetEgress": true},
                "owners": [{"kind": "User", "name": "someone-new@example.com"}]
            }})),
        )
        .await
        .expect("edit");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("InvalidQuantity"),
    ))
    .await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            managed_rvs(&client, &names).await,
            before,
            "an invalid spec changed objects"
        );
    }
    delete_tenant(&client, &name).await;
}
