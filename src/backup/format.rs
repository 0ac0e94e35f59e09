//! The encrypted snapshot format (version 2): AES-256-GCM in authenticated chunks,
//! bound to its snapshot id.
//!
//! ```text
//! header  = magic "PALSNAP\0" (8) | version u8 = 2 | algorithm u8 = 1
//!         | chunk_size u32 BE | key_id_len u8 | key_id (UTF-8, ≤ 64)
//!         | snapshot_id_len u8 | snapshot_id (≤ 128)
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
//! * The snapshot id is in the header and so in every chunk's AAD: a stream stored under
//!   another id is refused before any plaintext is produced ([`FormatError::WrongSnapshot`]).
//!   Version 1 (no id) is read only when the caller asks for it explicitly.
//! * Metadata (manifests, verification records) is authenticated with HMAC-SHA256 under
//!   `HKDF-SHA256("palisade metadata", key material, "palisade metadata mac v1")`
//!   ([`EncryptionKey::mac`]), a key that is never used for anything else.

use std::io::{self, Read};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// File magic of an encrypted snapshot.
pub const MAGIC: &[u8; 8] = b"PALSNAP\0";
/// Format version written by this code (2: the snapshot id is in the header).
pub const VERSION: u8 = 2;
/// The first format version (no snapshot id in the header); read only on request.
pub const VERSION_1: u8 = 1;
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
const MAC_SALT: &[u8] = b"palisade metadata";
const MAC_INFO: &[u8] = b"palisade metadata mac v1";
/// Longest snapshot id the header carries.
pub const MAX_SNAPSHOT_ID: usize = 128;

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
    /// The stream belongs to another snapshot id (moved or copied object).
    #[error(
        "the stored stream belongs to snapshot {found:?}, not {expected:?} (object moved or substituted)"
    )]
    WrongSnapshot {
        /// The id asked for.
        expected: String,
        /// The id in the stream's header.
        found: String,
    },
    /// A version 1 stream (not bound to its id) where only version 2 is accepted.
    #[error("format version 1 stream is not bound to its snapshot id; refused")]
    Unbound,
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
            FormatError::WrongSnapshot { .. } => "SnapshotMismatch",
            FormatError::Unbound => "Unauthenticated",
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

    fn mac_key(&self) -> hmac::Key {
        let mut key = [0u8; 32];
        hkdf_fill(MAC_SALT, &self.material, MAC_INFO, &mut key);
        hmac::Key::new(hmac::HMAC_SHA256, &key)
    }

    /// Hex HMAC-SHA256 of `data` under this key's metadata MAC key.
    pub fn mac(&self, data: &[u8]) -> String {
        hex(hmac::sign(&self.mac_key(), data).as_ref())
    }

    /// Whether `tag` (hex) is the MAC of `data` (constant-time comparison).
    pub fn verify_mac(&self, data: &[u8], tag: &str) -> bool {
        match unhex(tag) {
            Some(t) => hmac::verify(&self.mac_key(), data, &t).is_ok(),
            None => false,
        }
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

/// Decodes lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
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
    /// A sealer with a fresh random salt and nonce base, bound to `snapshot_id`.
    pub fn new(
        key: &EncryptionKey,
        chunk_size: usize,
        snapshot_id: &str,
    ) -> Result<Self, FormatError> {
        if snapshot_id.is_empty() || snapshot_id.len() > MAX_SNAPSHOT_ID {
            return Err(FormatError::BadHeader("snapshot id length"));
        }
        let rng = SystemRandom::new();
        let mut salt = [0u8; SALT_LEN];
        let mut nonce_base = [0u8; NONCE_LEN];
        rng.fill(&mut salt).map_err(|_| FormatError::Random)?;
        rng.fill(&mut nonce_base).map_err(|_| FormatError::Random)?;
        let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
        let mut header = Vec::with_capacity(64 + key.id.len() + snapshot_id.len());
        header.extend_from_slice(MAGIC);
        header.push(VERSION);
        header.push(ALG_AES256GCM_HKDF);
        header.extend_from_slice(&(chunk_size as u32).to_be_bytes());
        header.push(key.id.len() as u8);
        header.extend_from_slice(key.id.as_bytes());
        header.push(snapshot_id.len() as u8);
        header.extend_from_slice(snapshot_id.as_bytes());
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
    /// Reads and checks the header, picking the key by id from `keys`. A version 2
    /// header must name `snapshot_id`; a version 1 header (no id) is accepted only with
    /// `accept_v1`.
    pub fn new(
        mut inner: R,
        keys: &[EncryptionKey],
        snapshot_id: &str,
        accept_v1: bool,
    ) -> Result<Self, FormatError> {
        let mut fixed = [0u8; 15];
        if read_exact_or_eof(&mut inner, &mut fixed)? < fixed.len() {
            return Err(FormatError::BadHeader("too short"));
        }
        if &fixed[..8] != MAGIC {
            return Err(FormatError::BadHeader("bad magic"));
        }
        let version = fixed[8];
        match version {
            VERSION => {}
            VERSION_1 if accept_v1 => {}
            VERSION_1 => return Err(FormatError::Unbound),
            _ => return Err(FormatError::BadHeader("unsupported version")),
        }
        if fixed[9] != ALG_AES256GCM_HKDF {
            return Err(FormatError::BadHeader("unsupported algorithm"));
        }
        let chunk_size = u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]) as usize;
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(FormatError::BadHeader("bad chunk size"));
        }
        let id_len = fixed[14] as usize;
        let mut header = fixed.to_vec();
        let mut key_id = vec![0u8; id_len];
        if read_exact_or_eof(&mut inner, &mut key_id)? < key_id.len() {
            return Err(FormatError::BadHeader("too short"));
        }
        header.extend_from_slice(&key_id);
        let id = std::str::from_utf8(&key_id)
            .map_err(|_| FormatError::BadHeader("key id is not UTF-8"))?;
        if version == VERSION {
            let mut len = [0u8; 1];
            if read_exact_or_eof(&mut inner, &mut len)? < 1 {
                return Err(FormatError::BadHeader("too short"));
            }
            let mut sid = vec![0u8; len[0] as usize];
            if read_exact_or_eof(&mut inner, &mut sid)? < sid.len() {
                return Err(FormatError::BadHeader("too short"));
            }
            header.push(len[0]);
            header.extend_from_slice(&sid);
            if sid != snapshot_id.as_bytes() {
                return Err(FormatError::WrongSnapshot {
                    expected: snapshot_id.to_string(),
                    found: String::from_utf8_lossy(&sid).into_owned(),
                });
            }
        }
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| FormatError::UnknownKey(id.to_string()))?;
        let mut rest = vec![0u8; SALT_LEN + NONCE_LEN];
        if read_exact_or_eof(&mut inner, &mut rest)? < rest.len() {
            return Err(FormatError::BadHeader("too short"));
        }
        header.extend_from_slice(&rest);
        let salt = &rest[..SALT_LEN];
        let mut nonce_base = [0u8; NONCE_LEN];
        nonce_base.copy_from_slice(&rest[SALT_LEN..]);
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

