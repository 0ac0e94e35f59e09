//! Pure builders for the objects a `BackupSchedule` runs as: the configuration
//! ConfigMap `<schedule>-config` and one Job per run (`<schedule>-<unix-minute>` for
//! a backup, `<schedule>-verify-<unix-minute>` for a restore test).
//!
//! The Job runs the Palisade image with
//! `palisade backup run --config /etc/palisade/backup.yaml --output json
//! --termination-log /dev/termination-log --prune` (or `backup verify …`). The
//! configuration is the schedule's spec, mounted from the ConfigMap; secrets are
//! mounted read-only from the referenced Secrets as files and passed by path, never
//! by value. After a successful snapshot, `--prune` applies `spec.retention` through
//! the engine (which never deletes the newest verified snapshot). The one-line JSON
//! result becomes the container's termination message, which the controller parses
//! with [`crate::backup::result::parse`].

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use crate::backup::destination::{self, SecretMount};
use crate::crd::backup_schedule::{BackupSchedule, BackupScheduleSpec, SecretKeyRef};

/// Label: the schedule a Job, Pod or ConfigMap belongs to.
pub const SCHEDULE_LABEL: &str = "palisade.dev/backup-schedule";
/// The memory of a backup Job whose template sets no resources: the run's budget at the
/// schedule's compression level with the default zstd workers of a two-CPU node, plus
/// an S3 destination's parts in flight ([`crate::backup::budget`]), as both request
/// and limit.
pub fn default_backup_resources(spec: &BackupScheduleSpec) -> Value {
    use crate::backup::budget;
    let level = spec.compression.level;
    let s3 = spec
        .destination
        .s3
        .as_ref()
        .map(|s| (s.part_size_mib, s.concurrency));
    let mib = budget::job_budget_mib(level, budget::default_compression_threads(level, 2), s3);
    let memory = format!("{mib}Mi");
    json!({"requests": {"memory": memory}, "limits": {"memory": memory}})
}

/// Label: `backup` or `verify`.
pub const RUN_KIND_LABEL: &str = "palisade.dev/run-kind";
/// Label on the run pod: its Job's name (the pod's results are found by it).
pub const RUN_LABEL: &str = "palisade.dev/run";
/// Annotation on a Job: the scheduled time it runs for (RFC 3339).
pub const SCHEDULED_TIME_ANNOTATION: &str = "palisade.dev/scheduled-time";
/// Annotation on a Job: `schedule` or `manual`.
pub const TRIGGER_ANNOTATION: &str = "palisade.dev/run-trigger";
/// Annotation on a BackupSchedule: start one backup now (cleared by the controller).
pub const RUN_NOW_ANNOTATION: &str = "palisade.dev/run-now";
/// Annotation on a BackupSchedule: start one restore test now (cleared).
pub const VERIFY_NOW_ANNOTATION: &str = "palisade.dev/verify-now";

/// Where the configuration file is mounted.
pub const CONFIG_PATH: &str = "/etc/palisade/backup.yaml";
/// Key of the configuration file in the ConfigMap.
pub const CONFIG_KEY: &str = "backup.yaml";
const SECRETS_DIR: &str = "/etc/palisade/secrets";
const TERMINATION_LOG: &str = "/dev/termination-log";
/// UID/GID the run container runs as (distroless `nonroot`).
const RUN_AS: i64 = 65532;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// `palisade backup run` (+ retention).
    Backup,
    /// `palisade backup verify` (restore test).
    Verify,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Backup => "backup",
            RunKind::Verify => "verify",
        }
    }

    pub fn from_label(s: &str) -> Option<Self> {
        match s {
            "backup" => Some(RunKind::Backup),
            "verify" => Some(RunKind::Verify),
            _ => None,
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
        }
    }
}

fn fnv8(s: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:08x}", h & 0xffff_ffff)
}

/// The deterministic run name: `<schedule>-<unix-minute>` or
/// `<schedule>-verify-<unix-minute>`. Names over 63 characters (the limit of the
/// `job-name` label the Job controller puts on pods) keep a prefix of the schedule
/// name plus a hash of all of it, so they stay unique and stable.
pub fn job_name(schedule: &str, kind: RunKind, unix_minute: i64) -> String {
    let suffix = match kind {
        RunKind::Backup => format!("-{unix_minute}"),
        RunKind::Verify => format!("-verify-{unix_minute}"),
    };
    let full = format!("{schedule}{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = fnv8(schedule);
    let room = 63 - suffix.len() - hash.len() - 1;
    let prefix: String = schedule.chars().take(room).collect();
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}{suffix}")
}

