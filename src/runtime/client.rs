//! Tower layers on the Kubernetes client: request metrics by verb and result,
//! and a token-bucket rate limit (client-go's QPS/burst).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::ClientBuilder;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Builds the client Palisade uses: `service` (the default kube stack in
/// production, the in-process API server in tests) behind the rate limit and
/// the request metrics.
pub fn layered<S>(
    builder: ClientBuilder<S>,
    metrics: Arc<Metrics>,
    qps: f64,
    burst: u32,
) -> ClientBuilder<ApiMetrics<RateLimit<S>>> {
    builder
        .with_layer(&RateLimitLayer::new(qps, burst))
        .with_layer(&ApiMetricsLayer::new(metrics))
}

/// Builds a client from a kube config with Palisade's layers: over HTTP/2 on
/// `http2_connections` connections ([`multiplexed`]; the controllers use
/// [`CONNECTIONS`], the leader Lease one of its own) when that is not 0 and
/// the API server is reached over TLS (it then always offers h2), else kube's
/// own stack (HTTP/1.1, one connection per watch). A kubeconfig whose
/// credentials come from an exec plugin also keeps kube's stack: only it
/// knows when an exec-issued client certificate expires.
pub fn from_config(
    config: kube::Config,
    metrics: Arc<Metrics>,
    qps: f64,
    burst: u32,
    http2_connections: usize,
) -> Result<kube::Client, kube::Error> {
    let tls = config.cluster_url.scheme_str() == Some("https");
    if http2_connections == 0 || !tls || config.auth_info.exec.is_some() {
        return Ok(layered(ClientBuilder::try_from(config)?, metrics, qps, burst).build());
    }
    Ok(layered(multiplexed(config, http2_connections)?, metrics, qps, burst).build())
}

// ---- HTTP/2 over a fixed pool of connections ------------------------------------------

/// How many connections the controller spreads its requests over. Every
/// watch is a stream: two per managed namespace (Secrets and ConfigMaps are
/// watched per namespace, never cluster-wide). kube-apiserver allows 1,000
/// concurrent streams per HTTP/2 connection (`--http2-max-streams-per-connection`,
/// the recommended options' default), and hyper waits for a free stream
/// rather than opening another connection; 32 connections carry 10,000
/// namespaces at ~625 streams each. Over HTTP/1.1 every watch was a
/// connection of its own (154 for 30 tenants, `e2e/connections.rs`).
pub const CONNECTIONS: usize = 32;

/// How often an idle HTTP/2 connection is pinged, and how long an answer
/// may take before the connection (and every watch on it) is given up: a
/// dead API server is noticed within 40 s even when no watch event is due.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

type Connection =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

use hyper_util::client::legacy::connect::HttpConnector;
use kube::client::{Body, ConfigExt};

/// One HTTP/2 connection: kube's rustls connector with h2 in ALPN, and
/// HTTP/2 only, so that concurrent first requests wait for the one
/// connection being made instead of each opening their own (with ALPN left to
/// decide, hyper cannot know a connection will be shared: 112 connections
/// for 30 tenants while converging, measured).
fn connection(config: &kube::Config) -> Result<Connection, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http();
    if let Some(name) = config.tls_server_name.as_ref() {
        let name = name
            .clone()
            .try_into()
            .map_err(kube::client::RustlsTlsError::InvalidServerName)
            .map_err(kube::Error::RustlsTls)?;
        builder =
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = builder.enable_http2().wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_keep_alive_interval(KEEP_ALIVE.0)
            .http2_keep_alive_timeout(KEEP_ALIVE.1)
            .http2_keep_alive_while_idle(true)
            .build(https),
    )
}

/// kube's client stack (base URI, retries of server errors, authentication,
/// extra headers) over [`Spread`] of `connections` HTTP/2 connections
/// (each its own hyper pool, opened on first use).
pub fn multiplexed(
    config: kube::Config,
    connections: usize,
) -> Result<
    ClientBuilder<
        impl Service<
            Request<Body>,
            Response = Response<hyper::body::Incoming>,
            Error = tower::BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    >,
    kube::Error,
