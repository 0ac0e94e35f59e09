//! No generated secret value, private key or its base64 ever reaches a log line
//! (captured at TRACE for every target), an Event or the Tenant status.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::Api;
use kube::api::PostParams;
use palisade::crd::Tenant;
use support::*;

#[tokio::test]
async fn rotations_never_leak_material() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let server = server();
    let clock = clock();
    let running = start(&server, clock.clone());
    let tenant = tenant_from_yaml(
        r#"
apiVersion: palisade.dev/v1alpha1
kind: Tenant
metadata: {name: leak}
spec:
  namespaces: [{name: leak-a}]
  secrets:
    - {name: rnd, type: Random, rotateEvery: 1h, keepPrevious: 2}
    - {name: es, type: JwtSigningKey, algorithm: ES256, rotateEvery: 1h, keepPrevious: 2}
    - {name: ed, type: JwtSigningKey, algorithm: EdDSA, rotateEvery: 1h, keepPrevious: 2}
    - {name: rs, type: JwtSigningKey, algorithm: RS256, rotateEvery: 1h, keepPrevious: 2}
"#,
    );
    Api::<Tenant>::all(server.client())
        .create(&PostParams::default(), &tenant)
        .await
        .expect("create");
    wait_ready(&server, "leak").await;
    for _ in 0..2 {
        clock.advance(Duration::from_secs(3600));
        running.resync();
        server
            .wait_until(WAIT, |s| {
                s.get_json("secrets", Some("leak-a"), "rnd")
                    .is_some_and(|x| x["data"].get("value.v3").is_some())
                    || s.get_json("secrets", Some("leak-a"), "rnd")
                        .is_some_and(|x| x["data"]["version"] == STANDARD.encode("v2"))
            })
            .await
            .expect("rotated");
    }
    server
        .wait_for_json("secrets", Some("leak-a"), "rnd", WAIT, |x| {
            x["data"].get("value.v3").is_some()
        })
        .await
        .expect("three versions");
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.stop().await;

    // Every secret value and private key the controller generated.
    let mut needles = Vec::new();
    for s in server.list_json_in("secrets", Some("leak-a")) {
        for (key, b64) in s["data"].as_object().expect("data") {
            if key == "version" || key == "kid" {
                continue; // public identifiers, meant to be shown
            }
            let raw =
                String::from_utf8(STANDARD.decode(b64.as_str().expect("b64")).expect("base64"))
                    .expect("utf-8");
            // For PEM keys, the base64 body lines are the secret.
            for line in raw
                .lines()
                .filter(|l| !l.starts_with("-----") && l.len() >= 16)
            {
                needles.push(line.to_string());
            }
            if !raw.contains("-----") {
                needles.push(raw.clone());
            }
            needles.push(b64.as_str().expect("b64").to_string());
        }
    }
    assert!(
        needles.len() >= 10,
        "collected the generated material: {}",
        needles.len()
    );

    let logs = capture.text();
    assert!(
        logs.contains("secrets rotated"),
        "the capture saw the controller's logs"
    );
    let events = serde_json::to_string(&server.list_json("events.events.k8s.io")).expect("events");
    assert!(
        events.contains("SecretRotated"),
        "rotation events were published"
    );
    let status = serde_json::to_string(
        &server
            .get_json("tenants.palisade.dev", None, "leak")
            .expect("tenant")["status"],
    )
    .expect("status");
    for needle in &needles {
        assert!(!logs.contains(needle.as_str()), "secret material in logs");
        assert!(
            !events.contains(needle.as_str()),
            "secret material in an Event"
        );
        assert!(
            !status.contains(needle.as_str()),
            "secret material in status"
        );
    }
}
