//! Application tokens for the Tenant controller: for every RolePolicy binding
//! that asks for `token`, a JWT for each ServiceAccount subject in each tenant
//! namespace, signed with the tenant's current JwtSigningKey, kept in the Secret
//! `<serviceaccount>-palisade-token`, re-issued at 2/3 of its lifetime and right
//! after the signing key rotates. The token itself is never logged or shown.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::ApiResource;

use super::error::{Error, to_value};
use super::namespaces::{Unmanaged, adopt_released};
use super::{Context, ObjectKey};
use crate::crd::condition::Observed;
use crate::crd::tenant::{JwtAlgorithm, ManagedSecret, SecretType, Tenant};
use crate::resources::rolepolicy::{RbacPlan, TokenRequest};
use crate::resources::secrets as secret_model;
use crate::resources::tokens::{self as model, Issued, Wanted};

/// What token reconciliation concluded.
pub struct Outcome {
    /// `TokensIssued`, or `None` when no binding asks for tokens.
    pub observed: Option<Observed>,
    pub next_deadline: Option<Timestamp>,
    pub wanted: BTreeSet<ObjectKey>,
    pub issued: Vec<String>,
}

fn secret_ar() -> ApiResource {
    ApiResource::erase::<Secret>(&())
}

fn to_secret(obj: &kube::api::DynamicObject) -> Option<Secret> {
    serde_json::from_value(serde_json::to_value(obj).ok()?).ok()
}

/// Issues and refreshes the tokens `plan` asks for.
pub async fn reconcile(
    ctx: &Context,
    tenant: &Tenant,
    ready_ns: &BTreeSet<String>,
    plan: &RbacPlan,
) -> Result<Outcome, Error> {
    let mut out = Outcome {
        observed: None,
        next_deadline: None,
        wanted: BTreeSet::new(),
        issued: Vec::new(),
    };
    if plan.tokens.is_empty() {
        return Ok(out);
    }
    let tenant_name = tenant.name_any();
    let now = ctx.clock.now();
    let mut problems = Vec::new();
    let mut pending = false;
    for req in &plan.tokens {
        let Some(key_spec) = model::signing_key(&tenant.spec, req) else {
            let keys = tenant
                .spec
                .secrets
                .iter()
                .filter(|s| s.type_ == SecretType::JwtSigningKey)
                .count();
            problems.push(format!(
                "RolePolicy {} asks for tokens for {} but the tenant has {keys} JwtSigningKey secret(s); add one to spec.secrets or name it in token.signingKey",
                req.policy,
                req.service_account,
            ));
            continue;
        };
        let request = Request {
            tenant: &tenant_name,
            req,
            key_spec,
            alg: key_spec.algorithm.unwrap_or(JwtAlgorithm::ES256),
            scope: plan
                .scopes
                .get(&req.role)
                .map(|s| s.iter().cloned().collect::<Vec<_>>().join(" "))
                .unwrap_or_default(),
            now,
        };
        let namespaces = ready_ns
            .iter()
            .filter(|ns| req.sa_namespace.as_ref().is_none_or(|n| n == *ns));
        for ns in namespaces {
            match in_namespace(ctx, &request, ns, &mut out).await? {
                InNamespace::Done => {}
                InNamespace::KeyPending => pending = true,
                InNamespace::Problem(p) => problems.push(p),
            }
        }
    }
    if pending {
        let soon = now
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(1))
            .unwrap_or(now);
        out.next_deadline = Some(out.next_deadline.map_or(soon, |d| d.min(soon)));
    }
    out.observed = Some(match problems.first() {
        Some(p) => Observed::new("TokensIssued", false, "TokenBlocked", p.clone()),
        None => Observed::new(
            "TokensIssued",
            true,
            "TokensCurrent",
            format!("{} token secret(s) current", out.wanted.len()),
        ),
    });
    Ok(out)
}

