//! Palisade: a tenant isolation control plane for Kubernetes.
