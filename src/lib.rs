//! Palisade: a tenant isolation control plane for Kubernetes.
//!
//! Layout: [`crd`] holds the three kinds; [`resources`] the pure builders that turn
//! a spec into desired Kubernetes objects; [`controller`] the reconcilers (the only
//! API callers besides [`apply`], the one writer of children).

pub mod apidoc;
pub mod apply;
pub mod backup;
pub mod config;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod diff;
pub mod duration;
pub mod metrics;
pub mod operator_rbac;
pub mod quantity;
pub mod render;
pub mod resources;
pub mod runtime;
