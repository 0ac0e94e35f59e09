//! Secret rotation through the real Tenant controller, with an injected clock.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use palisade::crd::Tenant;
use palisade_testkit::FakeApiServer;
use serde_json::{Value, json};
use support::create_tenant as create;
use support::*;

const TENANT: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: keys}
spec:
  namespaces: [{name: keys-a}, {name: keys-b}]
  secrets:
    - {name: api-key, type: Random, length: 40, rotateEvery: 1h, keepPrevious: 1, restartWorkloads: true}
    - {name: signing, type: JwtSigningKey, algorithm: ES256, rotateEvery: 1h, keepPrevious: 1, namespaces: [keys-a], restartWorkloads: true}
"#;

fn data(secret: &Value, key: &str) -> String {
    let b = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("data.{key} missing"));
    String::from_utf8(STANDARD.decode(b).expect("base64")).expect("utf-8")
}

fn secret(server: &FakeApiServer, ns: &str, name: &str) -> Value {
    server
        .get_json("secrets", Some(ns), name)
        .unwrap_or_else(|| panic!("secret {ns}/{name}"))
}

async fn wait_version(server: &FakeApiServer, ns: &str, name: &str, version: &str) -> Value {
    let v = server
        .wait_for_json("secrets", Some(ns), name, WAIT, |s| {
            s["data"]["version"]
                .as_str()
                .and_then(|b| STANDARD.decode(b).ok())
                .as_deref()
                == Some(version.as_bytes())
        })
        .await;
    v.unwrap_or_else(|_| {
        panic!(
            "{ns}/{name} never reached version {version}: {:?}",
            server.get_json("secrets", Some(ns), name)
        )
    })
}

fn jwks(server: &FakeApiServer) -> JwkSet {
    let cm = server
        .get_json("configmaps", Some("keys-a"), "signing-jwks")
        .expect("jwks configmap");
    serde_json::from_str(cm["data"]["jwks.json"].as_str().expect("jwks.json")).expect("JWK set")
}

fn sign(private_pem: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let claims = json!({"sub": "svc", "aud": "keys", "exp": 4_000_000_000u64});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(private_pem.as_bytes()).expect("key"),
    )
    .expect("sign")
}

/// Verifies a token against a JWKS the way a service would: by `kid`.
fn verifies(token: &str, set: &JwkSet) -> bool {
    jwt_verifies(token, set, |_| {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["keys"]);
        v
    })
}

