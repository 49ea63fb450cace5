//! The daemon's HTTP+JSON API on a unix socket (mode 0600: root only).

use super::wire::*;
use crate::daemon::Daemon;
use anyhow::{Context, Result};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, State},
    http::StatusCode,
    http::request::Parts,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, de::DeserializeOwned};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

type Shared = State<Arc<Daemon>>;

/// A failed request: the daemon's one-line reason, as JSON.
pub struct ApiError(StatusCode, String);

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let msg = format!("{e:#}");
        let code = if msg.contains("is not defined") || msg.contains("not found") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError(code, crate::config::one_line(&msg))
    }
}

/// A JSON request body, decoded with [`decode`]: refusals are one-line JSON
/// naming the field, like every other error of the API (axum's own `Json`
/// answers in plain text and without the field's path).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        decode(&bytes)
            .map(Body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))
    }
}

/// The body's bytes, for a handler that decodes them itself. It keeps
/// axum's body limit (2 MiB, 413), answered in one-line JSON like the rest.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|r| ApiError(r.status(), crate::config::one_line(&r.body_text())))
    }
}

/// The URL's `{name}`, with axum's refusal (bad percent-encoding) as JSON.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|r| ApiError(r.status(), crate::config::one_line(&r.body_text())))
    }
}

/// The query string (`?all=true`), with axum's refusal as JSON.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|r| ApiError(r.status(), crate::config::one_line(&r.body_text())))
    }
}

/// Decodes a request body. The message names the refused field's path
/// (`forwards[1].port: invalid port " 81": ...`) and is one line.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end().map_err(|e| {
        format!(
            "invalid JSON body: {}",
            crate::config::one_line(&e.to_string())
        )
    })?;
    Ok(v)
}

fn path_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    let msg = e.into_inner().to_string();
    // The path holds the body's own keys, which may hold anything.
    crate::config::one_line(&if path == "." || path.is_empty() {
        format!("invalid request body: {msg}")
    } else {
        format!("{path}: {msg}")
    })
}

/// The forwards of a POST .../forwards body: one, or `{"forwards": [...]}`.
pub fn decode_forward_add(bytes: &[u8]) -> std::result::Result<Vec<ForwardRequest>, String> {
    let v: serde_json::Value = decode(bytes)?;
    if v.get("forwards").is_some() {
        let b: ForwardBatch = serde_path_to_error::deserialize(v).map_err(path_error)?;
        Ok(b.forwards)
    } else {
        let one: ForwardRequest = serde_path_to_error::deserialize(v).map_err(path_error)?;
        Ok(vec![one])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

pub async fn serve(daemon: Arc<Daemon>) -> Result<()> {
    let sock = daemon.paths.socket();
    let _ = std::fs::remove_file(&sock);
    let listener = tokio::net::UnixListener::bind(&sock)
        .with_context(|| format!("binding {}", sock.display()))?;
    // Root only (0600), or root and one group (0660, `--socket-group`).
    match daemon.socket_group {
        Some((ref name, gid)) => {
            std::os::unix::fs::chown(&sock, None, Some(gid))
                .with_context(|| format!("giving {} to group {name}", sock.display()))?;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660))?;
        }
        None => std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?,
    }
    tracing::info!("listening on {}", sock.display());
    axum::serve(listener, router(daemon)).await?;
    Ok(())
}

/// The Prometheus endpoint alone, over TCP (`netd daemon --metrics-addr`).
pub async fn serve_metrics(daemon: Arc<Daemon>, listener: tokio::net::TcpListener) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!("serving /metrics on http://{a}/metrics");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(daemon);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics listener: {e}");
    }
}

pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/networks", get(list).post(define))
        .route("/v1/networks/{name}", get(info).delete(undefine))
        .route("/v1/networks/{name}/start", post(start))
        .route("/v1/networks/{name}/stop", post(stop))
        .route("/v1/networks/{name}/autostart", post(autostart))
        .route("/v1/networks/{name}/dump", get(dump))
        .route("/v1/networks/{name}/hosts", post(hosts))
        .route("/v1/networks/{name}/leases", get(leases))
        .route(
            "/v1/networks/{name}/forwards",
            get(forwards_of).post(forward_add).delete(forward_remove),
        )
        .route("/v1/forwards", get(forwards_all))
        .route("/v1/networks/{name}/vfs", get(vf_list))
        .route("/v1/networks/{name}/vfs/acquire", post(vf_acquire))
        .route("/v1/networks/{name}/vfs/release", post(vf_release))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .with_state(daemon)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(State(d): Shared, Query(q): Query<ListQuery>) -> ApiResult<Vec<NetworkSummary>> {
    Ok(Json(d.state.lock().await.list(q.all)))
}

async fn define(State(d): Shared, Body(req): Body<DefineRequest>) -> ApiResult<NameResponse> {
    let mut s = d.state.lock().await;
    let name = if req.transient {
        s.create(&req.text, req.xml).await?
    } else {
        s.define(&req.text, req.xml).await?
    };
    Ok(Json(NameResponse { name }))
}

async fn info(State(d): Shared, Path(name): Path<String>) -> ApiResult<NetworkInfo> {
    Ok(Json(d.state.lock().await.info(&name).await?))
}

async fn undefine(State(d): Shared, Path(name): Path<String>) -> ApiResult<NameResponse> {
    d.state.lock().await.undefine(&name)?;
    Ok(Json(NameResponse { name }))
}

