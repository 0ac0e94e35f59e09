//! HTTP routing: parses Kubernetes API paths, query parameters and headers,
//! dispatches to the store and renders responses (JSON objects, `Status`
//! errors, or a watch stream).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use serde_json::{Value, json};

use crate::FakeApiServer;
use crate::error::{ApiError, success_status};
use crate::log::{RequestRecord, Verb};
use crate::patch::{self, PatchType};
use crate::registry::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector, Selector};
use crate::store::{DeleteOptions, Deleted, ObjectKey, Propagation, WriteMode, meta_str};
use crate::watch::{self, Render, WatchSpec};

/// Boxed error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type of the fake server.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A resource request after routing.
#[derive(Clone, Debug)]
struct ResourceRequest {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

enum Route {
    Version,
    CoreVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    Resource(ResourceRequest),
}

enum Reply {
    Json(u16, Value),
    Stream(ResponseBody),
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<ResponseBody> {
    let mut resp = Response::new(full(Bytes::from(v.to_string())));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Splits the path into the API group/version and the remaining segments.
fn split_api_path(path: &str) -> Option<(String, Option<String>, Vec<&str>, bool)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["api", rest @ ..] => Some((
            String::new(),
            rest.first().map(|s| s.to_string()),
            rest.iter().skip(1).copied().collect(),
            true,
        )),
        ["apis", g, rest @ ..] => Some((
            g.to_string(),
            rest.first().map(|s| s.to_string()),
            rest.iter().skip(1).copied().collect(),
            false,
        )),
        _ => None,
    }
}

fn route(server: &FakeApiServer, path: &str, rec: &mut RequestRecord) -> Result<Route, ApiError> {
    let trimmed = path.trim_end_matches('/');
    match trimmed {
        "/version" => return Ok(Route::Version),
        "/api" => return Ok(Route::CoreVersions),
        "/apis" => return Ok(Route::GroupList),
        _ => {}
    }
    let (group, version, rest, _core) = split_api_path(trimmed).ok_or_else(ApiError::no_route)?;
    rec.group.clone_from(&group);
    let Some(version) = version else {
        return Ok(Route::Group(group));
    };
    rec.version.clone_from(&version);
    if rest.is_empty() {
        return Ok(Route::ResourceList(group, version));
    }
    // `/api/v1/namespaces/{name}[/status|/finalize]` is the Namespace itself.
    let namespace_object = group.is_empty()
        && rest[0] == "namespaces"
        && (rest.len() <= 2 || (rest.len() == 3 && matches!(rest[2], "status" | "finalize")));
    let (namespace, plural, name, sub, extra) =
        if rest[0] == "namespaces" && rest.len() >= 3 && !namespace_object {
            (
                Some(rest[1]),
                rest[2],
                rest.get(3),
                rest.get(4),
                rest.len() > 5,
            )
        } else {
            (None, rest[0], rest.get(1), rest.get(2), rest.len() > 3)
        };
    rec.resource = plural.to_string();
    rec.namespace = namespace.map(str::to_string);
    rec.name = name.map(|s| s.to_string());
    rec.subresource = sub.map(|s| s.to_string());
    if extra {
        return Err(ApiError::no_route());
    }
    let rt = server
        .with_store(|s| s.registry.find(&group, &version, plural).cloned())
        .ok_or_else(ApiError::no_route)?;
    if namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_route());
    }
    if namespace.is_none() && rt.namespaced && name.is_some() {
        return Err(ApiError::no_route());
    }
    match sub {
        None => {}
        Some(&"status") if rt.status_subresource => {}
        Some(_) => return Err(ApiError::no_route()),
    }
    Ok(Route::Resource(ResourceRequest {
        rt,
        namespace: namespace.map(str::to_string),
        name: name.map(|s| s.to_string()),
        subresource: sub.map(|s| s.to_string()),
    }))
}

fn verb_for(method: &http::Method, has_name: bool, watch: bool) -> Verb {
    match (method.as_str(), has_name) {
        ("GET", true) => Verb::Get,
        ("GET", false) if watch => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => Verb::Other,
    }
}

fn is_true(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("true" | "1"))
}

struct Ctx<'a> {
    server: &'a FakeApiServer,
    req: ResourceRequest,
    query: HashMap<String, String>,
    headers: http::HeaderMap,
    body: Bytes,
    metadata_only: bool,
}

