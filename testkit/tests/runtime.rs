//! kube-runtime against the fake: watcher, metadata_watcher, 410 re-list,
//! Controller with `owns`, the finalizer helper, retries after injected faults.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher::{self, Event};
use kube::{CustomResource, Resource, ResourceExt};
use palisade_testkit::{FakeApiServer, Verb};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

fn cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".to_string(), v.to_string())])),
        ..Default::default()
    }
}

async fn next<S, K>(s: &mut S) -> Event<K>
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(T, s.next())
            .await
            .expect("watch event in time")
        {
            Some(Ok(ev)) => return ev,
            Some(Err(_)) => continue,
            None => panic!("watcher ended"),
        }
    }
}

/// A fake API server and its ConfigMaps in `default`.
fn configmaps() -> (FakeApiServer, Api<ConfigMap>) {
    let server = FakeApiServer::new();
    let cms = Api::namespaced(server.client(), "default");
    (server, cms)
}

/// Creates the ConfigMap `name` with `v: v`.
async fn create_cm(cms: &Api<ConfigMap>, name: &str, v: &str) {
    cms.create(&PostParams::default(), &cm(name, v))
        .await
        .unwrap();
}

/// The next events of `w` are `want` (as [`describe`] words them), in order.
async fn expect_events<S, K>(w: &mut S, want: &[&str])
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
    K: ResourceExt,
{
    for want in want {
        assert_eq!(describe(&next(w).await), *want);
    }
}

fn describe<K: ResourceExt>(ev: &Event<K>) -> String {
    match ev {
        Event::Init => "init".into(),
        Event::InitApply(o) => format!("initapply:{}", o.name_any()),
        Event::InitDone => "initdone".into(),
        Event::Apply(o) => format!("apply:{}", o.name_any()),
        Event::Delete(o) => format!("delete:{}", o.name_any()),
    }
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_410() {
    let (server, cms) = configmaps();
    create_cm(&cms, "pre", "0").await;
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    expect_events(&mut w, &["init", "initapply:pre", "initdone"]).await;

    create_cm(&cms, "a", "1").await;
    assert_eq!(describe(&next(&mut w).await), "apply:a");
    let v2 = Patch::Merge(json!({"data": {"v": "2"}}));
    cms.patch("a", &PatchParams::default(), &v2).await.unwrap();
    match next(&mut w).await {
        Event::Apply(o) => assert_eq!(o.data.unwrap()["v"], "2"),
        other => panic!("{}", describe(&other)),
    }
    // a no-op write produces no event: the next event is the delete
    cms.patch("a", &PatchParams::default(), &v2).await.unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(describe(&next(&mut w).await), "delete:a");

    // While the watcher is not polled: end its stream, change something and
    // compact the history. Resuming from its resourceVersion gets 410 Gone and
    // the watcher re-lists.
    server.close_watches();
    create_cm(&cms, "missed", "1").await;
    server.compact_history();
    let mark = server.mark();
    assert_eq!(describe(&next(&mut w).await), "init");
    let mut seen = vec![];
    loop {
        let ev = describe(&next(&mut w).await);
        if ev == "initdone" {
            break;
        }
        seen.push(ev);
    }
    assert_eq!(seen, ["initapply:missed", "initapply:pre"]);
    let verbs: Vec<Verb> = server.log_since(mark).iter().map(|r| r.verb).collect();
    assert_eq!(verbs[..2], [Verb::Watch, Verb::List], "{verbs:?}");
    create_cm(&cms, "after", "1").await;
    assert_eq!(describe(&next(&mut w).await), "apply:after");
}

#[tokio::test]
async fn expire_watches_forces_relist_of_up_to_date_watchers() {
    let (server, cms) = configmaps();
    create_cm(&cms, "x", "0").await;
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    expect_events(&mut w, &["init", "initapply:x", "initdone"]).await;
    server.expire_watches();
    expect_events(&mut w, &["init", "initapply:x", "initdone"]).await;
    // after the re-list the watch resumes normally (no 410 loop)
    create_cm(&cms, "y", "0").await;
    assert_eq!(describe(&next(&mut w).await), "apply:y");
}

#[tokio::test]
async fn label_filtered_watch_turns_label_changes_into_add_delete() {
    let (_server, cms) = configmaps();
    let mut w = watcher::watcher(cms.clone(), watcher::Config::default().labels("app=x")).boxed();
    expect_events(&mut w, &["init", "initdone"]).await;
    create_cm(&cms, "c", "1").await;
    let lbl = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"app": v}}}));
    cms.patch("c", &PatchParams::default(), &lbl(Some("x")))
        .await
        .unwrap();
    assert_eq!(describe(&next(&mut w).await), "apply:c");
    cms.patch("c", &PatchParams::default(), &lbl(None))
        .await
        .unwrap();
    assert_eq!(describe(&next(&mut w).await), "delete:c");
}

