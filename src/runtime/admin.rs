//! The admin HTTP server: `/livez`, `/readyz` and `/metrics` on `--admin-addr`
//! (default `0.0.0.0:8080`).
//!
//! * `/livez` is 200 while the process runs its loops; 503 once it has decided
//!   to exit (shutting down, caches that did not sync within `--sync-timeout`,
//!   default 5m, or lost leadership with `--exit-on-lost-leadership`), so a
//!   wedged process is restarted. A leader that lost its Lease stops its
//!   controllers and campaigns again in-process: it stays live.
//! * `/readyz` is 200 when this replica does what it should: "leading and
//!   synced", or "standing by, healthy". A **standby** (also a former leader
//!   campaigning again) is ready once it has reached the API server and read
//!   the Lease (it serves metrics, with `palisade_leader 0`); the **leader**
//!   (or the only replica, without leader election) is ready once every cache
//!   (the Tenant store and every child cache) has synced and the controllers
//!   run. Right after a takeover the new leader is briefly not ready while its
//!   caches sync (their lists skip the client rate limit, 16 at a time, so
//!   that takes as long as the API server needs to answer them).
//! * `/metrics` is the Prometheus text format of [`Metrics`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Liveness and readiness, shared by the runtime and the admin server.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    live: AtomicBool,
    ready: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::new(HealthInner {
                live: AtomicBool::new(true),
                ready: AtomicBool::new(false),
            }),
        }
    }
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    pub fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::SeqCst);
    }

    pub fn live(&self) -> bool {
        self.inner.live.load(Ordering::SeqCst)
    }
}

/// Answers one admin request (pure routing; the server below only does I/O).
pub fn respond(
    method: &Method,
    path: &str,
    health: &Health,
    metrics: &Metrics,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
    }
    let flag = |ok: bool, what: &str| {
        if ok {
            (StatusCode::OK, TEXT, "ok\n".to_string())
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not {what}\n"),
            )
        }
    };
    match path {
        "/livez" | "/healthz" => flag(health.live(), "live"),
        "/readyz" => flag(health.ready() && health.live(), "ready"),
        "/metrics" => match metrics.encode() {
            Ok(body) => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            ),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "could not encode metrics\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

/// A bound (not yet serving) admin server.
pub struct AdminServer {
    listener: TcpListener,
}

impl AdminServer {
    /// Binds `addr` (use port 0 in tests and read [`AdminServer::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires; open connections are closed gracefully.
    pub async fn serve(self, health: Health, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "admin server: accept failed");
                        continue;
                    }
                },
            };
            let (health, metrics, shutdown) = (health.clone(), metrics.clone(), shutdown.clone());
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (status, content_type, body) =
                        respond(req.method(), req.uri().path(), &health, &metrics);
                    let body = if req.method() == Method::HEAD {
                        String::new()
                    } else {
                        body
                    };
                    let resp = Response::builder()
                        .status(status)
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    std::future::ready(Ok::<_, Infallible>(resp))
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => if let Err(e) = res {
                        debug!(%peer, error = %e, "admin connection ended");
                    },
                    () = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
        while conns.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let h = Health::default();
        let m = Metrics::new();
        let get = |p: &str| respond(&Method::GET, p, &h, &m).0;
        assert_eq!(get("/livez"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        h.set_ready(true);
        assert_eq!(get("/readyz"), StatusCode::OK);
        h.set_live(false);
        assert_eq!(get("/livez"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/metrics"), StatusCode::OK);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&Method::POST, "/livez", &h, &m).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
