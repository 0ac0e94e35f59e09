//! CRUD, error codes, patches, subresources and deletion semantics through a
//! real `kube::Client`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::{CustomResource, Resource, ResourceExt};
use palisade_testkit::{FakeApiServer, PatchType, Verb};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "Tenant",
    status = "TenantStatus"
)]
pub struct TenantSpec {
    pub owner: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct TenantStatus {
    pub phase: String,
}

/// Merge-patches `name`, through `/status` when `status`.
async fn merge<K>(api: &Api<K>, name: &str, status: bool, patch: serde_json::Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (pp, patch) = (PatchParams::default(), Patch::Merge(patch));
    match status {
        false => api.patch(name, &pp, &patch).await,
        true => api.patch_status(name, &pp, &patch).await,
    }
    .unwrap()
}

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The status code of the API error `call` ends in.
async fn error_code<T: std::fmt::Debug>(call: impl Future<Output = kube::Result<T>>) -> u16 {
    code(call.await.unwrap_err())
}

fn code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv<K: Resource>(o: &K) -> u64 {
    o.meta()
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn crud_and_error_codes() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let pp = PostParams::default();

    let created = cms.create(&pp, &cm("a", &[("k", "v")])).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(error_code(cms.create(&pp, &cm("a", &[]))).await, 409);

    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
    let err = cms.get("missing").await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
        }
        other => panic!("{other:?}"),
    }
    assert!(cms.get_opt("missing").await.unwrap().is_none());

    // replace with the current resourceVersion, then with a stale one
    let mut upd = created.clone();
    upd.data = Some(BTreeMap::from([("k".into(), "v2".into())]));
    let replaced = cms.replace("a", &pp, &upd).await.unwrap();
    assert!(rv(&replaced) > rv(&created));
    assert_eq!(error_code(cms.replace("a", &pp, &upd)).await, 409);

    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    // creating in a missing namespace is refused
    let other: Api<ConfigMap> = Api::namespaced(server.client(), "nope");
    assert_eq!(error_code(other.create(&pp, &cm("x", &[]))).await, 404);

    let res = cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(res.is_right(), "removed objects return a Status");
    assert_eq!(
        error_code(cms.delete("a", &DeleteParams::default())).await,
        404
    );
    assert!(
        server
            .get_json("configmaps", Some("default"), "a")
            .is_none()
    );
}

