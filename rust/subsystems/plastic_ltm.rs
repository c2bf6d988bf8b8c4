//! Plastic long-term memory: records that must outlive the process, kept in an embedded ACID
//! store (redb) so a crash mid-write never leaves a half-written memory behind.
//!
//! Every record carries its own blake3 digest, because redb's page checksums only protect the
//! file while redb reads it: they say nothing about a record that was written wrong, or about a
//! value edited through the table itself. The digest lets `retrieve` refuse such a record and
//! lets `integrity` report how much of the store can still be trusted.
//!
//! This module knows nothing of Python; the binding layer wraps it.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableError,
};

/// Fixed so that every process (and every version of the binding) finds the same store inside
/// a data directory without having to be told the file name.
pub const FILE_NAME: &str = "plastic_ltm.redb";

/// Records: id -> one encoded record (see [`encode_record`]).
///
/// The value is a plain `&[u8]` that this module frames itself, rather than a redb tuple such as
/// `(&[u8], &str, [u8; 32])`. redb decodes its composite types by trusting the stored bytes
/// (varint lengths, UTF-8 and fixed widths are unwrapped, slices are indexed unchecked), so a
/// malformed value would panic inside redb. Owning the framing lets a bad record be reported as
/// corrupt instead, and the leading version byte lets the layout evolve without renaming the
/// table (a changed redb tuple type would make the table unopenable).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("plastic_ltm.records");

/// Bookkeeping that must change atomically with the records, such as the next id.
const META: TableDefinition<&str, u64> = TableDefinition::new("plastic_ltm.meta");

/// Scratch space for the health probe, kept apart so probing can never touch a record.
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("plastic_ltm.probe");

/// Key in [`META`] holding the id the next `store` hands out.
const NEXT_ID_KEY: &str = "next_id";

/// Version byte that starts every encoded record.
const RECORD_FORMAT_V1: u8 = 1;

/// Encoded record header: version byte, 32-byte digest, little-endian u64 data length.
const RECORD_HEADER_LEN: usize = 1 + 32 + 8;

/// blake3 key-derivation context, so a record digest can never be confused with any other
/// blake3 hash the project computes over the same bytes.
const DIGEST_CONTEXT: &str = "phoenix plastic_ltm v1 record digest";

/// At most this many of the most recent records are verified by one `integrity` call.
const VERIFY_MAX_RECORDS: usize = 1024;

/// Verification stops once this much time is spent, so `integrity` stays cheap on big stores.
const VERIFY_BUDGET: Duration = Duration::from_millis(50);

/// The page cache redb may fill. Its default (1 GiB) is sized for a database that is the
/// process's main job; here the workload is appends and point reads of recent records, and the
/// process hosts other subsystems, so a modest cap is enough.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Metadata is ordered so that its digest, and its JSON form, do not depend on insertion order.
pub type Metadata = BTreeMap<String, String>;

/// Failures of the long-term memory, kept few and coarse so callers (and the Python layer) can
/// decide what to do without knowing redb: reopen, report corruption, or give up.
#[derive(Debug, thiserror::Error)]
pub enum LtmError {
    /// The store could not be made usable; the path tells the operator where to look.
    #[error("cannot open long-term memory at {}: {reason}", path.display())]
    Open {
        /// The directory or file that could not be opened.
        path: PathBuf,
        /// A short description of why.
        reason: String,
    },
    /// A read or write against an open store failed; the store may recover on its own (e.g.
    /// disk space freed) or may need reopening.
    #[error("long-term memory storage failed: {reason}")]
    Storage {
        /// A short description of what failed.
        reason: String,
    },
    /// This record's bytes no longer match the digest written with them, so its contents must
    /// not be trusted; other records are unaffected.
    #[error("long-term memory record {id} is corrupt")]
    Corrupt {
        /// The id of the record that failed verification.
        id: u64,
    },
}

/// Result of a health check, split into its parts so a caller can tell a store that cannot
/// write (probe) from one holding damaged records (corrupt) and log both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Integrity {
    /// One number for dashboards and thresholds: 0.0 when the store cannot complete a
    /// write/read/delete round trip, otherwise the share of verified records that are intact
    /// (1.0 when there was nothing to verify).
    pub metric: f64,
    /// Whether a real write, read and delete went through, i.e. the store can still take new
    /// memories.
    pub probe_ok: bool,
    /// How many of the most recent records were checked; fewer than the store holds when the
    /// record limit or the time budget was reached.
    pub verified: u64,
    /// How many of the checked records failed their digest or could not be decoded.
    pub corrupt: u64,
    /// The newest record that failed (records are checked newest first), for the log line.
    pub newest_corrupt: Option<u64>,
}

