//! TTL garbage collection of ConfigMaps and finished Jobs.

use super::*;
use k8s_openapi::api::core::v1::ConfigMap;

/// Creates ConfigMap `name` (data `k: v`) with `labels` and `annotations`:
/// its uid.
pub(super) async fn create_cm(
    cms: &Api<ConfigMap>,
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
) -> String {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "data": {"k": "v"},
    }))
    .expect("configmap");
    let cm = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create cm");
    cm.uid().expect("uid")
}

#[tokio::test]
async fn ttl_garbage_collection_of_configmaps_and_finished_jobs() {
    if !enabled() {
        return;
    }
    use k8s_openapi::api::batch::v1::Job;
    let (client, (name, ns), _running) = one_namespace_ready(
        "e2g",
        json!({
            "garbageCollection": {
                "rules": [
                    {"name": "finished-jobs", "kinds": ["Job"], "maxAge": "5s", "ageFrom": "Completion"},
                    {"name": "scratch", "kinds": ["ConfigMap"], "selector": {"matchLabels": {"e2e": "scratch"}}, "maxAge": "8s"}
                ]
            }
        }),
    )
    .await;

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let expires = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(6))
        .expect("time")
        .to_string();
    let mut created = Vec::new();
    for (cm_name, labels, annotations) in [
        ("ttl", json!({}), json!({"palisade.dev/ttl": "4s"})),
        (
            "expires",
            json!({}),
            json!({"palisade.dev/expires": expires}),
        ),
        ("scratch", json!({"e2e": "scratch"}), json!({})),
        (
            "kept",
            json!({"e2e": "scratch"}),
            json!({"palisade.dev/keep": "true"}),
        ),
        ("invalid", json!({}), json!({"palisade.dev/ttl": "soon"})),
        ("plain", json!({}), json!({})),
    ] {
        created.push((cm_name, create_cm(&cms, cm_name, labels, annotations).await));
    }

    // A Job (restricted Pod Security profile) whose Pod this test reports as
    // finished, as the kubelet would; the real Job controller completes it.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "done"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "busybox:1.36", "imagePullPolicy": "Always", "command": ["true"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]
        }}}
    }))
    .expect("job");
    let job = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("create job");
    let job_uid = job.uid().expect("uid");
    finish_job_pods(&client, &ns, "done", 0, "").await;
    wait(await_condition(
        jobs.clone(),
        "done",
        conditions::is_job_completed(),
    ))
    .await;
    wait(await_condition(
        jobs.clone(),
        "done",
        conditions::is_deleted(&job_uid),
    ))
    .await;

    for (cm_name, uid) in &created {
        // palisade.dev/keep does not exempt from the rule (issue #30).
        if ["ttl", "expires", "scratch", "kept"].contains(cm_name) {
            wait(await_condition(
                cms.clone(),
                cm_name,
                conditions::is_deleted(uid),
            ))
            .await;
        }
    }
    for survivor in ["invalid", "plain"] {
        assert!(
            cms.get_opt(survivor).await.expect("get").is_some(),
            "{survivor} must survive"
        );
    }
    wait(await_condition(
        Api::<Tenant>::all(client.clone()),
        &name,
        |t: Option<&Tenant>| {
            t.and_then(|t| t.status.as_ref()?.garbage_collection.as_ref())
                .is_some_and(|g| g.deleted >= 5)
        },
    ))
    .await;
    delete_tenant(&client, &name).await;
}
