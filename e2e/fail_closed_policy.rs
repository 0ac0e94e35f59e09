//! Issue #30 "Fail closed", on the real API server: the RolePolicy guard is an
//! allowlist, Palisade's own role names are reserved at admission, and a
//! tenant-written label or annotation never exempts an object from the
//! Tenant's garbage collection rules.

use super::gc::create_cm;
use super::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::Role;
use palisade::crd::RolePolicy;

fn condition_is(
    type_: &'static str,
    status: &'static str,
    reason: &'static str,
) -> impl Fn(Option<&RolePolicy>) -> bool {
    move |p: Option<&RolePolicy>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| palisade::crd::condition::find(&s.conditions, type_))
            .is_some_and(|c| c.status == status && c.reason == reason)
    }
}

/// Whether any Role grants `verb` on `resource` in `group`.
fn grants(roles: &[Role], group: &str, resource: &str, verb: &str) -> bool {
    roles
        .iter()
        .flat_map(|r| r.rules.iter().flatten())
        .any(|rule| {
            rule.api_groups.iter().flatten().any(|g| g == group)
                && rule.resources.iter().flatten().any(|r| r == resource)
                && rule.verbs.iter().any(|v| v == verb)
        })
}

/// Each rule the issue found accepted is refused without allowPrivileged
/// (Valid=False and Ready=False with the reason, no Role with it in the tenant
/// namespace) and accepted with it.
#[tokio::test]
async fn rolepolicy_guard_refuses_what_is_not_known_safe() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_controller, _) = start_controller(&operator);
    let _stop = start_policy_controller(&operator);
    let name = unique("e2f");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;

    let refused: &[(&str, &str, &str, &str)] = &[
        ("", "serviceaccounts/token", "create", "SensitiveResource"),
        ("", "configmaps", "CREATE", "UnknownVerb"),
        ("", "events", "delete", "SensitiveResource"),
        ("policy", "podsecuritypolicies", "use", "UnknownVerb"),
        (
            "admissionregistration.k8s.io",
            "validatingadmissionpolicybindings",
            "get",
            "ClusterScopedResource",
        ),
        (
            "networking.k8s.io",
            "networkpolicies",
            "create",
            "ManagedKindWrite",
        ),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            "create",
            "ManagedKindWrite",
        ),
    ];
    let policies: Api<RolePolicy> = Api::all(client.clone());
    let policy = |pname: &str,
                  tenant: &str,
                  role: &str,
                  rule: serde_json::Value,
                  privileged: bool| {
        serde_json::from_value::<RolePolicy>(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy", "metadata": {"name": pname},
            "spec": {
                "tenants": [tenant],
                "allowPrivileged": privileged,
                "roles": [{"name": role, "rules": [rule]}],
                "bindings": [{"role": role, "subjects": [{"kind": "User", "name": format!("{name}-{role}@example.com")}]}]
            }
        }))
        .expect("policy")
    };
    for (i, (group, resource, verb, reason)) in refused.iter().enumerate() {
        let rule = json!({"apiGroups": [group], "resources": [resource], "verbs": [verb]});
        let refused_name = format!("{name}-r{i}");
        let allowed_name = format!("{name}-p{i}");
        cleanup.policy(&refused_name).policy(&allowed_name);
        policies
            .create(
                &PostParams::default(),
                &policy(&refused_name, &name, &format!("r{i}"), rule.clone(), false),
            )
            .await
            .expect("refused policy is stored");
        // The same rule with allowPrivileged, for a tenant that does not exist
        // (Palisade itself could not grant these in a tenant namespace).
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &allowed_name,
                    &format!("{name}-nobody"),
                    &format!("p{i}"),
                    rule,
                    true,
                ),
            )
            .await
            .expect("privileged policy is stored");
        for type_ in ["Valid", "Ready"] {
            let p = wait(await_condition(
                policies.clone(),
                &refused_name,
                condition_is(type_, "False", reason),
            ))
            .await
            .expect("policy");
            let c = palisade::crd::condition::find(
                &p.status.as_ref().expect("status").conditions,
                type_,
            )
            .expect("condition")
            .clone();
            assert!(
                c.message.contains("spec.roles[0].rules[0]"),
                "{type_} names the rule: {}",
                c.message
            );
            eprintln!("{resource} {verb}: {type_}=False {reason}: {}", c.message);
        }
        wait(await_condition(
            policies.clone(),
            &allowed_name,
            condition_is("Valid", "True", "Valid"),
        ))
        .await;
    }

    // A valid policy created last: once its Role is in the namespace, the
    // Tenant controller has compiled every policy above.
    let marker = format!("{name}-marker");
    cleanup.policy(&marker);
    policies
        .create(
            &PostParams::default(),
            &policy(
                &marker,
                &name,
                "marker",
                json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}),
                false,
            ),
        )
        .await
        .expect("marker policy");
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    wait(await_condition(
        roles.clone(),
        "palisade:marker",
        |r: Option<&Role>| r.is_some(),
    ))
    .await;
    let all = roles.list(&Default::default()).await.expect("roles").items;
    for (i, (group, resource, verb, _)) in refused.iter().enumerate() {
        assert!(
            all.iter().all(|r| r.name_any() != format!("palisade:r{i}")),
            "no Role for the refused rule {i}"
        );
        assert!(
            !grants(&all, group, resource, verb),
            "no Role in {ns} grants {verb} on {resource}"
        );
    }
    delete_tenant(&client, &name).await;
}

