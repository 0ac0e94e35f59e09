//! `palisade diff` reports created, changed, pruned and unchanged objects and escalations.

use super::*;

/// Server-side applies every document of the YAML files under `dir` whose kind
/// is in `kinds`, with the field manager of `kubectl apply --server-side`.
async fn apply_files(client: &Client, dir: &std::path::Path, kinds: &[&str]) {
    use kube::api::DynamicObject;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("YAML");
            let kind = value["kind"].as_str().unwrap_or_default();
            if value.is_null() || !kinds.contains(&kind) {
                continue;
            }
            let api_version = value["apiVersion"].as_str().expect("apiVersion");
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let (ar, caps) = kube::discovery::pinned_kind(
                client,
                &kube::core::GroupVersionKind::gvk(group, version, kind),
            )
            .await
            .expect("discover");
            let name = value["metadata"]["name"].as_str().expect("name");
            let api: Api<DynamicObject> = match value["metadata"]["namespace"].as_str() {
                Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
                    Api::namespaced_with(client.clone(), ns, &ar)
                }
                _ => Api::all_with(client.clone(), &ar),
            };
            api.patch(
                name,
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&value),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        }
    }
}

/// `palisade diff` on the real control plane: the samples (plus the Secrets
/// the BackupSchedule reads), applied as `kubectl apply --server-side` would
/// and converged by the controllers, diff as unchanged (exit 0); a changed
/// field, a new object, a namespace dropped from the tenant, a changed Secret
/// and an escalating RolePolicy show as changed (with the field), created,
/// pruned, changed (value hidden) and a finding (exit 1) — and the dry-run
/// wrote nothing.
#[tokio::test]
async fn diff_reports_created_changed_pruned_unchanged_and_escalations() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_tenants, _) = start_controller(&operator);
    let _schedules = start_backup_controller(&operator);
    let name = unique("df");
    let mut cleanup = Cleanup::default();
    cleanup
        .tenant(&name)
        .policy(&format!("{name}-developers"))
        .policy(&format!("{name}-escalate"));

    // The samples under this test's names, and the Secrets the schedule reads.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tmp");
    for entry in std::fs::read_dir(root.join("config/samples")).expect("samples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(
            dir.path().join(path.file_name().expect("name")),
            text.replace("acme", &name),
        )
        .expect("write");
    }
    let prod = format!("{name}-prod");
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: orders-db, namespace: {prod}}}\nstringData: {{password: e2e-db-password-1}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: backup-s3, namespace: {prod}}}\nstringData: {{AWS_ACCESS_KEY_ID: e2e-key-id, AWS_SECRET_ACCESS_KEY: e2e-s3-secret}}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{name: backup-key, namespace: {prod}}}\nstringData: {{value: e2e-encryption-key-0123456789}}\n"
    );
    std::fs::write(dir.path().join("secrets.yaml"), &secrets).expect("write");

    // Nothing exists yet: everything would be created, objects in the
    // tenant's future namespaces included.
    let (code, report, stdout) = run_diff(dir.path(), true);
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(
        diff_object(&report, "Tenant", None, &name)["action"],
        "created"
    );
    assert_eq!(
        diff_object(&report, "Namespace", None, &prod)["action"],
        "created"
    );
    assert_eq!(
        diff_object(&report, "BackupSchedule", Some(&prod), "orders")["action"],
        "created"
    );
    assert_eq!(report["summary"]["changed"], 0, "{stdout}");
    assert!(
        !stdout.contains("e2e-db-password") && !stdout.contains("e2e-s3-secret"),
        "{stdout}"
    );

    // Apply as `kubectl apply --server-side` would; let the controllers
    // converge: the samples work together (#31 item 6: the sample policy once
    // asked for a token where the signing key was not published).
    apply_files(&client, dir.path(), &["Tenant", "RolePolicy"]).await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    apply_files(&client, dir.path(), &["Secret", "BackupSchedule"]).await;

    // Unchanged once the controllers are done (they converge asynchronously:
    // wait for the diff to come out clean, as CI would re-run it).
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let (code, report, stdout) = loop {
        let (code, report, stdout) = run_diff(dir.path(), true);
        if code == Some(0) || tokio::time::Instant::now() > deadline {
            break (code, report, stdout);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(code, Some(0), "{stdout}");
    let objects = report["objects"].as_array().expect("objects");
    assert!(
        objects.iter().all(|o| o["action"] == "unchanged"),
        "{stdout}"
    );
    assert!(report["findings"].as_array().expect("findings").is_empty());
    for (kind, ns, n) in [
        ("Tenant", None, name.as_str()),
        ("RolePolicy", None, &format!("{name}-developers")),
        ("BackupSchedule", Some(prod.as_str()), "orders"),
        ("Secret", Some(prod.as_str()), "orders-db"),
        ("Namespace", None, prod.as_str()),
        ("ResourceQuota", Some(prod.as_str()), "palisade-quota"),
        ("RoleBinding", Some(prod.as_str()), "palisade:deployer"),
        ("NetworkPolicy", Some(prod.as_str()), "orders-backup-egress"),
        ("Secret", Some(prod.as_str()), "api-signing-key"),
    ] {
        diff_object(&report, kind, ns, n);
    }

    // Change a field, drop a namespace, change a Secret, add an object and an
    // escalating RolePolicy.
    let tenant_file = dir.path().join("tenant-acme.yaml");
    let text = std::fs::read_to_string(&tenant_file).expect("read");
    let dev = format!("{name}-dev");
    let changed = text
        .replace("pods: \"50\"", "pods: \"60\"")
        .replace(&format!("    - name: {dev}\n"), "");
    assert_ne!(changed, text);
    std::fs::write(&tenant_file, changed).expect("write");
    std::fs::write(
        dir.path().join("secrets.yaml"),
        secrets.replace("e2e-db-password-1", "e2e-db-password-2"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("extra.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: extra, namespace: {prod}}}\ndata: {{k: v}}\n---\n\
             apiVersion: palisade.dev/v1alpha1\nkind: RolePolicy\nmetadata: {{name: {name}-escalate}}\n\
             spec:\n  tenants: [{name}-nobody]\n  roles:\n    - name: binder\n      rules:\n        - apiGroups: [rbac.authorization.k8s.io]\n          resources: [roles]\n          verbs: [get, bind]\n"
        ),
    )
    .expect("write");
    let (code, report, stdout) = run_diff(dir.path(), true);
    assert_eq!(code, Some(1), "{stdout}");
    let t = diff_object(&report, "Tenant", None, &name);
    assert_eq!(t["action"], "changed");
    let pods = t["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["path"] == "spec.quota.hard.pods")
        .unwrap_or_else(|| panic!("the pods field: {t:#}"));
    assert_eq!(
        (&pods["before"], &pods["after"]),
        (&json!("50"), &json!("60"))
    );
    let quota = diff_object(&report, "ResourceQuota", Some(&prod), "palisade-quota");
    assert_eq!(quota["action"], "changed");
    assert!(
        quota["fields"].to_string().contains("spec.hard.pods"),
        "{quota:#}"
    );
    assert_eq!(
        diff_object(&report, "ConfigMap", Some(&prod), "extra")["action"],
        "created"
    );
    // deletionPolicy defaults to Retain: the namespace is released, kept.
    assert_eq!(
        diff_object(&report, "Namespace", None, &dev)["action"],
        "released"
    );
    assert_eq!(
        diff_object(
            &report,
            "NetworkPolicy",
            Some(&dev),
            "palisade-default-deny"
        )["action"],
        "pruned"
    );
    let secret = diff_object(&report, "Secret", Some(&prod), "orders-db");
    assert_eq!(secret["action"], "changed");
    assert!(
        secret["fields"].to_string().contains("data.password"),
        "{secret:#}"
    );
    assert!(
        !stdout.contains("e2e-db-password") && !stdout.contains("ZTJlLWRiLXBhc3N3b3Jk"),
        "Secret values never appear: {stdout}"
    );
    let finding = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["name"] == format!("{name}-escalate").as_str())
        .unwrap_or_else(|| panic!("an escalation finding: {stdout}"));
    assert_eq!(
        (&finding["severity"], &finding["reason"], &finding["field"]),
        (
            &json!("rejected"),
            &json!("EscalationVerb"),
            &json!("spec.roles[0].rules[0]")
        )
    );

    // The text report says the same.
    let (code, _, text) = run_diff(dir.path(), false);
    assert_eq!(code, Some(1));
    assert!(
        text.contains(&format!("changed   Tenant {name} ("))
            && text.contains("~ spec.quota.hard.pods: \"50\" -> \"60\"")
            && text.contains(&format!("released  Namespace {dev} (Tenant {name})"))
            && text.contains(&format!(
                "finding   RolePolicy {name}-escalate: EscalationVerb"
            )),
        "{text}"
    );

    // Dry-runs only: the cluster still has what was applied.
    let live = tenants.get(&name).await.expect("tenant");
    assert_eq!(
        live.spec.quota.as_ref().map(|q| q.hard["pods"].0.clone()),
        Some("50".to_string())
    );
    let policies: Api<palisade::crd::RolePolicy> = Api::all(client.clone());
    assert!(
        policies
            .get_opt(&format!("{name}-escalate"))
            .await
            .expect("get")
            .is_none()
    );
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &prod);
    assert!(cms.get_opt("extra").await.expect("get").is_none());
}