impl Ctx<'_> {
    fn key(&self) -> Result<ObjectKey, ApiError> {
        let name = self
            .req
            .name
            .as_deref()
            .ok_or_else(ApiError::method_not_allowed)?;
        Ok(ObjectKey::new(
            &self.req.rt.group,
            &self.req.rt.plural,
            self.req.namespace.as_deref(),
            name,
        ))
    }

    fn mode(&self) -> WriteMode {
        if self.req.subresource.as_deref() == Some("status") {
            WriteMode::Status
        } else {
            WriteMode::Main
        }
    }

    fn render(&self) -> Render {
        let api_version = self.req.rt.api_version();
        let metadata_only = self.metadata_only;
        Arc::new(move |obj: &Value| render_object(obj, &api_version, metadata_only))
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        Ok(Selector {
            labels: LabelSelector::parse(
                self.query.get("labelSelector").map_or("", String::as_str),
            )?,
            fields: FieldSelector::parse(
                self.query.get("fieldSelector").map_or("", String::as_str),
            )?,
        })
    }

    fn reject_dry_run(&self) -> Result<(), ApiError> {
        if self.query.contains_key("dryRun") {
            return Err(ApiError::bad_request(
                "dryRun is not supported by the fake API server",
            ));
        }
        Ok(())
    }
}

fn render_object(obj: &Value, api_version: &str, metadata_only: bool) -> Value {
    if metadata_only {
        return json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        });
    }
    let mut out = obj.clone();
    if let Some(m) = out.as_object_mut() {
        m.insert("apiVersion".into(), api_version.into());
    }
    out
}

fn get(ctx: &Ctx) -> Result<Reply, ApiError> {
    let key = ctx.key()?;
    let rt = &ctx.req.rt;
    let obj = ctx
        .server
        .with_store(|s| s.get(&key).cloned())
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &key.name))?;
    Ok(Reply::Json(200, (ctx.render())(&obj)))
}

fn list(ctx: &Ctx) -> Result<Reply, ApiError> {
    let sel = ctx.selector()?;
    let rt = &ctx.req.rt;
    let limit = match ctx.query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (items, current_rv) = ctx.server.with_store(|s| {
        (
            s.list(&rt.group, &rt.plural, ctx.req.namespace.as_deref(), &sel),
            s.resource_version(),
        )
    });
    // Continue tokens are "<rv>/<namespace>/<name>" of the last returned item.
    let (list_rv, start_after) = match ctx.query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ApiError::bad_request("invalid continue token"));
            };
            let rv = rv
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("invalid continue token"))?;
            (rv, Some((ns.to_string(), name.to_string())))
        }
        None => (current_rv, None),
    };
    let mut remaining: Vec<(ObjectKey, Value)> = items
        .into_iter()
        .filter(|(k, _)| match &start_after {
            None => true,
            Some((ns, name)) => {
                (k.namespace.clone().unwrap_or_default(), k.name.clone())
                    > (ns.clone(), name.clone())
            }
        })
        .collect();
    let mut metadata = json!({"resourceVersion": list_rv.to_string()});
    if limit > 0 && remaining.len() > limit {
        let rest = remaining.split_off(limit);
        if let Some((last, _)) = remaining.last() {
            metadata["continue"] = format!(
                "{list_rv}/{}/{}",
                last.namespace.clone().unwrap_or_default(),
                last.name
            )
            .into();
            metadata["remainingItemCount"] = rest.len().into();
        }
    }
    let render = ctx.render();
    // The real API server lists built-in kinds without each item's apiVersion
    // and kind (custom resources keep theirs); watch events carry them.
    let strip_types = !ctx.metadata_only && crate::store::is_builtin_group(&rt.group);
    let items: Vec<Value> = remaining
        .iter()
        .map(|(_, v)| {
            let mut item = render(v);
            if strip_types && let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    let (api_version, kind) = if ctx.metadata_only {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (rt.api_version(), format!("{}List", rt.kind))
    };
    Ok(Reply::Json(
        200,
        json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "items": items}),
    ))
}