/// A fixed test key with id `id`.
#[cfg(test)]
pub(crate) fn test_key(id: &str) -> EncryptionKey {
    EncryptionKey {
        id: id.into(),
        material: b"0123456789abcdef0123456789abcdef".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_key as key;

    fn seal(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut s = Sealer::new(&key("k1"), chunk, "snap-1").expect("sealer");
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
        open_as(sealed, keys, "snap-1")
    }

    fn open_as(sealed: &[u8], keys: &[EncryptionKey], id: &str) -> Result<Vec<u8>, String> {
        let mut r = OpenReader::new(sealed, keys, id, false).map_err(|e| e.reason().to_string())?;
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
        let hdr = 15 + 2 + 1 + 6 + SALT_LEN + NONCE_LEN; // key id "k1", snapshot "snap-1"
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
    fn stream_is_bound_to_its_snapshot_id() {
        let sealed = seal(b"some data", 64);
        assert_eq!(
            open_as(&sealed, &[key("k1")], "snap-2").unwrap_err(),
            "SnapshotMismatch"
        );
        // Rewriting the id in the header breaks every chunk's AAD.
        let mut moved = sealed.clone();
        let at = 15 + 2 + 1 + 5;
        moved[at] = b'2';
        assert_eq!(
            open_as(&moved, &[key("k1")], "snap-2").unwrap_err(),
            "DecryptionFailed"
        );
        // A version 1 header is refused unless asked for.
        let mut v1 = sealed[..15 + 2].to_vec();
        v1[8] = VERSION_1;
        v1.extend_from_slice(&[0u8; SALT_LEN + NONCE_LEN]);
        assert!(matches!(
            OpenReader::new(&v1[..], &[key("k1")], "snap-1", false),
            Err(FormatError::Unbound)
        ));
        assert!(OpenReader::new(&v1[..], &[key("k1")], "snap-1", true).is_ok());
    }

    #[test]
    fn metadata_macs() {
        let k = key("k1");
        let tag = k.mac(b"manifest");
        assert!(k.verify_mac(b"manifest", &tag));
        assert!(!k.verify_mac(b"manifesT", &tag));
        assert!(!k.verify_mac(b"manifest", "zz"));
        let other =
            EncryptionKey::new(b"another key, also 32 bytes long!".to_vec(), None).expect("key");
        assert!(!other.verify_mac(b"manifest", &tag));
        assert_eq!(unhex(&hex(&[0, 1, 254])), Some(vec![0, 1, 254]));
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
