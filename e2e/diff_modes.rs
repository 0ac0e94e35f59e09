//! Issue #29: `palisade diff` run without flags tells the truth however the
//! Tenant was applied — `kubectl apply` (client-side), `kubectl apply
//! --server-side`, Flux (`kustomize-controller`) and Argo CD
//! (`argocd-controller`) — with `kubectl diff` in the same mode as the oracle
//! for the Tenant's fields, and the controller's real deletions after the real
//! apply as the oracle for what is pruned.

use super::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One way of applying: the `kubectl apply` flags (also `kubectl diff`'s), and
/// how `palisade diff` must name it.
struct Way {
    name: &'static str,
    flags: &'static [&'static str],
    applied_as: &'static str,
}

const WAYS: &[Way] = &[
    Way {
        name: "kubectl apply",
        flags: &[],
        applied_as: "as kubectl client-side apply",
    },
    Way {
        name: "kubectl apply --server-side",
        flags: &["--server-side", "--force-conflicts"],
        applied_as: "as server-side apply by kubectl",
    },
    Way {
        name: "Flux",
        flags: &[
            "--server-side",
            "--force-conflicts",
            "--field-manager=kustomize-controller",
        ],
        applied_as: "as server-side apply by kustomize-controller",
    },
    Way {
        name: "Argo CD",
        flags: &[
            "--server-side",
            "--force-conflicts",
            "--field-manager=argocd-controller",
        ],
        applied_as: "as server-side apply by argocd-controller",
    },
];

fn kubectl(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new("kubectl");
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .expect("kubectl on PATH (scripts/test-cluster.sh env)");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn apply(way: &Way, file: &Path) {
    let mut args = vec!["apply", "-f", file.to_str().expect("utf-8")];
    args.extend(way.flags);
    kubectl(&args, &[]);
}

/// The Tenant fields `kubectl diff` (same mode) changes: it hands its LIVE and
/// MERGED directories to `KUBECTL_EXTERNAL_DIFF`, a script that copies them.
fn kubectl_diff_fields(way: &Way, file: &Path, scratch: &Path) -> BTreeSet<String> {
    let out = scratch.join(way.name.replace(' ', "-"));
    std::fs::create_dir_all(&out).expect("dir");
    let script = scratch.join("copy-diff.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncp -r \"$1\" \"$PALISADE_DIFF_OUT/live\" && cp -r \"$2\" \"$PALISADE_DIFF_OUT/merged\"\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut args = vec!["diff", "-f", file.to_str().expect("utf-8")];
    args.extend(way.flags.iter().filter(|f| **f != "--force-conflicts"));
    if way.flags.contains(&"--server-side") {
        args.push("--force-conflicts");
    }
    kubectl(
        &args,
        &[
            ("KUBECTL_EXTERNAL_DIFF", &script),
            ("PALISADE_DIFF_OUT", &out),
        ],
    );
    let read = |dir: &str| -> serde_json::Value {
        let dir = out.join(dir);
        let file = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("kubectl diff wrote no {}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .find(|p| p.to_string_lossy().contains("Tenant"))
            .expect("the Tenant's file");
        serde_yaml::from_str(&std::fs::read_to_string(file).expect("read")).expect("yaml")
    };
    let (live, merged) = (read("live"), read("merged"));
    palisade::diff::field_changes(
        &palisade::diff::normalize(&live),
        &palisade::diff::normalize(&merged),
    )
    .into_iter()
    .map(|c| c.path)
    .collect()
}

fn tenant_yaml(name: &str, edited: bool) -> String {
    if edited {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  namespaces:\n  - name: {name}-a\n  quota:\n    hard:\n      pods: \"20\"\n  network:\n    allowInternetEgress: true\n  deletionPolicy: Delete\n"
        )
    } else {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata:\n  name: {name}\nspec:\n  namespaces:\n  - name: {name}-a\n  - name: {name}-b\n  quota:\n    hard:\n      pods: \"10\"\n      services: \"5\"\n"
        )
    }
}

pub(super) fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let sub = dir.join(file.trim_end_matches(".yaml"));
    std::fs::create_dir_all(&sub).expect("dir");
    let path = sub.join(file);
    std::fs::write(&path, text).expect("write");
    path
}

