//! A `scope: Tenant` quota hands out every unit under concurrent creation.

use super::*;

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
    create_ready(&tenants, &tenant).await;

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