/// Handle on the store, shared across threads (redb serialises writers itself, readers run
/// concurrently), so callers need no lock of their own.
pub struct PlasticLtm {
    db: Database,
    /// The store file, kept for diagnostics.
    path: PathBuf,
    /// Distinguishes concurrent probes of this handle, so one probe never reads another's value.
    probe_seq: AtomicU64,
}

impl std::fmt::Debug for PlasticLtm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlasticLtm").field("path", &self.path).finish_non_exhaustive()
    }
}

// The handle is shared through `Arc` across threads: fail the build, not a caller, if a field
// ever makes it lose `Send` or `Sync`.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PlasticLtm>();
};

impl PlasticLtm {
    /// Opens (creating if needed) the store in `data_dir`, so callers only ever deal with a
    /// directory and never with redb's file handling.
    ///
    /// One process owns the store: redb locks the file, and a second `open` of the same
    /// directory, from another process or from this one while a handle is alive, fails with
    /// [`LtmError::Open`]. Share one handle through `Arc` instead.
    ///
    /// The whole file is checked on open (every page checksum), because redb's plain open trusts
    /// the file and may panic on one damaged outside redb; a bad file must be an error instead.
    /// The cost is a read of the file at start-up, and one damaged page makes the whole store
    /// fail to open rather than risk a panic later. As a last guard, a panic inside redb during
    /// open is caught and reported as an error (this does not help if the build aborts on panic).
    pub fn open(data_dir: &Path) -> Result<Self, LtmError> {
        std::fs::create_dir_all(data_dir).map_err(|err| LtmError::Open {
            path: data_dir.to_path_buf(),
            reason: if data_dir.exists() && !data_dir.is_dir() {
                "not a directory".to_string()
            } else {
                err.to_string()
            },
        })?;
        let path = data_dir.join(FILE_NAME);
        let open_error = |reason: String| LtmError::Open { path: path.clone(), reason };

        let opened = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut builder = Builder::new();
            builder.set_check_integrity_on_open(true).set_cache_size(CACHE_BYTES);
            builder.create(&path)
        }));
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(err)) => return Err(open_error(describe(err.into()))),
            Err(_) => return Err(open_error("the store file is unreadable".to_string())),
        };

        initialise_tables(&db).map_err(|err| open_error(describe(err)))?;
        log::debug!("plastic_ltm: opened {}", path.display());
        Ok(Self { db, path, probe_seq: AtomicU64::new(0) })
    }

    /// Keeps a memory for later; the id is what the caller holds on to, and the record is on
    /// disk (durable commit) before the id is returned, so an id is never handed out for a
    /// memory a crash could lose.
    ///
    /// Ids start at 1, increase with every call and are never reused.
    pub fn store(&self, data: &[u8], metadata: &Metadata) -> Result<u64, LtmError> {
        let metadata_json = serde_json::to_vec(metadata)
            .map_err(|err| LtmError::Storage { reason: format!("metadata could not be encoded: {err}") })?;
        let digest = record_digest(data, metadata);
        let record = encode_record(&digest, data, &metadata_json);

        let mut txn = self.db.begin_write().map_err(storage_error)?;
        txn.set_durability(Durability::Immediate).map_err(storage_error)?;
        let id = {
            let mut meta = txn.open_table(META).map_err(storage_error)?;
            let mut records = txn.open_table(RECORDS).map_err(storage_error)?;
            let counted = meta.get(NEXT_ID_KEY).map_err(storage_error)?.map_or(1, |guard| guard.value());
            // The counter is authoritative, but never hand out an id at or below an existing
            // record, even if the counter were lost.
            let after_last =
                records.last().map_err(storage_error)?.map_or(1, |(key, _)| key.value().saturating_add(1));
            let id = counted.max(after_last).max(1);
            let next = id
                .checked_add(1)
                .ok_or_else(|| LtmError::Storage { reason: "no record ids left".to_string() })?;
            records.insert(id, record.as_slice()).map_err(storage_error)?;
            meta.insert(NEXT_ID_KEY, next).map_err(storage_error)?;
            id
        };
        txn.commit().map_err(storage_error)?;
        Ok(id)
    }

    /// Gives back a memory only if it is intact: a record that fails its digest is reported as
    /// [`LtmError::Corrupt`] rather than returned, so damaged data never silently flows on.
    /// An id that was never stored is `Ok(None)`, which is not an error.
    pub fn retrieve(&self, id: u64) -> Result<Option<(Vec<u8>, Metadata)>, LtmError> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        let records = match txn.open_table(RECORDS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(storage_error(err)),
        };
        let Some(guard) = records.get(id).map_err(storage_error)? else {
            return Ok(None);
        };
        match decode_verified(guard.value()) {
            Some(record) => Ok(Some((record.data.to_vec(), record.metadata))),
            None => {
                log::warn!("plastic_ltm: record {id} failed verification");
                Err(LtmError::Corrupt { id })
            }
        }
    }

    /// Number of stored records, for reporting and for sizing decisions.
    pub fn len(&self) -> Result<u64, LtmError> {
        let txn = self.db.begin_read().map_err(storage_error)?;
        match txn.open_table(RECORDS) {
            Ok(records) => records.len().map_err(storage_error),
            Err(TableError::TableDoesNotExist(_)) => Ok(0),
            Err(err) => Err(storage_error(err)),
        }
    }

    /// Companion of [`Self::len`], so callers need not compare with zero.
    pub fn is_empty(&self) -> Result<bool, LtmError> {
        Ok(self.len()? == 0)
    }

    /// How many write/read/delete probes this handle has run: each one is disk work (two durable
    /// commits), which is why the kernel runs them on a fixed period rather than per request.
    pub fn probes_run(&self) -> u64 {
        self.probe_seq.load(Ordering::Relaxed)
    }

    /// Cheap, bounded health check for periodic monitoring: proves the store can still commit
    /// (a write/read/delete probe in real transactions) and re-verifies the digests of the most
    /// recent records (at most 1024, and at most about 50 ms of verification), so it can run
    /// often even on a big store. redb's full `check_integrity` is deliberately not used: it
    /// reads the whole file and fails while any transaction is alive.
    ///
    /// A failed probe is reported in the result, not as an error; `Err` means the records could
    /// not be read at all.
    pub fn integrity(&self) -> Result<Integrity, LtmError> {
        self.integrity_within(VERIFY_MAX_RECORDS, VERIFY_BUDGET)
    }

    fn integrity_within(&self, max_records: usize, budget: Duration) -> Result<Integrity, LtmError> {
        let probe_ok = match self.probe() {
            Ok(()) => true,
            Err(err) => {
                log::warn!("plastic_ltm: write/read/delete probe failed: {err}");
                false
            }
        };
        let verification = self.verify_recent(max_records, budget)?;
        if let Some(summary) = verification.summary() {
            log::warn!("plastic_ltm: {summary}");
        }
        let Verification { verified, corrupt, newest_corrupt, .. } = verification;
        Ok(Integrity {
            metric: integrity_metric(probe_ok, verified, corrupt),
            probe_ok,
            verified,
            corrupt,
            newest_corrupt,
        })
    }

    /// Writes a fresh value, reads it back in a separate read transaction, deletes it and checks
    /// it is gone: each step is a real commit, so this fails when the store can no longer write.
    fn probe(&self) -> Result<(), LtmError> {
        let key = self.probe_seq.fetch_add(1, Ordering::Relaxed);
        let token = probe_token(key);

        let txn = self.db.begin_write().map_err(storage_error)?;
        {
            let mut probe = txn.open_table(PROBE).map_err(storage_error)?;
            probe.insert(key, token.as_slice()).map_err(storage_error)?;
        }
        txn.commit().map_err(storage_error)?;

        let read_back = {
            let txn = self.db.begin_read().map_err(storage_error)?;
            let probe = txn.open_table(PROBE).map_err(storage_error)?;
            let guard = probe.get(key).map_err(storage_error)?;
            guard.map(|value| value.value() == token.as_slice())
        };

        let txn = self.db.begin_write().map_err(storage_error)?;
        {
            let mut probe = txn.open_table(PROBE).map_err(storage_error)?;
            probe.remove(key).map_err(storage_error)?;
        }
        txn.commit().map_err(storage_error)?;

        let still_there = {
            let txn = self.db.begin_read().map_err(storage_error)?;
            let probe = txn.open_table(PROBE).map_err(storage_error)?;
            let present = probe.get(key).map_err(storage_error)?;
            present.is_some()
        };

        match (read_back, still_there) {
            (Some(true), false) => Ok(()),
            (Some(true), true) => Err(probe_failure("the probe value survived its deletion")),
            (Some(false), _) => Err(probe_failure("the probe value read back differently")),
            (None, _) => Err(probe_failure("the probe value was not found after commit")),
        }
    }

    /// Checks the newest records first, because those are the ones most likely to be read next
    /// and the ones a failing disk most recently touched.
    fn verify_recent(&self, max_records: usize, budget: Duration) -> Result<Verification, LtmError> {
        let started = Instant::now();
        let mut verification = Verification::default();
        let txn = self.db.begin_read().map_err(storage_error)?;
        let records = match txn.open_table(RECORDS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(verification),
            Err(err) => return Err(storage_error(err)),
        };
        for entry in records.iter().map_err(storage_error)?.rev().take(max_records) {
            verification.verified += 1;
            match entry {
                Ok((key, value)) => {
                    if decode_verified(value.value()).is_none() {
                        verification.corrupt += 1;
                        verification.newest_corrupt.get_or_insert(key.value());
                    }
                }
                Err(err) => {
                    // The tree itself could not be walked: count the unreadable entry and stop,
                    // since the iterator's position can no longer be trusted.
                    verification.corrupt += 1;
                    verification.unreadable = Some(describe(err.into()));
                    break;
                }
            }
            // Checked after each record, so at least one record is verified whatever the budget.
            if started.elapsed() >= budget {
                break;
            }
        }
        Ok(verification)
    }
}

