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

/// Polls `probe` every 100 ms until `done` holds for what it returns; fails
/// (naming `what` and the last value) past `limit`. Returns that value and
/// how long it took.
pub(super) async fn eventually<T: std::fmt::Debug, F: std::future::Future<Output = T>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> (T, Duration) {
    let start = std::time::Instant::now();
    loop {
        let value = probe().await;
        if done(&value) {
            return (value, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?} (last: {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`eventually`] for a check that needs no I/O.
async fn within(limit: Duration, what: &str, check: impl Fn() -> bool) -> Duration {
    eventually(limit, what, || std::future::ready(check()), |ok| *ok)
        .await
        .1
}

/// `tenant` with a rotated Secret in every namespace: Palisade watches
/// Secrets and ConfigMaps only where it generates some.
fn with_generated_secret(mut tenant: Tenant) -> Tenant {
    tenant.spec.secrets = serde_json::from_value(json!([
        {"name": "api-key", "type": "Random", "rotateEvery": "720h"}
    ]))
    .expect("secrets");
    tenant
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

    // Happy path: two namespaces appear, each watched once it may be listed
    // (its Secrets are watched because Palisade generates one there).
    let first = unique("sig");
    cleanup.tenant(&first);
    create_ready(&tenants, &with_generated_secret(sample(&first, "Delete"))).await;
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
        .create(
            &PostParams::default(),
            &with_generated_secret(sample(&second, "Delete")),
        )
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
    edit_ready(
        &tenants,
        &first,
        json!({"spec": {"quota": {"hard": {"pods": "11"}}}}),
    )
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

/// Events in `namespace` about the object `kind/name`.
async fn events_about(client: &Client, namespace: &str, kind: &str, name: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let lp = kube::api::ListParams::default()
        .fields(&format!("regarding.kind={kind},regarding.name={name}"));
    api.list(&lp)
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| {
            let count = e.series.as_ref().map_or(1, |s| s.count);
            Some(format!("{} x{count}", e.note?))
        })
        .collect()
}

/// #31 item 3: each rotation is an Event about its own Secret, so a series
/// never merges different Secrets or versions; the Tenant gets one Event per
/// reconcile with the count.
#[tokio::test]
async fn rotation_events_are_about_each_secret_and_never_merge() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::core::v1::Secret;
    let (client, _controller) = setup().await;
    let name = unique("sev");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": a}, {"name": b}],
            "deletionPolicy": "Delete",
            "secrets": [{"name": "one", "type": "Random", "rotateEvery": "720h"}]
        }
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &tenant).await;

    // Force two rotations of the Secret in `a`, one after the other.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &a);
    for want in ["v2", "v3"] {
        secrets
            .patch(
                "one",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"palisade.dev/rotate-now": "true"}}}),
                ),
            )
            .await
            .expect("annotate");
        let api = &secrets;
        let version = || async move {
            let s = api.get("one").await.expect("secret");
            s.data
                .and_then(|d| d.get("version").map(|v| v.0.clone()))
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        eventually(TIMEOUT, &format!("a rotation to {want}"), version, |v| {
            v.as_deref() == Some(want)
        })
        .await;
    }
    let (on_a, _) = eventually(
        TIMEOUT,
        "an Event per version",
        || events_about(&client, &a, "Secret", "one"),
        |notes| notes.len() >= 3,
    )
    .await;
    let on_b = events_about(&client, &b, "Secret", "one").await;
    // One Event per version, each saying which one; none a series.
    for v in ["v1", "v2", "v3"] {
        assert_eq!(
            on_a.iter()
                .filter(|n| n.contains(&format!("{a}/one is now at version {v} ")))
                .count(),
            1,
            "{v} in {on_a:?}"
        );
    }
    assert!(on_a.iter().all(|n| n.ends_with(" x1")), "{on_a:?}");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert!(on_b[0].contains(&format!("{b}/one is now at version v1 (created)")));
    // The Tenant's Events say how many, per reconcile: four rotations in all
    // (v1 in both namespaces, in one reconcile or two as their Secret watches
    // list, then v2 and v3 in `a`).
    let on_tenant = events_about(&client, "default", "Tenant", &name).await;
    let counts: Vec<usize> = on_tenant
        .iter()
        .filter_map(|n| n.split_once(" secret(s) rotated: "))
        .map(|(count, _)| count.parse().expect("a count"))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 4, "{on_tenant:?}");
    delete_tenant(&client, &name).await;
}

