//! Application tokens (pure): short-lived JWTs for ServiceAccounts bound by a
//! RolePolicy with `token: {ttl, audience}`, signed with the tenant's current
//! JwtSigningKey, and their verification against a JWKS.
//!
//! Token Secret `<serviceaccount>-palisade-token`: `data.token` is the JWT;
//! annotations `palisade.dev/token-kid`, `palisade.dev/token-issued-at`,
//! `palisade.dev/token-expires-at` and `palisade.dev/token-digest` (a hash of
//! the claims that decide re-issuing: sub, aud, tenant, scope, ttl) say when
//! and why it must be re-issued without ever reading the token back.
//!
//! The one exception to "pure" is [`verify_command`], the `palisade token
//! verify` subcommand, which reads the JWKS file (and stdin) around [`verify`].

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::keys::SecretString;
use super::labels;
use crate::crd::tenant::JwtAlgorithm;

pub const TOKEN_KID: &str = "palisade.dev/token-kid";
pub const TOKEN_ISSUED_AT: &str = "palisade.dev/token-issued-at";
pub const TOKEN_EXPIRES_AT: &str = "palisade.dev/token-expires-at";
pub const TOKEN_DIGEST: &str = "palisade.dev/token-digest";
pub const TOKEN_FOR: &str = "palisade.dev/token-for";

/// Why a token could not be issued or verified. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("signing key cannot be used: {0}")]
    Key(String),
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("JWKS is not a JSON Web Key Set: {0}")]
    Jwks(String),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Key(_) => "SigningKeyUnusable",
            TokenError::Invalid(_) => "TokenInvalid",
            TokenError::Jwks(_) => "JwksInvalid",
        }
    }
}

/// The claims Palisade puts in an application token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub aud: String,
    pub tenant: String,
    /// Space-separated application scopes (RFC 8693 style).
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// What a token should say (everything but the times and the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub sub: String,
    pub aud: String,
    pub tenant: String,
    pub scope: String,
    pub ttl: Duration,
}

impl Wanted {
    /// A stable digest of what decides re-issuing.
    pub fn digest(&self) -> String {
        let v = serde_json::json!({"sub": self.sub, "aud": self.aud, "tenant": self.tenant, "scope": self.scope, "ttl": self.ttl.as_secs()});
        format!("{:016x}", super::stable_hash(&v))
    }
}

/// What the token Secret on the server says about the token it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub kid: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub digest: String,
}

impl Issued {
    /// Reads the annotations of a token Secret.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            kid: a.get(TOKEN_KID)?.clone(),
            issued_at: a.get(TOKEN_ISSUED_AT)?.parse().ok()?,
            expires_at: a.get(TOKEN_EXPIRES_AT)?.parse().ok()?,
            digest: a.get(TOKEN_DIGEST)?.clone(),
        })
    }

    /// Re-issue at 2/3 of the lifetime.
    pub fn refresh_at(&self) -> Timestamp {
        let life = self.expires_at.duration_since(self.issued_at);
        self.issued_at
            .checked_add(life * 2 / 3)
            .unwrap_or(self.issued_at)
    }
}

/// Whether a token must be (re-)issued now: none yet, 2/3 of its life gone,
/// signed with a key that is no longer current, or its claims changed.
pub fn needs_issue(
    issued: Option<&Issued>,
    wanted: &Wanted,
    current_kid: &str,
    now: Timestamp,
) -> bool {
    match issued {
        None => true,
        Some(i) => now >= i.refresh_at() || i.kid != current_kid || i.digest != wanted.digest(),
    }
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::RS256 => Algorithm::RS256,
    }
}

