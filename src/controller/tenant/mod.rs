//! The Tenant controller: namespaces, isolation, quotas and owner RBAC per
//! Tenant; drift healed through watches on every child kind; cleanup through a
//! finalizer according to `deletionPolicy`.
//!
//! One reconcile is the pipeline in [`reconcile`], one file per step:
//! observe the caches → validate once ([`builder::validate`], parsed values in
//! [`Valid`]) → [`desired`] (pure builders) → [`namespaces`] → [`children`]
//! (apply only what differs) → [`secrets`] → [`tokens`] → garbage
//! collection ([`gc`], sparing all of the above) → prune ([`children::prune`]) →
//! [`status`] (pure, from what the steps did; written only when it changed).
//! A step that fails still reaches status: `Ready=False` with the step's
//! reason (and a Warning Event for the transition), then the error goes to the
//! driver's backoff.

mod children;
mod context;
mod desired;
pub mod error;
pub mod gc;
mod lifecycle;
mod namespaces;
pub mod secrets;
pub mod status;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::warn;

#[cfg(test)]
pub(crate) use children::owned_disposals;
pub use context::Context;
use status::Facts;

use super::cache::{ChildCache, ChildStream};
use super::driver::{self, Reconcile};
use super::events::event;
use crate::crd::RolePolicy;
use crate::crd::tenant::Tenant;
use crate::resources::labels;
use crate::resources::tenant::{self as builder, Valid, Who};
use error::{Error, Failed};

fn tenant_ar() -> ApiResource {
    ApiResource::erase::<Tenant>(&())
}

pub use crate::resources::ObjectKey;

async fn publish(ctx: &Context, tenant: &Tenant, ev: kube::runtime::events::Event) {
    super::events::publish(&ctx.recorder, &tenant.object_ref(&()), ev).await;
}

impl Reconcile for Context {
    type Object = Tenant;
    type Error = Error;
    const NAME: &'static str = "tenant";

    fn writes(&self) -> u64 {
        self.applier.writes()
    }

    fn forget(&self, _namespace: Option<&str>, name: &str) {
        self.forget_tenant(name);
    }

    async fn reconcile(self: Arc<Self>, tenant: Arc<Tenant>) -> Result<Action, Error> {
        self.count_reconcile();
        let tenant = self.own_writes.freshest(tenant);
        reconcile(&self, &tenant).await
    }
}

/// One reconcile of one Tenant: the pipeline.
pub async fn reconcile(ctx: &Context, tenant: &Tenant) -> Result<Action, Error> {
    // Decisions are made from the caches: never from half-listed ones (a
    // restarted controller would otherwise re-create what it cannot see yet).
    ctx.wait_ready().await;
    if tenant.metadata.deletion_timestamp.is_some() {
        lifecycle::cleanup(ctx, tenant).await?;
        return Ok(Action::await_change());
    }
    lifecycle::ensure_finalizer(ctx, tenant).await?;
    let valid = match builder::validate(&tenant.name_any(), &tenant.spec) {
        Ok(valid) => valid,
        Err(invalid) => {
            warn!(tenant = %tenant.name_any(), reason = invalid.reason, field = %invalid.field, "invalid tenant spec");
            let (status, observed) = status::invalid(tenant, &invalid);
            status::write(ctx, tenant, status, observed).await?;
            return Ok(Action::await_change());
        }
    };
    // Owners' own namespaces (spec.maxNamespaces) are the tenant's like the
    // listed ones from here on: built, applied, never pruned, in status.
    let owner = ctx.owner_namespaces_of(tenant);
    let tenant = &builder::with_owner_namespaces(tenant, &owner.adopted);
    let mut facts = Facts {
        names: builder::namespace_names(&tenant.spec),
        refused_namespaces: owner.refused,
        has_quota: tenant.spec.quota.is_some() || tenant.spec.cordoned,
        cordoned: tenant.spec.cordoned,
        ..Default::default()
    };
    let next = steps(ctx, tenant, &valid, &mut facts).await;
    let next = match next {
        Ok(Next::Again(after)) => return Ok(Action::requeue(after)),
        Ok(next) => Ok(next),
        Err((step, e)) => {
            facts.failed = Some(Failed::new(step, &e));
            Err(e)
        }
    };
    let previous = tenant.status.clone().unwrap_or_default();
    let (status, observed) = status::compute(&previous, &facts);
    let written = status::write(ctx, tenant, status, observed).await;
    let next = match (next, written) {
        (Err(e), Err(write)) => {
            warn!(tenant = %tenant.name_any(), error = %write, "could not report the failure in status");
            return Err(e);
        }
        (Err(e), Ok(())) | (Ok(_), Err(e)) => return Err(e),
        (Ok(next), Ok(())) => next,
    };
    // Children that failed to apply are in status; the reconcile is retried.
    if let Some(e) = facts.children.and_then(|c| c.error) {
        return Err(e);
    }
    Ok(match next {
        Next::Wake(action) => action,
        Next::Again(after) => Action::requeue(after),
    })
}