#[tokio::test]
async fn generate_name_and_all_namespace_list() {
    let server = FakeApiServer::new();
    let client = server.client();
    let ns: Api<Namespace> = Api::all(client.clone());
    let mut n = Namespace::default();
    n.metadata.name = Some("team-a".into());
    ns.create(&PostParams::default(), &n).await.unwrap();
    let got = ns.get("team-a").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Active"));

    let a: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
    let mut c = cm("", &[]);
    c.metadata.name = None;
    c.metadata.generate_name = Some("gen-".into());
    let created = a.create(&PostParams::default(), &c).await.unwrap();
    let name = created.name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm("d", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
}

#[tokio::test]
async fn noop_writes_keep_resource_version_and_generation_rules() {
    let server = FakeApiServer::new();
    server.register_kind::<Tenant>();
    let tenants: Api<Tenant> = Api::all(server.client());
    let t = Tenant::new(
        "t1",
        TenantSpec {
            owner: "alice".into(),
        },
    );
    let created = tenants.create(&PostParams::default(), &t).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    // identical merge patch: no new resourceVersion, no event
    let rv0 = server.resource_version();
    let same = merge(&tenants, "t1", false, json!({"spec": {"owner": "alice"}})).await;
    assert_eq!(rv(&same), rv(&created));
    assert_eq!(server.resource_version(), rv0);

    // metadata-only change: rv bumps, generation does not
    let labelled = merge(
        &tenants,
        "t1",
        false,
        json!({"metadata": {"labels": {"a": "b"}}}),
    )
    .await;
    assert!(rv(&labelled) > rv(&created));
    assert_eq!(labelled.metadata.generation, Some(1));

    // spec change bumps generation
    let changed = merge(&tenants, "t1", false, json!({"spec": {"owner": "bob"}})).await;
    assert_eq!(changed.metadata.generation, Some(2));

    // status through the main resource is ignored
    let ignored = merge(&tenants, "t1", false, json!({"status": {"phase": "Ready"}})).await;
    assert!(ignored.status.is_none());
    assert_eq!(rv(&ignored), rv(&changed));

    // status through /status changes only status, and not the generation
    let st = merge(
        &tenants,
        "t1",
        true,
        json!({"spec": {"owner": "mallory"}, "status": {"phase": "Ready"}}),
    )
    .await;
    assert_eq!(st.status.as_ref().unwrap().phase, "Ready");
    assert_eq!(st.spec.owner, "bob");
    assert_eq!(st.metadata.generation, Some(2));

    // the same status again is a no-op
    let before = server.resource_version();
    let again = merge(&tenants, "t1", true, json!({"status": {"phase": "Ready"}})).await;
    assert_eq!(rv(&again), rv(&st));
    assert_eq!(server.resource_version(), before);

    // replace_status with a stale resourceVersion conflicts
    let mut stale = created.clone();
    stale.status = Some(TenantStatus { phase: "X".into() });
    let err = tenants
        .replace_status("t1", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(code(err), 409);
    // and with the current one it works
    let mut cur = tenants.get("t1").await.unwrap();
    cur.status = Some(TenantStatus {
        phase: "Done".into(),
    });
    let done = tenants
        .replace_status("t1", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(done.status.unwrap().phase, "Done");

    // create drops status for kinds with a status subresource
    let mut t2 = Tenant::new("t2", TenantSpec { owner: "x".into() });
    t2.status = Some(TenantStatus {
        phase: "Fake".into(),
    });
    assert!(
        tenants
            .create(&PostParams::default(), &t2)
            .await
            .unwrap()
            .status
            .is_none()
    );
}

#[tokio::test]
async fn json_patch_and_finalizer_flow() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    cms.create(&PostParams::default(), &cm("f", &[]))
        .await
        .unwrap();

    // the finalizer helper's patch: test null on an absent field, then add
    let add = json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["palisade.dev/cleanup"]},
    ]);
    let p: json_patch::Patch = serde_json::from_value(add.clone()).unwrap();
    let with_fin = cms
        .patch("f", &PatchParams::default(), &Patch::Json::<()>(p.clone()))
        .await
        .unwrap();
    assert_eq!(with_fin.finalizers(), ["palisade.dev/cleanup"]);
    // the same patch now fails its test
    assert_eq!(
        error_code(cms.patch("f", &PatchParams::default(), &Patch::Json::<()>(p))).await,
        422
    );

    // delete only marks
    let marked = cms.delete("f", &DeleteParams::default()).await.unwrap();
    let marked = marked.left().expect("still present");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(
        cms.get("f")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    // adding a finalizer to a deleting object is refused
    let err = cms
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["palisade.dev/cleanup", "other"]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), 422);

    // removing the last finalizer removes the object
    let rm: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "palisade.dev/cleanup"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]))
    .unwrap();
    cms.patch("f", &PatchParams::default(), &Patch::Json::<()>(rm))
        .await
        .unwrap();
    assert!(cms.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn delete_preconditions() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let c = cms
        .create(&PostParams::default(), &cm("p", &[]))
        .await
        .unwrap();
    let bad_uid = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(error_code(cms.delete("p", &bad_uid)).await, 409);
    let bad_rv = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..Default::default()
    };
    assert_eq!(error_code(cms.delete("p", &bad_rv)).await, 409);
    let good = DeleteParams {
        preconditions: Some(Preconditions {
            uid: c.metadata.uid.clone(),
            resource_version: c.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    cms.delete("p", &good).await.unwrap();
}

fn owner_ref(owner: &ConfigMap) -> OwnerReference {
    owner.controller_owner_ref(&()).unwrap()
}

#[tokio::test]
async fn owner_reference_gc_and_orphan() {
    let server = FakeApiServer::new();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("owner", &[]))
        .await
        .unwrap();
    for (name, fin) in [("s1", false), ("s2", true)] {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.owner_references = Some(vec![owner_ref(&owner)]);
        if fin {
            s.metadata.finalizers = Some(vec!["keep".into()]);
        }
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    // a grandchild owned by s1
    let s1 = secrets.get("s1").await.unwrap();
    let mut g = cm("grandchild", &[]);
    g.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Secret".into(),
        name: "s1".into(),
        uid: s1.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &g).await.unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(secrets.get_opt("s1").await.unwrap().is_none());
    assert!(cms.get_opt("grandchild").await.unwrap().is_none());
    let s2 = secrets.get("s2").await.unwrap();
    assert!(
        s2.metadata.deletion_timestamp.is_some(),
        "dependent with finalizers is only marked"
    );
    server
        .clear_finalizers("secrets", Some("default"), "s2")
        .unwrap();
    assert!(secrets.get_opt("s2").await.unwrap().is_none());

    // orphan keeps dependents and strips the owner reference
    let owner = cms
        .create(&PostParams::default(), &cm("owner2", &[]))
        .await
        .unwrap();
    let mut s = Secret::default();
    s.metadata.name = Some("o1".into());
    s.metadata.owner_references = Some(vec![owner_ref(&owner)]);
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..Default::default()
    };
    cms.delete("owner2", &dp).await.unwrap();
    let o1 = secrets.get("o1").await.unwrap();
    assert!(o1.metadata.owner_references.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn namespace_cascade() {
    let server = FakeApiServer::new();
    let client = server.client();
    server
        .put_json("namespaces", json!({"metadata": {"name": "doomed"}}))
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(&PostParams::default(), &cm("plain", &[]))
        .await
        .unwrap();
    let mut f = cm("held", &[]);
    f.metadata.finalizers = Some(vec!["x/y".into()]);
    cms.create(&PostParams::default(), &f).await.unwrap();

    let ns: Api<Namespace> = Api::all(client.clone());
    let res = ns.delete("doomed", &DeleteParams::default()).await.unwrap();
    let marked = res.left().expect("namespace still terminating");
    assert_eq!(marked.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(cms.get_opt("plain").await.unwrap().is_none());
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // no new content in a terminating namespace
    assert_eq!(
        error_code(cms.create(&PostParams::default(), &cm("new", &[]))).await,
        403
    );

    server
        .clear_finalizers("configmaps", Some("doomed"), "held")
        .unwrap();
    assert!(ns.get_opt("doomed").await.unwrap().is_none());
    assert!(server.list_json_in("configmaps", Some("doomed")).is_empty());
}

#[tokio::test]
async fn selectors() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    for (name, tier) in [("a", Some("web")), ("b", Some("db")), ("c", None)] {
        let mut c = cm(name, &[]);
        if let Some(t) = tier {
            c.metadata.labels = Some(BTreeMap::from([("tier".into(), t.into())]));
        }
        cms.create(&PostParams::default(), &c).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&q("tier=web")).await.unwrap()), ["a"]);
    assert_eq!(names(cms.list(&q("tier==db")).await.unwrap()), ["b"]);
    assert_eq!(names(cms.list(&q("tier!=web")).await.unwrap()), ["b", "c"]);
    assert_eq!(names(cms.list(&q("tier")).await.unwrap()), ["a", "b"]);
    assert_eq!(names(cms.list(&q("!tier")).await.unwrap()), ["c"]);
    assert_eq!(
        names(cms.list(&q("tier in (web,db)")).await.unwrap()),
        ["a", "b"]
    );
    assert_eq!(
        names(cms.list(&q("tier notin (web)")).await.unwrap()),
        ["b", "c"]
    );
    let f = ListParams::default().fields("metadata.name=b,metadata.namespace=default");
    assert_eq!(names(cms.list(&f).await.unwrap()), ["b"]);
    assert_eq!(error_code(cms.list(&q("tier in web"))).await, 400);

    // paging
    let page = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(page.clone()), ["a", "b"]);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest.clone()), ["c"]);
    assert!(rest.metadata.continue_.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn server_side_apply() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    // fieldManager is required
    assert_eq!(
        error_code(cms.patch("ssa", &PatchParams::default(), &Patch::Apply(&obj))).await,
        400
    );
    let pp = PatchParams::apply("palisade").force();
    let created = cms.patch("ssa", &pp, &Patch::Apply(&obj)).await.unwrap();
    assert_eq!(created.data.unwrap()["a"], "1");
    // another manager's apply merges into the object
    let other = PatchParams::apply("other");
    let cfg = |data: serde_json::Value, labels: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": labels}, "data": data});
    let merged = cms
        .patch(
            "ssa",
            &other,
            &Patch::Apply(cfg(json!({"b": "2"}), json!({"l": "v"}))),
        )
        .await
        .unwrap();
    let data = merged.data.unwrap();
    assert_eq!((data["a"].as_str(), data["b"].as_str()), ("1", "2"));
    // re-applying the same thing is a no-op
    let before = server.resource_version();
    cms.patch("ssa", &pp, &Patch::Apply(&obj)).await.unwrap();
    assert_eq!(server.resource_version(), before);

    let log = server.log();
    let last = log.last().unwrap();
    assert_eq!(last.verb, Verb::Patch);
    assert_eq!(last.patch_type, Some(PatchType::Apply));
    assert_eq!(last.field_manager.as_deref(), Some("palisade"));

    // a field a manager stops applying is removed; fields applied by another
    // manager, or written by plain updates, stay
    cms.patch(
        "ssa",
        &pp,
        &Patch::Apply(cfg(json!({"a": "1", "p": "1"}), json!({}))),
    )
    .await
    .unwrap();
    merge(&cms, "ssa", false, json!({"data": {"m": "1"}})).await;
    let pruned = cms
        .patch("ssa", &pp, &Patch::Apply(cfg(json!({"a": "1"}), json!({}))))
        .await
        .unwrap();
    assert_eq!(
        pruned.data.unwrap().keys().collect::<Vec<_>>(),
        ["a", "b", "m"]
    );
    assert_eq!(pruned.metadata.labels.unwrap()["l"], "v");
    let pruned = cms
        .patch("ssa", &other, &Patch::Apply(cfg(json!({}), json!({}))))
        .await
        .unwrap();
    assert_eq!(pruned.data.unwrap().keys().collect::<Vec<_>>(), ["a", "m"]);
    assert!(pruned.metadata.labels.is_none());

    // strategic merge patch is accepted (as a merge patch)
    let deps: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let d = deps.patch("d", &pp, &Patch::Apply(&d)).await.unwrap();
    assert_eq!(d.metadata.generation, Some(1));
    let d = deps
        .patch(
            "d",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert_eq!(d.metadata.generation, Some(2));
}

#[tokio::test]
async fn fault_injection_and_request_log() {
    let server = FakeApiServer::new();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.fail_next(2, 500);
    assert_eq!(error_code(cms.get_opt("x")).await, 500);
    assert_eq!(
        error_code(cms.create(&PostParams::default(), &cm("x", &[]))).await,
        500
    );
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();

    let id = server.fail_when(409, None, |r| {
        r.verb == Verb::Patch && r.resource == "configmaps"
    });
    let p = Patch::Merge(json!({"data": {"a": "b"}}));
    assert_eq!(
        error_code(cms.patch("x", &PatchParams::default(), &p)).await,
        409
    );
    assert_eq!(
        error_code(cms.patch("x", &PatchParams::default(), &p)).await,
        409
    );
    server.clear_fault(id);
    cms.patch("x", &PatchParams::default(), &p).await.unwrap();

    let mark = server.mark();
    cms.get("x").await.unwrap();
    cms.list(&ListParams::default()).await.unwrap();
    assert_eq!(server.writes_since(mark), 0);
    cms.delete("x", &DeleteParams::default()).await.unwrap();
    assert_eq!(server.writes_since(mark), 1);
    let log = server.log_since(mark);
    assert_eq!(
        log.iter().map(|r| (r.verb, r.code)).collect::<Vec<_>>(),
        [(Verb::Get, 200), (Verb::List, 200), (Verb::Delete, 200)]
    );
    assert_eq!(log[0].name.as_deref(), Some("x"));
    assert_eq!(log[0].namespace.as_deref(), Some("default"));
    assert_eq!(log[0].resource, "configmaps");
    server.reset_log();
    assert_eq!(server.writes(), 0);
    server.fail_next_writes(1, 503);
    cms.get_opt("y").await.unwrap();
    assert_eq!(
        error_code(cms.create(&PostParams::default(), &cm("y", &[]))).await,
        503
    );
}

#[tokio::test]
async fn discovery_and_crd_registration() {
    let server = FakeApiServer::new();
    let client = server.client();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "backupschedules.palisade.dev"},
        "spec": {
            "group": "palisade.dev",
            "names": {"plural": "backupschedules", "singular": "backupschedule", "kind": "BackupSchedule"},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}}}]
        }
    });
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let created = crds
        .create(
            &PostParams::default(),
            &serde_json::from_value(crd).unwrap(),
        )
        .await
        .unwrap();
    let conds = created.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );

    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "backupschedules")
        .expect("CRD resource discovered");
    assert_eq!(ar.kind, "BackupSchedule");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(discovery.has_group("rbac.authorization.k8s.io"));

    // aggregated discovery (apidiscovery.k8s.io/v2) sees the same resources
    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (ar2, caps2) = aggregated
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.plural == "backupschedules")
        .expect("CRD resource in aggregated discovery");
    assert_eq!(ar2, ar);
    assert_eq!(caps2.scope, kube::discovery::Scope::Namespaced);
    assert!(
        caps2
            .subresources
            .iter()
            .any(|(sr, _)| sr.plural == "backupschedules/status" || sr.plural == "status")
    );
    let core = aggregated.get("").expect("core group");
    assert!(
        core.recommended_resources()
            .iter()
            .any(|(ar, _)| ar.plural == "configmaps")
    );

    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let obj: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
        "metadata": {"name": "nightly"}, "spec": {"cron": "0 3 * * *"}, "status": {"ignored": true}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.data["spec"]["cron"], "0 3 * * *");
    assert!(created.data.get("status").is_none());
    assert!(
        server
            .get_json("backupschedules.palisade.dev", Some("default"), "nightly")
            .is_some()
    );
}

