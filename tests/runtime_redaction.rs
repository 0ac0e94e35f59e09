//! Safe logging: known secret values pushed through every way Palisade logs
//! (events with fields, spans, `Debug` of config structs, error chains, URLs
//! with credentials, headers, PEM keys, JWTs, Kubernetes Secrets, the real
//! controller) at TRACE, in both formats, through the production subscriber.
//! Fails if any value, or its base64, reaches the output.

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use palisade::crd::Tenant;
use palisade::runtime::redact::Redacted;
use palisade::runtime::telemetry::{self, LogFormat};
use support::*;
use tracing::{debug, error, info, info_span, trace, warn};

const PASSWORD: &str = "hunter2-Pa55w0rd";
const TOKEN: &str = "tok_9f8e7d6c5b4a3";
const URL_PASSWORD: &str = "Url-Pa55-xyz";
const BEARER: &str = "abcdef0123456789ghij";
const PEM_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
const ACCESS_KEY: &str = "wJalrXUtnFEMI-K7MDENG";
const SECRET_DATA: &str = "s3cr3t-data-value";

fn jwt() -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","exp":1900000000}"#),
        URL_SAFE_NO_PAD.encode("not-really-a-signature-but-long")
    )
}

fn pem() -> String {
    format!("-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n{PEM_BODY}\n-----END PRIVATE KEY-----\n")
}

/// The values that must never appear, with their base64 forms.
fn needles() -> Vec<String> {
    let mut raw = vec![
        PASSWORD.to_string(),
        TOKEN.to_string(),
        URL_PASSWORD.to_string(),
        BEARER.to_string(),
        PEM_BODY.to_string(),
        ACCESS_KEY.to_string(),
        SECRET_DATA.to_string(),
    ];
    let token = jwt();
    raw.extend(token.split('.').skip(1).map(String::from));
    let mut all = raw.clone();
    all.extend(raw.iter().map(|r| STANDARD.encode(r)));
    all
}

/// A configuration struct done right: secrets wrapped in `Redacted`.
#[derive(Debug)]
#[allow(dead_code)]
struct StorageConfig {
    endpoint: String,
    access_key_id: String,
    secret_access_key: Redacted<String>,
    database_url: Redacted<String>,
}

/// A configuration struct done wrong: the writer must still catch it.
#[derive(Debug)]
#[allow(dead_code)]
struct LegacyConfig {
    user: String,
    password: String,
    api_token: Option<String>,
    headers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
#[error("connecting to {url}")]
struct ConnectError {
    url: String,
    #[source]
    source: std::io::Error,
}

/// Every logging shape, with the secrets in them.
fn log_everything() {
    let url = format!("postgres://app:{URL_PASSWORD}@db.acme.svc:5432/app?sslmode=require");
    let token = jwt();

    // Events with fields, each level, each formatting mode.
    trace!(password = PASSWORD, "trace with a password field");
    debug!(api_token = %TOKEN, "debug with a token field");
    info!(db_password = ?PASSWORD, "info with a Debug password");
    warn!(client_secret = PASSWORD, user = "bob", "warn");
    error!(authorization = %format!("Bearer {BEARER}"), "error with a header");
    info!(header = %format!("Authorization: Bearer {BEARER}"), "a header line");
    info!("message with a token in it: token={TOKEN}");

    // Spans carry fields into every event inside them.
    let span = info_span!("storage", secret_key = %ACCESS_KEY, bucket = "backups");
    span.in_scope(|| {
        let inner = info_span!("upload", password = PASSWORD);
        inner.in_scope(|| info!("uploading"));
    });

    // Debug of config structs.
    let good = StorageConfig {
        endpoint: "https://s3.local".into(),
        access_key_id: "AKIAEXAMPLE".into(),
        secret_access_key: Redacted::new(ACCESS_KEY.into()),
        database_url: Redacted::new(url.clone()),
    };
    info!(config = ?good, "storage config");
    info!("storage config {good:?} / {good:#?}");
    let bad = LegacyConfig {
        user: "bob".into(),
        password: PASSWORD.into(),
        api_token: Some(TOKEN.into()),
        headers: vec![("Authorization".into(), format!("Bearer {BEARER}"))],
    };
    info!(config = ?bad, "legacy config");
    warn!("legacy config {bad:#?}");

    // Error chains, as Display, alternate Display and Debug.
    let err = anyhow::Error::new(ConnectError {
        url: url.clone(),
        source: std::io::Error::other(format!("auth failed for token {token}")),
    })
    .context("taking a snapshot");
    error!(error = %err, "snapshot failed");
    error!(error = format!("{err:#}"), "snapshot failed (chain)");
    error!(error = ?err, "snapshot failed (debug)");

    // URLs with credentials, PEM keys and JWTs in free text.
    info!(url = %url, "connecting");
    info!("connecting to {url}");
    debug!(body = %pem(), "loaded a key");
    debug!("pem {:?}", pem());
    trace!(jwks = %token, "issued");
    info!("issued {token}");

    // Kubernetes Secrets: the typed object and its JSON.
    let mut secret = Secret::default();
    secret.metadata.name = Some("db".into());
    secret.data = Some(
        [
            (
                "password".to_string(),
                ByteString(SECRET_DATA.as_bytes().to_vec()),
            ),
            ("token".to_string(), ByteString(TOKEN.as_bytes().to_vec())),
        ]
        .into(),
    );
    debug!(secret = ?secret, "secret object");
    debug!(
        secret = %serde_json::to_string(&secret).expect("json"),
        "secret json"
    );
}

fn assert_clean(logs: &str) {
    assert!(
        logs.contains("uploading"),
        "the capture saw the logs:\n{logs}"
    );
    assert!(logs.contains("[REDACTED"), "nothing was redacted:\n{logs}");
    for needle in needles() {
        assert!(
            !logs.contains(&needle),
            "secret {needle:?} leaked into the logs:\n{logs}"
        );
    }
    // What is not secret stays readable.
    for kept in ["bob", "db.acme.svc:5432", "AKIAEXAMPLE", "backups"] {
        assert!(logs.contains(kept), "{kept} was redacted too:\n{logs}");
    }
}

#[test]
fn json_logs_never_contain_secrets() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = telemetry::subscriber(LogFormat::Json, "trace", move || writer.clone())
        .expect("subscriber");
    tracing::subscriber::with_default(subscriber, log_everything);
    let logs = capture.text();
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("redaction broke a JSON line ({e}): {line}"));
    }
    assert_clean(&logs);
}

