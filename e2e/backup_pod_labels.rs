//! Issue #30, finding 2: only Palisade's backup pods may carry the label the
//! backup egress NetworkPolicy selects (`palisade.dev/backup-schedule`).
//! Before the `backup-labels-*` ValidatingAdmissionPolicies
//! (src/operator_rbac/tenant_policies.rs) the tenant owner's create of such a
//! pod was admitted, and with a host name in the schedule the pod got TCP
//! 5432/443 to anywhere despite `allowInternetEgress: false`.

use super::backup_schedule::create_db_secret;
use super::*;
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use palisade::operator_rbac::tenant_policies;
use palisade::resources::backup_jobs::SCHEDULE_LABEL;

/// A client that acts as `user` (impersonated by the admin of the kubeconfig),
/// as `kubectl --as` does.
async fn impersonating(user: &str) -> Client {
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_string()]);
    Client::try_from(config).expect("impersonating client")
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

fn dry_patch() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

/// The pod labels of a probe: `app`, and the backup label when `labelled`
/// (the only difference between a refused and an admitted probe).
fn probe_labels(labelled: bool) -> serde_json::Value {
    let mut labels = json!({"app": "probe", "app.kubernetes.io/managed-by": "palisade"});
    if labelled {
        labels[SCHEDULE_LABEL] = json!("nightly");
    }
    labels
}

/// [`pending_pod`] (Pod Security `restricted`), labelled or not.
fn probe_pod(name: &str, labelled: bool) -> Pod {
    let mut pod = pending_pod(name);
    pod.metadata.labels = serde_json::from_value(probe_labels(labelled)).expect("labels");
    pod
}

/// The same pod as a template (`{metadata, spec}`), for workloads.
fn probe_template(labelled: bool, restart: &str) -> serde_json::Value {
    let mut spec = serde_json::to_value(pending_pod("x").spec).expect("spec");
    spec["restartPolicy"] = json!(restart);
    json!({"metadata": {"labels": probe_labels(labelled)}, "spec": spec})
}

fn probe_deployment(name: &str, labelled: bool) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "probe"}},
            "template": probe_template(labelled, "Always"),
        }
    }))
    .expect("deployment")
}

fn probe_job(name: &str, labelled: bool) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": probe_template(labelled, "Never")}
    }))
    .expect("job")
}

/// The refusal's message; panics when `result` was admitted or failed otherwise.
fn refusal<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(e)) => e.message,
        other => panic!("{what}: expected the admission policy's refusal, got {other:?}"),
    }
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, policy: &str) {
    let message = refusal(what, result);
    assert!(
        message.contains(&tenant_policies::backup_label_refusal())
            && message.contains(&format!("palisade-{policy}")),
        "{what}: {message}"
    );
    println!("refused as expected: {what}: {message}");
}

fn assert_admitted<T>(what: &str, result: Result<T, kube::Error>) {
    if let Err(e) = result {
        panic!("{what}: expected admission, got {e}");
    }
}

/// Every policy Palisade installed compiled on this API server: its status
/// (written by the API server's type checker) reports the current generation
/// and no expression warnings. A CEL mistake is reported only there.
async fn assert_policies_type_check(client: &Client) {
    let api: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let mut names = vec!["palisade-confinement".to_string()];
    names.extend(
        tenant_policies::tenant_policies()
            .iter()
            .map(|p| format!("palisade-{}", p.name_suffix)),
    );
    for name in names {
        let checked = await_condition(
            api.clone(),
            &name,
            |p: Option<&ValidatingAdmissionPolicy>| {
                p.is_some_and(|p| {
                    p.status.as_ref().is_some_and(|s| {
                        s.observed_generation == p.metadata.generation && s.type_checking.is_some()
                    })
                })
            },
        );
        let policy = tokio::time::timeout(TIMEOUT, checked)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name} was never type-checked: kube-controller-manager must run \
                     validatingadmissionpolicy-status-controller (scripts/test-cluster.sh does)"
                )
            })
            .ok()
            .flatten()
            .expect("policy");
        let warnings = policy
            .status
            .and_then(|s| s.type_checking)
            .and_then(|t| t.expression_warnings)
            .unwrap_or_default();
        assert!(
            warnings.is_empty(),
            "{name} does not type-check: {warnings:?}"
        );
    }
}