#[tokio::test]
async fn creation_rotation_at_deadline_overlap_and_restart_safety() {
    let server = server();
    let clock = clock();
    let running = start_ready(&server, clock.clone(), TENANT).await;

    // First creation: a Secret per namespace, JWKS only where the key lives.
    let a1 = secret(&server, "keys-a", "api-key");
    let b1 = secret(&server, "keys-b", "api-key");
    assert_eq!(data(&a1, "version"), "v1");
    assert_eq!(data(&a1, "value").len(), 40);
    assert_ne!(
        data(&a1, "value"),
        data(&b1, "value"),
        "every namespace gets its own value"
    );
    assert!(
        server
            .get_json("secrets", Some("keys-b"), "signing")
            .is_none()
    );
    let s1 = secret(&server, "keys-a", "signing");
    let kid1 = data(&s1, "kid");
    assert_eq!(jwks(&server).keys.len(), 1);
    let t = server
        .get_json("tenants.palisade.dev", None, "keys")
        .expect("tenant");
    // One entry per secret, with counts (not one per secret per namespace).
    let statuses = t["status"]["secrets"].as_array().expect("secrets");
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    let api_key = statuses
        .iter()
        .find(|x| x["name"] == "api-key")
        .expect("api-key");
    assert_eq!(
        (
            &api_key["namespaces"],
            &api_key["current"],
            &api_key["version"]
        ),
        (&json!(2), &json!(2), &json!("v1"))
    );
    assert_eq!(
        condition(&server, "keys", "SecretsRotated").expect("condition")["status"],
        "True"
    );
    // The next rotation is exported for the SecretRotationOverdue alert.
    let metrics = running.ctx.metrics.encode().expect("metrics");
    let due = format!(" {}", 1_800_000_000 + 3600);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("palisade_secret_next_rotation_timestamp_seconds{")
                && l.contains("secret=\"api-key\"")
                && l.contains("namespace=\"keys-a\"")
                && (l.ends_with(&due) || l.ends_with(&format!("{due}.0")))
        ),
        "no next-rotation gauge at the deadline in:\n{metrics}"
    );

    // The controller asks to be woken exactly at the deadline.
    let tenant: Tenant = server.get(None, "keys").expect("tenant");
    let action = palisade::controller::tenant::reconcile(&running.ctx, &tenant)
        .await
        .expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));

    // One second before the deadline nothing rotates.
    clock.advance(Duration::from_secs(3599));
    let mark = server.mark();
    running.resync_and_wait(&server).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(data(&secret(&server, "keys-a", "api-key"), "version"), "v1");
    assert_eq!(server.writes_since(mark), 0, "no write before the deadline");

    // A token signed with the first key.
    let token1 = sign(&data(&s1, "private.pem"), &kid1);
    assert!(verifies(&token1, &jwks(&server)));

    // At the deadline: rotation, previous version kept, JWKS has both keys.
    clock.advance(Duration::from_secs(1));
    running.resync();
    let a2 = wait_version(&server, "keys-a", "api-key", "v2").await;
    assert_eq!(
        data(&a2, "value.v1"),
        data(&a1, "value"),
        "previous value kept for clients in flight"
    );
    let s2 = server
        .wait_for_json("secrets", Some("keys-a"), "signing", WAIT, |s| {
            s["data"]["kid"] != s1["data"]["kid"]
        })
        .await
        .expect("signing key rotated");
    let kid2 = data(&s2, "kid");
    let set = jwks(&server);
    assert_eq!(set.keys.len(), 2);
    assert!(set.find(&kid1).is_some() && set.find(&kid2).is_some());
    assert!(
        verifies(&token1, &set),
        "token signed with the previous key still verifies"
    );
    assert!(verifies(&sign(&data(&s2, "private.pem"), &kid2), &set));

    // A restarted controller neither rotates early nor loses a version.
    running.stop().await;
    let mark = server.mark();
    let restarted = start(&server, clock.clone());
    server
        .wait_until(WAIT, |_| restarted.ctx.reconciles() >= 1)
        .await
        .expect("reconciled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.writes_since(mark), 0, "restart: no write");
    let after = secret(&server, "keys-a", "api-key");
    assert_eq!(data(&after, "value"), data(&a2, "value"));
    assert_eq!(data(&after, "value.v1"), data(&a1, "value"));

    // Another rotation drops the first key (keepPrevious: 1): its tokens stop verifying.
    clock.advance(Duration::from_secs(3600));
    restarted.resync();
    server
        .wait_until(WAIT, |s| {
            s.get_json("configmaps", Some("keys-a"), "signing-jwks")
                .is_some_and(|cm| {
                    !cm["data"]["jwks.json"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&kid1)
                })
        })
        .await
        .expect("first key dropped from JWKS");
    let set = jwks(&server);
    assert_eq!(set.keys.len(), 2);
    assert!(
        !verifies(&token1, &set),
        "a token signed with a dropped key is rejected"
    );
    let a3 = wait_version(&server, "keys-a", "api-key", "v3").await;
    assert!(
        a3["data"].get("value.v1").is_none(),
        "only keepPrevious versions are kept"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn forced_rotation_and_debounced_restarts_touch_only_consumers() {
    let server = server();
    let clock = clock();
    let running = start_ready(&server, clock.clone(), TENANT).await;

    let consumer = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "keys-a"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [{"name": "web", "image": "web", "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "api-key", "key": "value"}}}]}],
                "volumes": [{"name": "jwt", "secret": {"secretName": "signing"}}]
            }}}
    });
    let bystander = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "keys-a"},
        "spec": {"selector": {"matchLabels": {"app": "db"}}, "serviceName": "db", "template": {
            "metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "db", "envFrom": [{"secretRef": {"name": "unrelated"}}]}]}}}
    });
    server
        .put_json("deployments.apps", consumer)
        .expect("deployment");
    server
        .put_json("statefulsets.apps", bystander)
        .expect("statefulset");
    let bystander_rv = server
        .get_json("statefulsets.apps", Some("keys-a"), "db")
        .expect("sts")["metadata"]["resourceVersion"]
        .clone();

    // Both secrets fall due at once: the consumer restarts once, for both.
    clock.advance(Duration::from_secs(3600));
    let mark = server.mark();
    running.resync();
    let web = server
        .wait_for_json("deployments.apps", Some("keys-a"), "web", WAIT, |d| {
            d["spec"]["template"]["metadata"]["annotations"]["palisade.dev/restarted-for"]
                .as_str()
                .is_some_and(|v| v.contains("api-key=v2") && v.contains("signing="))
        })
        .await
        .expect("consumer restarted");
    let patches = server
        .log_since(mark)
        .into_iter()
        .filter(|r| r.resource == "deployments" && r.verb.is_write())
        .count();
    assert_eq!(patches, 1, "one restart for two rotations");
    let sts = server
        .get_json("statefulsets.apps", Some("keys-a"), "db")
        .expect("sts");
    assert_eq!(
        sts["metadata"]["resourceVersion"], bystander_rv,
        "non-consumers untouched"
    );

    // Forced rotation for incident response. v2 is brand new: the request waits
    // for the minimum interval between forced rotations (issue #15), says so in
    // status and in a Warning Event, and keeps the annotation.
    let mut s = secret(&server, "keys-b", "api-key");
    s["metadata"]["annotations"]["palisade.dev/rotate-now"] = json!("true");
    server.put_json("secrets", s).expect("annotate");
    let deferred = |s: &FakeApiServer| {
        s.get_json("tenants.palisade.dev", None, "keys")
            .and_then(|t| {
                t["status"]["secrets"].as_array().and_then(|a| {
                    a.iter()
                        .find(|x| x["name"] == "api-key")
                        .and_then(|x| x["pending"].as_array())
                        .and_then(|p| p.iter().find(|p| p["namespace"] == "keys-b"))
                        .and_then(|p| p["message"].as_str().map(str::to_string))
                })
            })
            .unwrap_or_default()
    };
    server
        .wait_until(WAIT, |s| deferred(s).contains("rotate-now waits until"))
        .await
        .expect("deferral reported in status");
    assert!(deferred(&server).contains("10m"), "{}", deferred(&server));
    // One Warning about the Secret, and one on the Tenant counting them.
    let warnings = events_with_reason(&server, "RotationDeferred");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings.iter().all(|w| w["type"] == "Warning"));
    let about = |kind: &str| {
        warnings
            .iter()
            .filter(|w| w["regarding"]["kind"] == kind)
            .count()
    };
    assert_eq!((about("Secret"), about("Tenant")), (1, 1), "{warnings:?}");
    running.resync();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = secret(&server, "keys-b", "api-key");
    assert_eq!(
        data(&still, "version"),
        "v2",
        "not rotated before the interval"
    );
    assert!(still["metadata"]["annotations"]["palisade.dev/rotate-now"].is_string());
    assert_eq!(
        events_with_reason(&server, "RotationDeferred").len(),
        2,
        "the same Events, not new ones per reconcile"
    );
    // Once the interval has passed it happens; the rotation clears the annotation.
    clock.advance(Duration::from_secs(600));
    running.resync();
    let rotated = wait_version(&server, "keys-b", "api-key", "v3").await;
    server
        .wait_until(WAIT, |s| deferred(s).is_empty())
        .await
        .expect("message gone after the rotation");
    assert!(
        rotated["metadata"]["annotations"]
            .get("palisade.dev/rotate-now")
            .is_none(),
        "rotate-now cleared"
    );
    assert!(!web.is_null());
    assert!(
        !events_with_reason(&server, "SecretRotated").is_empty(),
        "an Event per rotation"
    );
}