/// Signs a new token; returns it with the facts to record beside it.
pub fn issue(
    wanted: &Wanted,
    alg: JwtAlgorithm,
    kid: &str,
    private_pem: &SecretString,
    now: Timestamp,
) -> Result<(SecretString, Issued), TokenError> {
    let ttl = k8s_openapi::jiff::SignedDuration::try_from(wanted.ttl)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let expires_at = now
        .checked_add(ttl)
        .map_err(|e| TokenError::Key(e.to_string()))?;
    let claims = Claims {
        sub: wanted.sub.clone(),
        aud: wanted.aud.clone(),
        tenant: wanted.tenant.clone(),
        scope: wanted.scope.clone(),
        iat: now.as_second(),
        exp: expires_at.as_second(),
        jti: super::keys::random_value(24, crate::crd::tenant::Alphabet::Base64Url)
            .expose()
            .to_string(),
    };
    let pem = private_pem.expose().as_bytes();
    let key = match alg {
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(pem),
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem),
    }
    .map_err(|e| TokenError::Key(e.to_string()))?;
    let mut header = Header::new(algorithm(alg));
    header.kid = Some(kid.to_string());
    let token =
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| TokenError::Key(e.to_string()))?;
    Ok((
        SecretString(token),
        Issued {
            kid: kid.to_string(),
            issued_at: now,
            expires_at,
            digest: wanted.digest(),
        },
    ))
}

/// The token Secret for a ServiceAccount.
pub fn token_secret(
    tenant: &str,
    namespace: &str,
    service_account: &str,
    token: &SecretString,
    issued: &Issued,
) -> Secret {
    let mut l = labels::managed(tenant);
    l.insert(TOKEN_FOR.to_string(), service_account.to_string());
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(service_account)),
            namespace: Some(namespace.to_string()),
            labels: Some(l),
            annotations: Some(BTreeMap::from([
                (TOKEN_KID.to_string(), issued.kid.clone()),
                (TOKEN_ISSUED_AT.to_string(), issued.issued_at.to_string()),
                (TOKEN_EXPIRES_AT.to_string(), issued.expires_at.to_string()),
                (TOKEN_DIGEST.to_string(), issued.digest.clone()),
            ])),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(token.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// The JwtSigningKey secret of `tenant` that signs the tokens of `req`: the
/// one it names, else the tenant's only one (none when that is ambiguous).
pub fn signing_key<'a>(
    tenant: &'a crate::crd::tenant::TenantSpec,
    req: &super::rolepolicy::TokenRequest,
) -> Option<&'a crate::crd::tenant::ManagedSecret> {
    let mut keys = tenant
        .secrets
        .iter()
        .filter(|s| s.type_ == crate::crd::tenant::SecretType::JwtSigningKey);
    match &req.signing_key {
        Some(name) => keys.find(|k| &k.name == name),
        None => match (keys.next(), keys.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        },
    }
}

/// `<serviceaccount>-palisade-token`.
pub fn secret_name(service_account: &str) -> String {
    format!("{service_account}-palisade-token")
}

/// Verifies a token against a JWKS document: signature by the key its `kid`
/// names, expiry, and (when given) audience. Returns the claims.
pub fn verify(token: &str, jwks_json: &str, audience: Option<&str>) -> Result<Claims, TokenError> {
    let set: JwkSet =
        serde_json::from_str(jwks_json).map_err(|e| TokenError::Jwks(e.to_string()))?;
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    let kid = header
        .kid
        .ok_or_else(|| TokenError::Invalid("no kid in the header".into()))?;
    let jwk = set.find(&kid).ok_or_else(|| {
        TokenError::Invalid(format!(
            "kid {kid} is not in the JWKS (signed with a dropped or foreign key)"
        ))
    })?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Jwks(e.to_string()))?;
    let mut v = Validation::new(header.alg);
    match audience {
        Some(a) => v.set_audience(&[a]),
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&["exp", "sub", "aud"]);
    jsonwebtoken::decode::<Claims>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// `palisade token verify`: prints the claims of a valid token as JSON. The