/// One binding's token request, resolved against the tenant's signing keys.
struct Request<'a> {
    tenant: &'a str,
    req: &'a TokenRequest,
    key_spec: &'a ManagedSecret,
    alg: JwtAlgorithm,
    /// The role's scopes, space-separated (the `scope` claim).
    scope: String,
    now: Timestamp,
}

/// What one namespace came to.
enum InNamespace {
    /// The token is current (issued now or before), or there is nothing to sign with yet.
    Done,
    /// The signing key was created in this very reconcile: its watch event brings us back.
    KeyPending,
    /// Reported in `TokensIssued`, not retried as a failure.
    Problem(String),
}

/// Issues (or keeps) the token of `r` in `ns`.
async fn in_namespace(
    ctx: &Context,
    r: &Request<'_>,
    ns: &str,
    out: &mut Outcome,
) -> Result<InNamespace, Error> {
    let (req, key_spec) = (r.req, r.key_spec);
    let Some(key_state) = ctx
        .cache
        .get(&secret_ar(), Some(ns), &key_spec.name)
        .and_then(|o| to_secret(&o))
        .and_then(|s| secret_model::parse_state(key_spec, &s).ok())
    else {
        if secret_model::lands_in(key_spec, ns) {
            return Ok(InNamespace::KeyPending);
        }
        return Ok(InNamespace::Problem(format!(
            "signing key {} is not published in namespace {ns} (spec.secrets[].namespaces); tokens for {} cannot be signed there",
            key_spec.name, req.service_account
        )));
    };
    let Some(current) = key_state.current() else {
        return Ok(InNamespace::Done);
    };
    let name = model::secret_name(&req.service_account);
    out.wanted.insert(ObjectKey::new("Secret", ns, &name));
    let wanted = Wanted {
        sub: format!("system:serviceaccount:{ns}:{}", req.service_account),
        aud: req.audience.clone().unwrap_or_else(|| r.tenant.to_string()),
        tenant: r.tenant.to_string(),
        scope: r.scope.clone(),
        ttl: req.ttl,
    };
    let cached = match ctx.cache.get(&secret_ar(), Some(ns), &name) {
        Some(cached) => Some(cached),
        None => match adopt_released(ctx, r.tenant, &secret_ar(), ns, &name).await? {
            Unmanaged::Absent => None,
            Unmanaged::Adopted(obj) => Some(std::sync::Arc::new(*obj)),
            Unmanaged::Foreign => {
                return Ok(InNamespace::Problem(format!(
                    "Secret {ns}/{name} exists and is not managed by Palisade; it was not overwritten: delete it or rename the ServiceAccount"
                )));
            }
        },
    };
    let issued = cached
        .as_ref()
        .and_then(|o| Issued::from_annotations(o.annotations()));
    let issued = if model::needs_issue(issued.as_ref(), &wanted, &current.meta.id, r.now) {
        let (token, issued) =
            match model::issue(&wanted, r.alg, &current.meta.id, &current.material, r.now) {
                Ok(t) => t,
                Err(e) => {
                    return Ok(InNamespace::Problem(format!(
                        "token for {ns}/{}: {e}",
                        req.service_account
                    )));
                }
            };
        let object = to_value(
            "token secret",
            &model::token_secret(r.tenant, ns, &req.service_account, &token, &issued),
        )?;
        match &cached {
            Some(c) => {
                ctx.applier.replace(&secret_ar(), object, c).await?;
            }
            None => {
                ctx.applier.create(&secret_ar(), object).await?;
            }
        }
        out.issued.push(format!(
            "token for {ns}/{} issued (kid {}, expires {})",
            req.service_account, issued.kid, issued.expires_at
        ));
        issued
    } else {
        match issued {
            Some(i) => i,
            None => return Ok(InNamespace::Done),
        }
    };
    let refresh = issued.refresh_at();
    out.next_deadline = Some(out.next_deadline.map_or(refresh, |d| d.min(refresh)));
    Ok(InNamespace::Done)
}
