//! The Palisade kinds (group `palisade.dev`, version `v1alpha1`) and what they share.
//!
//! Nothing under `crd/` talks to the API server: these are plain data types whose
//! schemas become the CustomResourceDefinitions in `crds/`.

pub mod backup_run;
pub mod backup_schedule;
pub mod condition;
pub mod role_policy;
pub mod tenant;

pub use backup_run::{BackupRun, BackupRunSpec, BackupRunStatus};
pub use backup_schedule::{BackupSchedule, BackupScheduleSpec, BackupScheduleStatus};
pub use condition::{Condition, ConditionStatus};
pub use role_policy::{RolePolicy, RolePolicySpec, RolePolicyStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Palisade kind.
pub const GROUP: &str = "palisade.dev";
/// The served and stored version of every Palisade kind.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Palisade serves, in a stable order (used by `palisade crds` and `crds/`).
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut tenant = Tenant::crd();
    // A Tenant's name is the value of the `palisade.dev/tenant` label on
    // everything it owns and the prefix of its namespaces: a DNS label. Bounding
    // it also keeps the CEL rules that read it inside the API server's cost budget.
    restrict_name(&mut tenant, 63, tenant::NAME_PATTERN);
    vec![
        tenant,
        RolePolicy::crd(),
        BackupSchedule::crd(),
        BackupRun::crd(),
    ]
}

/// Restricts `metadata.name` (and `generateName`, which the server turns into a
/// name with five more characters) in every version's schema: the one part of
/// metadata a CRD schema may constrain. The API server's CEL cost estimator
/// uses these bounds only when both are declared (else it assumes names as long
/// as a whole request) and `apiVersion` and `kind` are declared strings.
fn restrict_name(crd: &mut CustomResourceDefinition, max_length: i64, pattern: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let name = JSONSchemaProps {
            type_: Some("string".into()),
            max_length: Some(max_length),
            pattern: Some(pattern.into()),
            ..Default::default()
        };
        let generate_name = JSONSchemaProps {
            type_: Some("string".into()),
            max_length: Some(max_length - 5),
            ..Default::default()
        };
        let metadata = JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some(
                [
                    ("name".to_string(), name),
                    ("generateName".to_string(), generate_name),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let string = |description: &str| JSONSchemaProps {
            type_: Some("string".into()),
            description: Some(description.into()),
            ..Default::default()
        };
        let props = schema.properties.get_or_insert_with(Default::default);
        props.insert("metadata".into(), metadata);
        props.insert(
            "apiVersion".into(),
            string("The versioned schema of this representation of an object."),
        );
        props.insert(
            "kind".into(),
            string("The REST resource this object represents."),
        );
    }
}

/// Short text for `resource.Quantity` fields: the upstream description is a page
/// of grammar repeated under every quantity, which buries `kubectl explain`.
const QUANTITY_DESCRIPTION: &str =
    "A Kubernetes quantity: a number with an optional suffix, e.g. 500m, 2, 1.5Gi, 10G.";

/// Replaces that description in a CRD schema (`palisade crds`, docs/API.md).
pub fn shorten_quantity_docs(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let is_quantity = map
                .get("description")
                .and_then(|d| d.as_str())
                .is_some_and(|d| d.starts_with("Quantity is a fixed-point representation"));
            if is_quantity {
                map.insert("description".into(), QUANTITY_DESCRIPTION.into());
            }
            map.values_mut().for_each(shorten_quantity_docs);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(shorten_quantity_docs),
        _ => {}
    }
}