/// As the tenant owner and as an editor (RolePolicy binding the built-in
/// `editor` role): a Pod, a Deployment's and a Job's pod template carrying
/// the backup label, and an update adding it to a plain pod, are refused
/// with the policy's message; the same objects without it are admitted.
/// Palisade's own backup Job still runs: the operator creates the Job, the
/// real Job controller creates its labelled Pod, and nobody else may swap
/// that pod's image or relabel it.
#[tokio::test]
async fn only_backup_jobs_may_label_pods_for_backup_egress() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    assert_policies_type_check(&client).await;
    let (_tenants, _) = start_controller(&operator);
    let _policies = start_policy_controller(&operator);
    let _backups = start_backup_controller(&operator);

    let name = unique("e2l");
    let ns = format!("{name}-a");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name).policy(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let owner = "e2e-owner@example.com".to_string();
    let editor = format!("{name}-editor@example.com");
    let policy: palisade::crd::RolePolicy = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy", "metadata": {"name": name},
        "spec": {"tenants": [name],
                 "bindings": [{"role": "editor", "subjects": [{"kind": "User", "name": editor}]}]}
    }))
    .expect("policy");
    Api::<palisade::crd::RolePolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("create RolePolicy");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    for binding in ["palisade:admin", "palisade:editor"] {
        wait(await_condition(
            bindings.clone(),
            binding,
            |b: Option<&RoleBinding>| b.is_some(),
        ))
        .await;
    }
    for user in [&owner, &editor] {
        assert!(
            can_i(&client, user, &[], "create", "pods", Some(&ns), None).await,
            "{user} may create pods (RBAC), so only admission stands between it and the label"
        );
    }

    for (role, user) in [("owner", &owner), ("editor", &editor)] {
        let as_user = impersonating(user).await;
        let pods: Api<Pod> = Api::namespaced(as_user.clone(), &ns);
        // (a) A Pod with the backup labels. The policies were installed moments
        // ago: wait until the API server's informer has them.
        let first = wait(async {
            loop {
                match pods.create(&dry_run(), &probe_pod("probe-a", true)).await {
                    Ok(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                    other => break Ok::<_, std::convert::Infallible>(other),
                }
            }
        })
        .await;
        assert_refused(
            &format!("{role}: labelled Pod"),
            first,
            "backup-labels-pods",
        );
        assert_admitted(
            &format!("{role}: the same Pod without the label"),
            pods.create(&dry_run(), &probe_pod("probe-a", false)).await,
        );

        // (b) A Deployment whose pod template has them.
        let deployments: Api<Deployment> = Api::namespaced(as_user.clone(), &ns);
        assert_refused(
            &format!("{role}: Deployment with a labelled template"),
            deployments
                .create(&dry_run(), &probe_deployment("probe-b", true))
                .await,
            "backup-labels-workloads",
        );
        assert_admitted(
            &format!("{role}: the same Deployment without the label"),
            deployments
                .create(&dry_run(), &probe_deployment("probe-b", false))
                .await,
        );

        // (c) A Job whose pod template has them (only the operator's may).
        let jobs: Api<Job> = Api::namespaced(as_user.clone(), &ns);
        assert_refused(
            &format!("{role}: Job with a labelled template"),
            jobs.create(&dry_run(), &probe_job("probe-c", true)).await,
            "backup-labels-workloads",
        );
        assert_admitted(
            &format!("{role}: the same Job without the label"),
            jobs.create(&dry_run(), &probe_job("probe-c", false)).await,
        );

        // (d) An existing plain pod may not be labelled afterwards; another
        // label is fine. (Not labelled managed-by=palisade either: since #25
        // only Palisade changes objects that carry it, the `managed-objects`
        // policy.)
        let plain = format!("plain-{role}");
        let mut plain_pod = probe_pod(&plain, false);
        plain_pod.metadata.labels = Some([("app".to_string(), "probe".to_string())].into());
        pods.create(&PostParams::default(), &plain_pod)
            .await
            .unwrap_or_else(|e| panic!("{role}: create a plain pod: {e}"));
        assert_refused(
            &format!("{role}: adding the label to a plain pod"),
            pods.patch(
                &plain,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"labels": {SCHEDULE_LABEL: "nightly"}}})),
            )
            .await,
            "backup-labels-pods",
        );
        assert_admitted(
            &format!("{role}: adding another label to a plain pod"),
            pods.patch(
                &plain,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"labels": {"example.com/probe": "nightly"}}})),
            )
            .await,
        );
    }

    // Palisade's own backup: the operator creates the Job (its template
    // labelled), the real Job controller creates the labelled Pod.
    create_db_secret(&client, &ns).await;
    let schedule: palisade::crd::BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly",
                     "annotations": {palisade::resources::backup_jobs::RUN_NOW_ANNOTATION: "e2e"}},
        "spec": {
            "schedule": "0 3 * * *",
            "postgres": {"host": "db.example.com", "database": "app", "user": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "destination": {"path": "/backups"},
            "jobTemplate": {"nodeSelector": {"palisade.dev/e2e": "no-such-node"},
                            "activeDeadlineSeconds": 600},
        }
    }))
    .expect("schedule");
    Api::<palisade::crd::BackupSchedule>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &schedule)
        .await
        .expect("create schedule");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let backup_pod = wait(async {
        use futures::TryStreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let mut stream = std::pin::pin!(
            watcher(
                pods.clone(),
                watcher::Config::default().labels(&format!("{SCHEDULE_LABEL}=nightly")),
            )
            .applied_objects()
        );
        stream.try_next().await.map(|p| p.expect("a backup pod"))
    })
    .await;
    let owner_ref = backup_pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .cloned()
        .expect("a controller");
    assert_eq!(
        (owner_ref.kind.as_str(), owner_ref.api_version.as_str()),
        ("Job", "batch/v1")
    );
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get(&owner_ref.name)
        .await
        .expect("the backup Job");
    assert_eq!(
        job.owner_references()[0].kind,
        "BackupSchedule",
        "Palisade's Job"
    );
    let pod_name = backup_pod.name_any();
    println!(
        "the Job controller created the backup pod {pod_name} of Job {}",
        owner_ref.name
    );

    // The backup pod's label opens the egress policy: nobody may swap its
    // image or move the label, not even an administrator (whom the
    // `managed-objects` policy lets change Palisade's objects otherwise).
    let as_admin: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let container = backup_pod.spec.as_ref().expect("spec").containers[0]
        .name
        .clone();
    assert_refused(
        "admin: swapping the backup pod's image",
        as_admin
            .patch(
                &pod_name,
                &dry_patch(),
                &Patch::Strategic(json!({"spec": {"containers": [
                    {"name": container, "image": "registry.invalid/attacker:1"}
                ]}})),
            )
            .await,
        "backup-labels-pods",
    );
    assert_refused(
        "admin: moving the backup pod to another schedule's egress",
        as_admin
            .patch(
                &pod_name,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"labels": {SCHEDULE_LABEL: "other"}}})),
            )
            .await,
        "backup-labels-pods",
    );
    assert_admitted(
        "admin: annotating the backup pod",
        as_admin
            .patch(
                &pod_name,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "x"}}})),
            )
            .await,
    );
    // The backup pod is Palisade's (labelled managed-by=palisade): since #25
    // an editor changes nothing on it, not even an annotation.
    let as_editor: Api<Pod> = Api::namespaced(impersonating(&editor).await, &ns);
    let message = refusal(
        "editor: annotating the backup pod",
        as_editor
            .patch(
                &pod_name,
                &dry_patch(),
                &Patch::Merge(json!({"metadata": {"annotations": {"example.com/note": "x"}}})),
            )
            .await,
    );
    assert!(
        message.contains(&tenant_policies::managed_refusal()),
        "{message}"
    );
    delete_tenant(&client, &name).await;
}