/// Name of the configuration ConfigMap.
pub fn config_map_name(schedule: &str) -> String {
    format!("{schedule}-config")
}

fn labels(schedule: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (SCHEDULE_LABEL.to_string(), schedule.to_string()),
    ])
}

fn owner_refs(bs: &BackupSchedule) -> Value {
    match bs.controller_owner_ref(&()) {
        Some(o) => json!([o]),
        None => json!([]),
    }
}

/// The configuration file the Job reads: the schedule's spec, with the destination
/// as the Job sees it (a `persistentVolumeClaim` becomes the path it is mounted at;
/// see [`destination::job_destination`]).
pub fn job_config(spec: &BackupScheduleSpec) -> BackupScheduleSpec {
    let mut c = spec.clone();
    c.destination = destination::job_destination(&spec.destination);
    // Fields only the controller uses.
    c.job_template = None;
    c
}

/// The ConfigMap `<schedule>-config` holding the configuration file.
pub fn config_map(bs: &BackupSchedule) -> Result<Value, serde_yaml::Error> {
    let name = bs.name_any();
    let text = serde_yaml::to_string(&job_config(&bs.spec))?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(&name),
            "namespace": bs.namespace(),
            "labels": labels(&name),
            "ownerReferences": owner_refs(bs),
        },
        "data": { CONFIG_KEY: text },
    }))
}

/// One Secret-backed file: volume, mount and the CLI flag that takes its path.
struct SecretFile {
    mount: SecretMount,
    /// Only the restore test needs it.
    verify_only: bool,
}

/// A Secret key mounted as one file, passed to the engine by `flag`.
fn one_file(
    volume: &'static str,
    r: &SecretKeyRef,
    file: &'static str,
    flag: &'static str,
    verify_only: bool,
) -> SecretFile {
    SecretFile {
        mount: SecretMount {
            volume,
            secret: r.name.clone(),
            items: vec![(r.key.clone(), file)],
            flag,
            file: Some(file),
        },
        verify_only,
    }
}

fn secret_files(spec: &BackupScheduleSpec) -> Vec<SecretFile> {
    let mut out = Vec::new();
    if let Some(r) = &spec.postgres.password_secret_ref {
        out.push(one_file(
            "postgres-password",
            r,
            "password",
            "--password-file",
            false,
        ));
    }
    if let Some(r) = &spec.postgres.ca_secret_ref {
        out.push(one_file(
            "postgres-ca",
            r,
            "ca.crt",
            "--ssl-root-cert",
            false,
        ));
    }
    if let Some(e) = &spec.encryption {
        out.push(one_file(
            "encryption-key",
            &e.key_secret_ref,
            "key",
            "--key-file",
            false,
        ));
    }
    // The destination's own Secrets (S3 credentials, …).
    for mount in destination::job_mounts(&spec.destination).secrets {
        out.push(SecretFile {
            mount,
            verify_only: false,
        });
    }
    if let Some(r) = spec
        .restore_test
        .as_ref()
        .and_then(|t| t.target.as_ref())
        .and_then(|t| t.password_secret_ref.as_ref())
    {
        out.push(one_file(
            "restore-target-password",
            r,
            "password",
            "--target-password-file",
            true,
        ));
    }
    out
}

fn secret_files_for(spec: &BackupScheduleSpec, kind: RunKind) -> Vec<SecretFile> {
    secret_files(spec)
        .into_iter()
        .filter(|f| kind == RunKind::Verify || !f.verify_only)
        .collect()
}

/// Every `(Secret, key)` the Jobs mount (checked by the controller before it
/// schedules anything).
pub fn referenced_secret_keys(spec: &BackupScheduleSpec) -> Vec<(String, String)> {
    secret_files(spec)
        .into_iter()
        .flat_map(|f| {
            let secret = f.mount.secret;
            f.mount
                .items
                .into_iter()
                .map(move |(k, _)| (secret.clone(), k))
        })
        .collect()
}

