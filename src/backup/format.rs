//! The encrypted snapshot format (version 1): AES-256-GCM in authenticated chunks.
//!
//! ```text
//! header  = magic "PALSNAP\0" (8) | version u8 = 1 | algorithm u8 = 1
//!         | chunk_size u32 BE | key_id_len u8 | key_id (UTF-8, ≤ 64)
//!         | salt (32) | nonce_base (12)
//! frame_i = flag u8 (0 = more, 1 = final) | len u32 BE | ciphertext (len bytes, tag included)
//! file    = header | frame_0 | … | frame_n        (frame_n has flag 1; nothing follows it)
//! ```
//!
//! * Key: `HKDF-SHA256(salt, key material, info "palisade snapshot v1 aes-256-gcm")`, so
//!   every snapshot has its own data key and nonces can never repeat across snapshots.
//! * Nonce of chunk `i`: `nonce_base XOR (0u32 ‖ i as u64 BE)`.
//! * AAD of chunk `i`: `SHA-256(header) ‖ i as u64 BE ‖ flag`. The header (version, key id,
//!   salt, nonce base) is thereby authenticated by every chunk; reordering or splicing
//!   changes `i` or the header hash, dropping the final chunk leaves a stream that never
//!   saw `flag = 1`, and bytes after the final chunk are rejected.
//! * A chunk carries at most `chunk_size` plaintext bytes (1 MiB by default).

use std::io::{self, Read};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// File magic of an encrypted snapshot.
pub const MAGIC: &[u8; 8] = b"PALSNAP\0";
/// Format version written by this code.
pub const VERSION: u8 = 1;
/// Algorithm id 1: AES-256-GCM with an HKDF-SHA256 derived per-snapshot key.
pub const ALG_AES256GCM_HKDF: u8 = 1;
/// Default plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// Largest chunk size a reader accepts (bounds memory on hostile input).
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
const TAG_LEN: usize = 16;
const SALT_LEN: usize = 32;
const MIN_KEY_LEN: usize = 16;
const HKDF_INFO: &[u8] = b"palisade snapshot v1 aes-256-gcm";
const KEY_ID_INFO: &[u8] = b"palisade key id v1";

/// Errors of the snapshot format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The stream does not start with a valid header.
    #[error("not an encrypted Palisade snapshot or unsupported format: {0}")]
    BadHeader(&'static str),
    /// No key with the snapshot's key id is available.
    #[error("snapshot was encrypted with key id {0:?}, which was not provided")]
    UnknownKey(String),
    /// A chunk failed authentication: wrong key, tampering, reordering or splicing.
    #[error("chunk {0} failed authentication (wrong key or tampered snapshot)")]
    Authentication(u64),
    /// The stream ended before its final chunk.
    #[error("snapshot is truncated (ended before the final chunk)")]
    Truncated,
    /// Bytes follow the final chunk.
    #[error("unexpected data after the final chunk")]
    TrailingData,
    /// A frame is malformed.
    #[error("malformed chunk frame {0}")]
    BadFrame(u64),
    /// Key material is unusable.
    #[error("encryption key is too short (need at least {MIN_KEY_LEN} bytes)")]
    WeakKey,
    /// Key id is unusable.
    #[error("key id must be 1 to 64 bytes of UTF-8")]
    BadKeyId,
    /// The system random source failed.
    #[error("random number generator failed")]
    Random,
    /// Reading the underlying stream failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

impl FormatError {
    /// Short bounded reason (condition reason, metric label).
    pub fn reason(&self) -> &'static str {
        match self {
            FormatError::BadHeader(_) => "BadHeader",
            FormatError::UnknownKey(_) => "UnknownKey",
            FormatError::Authentication(_) => "DecryptionFailed",
            FormatError::Truncated => "Truncated",
            FormatError::TrailingData => "TrailingData",
            FormatError::BadFrame(_) => "BadFrame",
            FormatError::WeakKey => "WeakKey",
            FormatError::BadKeyId => "BadKeyId",
            FormatError::Random => "RandomFailed",
            FormatError::Io(_) => "ReadFailed",
        }
    }
}