async fn start(State(d): Shared, Path(name): Path<String>) -> ApiResult<NameResponse> {
    d.state.lock().await.start(&name).await?;
    Ok(Json(NameResponse { name }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    /// Hostdev networks: release every held VF instead of refusing.
    #[serde(default)]
    force: bool,
}

async fn stop(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<StopQuery>,
) -> ApiResult<StopResponse> {
    let released_vfs = d.state.lock().await.stop(&name, q.force).await?;
    Ok(Json(StopResponse { name, released_vfs }))
}

async fn autostart(
    State(d): Shared,
    Path(name): Path<String>,
    Body(req): Body<AutostartRequest>,
) -> ApiResult<NameResponse> {
    d.state.lock().await.set_autostart(&name, req.enable)?;
    Ok(Json(NameResponse { name }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DumpQuery {
    #[serde(default)]
    xml: bool,
    /// The persistent definition instead of the live one.
    #[serde(default)]
    inactive: bool,
}

/// `?live=true` / `?config=true`: which definitions a live edit changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeQuery {
    #[serde(default)]
    live: bool,
    #[serde(default)]
    config: bool,
}

impl ScopeQuery {
    fn scope(&self) -> anyhow::Result<crate::daemon::Scope> {
        crate::daemon::Scope::from_flags(self.live, self.config)
    }
}

async fn dump(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<DumpQuery>,
) -> ApiResult<DumpResponse> {
    Ok(Json(DumpResponse {
        text: d.state.lock().await.dump(&name, q.xml, q.inactive)?,
    }))
}

async fn hosts(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<ScopeQuery>,
    Body(req): Body<HostRequest>,
) -> ApiResult<NameResponse> {
    let scope = q.scope()?;
    let host = crate::config::Host {
        mac: req.mac,
        ip: req.ip,
        name: req.name,
    };
    d.state
        .lock()
        .await
        .update_host(&name, req.add, host, scope)?;
    Ok(Json(NameResponse { name }))
}

async fn leases(State(d): Shared, Path(name): Path<String>) -> ApiResult<Vec<crate::dhcp::Lease>> {
    Ok(Json(d.state.lock().await.leases(&name)?))
}

async fn status(State(d): Shared) -> ApiResult<StatusResponse> {
    let s = d.state.lock().await;
    Ok(Json(s.status(d.started.elapsed().as_secs()).await?))
}

async fn metrics(State(d): Shared) -> Response {
    let snap = {
        let s = d.state.lock().await;
        s.metrics_snapshot(d.started.elapsed().as_secs())
    };
    let body = crate::daemon::metrics::render(&snap);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::daemon::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

async fn forwards_all(State(d): Shared) -> ApiResult<Vec<crate::daemon::ForwardInfo>> {
    Ok(Json(d.state.lock().await.list_forwards(None)?))
}

async fn forwards_of(
    State(d): Shared,
    Path(name): Path<String>,
) -> ApiResult<Vec<crate::daemon::ForwardInfo>> {
    Ok(Json(d.state.lock().await.list_forwards(Some(&name))?))
}

/// One forward, or a batch (`{"forwards": [...]}`) applied all or none with
/// a single write of the definition.
async fn forward_add(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<ScopeQuery>,
    RawBody(body): RawBody,
) -> ApiResult<NameResponse> {
    let scope = q.scope()?;
    let reqs = decode_forward_add(&body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e))?;
    let mut fs = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let to = r
            .to
            .ok_or_else(|| anyhow::anyhow!("forwards[{i}].to: a forward needs a target (--to)"))?;
        fs.push(crate::config::Forward {
            proto: r.proto,
            port: r.port,
            to,
            address: r.address,
        });
    }
    d.state.lock().await.add_forwards(&name, fs, scope).await?;
    Ok(Json(NameResponse { name }))
}

async fn forward_remove(
    State(d): Shared,
    Path(name): Path<String>,
    Query(q): Query<ScopeQuery>,
    Body(r): Body<ForwardRequest>,
) -> ApiResult<NameResponse> {
    let scope = q.scope()?;
    d.state
        .lock()
        .await
        .remove_forward(&name, r.proto, r.port, r.address, scope)
        .await?;
    Ok(Json(NameResponse { name }))
}

// ---- SR-IOV VF pools ---------------------------------------------------------

async fn vf_list(State(d): Shared, Path(name): Path<String>) -> ApiResult<Vec<VfRecord>> {
    Ok(Json(d.state.lock().await.vf_list(&name)?))
}

/// Checks every field into its type before the state lock is taken, so a
/// bad request changes nothing and costs no other request any time.
fn vf_request(r: VfAcquireRequest) -> anyhow::Result<crate::sriov::Request> {
    Ok(crate::sriov::Request {
        owner: r.owner.parse().map_err(anyhow::Error::msg)?,
        mac: r
            .mac
            .map(|m| m.parse())
            .transpose()
            .map_err(anyhow::Error::msg)?,
        vlan: r
            .vlan
            .map(crate::sriov::Vlan::try_from)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    })
}

/// Serialized by the state lock: two acquires never pick the same VF.
async fn vf_acquire(
    State(d): Shared,
    Path(name): Path<String>,
    Body(r): Body<VfAcquireRequest>,
) -> ApiResult<VfRecord> {
    let req = vf_request(r)?;
    Ok(Json(d.state.lock().await.vf_acquire(&name, req).await?))
}

async fn vf_release(
    State(d): Shared,
    Path(name): Path<String>,
    Body(r): Body<VfReleaseRequest>,
) -> ApiResult<VfRecord> {
    let owner: crate::sriov::OwnerId = r.owner.parse().map_err(anyhow::Error::msg)?;
    Ok(Json(d.state.lock().await.vf_release(&name, &owner).await?))
}