#[tokio::test]
async fn bad_secret_input_is_reported_and_foreign_secrets_never_overwritten() {
    let server = server();
    let _running = start(&server, clock());

    create(&server, "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: zero}\nspec:\n  namespaces: [{name: zero-a}]\n  secrets: [{name: s, type: Random, rotateEvery: 0s}]").await;
    wait_condition(&server, "zero", "Ready", "False", Some("InvalidRotation")).await;

    create(&server, "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: many}\nspec:\n  namespaces: [{name: many-a}]\n  secrets: [{name: s, type: Random, rotateEvery: 1h, keepPrevious: 11}]").await;
    wait_condition(&server, "many", "Ready", "False", Some("InvalidRotation")).await;

    // A Secret Palisade does not own, with the same name as an entry.
    server.put_json("namespaces", json!({"metadata": {"name": "foreign-a", "labels": {"app.kubernetes.io/managed-by": "palisade", "palisade.dev/tenant": "foreign"}}})).expect("ns");
    server
        .put_json("secrets", json!({"metadata": {"name": "db-password", "namespace": "foreign-a"}, "data": {"value": STANDARD.encode("mine")}}))
        .expect("foreign secret");
    create(&server, "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: foreign}\nspec:\n  namespaces: [{name: foreign-a}]\n  secrets: [{name: db-password, type: Random, rotateEvery: 1h}]").await;
    wait_condition(
        &server,
        "foreign",
        "SecretsRotated",
        "False",
        Some("SecretConflict"),
    )
    .await;
    wait_condition(&server, "foreign", "Ready", "False", Some("SecretConflict")).await;
    let s = secret(&server, "foreign-a", "db-password");
    assert_eq!(data(&s, "value"), "mine", "never overwritten");
    assert!(
        s["metadata"]
            .get("labels")
            .is_none_or(|l| l.get("palisade.dev/tenant").is_none())
    );
}

