//! The CRDs and samples install, and every CEL rule refuses what it should.

use super::*;

/// The kind's API resource, for applying YAML documents of Palisade's kinds.
fn palisade_resource(kind: &str) -> Option<(kube::core::ApiResource, bool)> {
    use palisade::crd::{BackupRun, BackupSchedule, RolePolicy};
    Some(match kind {
        "BackupRun" => (kube::core::ApiResource::erase::<BackupRun>(&()), true),
        "Tenant" => (kube::core::ApiResource::erase::<Tenant>(&()), false),
        "RolePolicy" => (kube::core::ApiResource::erase::<RolePolicy>(&()), false),
        "BackupSchedule" => (kube::core::ApiResource::erase::<BackupSchedule>(&()), true),
        _ => return None,
    })
}

/// Every `x-kubernetes-validations` message in a CRD's schemas.
fn rule_messages(crd: &CustomResourceDefinition) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(rules) = m.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
                    out.extend(
                        rules
                            .iter()
                            .filter_map(|r| r["message"].as_str().map(str::to_string)),
                    );
                }
                m.values().for_each(|c| walk(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(crd).expect("crd json"), &mut out);
    out
}

/// Every generated CRD (crds/, the chart's copy, the kustomize base's copy) is
/// accepted by the real API server (CEL cost budget included), every sample
/// under config/samples/ is accepted, and every CEL rule of every CRD refuses
/// an object that breaks it with that rule's message. A rule added without an
/// invalid object here fails this test.
#[tokio::test]
async fn crds_and_samples_install_and_every_cel_rule_refuses() {
    if !enabled() {
        return;
    }
    use kube::api::DynamicObject;
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at a cluster");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for dir in ["crds", "charts/palisade/crds", "config/default/crds"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .expect("crd dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 4, "{dir} holds the four CRDs");
        for file in files {
            let crd: CustomResourceDefinition =
                serde_yaml::from_str(&std::fs::read_to_string(&file).expect("read"))
                    .expect("CRD YAML");
            let name = crd.name_any();
            if let Err(e) = crd_api
                .patch(
                    &name,
                    &PatchParams::apply("palisade-e2e").force(),
                    &Patch::Apply(&crd),
                )
                .await
            {
                panic!("the API server refused {}: {e}", file.display());
            }
            wait(await_condition(
                crd_api.clone(),
                &name,
                conditions::is_crd_established(),
            ))
            .await;
        }
    }

    let mut cleanup = Cleanup::default();
    let ns = scratch_namespace(&client, "e2v", &mut cleanup).await;
    let api_for = |kind: &str| -> Api<DynamicObject> {
        let (ar, namespaced) = palisade_resource(kind).unwrap_or_else(|| panic!("kind {kind}"));
        if namespaced {
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        }
    };
    let dry_create = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // Samples: every document of every file, as a server-side dry run (the
    // namespaced ones in this test's namespace).
    let mut samples = 0;
    let mut dir: Vec<_> = std::fs::read_dir(root.join("config/samples"))
        .expect("samples")
        .map(|e| e.expect("entry").path())
        .collect();
    dir.sort();
    for file in dir {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(doc).expect("YAML");
            if value.is_null() {
                continue;
            }
            let mut obj: DynamicObject = serde_json::from_value(value).expect("object");
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            obj.metadata.namespace = None;
            if let Err(e) = api_for(&kind).create(&dry_create, &obj).await {
                panic!("sample {} ({kind}) refused: {e}", file.display());
            }
            samples += 1;
        }
    }
    assert!(samples >= 1, "config/samples/ holds objects");

    // One invalid object per rule: (kind, message, object).
    let tenant = |spec: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
               "metadata": {"name": unique("e2v")}, "spec": spec})
    };
    let policy = |spec: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
               "metadata": {"name": unique("e2v")}, "spec": spec})
    };
    let schedule = |destination: serde_json::Value| {
        json!({"apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
               "metadata": {"name": "bad"}, "spec": {
                   "schedule": "0 3 * * *",
                   "postgres": {"host": "db", "database": "app", "user": "backup",
                                "passwordSecretRef": {"name": "db", "key": "password"}},
                   "destination": destination}})
    };
    let cases: Vec<(&str, &str, serde_json::Value)> = vec![
        (
            "Tenant",
            "spec.forceTenantPrefix is set",
            tenant(json!({"forceTenantPrefix": true, "namespaces": [{"name": "elsewhere"}]})),
        ),
        (
            "Tenant",
            "namespace is required for ServiceAccount owners",
            tenant(json!({"owners": [{"kind": "ServiceAccount", "name": "deployer"}]})),
        ),
        (
            "Tenant",
            "algorithm is required for type JwtSigningKey",
            tenant(
                json!({"secrets": [{"name": "k", "type": "JwtSigningKey", "rotateEvery": "720h"}]}),
            ),
        ),
        (
            "Tenant",
            "an empty allowFromNamespaces selector admits every namespace",
            tenant(json!({"network": {"allowFromNamespaces": [{}]}})),
        ),
        (
            "Tenant",
            "an allowEgressCidrs entry of 0.0.0.0/0 or ::/0",
            tenant(json!({"network": {"allowEgressCidrs": [{"cidr": "::/0"}]}})),
        ),
        (
            "Tenant",
            "a rule needs maxAge, keepLast or both",
            tenant(json!({"garbageCollection": {"rules": [{"name": "r", "kinds": ["Job"]}]}})),
        ),
        (
            "RolePolicy",
            "use either tenantSelector or tenants, not both",
            policy(json!({"tenantSelector": {}, "tenants": ["a"]})),
        ),
        (
            "RolePolicy",
            "token can only be requested for ServiceAccount subjects",
            policy(
                json!({"bindings": [{"role": "viewer", "token": {"ttl": "15m"},
                          "subjects": [{"kind": "User", "name": "u"}]}]}),
            ),
        ),
        (
            "RolePolicy",
            "reserved role name",
            policy(json!({"roles": [{"name": "operator", "permissions": ["config:read"]}]})),
        ),
        (
            "RolePolicy",
            "reserved role name",
            policy(
                json!({"bindings": [{"role": "operator", "subjects": [{"kind": "User", "name": "u"}]}]}),
            ),
        ),
        (
            "BackupSchedule",
            "exactly one of s3, persistentVolumeClaim or path",
            schedule(json!({"path": "/b", "persistentVolumeClaim": {"claimName": "c"}})),
        ),
        (
            "BackupSchedule",
            "kmsKeyId is only allowed with serverSideEncryption: aws:kms",
            schedule(json!({"s3": {"bucket": "b", "kmsKeyId": "k"}})),
        ),
    ];
    // The transition rule needs an update: a real Tenant (no controller runs
    // here, so it has no finalizer) and a dry-run patch of it.
    let transition = "type is immutable";
    let run_transition = "spec is immutable";
    let mut covered: Vec<&str> = cases.iter().map(|c| c.1).collect();
    covered.push(transition);
    covered.push(run_transition);
    for crd in palisade::crd::all() {
        for message in rule_messages(&crd) {
            assert!(
                covered.iter().any(|c| message.starts_with(c)),
                "CEL rule without an invalid object in this test: {message}"
            );
        }
    }
    for (kind, message, value) in cases {
        let obj: DynamicObject = serde_json::from_value(value).expect("object");
        match api_for(kind).create(&dry_create, &obj).await {
            Err(kube::Error::Api(e)) => assert!(
                e.code == 422 && e.message.contains(message),
                "{kind}: expected 422 with {message:?}, got {} {}",
                e.code,
                e.message
            ),
            other => {
                panic!("{kind}: the API server accepted an object breaking {message:?}: {other:?}")
            }
        }
    }
    let name = unique("e2v");
    cleanup.tenant(&name);
    let tenants = api_for("Tenant");
    let t: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name},
        "spec": {"secrets": [{"name": "k", "type": "Random", "rotateEvery": "720h"}]}
    }))
    .expect("tenant");
    tenants
        .create(&PostParams::default(), &t)
        .await
        .expect("a valid Tenant is accepted");
    let patch = json!({"spec": {"secrets": [{"name": "k", "type": "JwtSigningKey", "algorithm": "EdDSA", "rotateEvery": "720h"}]}});
    match tenants
        .patch(
            &name,
            &PatchParams::default().dry_run(),
            &Patch::Merge(patch),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains(transition),
            "expected 422 with {transition:?}, got {} {}",
            e.code,
            e.message
        ),
        other => panic!("a secret's type changed: {other:?}"),
    }
    // A BackupRun is a request: its spec never changes (no controller runs
    // here, so nothing acts on it).
    let runs = api_for("BackupRun");
    let run: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupRun", "metadata": {"name": "once"},
        "spec": {"scheduleName": "nightly", "type": "Backup"}
    }))
    .expect("run");
    runs.create(&PostParams::default(), &run)
        .await
        .expect("a valid BackupRun is accepted");
    match runs
        .patch(
            "once",
            &PatchParams::default().dry_run(),
            &Patch::Merge(json!({"spec": {"type": "RestoreTest"}})),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.code == 422 && e.message.contains(run_transition),
            "expected 422 with {run_transition:?}, got {} {}",
            e.code,
            e.message
        ),
        other => panic!("a BackupRun's spec changed: {other:?}"),
    }
}
