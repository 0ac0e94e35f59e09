//! Row counts read from the dump itself.
//!
//! `pg_dump --format=custom --compress=0` writes, to a pipe: a header, the table of
//! contents (one entry per object; a table's data is a `TABLE DATA` entry naming its
//! schema and table), then one data block per entry with data, in TOC order. A block is
//! a type byte and the entry's dump id, then length-prefixed chunks ended by an empty
//! one; for a `TABLE DATA` entry the chunks are `COPY … TO stdout` text, one line per
//! row (a newline inside a value is written as `\n`, so it is not a line break).
//! [`RowCounter`] follows that stream as the compress stage reads it and counts the lines
//! of each table, so a snapshot's row counts cost no second scan of the database.
//!
//! Anything it does not understand (an archive version it does not know, compressed
//! data, an entry too large to hold, a block type it has not seen) stops the counting
//! with a reason, never the backup: the engine then counts those tables with SQL in the
//! same exported snapshot. Memory is bounded: the header and one TOC entry at a time
//! (at most [`MAX_ENTRY`] bytes), and a few bytes of state while reading data.

use std::collections::{BTreeMap, HashMap, HashSet};

/// The largest single TOC entry held while parsing (a function body or view definition
/// larger than this stops the counting; SQL counts are used instead).
pub const MAX_ENTRY: usize = 8 << 20;

const MAGIC: &[u8; 5] = b"PGDMP";
/// Archive format versions understood (`K_VERS_1_12` = PostgreSQL 9.5 … `K_VERS_1_16`
/// = PostgreSQL 17).
const MINOR_VERSIONS: std::ops::RangeInclusive<u8> = 12..=16;
const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
/// What older pg_dump versions append to every table's COPY data.
const COPY_END: &[u8] = b"\\.\n\n\n";

/// Follows a custom-format archive stream and counts the COPY rows of each table.
pub struct RowCounter {
    /// Header and TOC bytes not parsed yet (bounded by [`MAX_ENTRY`] once the header is in).
    pending: Vec<u8>,
    state: State,
    int_size: usize,
    off_size: usize,
    minor: u8,
    /// TOC entries still to read.
    entries_left: i64,
    /// dump id → `schema.table` of every `TABLE DATA` entry.
    tables: HashMap<i64, String>,
    /// Keys named by two entries (`a.b`.`c` and `a`.`b.c`): left to SQL, which the
    /// restore test's own count matches.
    ambiguous: HashSet<String>,
    counts: BTreeMap<String, i64>,
    /// The block being read: its table (None for data that is not a table's) and the
    /// newlines and last bytes seen in it.
    block: Option<String>,
    newlines: i64,
    /// The last bytes of the block's data (`tail_len` of them are real).
    tail: [u8; COPY_END.len()],
    tail_len: usize,
    /// A small field (a byte or an int) being assembled across reads.
    field: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Header and TOC, parsed from `pending`.
    Toc,
    /// A block's type byte, or the end of the archive.
    BlockType,
    /// A data block's dump id.
    BlockId {
        blobs: bool,
    },
    /// A large-object block: the next object's OID (0 ends the block).
    BlobOid,
    /// A chunk's length (0 ends the data of a table or large object).
    ChunkLen {
        blobs: bool,
    },
    /// Inside a chunk.
    Chunk {
        left: u64,
        blobs: bool,
    },
    Failed,
}

