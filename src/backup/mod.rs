//! The snapshot engine: streaming, compressed, encrypted PostgreSQL snapshots to S3 or a
//! directory, restore, restore tests (verify), list and retention (prune).
//!
//! Layout: [`format`] (encrypted chunk format), [`manifest`] (JSON beside each
//! snapshot), [`storage`] (filesystem / S3 backends), [`pg`] (PostgreSQL connections and
//! client programs), [`engine`] (run and restore pipelines), [`verify`] (restore test),
//! [`catalog`] (list, prune), [`profile`] (per-stage time), [`retention`] (pure selection), [`cli`] (flags, config,
//! output). See `docs/BACKUP.md`.

pub mod catalog;
pub mod cli;
pub mod engine;
pub mod format;
pub mod manifest;
pub mod pg;
pub mod profile;
pub mod result;
pub mod retention;
pub mod schedule;
pub mod storage;
pub mod verify;