/// The container's command line (after the `palisade` binary).
pub fn job_args(spec: &BackupScheduleSpec, kind: RunKind) -> Vec<String> {
    let mut args: Vec<String> = match kind {
        RunKind::Backup => vec!["backup".into(), "run".into()],
        RunKind::Verify => vec!["backup".into(), "verify".into()],
    };
    for a in [
        "--config",
        CONFIG_PATH,
        "--output",
        "json",
        "--termination-log",
        TERMINATION_LOG,
    ] {
        args.push(a.into());
    }
    if kind == RunKind::Backup {
        args.push("--prune".into());
    }
    for f in secret_files_for(spec, kind) {
        let m = f.mount;
        args.push(m.flag.into());
        args.push(match m.file {
            Some(file) => format!("{SECRETS_DIR}/{}/{file}", m.volume),
            None => format!("{SECRETS_DIR}/{}", m.volume),
        });
    }
    args
}

/// A run Job.
pub fn job(
    bs: &BackupSchedule,
    kind: RunKind,
    scheduled: k8s_openapi::jiff::Timestamp,
    trigger: Trigger,
    image: &str,
) -> Value {
    let name = bs.name_any();
    let job_name = job_name(&name, kind, scheduled.as_second().div_euclid(60));
    let tpl = bs.spec.job_template.clone().unwrap_or_default();
    let mut labels = labels(&name);
    labels.insert(RUN_KIND_LABEL.into(), kind.as_str().into());
    let mut pod_labels = labels.clone();
    pod_labels.insert(RUN_LABEL.into(), job_name.clone());

    let mut volumes = vec![json!({
        "name": "config",
        "configMap": {
            "name": config_map_name(&name),
            "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
        },
    })];
    let mut mounts = vec![json!({
        "name": "config", "mountPath": CONFIG_PATH, "subPath": CONFIG_KEY, "readOnly": true,
    })];
    for f in secret_files_for(&bs.spec, kind) {
        let m = f.mount;
        volumes.push(json!({
            "name": m.volume,
            "secret": {
                "secretName": m.secret,
                "defaultMode": 0o400,
                "items": m.items.iter().map(|(k, p)| json!({"key": k, "path": p})).collect::<Vec<_>>(),
            },
        }));
        mounts.push(json!({
            "name": m.volume, "mountPath": format!("{SECRETS_DIR}/{}", m.volume), "readOnly": true,
        }));
    }
    // The destination's own volumes (a PersistentVolumeClaim, …).
    for v in destination::job_mounts(&bs.spec.destination).volumes {
        volumes.push(v.volume);
        mounts.push(v.mount);
    }
    volumes.push(json!({"name": "tmp", "emptyDir": {}}));
    mounts.push(json!({"name": "tmp", "mountPath": "/tmp"}));

    let mut container = json!({
        "name": kind.as_str(),
        // The operator's image, whatever the schedule says (issue #15).
        "image": image,
        // Tenant namespaces require it (the `images-*` admission policies,
        // unless the Tenant opts out): the same for every tenant.
        "imagePullPolicy": "Always",
        "command": ["palisade"],
        "args": job_args(&bs.spec, kind),
        // PALISADE_RUN: the engine names its run in the (signed) result, so a result
        // cannot be replayed for another run.
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PALISADE_RUN", "value": job_name}],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    match (&tpl.resources, kind) {
        (Some(r), _) => container["resources"] = json!(r),
        (None, RunKind::Backup) => container["resources"] = default_backup_resources(&bs.spec),
        (None, RunKind::Verify) => {}
    }
    let mut pod_spec = json!({
        "restartPolicy": "Never",
        // The namespace's default ServiceAccount, whatever the schedule says (issue
        // #15): the engine never talks to the Kubernetes API, so no token either.
        "serviceAccountName": "default",
        "automountServiceAccountToken": false,
        "containers": [container],
        "volumes": volumes,
        "securityContext": {"fsGroup": RUN_AS},
    });
    if let Some(ns) = &tpl.node_selector {
        pod_spec["nodeSelector"] = json!(ns);
    }
    if let Some(t) = &tpl.tolerations {
        pod_spec["tolerations"] = json!(t);
    }
    let mut job_spec = json!({
        "backoffLimit": tpl.backoff_limit.unwrap_or(0),
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": pod_spec,
        },
    });
    if let Some(d) = tpl.active_deadline_seconds {
        job_spec["activeDeadlineSeconds"] = json!(d);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": bs.namespace(),
            "labels": labels,
            "annotations": {
                SCHEDULED_TIME_ANNOTATION: scheduled.to_string(),
                TRIGGER_ANNOTATION: trigger.as_str(),
            },
            "ownerReferences": owner_refs(bs),
        },
        "spec": job_spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: BackupSchedule
metadata: {name: orders, namespace: team-a, uid: 0000-1111}
spec:
  schedule: "0 2 * * *"
  timeZone: Europe/Berlin
  postgres:
    host: db
    database: orders
    user: backup
    passwordSecretRef: {name: db-backup, key: password}
  destination:
    s3:
      bucket: backups
      prefix: orders/
      credentialsSecretRef: {name: s3-creds}
  encryption:
    keySecretRef: {name: backup-key, key: key}
  retention: {keepLast: 7}
  restoreTest:
    target: {host: scratch-db, user: restorer, passwordSecretRef: {name: scratch-db, key: password}}
    checks: [{name: has-orders, sql: "select count(*) > 0 from orders"}]
  jobTemplate:
    backoffLimit: 1
    activeDeadlineSeconds: 3600
    nodeSelector: {pool: batch}
    tolerations: [{key: batch, operator: Exists, effect: NoSchedule}]
    resources:
      requests: {cpu: 100m, memory: 256Mi}
      limits: {memory: 1Gi}
"#;

    fn schedule() -> BackupSchedule {
        serde_yaml::from_str(SCHEDULE).expect("schedule yaml")
    }

    fn at() -> k8s_openapi::jiff::Timestamp {
        "2026-03-01T01:00:00Z".parse().expect("time")
    }

    fn check_snapshot(file: &str, value: &Value) {
        let path = format!(
            "{}/src/resources/snapshots/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let yaml = serde_yaml::to_string(value).expect("yaml");
        if std::env::var_os("PALISADE_UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &yaml).expect("write snapshot");
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            yaml, want,
            "{file} changed; rerun with PALISADE_UPDATE_SNAPSHOTS=1 and review the diff"
        );
    }

    #[test]
    fn backup_job_snapshot() {
        let job = job(
            &schedule(),
            RunKind::Backup,
            at(),
            Trigger::Schedule,
            "ghcr.io/palisade-dev/palisade:test",
        );
        check_snapshot("backup_job.yaml", &job);
    }

    /// Issue #32: a backup Job without resources gets its level's memory budget.
    #[test]
    fn a_backup_job_without_resources_gets_its_memory_budget() {
        let mut bs = schedule();
        if let Some(t) = bs.spec.job_template.as_mut() {
            t.resources = None;
        }
        let container = |bs: &BackupSchedule, kind| {
            let job = job(
                bs,
                kind,
                at(),
                Trigger::Schedule,
                "registry.example/palisade:v1",
            );
            job["spec"]["template"]["spec"]["containers"][0].clone()
        };
        // Level 3 (the default): two workers' budget, plus 8 MiB × (4 + 2) S3 parts.
        let c = container(&bs, RunKind::Backup);
        assert_eq!(c["resources"]["limits"]["memory"], "176Mi", "{c}");
        assert_eq!(c["resources"]["requests"]["memory"], "176Mi", "{c}");
        bs.spec.compression.level = 19;
        let c = container(&bs, RunKind::Backup);
        assert_eq!(c["resources"]["limits"]["memory"], "224Mi", "{c}");
        assert!(container(&bs, RunKind::Verify).get("resources").is_none());
    }

    #[test]
    fn verify_job_and_config_map_snapshot() {
        let bs = schedule();
        let job = job(
            &bs,
            RunKind::Verify,
            at(),
            Trigger::Manual,
            "ghcr.io/palisade-dev/palisade:test",
        );
        check_snapshot("verify_job.yaml", &job);
        check_snapshot("backup_config_map.yaml", &config_map(&bs).expect("cm"));
    }

    #[test]
    fn secrets_are_files_never_values() {
        let job = job(&schedule(), RunKind::Backup, at(), Trigger::Schedule, "img");
        let text = job.to_string();
        assert!(!text.contains("secretKeyRef"));
        let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(
            env,
            &json!([{"name": "HOME", "value": "/tmp"},
                    {"name": "PALISADE_RUN", "value": job["metadata"]["name"]}])
        );
        let keys = referenced_secret_keys(&schedule().spec);
        assert_eq!(
            keys,
            vec![
                ("db-backup".to_string(), "password".to_string()),
                ("backup-key".to_string(), "key".to_string()),
                ("s3-creds".to_string(), "AWS_ACCESS_KEY_ID".to_string()),
                ("s3-creds".to_string(), "AWS_SECRET_ACCESS_KEY".to_string()),
                ("scratch-db".to_string(), "password".to_string()),
            ]
        );
    }

    #[test]
    fn pods_carry_no_token_and_mount_the_postgres_ca() {
        let mut bs = schedule();
        let spec =
            &job(&bs, RunKind::Backup, at(), Trigger::Schedule, "img")["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert!(!spec.to_string().contains("--ssl-root-cert"));
        bs.spec.postgres.ca_secret_ref = Some(crate::crd::backup_schedule::SecretKeyRef {
            name: "db-ca".into(),
            key: "ca.crt".into(),
        });
        for kind in [RunKind::Backup, RunKind::Verify] {
            let job = job(&bs, kind, at(), Trigger::Schedule, "img");
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod["automountServiceAccountToken"], false);
            let args: Vec<&str> = pod["containers"][0]["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let at_flag = args
                .iter()
                .position(|a| *a == "--ssl-root-cert")
                .expect("--ssl-root-cert");
            assert_eq!(
                args[at_flag + 1],
                "/etc/palisade/secrets/postgres-ca/ca.crt"
            );
            assert!(
                pod["volumes"]
                    .as_array()
                    .expect("volumes")
                    .iter()
                    .any(|v| v["name"] == "postgres-ca" && v["secret"]["secretName"] == "db-ca"),
                "{pod}"
            );
        }
        assert!(
            referenced_secret_keys(&bs.spec).contains(&("db-ca".to_string(), "ca.crt".to_string()))
        );
    }

    /// Issue #15: a schedule that still carries the removed `image` or
    /// `serviceAccountName` (an object stored before they were dropped) does not
    /// choose either.
    #[test]
    fn image_and_service_account_come_from_the_operator_only() {
        let mut bs = schedule();
        let tpl = bs.spec.job_template.get_or_insert_with(Default::default);
        tpl.removed_image = Some(json!("evil/image"));
        tpl.removed_service_account_name = Some(json!("cluster-reader"));
        for kind in [RunKind::Backup, RunKind::Verify] {
            let job = job(&bs, kind, at(), Trigger::Manual, "operator/image:1");
            let pod = &job["spec"]["template"]["spec"];
            assert_eq!(pod["containers"][0]["image"], "operator/image:1");
            assert_eq!(pod["serviceAccountName"], "default");
            assert_eq!(pod["automountServiceAccountToken"], false);
            assert!(!job.to_string().contains("evil/image"));
            assert!(!job.to_string().contains("cluster-reader"));
        }
        let cm = config_map(&bs).expect("cm").to_string();
        assert!(!cm.contains("evil/image") && !cm.contains("cluster-reader"));
    }

    #[test]
    fn names_are_deterministic_and_bounded() {
        assert_eq!(
            job_name("orders", RunKind::Backup, 29_000_000),
            "orders-29000000"
        );
        assert_eq!(
            job_name("orders", RunKind::Verify, 29_000_000),
            "orders-verify-29000000"
        );
        let long = "a".repeat(80);
        for kind in [RunKind::Backup, RunKind::Verify] {
            let n = job_name(&long, kind, 29_000_000);
            assert!(n.len() <= 63, "{n}");
            assert_eq!(n, job_name(&long, kind, 29_000_000));
            assert_ne!(n, job_name(&format!("{long}b"), kind, 29_000_000));
        }
    }

    #[test]
    fn pvc_destination_becomes_a_mounted_path() {
        let mut bs = schedule();
        bs.spec.destination.s3 = None;
        bs.spec.destination.persistent_volume_claim =
            Some(crate::crd::backup_schedule::PvcDestination {
                claim_name: "backups".into(),
                sub_path: Some("orders".into()),
            });
        let c = job_config(&bs.spec);
        assert_eq!(
            c.destination.path.as_deref(),
            Some("/var/lib/palisade/backups/orders")
        );
        assert!(c.destination.persistent_volume_claim.is_none());
        let job = job(&bs, RunKind::Backup, at(), Trigger::Schedule, "img");
        assert_eq!(
            job["spec"]["template"]["spec"]["volumes"][3]["persistentVolumeClaim"]["claimName"],
            "backups"
        );
    }
}