/// What a pass that got through its steps asks for next.
enum Next {
    /// Decide again after this long, without a status write (the world moved
    /// under this pass: a namespace vanished, a RoleBinding was just granted).
    Again(Duration),
    /// Status written; then this.
    Wake(Action),
}

/// The steps after validation; each one's outcome lands in `facts` (what status
/// is computed from), the first failure names its step.
async fn steps(
    ctx: &Context,
    tenant: &Tenant,
    valid: &Valid,
    facts: &mut Facts,
) -> Result<Next, (&'static str, Error)> {
    let name = tenant.name_any();
    let who = Who {
        name: &name,
        uid: tenant.metadata.uid.as_deref(),
    };
    let states = namespaces::states(ctx, who, &facts.names);
    let usable = namespaces::usable(&states);
    let desired = desired::build(ctx, tenant, valid, &usable);
    facts.quota = desired.quota.clone();

    let Some(mut ns) = namespaces::apply(ctx, who, &desired.objects.namespaces, states)
        .await
        .map_err(at("apply namespaces"))?
    else {
        return Ok(Next::Again(Duration::from_secs(1)));
    };
    ns.refuse(&facts.refused_namespaces);
    let (ready, terminating) = (ns.ready.clone(), !ns.terminating.is_empty());
    let conflicted = !ns.conflicts.is_empty();
    let created = ns.created.clone();
    facts.namespaces = Some(ns);
    // Palisade's powers inside a namespace come from the RoleBinding it
    // grants itself there (crate::operator_rbac): before anything else goes
    // in. A binding created now takes a moment to reach the API server's
    // authorizer and the namespace's Secret watch: the contents follow on the
    // next pass.
    if namespaces::grant_self(ctx, &ready)
        .await
        .map_err(at("grant Palisade its role in the namespaces"))?
    {
        return Ok(Next::Again(Duration::from_secs(1)));
    }
    // Secrets and ConfigMaps are watched per namespace: decide about them only
    // where that watch has listed (never re-create what is not seen yet), in
    // a namespace created by this very pass, or in one known to hold nothing
    // of ours and left unwatched (see namespaces::listed).
    let listed = namespaces::listed(ctx, &ready, &created, &desired.secrets_watched);
    facts.waiting_for_listing = listed.len() < ready.len();

    let values = desired
        .objects
        .to_values()
        .map_err(|source| Error::Serialize {
            what: "tenant objects",
            source,
        })
        .map_err(at("build desired objects"))?;
    let values = values
        .into_iter()
        .filter(|v| v["kind"] != "Namespace")
        .collect();
    let applied = children::apply(ctx, values, &ready).await;
    announce_reverts(ctx, tenant, &applied.reverted).await;
    let quota_stale = applied.quota_stale;
    let mut wanted = applied.wanted.clone();
    facts.children = Some(applied);

    let secrets = secrets::reconcile(ctx, tenant, valid, &listed)
        .await
        .map_err(at("rotate secrets"))?;
    announce_rotations(ctx, tenant, &secrets).await;
    wanted.extend(secrets.wanted.iter().cloned());
    let more_secrets = secrets.remaining > 0;
    facts.secrets = Some(secrets);

    let tokens = tokens::reconcile(ctx, tenant, &listed, &desired.plan)
        .await
        .map_err(at("issue tokens"))?;
    wanted.extend(tokens.wanted.iter().cloned());
    facts.tokens = Some(tokens);

    // After every step that writes: what Palisade wants is never collected,
    // whatever labels a tenant puts on its own objects.
    let gc = gc::reconcile(ctx, tenant, &listed, &wanted)
        .await
        .map_err(at("collect garbage"))?;
    facts.gc = Some(gc);

    children::prune(ctx, tenant, &facts.names, &wanted)
        .await
        .map_err(at("prune objects the tenant no longer wants"))?;

    Ok(Next::Wake(if more_secrets {
        // The status written after this pass says how far it got.
        Action::requeue(Duration::from_millis(100))
    } else if facts.waiting_for_listing || quota_stale {
        Action::requeue(Duration::from_secs(1))
    } else if terminating {
        // Namespace deletion completes without an event for our label selector
        // only when the object is gone; poll gently meanwhile.
        Action::requeue(Duration::from_secs(5))
    } else {
        // A namespace in conflict is not Palisade's: nothing it watches
        // changes when its owner lets it go (another Tenant deleted, or an
        // administrator labels it over to this one): look again regularly.
        let now = ctx.clock.now();
        let deadline = facts.next_deadline();
        let recheck = conflicted.then(|| now + CONFLICT_RECHECK);
        driver::requeue_at(deadline.into_iter().chain(recheck).min(), now)
    }))
}

