//! Secrets read from files (a mounted Secret, `--password-file`, `--key-file`, S3
//! credentials): never from argv. Shared by the CLI and the destinations.

use std::path::Path;

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file cannot be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// Its path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A secret that must be text is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(String),
}

impl SecretFileError {
    /// Short bounded reason: a secret file is configuration.
    pub fn reason(&self) -> &'static str {
        "InvalidConfig"
    }
}

/// Whether a file of `mode` can be read by users other than its owner and group.
pub fn world_readable(mode: u32) -> bool {
    mode & 0o004 != 0
}

/// Reads a secret file; one trailing newline (`\n` or `\r\n`) is removed. A file
/// that every user may read is used, with a warning on stderr (never its content).
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && world_readable(meta.permissions().mode())
    {
        eprintln!(
            "warning: secret file {} is readable by every user (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let mut b = std::fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if b.last() == Some(&b'\n') {
        b.pop();
        if b.last() == Some(&b'\r') {
            b.pop();
        }
    }
    Ok(b)
}

/// `b` as text; `what` names it in the error.
pub fn secret_string(b: Vec<u8>, what: &str) -> Result<String, SecretFileError> {
    String::from_utf8(b).map_err(|_| SecretFileError::NotUtf8(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_trailing_newline_is_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let table: &[(&[u8], &[u8])] = &[
            (b"secret\n", b"secret"),
            (b"secret\r\n", b"secret"),
            (b"secret\n\n", b"secret\n"),
            (b"secret", b"secret"),
            (b"\n", b""),
            (b"a\rb", b"a\rb"),
        ];
        for (i, (content, want)) in table.iter().enumerate() {
            let p = dir.path().join(format!("s{i}"));
            std::fs::write(&p, content).expect("write");
            assert_eq!(read_secret_file(&p).expect("read"), *want, "{content:?}");
        }
        let missing = read_secret_file(&dir.path().join("missing")).expect_err("missing");
        assert!(missing.to_string().starts_with("cannot read secret file "));
        assert_eq!(
            secret_string(vec![0xff], "password")
                .expect_err("not utf-8")
                .to_string(),
            "password is not UTF-8"
        );
    }
}
