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

/// Builds a client from a kube config with Palisade's layers: over HTTP/2
/// ([`multiplexed`]) when `http2` is set and the API server is reached over
/// TLS (it then always offers h2), else kube's own stack (HTTP/1.1, one
/// connection per watch). A kubeconfig whose credentials come from an exec
/// plugin, or that names a proxy, also keeps kube's stack: only it knows when
/// an exec-issued client certificate expires, and only it speaks to proxies.
pub fn from_config(
    config: kube::Config,
    metrics: Arc<Metrics>,
    qps: f64,
    burst: u32,
    http2: bool,
) -> Result<kube::Client, kube::Error> {
    let tls = config.cluster_url.scheme_str() == Some("https");
    if !http2 || !tls || config.auth_info.exec.is_some() || config.proxy_url.is_some() {
        return Ok(layered(ClientBuilder::try_from(config)?, metrics, qps, burst).build());
    }
    Ok(layered(
        multiplexed(config, STREAMS_PER_CONNECTION)?,
        metrics,
        qps,
        burst,
    )
    .build())
}

// ---- HTTP/2 on as few connections as the streams need ---------------------------------

/// How many requests (streams) the client keeps in flight on one HTTP/2
/// connection before it opens another. Every watch holds a stream for as long
/// as it lives: two per namespace where Palisade generates Secrets (Secrets
/// and ConfigMaps are watched per namespace, never cluster-wide), plus the
/// cluster-wide watches. kube-apiserver allows 100 concurrent streams per
/// connection unless started with `--http2-max-streams-per-connection`
/// (v1.34.4 advertises 100 in its SETTINGS frame; 1,000 is only the aggregated
/// API servers' default), and past it hyper would wait for a free stream
/// instead of opening a connection: a request queued behind watches that
/// last up to 290 s. 90 leaves room for streams the server still counts after
/// the client let them go. So connections = streams in flight ÷ 90, rounded
/// up: one for the cluster-wide watches and requests, one more per ≈ 45
/// namespaces with generated Secrets (docs/SCALING.md).
const STREAMS_PER_CONNECTION: usize = 90;

/// How often an idle HTTP/2 connection is pinged, and how long an answer
/// may take before the connection (and every watch on it) is given up: a
/// dead API server is noticed within 40 s even when no watch event is due.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));

type Connection =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

use hyper_util::client::legacy::connect::HttpConnector;
use kube::client::{Body, ConfigExt};

/// kube's rustls connector with h2 in ALPN, for [`connection`].
fn connector(
    config: &kube::Config,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    // One connection carries many requests whose frames are written
    // separately: with Nagle's algorithm a frame waited for the ACK of the
    // last one, up to the peer's 40 ms delayed ACK (edit p50 75 ms, 32 ms
    // over HTTP/1.1; measured, 100 tenants).
    http.set_nodelay(true);
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
    Ok(builder.enable_http2().wrap_connector(http))
}

/// One HTTP/2 connection (a hyper pool of its own), opened on first use,
/// HTTP/2 only, so that concurrent first requests wait for the one
/// connection being made instead of each opening their own (with ALPN left to
/// decide, hyper cannot know a connection will be shared: 112 connections
/// for 30 tenants while converging, measured).
fn connection(https: hyper_rustls::HttpsConnector<HttpConnector>) -> Connection {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(KEEP_ALIVE.0)
        .http2_keep_alive_timeout(KEEP_ALIVE.1)
        .http2_keep_alive_while_idle(true)
        .build(https)
}

/// A response from [`multiplexed`]'s pool: it holds its stream until dropped.
pub type PooledResponse = Response<Held<hyper::body::Incoming>>;

/// kube's client stack (base URI, retries of server errors, authentication,
/// extra headers) over a [`Pool`] of HTTP/2 connections, each carrying up to
/// `streams` requests at once.
fn multiplexed(
    config: kube::Config,
    streams: usize,
) -> Result<
    ClientBuilder<
        impl Service<
            Request<Body>,
            Response = PooledResponse,
            Error = tower::BoxError,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    >,
    kube::Error,
> {
    let https = connector(&config)?;
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| {
            tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())
        }))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(Pool::new(streams, move || connection(https.clone())));
    Ok(ClientBuilder::new(service, config.default_namespace))
}

/// A request's place on its connection, given back when dropped.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A response body that holds its request's [`Slot`] until the body is
/// dropped: a watch keeps its stream for as long as it is read.
pub struct Held<B> {
    body: B,
    _slot: Slot,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Connections opened on demand: each request goes to the open connection
/// with the fewest requests in flight, and a new connection is opened only
/// when every open one already carries `streams` of them. A request holds
/// its place until its response body is dropped (or it fails), so watches
/// count for as long as they run and short requests only briefly.
/// Connections are never closed by the pool (hyper reconnects a broken one),
/// so their number is the peak of streams in flight ÷ `streams`.
#[derive(Clone)]
pub struct Pool<S> {
    shared: Arc<PoolShared<S>>,
}

type Open<S> = Box<dyn Fn() -> S + Send + Sync>;

struct PoolShared<S> {
    open: Open<S>,
    streams: usize,
    connections: Mutex<Vec<(S, Arc<std::sync::atomic::AtomicUsize>)>>,
}

impl<S: Clone> Pool<S> {
    pub fn new(streams: usize, open: impl Fn() -> S + Send + Sync + 'static) -> Self {
        Self {
            shared: Arc::new(PoolShared {
                open: Box::new(open),
                streams: streams.max(1),
                connections: Mutex::new(Vec::new()),
            }),
        }
    }

