//! Deny-by-default redaction of sensitive data in logs.
//!
//! Two lines of defence:
//! * [`Redacted<T>`] wraps a sensitive configuration value so that `Debug` and
//!   `Display` print `[REDACTED]`; the value is reachable only through
//!   [`Redacted::expose`].
//! * [`RedactingMakeWriter`] sits between the `tracing_subscriber` formatter and
//!   the output: every formatted event is buffered and scrubbed by [`redact`]
//!   before a single byte is written. It removes values of fields whose name
//!   looks sensitive (password, token, secret, key, credential, authorization,
//!   cookie…), `user:pass@` in URLs, PEM private-key blocks, JWTs and
//!   `Bearer`/`Basic` credentials — whether they come from structured fields,
//!   span fields, `Debug` output of structs and maps, or error messages.
//!
//! Fields that name a sensitive thing rather than hold it (`secret_name`,
//! `secret_namespace`, `key_id`, …) are kept; see [`is_exempt`].

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::LazyLock;

use regex::{Captures, Regex};
use tracing_subscriber::fmt::MakeWriter;

/// What replaces a sensitive value.
pub const REDACTED: &str = "[REDACTED]";

/// A sensitive value whose `Debug` and `Display` never show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redacted<T>(T);

impl<T> Redacted<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The value itself: the only way to read it; never log the result.
    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> std::fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T: std::str::FromStr> std::str::FromStr for Redacted<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

fn re(pattern: &str) -> Regex {
    // The patterns are constants covered by the tests below.
    #[allow(clippy::expect_used)]
    Regex::new(pattern).expect("valid redaction pattern")
}

static PEM: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)")
});

static JWT: LazyLock<Regex> =
    LazyLock::new(|| re(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"));

static AUTH_SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+|\b(basic\s+)[A-Za-z0-9+/]{12,}={0,2}")
});

static URL_USERINFO: LazyLock<Regex> =
    LazyLock::new(|| re(r#"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@:"'\\]*:[^\s/@"'\\]*@"#));

/// `key` `separator` `value`, where key contains a sensitive word. The value is
/// an escaped-quoted string (inside JSON), a quoted string, or a bare word,
/// optionally wrapped as `Some(...)`.
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    re(concat!(
        // A Rust module path (a log line's target, `palisade::…::secrets:`)
        // is matched with its path, so that it can be kept.
        r"(?i)(?P<path>(?:[a-z0-9_]+::)+)?",
        r"(?P<key>[a-z0-9_.-]*(?:password|passwd|passphrase|token|secret|key|credential|",
        r"authorization|auth|cookie|private|signature)[a-z0-9_.-]*)",
        r#"(?P<sep>\\?"?\s*[:=]\s*)"#,
        r#"(?P<val>(?:[A-Za-z]+\((?:\s|\\n)*)?(?:\\"(?:[^"\\]|\\[^"])*\\"|"(?:[^"\\]|\\.)*"|\[[^\]]*\]|[^\s,;}\])&"]+))"#,
    ))
});

/// Field names that contain a sensitive word but hold no secret.
pub fn is_exempt(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const SUFFIXES: &[&str] = &[
        "name",
        "names",
        "namespace",
        "kind",
        "type",
        "count",
        "ref",
        "id",
        "ids",
        "version",
        "at",
        "interval",
        "period",
        "age",
    ];
    SUFFIXES.iter().any(|s| k.ends_with(s) && k.len() > s.len())
}

/// Scrubs every sensitive value out of `text`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out: Cow<'_, str> = Cow::Borrowed(text);
    let mut apply = |re: &Regex, f: &dyn Fn(&Captures<'_>) -> String| {
        if re.is_match(&out) {
            out = Cow::Owned(re.replace_all(&out, |c: &Captures<'_>| f(c)).into_owned());
        }
    };
    apply(&PEM, &|_| "[REDACTED PRIVATE KEY]".to_string());
    apply(&JWT, &|_| "[REDACTED JWT]".to_string());
    apply(&AUTH_SCHEME, &|c| {
        let scheme = c.get(1).or(c.get(2)).map_or("", |m| m.as_str());
        format!("{scheme}{REDACTED}")
    });
    apply(&URL_USERINFO, &|c| format!("{}{REDACTED}@", &c[1]));
    apply(&KEY_VALUE, &|c| {
        let (key, sep, val) = (&c["key"], &c["sep"], &c["val"]);
        if c.name("path").is_some()
            || is_exempt(key)
            || val.contains(REDACTED) && val.len() <= REDACTED.len() + 4
        {
            return c[0].to_string();
        }
        // Keep the value's quoting so JSON stays JSON (`Some(` prefixes go).
        let bare = match val.split_once('(') {
            Some((prefix, rest)) if prefix.chars().all(|ch| ch.is_ascii_alphabetic()) => rest
                .trim_start_matches(|ch: char| ch.is_whitespace())
                .trim_start_matches("\\n")
                .trim_start(),
            _ => val,
        };
        let quoted = if bare.starts_with("\\\"") {
            format!("\\\"{REDACTED}\\\"")
        } else if bare.starts_with('"') {
            format!("\"{REDACTED}\"")
        } else {
            REDACTED.to_string()
        };
        format!("{key}{sep}{quoted}")
    });
    out
}

/// Wraps a [`MakeWriter`] so that every event is scrubbed by [`redact`] before
/// it reaches the underlying writer.
#[derive(Clone, Debug)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer_for(meta),
            buf: Vec::new(),
        }
    }
}