#[tokio::test]
async fn typed_store_helpers_and_wait() {
    let server = FakeApiServer::new();
    let t = server
        .put(&Tenant::new("direct", TenantSpec { owner: "o".into() }))
        .unwrap();
    assert!(t.metadata.uid.is_some());
    assert_eq!(server.list::<Tenant>().len(), 1);
    let s2 = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut t = s2.get::<Tenant>(None, "direct").unwrap();
        t.status = Some(TenantStatus {
            phase: "Ready".into(),
        });
        s2.put(&t).unwrap();
    });
    let v = server
        .wait_for_json("tenants", None, "direct", Duration::from_secs(5), |v| {
            v["status"]["phase"] == "Ready"
        })
        .await
        .unwrap();
    assert_eq!(v["spec"]["owner"], "o");
    assert!(
        server
            .wait_for_absent("tenants", None, "direct", Duration::from_millis(100))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    let server = FakeApiServer::new();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let owner = cms
        .create(&PostParams::default(), &cm("fg", &[]))
        .await
        .unwrap();
    let mut s = Secret::default();
    s.metadata.name = Some("blocker".into());
    let mut r = owner_ref(&owner);
    r.block_owner_deletion = Some(true);
    s.metadata.owner_references = Some(vec![r]);
    s.metadata.finalizers = Some(vec!["hold".into()]);
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let res = cms.delete("fg", &DeleteParams::foreground()).await.unwrap();
    let marked = res.left().expect("owner waits for its dependents");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.finalizers(), ["foregroundDeletion"]);
    assert!(
        secrets
            .get("blocker")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    server
        .clear_finalizers("secrets", Some("default"), "blocker")
        .unwrap();
    assert!(secrets.get_opt("blocker").await.unwrap().is_none());
    assert!(
        cms.get_opt("fg").await.unwrap().is_none(),
        "owner removed once unblocked"
    );

    // without dependents, foreground deletion is immediate
    cms.create(&PostParams::default(), &cm("lonely", &[]))
        .await
        .unwrap();
    assert!(
        cms.delete("lonely", &DeleteParams::foreground())
            .await
            .unwrap()
            .is_right()
    );
}

