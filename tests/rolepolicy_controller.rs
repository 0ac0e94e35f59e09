//! RolePolicy → RBAC in every selected tenant namespace, through the real Tenant
//! and RolePolicy controllers on the in-process API server.

mod support;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use palisade::crd::{RolePolicy, Tenant};
use palisade_testkit::FakeApiServer;
use serde_json::{Value, json};
use support::*;

const RB: &str = "rolebindings.rbac.authorization.k8s.io";
const ROLES: &str = "roles.rbac.authorization.k8s.io";

async fn tenant(server: &FakeApiServer, name: &str, tier: &str) {
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name, "labels": {"tier": tier}},
        "spec": {"namespaces": [{"name": format!("{name}-a")}], "owners": [{"kind": "User", "name": format!("{name}-owner")}]}
    }))
    .expect("tenant");
    Api::<Tenant>::all(server.client())
        .create(&PostParams::default(), &t)
        .await
        .expect("create tenant");
    wait_ready(server, name).await;
}

fn deployer_policy(name: &str) -> RolePolicy {
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
        "metadata": {"name": name},
        "spec": {
            "tenantSelector": {"matchLabels": {"tier": "gold"}},
            "roles": [
                {"name": "deployer", "permissions": ["workloads:write", "config:read"],
                 "rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]}]},
                {"name": "viewer", "permissions": ["secrets:read"]}
            ],
            "bindings": [
                {"role": "deployer", "subjects": [{"kind": "Group", "name": "ci"}]},
                {"role": "admin", "subjects": [{"kind": "User", "name": "oncall"}]}
            ]
        }
    }))
    .expect("policy")
}

