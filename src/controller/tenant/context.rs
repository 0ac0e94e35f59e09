//! What a Tenant reconcile needs beyond the [`Shared`] chassis: the one writer
//! of children, the child caches, the garbage collection watches, and the
//! journal of this process's own Tenant writes (see [`crate::apply::journal`]).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use super::gc;
use crate::apply::{Applier, OwnWrites};
use crate::controller::driver::Shared;
use crate::controller::{ChildCache, Clock, Settings, parse_service_account_user};
use crate::crd::{RolePolicy, Tenant};

/// The Tenant controller's context.
pub struct Context {
    pub shared: Shared,
    pub applier: Applier,
    pub cache: ChildCache,
    /// Shared garbage collection watches (started per kind on first use).
    pub gc: gc::GcWatches,
    /// Every RolePolicy: inputs of every Tenant's roles, not children.
    pub policies: Store<RolePolicy>,
    /// Taken by the controller to fill `policies` (see [`Context::policy_stream`]).
    policy_writer: Mutex<Option<Writer<RolePolicy>>>,
    /// True once the RolePolicy watch has listed.
    policies_listed: tokio::sync::watch::Sender<bool>,
    /// The ServiceAccount this process runs as (resolved once).
    identity: tokio::sync::OnceCell<Option<(String, String)>>,
    /// This process's own writes to Tenants (finalizer, status): their watch
    /// echoes need no reconcile, and a reconcile uses the freshest copy.
    pub own_writes: OwnWrites<Tenant>,
    reconciles: std::sync::atomic::AtomicU64,
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
        let (policies, writer) = reflector::store::<RolePolicy>();
        Self {
            policies,
            policy_writer: Mutex::new(Some(writer)),
            policies_listed: tokio::sync::watch::Sender::new(false),
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
        let mut listed = self.policies_listed.subscribe();
        let _ = listed.wait_for(|l| *l).await;
    }

    /// Every cached RolePolicy.
    pub fn policies(&self) -> Vec<RolePolicy> {
        self.policies
            .state()
            .iter()
            .map(|p| p.as_ref().clone())
            .collect()
    }

    /// The RolePolicy watch that fills [`Context::policies`] (once: `None` after
    /// the first call).
    pub(super) fn policy_stream(
        &self,
    ) -> Option<impl futures::Stream<Item = Result<RolePolicy, watcher::Error>> + Send + 'static>
    {
        let writer = self.policy_writer.lock().ok()?.take()?;
        let listed = self.policies_listed.clone();
        let api: Api<RolePolicy> = Api::all(self.client.clone());
        Some(
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            )
            .inspect(move |event| {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    listed.send_replace(true);
                }
            })
            .touched_objects(),
        )
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
