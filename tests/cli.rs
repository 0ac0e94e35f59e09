//! The command line: generated CRDs stay in sync with `crds/`, and `render`
//! works offline with clear errors.

use std::path::Path;
use std::process::Command;

fn palisade(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run palisade")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn checked_in_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = palisade::crdgen::generate().expect("generate");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    let mut expected: Vec<_> = generated.iter().map(|c| c.file_name.clone()).collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "crds/ holds exactly one file per CRD; run `make generate`"
    );
    for c in &generated {
        let on_disk = std::fs::read_to_string(dir.join(&c.file_name)).expect("read");
        assert!(
            on_disk == c.yaml,
            "crds/{} is stale: run `make generate`",
            c.file_name
        );
    }
}

#[test]
fn checked_in_api_doc_matches_the_crds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md");
    let on_disk = std::fs::read_to_string(&path).expect("docs/API.md exists");
    assert!(
        on_disk == palisade::apidoc::render(&palisade::crd::all()),
        "docs/API.md is stale: run `make generate`"
    );
}

/// The chart's and kustomize's copies of `crds/` (`make generate` copies them).
#[test]
fn checked_in_crd_copies_match_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let names = |dir: &Path| -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .expect("directory exists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        n.sort();
        n
    };
    let source = names(&root.join("crds"));
    for copy in ["charts/palisade/crds", "config/default/crds"] {
        let dir = root.join(copy);
        assert_eq!(names(&dir), source, "{copy}: run `make generate`");
        for name in &source {
            let read = |d: &Path| std::fs::read_to_string(d.join(name)).expect("read");
            assert!(
                read(&dir) == read(&root.join("crds")),
                "{copy}/{name} differs from crds/: run `make generate`"
            );
        }
    }
}

/// The operator's RBAC in the chart and the kustomize base is `palisade rbac`.
#[test]
fn checked_in_rbac_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, args) in [
        ("charts/palisade/files/rbac.json", &["rbac"][..]),
        ("config/default/rbac.yaml", &["rbac", "--yaml"][..]),
    ] {
        let out = palisade(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let on_disk = std::fs::read_to_string(root.join(file)).expect("read");
        assert!(
            on_disk == text(&out.stdout),
            "{file} is stale: run `make generate`"
        );
    }
}

#[test]
fn crds_command_prints_every_crd() {
    let out = palisade(&["crds"]);
    assert!(out.status.success());
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text(&out.stdout))
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .collect();
    let names: Vec<_> = docs
        .iter()
        .map(|d| d["metadata"]["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(
        names,
        [
            "tenants.palisade.dev",
            "rolepolicies.palisade.dev",
            "backupschedules.palisade.dev",
            "backupruns.palisade.dev"
        ]
    );
    for d in &docs {
        let version = &d["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["status"],
            serde_yaml::Value::Mapping(Default::default())
        );
        assert!(
            version["additionalPrinterColumns"]
                .as_sequence()
                .is_some_and(|c| !c.is_empty())
        );
    }
}

#[test]
fn render_samples_prints_every_kind_for_the_sample_tenant() {
    let out = palisade(&["render", "-f", "config/samples/"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&stdout)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).expect("yaml");
            v["kind"].as_str().expect("kind").to_string()
        })
        .collect();
    for kind in [
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "Role",
        "RoleBinding",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "render prints a {kind}: {kinds:?}"
        );
    }
    assert!(stdout.contains("name: acme-prod") && stdout.contains("palisade-default-deny"));
}

fn render_error(content: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, content).expect("write");
    let out = palisade(&["render", "-f", file.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "render must fail on: {content}");
    let err = text(&out.stderr);
    assert!(err.contains("bad.yaml"), "error names the file: {err}");
    err
}