#[tokio::test]
async fn cordoned_tenants_do_not_rotate() {
    let server = server();
    let clock = clock();
    let running = start(&server, clock.clone());
    create(
        &server,
        &TENANT.replace("spec:\n", "spec:\n  cordoned: true\n"),
    )
    .await;
    wait_ready(&server, "keys").await;
    wait_condition(
        &server,
        "keys",
        "SecretsRotated",
        "True",
        Some("RotationPaused"),
    )
    .await;
    clock.advance(Duration::from_secs(7200));
    let mark = server.mark();
    running.resync_and_wait(&server).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.writes_since(mark), 0);
    assert_eq!(data(&secret(&server, "keys-a", "api-key"), "version"), "v1");
}

/// #31 item 2: a first reconcile with more Secrets to write than one pass
/// writes reports its progress (Reconciling=True, SecretsInProgress, counts)
/// between passes instead of a null status until the end, and converges.
#[tokio::test]
async fn many_secrets_are_written_in_passes_with_progress_in_status() {
    let server = server();
    let clock = clock();
    let _running = start(&server, clock.clone());
    let namespaces: Vec<Value> = (0..11)
        .map(|i| json!({"name": format!("many-{i}")}))
        .collect();
    let secrets: Vec<Value> = (0..50)
        .map(|i| json!({"name": format!("s{i}"), "type": "Random", "length": 16, "rotateEvery": "720h"}))
        .collect();
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": "many"},
        "spec": {"namespaces": namespaces, "secrets": secrets}
    }))
    .expect("tenant");
    let api: Api<Tenant> = Api::all(server.client());
    api.create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    const { assert!(550 > palisade::controller::tenant::secrets::WRITES_PER_PASS) };
    let progress = server
        .wait_until(WAIT, |s| {
            condition(s, "many", "Reconciling").is_some_and(|c| c["status"] == "True")
                && condition(s, "many", "Ready").is_some_and(|c| c["reason"] == "SecretsInProgress")
        })
        .await;
    assert!(progress.is_ok(), "no progress reported between passes");
    let t = server
        .get_json("tenants.palisade.dev", None, "many")
        .expect("tenant");
    let s0 = &t["status"]["secrets"][0];
    assert_eq!(s0["namespaces"], 11, "{s0}");
    wait_ready(&server, "many").await;
    let t = server
        .get_json("tenants.palisade.dev", None, "many")
        .expect("tenant");
    let all = t["status"]["secrets"].as_array().expect("secrets");
    assert_eq!(all.len(), 50);
    assert!(
        all.iter()
            .all(|s| s["current"] == 11 && s["pending"].is_null()),
        "{all:?}"
    );
    assert_eq!(server.list_json("secrets").len(), 550);
}

/// The `palisade.dev/secrets-watched` annotation of a namespace.
fn secrets_watched(server: &FakeApiServer, ns: &str) -> Option<String> {
    server.get_json("namespaces", None, ns)?["metadata"]["annotations"]
        ["palisade.dev/secrets-watched"]
        .as_str()
        .map(str::to_string)
}

/// Waits until Secret `name` in `ns` is pruned, then until `ns` is no
/// longer watched.
async fn pruned_then_unwatched(server: &FakeApiServer, ns: &str, name: &str) {
    server
        .wait_for_absent("secrets", Some(ns), name, WAIT)
        .await
        .unwrap_or_else(|_| panic!("{ns}/{name} is pruned"));
    server
        .wait_until(WAIT, |s| secrets_watched(s, ns).as_deref() == Some("false"))
        .await
        .unwrap_or_else(|_| panic!("{ns}, empty now, is no longer watched"));
}

