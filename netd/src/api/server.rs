//! The daemon's HTTP+JSON API on a unix socket (mode 0600: root only).

use super::wire::*;
use crate::daemon::Daemon;
use anyhow::{Context, Result};
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
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
        ApiError(code, msg.replace('\n', " "))
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
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
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
        .with_state(daemon)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
}

async fn list(State(d): Shared, Query(q): Query<ListQuery>) -> ApiResult<Vec<NetworkSummary>> {
    Ok(Json(d.state.lock().await.list(q.all)))
}

async fn define(State(d): Shared, Json(req): Json<DefineRequest>) -> ApiResult<NameResponse> {
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

async fn stop(State(d): Shared, Path(name): Path<String>) -> ApiResult<NameResponse> {
    d.state.lock().await.stop(&name).await?;
    Ok(Json(NameResponse { name }))
}

async fn autostart(
    State(d): Shared,
    Path(name): Path<String>,
    Json(req): Json<AutostartRequest>,
) -> ApiResult<NameResponse> {
    d.state.lock().await.set_autostart(&name, req.enable)?;
    Ok(Json(NameResponse { name }))
}

#[derive(Deserialize)]
struct DumpQuery {
    #[serde(default)]
    xml: bool,
    /// The persistent definition instead of the live one.
    #[serde(default)]
    inactive: bool,
}

/// `?live=true` / `?config=true`: which definitions a live edit changes.
#[derive(Deserialize)]
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
    Json(req): Json<HostRequest>,
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
    Json(r): Json<ForwardAdd>,
) -> ApiResult<NameResponse> {
    let scope = q.scope()?;
    let reqs = match r {
        ForwardAdd::One(f) => vec![f],
        ForwardAdd::Batch { forwards } => forwards,
    };
    let mut fs = Vec::with_capacity(reqs.len());
    for r in reqs {
        let to =
            r.to.ok_or_else(|| anyhow::anyhow!("a forward needs a target (--to)"))?;
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
    Json(r): Json<ForwardRequest>,
) -> ApiResult<NameResponse> {
    let scope = q.scope()?;
    d.state
        .lock()
        .await
        .remove_forward(&name, r.proto, &r.port, r.address, scope)
        .await?;
    Ok(Json(NameResponse { name }))
}