/// What one pass of [`PlasticLtm::verify_recent`] found.
#[derive(Debug, Default)]
struct Verification {
    verified: u64,
    corrupt: u64,
    newest_corrupt: Option<u64>,
    /// Why the walk stopped early, when the records' tree could not be read further.
    unreadable: Option<String>,
}

impl Verification {
    /// One line for the whole pass, or `None` when every record verified: a damaged store checked
    /// every second must not write a line per bad record.
    fn summary(&self) -> Option<String> {
        if self.corrupt == 0 {
            return None;
        }
        let mut line =
            format!("{} of the {} newest records failed verification", self.corrupt, self.verified);
        if let Some(id) = self.newest_corrupt {
            line.push_str(&format!(", the newest of them record {id}"));
        }
        if let Some(why) = &self.unreadable {
            line.push_str(&format!("; stopped at an unreadable entry: {why}"));
        }
        Some(line)
    }
}

/// Creates the tables up front, so readers can open them without a write having happened, and
/// clears probe values a crash may have left behind.
fn initialise_tables(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(RECORDS)?;
    txn.open_table(META)?;
    txn.delete_table(PROBE)?;
    txn.open_table(PROBE)?;
    txn.commit()?;
    Ok(())
}

fn integrity_metric(probe_ok: bool, verified: u64, corrupt: u64) -> f64 {
    if !probe_ok {
        0.0
    } else if verified == 0 {
        1.0
    } else {
        verified.saturating_sub(corrupt) as f64 / verified as f64
    }
}

