//! The snapshot engine: streaming, compressed, encrypted PostgreSQL snapshots to S3 or a
//! directory, restore, restore tests (verify), list and retention (prune).
//!
//! Layout, each module using only those listed before it:
//! [`format`] (encrypted chunk format), [`manifest`] (JSON beside each snapshot),
//! [`retention`], [`schedule`] and [`budget`] (pure decisions: retention, schedules,
//! memory per compression level), [`profile`] (per-stage time),
//! [`result`] (the signed one-line result the controller reads), [`secret_file`]
//! (secrets from files), [`pg`] (PostgreSQL connections and client programs),
//! [`destination`] (where snapshots live: one file per backend, with its key scheme,
//! Job mounts, flags and object operations), [`error`] (the engine's error type),
//! [`catalog`] (manifests, snapshot choice, list, prune), [`engine`] (run and restore
//! pipelines), [`verify`] (restore test), [`cli`] (flags, config, output). See
//! `docs/BACKUP.md`.

pub mod budget;
pub mod catalog;
pub mod cli;
pub mod destination;
pub mod engine;
pub mod error;
pub mod format;
pub mod manifest;
pub mod pg;
pub mod profile;
pub mod result;
pub mod retention;
pub mod rows;
pub mod schedule;
pub mod secret_file;
pub mod verify;
