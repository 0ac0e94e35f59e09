//! What the BackupSchedule controller would apply for an input schedule.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;

use super::{Action, DiffError, Differ, How, Target, api_err, ar_of, ser_err};
use crate::apply::Applier;
use crate::crd::BackupSchedule;
use crate::resources::{backup_jobs, backup_network};

impl Differ {
    /// What the BackupSchedule controller applies for a schedule: its
    /// configuration ConfigMap and its Jobs' egress NetworkPolicy.
    pub(super) async fn schedule_children(&mut self, bs: &BackupSchedule) -> Result<(), DiffError> {
        let mut bs = bs.clone();
        let ns = bs
            .namespace()
            .unwrap_or_else(|| self.client.default_namespace().to_string());
        bs.metadata.namespace = Some(ns.clone());
        let source = format!("BackupSchedule {ns}/{}", bs.name_any());
        let api: Api<BackupSchedule> = Api::namespaced(self.client.clone(), &ns);
        let live = api.get_metadata_opt(&bs.name_any()).await.map_err(api_err(
            "get",
            "BackupSchedule",
            &bs.name_any(),
        ))?;
        // Children are owned by the schedule: their ownerReference needs its
        // uid (a dry-run create makes one up).
        bs.metadata.uid = live.as_ref().and_then(|l| l.metadata.uid.clone());
        let new = bs.metadata.uid.is_none();
        let config = backup_jobs::config_map(&bs)
            .map_err(|e| DiffError::Serialize(format!("the ConfigMap of {source}: {e}")))?;
        let policy = serde_json::to_value(backup_network::egress_policy(&bs))
            .map_err(ser_err("the egress NetworkPolicy"))?;
        let note = "once the schedule exists and is valid";
        for (ar, value) in [
            (ar_of::<ConfigMap>(), config),
            (ar_of::<NetworkPolicy>(), policy),
        ] {
            if new {
                let crate::apply::Prepared {
                    name,
                    ns: namespace,
                    ..
                } = Applier::prepare(&ar, value).map_err(|e| {
                    DiffError::Serialize(format!("a {} built for {source}: {e}", ar.kind))
                })?;
                let t = Target {
                    ar: &ar,
                    namespace,
                    name,
                    value: Value::Null,
                    how: How::Child,
                    source: source.clone(),
                };
                self.push(&t, Action::Created, Vec::new(), Some(note.into()));
            } else {
                self.child(&ar, value, &source, false).await?;
            }
        }
        Ok(())
    }
}