/// #31 item 5: status follows what happens to a namespace in conflict. A
/// Tenant re-created under a name whose namespaces an earlier Tenant left
/// (Retain) finds them in conflict; once an administrator hands one over as
/// the status message says, the Tenant becomes Ready by itself (no edit, no
/// 10 h resync), and the namespace no longer carries the release marks.
#[tokio::test]
async fn a_namespace_conflict_resolves_by_itself_after_the_hand_over() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = unique("sho");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"namespaces": [{"name": format!("{name}-a")}], "deletionPolicy": "Retain"}
    }))
    .expect("tenant");
    let ns = format!("{name}-a");
    cleanup.namespace(&ns);
    create_ready(&tenants, &tenant).await;
    delete_tenant(&client, &name).await;

    // The same name again: a new uid, and the namespace is not its own.
    tenants
        .create(&PostParams::default(), &tenant)
        .await
        .expect("re-create");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("NamespaceConflict"),
    ))
    .await;
    let uid = tenants.get(&name).await.expect("get").uid().expect("uid");
    let released = namespaces.get(&ns).await.expect("ns");
    assert_eq!(
        released
            .labels()
            .get("palisade.dev/released")
            .map(String::as_str),
        Some("true")
    );

    // The hand-over the message describes.
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"palisade.dev/tenant-uid": uid}}})),
        )
        .await
        .expect("label");
    let start = std::time::Instant::now();
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "Ready {took:?} after the hand-over"
    );
    let adopted = namespaces.get(&ns).await.expect("ns");
    assert!(
        !adopted.labels().contains_key("palisade.dev/released"),
        "{:?}",
        adopted.labels()
    );
    assert!(
        !adopted
            .annotations()
            .contains_key("palisade.dev/released-by-uid"),
        "{:?}",
        adopted.annotations()
    );
    eprintln!("Ready {took:?} after the hand-over");
    delete_tenant(&client, &name).await;
}

/// #31 item 6: a JwtSigningKey whose consumer-facing `private.pem` is
/// replaced by garbage is put back from its kept version within seconds (not
/// at the next rotation, 30 days later), with a Warning Event on the Secret.
#[tokio::test]
async fn a_tampered_signing_key_is_restored() {
    if !enabled() {
        return;
    }
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let (client, _controller) = setup().await;
    let name = unique("skey");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": [{"name": ns}],
            "deletionPolicy": "Delete",
            "secrets": [{"name": "signing", "type": "JwtSigningKey", "algorithm": "ES256", "rotateEvery": "720h"}]
        }
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &tenant).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let data = |s: &Secret, k: &str| s.data.as_ref().and_then(|d| d.get(k)).map(|v| v.0.clone());
    let before = secrets.get("signing").await.expect("secret");
    let kid = String::from_utf8(data(&before, "kid").expect("kid")).expect("utf8");
    let kept = data(&before, &format!("private.{kid}.pem")).expect("kept version");
    assert_eq!(data(&before, "private.pem").as_ref(), Some(&kept));

    let mut tampered = before.clone();
    tampered
        .data
        .get_or_insert_default()
        .insert("private.pem".into(), ByteString(b"garbage".to_vec()));
    tampered.metadata.managed_fields = None;
    secrets
        .replace("signing", &PostParams::default(), &tampered)
        .await
        .expect("tamper");
    // Compared here, never printed: it is key material.
    let (api, kept_key) = (&secrets, &kept);
    let restored = || async move {
        let s = api.get("signing").await.expect("secret");
        data(&s, "private.pem").as_ref() == Some(kept_key)
    };
    let (_, took) = eventually(TIMEOUT, "private.pem restored", restored, |ok| *ok).await;
    eprintln!("restored in {took:?}");
    let after = secrets.get("signing").await.expect("secret");
    assert_eq!(data(&after, "kid"), data(&before, "kid"), "no rotation");
    eventually(
        TIMEOUT,
        "a SecretRestored Event",
        || events_about(&client, &ns, "Secret", "signing"),
        |notes| {
            notes
                .iter()
                .any(|n| n.contains("did not match its current version"))
        },
    )
    .await;
    delete_tenant(&client, &name).await;
}

/// The Ready reason of BackupSchedule `ns/name`, if it has one.
async fn schedule_reason(client: &Client, ns: &str, name: &str) -> Option<String> {
    use palisade::crd::BackupSchedule;
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), ns);
    let bs = api.get_opt(name).await.ok()??;
    let conditions = serde_json::to_value(bs.status?).ok()?["conditions"].clone();
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str().map(str::to_string))
}