/// A role named `operator` would become `palisade:operator`, the operator's own
/// RoleBinding in every tenant namespace: the API server refuses it at create,
/// and that RoleBinding stays as it was.
#[tokio::test]
async fn rolepolicy_reserved_role_name_is_refused_at_admission() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_controller, _) = start_controller(&operator);
    let _stop = start_policy_controller(&operator);
    let name = unique("e2o");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name).policy(&name);
    let ns = format!("{name}-a");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    let before = bindings
        .get(palisade::resources::rbac::OPERATOR_BINDING)
        .await
        .expect("the operator's RoleBinding");
    assert_eq!(before.role_ref.kind, "ClusterRole");

    let policies: Api<RolePolicy> = Api::all(client.clone());
    for spec in [
        json!({"tenants": [name], "roles": [{"name": "operator", "permissions": ["config:read"]}],
               "bindings": [{"role": "operator", "subjects": [{"kind": "User", "name": "mallory@example.com"}]}]}),
        json!({"tenants": [name], "allowPrivileged": true,
               "bindings": [{"role": "operator", "subjects": [{"kind": "User", "name": "mallory@example.com"}]}]}),
    ] {
        let policy: RolePolicy = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("policy");
        match policies.create(&PostParams::default(), &policy).await {
            Err(kube::Error::Api(e)) => {
                eprintln!("refused: {} {}", e.code, e.message);
                assert!(
                    e.code == 422 && e.message.contains("reserved role name"),
                    "{} {}",
                    e.code,
                    e.message
                );
            }
            other => panic!("a role named operator was accepted: {other:?}"),
        }
    }
    assert!(policies.get_opt(&name).await.expect("get").is_none());

    // A later change to the tenant: the controller runs again; the operator's
    // RoleBinding is still its own, unchanged.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"e2e": "touched"}}})),
        )
        .await
        .expect("label tenant");
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let after = bindings
        .get(palisade::resources::rbac::OPERATOR_BINDING)
        .await
        .expect("the operator's RoleBinding");
    assert_eq!(after.role_ref, before.role_ref);
    assert_eq!(after.subjects, before.subjects);
    assert_eq!(after.metadata.uid, before.metadata.uid);
    delete_tenant(&client, &name).await;
}

/// Polls until the Events in `ns` include one with `reason` about `object`.
async fn event_about(client: &Client, ns: &str, reason: &str, object: &str) -> Event {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait(async {
        loop {
            let list = events.list(&Default::default()).await?;
            if let Some(e) = list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
            }) {
                return Ok::<_, kube::Error>(e);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
}

/// A malformed `palisade.dev/ttl` counts as absent (reported by a Warning
/// Event): the Tenant's maxAge rule still deletes the object. A
/// `managed-by: palisade` label a tenant put on its own object does not protect
/// it; what Palisade really manages (its rotated Secret) is never collected.
#[tokio::test]
async fn gc_rules_apply_whatever_the_tenant_writes_on_its_objects() {
    if !enabled() {
        return;
    }
    let (client, (name, ns), _running) = one_namespace_ready(
        "e2t",
        json!({
            "secrets": [{"name": "db", "type": "Random", "rotateEvery": "720h"}],
            "garbageCollection": {
                "rules": [
                    {"name": "scratch", "kinds": ["ConfigMap"], "selector": {"matchLabels": {"e2e": "fail-closed"}}, "maxAge": "3s"},
                    {"name": "managed-looking", "kinds": ["ConfigMap", "Secret"],
                     "selector": {"matchLabels": {"app.kubernetes.io/managed-by": "palisade"}}, "maxAge": "3s"}
                ]
            }
        }),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let rotated = secrets.get("db").await.expect("Palisade's rotated Secret");
    assert_eq!(
        rotated
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("palisade"),
        "the rule selects Palisade's own Secret too"
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut created = Vec::new();
    for (cm_name, labels, annotations) in [
        (
            "ttl-abc",
            json!({"e2e": "fail-closed"}),
            json!({"palisade.dev/ttl": "abc"}),
        ),
        (
            "ttl-fraction",
            json!({"e2e": "fail-closed"}),
            json!({"palisade.dev/ttl": "1.5h"}),
        ),
        (
            "ttl-zero",
            json!({"e2e": "fail-closed"}),
            json!({"palisade.dev/ttl": "0s"}),
        ),
        (
            "labelled",
            json!({"app.kubernetes.io/managed-by": "palisade"}),
            json!({}),
        ),
    ] {
        created.push((cm_name, create_cm(&cms, cm_name, labels, annotations).await));
    }
    for (cm_name, uid) in &created {
        wait(await_condition(
            cms.clone(),
            cm_name,
            conditions::is_deleted(uid),
        ))
        .await;
        eprintln!("{cm_name}: collected");
    }
    for cm_name in ["ttl-abc", "ttl-fraction", "ttl-zero"] {
        let ev = event_about(&client, &ns, "InvalidAnnotation", cm_name).await;
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        eprintln!(
            "{cm_name}: Warning InvalidAnnotation: {}",
            ev.note.unwrap_or_default()
        );
    }
    // The pass that collected the labelled ConfigMaps (same rule, created
    // later) saw Palisade's Secret past the rule's maxAge too: still the same.
    let still = secrets.get("db").await.expect("Palisade's Secret survives");
    assert_eq!(still.metadata.uid, rotated.metadata.uid);
    delete_tenant(&client, &name).await;
}
