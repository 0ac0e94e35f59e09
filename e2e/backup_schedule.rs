//! A BackupSchedule's Job spec and a simulated completion.

use super::*;
use k8s_openapi::api::core::v1::Secret;

/// Creates the Secret `db` (its `password`) that the BackupSchedules of these
/// tests read in `ns`.
pub(super) async fn create_db_secret(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "db"}, "stringData": {"password": "e2e-password"}
            }))
            .expect("secret"),
        )
        .await
        .expect("create secret");
}

/// BackupSchedule: a due schedule becomes a Job with the right spec; when its
/// Pod terminates with the JSON result (reported as the kubelet would) and the
/// real Job controller completes the Job, the schedule's status shows the
/// snapshot. The run Pod is pinned to a node that does not exist.
#[tokio::test]
async fn backup_schedule_job_spec_and_simulated_completion() {
    if !enabled() {
        return;
    }
    use futures::TryStreamExt;
    use k8s_openapi::api::batch::v1::Job;
    use kube::runtime::{WatchStreamExt, watcher};
    use palisade::crd::BackupSchedule;

    let (client, operator) = clients().await;
    let _controller = start_backup_controller(&operator);
    // Backups run in tenant namespaces: that is where Palisade may read the
    // credentials Secret and create Jobs (crate::operator_rbac).
    let (_tenants, _) = start_controller(&operator);
    let name = unique("e2b");
    let ns = format!("{name}-a");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    let tenants: Api<Tenant> = Api::all(client.clone());
    create_ready(&tenants, &sample(&name, "Delete")).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create_db_secret(&client, &ns).await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns);
    let bs: BackupSchedule = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "* * * * *",
            "postgres": {"host": "db", "database": "app", "user": "backup",
                         "passwordSecretRef": {"name": "db", "key": "password"}},
            "destination": {"path": "/backups"},
            "jobTemplate": {"nodeSelector": {"palisade.dev/e2e": "no-such-node"},
                            "activeDeadlineSeconds": 600},
        }
    }))
    .expect("schedule");
    schedules
        .create(&PostParams::default(), &bs)
        .await
        .expect("create schedule");

    // Schedule → Job (within a minute).
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = wait(async {
        let mut stream = std::pin::pin!(
            watcher(
                jobs.clone(),
                watcher::Config::default().labels("palisade.dev/backup-schedule=nightly"),
            )
            .applied_objects()
        );
        stream.try_next().await.map(|j| j.expect("a job"))
    })
    .await;
    let job_name = job.name_any();

    // The run Pods may reach DNS and PostgreSQL under default-deny: the
    // schedule's egress NetworkPolicy, accepted by the real API server.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let egress = policies
        .get("nightly-backup-egress")
        .await
        .expect("egress NetworkPolicy");
    let pod_labels = job
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = egress
        .spec
        .as_ref()
        .and_then(|s| s.pod_selector.as_ref())
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the egress policy selects the run pods: {selector:?} vs {pod_labels:?}"
    );
    assert!(job_name.starts_with("nightly-"), "{job_name}");
    assert_eq!(
        job.owner_references()[0].kind,
        "BackupSchedule",
        "owned by the schedule"
    );
    let spec = job.spec.clone().expect("spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(600));
    let pod_spec = spec.template.spec.expect("pod spec");
    let c = &pod_spec.containers[0];
    let args = c.args.clone().unwrap_or_default().join(" ");
    assert!(
        args.starts_with("backup run --config /etc/palisade/backup.yaml --output json"),
        "{args}"
    );
    assert!(!args.contains("e2e-password"));
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert!(
        pod_spec.volumes.unwrap_or_default().iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("db"))
    );

    // Completion: this test reports the Job's own Pod as terminated with the
    // JSON result as its termination message (as the kubelet would); the real
    // Job controller completes the Job.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let message = format!(
        r#"{{"op":"run","ok":true,"id":"e2e-snap","key":"/backups/e2e-snap.pgsnap","time":"{now}","bytes":2048,"sha256":"00ff","durationSeconds":1.5}}"#
    );
    finish_job_pods(&client, &ns, &job_name, 0, &message).await;
    wait(await_condition(
        jobs.clone(),
        &job_name,
        conditions::is_job_completed(),
    ))
    .await;

    wait(await_condition(
        schedules.clone(),
        "nightly",
        |b: Option<&BackupSchedule>| {
            b.and_then(|b| b.status.as_ref())
                .and_then(|s| s.last_successful_backup.as_ref())
                .is_some_and(|r| r.id == "e2e-snap" && r.bytes == 2048)
        },
    ))
    .await;
    let st = schedules
        .get("nightly")
        .await
        .expect("schedule")
        .status
        .expect("status");
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "LastBackupSucceeded" && c.status == "True")
    );
    assert!(st.last_schedule_time.is_some() && st.next_schedule_time.is_some());
    drop(namespaces);
    delete_tenant(&client, &name).await;
}
