//! kstatus reads Current, InProgress and Failed from Palisade's conditions.

use super::*;

/// Builds the kstatus helper (e2e/kstatus: cli-utils' `status.Compute`, the
/// library Flux and kstatus-based tooling use) once per run.
fn kstatus_helper() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kstatus-check");
            let go = ["/usr/local/go/bin/go", "go"]
                .into_iter()
                .find(|g| {
                    std::process::Command::new(g)
                        .arg("version")
                        .output()
                        .is_ok()
                })
                .expect("Go is needed for the kstatus helper (e2e/kstatus)");
            let status = std::process::Command::new(go)
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/kstatus"))
                .status()
                .expect("go build");
            assert!(status.success(), "building e2e/kstatus failed");
            out
        })
        .clone()
}

/// kstatus's verdict on the object as the API server has it now: the status
/// (`Current`, `InProgress`, `Failed`, …) and its message.
async fn kstatus_of<K>(client: &Client, name: &str) -> (String, String)
where
    K: Resource<DynamicType = ()>,
{
    use std::io::Write;
    let ar = kube::core::ApiResource::erase::<K>(&());
    let api: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let obj = api.get(name).await.expect("get object");
    let mut child = std::process::Command::new(kstatus_helper())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run kstatus helper");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(&obj).expect("json"))
        .expect("write object");
    let out = child.wait_with_output().expect("kstatus helper");
    assert!(out.status.success(), "kstatus helper failed");
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (status, message) = line.split_once(' ').unwrap_or((line.as_str(), ""));
    (status.to_string(), message.to_string())
}

/// Waits until kstatus says `want` for the Tenant (status writes are not
/// instantaneous after the condition the caller waited on).
async fn wait_kstatus(client: &Client, name: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (status, message) = kstatus_of::<Tenant>(client, name).await;
        if status == want {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kstatus still says {status} ({message}), want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn kstatus_reads_current_in_progress_and_failed() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (controller, _) = start_controller(&operator);
    let tenants: Api<Tenant> = Api::all(client.clone());
    let name = unique("e2k");
    let mut cleanup = Cleanup::default();
    cleanup.tenant(&name);
    create_ready(&tenants, &sample(&name, "Delete")).await;
    wait_kstatus(&client, &name, "Current").await;

    // `kubectl wait --for=condition=Ready` works on a Tenant.
    let kubectl = std::process::Command::new("kubectl")
        .args(["wait", "--for=condition=Ready", "--timeout=60s"])
        .arg(format!("tenant/{name}"))
        .output()
        .expect("kubectl on PATH (scripts/test-cluster.sh env)");
    assert!(
        kubectl.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&kubectl.stderr)
    );

    // Converging: a spec edit the controller has not seen yet.
    drop(controller);
    let edited = tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"quota": {"hard": {"pods": "11"}}}})),
        )
        .await
        .expect("edit");
    wait_kstatus(&client, &name, "InProgress").await;
    let (controller, _) = start_controller(&operator);
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_ready(edited.meta().generation),
    ))
    .await;
    wait_kstatus(&client, &name, "Current").await;

    // An invalid spec fails at once: Stalled=True with the reason.
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"network": {"allowEgressCidrs": [{"cidr": "10.0.0.0/33"}]}}}),
            ),
        )
        .await
        .expect("break");
    wait(await_condition(
        tenants.clone(),
        &name,
        tenant_reason("InvalidCidr"),
    ))
    .await;
    let message = wait_kstatus(&client, &name, "Failed").await;
    assert!(message.contains("allowEgressCidrs"), "{message}");
    let t = tenants.get(&name).await.expect("get");
    let conditions = t.status.expect("status").conditions;
    let stalled = palisade::crd::condition::find(&conditions, "Stalled").expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InvalidCidr")
    );
    assert!(palisade::crd::condition::find(&conditions, "Reconciling").is_none());

    // Fixed: Stalled disappears (kstatus wants it absent, not False).
    tenants
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"network": {"allowEgressCidrs": null}}})),
        )
        .await
        .expect("fix");
    wait_kstatus(&client, &name, "Current").await;
    let t = tenants.get(&name).await.expect("get");
    let conditions = t.status.expect("status").conditions;
    assert!(palisade::crd::condition::find(&conditions, "Stalled").is_none());
    delete_tenant(&client, &name).await;
    drop(controller);
}