    /// How many connections the pool has opened.
    #[cfg(test)]
    fn connections(&self) -> usize {
        self.shared.connections.lock().map_or(0, |c| c.len())
    }

    /// The connection for the next request, with its place taken.
    fn pick(&self) -> (S, Slot) {
        use std::sync::atomic::Ordering;
        let mut open = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let least = open
            .iter()
            .enumerate()
            .map(|(i, (_, n))| (i, n.load(Ordering::Acquire)))
            .min_by_key(|&(_, n)| n);
        let i = match least {
            Some((i, n)) if n < self.shared.streams => i,
            _ => {
                open.push((
                    (self.shared.open)(),
                    Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                ));
                open.len() - 1
            }
        };
        let (service, count) = &open[i];
        count.fetch_add(1, Ordering::AcqRel);
        (service.clone(), Slot(count.clone()))
    }
}

impl<S, B, RB> Service<Request<B>> for Pool<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: 'static,
{
    type Response = Response<Held<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the connection it picks (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (service, slot) = self.pick();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(service, req).await?;
            Ok(response.map(|body| Held { body, _slot: slot }))
        })
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

    /// A connection that answers at once with its own number, or fails on
    /// the path `/fail`.
    #[derive(Clone)]
    struct FakeConnection(usize);

    impl Service<Request<()>> for FakeConnection {
        type Response = Response<usize>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Response<usize>, &'static str>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            std::future::ready(if req.uri().path() == "/fail" {
                Err("refused")
            } else {
                Ok(Response::new(self.0))
            })
        }
    }

    type Fake = Pool<FakeConnection>;

    fn fake_pool(streams: usize) -> Fake {
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Pool::new(streams, move || {
            FakeConnection(opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
        })
    }

    async fn send(pool: &mut Fake, path: &str) -> Result<Response<Held<usize>>, &'static str> {
        pool.call(Request::builder().uri(path).body(()).expect("request"))
            .await
    }

    /// Connections follow the streams in flight: a new one only when every
    /// open one carries `streams` requests; a dropped response or a failed
    /// request gives its place back, and the least busy connection is used.
    #[tokio::test]
    async fn pool_opens_connections_only_for_streams_in_flight() {
        let mut pool = fake_pool(2);
        assert_eq!(pool.connections(), 0, "opened before the first request");
        let a = send(&mut pool, "/a").await.expect("a");
        let b = send(&mut pool, "/b").await.expect("b");
        assert_eq!((a.body().body, b.body().body), (0, 0));
        assert_eq!(pool.connections(), 1);
        // Both places of connection 0 are held: the third request opens connection 1.
        let c = send(&mut pool, "/c").await.expect("c");
        assert_eq!((c.body().body, pool.connections()), (1, 2));
        // A dropped response frees its place on connection 0.
        drop(a);
        let d = send(&mut pool, "/d").await.expect("d");
        assert_eq!((d.body().body, pool.connections()), (0, 2));
        drop((b, d));
        // Failed requests give their places back: connection 0 stays empty.
        for _ in 0..5 {
            assert!(send(&mut pool, "/fail").await.is_err());
        }
        let held: Vec<_> = futures::future::join_all((0..4).map(|_| {
            let mut pool = pool.clone();
            async move { send(&mut pool, "/x").await.expect("x") }
        }))
        .await;
        let on: Vec<usize> = held.iter().map(|r| r.body().body).collect();
        // Connection 0 takes two, connection 1 (holding c) one; the last opens 2.
        assert_eq!(on.iter().filter(|&&i| i == 0).count(), 2, "{on:?}");
        assert_eq!(on.iter().filter(|&&i| i == 1).count(), 1, "{on:?}");
        assert_eq!(on.iter().filter(|&&i| i == 2).count(), 1, "{on:?}");
        assert_eq!(pool.connections(), 3);
        drop(c);
    }

    /// A held body passes the inner body's frames through unchanged.
    #[tokio::test]
    async fn held_body_passes_frames_through() {
        use http_body_util::BodyExt;
        let slot = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let held = Held {
            body: http_body_util::Full::new(bytes::Bytes::from_static(b"watch events")),
            _slot: Slot(slot.clone()),
        };
        let bytes = held.collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"watch events");
        assert_eq!(
            slot.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "place kept after the body"
        );
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