/// only input/output of this module: the JWKS file, and the token from stdin
/// when `token` is `-`. Errors go to stderr (never the token).
pub fn verify_command(jwks: &std::path::Path, audience: Option<&str>, token: &str) -> ExitCode {
    let jwks = match std::fs::read_to_string(jwks) {
        Ok(s) => s,
        Err(e) => return fail(format!("error: reading {}: {e}", jwks.display())),
    };
    let token = if token == "-" {
        let mut buf = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf) {
            return fail(format!("error: reading the token from stdin: {e}"));
        }
        buf.trim().to_string()
    } else {
        token.to_string()
    };
    match verify(&token, &jwks, audience).map(|c| serde_json::to_string_pretty(&c)) {
        Ok(Ok(claims)) => {
            println!("{claims}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(format!("error: {e}")),
        Err(e) => fail(format!("invalid token: {e}")),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::keys;

    fn wanted() -> Wanted {
        Wanted {
            sub: "system:serviceaccount:acme-prod:api".into(),
            aud: "acme".into(),
            tenant: "acme".into(),
            scope: "validator:run vault:read".into(),
            ttl: Duration::from_secs(900),
        }
    }

    fn jwks_for(alg: JwtAlgorithm, pem: &SecretString) -> String {
        serde_json::json!({"keys": [keys::public_jwk(alg, pem).expect("jwk")]}).to_string()
    }

    #[test]
    fn issued_tokens_carry_the_claims_and_verify_until_they_expire() {
        let now = Timestamp::now();
        for alg in [
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
            JwtAlgorithm::RS256,
        ] {
            let key = keys::generate(alg).expect("key");
            let (token, issued) =
                issue(&wanted(), alg, &key.kid, &key.private_pem, now).expect("issue");
            let claims = verify(
                token.expose(),
                &jwks_for(alg, &key.private_pem),
                Some("acme"),
            )
            .expect("verifies");
            assert_eq!(claims.sub, "system:serviceaccount:acme-prod:api");
            assert_eq!(claims.scope, "validator:run vault:read");
            assert_eq!(claims.tenant, "acme");
            assert_eq!(claims.exp - claims.iat, 900);
            assert_eq!(
                issued.expires_at.as_second() - issued.issued_at.as_second(),
                900
            );
            assert!(
                verify(
                    token.expose(),
                    &jwks_for(alg, &key.private_pem),
                    Some("other")
                )
                .is_err(),
                "wrong audience"
            );
            let other = keys::generate(alg).expect("key");
            assert!(
                verify(token.expose(), &jwks_for(alg, &other.private_pem), None).is_err(),
                "unknown kid"
            );
        }
        // Expired tokens are rejected.
        let key = keys::generate(JwtAlgorithm::ES256).expect("key");
        let long_ago = Timestamp::from_second(now.as_second() - 7200).expect("time");
        let (token, _) = issue(
            &wanted(),
            JwtAlgorithm::ES256,
            &key.kid,
            &key.private_pem,
            long_ago,
        )
        .expect("issue");
        assert!(
            verify(
                token.expose(),
                &jwks_for(JwtAlgorithm::ES256, &key.private_pem),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn reissue_at_two_thirds_after_rotation_or_claim_change() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("time");
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("time");
        let issued = Issued {
            kid: "k1".into(),
            issued_at: t0,
            expires_at: at(900),
            digest: wanted().digest(),
        };
        assert!(needs_issue(None, &wanted(), "k1", t0));
        assert!(!needs_issue(Some(&issued), &wanted(), "k1", at(599)));
        assert!(
            needs_issue(Some(&issued), &wanted(), "k1", at(600)),
            "2/3 of 900s"
        );
        assert!(
            needs_issue(Some(&issued), &wanted(), "k2", at(1)),
            "after a key rotation"
        );
        let mut changed = wanted();
        changed.scope = "vault:read".into();
        assert!(
            needs_issue(Some(&issued), &changed, "k1", at(1)),
            "claims changed"
        );
        let secret = token_secret(
            "acme",
            "acme-prod",
            "api",
            &SecretString("t".into()),
            &issued,
        );
        let back =
            Issued::from_annotations(secret.metadata.annotations.as_ref().expect("annotations"))
                .expect("parse");
        assert_eq!(back, issued);
        assert_eq!(secret.metadata.name.as_deref(), Some("api-palisade-token"));
    }
}