/// Why the counts could not be read from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for RowCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl RowCounter {
    pub fn new() -> Self {
        RowCounter {
            pending: Vec::new(),
            state: State::Toc,
            int_size: 0,
            off_size: 0,
            minor: 0,
            entries_left: -1,
            tables: HashMap::new(),
            ambiguous: HashSet::new(),
            counts: BTreeMap::new(),
            block: None,
            newlines: 0,
            tail: [0; COPY_END.len()],
            tail_len: 0,
            field: Vec::with_capacity(16),
        }
    }

    /// Reads the next bytes of the archive.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Failed => return,
                State::Toc => {
                    self.pending.extend_from_slice(data);
                    data = &[];
                    match self.parse_toc() {
                        Ok(true) => {}
                        Ok(false) => {
                            if self.pending.len() > MAX_ENTRY {
                                self.fail(format!(
                                    "a TOC entry is larger than {} MiB",
                                    MAX_ENTRY >> 20
                                ));
                            }
                            return;
                        }
                        Err(why) => return self.fail(why),
                    }
                    // The data blocks begin right after the TOC.
                    self.state = State::BlockType;
                    let rest = std::mem::take(&mut self.pending);
                    self.feed(&rest);
                }
                State::Chunk { left, blobs } => {
                    let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let (body, rest) = data.split_at(n);
                    if !blobs && self.block.is_some() {
                        self.count(body);
                    }
                    data = rest;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkLen { blobs }
                    } else {
                        State::Chunk { left, blobs }
                    };
                }
                State::BlockType => {
                    let kind = data[0];
                    data = &data[1..];
                    self.state = match kind {
                        BLK_DATA => State::BlockId { blobs: false },
                        BLK_BLOBS => State::BlockId { blobs: true },
                        other => return self.fail(format!("unknown block type {other}")),
                    };
                }
                State::ChunkLen { blobs: false }
                    if self.field.is_empty() && self.block.is_some() =>
                {
                    // The hot path, once per row: whole (length, row) pairs in this read.
                    data = self.rows(data);
                    if let Some(value) = self.int_from(&mut data) {
                        self.on_int(value);
                    }
                }
                State::BlockId { .. } | State::BlobOid | State::ChunkLen { .. } => {
                    let Some(value) = self.int_from(&mut data) else {
                        return;
                    };
                    self.on_int(value);
                }
            }
        }
    }

    /// The row count of every table whose data was in the archive, once the whole
    /// archive was read.
    pub fn finish(mut self) -> Result<BTreeMap<String, i64>, Unreadable> {
        match self.state {
            State::BlockType => {
                let mut counts = std::mem::take(&mut self.counts);
                counts.retain(|key, _| !self.ambiguous.contains(key));
                Ok(counts)
            }
            State::Failed => Err(Unreadable(String::from_utf8_lossy(&self.pending).into())),
            State::Toc => Err(Unreadable("the archive ended inside its TOC".into())),
            _ => Err(Unreadable("the archive ended inside a data block".into())),
        }
    }

    fn fail(&mut self, why: String) {
        self.state = State::Failed;
        // `pending` is not needed any more; it carries the reason to `finish`.
        self.pending = why.into_bytes();
        self.tables.clear();
        self.counts.clear();
    }

    /// Counts the rows of every chunk wholly inside `data` (state `ChunkLen` of a
    /// table) and returns what is left: a chunk cut by the end of the read, or the
    /// block's end.
    ///
    /// Newlines are counted once over the whole run of chunks (SIMD, in cache), less
    /// those inside the length fields, instead of row by row.
    fn rows<'a>(&mut self, mut data: &'a [u8]) -> &'a [u8] {
        let size = 1 + self.int_size;
        let start = data;
        let mut in_lengths = 0;
        while data.len() > size {
            let len = int_value(&data[..size]);
            let Some(end) = usize::try_from(len)
                .ok()
                .filter(|&len| len > 0)
                .and_then(|len| len.checked_add(size))
                .filter(|&end| end <= data.len())
            else {
                break;
            };
            in_lengths += newlines(&data[..size]);
            self.keep_tail(&data[size..end]);
            data = &data[end..];
        }
        let run = &start[..start.len() - data.len()];
        self.newlines += newlines(run) - in_lengths;
        data
    }

    fn count(&mut self, body: &[u8]) {
        self.newlines += newlines(body);
        self.keep_tail(body);
    }

    /// Keeps the last bytes of the block's data, to recognise the end marker.
    fn keep_tail(&mut self, body: &[u8]) {
        const N: usize = COPY_END.len();
        if body.len() >= N {
            self.tail.copy_from_slice(&body[body.len() - N..]);
        } else {
            self.tail.copy_within(body.len().., 0);
            self.tail[N - body.len()..].copy_from_slice(body);
        }
        self.tail_len = (self.tail_len + body.len()).min(N);
    }

    /// Assembles one int (a sign byte, then `int_size` bytes, least significant first)
    /// from `data`, across calls.
    fn int_from(&mut self, data: &mut &[u8]) -> Option<i64> {
        let size = 1 + self.int_size;
        if self.field.is_empty() && data.len() >= size {
            // The usual case (one per row): the whole int is in this read.
            let value = int_value(&data[..size]);
            *data = &data[size..];
            return Some(value);
        }
        let want = size - self.field.len();
        let n = want.min(data.len());
        self.field.extend_from_slice(&data[..n]);
        *data = &data[n..];
        if self.field.len() < size {
            return None;
        }
        let value = int_value(&self.field);
        self.field.clear();
        Some(value)
    }

    fn on_int(&mut self, value: i64) {
        self.state = match (self.state, value) {
            (State::BlockId { blobs: false }, id) => {
                self.block = self.tables.get(&id).cloned();
                self.newlines = 0;
                self.tail_len = 0;
                State::ChunkLen { blobs: false }
            }
            // After a large-object block's id, or after one object's data: the next OID.
            (State::BlockId { blobs: true }, _) | (State::ChunkLen { blobs: true }, 0) => {
                State::BlobOid
            }
            (State::BlobOid, 0) => State::BlockType,
            (State::BlobOid, _) => State::ChunkLen { blobs: true },
            (State::ChunkLen { blobs: false }, 0) => {
                if let Some(table) = self.block.take() {
                    let mut rows = self.newlines;
                    if self.tail_len == COPY_END.len() && self.tail == *COPY_END {
                        rows -= 3;
                    }
                    // A second block under the same key: two tables collide.
                    if self.counts.insert(table.clone(), rows).is_some() {
                        self.ambiguous.insert(table);
                    }
                }
                State::BlockType
            }
            (State::ChunkLen { blobs }, len) if len > 0 => State::Chunk {
                left: len as u64,
                blobs,
            },
            (other, _) => {
                return self.fail(format!("unexpected value {value} in state {other:?}"));
            }
        };
    }

    /// Parses the header (once) and as many TOC entries as `pending` holds, draining
    /// what it parsed. True once the TOC is complete (`pending` then starts with data).
    fn parse_toc(&mut self) -> Result<bool, String> {
        let mut r = Reader {
            buf: &self.pending,
            pos: 0,
            int_size: self.int_size,
        };
        if self.entries_left < 0 {
            let Some(header) = self.header(&mut r)? else {
                return Ok(false);
            };
            (self.minor, self.int_size, self.off_size, self.entries_left) = header;
            let consumed = r.pos;
            self.pending.drain(..consumed);
            return self.parse_toc();
        }
        let mut consumed = 0;
        while self.entries_left > 0 {
            match self.entry(&mut r)? {
                Some(None) => {}
                Some(Some((id, table))) => {
                    self.tables.insert(id, table);
                }
                None => break,
            }
            consumed = r.pos;
            self.entries_left -= 1;
        }
        self.pending.drain(..consumed);
        Ok(self.entries_left == 0)
    }

    /// `PGDMP`, version, int and offset sizes, format, compression, creation time,
    /// database name, server and pg_dump versions, then the number of TOC entries.
    fn header(&self, r: &mut Reader) -> Result<Option<(u8, usize, usize, i64)>, String> {
        let Some(fixed) = r.bytes(11) else {
            return Ok(None);
        };
        if &fixed[..5] != MAGIC {
            return Err("not a custom-format archive (no PGDMP magic)".into());
        }
        let (major, minor, int_size, off_size, format) = (
            fixed[5],
            fixed[6],
            fixed[8] as usize,
            fixed[9] as usize,
            fixed[10],
        );
        if major != 1 || !MINOR_VERSIONS.contains(&minor) {
            return Err(format!("archive version {major}.{minor} is not known"));
        }
        if !(4..=8).contains(&int_size) || !(4..=8).contains(&off_size) {
            return Err(format!("int size {int_size} / offset size {off_size}"));
        }
        if format != FORMAT_CUSTOM {
            return Err(format!("archive format {format} is not custom"));
        }
        r.int_size = int_size;
        // 1.15 writes the compression algorithm as a byte, before it the gzip level.
        let compression = if minor >= 15 {
            r.bytes(1).map(|b| i64::from(b[0]))
        } else {
            r.int()
        };
        let Some(compression) = compression else {
            return Ok(None);
        };
        if compression != 0 {
            return Err(format!("compressed data ({compression})"));
        }
        for _ in 0..7 {
            if r.int().is_none() {
                return Ok(None);
            }
        }
        for _ in 0..3 {
            if r.skip_str().is_none() {
                return Ok(None);
            }
        }
        let Some(entries) = r.int() else {
            return Ok(None);
        };
        if entries < 0 {
            return Err(format!("{entries} TOC entries"));
        }
        Ok(Some((minor, int_size, off_size, entries)))
    }

    /// One TOC entry: `Some(Some((dump id, schema.table)))` for table data,
    /// `Some(None)` for any other entry, `None` when `r` does not hold all of it.
    fn entry(&self, r: &mut Reader) -> Result<Option<Option<(i64, String)>>, String> {
        let entry = (|| {
            let id = r.int()?;
            let _had_dumper = r.int()?;
            r.skip_str()?; // table oid
            r.skip_str()?; // oid
            let tag = r.str()?;
            let desc = r.str()?;
            let _section = r.int()?;
            r.skip_str()?; // definition
            r.skip_str()?; // drop statement
            r.skip_str()?; // copy statement
            let namespace = r.str()?;
            r.skip_str()?; // tablespace
            if self.minor >= 14 {
                r.skip_str()?; // table access method
            }
            if self.minor >= 16 {
                r.int()?; // relkind
            }
            r.skip_str()?; // owner
            r.skip_str()?; // "false" (WITH OIDS, always false)
            while r.str_or_null()?.is_some() {} // dependencies, ended by a null
            r.bytes(1 + self.off_size)?; // data offset and whether it is set
            Some((id, tag, desc, namespace))
        })();
        let Some((id, tag, desc, namespace)) = entry else {
            return Ok(None);
        };
        Ok(Some(match (desc.as_deref(), namespace, tag) {
            (Some("TABLE DATA"), Some(ns), Some(table)) => {
                Some((id, super::manifest::table_key(&ns, &table)))
            }
            _ => None,
        }))
    }
}

