//! Palisade: a tenant isolation control plane for Kubernetes.
pub mod backup;
pub mod crd;