#[tokio::test]
async fn metadata_watcher_and_streaming_list() {
    let (server, cms) = configmaps();
    create_cm(&cms, "m1", "1").await;
    #[allow(deprecated)]
    let mut w = watcher::metadata_watcher(cms.clone(), watcher::Config::default()).boxed();
    expect_events(&mut w, &["init", "initapply:m1", "initdone"]).await;
    create_cm(&cms, "m2", "1").await;
    match next(&mut w).await {
        Event::Apply(o) => {
            assert_eq!(o.name_any(), "m2");
            assert_eq!(o.types.unwrap().kind, "PartialObjectMetadata");
        }
        other => panic!("{}", describe(&other)),
    }
    let meta = cms.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 2);
    let got = cms.get_metadata("m1").await.unwrap();
    assert_eq!(got.types.unwrap().kind, "PartialObjectMetadata");
    assert!(got.metadata.uid.is_some());

    // the non-deprecated form: a watcher over Api<PartialObjectMeta<K>>
    let pom: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(server.client(), "default");
    let mut w2 = watcher::watcher(pom, watcher::Config::default()).boxed();
    expect_events(
        &mut w2,
        &["init", "initapply:m1", "initapply:m2", "initdone"],
    )
    .await;

    // streaming lists (sendInitialEvents + initial-events-end bookmark)
    let mut s = watcher::watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    expect_events(
        &mut s,
        &["init", "initapply:m1", "initapply:m2", "initdone"],
    )
    .await;
    cms.delete("m1", &DeleteParams::default()).await.unwrap();
    assert_eq!(describe(&next(&mut s).await), "delete:m1");
}

struct Ctx {
    client: kube::Client,
    reconciles: AtomicUsize,
}

/// Mirrors every ConfigMap into an owned Secret; writes only when needed.
async fn mirror(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    ctx.reconciles.fetch_add(1, Ordering::SeqCst);
    let ns = cm.namespace().unwrap();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let want: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
    if let Some(s) = secrets.get_opt(&cm.name_any()).await?
        && s.string_data.is_none()
        && s.data
            .as_ref()
            .map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default()
            == want
    {
        return Ok(Action::await_change());
    }
    let mut secret = Secret::default();
    secret.metadata.name = Some(cm.name_any());
    secret.metadata.owner_references = Some(vec![cm.controller_owner_ref(&()).unwrap()]);
    secret.data = Some(
        want.into_iter()
            .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
            .collect(),
    );
    let mut v = serde_json::to_value(&secret).unwrap();
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    secrets
        .patch(
            &cm.name_any(),
            &PatchParams::apply("mirror").force(),
            &Patch::Apply(v),
        )
        .await?;
    Ok(Action::await_change())
}

#[tokio::test]
async fn controller_owns_children_retries_and_settles() {
    let server = FakeApiServer::new();
    let client = server.client();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        reconciles: AtomicUsize::new(0),
    });
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::all(client.clone());
    let controller = Controller::new(cms, watcher::Config::default())
        .owns(secrets, watcher::Config::default())
        .run(
            mirror,
            |_, _, _| Action::requeue(Duration::from_millis(50)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    // the first two writes fail; the error policy requeues until it works
    server.fail_next_writes(2, 500);
    let cms_ns: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    server
        .put_json("configmaps", serde_json::to_value(cm("app", "1")).unwrap())
        .unwrap();
    let secret = server
        .wait_for_json("secrets", Some("default"), "app", T, |_| true)
        .await
        .unwrap();
    assert_eq!(secret["data"]["v"], "MQ==");
    let failed = server.write_log().iter().filter(|r| r.code == 500).count();
    assert_eq!(failed, 2);

    // another actor tampers with the child: `owns` triggers a reconcile that repairs it
    let mut tampered = secret.clone();
    tampered["data"]["v"] = "eA==".into();
    server.put_json("secrets", tampered).unwrap();
    server
        .wait_for_json("secrets", Some("default"), "app", T, |s| {
            s["data"]["v"] == "MQ=="
        })
        .await
        .unwrap();

    // steady state: reconciles without changes make zero writes
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mark = server.mark();
    let before = ctx.reconciles.load(Ordering::SeqCst);
    cms_ns
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    server
        .wait_until(T, |_| ctx.reconciles.load(Ordering::SeqCst) > before)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.writes_since(mark),
        1,
        "only the test's own patch: {:?}",
        server.log_since(mark)
    );

    // deleting the parent garbage-collects the child
    cms_ns
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    server
        .wait_for_absent("secrets", Some("default"), "app", T)
        .await
        .unwrap();
    handle.abort();
}

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
    pub ready: bool,
}

const FINALIZER: &str = "palisade.dev/cleanup";

struct TCtx {
    client: kube::Client,
    cleanups: AtomicUsize,
}

