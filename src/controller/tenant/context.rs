//! What a Tenant reconcile needs beyond the [`Shared`] chassis: the one writer
//! of children, the child caches, the garbage collection watches, and the
//! journal of this process's own Tenant writes (see [`crate::apply::journal`]).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::gc;
use crate::apply::{Applier, OwnWrites};
use crate::controller::driver::Shared;
use crate::controller::{ChildCache, Clock, Settings, parse_service_account_user};
use crate::crd::{RolePolicy, Tenant};
use crate::resources::labels;
use crate::resources::tenant::{OwnerNamespaces, Who, owner_namespaces};

/// The Tenant controller's context.
pub struct Context {
    pub shared: Shared,
    pub applier: Applier,
    pub cache: ChildCache,
    /// Shared garbage collection watches (started per kind on first use).
    pub gc: gc::GcWatches,
    /// Every RolePolicy: inputs of every Tenant's roles, not children.
    pub policies: Watched<RolePolicy>,
    /// Namespaces labelled `palisade.dev/tenant` that Palisade does not
    /// manage (yet): owners' new namespaces (`spec.maxNamespaces`), metadata
    /// only.
    pub owner_namespaces: Watched<PartialObjectMeta<Namespace>>,
    /// The ServiceAccount this process runs as (resolved once).
    identity: tokio::sync::OnceCell<Option<(String, String)>>,
    /// This process's own writes to Tenants (finalizer, status): their watch
    /// echoes need no reconcile, and a reconcile uses the freshest copy.
    pub own_writes: OwnWrites<Tenant>,
    reconciles: std::sync::atomic::AtomicU64,
}

/// A watched kind a decision reads that is not a child (RolePolicies, owners'
/// new namespaces): its store, filled by the stream the controller takes once,
/// and whether it has listed.
pub struct Watched<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    pub store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
    listed: tokio::sync::watch::Sender<bool>,
}

impl<K: kube::Resource + Clone + 'static> Default for Watched<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    fn default() -> Self {
        let (store, writer) = reflector::store::<K>();
        Self {
            store,
            writer: Mutex::new(Some(writer)),
            listed: tokio::sync::watch::Sender::new(false),
        }
    }
}

impl<K> Watched<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    /// The stream that fills the store from `watch` (once: `None` after the
    /// first call); its items are the objects touched.
    fn stream(
        &self,
        watch: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> Option<impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static> {
        let writer = self.writer.lock().ok()?.take()?;
        let listed = self.listed.clone();
        Some(
            reflector::reflector(writer, watch.default_backoff())
                .inspect(move |event| {
                    if matches!(event, Ok(watcher::Event::InitDone)) {
                        listed.send_replace(true);
                    }
                })
                .touched_objects(),
        )
    }

    async fn wait_listed(&self) {
        let mut listed = self.listed.subscribe();
        let _ = listed.wait_for(|l| *l).await;
    }
}

/// The chassis fields (`client`, `recorder`, `clock`, `metrics`, `settings`)
/// read as the context's own.
impl std::ops::Deref for Context {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Context {
    pub fn new(
        client: Client,
        cache: ChildCache,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self::with_shared(Shared::new(client, clock, settings), cache)
    }

    pub fn with_shared(shared: Shared, cache: ChildCache) -> Self {
        Self {
            policies: Watched::default(),
            owner_namespaces: Watched::default(),
            applier: Applier::new(shared.client.clone()),
            gc: gc::GcWatches::new(shared.client.clone(), Some(cache.clone())),
            shared,
            cache,
            identity: tokio::sync::OnceCell::new(),
            own_writes: OwnWrites::default(),
            reconciles: Default::default(),
        }
    }

    /// Waits until every cache a decision reads from has listed (a restarted
    /// controller must never act on what it cannot see yet).
    pub async fn wait_ready(&self) {
        self.cache.wait_ready().await;
        self.policies.wait_listed().await;
        self.owner_namespaces.wait_listed().await;
    }

    /// Every cached RolePolicy.
    pub fn policies(&self) -> Vec<RolePolicy> {
        crate::controller::driver::cloned(&self.policies.store)
    }

    /// The RolePolicy watch that fills [`Context::policies`] (once: `None` after
    /// the first call).
    pub(super) fn policy_stream(
        &self,
    ) -> Option<impl futures::Stream<Item = Result<RolePolicy, watcher::Error>> + Send + 'static>
    {
        let api: Api<RolePolicy> = Api::all(self.client.clone());
        self.policies
            .stream(watcher(api, watcher::Config::default()))
    }