/// Key material with an id. `Debug` never shows the material.
#[derive(Clone)]
pub struct EncryptionKey {
    id: String,
    material: Vec<u8>,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .field("material", &"<redacted>")
            .finish()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_fill(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    // `expand` only fails for lengths above 255 × 32 bytes; ours are 8 and 32.
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

impl EncryptionKey {
    /// A key from raw material; `id` defaults to a fingerprint of the material.
    pub fn new(material: Vec<u8>, id: Option<String>) -> Result<Self, FormatError> {
        if material.len() < MIN_KEY_LEN {
            return Err(FormatError::WeakKey);
        }
        let id = match id {
            Some(id) => id,
            None => fingerprint(&material),
        };
        if id.is_empty() || id.len() > 64 {
            return Err(FormatError::BadKeyId);
        }
        Ok(EncryptionKey { id, material })
    }

    /// The key id recorded in headers and manifests.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn data_key(&self, salt: &[u8]) -> Result<LessSafeKey, FormatError> {
        let mut key = [0u8; 32];
        hkdf_fill(salt, &self.material, HKDF_INFO, &mut key);
        let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|_| FormatError::WeakKey)?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// Non-secret fingerprint of key material: `k` + 16 hex digits of an HKDF output.
pub fn fingerprint(material: &[u8]) -> String {
    let mut out = [0u8; 8];
    hkdf_fill(&[], material, KEY_ID_INFO, &mut out);
    format!("k{}", hex(&out))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn nonce_for(base: &[u8; NONCE_LEN], index: u64) -> Nonce {
    let mut n = *base;
    for (slot, b) in n[4..].iter_mut().zip(index.to_be_bytes()) {
        *slot ^= b;
    }
    Nonce::assume_unique_for_key(n)
}

fn aad_for(header_hash: &[u8; 32], index: u64, flag: u8) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..32].copy_from_slice(header_hash);
    aad[32..40].copy_from_slice(&index.to_be_bytes());
    aad[40] = flag;
    aad
}

/// Seals plaintext chunks into frames.
pub struct Sealer {
    key: LessSafeKey,
    header: Vec<u8>,
    header_hash: [u8; 32],
    nonce_base: [u8; NONCE_LEN],
    index: u64,
    chunk_size: usize,
    finished: bool,
}

impl Sealer {
    /// A sealer with a fresh random salt and nonce base.
    pub fn new(key: &EncryptionKey, chunk_size: usize) -> Result<Self, FormatError> {
        let rng = SystemRandom::new();
        let mut salt = [0u8; SALT_LEN];
        let mut nonce_base = [0u8; NONCE_LEN];
        rng.fill(&mut salt).map_err(|_| FormatError::Random)?;
        rng.fill(&mut nonce_base).map_err(|_| FormatError::Random)?;
        let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
        let mut header = Vec::with_capacity(64 + key.id.len());
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.push(ALG_AES256GCM_HKDF);
        header.extend_from_slice(&(chunk_size as u32).to_be_bytes());
        header.push(key.id.len() as u8);
        header.extend_from_slice(key.id.as_bytes());
        header.extend_from_slice(&salt);
        header.extend_from_slice(&nonce_base);
        let header_hash = sha256_array(&header);
        Ok(Sealer {
            key: key.data_key(&salt)?,
            header,
            header_hash,
            nonce_base,
            index: 0,
            chunk_size,
            finished: false,
        })
    }