> {
    let connections = (0..connections.max(1))
        .map(|_| connection(&config))
        .collect::<Result<Vec<_>, _>>()?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| {
            tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())
        }))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(Spread::new(connections));
    Ok(ClientBuilder::new(service, config.default_namespace))
}

/// Routes each request to one of its services (connections) by the
/// namespace it addresses (else its path): a namespace's watches and
/// requests share a connection, and namespaces spread evenly.
#[derive(Clone)]
pub struct Spread<S> {
    services: Arc<[S]>,
}

impl<S> Spread<S> {
    pub fn new(services: Vec<S>) -> Self {
        Self {
            services: services.into(),
        }
    }
}

/// The index among `n` a request for `uri` goes to.
pub fn route(uri: &http::Uri, n: usize) -> usize {
    let path = uri.path();
    let key = path
        .split_once("/namespaces/")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
        .unwrap_or(path);
    (crate::resources::fnv1a(key.as_bytes()) % n.max(1) as u64) as usize
}

impl<S, B> Service<Request<B>> for Spread<S>
where
    S: Service<Request<B>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tower::util::Oneshot<S, Request<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the connection it picks (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let i = route(req.uri(), self.services.len());
        tower::ServiceExt::oneshot(self.services[i].clone(), req)
    }
}

// ---- request metrics ----------------------------------------------------------------

/// Counts every API request in `palisade_api_requests_total{verb,result}`.
#[derive(Clone)]
pub struct ApiMetricsLayer {
    metrics: Arc<Metrics>,
}

impl ApiMetricsLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ApiMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for ApiMetrics<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verb = verb_of(req.method(), req.uri());
        let resource = resource_of(req.uri().path());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let result = match &res {
                Ok(r) => match r.status().as_u16() {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                },
                Err(_) => "error",
            };
            metrics.api_request(verb, &resource, result);
            res
        })
    }
}

/// The Kubernetes verb of a request (bounded: get, list, watch, create,
/// update, patch, delete, deletecollection, other).
pub fn verb_of(method: &Method, uri: &http::Uri) -> &'static str {
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    let collection = is_collection(uri.path());
    match *method {
        Method::GET if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The resource a request addresses, with its subresource: `configmaps`,
/// `tenants/status`, `namespaces`; `other` for discovery and non-resource
/// paths. Bounded by the kinds Palisade touches.
pub fn resource_of(path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..),
        Some(&"apis") => segs.get(3..),
        _ => None,
    };
    let rest = match rest {
        // A namespace's own subresources, not a collection inside it.
        Some(["namespaces", _, sub @ ("status" | "finalize")]) => {
            return format!("namespaces/{sub}");
        }
        Some(["namespaces", _, rest @ ..]) if !rest.is_empty() => rest,
        Some(rest) => rest,
        None => return "other".to_string(),
    };
    match rest {
        [plural] | [plural, _] => (*plural).to_string(),
        [plural, _, sub] => format!("{plural}/{sub}"),
        _ => "other".to_string(),
    }
}

/// Whether a resource path names a collection (`.../configmaps`) rather than
/// one object (`.../configmaps/name[/status]`).
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segs.first() {
        Some(&"api") => segs.get(2..),
        Some(&"apis") => segs.get(3..),
        _ => None,
    };
    let Some(rest) = rest else {
        return false;
    };
    match rest {
        ["namespaces", _, _plural] => true,
        ["namespaces", _, _plural, ..] => false,
        [_plural] => true,
        _ => false,
    }
}

// ---- rate limit --------------------------------------------------------------------

/// A token bucket: `qps` tokens per second, at most `burst` saved up. Callers
/// reserve a token and wait until it is theirs (so waiting is fair, FIFO).
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `qps <= 0` disables the limit.
    pub fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            qps,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token; returns how long to wait before using it.
    pub fn reserve(&self) -> Duration {
        self.reserve_at(Instant::now())
    }

    fn reserve_at(&self, now: Instant) -> Duration {
        if self.qps <= 0.0 {
            return Duration::ZERO;
        }
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.qps).min(self.burst) - 1.0;
        *state = (tokens, now.max(last));
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.qps)
        }
    }
}

#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<TokenBucket>,
    lists: Arc<tokio::sync::Semaphore>,
}