    /// The metadata watch that fills [`Context::owner_namespaces`] (once).
    pub(super) fn owner_namespace_stream(
        &self,
    ) -> Option<
        impl futures::Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>>
        + Send
        + 'static,
    > {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(self.client.clone());
        let selector = format!("{},!{}", labels::TENANT, labels::MANAGED_BY);
        self.owner_namespaces
            .stream(watcher(api, watcher::Config::default().labels(&selector)))
    }

    /// What the tenant's owners created that Palisade may adopt or refuses,
    /// from the caches: the namespaces not managed yet and the ones adopted
    /// earlier (see [`crate::resources::tenant::owner_namespaces`]).
    pub fn owner_namespaces_of(&self, tenant: &Tenant) -> OwnerNamespaces {
        let name = tenant.name_any();
        let who = Who {
            name: &name,
            uid: tenant.metadata.uid.as_deref(),
        };
        let fresh: Vec<_> = self
            .owner_namespaces
            .store
            .state()
            .into_iter()
            .filter(|n| n.labels().get(labels::TENANT) == Some(&name))
            .map(|n| n.metadata.clone())
            .collect();
        let ns_ar = kube::core::ApiResource::erase::<Namespace>(&());
        let managed = self.cache.owned_of_kind(&name, &ns_ar);
        owner_namespaces(who, &tenant.spec, fresh.iter().chain(&managed))
    }

    /// The ServiceAccount this process runs as, `(namespace, name)`: the
    /// setting, else what the API server says (SelfSubjectReview, once).
    /// `None` for an identity that is not a ServiceAccount, or when the server
    /// cannot tell (then a warning says to set it).
    pub async fn service_account(&self) -> Option<(String, String)> {
        if let Some(sa) = &self.settings.service_account {
            return Some(sa.clone());
        }
        self.identity
            .get_or_try_init(|| async {
                use k8s_openapi::api::authentication::v1::SelfSubjectReview;
                let api: kube::Api<SelfSubjectReview> = kube::Api::all(self.client.clone());
                let review = match api
                    .create(&Default::default(), &SelfSubjectReview::default())
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        // Asked once: a server that cannot answer (Kubernetes
                        // < 1.28) would be asked on every reconcile otherwise.
                        tracing::warn!(error = %e, "cannot ask the API server who Palisade is (SelfSubjectReview); set PALISADE_SERVICE_ACCOUNT=namespace/name to grant Palisade its per-namespace role");
                        return Ok::<_, ()>(None);
                    }
                };
                let user = review
                    .status
                    .and_then(|s| s.user_info)
                    .and_then(|u| u.username)
                    .unwrap_or_default();
                let sa = parse_service_account_user(&user);
                if sa.is_none() {
                    tracing::info!(%user, "not running as a ServiceAccount: no per-namespace RoleBinding; this identity must hold the per-namespace powers itself");
                }
                Ok::<_, ()>(sa)
            })
            .await
            .ok()
            .cloned()
            .flatten()
    }

    /// One write by this process to `tenant` itself (finalizer, status):
    /// `write` sends it through the API it is given, for the tenant's name,
    /// while the write is in flight; the object written is noted, so that its
    /// watch echo needs no reconcile. `what` names a failure.
    pub(super) async fn write_own<W, F>(
        &self,
        tenant: &Tenant,
        what: &'static str,
        write: W,
    ) -> Result<(), super::error::Error>
    where
        W: FnOnce(Api<Tenant>, String) -> F,
        F: std::future::Future<Output = kube::Result<Tenant>>,
    {
        let name = tenant.name_any();
        let _in_flight = self
            .applier
            .journal()
            .in_flight(&super::tenant_ar(), None, &name);
        let written = write(Api::all(self.client.clone()), name)
            .await
            .map_err(super::error::kube_err(what))?;
        self.own_writes.note(tenant, written);
        Ok(())
    }

    /// Forgets a Tenant that is gone: its remembered writes and metric series.
    pub fn forget_tenant(&self, name: &str) {
        self.own_writes.forget(name);
        self.metrics.set_secret_rotations(name, &[]);
        self.gc.forget(name);
    }

    /// Reconciles started by this context (for tests and benchmarks).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn count_reconcile(&self) {
        self.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}
