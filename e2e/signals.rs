//! Issue #31 "An operator that tells the truth" (and #26's 403-free install),
//! on the real API server, with the controller running as its ServiceAccount:
//! - on the happy path no watch is refused: a new namespace's Secrets and
//!   ConfigMaps are watched once Palisade's RoleBinding is in it;
//! - a watch Palisade may not list (its per-namespace ClusterRole broken by
//!   hand) is retried with a bounded backoff, never starves the Tenant watch,
//!   and recovers by itself within 30 s once the permission is back.

use super::*;
use k8s_openapi::api::rbac::v1::ClusterRole;
use palisade::operator_rbac::TENANT_NAMESPACE_ROLE;

/// Re-applies the operator's RBAC when dropped (pass or fail), like
/// [`Cleanup`]: a test that breaks it must not break the tests after it.
struct RestoreOperatorRbac;

impl Drop for RestoreOperatorRbac {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(client) = Client::try_default().await {
                    install_operator_rbac(&client).await;
                }
            });
        })
        .join();
    }
}

/// Waits (bounded by `limit`) until `check` holds; returns how long it took.
async fn within(limit: Duration, what: &str, check: impl Fn() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test]
async fn watches_never_403_on_the_happy_path_and_recover_without_restart() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_controller, ctx) = start_controller(&operator);
    let tenants: Api<Tenant> = Api::all(client.clone());
    let mut cleanup = Cleanup::default();

    // Happy path: two namespaces appear, each watched once it may be listed.
    let first = unique("sig");
    cleanup.tenant(&first);
    tenants
        .create(&PostParams::default(), &sample(&first, "Delete"))
        .await
        .expect("create");
    wait(await_condition(tenants.clone(), &first, tenant_ready(None))).await;
    assert_eq!(
        ctx.cache.health.errors(403),
        0,
        "a watch was refused on the happy path"
    );
    assert_eq!(ctx.cache.health.failing(), 0);

    // Take Secrets away from Palisade's per-namespace role.
    let _restore = RestoreOperatorRbac;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let mut role = roles.get(TENANT_NAMESPACE_ROLE).await.expect("role");
    let rules = role.rules.take().unwrap_or_default();
    role.rules = Some(
        rules
            .into_iter()
            .filter(|r| {
                !r.resources
                    .as_ref()
                    .is_some_and(|res| res.iter().any(|x| x == "secrets"))
            })
            .collect(),
    );
    role.metadata.managed_fields = None;
    roles
        .replace(TENANT_NAMESPACE_ROLE, &PostParams::default(), &role)
        .await
        .expect("narrow the role");

    let second = unique("sig");
    cleanup.tenant(&second);
    tenants
        .create(&PostParams::default(), &sample(&second, "Delete"))
        .await
        .expect("create");
    // Its Secret watches are refused and retried; the Tenant waits for them.
    within(TIMEOUT, "a failing watch", || {
        ctx.cache.health.failing() > 0
    })
    .await;
    let t = tenants.get(&second).await.expect("get");
    assert!(
        !tenant_ready(None)(Some(&t)),
        "Ready without its Secrets listed"
    );
    // The Tenant watch is not starved meanwhile: a change to the first
    // Tenant is still seen and acted on.
    tenants
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"hard": {"pods": "11"}}}})),
        )
        .await
        .expect("edit");
    let generation = tenants.get(&first).await.expect("get").metadata.generation;
    wait(await_condition(
        tenants.clone(),
        &first,
        tenant_ready(generation),
    ))
    .await;

    // The permission comes back: no restart, Ready within 30 s.
    install_operator_rbac(&client).await;
    let start = std::time::Instant::now();
    wait(await_condition(
        tenants.clone(),
        &second,
        tenant_ready(None),
    ))
    .await;
    let took = start.elapsed();
    within(Duration::from_secs(30), "every watch recovered", || {
        ctx.cache.health.failing() == 0
    })
    .await;
    assert!(
        took <= Duration::from_secs(30),
        "Ready {took:?} after the permission came back"
    );
    assert!(ctx.cache.is_ready());
    eprintln!("recovered {took:?} after the permission came back");
    delete_tenant(&client, &second).await;
    delete_tenant(&client, &first).await;
}