/// A value that differs between probes and between runs, so a stale value left in the file can
/// never pass for a fresh read.
fn probe_token(key: u64) -> [u8; 32] {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    let mut hasher = blake3::Hasher::new();
    hasher.update(&key.to_le_bytes());
    hasher.update(&nanos.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    *hasher.finalize().as_bytes()
}

fn probe_failure(reason: &str) -> LtmError {
    LtmError::Storage { reason: reason.to_string() }
}

/// Digest over the logical record, not its stored bytes, so it stays valid whatever the storage
/// encoding. Every field is length-prefixed, so moving bytes between data, keys and values
/// always changes the digest.
fn record_digest(data: &[u8], metadata: &Metadata) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    hasher.update(&(data.len() as u64).to_le_bytes());
    hasher.update(data);
    hasher.update(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(key.as_bytes());
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// Layout (v1): `[version = 1][digest: 32 bytes][data length: u64 LE][data][metadata JSON]`.
/// The metadata runs to the end, so only the data needs a length.
fn encode_record(digest: &[u8; 32], data: &[u8], metadata_json: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN + data.len() + metadata_json.len());
    record.push(RECORD_FORMAT_V1);
    record.extend_from_slice(digest);
    record.extend_from_slice(&(data.len() as u64).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(metadata_json);
    record
}

struct DecodedRecord<'a> {
    data: &'a [u8],
    metadata: Metadata,
}

/// Decodes a stored record and checks its digest; `None` for anything malformed or mismatched,
/// using only checked arithmetic and slicing, so no stored bytes can cause a panic.
fn decode_verified(bytes: &[u8]) -> Option<DecodedRecord<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != RECORD_FORMAT_V1 {
        return None;
    }
    let stored_digest: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let data_len_bytes: [u8; 8] = rest.get(32..40)?.try_into().ok()?;
    let data_len = usize::try_from(u64::from_le_bytes(data_len_bytes)).ok()?;
    let body = rest.get(40..)?;
    let data = body.get(..data_len)?;
    let metadata_json = body.get(data_len..)?;
    let metadata: Metadata = serde_json::from_slice(metadata_json).ok()?;
    if record_digest(data, &metadata) != stored_digest {
        return None;
    }
    Some(DecodedRecord { data, metadata })
}