impl RateLimitLayer {
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: Arc::new(TokenBucket::new(qps, burst)),
            lists: Arc::new(tokio::sync::Semaphore::new(LIST_CONCURRENCY)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            lists: self.lists.clone(),
        }
    }
}

/// Lists in flight at once (see [`RateLimit`]).
pub const LIST_CONCURRENCY: usize = 16;

/// Paces requests by the bucket. The wait is in the response future, not in
/// `poll_ready`: kube's client puts one buffer worker in front, and a wait
/// there would hold every request behind the one waiting, including the
/// requests the bucket does not pace. Reservations are taken in call order,
/// so waiting stays fair (FIFO). The inner futures (hyper, kube's layers) do
/// nothing until polled, so a delayed poll is a delayed request.
///
/// Lists, what a cache needs to sync, are not paced by the bucket: queued
/// behind bulk writes they kept a restarted controller's caches from syncing
/// (one list and one watch per tenant namespace and per-namespace kind: 1,600
/// requests for 200 tenants, 32 s at the former default of 50 QPS, all in one
/// FIFO with the writes), so nothing was reconciled and /readyz stayed 503
/// meanwhile. They are bounded by concurrency instead ([`LIST_CONCURRENCY`] in
/// flight): that is what the API server's priority and fairness counts
/// (seats), so a thousand namespaces listed at start-up queue here, not in the
/// server's queues for this flow, where they would be refused (429). Watches
/// take a token, as in client-go: a cache is synced by its list, and its
/// watch resumes from the list's resourceVersion whenever it starts.
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<TokenBucket>,
    lists: Arc<tokio::sync::Semaphore>,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            lists: self.lists.clone(),
        }
    }
}

/// How the client paces one request (see [`RateLimit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// A token of the bucket.
    Bucket,
    /// A slot among the lists in flight.
    ListSlot,
}