/// How often a Tenant with a namespace in conflict looks at it again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

fn at(step: &'static str) -> impl Fn(Error) -> (&'static str, Error) {
    move |e| (step, e)
}

/// A Warning Event per object that was widened by someone else and put back,
/// naming who changed it (from its managedFields).
async fn announce_reverts(ctx: &Context, tenant: &Tenant, reverted: &[(ObjectKey, Vec<String>)]) {
    for (key, changed_by) in reverted {
        let who = match changed_by.as_slice() {
            [] => "a client that recorded no field manager".to_string(),
            managers => managers.join(", "),
        };
        let note = format!(
            "{} {}/{} held fields Palisade does not set (changed by {who}); restored to the desired spec",
            key.kind, key.namespace, key.name
        );
        let ev = event(EventType::Warning, "DriftReverted", "Heal", note);
        publish(ctx, tenant, ev).await;
    }
}

/// Events for rotations (and deferred forced ones), and the next-rotation gauges.
async fn announce_rotations(ctx: &Context, tenant: &Tenant, secrets: &secrets::Outcome) {
    let due: Vec<(String, String, f64)> = secrets
        .reports
        .iter()
        .filter_map(|r| {
            let next = r.next_rotation?;
            Some((r.namespace.clone(), r.name.clone(), next.as_second() as f64))
        })
        .collect();
    ctx.metrics.set_secret_rotations(&tenant.name_any(), &due);
    announce(
        ctx,
        tenant,
        EventType::Normal,
        "SecretRotated",
        "rotated",
        &secrets.rotations,
    )
    .await;
    announce(
        ctx,
        tenant,
        EventType::Warning,
        "RotationDeferred",
        "deferred",
        &secrets.deferred,
    )
    .await;
    announce(
        ctx,
        tenant,
        EventType::Warning,
        "SecretRestored",
        "restored",
        &secrets.restored,
    )
    .await;
}

/// Events a reconcile publishes about single Secrets, at most: the rest are
/// counted in the Tenant's Event (a first reconcile of 256 namespaces × 64
/// secrets would otherwise publish 16,384 Events, one API call each).
const SECRET_EVENTS_PER_RECONCILE: usize = 10;

/// Notes quoted in the Tenant's Event.
const QUOTED: usize = 5;

/// One Event on the Tenant for what a reconcile did to its Secrets, with the
/// count; and an Event on each Secret (the first
/// [`SECRET_EVENTS_PER_RECONCILE`]), about that Secret only.
async fn announce(
    ctx: &Context,
    tenant: &Tenant,
    type_: EventType,
    reason: &str,
    verb: &str,
    what: &[secrets::Announcement],
) {
    if what.is_empty() {
        return;
    }
    let quoted: Vec<&str> = what.iter().take(QUOTED).map(|a| a.note.as_str()).collect();
    let more = what.len() - quoted.len();
    let mut note = format!("{} secret(s) {verb}: {}", what.len(), quoted.join("; "));
    if more > 0 {
        note.push_str(&format!("; and {more} more"));
    }
    publish(ctx, tenant, event(type_, reason, "Rotate", note)).await;
    for a in what.iter().take(SECRET_EVENTS_PER_RECONCILE) {
        let ev = event(type_, reason, "Rotate", a.note.clone());
        super::events::publish(&ctx.recorder, &a.secret, ev).await;
    }
}