async fn reconcile_tenant(
    t: Arc<Tenant>,
    ctx: Arc<TCtx>,
) -> Result<Action, kube::runtime::finalizer::Error<kube::Error>> {
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, t, |ev| async {
        match ev {
            Finalizer::Apply(t) => {
                if t.status.as_ref().is_none_or(|s| !s.ready) {
                    api.patch_status(
                        &t.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {"ready": true}})),
                    )
                    .await?;
                }
                Ok(Action::await_change())
            }
            Finalizer::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
}

#[tokio::test]
async fn finalizer_helper_round_trip() {
    let server = FakeApiServer::new();
    server.register_kind::<Tenant>();
    let client = server.client();
    let ctx = Arc::new(TCtx {
        client: client.clone(),
        cleanups: AtomicUsize::new(0),
    });
    let tenants: Api<Tenant> = Api::all(client.clone());
    let handle = tokio::spawn(
        Controller::new(tenants.clone(), watcher::Config::default())
            .run(
                reconcile_tenant,
                |_, _, _| Action::requeue(Duration::from_millis(50)),
                ctx.clone(),
            )
            .for_each(|_| async {}),
    );
    tenants
        .create(
            &PostParams::default(),
            &Tenant::new("acme", TenantSpec { owner: "o".into() }),
        )
        .await
        .unwrap();
    let t = server
        .wait_for_json("tenants.palisade.dev", None, "acme", T, |t| {
            t["status"]["ready"] == true
        })
        .await
        .unwrap();
    assert_eq!(t["metadata"]["finalizers"], json!([FINALIZER]));
    assert_eq!(t["metadata"]["generation"], 1);
    let finalizer_patches = server
        .write_log()
        .iter()
        .filter(|r| {
            r.verb == Verb::Patch && r.patch_type == Some(palisade_testkit::PatchType::Json)
        })
        .count();
    assert_eq!(finalizer_patches, 1);

    tenants
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    server
        .wait_for_absent("tenants.palisade.dev", None, "acme", T)
        .await
        .unwrap();
    assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
    handle.abort();
}

#[tokio::test]
async fn raw_watch_bookmarks_and_timeout() {
    use kube::api::{WatchEvent, WatchParams};
    let server = FakeApiServer::new();
    server.set_bookmark_interval(Duration::from_millis(100));
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let start = tokio::time::Instant::now();
    let rv = server.resource_version().to_string();
    let stream = cms
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    let client_cms = cms.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        client_cms
            .create(&PostParams::default(), &cm("w", "1"))
            .await
            .unwrap();
    });
    let events: Vec<_> = tokio::time::timeout(T, stream.collect::<Vec<_>>())
        .await
        .expect("stream ends");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let mut bookmarks = 0;
    let mut added = 0;
    let mut last_rv = 0u64;
    for ev in events {
        match ev.unwrap() {
            WatchEvent::Bookmark(b) => {
                bookmarks += 1;
                let r: u64 = b.metadata.resource_version.parse().unwrap();
                assert!(r >= last_rv, "bookmark resourceVersions never go back");
                last_rv = r;
            }
            WatchEvent::Added(o) => {
                added += 1;
                last_rv = o.resource_version().unwrap().parse().unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(added, 1);
    assert!(
        bookmarks >= 3,
        "initial + periodic bookmarks, got {bookmarks}"
    );

    // a too-old resourceVersion yields an ERROR event with code 410
    server.compact_history();
    let mut stream = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn concurrent_optimistic_updates_never_lose_writes() {
    let (_server, cms) = configmaps();
    create_cm(&cms, "counter", "0").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let cms = cms.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let mut c = cms.get("counter").await.unwrap();
                let n: u32 = c.data.as_ref().unwrap()["v"].parse().unwrap();
                c.data = Some(BTreeMap::from([("v".to_string(), (n + 1).to_string())]));
                match cms.replace("counter", &PostParams::default(), &c).await {
                    Ok(_) => done += 1,
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = cms.get("counter").await.unwrap();
    assert_eq!(c.data.unwrap()["v"], "80");
}

#[tokio::test]
async fn event_recorder_creates_and_aggregates_events() {
    use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
    let server = FakeApiServer::new();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let c = cms
        .create(&PostParams::default(), &cm("evt", "1"))
        .await
        .unwrap();
    let recorder = Recorder::new(client, Reporter::from("palisade"));
    let ev = KEvent {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("all good".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = c.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events = server.list_json("events.events.k8s.io");
    assert_eq!(
        events.len(),
        1,
        "the repeat is aggregated into a series: {events:#?}"
    );
    assert_eq!(events[0]["reason"], "Reconciled");
    assert_eq!(events[0]["regarding"]["name"], "evt");
    assert_eq!(events[0]["series"]["count"], 2);
}