fn watch(ctx: &Ctx) -> Result<Reply, ApiError> {
    let sel = ctx.selector()?;
    let rt = &ctx.req.rt;
    let send_initial = is_true(ctx.query.get("sendInitialEvents"));
    let from = match ctx.query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if send_initial => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {v}")))?,
        ),
    };
    let timeout = match ctx.query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => Duration::from_secs(1800),
    };
    let bookmark_interval = ctx.server.bookmark_interval();
    let started = ctx.server.with_store(|s| {
        s.watch_start(&rt.group, &rt.plural, ctx.req.namespace.as_deref(), from)
            .map(|(replay, rx, rv)| (replay, rx, rv, s.close_tx.subscribe()))
    });
    let body: ResponseBody = match started {
        Err(e) => full(watch::error_line(&e)),
        Ok((replay, rx, start_rv, close_rx)) => {
            let bookmark_type = if ctx.metadata_only {
                (
                    "meta.k8s.io/v1".to_string(),
                    "PartialObjectMetadata".to_string(),
                )
            } else {
                (rt.api_version(), rt.kind.clone())
            };
            let spec = WatchSpec {
                group: rt.group.clone(),
                plural: rt.plural.clone(),
                namespace: ctx.req.namespace.clone(),
                selector: sel,
                replay,
                rx,
                close_rx,
                start_rv,
                bookmarks: is_true(ctx.query.get("allowWatchBookmarks")),
                bookmark_interval,
                initial_events_end: send_initial,
                timeout,
                bookmark_type,
                render: ctx.render(),
            };
            let frames = watch::stream(spec).map(|b| Ok::<_, BoxError>(http_body::Frame::data(b)));
            StreamBody::new(frames).boxed_unsync()
        }
    };
    Ok(Reply::Stream(body))
}

fn create(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.reject_dry_run()?;
    if ctx.req.subresource.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let body = ctx.json_body()?;
    let obj = ctx.server.with_store_mut(|s| {
        s.create(
            &ctx.req.rt,
            ctx.req.namespace.as_deref(),
            body,
            WriteMode::Main,
        )
    })?;
    Ok(Reply::Json(201, (ctx.render())(&obj)))
}

fn update(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.reject_dry_run()?;
    let key = ctx.key()?;
    let body = ctx.json_body()?;
    let obj = ctx
        .server
        .with_store_mut(|s| s.update(&ctx.req.rt, &key, body, ctx.mode()))?;
    Ok(Reply::Json(200, (ctx.render())(&obj)))
}

fn patch(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.reject_dry_run()?;
    let key = ctx.key()?;
    let rt = &ctx.req.rt;
    let ct = ctx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let pt =
        PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
    let body = patch::parse_body(pt, &ctx.body)?;
    if pt == PatchType::Apply {
        if ctx.query.get("fieldManager").is_none_or(String::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH requests with apply content type must include fieldManager",
            ));
        }
        if body.get("apiVersion").and_then(Value::as_str).is_none()
            || body.get("kind").and_then(Value::as_str).is_none()
        {
            return Err(ApiError::bad_request(
                "apply patches must specify apiVersion and kind",
            ));
        }
    }
    let mode = ctx.mode();
    let (code, obj) = ctx.server.with_store_mut(|s| {
        if pt == PatchType::Apply {
            let manager = ctx.query.get("fieldManager").map_or("", String::as_str);
            return s.apply(rt, &key, &body, manager, mode);
        }
        let existing = s
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, &key.name))?;
        let patched = patch::apply_patch(pt, &existing, &body)?;
        s.update(rt, &key, patched, mode).map(|o| (200, o))
    })?;
    Ok(Reply::Json(code, (ctx.render())(&obj)))
}

fn delete_options(ctx: &Ctx) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions::default();
    let body: Value = if ctx.body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        ctx.json_body()?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .map(str::to_string)
        .or_else(|| ctx.query.get("propagationPolicy").cloned());
    opts.propagation = match policy.as_deref() {
        None => None,
        Some("Background") => Some(Propagation::Background),
        Some("Foreground") => Some(Propagation::Foreground),
        Some("Orphan") => Some(Propagation::Orphan),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )));
        }
    };
    if opts.propagation.is_none() && body["orphanDependents"].as_bool() == Some(true) {
        opts.propagation = Some(Propagation::Orphan);
    }
    opts.precondition_uid = body["preconditions"]["uid"].as_str().map(str::to_string);
    opts.precondition_rv = body["preconditions"]["resourceVersion"]
        .as_str()
        .map(str::to_string);
    if body["dryRun"].as_array().is_some_and(|a| !a.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    Ok(opts)
}

