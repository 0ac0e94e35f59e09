//! A Tenant converges, heals drift, is deleted by its `deletionPolicy`, survives a controller restart without writes, and reports invalid specs.

use super::*;

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
    create_ready(&tenants, &sample(&name, "Delete")).await;

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
    edit_ready(
        &tenants,
        &name,
        json!({"spec": {"namespaces": [{"name": ns_a}]}}),
    )
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
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let namespaces = vec![format!("{name}-a"), format!("{name}-b")];
    let before = settled_rvs(&client, &namespaces).await;
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
    create_ready(&tenants, &sample(&name, "Retain")).await;
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