    /// The header bytes that start the stream.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Appends the frame for `plaintext` (at most `chunk_size` bytes) to `out`.
    pub fn seal_into(&mut self, plaintext: &[u8], last: bool, out: &mut Vec<u8>) {
        debug_assert!(!self.finished && plaintext.len() <= self.chunk_size);
        let flag = u8::from(last);
        out.push(flag);
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(plaintext);
        let aad = aad_for(&self.header_hash, self.index, flag);
        // Sealing only fails for inputs larger than GCM's limit (64 GiB), far above a chunk.
        match self.key.seal_in_place_separate_tag(
            nonce_for(&self.nonce_base, self.index),
            Aad::from(aad),
            &mut out[start..],
        ) {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => out.truncate(start),
        }
        self.index += 1;
        self.finished = last;
    }
}

fn sha256_array(bytes: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads just the key id of an encrypted stream's header, if it is one.
pub fn peek_key_id(prefix: &[u8]) -> Option<String> {
    if prefix.len() < 15 || &prefix[..8] != MAGIC {
        return None;
    }
    let len = prefix[14] as usize;
    prefix
        .get(15..15 + len)
        .and_then(|id| std::str::from_utf8(id).ok())
        .map(str::to_string)
}

/// Decrypts a sealed stream, yielding plaintext. Any failure is an `io::Error` wrapping
/// a [`FormatError`] (use [`format_error`] to get it back).
pub struct OpenReader<R> {
    inner: R,
    key: LessSafeKey,
    header_hash: [u8; 32],
    nonce_base: [u8; NONCE_LEN],
    chunk_size: usize,
    index: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> OpenReader<R> {
    /// Reads and checks the header, picking the key by id from `keys`.
    pub fn new(mut inner: R, keys: &[EncryptionKey]) -> Result<Self, FormatError> {
        let mut fixed = [0u8; 15];
        if read_exact_or_eof(&mut inner, &mut fixed)? < fixed.len() {
            return Err(FormatError::BadHeader("too short"));
        }
        if &fixed[..8] != MAGIC {
            return Err(FormatError::BadHeader("bad magic"));
        }
        if fixed[8] != VERSION {
            return Err(FormatError::BadHeader("unsupported version"));
        }
        if fixed[9] != ALG_AES256GCM_HKDF {
            return Err(FormatError::BadHeader("unsupported algorithm"));
        }
        let chunk_size = u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]) as usize;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(FormatError::BadHeader("bad chunk size"));
        }
        let id_len = fixed[14] as usize;
        let mut rest = vec![0u8; id_len + SALT_LEN + NONCE_LEN];
        if read_exact_or_eof(&mut inner, &mut rest)? < rest.len() {
            return Err(FormatError::BadHeader("too short"));
        }
        let id = std::str::from_utf8(&rest[..id_len])
            .map_err(|_| FormatError::BadHeader("key id is not UTF-8"))?;
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| FormatError::UnknownKey(id.to_string()))?;
        let salt = &rest[id_len..id_len + SALT_LEN];
        let mut nonce_base = [0u8; NONCE_LEN];
        nonce_base.copy_from_slice(&rest[id_len + SALT_LEN..]);
        let mut header = fixed.to_vec();
        header.extend_from_slice(&rest);
        Ok(OpenReader {
            key: key.data_key(salt)?,
            inner,
            header_hash: sha256_array(&header),
            nonce_base,
            chunk_size,
            index: 0,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            pos: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> Result<(), FormatError> {
        let mut frame = [0u8; 5];
        let n = read_exact_or_eof(&mut self.inner, &mut frame)?;
        if n == 0 {
            return Err(FormatError::Truncated);
        }
        if n < frame.len() {
            return Err(FormatError::Truncated);
        }
        let flag = frame[0];
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        if flag > 1 || !(TAG_LEN..=self.chunk_size + TAG_LEN).contains(&len) {
            return Err(FormatError::BadFrame(self.index));
        }
        self.buf.resize(len, 0);
        if read_exact_or_eof(&mut self.inner, &mut self.buf)? < len {
            return Err(FormatError::Truncated);
        }
        let aad = aad_for(&self.header_hash, self.index, flag);
        let plain_len = self
            .key
            .open_in_place(
                nonce_for(&self.nonce_base, self.index),
                Aad::from(aad),
                &mut self.buf,
            )
            .map_err(|_| FormatError::Authentication(self.index))?
            .len();
        self.buf.truncate(plain_len);
        self.pos = 0;
        self.index += 1;
        if flag == 1 {
            let mut probe = [0u8; 1];
            if read_exact_or_eof(&mut self.inner, &mut probe)? != 0 {
                return Err(FormatError::TrailingData);
            }
            self.done = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk().map_err(io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Recovers a [`FormatError`] carried inside an `io::Error` produced by [`OpenReader`].
pub fn format_error(e: &io::Error) -> Option<&FormatError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<FormatError>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> EncryptionKey {
        EncryptionKey::new(
            b"0123456789abcdef0123456789abcdef".to_vec(),
            Some(id.into()),
        )
        .expect("key")
    }

    fn seal(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = Sealer::new(&key("k1"), chunk).expect("sealer");
        let mut out = s.header().to_vec();
        let mut chunks = data.chunks(chunk).peekable();
        if chunks.peek().is_none() {
            s.seal_into(&[], true, &mut out);
        }
        while let Some(c) = chunks.next() {
            s.seal_into(c, chunks.peek().is_none(), &mut out);
        }
        out
    }

    fn open(sealed: &[u8], keys: &[EncryptionKey]) -> Result<Vec<u8>, String> {
        let mut r = OpenReader::new(sealed, keys).map_err(|e| e.reason().to_string())?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| format_error(&e).map_or("io", |f| f.reason()).to_string())?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_detects_tampering() {
        let data: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sealed = seal(&data, 4096);
        assert_eq!(open(&sealed, &[key("k1")]).expect("opens"), data);
        assert_eq!(
            open(&seal(&[], 64), &[key("k1")]).expect("empty"),
            Vec::<u8>::new()
        );
        assert_eq!(peek_key_id(&sealed).as_deref(), Some("k1"));

        // Wrong key material under the right id.
        let wrong = EncryptionKey::new(
            b"another key, also 32 bytes long!".to_vec(),
            Some("k1".into()),
        )
        .expect("key");
        assert_eq!(open(&sealed, &[wrong]).unwrap_err(), "DecryptionFailed");
        assert_eq!(open(&sealed, &[key("k2")]).unwrap_err(), "UnknownKey");

        // Flipped bit in a ciphertext.
        let mut t = sealed.clone();
        let last = t.len() - 100;
        t[last] ^= 1;
        assert_eq!(open(&t, &[key("k1")]).unwrap_err(), "DecryptionFailed");

        // Truncation at a frame boundary (drop the final frame) and mid-frame.
        let frame = 5 + 4096 + TAG_LEN;
        let hdr = 15 + 2 + SALT_LEN + NONCE_LEN; // header with key id "k1"
        let body = &sealed[hdr..];
        let frames = body.len().div_ceil(frame);
        let cut = hdr + (frames - 1) * frame;
        assert_eq!(open(&sealed[..cut], &[key("k1")]).unwrap_err(), "Truncated");
        assert_eq!(
            open(&sealed[..sealed.len() - 3], &[key("k1")]).unwrap_err(),
            "Truncated"
        );

        // Reordering two frames.
        let mut r = sealed[..hdr].to_vec();
        r.extend_from_slice(&body[frame..2 * frame]);
        r.extend_from_slice(&body[..frame]);
        r.extend_from_slice(&body[2 * frame..]);
        assert_eq!(open(&r, &[key("k1")]).unwrap_err(), "DecryptionFailed");

        // Trailing garbage.
        let mut g = sealed.clone();
        g.push(0);
        assert_eq!(open(&g, &[key("k1")]).unwrap_err(), "TrailingData");

        // Splicing a frame from another snapshot with the same key.
        let other = seal(&data, 4096);
        let mut s = sealed[..hdr + frame].to_vec();
        s.extend_from_slice(&other[hdr + frame..]);
        assert_eq!(open(&s, &[key("k1")]).unwrap_err(), "DecryptionFailed");
    }

    #[test]
    fn key_rules() {
        assert!(matches!(
            EncryptionKey::new(vec![1; 8], None),
            Err(FormatError::WeakKey)
        ));
        let k = EncryptionKey::new(vec![7; 32], None).expect("key");
        assert_eq!(k.id(), fingerprint(&[7; 32]));
        assert!(!format!("{k:?}").contains('7'));
    }
}