fn storage_error(err: impl Into<redb::Error>) -> LtmError {
    LtmError::Storage { reason: describe(err.into()) }
}

/// Short, human descriptions of redb errors. redb's own texts can carry source locations and
/// internal detail; those go to the log, not into the error a user sees.
fn describe(err: redb::Error) -> String {
    log::debug!("plastic_ltm: redb error: {err}");
    match err {
        redb::Error::Io(io) => format!("I/O error: {io}"),
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            "the store is already open (one process owns it)".to_string()
        }
        redb::Error::Corrupted(_) => "the store file is corrupted or not a redb file".to_string(),
        redb::Error::UpgradeRequired(_) => "the store file uses an unsupported format".to_string(),
        redb::Error::ValueTooLarge(_) => "the record is too large".to_string(),
        redb::Error::RepairAborted => "the store file needed a repair that failed".to_string(),
        redb::Error::PreviousIo | redb::Error::DatabaseClosed => {
            "an earlier I/O error left the store unusable until it is reopened".to_string()
        }
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => {
            "the store file has an incompatible layout".to_string()
        }
        _ => "internal storage error".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
            let path = std::env::temp_dir()
                .join(format!("plastic_ltm_test_{label}_{}_{nanos}_{unique}", std::process::id()));
            std::fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn meta(pairs: &[(&str, &str)]) -> Metadata {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    /// Overwrites a stored record's bytes directly, bypassing `store`.
    fn overwrite_record(ltm: &PlasticLtm, id: u64, bytes: &[u8]) {
        let txn = ltm.db.begin_write().unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            records.insert(id, bytes).unwrap();
        }
        txn.commit().unwrap();
    }

    /// Reads a stored record's raw bytes directly.
    fn raw_record(ltm: &PlasticLtm, id: u64) -> Vec<u8> {
        let txn = ltm.db.begin_read().unwrap();
        let records = txn.open_table(RECORDS).unwrap();
        let guard = records.get(id).unwrap().expect("record exists");
        guard.value().to_vec()
    }

    /// Keeps the stored digest but changes one data byte, as silent corruption would.
    fn tamper_with_data(ltm: &PlasticLtm, id: u64) {
        let mut bytes = raw_record(ltm, id);
        bytes[RECORD_HEADER_LEN] ^= 0xff;
        overwrite_record(ltm, id, &bytes);
    }

    #[test]
    fn store_then_retrieve_round_trips_data_and_metadata() {
        let dir = TempDir::new("round_trip");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let data = b"\x00binary\xffmemory";
        let metadata = meta(&[("kind", "episode"), ("source", "unit \"test\"")]);
        let id = ltm.store(data, &metadata).unwrap();
        let (got_data, got_meta) = ltm.retrieve(id).unwrap().expect("record present");
        assert_eq!(got_data, data);
        assert_eq!(got_meta, metadata);
    }

    #[test]
    fn empty_data_and_metadata_round_trip() {
        let dir = TempDir::new("empty_record");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let id = ltm.store(b"", &Metadata::new()).unwrap();
        assert_eq!(ltm.retrieve(id).unwrap(), Some((Vec::new(), Metadata::new())));
    }

    #[test]
    fn ids_start_at_one_and_are_unique_and_increasing() {
        let dir = TempDir::new("ids");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let ids: Vec<u64> =
            (0..5).map(|n| ltm.store(format!("m{n}").as_bytes(), &Metadata::new()).unwrap()).collect();
        assert_eq!(ids[0], 1);
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    }

    #[test]
    fn len_and_is_empty_count_stored_records() {
        let dir = TempDir::new("len");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        assert_eq!(ltm.len().unwrap(), 0);
        assert!(ltm.is_empty().unwrap());
        for n in 0..3u8 {
            ltm.store(&[n], &Metadata::new()).unwrap();
        }
        assert_eq!(ltm.len().unwrap(), 3);
        assert!(!ltm.is_empty().unwrap());
    }

    #[test]
    fn retrieve_of_unknown_id_is_none() {
        let dir = TempDir::new("unknown");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        assert_eq!(ltm.retrieve(1).unwrap(), None);
        let id = ltm.store(b"x", &Metadata::new()).unwrap();
        assert_eq!(ltm.retrieve(id + 1).unwrap(), None);
        assert_eq!(ltm.retrieve(0).unwrap(), None);
    }

    #[test]
    fn reopening_keeps_records_and_continues_ids() {
        let dir = TempDir::new("reopen");
        let metadata = meta(&[("k", "v")]);
        let first = {
            let ltm = PlasticLtm::open(dir.path()).unwrap();
            ltm.store(b"persisted", &metadata).unwrap()
        };
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        assert_eq!(ltm.len().unwrap(), 1);
        assert_eq!(ltm.retrieve(first).unwrap(), Some((b"persisted".to_vec(), metadata)));
        let second = ltm.store(b"later", &Metadata::new()).unwrap();
        assert!(second > first, "{second} should follow {first}");
    }

    #[test]
    fn second_open_while_a_handle_is_alive_is_an_error() {
        let dir = TempDir::new("locked");
        let _owner = PlasticLtm::open(dir.path()).unwrap();
        let second = PlasticLtm::open(dir.path());
        assert!(matches!(second, Err(LtmError::Open { .. })), "{second:?}");
    }

    #[test]
    fn open_creates_a_missing_data_dir() {
        let dir = TempDir::new("nested");
        let nested = dir.path().join("a").join("b");
        let ltm = PlasticLtm::open(&nested).unwrap();
        ltm.store(b"x", &Metadata::new()).unwrap();
        assert!(nested.join(FILE_NAME).is_file());
    }

    #[test]
    fn integrity_is_perfect_on_an_empty_store() {
        let dir = TempDir::new("healthy_empty");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let report = ltm.integrity().unwrap();
        assert_eq!(
            report,
            Integrity { metric: 1.0, probe_ok: true, verified: 0, corrupt: 0, newest_corrupt: None }
        );
    }

    #[test]
    fn integrity_is_perfect_on_a_healthy_store() {
        let dir = TempDir::new("healthy");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        for n in 0..10u8 {
            ltm.store(&[n; 16], &meta(&[("n", &n.to_string())])).unwrap();
        }
        let report = ltm.integrity().unwrap();
        assert!(report.probe_ok);
        assert_eq!(report.corrupt, 0);
        assert_eq!(report.verified, 10);
        assert_eq!(report.metric, 1.0);
    }

    #[test]
    fn probe_leaves_no_trace_in_the_store() {
        let dir = TempDir::new("probe_clean");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        ltm.store(b"x", &Metadata::new()).unwrap();
        ltm.integrity().unwrap();
        assert_eq!(ltm.len().unwrap(), 1);
        let txn = ltm.db.begin_read().unwrap();
        let probe = txn.open_table(PROBE).unwrap();
        assert_eq!(probe.len().unwrap(), 0);
    }

    #[test]
    fn tampered_record_lowers_integrity_and_retrieve_reports_corrupt() {
        let dir = TempDir::new("tampered");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let ids: Vec<u64> = (0..10u8).map(|n| ltm.store(&[n; 8], &meta(&[("n", "x")])).unwrap()).collect();
        tamper_with_data(&ltm, ids[4]);

        let report = ltm.integrity().unwrap();
        assert!(report.probe_ok);
        assert_eq!(report.corrupt, 1);
        assert!(report.metric < 0.95, "{report:?}");

        let err = ltm.retrieve(ids[4]).unwrap_err();
        assert!(matches!(err, LtmError::Corrupt { id } if id == ids[4]), "{err:?}");
        assert!(ltm.retrieve(ids[3]).unwrap().is_some());
    }

    #[test]
    fn tampered_metadata_is_detected() {
        let dir = TempDir::new("tampered_meta");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let id = ltm.store(b"data", &meta(&[("role", "user")])).unwrap();
        let mut bytes = raw_record(&ltm, id);
        let json_start = RECORD_HEADER_LEN + b"data".len();
        let json = String::from_utf8(bytes[json_start..].to_vec()).unwrap();
        bytes.truncate(json_start);
        bytes.extend_from_slice(json.replace("user", "root").as_bytes());
        overwrite_record(&ltm, id, &bytes);
        assert!(matches!(ltm.retrieve(id), Err(LtmError::Corrupt { .. })));
    }

    #[test]
    fn undecodable_records_count_as_corrupt_without_panicking() {
        let dir = TempDir::new("undecodable");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let id = ltm.store(b"fine", &Metadata::new()).unwrap();
        let mut huge_length = raw_record(&ltm, id);
        huge_length[33..41].copy_from_slice(&u64::MAX.to_le_bytes());
        let mut bad_json = raw_record(&ltm, id);
        bad_json.extend_from_slice(b"\xff{");
        let garbage: [&[u8]; 5] = [b"", b"\x01", b"\x02rest", &huge_length, &bad_json];
        for bytes in garbage {
            overwrite_record(&ltm, id, bytes);
            assert!(matches!(ltm.retrieve(id), Err(LtmError::Corrupt { .. })), "{bytes:?} was accepted");
            let report = ltm.integrity().unwrap();
            assert_eq!((report.verified, report.corrupt), (1, 1));
            assert_eq!(report.metric, 0.0);
        }
    }

    /// Log records written on the calling thread, so tests running in parallel do not see each
    /// other's. Installed once for the whole test binary.
    fn logged_on_this_thread(run: impl FnOnce()) -> Vec<(log::Level, String)> {
        use std::sync::Mutex;
        use std::thread::ThreadId;

        struct Capture(Mutex<Vec<(ThreadId, log::Level, String)>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata<'_>) -> bool {
                true
            }
            fn log(&self, record: &log::Record<'_>) {
                let line = (std::thread::current().id(), record.level(), record.args().to_string());
                self.0.lock().unwrap().push(line);
            }
            fn flush(&self) {}
        }
        static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));
        if log::set_logger(&CAPTURE).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }

        let me = std::thread::current().id();
        let mine = |all: &Vec<(ThreadId, log::Level, String)>| {
            all.iter().filter(|(thread, ..)| *thread == me).count()
        };
        let before = mine(&CAPTURE.0.lock().unwrap());
        run();
        let all = CAPTURE.0.lock().unwrap();
        all.iter()
            .filter(|(thread, ..)| *thread == me)
            .skip(before)
            .map(|(_, level, line)| (*level, line.clone()))
            .collect()
    }

    #[test]
    fn a_check_of_a_corrupt_store_logs_one_summary_line() {
        let dir = TempDir::new("log_summary");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let ids: Vec<u64> = (0..10u8).map(|n| ltm.store(&[n; 8], &Metadata::new()).unwrap()).collect();
        for &id in &ids[2..7] {
            tamper_with_data(&ltm, id);
        }
        let mut report = None;
        let warnings: Vec<String> = logged_on_this_thread(|| report = Some(ltm.integrity().unwrap()))
            .into_iter()
            .filter(|(level, _)| *level <= log::Level::Warn)
            .map(|(_, line)| line)
            .collect();
        assert_eq!(
            warnings,
            ["plastic_ltm: 5 of the 10 newest records failed verification, the newest of them record 7"]
        );
        let report = report.unwrap();
        assert_eq!((report.corrupt, report.newest_corrupt), (5, Some(ids[6])));
    }

    #[test]
    fn verification_checks_only_the_most_recent_records_up_to_the_limit() {
        let dir = TempDir::new("limit");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        let ids: Vec<u64> = (0..5u8).map(|n| ltm.store(&[n], &Metadata::new()).unwrap()).collect();
        tamper_with_data(&ltm, ids[0]);
        let report = ltm.integrity_within(3, Duration::from_secs(3600)).unwrap();
        assert_eq!((report.verified, report.corrupt), (3, 0));

        tamper_with_data(&ltm, ids[4]);
        let report = ltm.integrity_within(3, Duration::from_secs(3600)).unwrap();
        assert_eq!((report.verified, report.corrupt), (3, 1));
    }

    #[test]
    fn verification_stops_when_the_time_budget_is_spent() {
        let dir = TempDir::new("budget");
        let ltm = PlasticLtm::open(dir.path()).unwrap();
        for n in 0..5u8 {
            ltm.store(&[n], &Metadata::new()).unwrap();
        }
        let report = ltm.integrity_within(1024, Duration::ZERO).unwrap();
        assert_eq!(report.verified, 1);
        assert!(report.probe_ok);
    }

    #[test]
    fn failed_probe_forces_the_metric_to_zero() {
        assert_eq!(integrity_metric(false, 10, 0), 0.0);
        assert_eq!(integrity_metric(true, 0, 0), 1.0);
        assert_eq!(integrity_metric(true, 4, 1), 0.75);
    }

    #[test]
    fn digest_framing_distinguishes_shifted_boundaries() {
        let empty = Metadata::new();
        assert_ne!(record_digest(b"ab", &empty), record_digest(b"a", &meta(&[("b", "")])));
        assert_ne!(record_digest(b"", &meta(&[("ab", "c")])), record_digest(b"", &meta(&[("a", "bc")])));
        assert_ne!(
            record_digest(b"", &meta(&[("a", "b"), ("c", "d")])),
            record_digest(b"", &meta(&[("a", "bcd")]))
        );
    }

    #[test]
    fn concurrent_stores_and_probes_from_shared_handle_do_not_collide() {
        let dir = TempDir::new("threads");
        let ltm = Arc::new(PlasticLtm::open(dir.path()).unwrap());
        let handles: Vec<_> = (0..4u8)
            .map(|thread| {
                let ltm = Arc::clone(&ltm);
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for n in 0..5u8 {
                        ids.push(ltm.store(&[thread, n], &Metadata::new()).unwrap());
                        assert!(ltm.integrity().unwrap().probe_ok);
                    }
                    ids
                })
            })
            .collect();
        let mut ids: Vec<u64> = handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        assert_eq!(ltm.len().unwrap(), 20);
    }

    #[test]
    fn opening_a_garbage_file_is_an_error() {
        let dir = TempDir::new("garbage");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let garbage: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(dir.path().join(FILE_NAME), garbage).unwrap();
        let result = PlasticLtm::open(dir.path());
        assert!(matches!(result, Err(LtmError::Open { .. })), "{result:?}");
    }

    #[test]
    fn opening_a_store_with_one_byte_damaged_on_disk_is_an_error() {
        let dir = TempDir::new("damaged");
        {
            let ltm = PlasticLtm::open(dir.path()).unwrap();
            for n in 0..50u8 {
                ltm.store(&[n; 256], &Metadata::new()).unwrap();
            }
        }
        let file = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&file).unwrap();
        // Flip one bit inside one record's data, as a failing disk would. redb's plain open
        // would accept this file; the check on open must refuse it.
        let needle = [7u8; 256];
        let at = bytes
            .windows(needle.len())
            .position(|window| window == needle)
            .expect("record bytes are stored verbatim");
        bytes[at + 100] ^= 1;
        std::fs::write(&file, bytes).unwrap();
        let result = PlasticLtm::open(dir.path());
        assert!(matches!(result, Err(LtmError::Open { .. })), "{result:?}");
    }

    #[test]
    fn opening_where_data_dir_is_a_regular_file_is_an_error() {
        let dir = TempDir::new("file_as_dir");
        let not_a_dir = dir.path().join("plain_file");
        std::fs::write(&not_a_dir, b"not a directory").unwrap();
        let err = PlasticLtm::open(&not_a_dir).expect_err("open must fail");
        assert!(matches!(err, LtmError::Open { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with("cannot open long-term memory at "), "{text}");
        assert!(text.ends_with(": not a directory"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
