//! Rotated Secrets: created, rotated on demand, published as JWKS.

use super::*;

#[tokio::test]
async fn secrets_are_created_rotated_on_demand_and_published_as_jwks() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let (client, (name, ns), _running) = one_namespace_ready(
        "e2k",
        json!({
            "secrets": [
                {"name": "api-key", "type": "Random", "rotateEvery": "720h"},
                {"name": "signing", "type": "JwtSigningKey", "algorithm": "EdDSA", "rotateEvery": "720h", "keepPrevious": 1}
            ]
        }),
    )
    .await;

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

/// Issue #24: Secrets and ConfigMaps are watched only in the namespaces
/// where Palisade generates some (`palisade.dev/secrets-watched`); a secret
/// moved to another namespace is created there, pruned where it left, and
/// only then is the namespace it left no longer watched.
#[tokio::test]
async fn secrets_are_watched_only_where_they_are_generated() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::core::v1::{Namespace, Secret};
    let (client, _controller) = setup().await;
    let mut cleanup = Cleanup::default();
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique("e2w");
    cleanup.tenant(&name);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let secret_in = |ns: &str| json!([{"name": "api-key", "type": "Random", "rotateEvery": "720h", "namespaces": [ns]}]);
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"namespaces": [{"name": a}, {"name": b}], "deletionPolicy": "Delete",
                 "secrets": secret_in(&a)},
    }))
    .expect("tenant");
    create_ready(&tenants, &tenant).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let watched = |ns: Option<&Namespace>| {
        ns.and_then(|n| n.annotations().get("palisade.dev/secrets-watched").cloned())
    };
    let annotation = async |ns: &str| watched(Some(&namespaces.get(ns).await.expect("namespace")));
    assert_eq!(annotation(&a).await.as_deref(), Some("true"));
    assert_eq!(annotation(&b).await.as_deref(), Some("false"));
    Api::<Secret>::namespaced(client.clone(), &a)
        .get("api-key")
        .await
        .expect("the secret where the spec puts it");

    edit_ready(&tenants, &name, json!({"spec": {"secrets": secret_in(&b)}})).await;
    Api::<Secret>::namespaced(client.clone(), &b)
        .get("api-key")
        .await
        .expect("the secret where it moved");
    wait(await_condition(
        Api::<Secret>::namespaced(client.clone(), &a),
        "api-key",
        |s: Option<&Secret>| s.is_none(),
    ))
    .await;
    wait(await_condition(
        namespaces.clone(),
        &a,
        move |n: Option<&Namespace>| watched(n).as_deref() == Some("false"),
    ))
    .await;
    assert_eq!(annotation(&b).await.as_deref(), Some("true"));
    delete_tenant(&client, &name).await;
}