/// The sample BackupSchedule, in namespace `ns`.
fn sample_schedule(ns: &str) -> palisade::crd::BackupSchedule {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config/samples/backupschedule-acme-orders.yaml"))
        .expect("sample")
        .replace("acme-prod", ns)
        .replace("prefix: prod/orders/", &format!("prefix: {ns}/orders/"));
    serde_yaml::from_str(&text).expect("BackupSchedule")
}

/// #31 item 5: a BackupSchedule waiting for its Secret is Ready within
/// seconds of the Secret's creation (it was 25-30 s: Secrets are not
/// watched), and one outside any tenant namespace says so.
#[tokio::test]
async fn a_backup_schedule_sees_its_secret_at_once_and_says_where_it_cannot_run() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::core::v1::Secret;
    use palisade::crd::BackupSchedule;
    let (client, operator) = clients().await;
    let (_tenants, _) = start_controller(&operator);
    let _schedules = start_backup_controller(&operator);
    let name = unique("sbs");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let ns = format!("{name}-a");
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"namespaces": [{"name": ns}], "deletionPolicy": "Delete"}
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &tenant).await;

    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns);
    schedules
        .create(&PostParams::default(), &sample_schedule(&ns))
        .await
        .expect("schedule");
    let reason = || schedule_reason(&client, &ns, "orders");
    eventually(TIMEOUT, "SecretNotFound", reason, |r| {
        r.as_deref() == Some("SecretNotFound")
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (secret, data) in [
        ("orders-db", json!({"password": "e2e-db-password"})),
        (
            "backup-s3",
            json!({"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "e2e-s3-secret"}),
        ),
        (
            "backup-key",
            json!({"value": "e2e-encryption-key-0123456789"}),
        ),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": secret}, "stringData": data
        }))
        .expect("secret");
        secrets
            .create(&PostParams::default(), &s)
            .await
            .expect("secret");
        // Created one by one, as a person would: each wait is woken.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, took) = eventually(
        Duration::from_secs(10),
        "the schedule past its missing Secrets",
        reason,
        |r| {
            !matches!(
                r.as_deref(),
                Some("SecretNotFound" | "SecretKeyMissing") | None
            )
        },
    )
    .await;
    eprintln!("schedule saw its Secrets {took:?} after the last one");

    // Outside every tenant namespace: a message that says so.
    let outside = scratch_namespace(&client, "sbs-out", &mut cleanup).await;
    let away: Api<BackupSchedule> = Api::namespaced(client.clone(), &outside);
    away.create(&PostParams::default(), &sample_schedule(&outside))
        .await
        .expect("schedule");
    eventually(
        TIMEOUT,
        "NotATenantNamespace",
        || schedule_reason(&client, &outside, "orders"),
        |r| r.as_deref() == Some("NotATenantNamespace"),
    )
    .await;
    delete_tenant(&client, &name).await;
}

/// #26 item 5: installed as shipped (as its ServiceAccount, with the
/// RoleBinding it grants itself in each namespace), new namespaces are
/// watched without one 403 in the operator's log: alerts fire on those.
#[tokio::test]
async fn no_forbidden_in_the_operator_log_on_the_happy_path() {
    if !enabled() {
        return;
    }
    if std::env::var_os(palisade::runtime::telemetry::CLI_LOG_ENV).is_some() {
        eprintln!(
            "PALISADE_LOG sends the log to stderr: this test reads the captured log; unset it"
        );
        return;
    }
    let log = warnings();
    let (client, operator) = clients().await;
    let (_controller, _ctx) = start_controller(&operator);
    // The capture sees what the controllers log (or this test could not fail).
    let from = log.text().len();
    tracing::warn!("capture check");
    assert!(
        log.text()[from..].contains("capture check"),
        "warnings are not captured"
    );
    let from = log.text().len();
    let name = unique("nof");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let namespaces: Vec<_> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|s| json!({"name": format!("{name}-{s}")}))
        .collect();
    let tenant: Tenant = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {
            "namespaces": namespaces,
            "deletionPolicy": "Delete",
            "secrets": [{"name": "one", "type": "Random", "rotateEvery": "720h"}]
        }
    }))
    .expect("tenant");
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &tenant).await;
    delete_tenant(&client, &name).await;
    let logged = log.text()[from..].to_string();
    assert!(
        !logged.contains("403") && !logged.to_lowercase().contains("forbidden"),
        "the operator logged a refusal on the happy path:\n{logged}"
    );
}