/// Lists and watches of Secrets or ConfigMaps in `ns` since `mark`.
fn data_reads_in(
    server: &FakeApiServer,
    mark: palisade_testkit::LogMark,
    ns: &str,
) -> Vec<palisade_testkit::RequestRecord> {
    server
        .log_since(mark)
        .into_iter()
        .filter(|r| {
            matches!(r.resource.as_str(), "secrets" | "configmaps")
                && r.namespace.as_deref() == Some(ns)
                && matches!(
                    r.verb,
                    palisade_testkit::Verb::List | palisade_testkit::Verb::Watch
                )
        })
        .collect()
}

/// A namespace where Palisade generates nothing costs no Secret or ConfigMap
/// watch (nor list): the annotation says which are watched, follows the spec,
/// and stays `"true"` until what the spec no longer wants there is pruned.
#[tokio::test]
async fn secrets_are_watched_only_where_palisade_generates_them() {
    let server = server();
    let start = server.mark();
    let running = start_ready(
        &server,
        clock(),
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: quiet}
spec:
  namespaces: [{name: quiet-a}, {name: quiet-b}]
  secrets:
    - {name: api-key, type: Random, rotateEvery: 1h, namespaces: [quiet-a]}
"#,
    )
    .await;
    secret(&server, "quiet-a", "api-key");
    assert_eq!(secrets_watched(&server, "quiet-a").as_deref(), Some("true"));
    assert_eq!(
        secrets_watched(&server, "quiet-b").as_deref(),
        Some("false")
    );
    assert!(!data_reads_in(&server, start, "quiet-a").is_empty());
    let reads = data_reads_in(&server, start, "quiet-b");
    assert!(
        reads.is_empty(),
        "quiet-b holds nothing of Palisade's: never listed nor watched, got {reads:?}"
    );

    // The secret moves: created in quiet-b once its watch has listed, pruned
    // from quiet-a, and only then quiet-a is no longer watched.
    patch_tenant(
        &server,
        "quiet",
        json!({"spec": {"secrets": [{"name": "api-key", "type": "Random", "rotateEvery": "1h", "namespaces": ["quiet-b"]}]}}),
    )
    .await;
    server
        .wait_for_json("secrets", Some("quiet-b"), "api-key", WAIT, |_| true)
        .await
        .expect("the secret is created where it moved");
    pruned_then_unwatched(&server, "quiet-a", "api-key").await;
    assert_eq!(secrets_watched(&server, "quiet-b").as_deref(), Some("true"));
    wait_ready(&server, "quiet").await;

    // Watches that end are restarted only where the annotation says so.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mark = server.mark();
    server.close_watches();
    server
        .wait_until(WAIT, |s| !data_reads_in(s, mark, "quiet-b").is_empty())
        .await
        .expect("quiet-b's watch comes back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = data_reads_in(&server, mark, "quiet-a");
    assert!(reads.is_empty(), "quiet-a is watched again: {reads:?}");
    let writes = resync_writes(&server, &running).await;
    assert!(writes.is_empty(), "a resync wrote: {writes:?}");
    running.stop().await;
}

/// A namespace from before the annotation (none: watched) is listed, what
/// the spec does not want there is pruned, and then it is left unwatched.
#[tokio::test]
async fn a_namespace_from_before_the_annotation_is_pruned_then_unwatched() {
    let server = server();
    let labels = json!({"app.kubernetes.io/managed-by": "palisade", "palisade.dev/tenant": "old"});
    server
        .put_json(
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old-a", "labels": labels}}),
        )
        .expect("namespace");
    server
        .put_json(
            "secrets",
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "stale", "namespace": "old-a", "labels": labels},
                   "data": {"value": "c3RhbGU="}}),
        )
        .expect("secret");
    let running = start_ready(
        &server,
        clock(),
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: old}
spec:
  namespaces: [{name: old-a}]
"#,
    )
    .await;
    pruned_then_unwatched(&server, "old-a", "stale").await;
    let writes = resync_writes(&server, &running).await;
    assert!(writes.is_empty(), "a resync wrote: {writes:?}");
    running.stop().await;
}
