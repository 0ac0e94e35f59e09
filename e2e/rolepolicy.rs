//! A RolePolicy grants exactly what it says.

use super::*;

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
    let stop = start_policy_controller(&operator);
    let name = unique("e2p");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name).policy(&name);
    let ns = format!("{name}-a");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;
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
    drop(stop);
}