fn subjects(binding: &Value) -> Vec<String> {
    binding["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn wait_policy(
    server: &FakeApiServer,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Value {
    let ok = server
        .wait_until(WAIT, |s| {
            condition_of(s, "rolepolicies.palisade.dev", name, type_)
                .is_some_and(|c| c["status"] == status && c["reason"] == reason)
        })
        .await;
    let c = condition_of(server, "rolepolicies.palisade.dev", name, type_);
    assert!(
        ok.is_ok(),
        "policy {name}: {type_} never {status}/{reason}: {c:?}"
    );
    c.unwrap_or(Value::Null)
}

#[tokio::test]
async fn compiles_for_selected_tenants_and_follows_selection_changes() {
    let server = server();
    let clock = clock();
    let _tenants = start(&server, clock.clone());
    let _policies = start_policies(&server, clock.clone());
    tenant(&server, "gold1", "gold").await;
    tenant(&server, "bronze1", "bronze").await;

    let api: Api<RolePolicy> = Api::all(server.client());
    api.create(&PostParams::default(), &deployer_policy("deployers"))
        .await
        .expect("policy");
    let role = server
        .wait_for_json(ROLES, Some("gold1-a"), "palisade:deployer", WAIT, |_| true)
        .await
        .expect("custom role in the selected tenant");
    let rules = role["rules"].to_string();
    assert!(
        rules.contains("deployments/scale") && rules.contains("configmaps"),
        "{rules}"
    );
    let admin = server
        .wait_for_json(RB, Some("gold1-a"), "palisade:admin", WAIT, |b| {
            subjects(b).contains(&"oncall".to_string())
        })
        .await
        .expect("admin binding extended");
    assert!(
        subjects(&admin).contains(&"gold1-owner".to_string()),
        "owners stay bound"
    );
    let viewer = server
        .get_json(ROLES, Some("gold1-a"), "palisade:viewer")
        .expect("viewer");
    assert!(
        viewer["rules"].to_string().contains("secrets"),
        "built-in extended"
    );
    assert!(
        server
            .get_json(ROLES, Some("bronze1-a"), "palisade:deployer")
            .is_none(),
        "unselected tenant untouched"
    );
    wait_policy(&server, "deployers", "Ready", "True", "Applied").await;
    let p = server
        .get_json("rolepolicies.palisade.dev", None, "deployers")
        .expect("policy");
    assert_eq!(p["status"]["tenantCount"], 1);
    assert_eq!(p["status"]["tenants"][0]["tenant"], "gold1");
    assert_eq!(p["status"]["tenants"][0]["roles"], 2);

    // The bronze tenant is promoted: it converges without touching the policy.
    patch_tenant(
        &server,
        "bronze1",
        json!({"metadata": {"labels": {"tier": "gold"}}}),
    )
    .await;
    server
        .wait_for_json(RB, Some("bronze1-a"), "palisade:deployer", WAIT, |_| true)
        .await
        .expect("binding after selection");
    server
        .wait_for_json("rolepolicies.palisade.dev", None, "deployers", WAIT, |p| {
            p["status"]["tenantCount"] == 2
        })
        .await
        .expect("policy status follows");

    // A namespace added to a tenant gets the roles too.
    patch_tenant(
        &server,
        "gold1",
        json!({"spec": {"namespaces": [{"name": "gold1-a"}, {"name": "gold1-b"}]}}),
    )
    .await;
    server
        .wait_for_json(ROLES, Some("gold1-b"), "palisade:deployer", WAIT, |_| true)
        .await
        .expect("role in the new namespace");

    // Deselected again: its custom roles and bindings are pruned.
    patch_tenant(
        &server,
        "bronze1",
        json!({"metadata": {"labels": {"tier": "bronze"}}}),
    )
    .await;
    server
        .wait_for_absent(ROLES, Some("bronze1-a"), "palisade:deployer", WAIT)
        .await
        .expect("pruned");
    server
        .wait_for_absent(RB, Some("bronze1-a"), "palisade:deployer", WAIT)
        .await
        .expect("pruned");
    assert!(
        server
            .get_json(ROLES, Some("bronze1-a"), "palisade:admin")
            .is_some(),
        "built-ins stay"
    );

    // Deleting the policy removes what it added everywhere.
    api.delete("deployers", &DeleteParams::default())
        .await
        .expect("delete");
    server
        .wait_for_absent(ROLES, Some("gold1-a"), "palisade:deployer", WAIT)
        .await
        .expect("pruned");
    server
        .wait_for_json(RB, Some("gold1-a"), "palisade:admin", WAIT, |b| {
            !subjects(b).contains(&"oncall".to_string())
        })
        .await
        .expect("extra admin subject removed");
}

#[tokio::test]
async fn invalid_policy_keeps_the_previous_valid_state_and_says_why() {
    let server = server();
    let clock = clock();
    let _tenants = start(&server, clock.clone());
    let _policies = start_policies(&server, clock.clone());
    tenant(&server, "gold2", "gold").await;
    let api: Api<RolePolicy> = Api::all(server.client());
    api.create(&PostParams::default(), &deployer_policy("p1"))
        .await
        .expect("policy");
    wait_policy(&server, "p1", "Valid", "True", "Valid").await;
    server
        .wait_for_json("rolepolicies.palisade.dev", None, "p1", WAIT, |p| {
            p["status"]["lastValidSpec"].is_string()
        })
        .await
        .expect("last valid spec recorded");
    let before = server
        .wait_for_json(ROLES, Some("gold2-a"), "palisade:deployer", WAIT, |_| true)
        .await
        .expect("role");

    // Escalation attempt: a wildcard verb on secrets.
    let bad = json!({"spec": {"roles": [
        {"name": "deployer", "permissions": ["workloads:write"], "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}]}
    ]}});
    api.patch("p1", &PatchParams::default(), &Patch::Merge(bad))
        .await
        .expect("edit");
    let c = wait_policy(&server, "p1", "Valid", "False", "WildcardVerb").await;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.roles[0].rules[0]"),
        "names the offending rule: {c}"
    );
    wait_policy(&server, "p1", "Ready", "False", "WildcardVerb").await;
    assert!(
        !events_with_reason(&server, "WildcardVerb").is_empty(),
        "an Event says why"
    );
    let after = server
        .get_json(ROLES, Some("gold2-a"), "palisade:deployer")
        .expect("role kept");
    assert_eq!(
        after["rules"], before["rules"],
        "previous valid state stays applied"
    );
    assert!(!after["rules"].to_string().contains("\"*\""));

    // A later policy defining the same custom role differently is in conflict.
    let mut second = deployer_policy("p2");
    second.spec.roles.truncate(1);
    second.spec.roles[0].permissions = vec!["config:write".into()];
    second.spec.roles[0].rules.clear();
    second.spec.bindings.clear();
    api.create(&PostParams::default(), &second)
        .await
        .expect("second policy");
    wait_policy(&server, "p2", "Valid", "False", "RoleConflict").await;
    let role = server
        .get_json(ROLES, Some("gold2-a"), "palisade:deployer")
        .expect("role");
    assert_eq!(role["rules"], before["rules"], "the first definition wins");
}

fn token_of(server: &FakeApiServer, ns: &str) -> (String, Value) {
    use base64::Engine;
    let s = server
        .get_json("secrets", Some(ns), "api-palisade-token")
        .expect("token secret");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["token"].as_str().expect("token"))
        .expect("b64");
    (String::from_utf8(raw).expect("utf-8"), s)
}

fn jwks_of(server: &FakeApiServer, ns: &str) -> String {
    let cm = server
        .get_json("configmaps", Some(ns), "signing-jwks")
        .expect("jwks");
    cm["data"]["jwks.json"]
        .as_str()
        .expect("jwks.json")
        .to_string()
}

#[tokio::test]
async fn tokens_are_issued_refreshed_and_follow_key_rotation() {
    let server = server();
    let clock = clock();
    let tenants = start(&server, clock.clone());
    let _policies = start_policies(&server, clock.clone());
    let t: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "apps", "labels": {"tier": "gold"}},
        "spec": {
            "namespaces": [{"name": "apps-a"}, {"name": "apps-b"}],
            "secrets": [{"name": "signing", "type": "JwtSigningKey", "algorithm": "ES256", "rotateEvery": "720h", "keepPrevious": 1}]
        }
    }))
    .expect("tenant");
    Api::<Tenant>::all(server.client())
        .create(&PostParams::default(), &t)
        .await
        .expect("tenant");
    let policy: RolePolicy = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy", "metadata": {"name": "validators"},
        "spec": {
            "tenants": ["apps"],
            "roles": [{"name": "validator", "permissions": ["config:read"], "scopes": ["validator:run", "vault:read"]}],
            "bindings": [{"role": "validator", "subjects": [{"kind": "ServiceAccount", "name": "api"}], "token": {"ttl": "15m"}}]
        }
    }))
    .expect("policy");
    Api::<RolePolicy>::all(server.client())
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");
    wait_condition(
        &server,
        "apps",
        "TokensIssued",
        "True",
        Some("TokensCurrent"),
    )
    .await;
    wait_ready(&server, "apps").await;

    for ns in ["apps-a", "apps-b"] {
        let (token, _) = token_of(&server, ns);
        // The manual clock is in the past relative to the wall clock: verify
        // the signature and claims, not the expiry, against the published JWKS.
        let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
            .expect("decodes")
            .claims;
        assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:api"));
        assert_eq!(claims["aud"], "apps");
        assert_eq!(claims["tenant"], "apps");
        assert_eq!(claims["scope"], "validator:run vault:read");
        assert_eq!(
            claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
            900
        );
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        assert!(
            verify_signature(&token, &jwks_of(&server, ns)),
            "verifies against the tenant's JWKS"
        );
    }
    let (first, _) = token_of(&server, "apps-a");

    // Not re-issued before 2/3 of the lifetime, re-issued at it.
    clock.advance(std::time::Duration::from_secs(599));
    tenants.resync();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(token_of(&server, "apps-a").0, first);
    clock.advance(std::time::Duration::from_secs(1));
    tenants.resync();
    server
        .wait_until(WAIT, |s| token_of(s, "apps-a").0 != first)
        .await
        .expect("re-issued at 2/3");
    let (second, secret) = token_of(&server, "apps-a");
    assert_ne!(second, first);
    let kid1 = secret["metadata"]["annotations"]["palisade.dev/token-kid"]
        .as_str()
        .expect("kid")
        .to_string();

    // A key rotation re-issues right away with the new kid; the old token still
    // verifies while its key is kept, and fails once the key is dropped.
    let rotate = |server: &FakeApiServer| {
        let mut key = server
            .get_json("secrets", Some("apps-a"), "signing")
            .expect("key");
        key["metadata"]["annotations"]["palisade.dev/rotate-now"] = json!("true");
        server.put_json("secrets", key).expect("annotate");
    };
    rotate(&server);
    let kid_now = |s: &FakeApiServer| {
        token_of(s, "apps-a").1["metadata"]["annotations"]["palisade.dev/token-kid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    server
        .wait_until(WAIT, |s| kid_now(s) != kid1)
        .await
        .expect("re-issued after rotation");
    let (third, _) = token_of(&server, "apps-a");
    assert!(verify_signature(&third, &jwks_of(&server, "apps-a")));
    assert!(
        verify_signature(&second, &jwks_of(&server, "apps-a")),
        "previous key kept: old token still valid"
    );
    let kid2 = kid_now(&server);
    // Forced rotations of one Secret are at least 10 minutes apart (issue #15).
    clock.advance(std::time::Duration::from_secs(600));
    rotate(&server);
    server
        .wait_until(WAIT, |s| {
            kid_now(s) != kid2 && !jwks_of(s, "apps-a").contains(&kid1)
        })
        .await
        .expect("second rotation");
    assert!(
        !verify_signature(&second, &jwks_of(&server, "apps-a")),
        "token of a dropped key fails"
    );
}

fn verify_signature(token: &str, jwks: &str) -> bool {
    let set = serde_json::from_str(jwks).expect("jwks");
    jwt_verifies(token, &set, |alg| {
        let mut v = jsonwebtoken::Validation::new(alg);
        v.validate_exp = false;
        v.set_audience(&["apps"]);
        v
    })
}