#[tokio::test]
async fn secret_string_data_and_uid_precondition_on_update() {
    let server = FakeApiServer::new();
    let secrets: Api<Secret> = Api::namespaced(server.client(), "default");
    let mut s = Secret::default();
    s.metadata.name = Some("s".into());
    s.string_data = Some(BTreeMap::from([("password".into(), "hunter2".into())]));
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(created.string_data.is_none());
    assert_eq!(created.data.as_ref().unwrap()["password"].0, b"hunter2");

    // an update carrying another object's uid is refused
    let mut other = created.clone();
    other.metadata.uid = Some("00000000-0000-4000-8000-000000000000".into());
    assert_eq!(
        error_code(secrets.replace("s", &PostParams::default(), &other)).await,
        409
    );
}

#[tokio::test]
async fn malformed_requests_get_status_errors() {
    let server = FakeApiServer::new();
    let client = server.client();
    let req = |method: &str, uri: &str, ct: &str, body: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ct)
            .body(body.as_bytes().to_vec())
            .unwrap()
    };
    let status = |r: http::Request<Vec<u8>>| {
        let client = client.clone();
        async move { error_code(client.request::<serde_json::Value>(r)).await }
    };
    let cms = "/api/v1/namespaces/default/configmaps";
    assert_eq!(
        status(req("POST", cms, "application/json", "{not json")).await,
        400
    );
    assert_eq!(
        status(req("POST", cms, "application/json", "[1]")).await,
        400
    );
    assert_eq!(
        status(req("POST", cms, "application/json", "{}")).await,
        422
    );
    assert_eq!(
        status(req("GET", "/api/v1/namespaces/default/widgets", "", "")).await,
        404
    );
    assert_eq!(
        status(req("GET", "/apis/nope.dev/v1/things", "", "")).await,
        404
    );
    assert_eq!(
        status(req("GET", "/api/v1/configmaps/x", "", "")).await,
        404
    );
    assert_eq!(
        status(req("GET", "/api/v1/namespaces/default/namespaces", "", "")).await,
        404
    );
    assert_eq!(status(req("PUT", cms, "application/json", "{}")).await, 405);
    assert_eq!(
        status(req(
            "GET",
            &format!("{cms}?labelSelector=a%20in%20b"),
            "",
            ""
        ))
        .await,
        400
    );
    assert_eq!(
        status(req(
            "GET",
            &format!("{cms}?watch=1&resourceVersion=abc"),
            "",
            ""
        ))
        .await,
        400
    );
    let ok = r#"{"metadata":{"name":"x"}}"#;
    client
        .request::<serde_json::Value>(req("POST", cms, "application/json", ok))
        .await
        .unwrap();
    let x = format!("{cms}/x");
    assert_eq!(status(req("PATCH", &x, "text/plain", "{}")).await, 415);
    assert_eq!(
        status(req(
            "PATCH",
            &x,
            "application/json-patch+json",
            r#"{"op":"x"}"#
        ))
        .await,
        400
    );
    assert_eq!(
        status(req(
            "PATCH",
            &x,
            "application/json-patch+json",
            r#"[{"op":"remove","path":"/nope"}]"#
        ))
        .await,
        422
    );
    assert_eq!(
        status(req(
            "PUT",
            &x,
            "application/json",
            r#"{"metadata":{"name":"y"}}"#
        ))
        .await,
        400
    );
    assert_eq!(
        status(req(
            "DELETE",
            &x,
            "application/json",
            r#"{"propagationPolicy":"Sideways"}"#
        ))
        .await,
        400
    );
    assert_eq!(
        status(req("GET", &format!("{x}/status"), "", "")).await,
        404
    );
    assert_eq!(
        status(req(
            "POST",
            &format!("{cms}?dryRun=All"),
            "application/json",
            ok
        ))
        .await,
        400
    );
    // every request was logged with its response code
    assert!(server.log().iter().all(|r| r.code != 0));
}