/// Buffers one event; scrubs and writes it on flush or drop.
pub struct RedactingWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let clean = redact(&text);
        self.inner.write_all(clean.as_bytes())?;
        self.buf.clear();
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn scrubbed(input: &str, secret: &str) -> String {
        let out = redact(input).into_owned();
        assert!(!out.contains(secret), "{secret:?} survived in {out:?}");
        out
    }

    #[test]
    fn structured_fields_in_json_and_text() {
        scrubbed(r#"{"password":"hunter2","x":1}"#, "hunter2");
        scrubbed(r#"{"fields":{"api_token":"tok-123 456"}}"#, "456");
        scrubbed("level=INFO db_password=hunter2 next=1", "hunter2");
        scrubbed(r#"level=INFO client_secret="a b c""#, "b c");
        scrubbed("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy");
        let out = scrubbed(r#"{"secretKey":"s3cr3t","n":2}"#, "s3cr3t");
        assert!(out.contains(r#""n":2"#), "{out}");
    }

    /// Issue #31: names are not secrets. A log line's target
    /// (`…::tenant::secrets:`), its message, secret names and counts stay
    /// readable; a value next to a sensitive key still goes.
    #[test]
    fn targets_messages_names_and_counts_are_kept() {
        let line = "2026-12-07T00:00:00Z  INFO reconcile{kind=\"tenant\"}: palisade::controller::tenant::secrets: secrets rotated tenant=ve secret_count=2 rotated=[\"Secret ve-a/one is now at version v1 (created)\"]";
        assert_eq!(redact(line), line);
        let json = r#"{"target":"palisade::controller::tenant::secrets","message":"secrets current","secret_count":64,"secret_names":["ve-a/one"]}"#;
        assert_eq!(redact(json), json);
        let out = scrubbed(
            "palisade::controller::tenant::secrets: secrets current token=abc123",
            "abc123",
        );
        assert!(out.contains("secrets current"), "{out}");
    }

    #[test]
    fn debug_output_inside_json_strings() {
        let line = r#"{"message":"config Config { db_password: \"hunter two\", access_key: Some(\"AKIA xyz\"), user: \"bob\" }"}"#;
        let out = scrubbed(line, "hunter two");
        let out = scrubbed(&out, "AKIA");
        assert!(out.contains("bob"), "{out}");
        scrubbed(r#"{"token": [1, 2, 3]}"#, "1, 2, 3");
        scrubbed(r#"Secret { data: {"password": "cGFzcw=="} }"#, "cGFzcw==");
    }

    #[test]
    fn urls_pem_jwt_bearer() {
        let out = scrubbed(
            "connecting to postgres://app:hunter2@db.svc:5432/app failed",
            "hunter2",
        );
        assert!(out.contains("db.svc:5432"), "{out}");
        scrubbed("s3 https://AKIA:wJalr%2Fxyz@s3.local/bucket", "wJalr");
        scrubbed(
            "key -----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\n-----END PRIVATE KEY----- done",
            "MIIEvQIBADAN",
        );
        scrubbed(
            r"escaped -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----",
            "MHcCAQEE",
        );
        scrubbed(
            "truncated -----BEGIN RSA PRIVATE KEY-----\nMIIabc",
            "MIIabc",
        );
        scrubbed(
            "got eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl here",
            "eyJzdWIiOiJ4In0",
        );
        scrubbed("header Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl");
    }

    #[test]
    fn names_of_secrets_are_kept() {
        let line =
            "rotated secret_name=db-creds secret_namespace=acme-prod key_id=k1 reason=Rotated";
        assert_eq!(redact(line), line);
        assert_eq!(redact("token bucket full"), "token bucket full");
    }

    #[test]
    fn redacted_hides_value() {
        let r: Redacted<String> = "hunter2".parse().expect("parse");
        assert_eq!(format!("{r:?} {r}"), "[REDACTED] [REDACTED]");
        assert_eq!(r.expose(), "hunter2");
    }

    #[test]
    fn writer_scrubs_before_writing() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter {
                inner: &mut out,
                buf: Vec::new(),
            };
            w.write_all(b"password=").expect("write");
            w.write_all(b"hunter2\n").expect("write");
        }
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "password=[REDACTED]\n"
        );
    }
}