/// Builds the Tenant controller over `child_streams` (from [`ChildCache::new`]).
///
/// Watch events that are only the echo of this process's own writes (a
/// child it just applied, the Tenant status it just wrote) trigger nothing:
/// the reconcile that wrote them already saw that state.
pub fn controller(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
) -> Controller<Tenant> {
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let (reader, tenant_stream) = driver::watch(tenants, watcher::Config::default().any_semantic());
    let echo_ctx = ctx.clone();
    let tenant_stream = tenant_stream.filter(move |res| {
        let ctx = echo_ctx.clone();
        let echo = res
            .as_ref()
            .ok()
            .map(|t| (t.name_any(), t.resource_version()));
        async move {
            let Some((name, rv)) = echo else { return true };
            ctx.applier
                .journal()
                .settled(&tenant_ar(), None, &name)
                .await;
            !ctx.own_writes.is_echo(&name, rv.as_deref())
        }
    });
    let mut c = Controller::for_stream(tenant_stream, reader);
    let tenant_store = c.store();
    match ctx.policy_stream() {
        // A policy can select any tenant (and stop selecting one): every
        // tenant re-derives its roles; a converged tenant writes nothing.
        Some(policies) => {
            let store = tenant_store.clone();
            c = c.watches_stream(policies, move |_: RolePolicy| driver::all(&store));
        }
        None => warn!("the RolePolicy watch was taken by an earlier controller of this context"),
    }
    // An owner's new namespace (not managed yet) wakes the Tenant its label
    // names: adopted within seconds, or refused in status.
    match ctx.owner_namespace_stream() {
        Some(namespaces) => {
            c = c.watches_stream(namespaces, |ns| {
                ns.labels()
                    .get(labels::TENANT)
                    .map(|t| ObjectRef::<Tenant>::new(t))
            });
        }
        None => {
            warn!("the owner namespace watch was taken by an earlier controller of this context")
        }
    }
    for (ar, stream) in child_streams {
        let echo_ctx = ctx.clone();
        let kind = ar.clone();
        // Wait for our own write of the object to be answered (the event may
        // overtake it) so its echo is recognised below.
        let settle_ctx = ctx.clone();
        let settle_kind = ar.clone();
        let stream = stream.then(move |res| {
            let ctx = settle_ctx.clone();
            let kind = settle_kind.clone();
            async move {
                if let Ok(obj) = &res {
                    ctx.applier
                        .journal()
                        .settled(&kind, obj.namespace().as_deref(), &obj.name_any())
                        .await;
                }
                res
            }
        });
        let store = tenant_store.clone();
        c = c.watches_stream_with(
            stream,
            move |obj: DynamicObject| {
                if echo_ctx.applier.journal().is_own_write(&kind, &obj) {
                    return None;
                }
                let tenant = labels::tenant_of(obj.metadata.labels.as_ref())
                    .map(ObjectRef::<Tenant>::new)?;
                // Someone else's status write (the quota controller's) matters
                // only to a tenant budget, which spreads headroom by usage.
                if crate::controller::cache::is_status_only(&obj)
                    && !store.get(&tenant).is_some_and(|t| reads_child_status(&t))
                {
                    return None;
                }
                Some(tenant)
            },
            ar,
        );
    }
    c
}

/// Whether a tenant's desired state depends on its children's status: a
/// `scope: Tenant` quota spreads the budget by each namespace's usage.
fn reads_child_status(tenant: &Tenant) -> bool {
    tenant
        .spec
        .quota
        .as_ref()
        .is_some_and(|q| q.scope == crate::crd::tenant::QuotaScope::Tenant)
}

/// Runs the Tenant controller until `shutdown` resolves. Every item of
/// `resync` reconciles every Tenant (a converged tenant costs no write).
pub async fn run(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    resync: impl futures::Stream<Item = ()> + Send + 'static,
) {
    run_observed(ctx, child_streams, shutdown, resync, |_| {}).await;
}

/// Like [`run`]; `on_start` first gets the Tenant store (for readiness and the
/// Tenant gauges).
pub async fn run_observed(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    resync: impl futures::Stream<Item = ()> + Send + 'static,
    on_start: impl FnOnce(kube::runtime::reflector::Store<Tenant>),
) {
    let c = controller(ctx.clone(), child_streams);
    on_start(c.store());
    // Who Palisade is decides where its per-namespace watches may start
    // (see `ChildCache::grant_gate`); asked once, before any reconcile.
    let who = ctx.clone();
    tokio::spawn(async move {
        let bound = who.service_account().await.is_some();
        who.cache.grant_gate(bound);
    });
    let c = c.reconcile_all_on(resync).reconcile_on(ctx.gc.triggers());
    driver::run(c, ctx, shutdown).await;
}

/// The child caches of the Tenant controller plus the streams that fill them.
pub fn child_cache(client: &kube::Client) -> (ChildCache, Vec<(ApiResource, ChildStream)>) {
    ChildCache::new(client, crate::controller::cache::tenant_child_kinds())
}