/// What the real kube-apiserver (1.34, checked by the e2e suite) does to
/// built-in objects, and what controllers comparing desired with stored state
/// must expect: empty lists dropped, the namespace name label and finalizer,
/// and a first server-side apply of an object made with POST is a write (it
/// takes field ownership) even when no value changes; repeating it is not.
#[tokio::test]
async fn stored_objects_take_the_real_servers_normal_form() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let server = FakeApiServer::new();
    let nps: Api<NetworkPolicy> = Api::namespaced(server.client(), "default");
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}});
    let stored = nps
        .create(
            &PostParams::default(),
            &serde_json::from_value(deny.clone()).unwrap(),
        )
        .await
        .unwrap();
    let spec = serde_json::to_value(stored.spec.unwrap()).unwrap();
    assert_eq!(
        spec,
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        "empty ingress/egress are not stored"
    );

    let nss: Api<Namespace> = Api::all(server.client());
    let ns = nss
        .create(
            &PostParams {
                field_manager: Some("palisade".into()),
                ..Default::default()
            },
            &serde_json::from_value(json!({"metadata": {"name": "team-a", "labels": {"x": "1"}}}))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        ns.labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("team-a")
    );
    assert_eq!(
        ns.spec.as_ref().and_then(|s| s.finalizers.clone()),
        Some(vec!["kubernetes".to_string()])
    );
    let same = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"x": "1"}}});
    let pp = PatchParams::apply("palisade").force();
    let applied = nss
        .patch("team-a", &pp, &Patch::Apply(&same))
        .await
        .unwrap();
    assert!(
        rv(&applied) > rv(&ns),
        "the first apply takes ownership: a write"
    );
    let again = nss
        .patch("team-a", &pp, &Patch::Apply(&same))
        .await
        .unwrap();
    assert_eq!(rv(&again), rv(&applied), "an identical apply is a no-op");
}