/// The pacing of a request by its verb.
pub fn pacing_of(method: &Method, uri: &http::Uri) -> Pacing {
    match verb_of(method, uri) {
        "list" => Pacing::ListSlot,
        _ => Pacing::Bucket,
    }
}

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pacing = pacing_of(req.method(), req.uri());
        let wait = match pacing {
            Pacing::Bucket => self.bucket.reserve(),
            Pacing::ListSlot => Duration::ZERO,
        };
        let lists = (pacing == Pacing::ListSlot).then(|| self.lists.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            // Held until the list has been answered; never closed.
            let _slot = match lists {
                Some(lists) => lists.acquire_owned().await.ok(),
                None => None,
            };
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace's watches and requests share one connection; namespaces
    /// spread over all of them, none far above the mean (10,000 namespaces,
    /// two watches each, must stay under 1,000 streams per connection).
    #[test]
    fn requests_route_by_namespace_and_spread_evenly() {
        let uri = |p: &str| p.parse::<http::Uri>().expect("uri");
        let n = CONNECTIONS;
        let secrets = route(&uri("/api/v1/namespaces/acme-a/secrets?watch=true"), n);
        assert_eq!(
            route(&uri("/api/v1/namespaces/acme-a/configmaps?watch=1"), n),
            secrets
        );
        assert_eq!(route(&uri("/api/v1/namespaces/acme-a"), n), secrets);
        assert_eq!(
            route(
                &uri("/apis/networking.k8s.io/v1/namespaces/acme-a/networkpolicies/x"),
                n
            ),
            secrets
        );
        let mut per = vec![0usize; n];
        for i in 0..10_000 {
            per[route(
                &uri(&format!("/api/v1/namespaces/tenant-{i}-ns/secrets")),
                n,
            )] += 2;
        }
        let most = per.iter().max().copied().unwrap_or_default();
        let mean = 20_000 / n;
        assert!(most < 1000 && most < mean * 5 / 4, "{per:?}");
        assert!(route(&uri("/apis/palisade.dev/v1alpha1/tenants"), n) < n);
    }

    #[test]
    fn resources() {
        for (path, want) in [
            ("/api/v1/namespaces", "namespaces"),
            ("/api/v1/namespaces/a", "namespaces"),
            ("/api/v1/namespaces/a/status", "namespaces/status"),
            ("/api/v1/namespaces/a/configmaps", "configmaps"),
            ("/api/v1/namespaces/a/configmaps/b", "configmaps"),
            ("/apis/palisade.dev/v1alpha1/tenants", "tenants"),
            (
                "/apis/palisade.dev/v1alpha1/tenants/a/status",
                "tenants/status",
            ),
            (
                "/apis/rbac.authorization.k8s.io/v1/namespaces/a/roles/admin",
                "roles",
            ),
            ("/apis/events.k8s.io/v1/namespaces/a/events", "events"),
            ("/apis", "other"),
            ("/version", "other"),
        ] {
            assert_eq!(resource_of(path), want, "{path}");
        }
    }

    #[test]
    fn verbs() {
        let v = |m: Method, u: &str| verb_of(&m, &u.parse().expect("uri"));
        assert_eq!(v(Method::GET, "/api/v1/namespaces"), "list");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/a"), "get");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/a/configmaps"), "list");
        assert_eq!(v(Method::GET, "/api/v1/namespaces/a/configmaps/b"), "get");
        assert_eq!(
            v(
                Method::GET,
                "/apis/palisade.dev/v1alpha1/tenants?watch=true&resourceVersion=1"
            ),
            "watch"
        );
        assert_eq!(
            v(Method::GET, "/apis/palisade.dev/v1alpha1/tenants/a"),
            "get"
        );
        assert_eq!(
            v(
                Method::PATCH,
                "/apis/palisade.dev/v1alpha1/tenants/a/status"
            ),
            "patch"
        );
        assert_eq!(
            v(
                Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l"
            ),
            "update"
        );
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/a/secrets"),
            "deletecollection"
        );
        assert_eq!(
            v(Method::DELETE, "/api/v1/namespaces/a/secrets/s"),
            "delete"
        );
        assert_eq!(v(Method::POST, "/api/v1/namespaces"), "create");
        assert_eq!(v(Method::GET, "/version"), "get");
    }

    #[test]
    fn bucket_allows_burst_then_paces() {
        let b = TokenBucket::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.reserve_at(t0), Duration::ZERO);
        }
        let wait = b.reserve_at(t0);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        let wait = b.reserve_at(t0);
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // A second later the debt is paid and 8 tokens saved (capped at burst 3).
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.reserve_at(later), Duration::ZERO);
    }

    #[test]
    fn lists_take_a_slot_the_rest_a_token() {
        let p = |m: Method, u: &str| pacing_of(&m, &u.parse().expect("uri"));
        assert_eq!(
            p(
                Method::GET,
                "/api/v1/namespaces/a/secrets?watch=true&resourceVersion=1"
            ),
            Pacing::Bucket
        );
        assert_eq!(
            p(Method::GET, "/api/v1/namespaces/a/secrets"),
            Pacing::ListSlot
        );
        assert_eq!(
            p(Method::GET, "/api/v1/namespaces/a/secrets/s"),
            Pacing::Bucket
        );
        assert_eq!(
            p(Method::PATCH, "/api/v1/namespaces/a/secrets/s"),
            Pacing::Bucket
        );
        assert_eq!(p(Method::POST, "/api/v1/namespaces"), Pacing::Bucket);
    }

    /// Lists are bounded by concurrency, not by the bucket: 48 of them with
    /// a bucket of 1 QPS take well under a second, never more than
    /// `LIST_CONCURRENCY` at once.
    #[tokio::test]
    async fn lists_are_bounded_by_concurrency_not_by_the_bucket() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt as _;
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), max.clone());
        let inner = tower::service_fn(move |_: Request<()>| {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let at = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(at, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(Response::new(()))
            }
        });
        let svc = RateLimitLayer::new(1.0, 1).layer(inner);
        let start = Instant::now();
        let calls = (0..48).map(|_| {
            let req = Request::get("/api/v1/namespaces/a/secrets")
                .body(())
                .expect("request");
            let mut svc = svc.clone();
            async move { svc.ready().await.expect("ready").call(req).await }
        });
        for r in futures::future::join_all(calls).await {
            r.expect("response");
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(max.load(Ordering::SeqCst), LIST_CONCURRENCY);
    }

    #[test]
    fn zero_qps_is_unlimited() {
        let b = TokenBucket::new(0.0, 1);
        for _ in 0..100 {
            assert_eq!(b.reserve(), Duration::ZERO);
        }
    }
}