fn newlines(bytes: &[u8]) -> i64 {
    memchr::memchr_iter(b'\n', bytes).count() as i64
}

/// A sign byte, then the magnitude least significant byte first.
fn int_value(field: &[u8]) -> i64 {
    let magnitude = field[1..]
        .iter()
        .rev()
        .fold(0i64, |acc, &b| acc.wrapping_shl(8) | i64::from(b));
    if field[0] != 0 { -magnitude } else { magnitude }
}

/// Reads fields from a byte slice; `None` when the slice ends first.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    int_size: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let b = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(b)
    }

    fn int(&mut self) -> Option<i64> {
        let size = self.int_size;
        self.bytes(1 + size).map(int_value)
    }

    /// A string: its length as an int (-1 for null), then its bytes. Outer `None`: the
    /// buffer ends first.
    fn str_or_null(&mut self) -> Option<Option<&[u8]>> {
        let len = self.int()?;
        if len < 0 {
            return Some(None);
        }
        self.bytes(usize::try_from(len).ok()?).map(Some)
    }

    /// A string as text (null, or not UTF-8, as `None` inside).
    fn str(&mut self) -> Option<Option<String>> {
        Some(
            self.str_or_null()?
                .and_then(|b| std::str::from_utf8(b).ok())
                .map(str::to_owned),
        )
    }

    fn skip_str(&mut self) -> Option<()> {
        self.str_or_null().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an archive the way pg_dump does (4-byte ints, 8-byte offsets).
    struct Archive {
        out: Vec<u8>,
    }

    impl Archive {
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
                None => self.int(-1),
            }
        }
        fn new(minor: u8, entries: &[(i64, &str, &str, &str)]) -> Self {
            let mut a = Archive { out: Vec::new() };
            a.out.extend_from_slice(b"PGDMP");
            a.out.extend_from_slice(&[1, minor, 0, 4, 8, FORMAT_CUSTOM]);
            if minor >= 15 {
                a.out.push(0);
            } else {
                a.int(0);
            }
            for v in [1, 2, 3, 4, 5, 126, 0] {
                a.int(v);
            }
            for s in ["shop", "15.8", "15.8"] {
                a.str(Some(s));
            }
            a.int(entries.len() as i64);
            for &(id, desc, ns, tag) in entries {
                a.int(id);
                a.int(1);
                a.str(Some("1259"));
                a.str(Some("16384"));
                a.str(Some(tag));
                a.str(Some(desc));
                a.int(3);
                a.str(Some("CREATE FUNCTION f() … a long body with \n newlines"));
                a.str(Some(""));
                a.str(Some("COPY x FROM stdin;\n"));
                a.str(Some(ns));
                a.str(None);
                if minor >= 14 {
                    a.str(Some("heap"));
                }
                if minor >= 16 {
                    a.int(114);
                }
                a.str(Some("owner"));
                a.str(Some("false"));
                a.str(Some("7"));
                a.str(Some("12"));
                a.str(None);
                a.out.push(2);
                a.out.extend_from_slice(&[0; 8]);
            }
            a
        }
        fn table(&mut self, id: i64, rows: &[&str], end_marker: bool) {
            self.out.push(BLK_DATA);
            self.int(id);
            for row in rows {
                self.int(row.len() as i64);
                self.out.extend_from_slice(row.as_bytes());
            }
            if end_marker {
                self.int(COPY_END.len() as i64);
                self.out.extend_from_slice(COPY_END);
            }
            self.int(0);
        }
    }

    fn entries() -> Vec<(i64, &'static str, &'static str, &'static str)> {
        vec![
            (5, "TABLE", "public", "accounts"),
            (7, "TABLE DATA", "public", "accounts"),
            (8, "TABLE DATA", "shop", "orders"),
            (9, "TABLE DATA", "shop", "empty"),
            (10, "BLOBS", "", "BLOBS"),
            (11, "SEQUENCE SET", "public", "s"),
        ]
    }

    fn sample(minor: u8, end_marker: bool) -> Vec<u8> {
        let mut a = Archive::new(minor, &entries());
        a.table(
            7,
            &["1\talice\n", "2\tbob\\nsmith\n", "3\t\\\\.\n"],
            end_marker,
        );
        a.table(8, &["1\n", "2\n"], end_marker);
        a.table(9, &[], end_marker);
        // Large objects: one block, two objects, the second in two chunks.
        a.out.push(BLK_BLOBS);
        a.int(10);
        a.int(16400);
        a.int(3);
        a.out.extend_from_slice(b"a\nb");
        a.int(0);
        a.int(16401);
        a.int(2);
        a.out.extend_from_slice(b"\n\n");
        a.int(1);
        a.out.extend_from_slice(b"\n");
        a.int(0);
        a.int(0);
        a.out
    }

    fn expected() -> BTreeMap<String, i64> {
        [
            ("public.accounts".to_string(), 3),
            ("shop.orders".to_string(), 2),
            ("shop.empty".to_string(), 0),
        ]
        .into()
    }

    fn counted(bytes: &[u8], piece: usize) -> Result<BTreeMap<String, i64>, Unreadable> {
        let mut c = RowCounter::new();
        for p in bytes.chunks(piece) {
            c.feed(p);
        }
        c.finish()
    }

    #[test]
    fn counts_rows_of_every_version_in_pieces_of_any_size() {
        for minor in MINOR_VERSIONS {
            for end_marker in [true, false] {
                let bytes = sample(minor, end_marker);
                for piece in [1, 2, 3, 5, 7, 64, 1 << 20] {
                    assert_eq!(
                        counted(&bytes, piece),
                        Ok(expected()),
                        "1.{minor}, end marker {end_marker}, pieces of {piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_zero_column_tables_empty_rows_count() {
        // A zero-column table's rows are empty lines (and its data ends with the marker).
        let mut a = Archive::new(16, &[(3, "TABLE DATA", "public", "nocols")]);
        a.table(3, &["\n", "\n", "\n", "\n"], true);
        assert_eq!(
            counted(&a.out, 3),
            Ok([("public.nocols".to_string(), 4)].into())
        );
    }

    #[test]
    fn dotted_names_have_keys_of_their_own() {
        // `"a.b"."c"` and `"a"."b.c"` have keys of their own (issue #32): both counted.
        let mut a = Archive::new(
            16,
            &[
                (3, "TABLE DATA", "a.b", "c"),
                (4, "TABLE DATA", "a", "b.c"),
                (5, "TABLE DATA", "public", "t"),
            ],
        );
        a.table(3, &["1\n"], false);
        a.table(4, &["1\n", "2\n"], false);
        a.table(5, &["1\n"], false);
        assert_eq!(
            counted(&a.out, 64),
            Ok([
                ("\"a.b\".c".to_string(), 1),
                ("a.\"b.c\"".to_string(), 2),
                ("public.t".to_string(), 1)
            ]
            .into())
        );
    }

    #[test]
    fn what_it_does_not_understand_stops_counting_with_a_reason() {
        let unknown = |bytes: Vec<u8>, why: &str| {
            let err = counted(&bytes, 4096).unwrap_err();
            assert!(err.0.contains(why), "{err} should say {why}");
        };
        let mut future = sample(16, false);
        future[6] = 17;
        unknown(future, "version 1.17");
        unknown(b"-- plain SQL\n".repeat(3), "PGDMP");
        let mut compressed = sample(15, false);
        compressed[11] = 1;
        unknown(compressed, "compressed");
        let mut bad_block = sample(16, false);
        bad_block.push(9);
        unknown(bad_block, "unknown block type 9");
        let mut truncated = sample(16, false);
        truncated.truncate(truncated.len() - 7);
        unknown(truncated, "ended inside");
        let toc_only = Archive::new(16, &entries()).out;
        let cut = toc_only.len() / 2;
        unknown(toc_only[..cut].to_vec(), "TOC");
    }

    #[test]
    fn an_oversized_entry_stops_counting_instead_of_growing() {
        let mut a = Archive { out: Vec::new() };
        a.out.extend_from_slice(&Archive::new(16, &[]).out);
        // A header claiming one entry, then more bytes than MAX_ENTRY without its end.
        let n = a.out.len();
        a.out[n - 5..].copy_from_slice(&[0, 1, 0, 0, 0]);
        a.int(1);
        a.int(0);
        a.int(MAX_ENTRY as i64 * 2);
        let mut c = RowCounter::new();
        c.feed(&a.out);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(MAX_ENTRY >> 20) + 1 {
            c.feed(&chunk);
        }
        assert!(c.pending.len() < MAX_ENTRY + (2 << 20));
        let err = c.finish().unwrap_err();
        assert!(err.0.contains("larger than"), "{err}");
    }
}