#[test]
fn text_logs_never_contain_secrets() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = telemetry::subscriber(LogFormat::Text, "trace", move || writer.clone())
        .expect("subscriber");
    tracing::subscriber::with_default(subscriber, log_everything);
    assert_clean(&capture.text());
}

#[test]
fn controller_args_debug_is_safe() {
    use clap::Parser;
    let cli = palisade::config::Cli::try_parse_from([
        "palisade",
        "controller",
        "--pod-name",
        "palisade-0",
    ])
    .expect("parse");
    let text = format!("{cli:?}");
    assert!(text.contains("palisade-0"), "{text}");
}

/// The real controller, at TRACE, through the production subscriber: no
/// generated secret value reaches the output.
#[tokio::test(flavor = "current_thread")]
async fn the_controller_at_trace_leaks_nothing() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = telemetry::subscriber(LogFormat::Json, "trace", move || writer.clone())
        .expect("subscriber");
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = server();
    let running = start(&server, clock());
    let tenant = tenant_from_yaml(
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: quiet}
spec:
  namespaces: [{name: quiet-a}]
  secrets:
    - {name: db-password, type: Random, rotateEvery: 1h, keepPrevious: 1}
    - {name: signing, type: JwtSigningKey, algorithm: ES256, rotateEvery: 1h, keepPrevious: 1}
"#,
    );
    Api::<Tenant>::all(server.client())
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    wait_ready(&server, "quiet").await;
    running.stop().await;

    let logs = capture.text();
    assert!(logs.contains("\"level\":\"TRACE\""), "captured at TRACE");
    let mut checked = 0;
    for s in server.list_json_in("secrets", Some("quiet-a")) {
        for (key, b64) in s["data"].as_object().into_iter().flatten() {
            if key == "version" || key == "kid" || key.starts_with("jwks") {
                continue;
            }
            let b64 = b64.as_str().unwrap_or_default();
            let raw = String::from_utf8(STANDARD.decode(b64).expect("base64")).expect("utf-8");
            for needle in raw
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                .chain([b64])
            {
                checked += 1;
                assert!(!logs.contains(needle), "secret {key} leaked into the logs");
            }
        }
    }
    assert!(checked >= 2, "found the generated secrets ({checked})");
}
