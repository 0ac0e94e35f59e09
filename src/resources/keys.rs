//! Secret material: random values and JWT signing keys, generated in-process
//! with the operating system's CSPRNG. Nothing here ever formats a value: the
//! types' `Debug` impls print `[REDACTED]`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::crd::tenant::{Alphabet, JwtAlgorithm};

/// Why key material could not be generated or read back.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a {0:?} key failed")]
    Generate(JwtAlgorithm),
    #[error("stored {0:?} private key is not a valid PKCS#8 PEM key")]
    Unreadable(JwtAlgorithm),
}

/// A secret string that never shows up in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn alphabet_chars(a: Alphabet) -> &'static [u8] {
    match a {
        Alphabet::Alphanumeric => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        Alphabet::Hex => b"0123456789abcdef",
        Alphabet::Base64Url => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        Alphabet::Ascii => b"!#$%&()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_abcdefghijklmnopqrstuvwxyz{|}~",
    }
}

/// A uniformly random string from the OS CSPRNG (rejection-free: `random_range`
/// is unbiased).
pub fn random_value(length: usize, alphabet: Alphabet) -> SecretString {
    use rand::Rng;
    use rand::TryRngCore;
    use rand::rngs::OsRng;
    let chars = alphabet_chars(alphabet);
    let mut rng = OsRng.unwrap_err();
    SecretString(
        (0..length)
            .map(|_| chars[rng.random_range(0..chars.len())] as char)
            .collect(),
    )
}

/// A generated signing key: its private key as PKCS#8 PEM, its public JWK and
/// its `kid` (the RFC 7638 thumbprint of the public key).
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub private_pem: SecretString,
    pub public_jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic
/// order (serde_json maps are sorted), base64url.
pub fn thumbprint(jwk: &Value) -> String {
    let required: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        _ => &["e", "kty", "n"],
    };
    let mut m = Map::new();
    for k in required {
        m.insert((*k).to_string(), jwk[*k].clone());
    }
    b64(&Sha256::digest(Value::Object(m).to_string().as_bytes()))
}

fn finish(private_pem: String, public_jwk: Value) -> SigningKey {
    SigningKey {
        kid: thumbprint(&public_jwk),
        private_pem: SecretString(private_pem),
        public_jwk,
    }
}

/// Generates a new signing key.
pub fn generate(alg: JwtAlgorithm) -> Result<SigningKey, KeyError> {
    use rand_core06::OsRng;
    let err = |_| KeyError::Generate(alg);
    match alg {
        JwtAlgorithm::ES256 => {
            use p256::pkcs8::{EncodePrivateKey, LineEnding};
            let key = p256::SecretKey::random(&mut OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::Generate(alg))?;
            Ok(finish(pem.to_string(), ec_jwk(&key.public_key())))
        }
        JwtAlgorithm::EdDSA => {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::Generate(alg))?;
            Ok(finish(pem.to_string(), ed_jwk(&key.verifying_key())))
        }
        JwtAlgorithm::RS256 => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(err)?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|_| KeyError::Generate(alg))?;
            Ok(finish(pem.to_string(), rsa_jwk(&key)))
        }
    }
}

fn ec_jwk(public: &p256::PublicKey) -> Value {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let point = public.to_encoded_point(false);
    json!({
        "kty": "EC",
        "crv": "P-256",
        "x": b64(point.x().map(|x| &x[..]).unwrap_or_default()),
        "y": b64(point.y().map(|y| &y[..]).unwrap_or_default()),
    })
}

fn ed_jwk(public: &ed25519_dalek::VerifyingKey) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes())})
}

fn rsa_jwk(key: &rsa::RsaPrivateKey) -> Value {
    use rsa::traits::PublicKeyParts;
    json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())})
}

/// Reads a stored private key back and returns its public JWK (with `kid`,
/// `alg` and `use: sig`), ready for a JWKS.
pub fn public_jwk(alg: JwtAlgorithm, private_pem: &SecretString) -> Result<Value, KeyError> {
    let unreadable = |_| KeyError::Unreadable(alg);
    let mut jwk = match alg {
        JwtAlgorithm::ES256 => {
            use p256::pkcs8::DecodePrivateKey;
            ec_jwk(
                &p256::SecretKey::from_pkcs8_pem(private_pem.expose())
                    .map_err(unreadable)?
                    .public_key(),
            )
        }
        JwtAlgorithm::EdDSA => {
            use ed25519_dalek::pkcs8::DecodePrivateKey;
            ed_jwk(
                &ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem.expose())
                    .map_err(unreadable)?
                    .verifying_key(),
            )
        }
        JwtAlgorithm::RS256 => {
            use rsa::pkcs8::DecodePrivateKey;
            rsa_jwk(&rsa::RsaPrivateKey::from_pkcs8_pem(private_pem.expose()).map_err(unreadable)?)
        }
    };
    let kid = thumbprint(&jwk);
    if let Some(m) = jwk.as_object_mut() {
        m.insert("kid".into(), kid.into());
        m.insert("alg".into(), alg_name(alg).into());
        m.insert("use".into(), "sig".into());
    }
    Ok(jwk)
}

/// The JOSE `alg` name.
pub fn alg_name(alg: JwtAlgorithm) -> &'static str {
    match alg {
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::EdDSA => "EdDSA",
        JwtAlgorithm::RS256 => "RS256",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_use_the_alphabet_and_differ() {
        let a = random_value(64, Alphabet::Hex);
        let b = random_value(64, Alphabet::Hex);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "[REDACTED]");
    }

    #[test]
    fn generated_keys_read_back_to_the_same_kid() {
        for alg in [
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
            JwtAlgorithm::RS256,
        ] {
            let key = generate(alg).expect("generate");
            let jwk = public_jwk(alg, &key.private_pem).expect("read back");
            assert_eq!(jwk["kid"], key.kid.as_str(), "{alg:?}");
            assert_eq!(jwk["use"], "sig");
            assert!(
                !format!("{key:?}").contains("PRIVATE"),
                "Debug must not print the key"
            );
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            thumbprint(&jwk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