#[test]
fn render_errors_name_the_file_and_field() {
    let err = render_error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
    assert!(err.contains("unsupported kind 'ConfigMap'"), "{err}");

    let err = render_error(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec:\n  podSecurity: strict\n",
    );
    assert!(err.contains("spec.podSecurity"), "{err}");

    let err = render_error("apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t\n");
    assert!(err.contains("malformed YAML"), "{err}");

    let err = render_error(
        "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec:\n  namespaces: [{name: t-a}]\n  network: {allowEgressCidrs: [{cidr: 300.1.1.1/8}]}\n",
    );
    assert!(
        err.contains("spec.network.allowEgressCidrs[0].cidr") && err.contains("InvalidCidr"),
        "{err}"
    );
}

/// Issue #30: every spec the API server would refuse a child of (or that
/// opens a tenant to everything) fails `render` as it fails the controller,
/// naming the field; before, `render` printed the objects and exited 0.
#[test]
fn render_fails_closed_on_specs_the_api_server_would_refuse() {
    let tenant = |spec: &str| {
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: t}}\nspec:\n  namespaces: [{{name: t-a}}]\n{spec}"
        )
    };
    for (spec, field, reason) in [
        (
            "  quota: {hard: {pods: '1.5'}}\n",
            "spec.quota.hard[pods]",
            "InvalidQuantity",
        ),
        (
            "  quota: {hard: {podz: '1'}}\n",
            "spec.quota.hard[podz]",
            "InvalidQuotaKey",
        ),
        (
            "  limits: {default: {cpu: 500m}, max: {cpu: 200m}}\n",
            "spec.limits.max[cpu]",
            "InvalidLimits",
        ),
        (
            "  network: {allowFromNamespaces: [{matchLabels: {team: 'a b'}}]}\n",
            "spec.network.allowFromNamespaces[0]",
            "InvalidSelector",
        ),
        (
            "  network: {allowFromNamespaces: [{}]}\n",
            "spec.network.allowFromNamespaces[0]",
            "UnrestrictedPeer",
        ),
        (
            "  network: {allowEgressCidrs: [{cidr: 0.0.0.0/0}]}\n",
            "spec.network.allowEgressCidrs[0].cidr",
            "UnrestrictedPeer",
        ),
        (
            "  network: {allowEgressCidrs: [{cidr: 10.0.0.1/8}]}\n",
            "spec.network.allowEgressCidrs[0].cidr",
            "InvalidCidr",
        ),
        (
            "  owners: [{kind: ServiceAccount, name: ci, namespace: Bad_NS}]\n",
            "spec.owners[0].namespace",
            "InvalidOwner",
        ),
    ] {
        let err = render_error(&tenant(spec));
        assert!(err.contains(field) && err.contains(reason), "{spec}: {err}");
    }
    // The documented opt-in admits the wide intents.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("wide.yaml");
    std::fs::write(
        &file,
        tenant("  network: {allowUnrestricted: true, allowFromNamespaces: [{}], allowEgressCidrs: [{cidr: 0.0.0.0/0}]}\n"),
    )
    .expect("write");
    let out = palisade(&["render", "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Issue #31 item 8: `-f -` reads standard input, for render (and diff,
/// which loads documents the same way).
#[test]
fn render_reads_standard_input() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["render", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run palisade");
    let tenant = std::fs::read_to_string("config/samples/tenant-acme.yaml").expect("sample");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(tenant.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("name: acme-prod") && stdout.contains("palisade-default-deny"));
}

#[test]
fn permissions_lists_catalog_and_builtin_roles() {
    let out = palisade(&["permissions"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    for name in [
        "workloads:read",
        "secrets:write",
        "backups:restore",
        "admin (",
        "backup-operator (",
    ] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
}

#[test]
fn token_verify_accepts_valid_tokens_and_rejects_others() {
    use palisade::crd::tenant::JwtAlgorithm;
    use palisade::resources::{keys, tokens};
    let key = keys::generate(JwtAlgorithm::EdDSA).expect("key");
    let wanted = tokens::Wanted {
        sub: "system:serviceaccount:acme-prod:api".into(),
        aud: "acme".into(),
        tenant: "acme".into(),
        scope: "vault:read".into(),
        ttl: std::time::Duration::from_secs(900),
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let (token, _) = tokens::issue(
        &wanted,
        JwtAlgorithm::EdDSA,
        &key.kid,
        &key.private_pem,
        now,
    )
    .expect("issue");
    let dir = tempfile::tempdir().expect("tmp");
    let jwks = dir.path().join("jwks.json");
    let jwk = keys::public_jwk(JwtAlgorithm::EdDSA, &key.private_pem).expect("jwk");
    std::fs::write(&jwks, serde_json::json!({"keys": [jwk]}).to_string()).expect("write");
    let jwks = jwks.to_str().expect("utf-8");

    // `palisade token verify` of the token for `audience`.
    let verify_for = |audience: &str| {
        palisade(&[
            "token",
            "verify",
            "--jwks",
            jwks,
            "--audience",
            audience,
            token.expose(),
        ])
    };
    let out = verify_for("acme");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).expect("claims JSON");
    assert_eq!(claims["scope"], "vault:read");

    let out = verify_for("other");
    assert!(!out.status.success(), "wrong audience is rejected");

    let mut tampered = token.expose().to_string();
    tampered.pop();
    tampered.push(if token.expose().ends_with('A') {
        'B'
    } else {
        'A'
    });
    let out = palisade(&["token", "verify", "--jwks", jwks, &tampered]);
    assert!(!out.status.success(), "tampered signature is rejected");
    assert!(
        !text(&out.stderr).contains(&tampered),
        "the token is never echoed"
    );

    // From stdin.
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["token", "verify", "--jwks", jwks, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(token.expose().as_bytes())
        .expect("write");
    assert!(child.wait_with_output().expect("wait").status.success());
}

/// `palisade diff` with `env` set, in a fresh temp dir holding `files`.
fn diff_in(files: &[(&str, &str)], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tmp");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.args(["diff", "-f", dir.path().to_str().expect("utf-8")])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", dir.path());
    for (k, v) in env {
        cmd.env(k, v.replace("{dir}", dir.path().to_str().expect("utf-8")));
    }
    let out = cmd.output().expect("run palisade");
    assert!(
        out.stdout.is_empty(),
        "no report on error: {}",
        text(&out.stdout)
    );
    (out.status.code(), text(&out.stderr))
}

#[test]
fn diff_errors_exit_2_and_say_why() {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\nusers: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";
    type Files<'a> = &'a [(&'a str, &'a str)];
    // (files, environment, what the error says)
    let cases: [(Files, Files, &[&str]); 5] = [
        // A broken file is reported before any cluster is needed.
        (
            &[(
                "bad.yaml",
                "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t\n",
            )],
            &[],
            &["bad.yaml", "malformed YAML"],
        ),
        (
            &[(
                "t.yaml",
                "apiVersion: palisade.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec:\n  podSecurity: strict\n",
            )],
            &[],
            &["t.yaml", "spec.podSecurity"],
        ),
        // Any kind is accepted as input, but a list is not an object.
        (
            &[("l.yaml", "- a\n- b\n")],
            &[],
            &["l.yaml", "not a Kubernetes object"],
        ),
        // No kubeconfig at all.
        (
            &[("cm.yaml", cm)],
            &[("KUBECONFIG", "{dir}/missing-kubeconfig")],
            &["no cluster to compare with"],
        ),
        // A kubeconfig whose server does not answer.
        (
            &[("cm.yaml", cm), ("kubeconfig", kubeconfig)],
            &[("KUBECONFIG", "{dir}/kubeconfig")],
            &["cannot reach the API server at https://127.0.0.1:1"],
        ),
    ];
    for (files, env, says) in cases {
        let (code, err) = diff_in(files, env);
        assert_eq!(code, Some(2), "{err}");
        assert!(says.iter().all(|s| err.contains(s)), "{err}");
    }
}