fn report_tenant<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    diff_object(report, "Tenant", None, name)
}

/// Keys (as `managed_rvs` writes them) of the children the report prunes or
/// releases for Tenant `name`.
fn reported_removals(report: &serde_json::Value, name: &str) -> BTreeSet<String> {
    let source = format!("Tenant {name}");
    report["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter(|o| o["source"] == source.as_str())
        .filter(|o| o["action"] == "pruned" || o["action"] == "released")
        .map(|o| match o["kind"].as_str() {
            Some("Namespace") => format!("ns/{}", o["name"].as_str().unwrap_or_default()),
            kind => format!(
                "{}/{}/{}",
                kind.unwrap_or_default(),
                o["namespace"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            ),
        })
        .collect()
}

#[tokio::test]
async fn diff_agrees_with_kubectl_diff_however_the_tenant_was_applied() {
    if !enabled() {
        return;
    }
    let (client, operator) = clients().await;
    let (_controller, _) = start_controller(&operator);
    let tenants: Api<Tenant> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let scratch = tempfile::tempdir().expect("tmp");
    let mut cleanup = Cleanup::default();
    let want: BTreeSet<String> = [
        "spec.namespaces",
        "spec.quota.hard.pods",
        "spec.quota.hard.services",
        "spec.network.allowInternetEgress",
        "spec.deletionPolicy",
    ]
    .map(String::from)
    .into();
    for way in WAYS {
        let name = unique("e2m");
        cleanup.tenant(&name);
        let dir = scratch.path().join(&name);
        let original = write(&dir, "original.yaml", &tenant_yaml(&name, false));
        let edited = write(&dir, "edited.yaml", &tenant_yaml(&name, true));
        apply(way, &original);
        wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;

        // Nothing to change yet, and the mode is named.
        let (code, report, _) = run_diff(original.parent().expect("dir"), true);
        assert_eq!(code, Some(0), "{}: {report:#}", way.name);
        assert_eq!(
            report_tenant(&report, &name)["appliedAs"],
            way.applied_as,
            "{}",
            way.name
        );

        // The edit: palisade diff's Tenant fields are kubectl diff's.
        let (code, report, _) = run_diff(edited.parent().expect("dir"), true);
        assert_eq!(code, Some(1), "{}", way.name);
        let t = report_tenant(&report, &name);
        assert_eq!(t["action"], "changed", "{}: {t:#}", way.name);
        let ours: BTreeSet<String> = t["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .map(|f| f["path"].as_str().unwrap_or_default().to_string())
            .collect();
        let theirs = kubectl_diff_fields(way, &edited, scratch.path());
        assert_eq!(ours, theirs, "{}: palisade diff vs kubectl diff", way.name);
        assert_eq!(ours, want, "{}: every edit is shown", way.name);

        // The children it prunes are what the controller deletes after the real apply.
        let b = format!("{name}-b");
        // The Tenant's children there (Palisade's own RoleBinding in the
        // namespace is the operator's, not the Tenant's, and goes with it).
        let inventory: BTreeSet<String> = managed_rvs(&client, std::slice::from_ref(&b))
            .await
            .into_keys()
            .filter(|k| !k.ends_with(&format!("/{}", palisade::resources::rbac::OPERATOR_BINDING)))
            .collect();
        let reported = reported_removals(&report, &name);
        assert_eq!(reported, inventory, "{}: the pruned children", way.name);
        let before = tenants.get(&name).await.expect("tenant");
        apply(way, &edited);
        let after = tenants.get(&name).await.expect("tenant");
        assert!(
            after.meta().generation > before.meta().generation,
            "{}: applied",
            way.name
        );
        wait(await_condition(
            tenants.clone(),
            &name,
            tenant_ready(after.meta().generation),
        ))
        .await;
        wait(await_condition(
            namespaces.clone(),
            &b,
            |n: Option<&Namespace>| n.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        ))
        .await;

        // Applied: nothing left to change.
        let (code, report, _) = run_diff(edited.parent().expect("dir"), true);
        assert_eq!(code, Some(0), "{}: {report:#}", way.name);
        delete_tenant(&client, &name).await;
    }
}

/// A hand edit on a GitOps-applied Tenant: the next sync (Flux, forcing its
/// fields back) reverts it, and the preview of the unchanged Git file says so.
#[tokio::test]
async fn diff_shows_a_gitops_sync_reverting_a_hand_edit() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let scratch = tempfile::tempdir().expect("tmp");
    let mut cleanup = Cleanup::default();
    let name = unique("e2h");
    cleanup.tenant(&name);
    let flux = &WAYS[2];
    let original = write(scratch.path(), "tenant.yaml", &tenant_yaml(&name, false));
    apply(flux, &original);
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    kubectl(
        &[
            "patch",
            "tenant",
            &name,
            "--type=merge",
            "-p",
            r#"{"spec":{"quota":{"hard":{"pods":"99"}}}}"#,
        ],
        &[],
    );
    let (code, report, _) = run_diff(original.parent().expect("dir"), true);
    assert_eq!(code, Some(1), "{report:#}");
    let t = report_tenant(&report, &name);
    assert_eq!(t["appliedAs"], flux.applied_as);
    let pods = t["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .find(|f| f["path"] == "spec.quota.hard.pods")
        .unwrap_or_else(|| panic!("the reverted field: {t:#}"));
    assert_eq!(
        (&pods["before"], &pods["after"]),
        (&json!("99"), &json!("10"))
    );
    let theirs = kubectl_diff_fields(flux, &original, scratch.path());
    assert!(theirs.contains("spec.quota.hard.pods"), "{theirs:?}");
    delete_tenant(&client, &name).await;
}

/// Issue #26: a namespace labelled with another Tenant's uid (left behind by
/// an earlier Tenant of the same name) is never pruned by the controller, and
/// `palisade diff` never reports it pruned: one disposal rule for both.
#[tokio::test]
async fn a_namespace_of_another_tenant_uid_is_never_pruned_nor_reported() {
    if !enabled() {
        return;
    }
    let (client, _controller) = setup().await;
    let tenants: Api<Tenant> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let scratch = tempfile::tempdir().expect("tmp");
    let mut cleanup = Cleanup::default();
    let name = unique("e2u");
    let left = format!("{name}-old");
    cleanup.tenant(&name).namespace(&left);
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": left, "labels": {
                "app.kubernetes.io/managed-by": "palisade",
                "palisade.dev/tenant": name,
                "palisade.dev/tenant-uid": "00000000-0000-0000-0000-0000000000e1",
            }}}))
            .expect("namespace"),
        )
        .await
        .expect("a namespace of an earlier Tenant of the same name");
    let file = write(scratch.path(), "tenant.yaml", &tenant_yaml(&name, true));
    apply(&WAYS[0], &file);
    wait(await_condition(tenants.clone(), &name, tenant_ready(None))).await;
    let (code, report, _) = run_diff(file.parent().expect("dir"), true);
    assert_eq!(code, Some(0), "{report:#}");
    assert!(
        !report.to_string().contains(&left),
        "the other Tenant's namespace is not this one's to prune: {report:#}"
    );
    // A resync later, the controller has not touched it either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = namespaces.get(&left).await.expect("kept");
    assert!(still.metadata.deletion_timestamp.is_none());
    // Deleting the Tenant finishes and leaves the other Tenant's namespace.
    delete_tenant(&client, &name).await;
    let still = namespaces.get(&left).await.expect("kept");
    assert!(still.metadata.deletion_timestamp.is_none());
}
