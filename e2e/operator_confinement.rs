//! The operator's ServiceAccount is confined to tenant namespaces.

use super::*;

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
    create_ready(&tenants, &sample(&name, "Delete")).await;
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