fn delete(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.reject_dry_run()?;
    if ctx.req.subresource.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let key = ctx.key()?;
    let opts = delete_options(ctx)?;
    let rt = &ctx.req.rt;
    match ctx.server.with_store_mut(|s| s.delete(rt, &key, &opts))? {
        Deleted::Marked(obj) => Ok(Reply::Json(200, (ctx.render())(&obj))),
        Deleted::Removed(obj) => Ok(Reply::Json(
            200,
            success_status(&rt.group, &rt.plural, &key.name, meta_str(&obj, "uid")),
        )),
    }
}

fn delete_collection(ctx: &Ctx) -> Result<Reply, ApiError> {
    ctx.reject_dry_run()?;
    let sel = ctx.selector()?;
    let opts = delete_options(ctx)?;
    let rt = &ctx.req.rt;
    ctx.server.with_store_mut(|s| {
        let keys: Vec<ObjectKey> = s
            .list(&rt.group, &rt.plural, ctx.req.namespace.as_deref(), &sel)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            s.delete_internal(&k, opts.propagation.unwrap_or(Propagation::Background));
        }
    });
    Ok(Reply::Json(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

fn version_doc() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-palisade-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Serves one request.
pub(crate) async fn handle<B>(server: FakeApiServer, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let mut rec = server.new_record(&parts.method, &path);
    rec.field_manager = query.get("fieldManager").cloned();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let err = ApiError::bad_request(format!("failed to read request body: {e}"));
            return server.finish(rec, Err(err));
        }
    };
    let routed = route(&server, &path, &mut rec);
    let watch_param = is_true(query.get("watch"));
    if let Ok(Route::Resource(r)) = &routed {
        rec.verb = verb_for(&parts.method, r.name.is_some(), watch_param);
        if rec.verb == Verb::Patch {
            rec.patch_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(PatchType::from_content_type);
        }
    }
    if let Some(code) = server.check_faults(&rec) {
        return server.finish(rec, Err(ApiError::injected(code)));
    }
    let is_get = parts.method == http::Method::GET;
    // Aggregated discovery is asked for first in the Accept list; plain JSON is the fallback.
    let aggregated = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=APIGroupDiscoveryList"));
    let result = routed.and_then(|route| match route {
        Route::Version if is_get => Ok(Reply::Json(200, version_doc())),
        Route::CoreVersions if is_get && aggregated => Ok(Reply::Json(
            200,
            server.with_store(|s| s.registry.aggregated(true)),
        )),
        Route::GroupList if is_get && aggregated => Ok(Reply::Json(
            200,
            server.with_store(|s| s.registry.aggregated(false)),
        )),
        Route::CoreVersions if is_get => Ok(Reply::Json(
            200,
            server.with_store(|s| s.registry.core_versions()),
        )),
        Route::GroupList if is_get => Ok(Reply::Json(
            200,
            server.with_store(|s| s.registry.group_list()),
        )),
        Route::Group(g) if is_get => server
            .with_store(|s| s.registry.group(&g))
            .map(|v| Reply::Json(200, v))
            .ok_or_else(ApiError::no_route),
        Route::ResourceList(g, v) if is_get => server
            .with_store(|s| s.registry.resource_list(&g, &v))
            .map(|v| Reply::Json(200, v))
            .ok_or_else(ApiError::no_route),
        Route::Resource(req) => {
            let metadata_only = parts
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("as=PartialObjectMetadata"));
            let ctx = Ctx {
                server: &server,
                req,
                query,
                headers: parts.headers.clone(),
                body,
                metadata_only,
            };
            match rec.verb {
                Verb::Get => get(&ctx),
                Verb::List => list(&ctx),
                Verb::Watch => watch(&ctx),
                Verb::Create => create(&ctx),
                Verb::Update => update(&ctx),
                Verb::Patch => patch(&ctx),
                Verb::Delete => delete(&ctx),
                Verb::DeleteCollection => delete_collection(&ctx),
                Verb::Other => Err(ApiError::method_not_allowed()),
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    });
    server.finish(rec, result)
}

impl FakeApiServer {
    fn finish(
        &self,
        mut rec: RequestRecord,
        result: Result<Reply, ApiError>,
    ) -> Response<ResponseBody> {
        let resp = match result {
            Ok(Reply::Json(code, v)) => {
                rec.code = code;
                json_response(code, &v)
            }
            Ok(Reply::Stream(body)) => {
                rec.code = 200;
                let mut resp = Response::new(body);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => {
                rec.code = e.code;
                json_response(e.code, &e.to_status())
            }
        };
        self.record(rec);
        resp
    }
}
