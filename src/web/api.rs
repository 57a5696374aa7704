//! The handlers. Every refusal is a 4xx with its reason as the body; nothing here
//! panics on a request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;

use super::App;
use super::auth::{self, Refusal};

type Shared = State<Arc<App>>;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// Live updates are sent at most this often: a burst of changes is one event.
const EVENT_EVERY: Duration = Duration::from_millis(250);

fn refused((status, reason): Refusal) -> Response {
    (status, reason).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page shell (it holds no data: the API behind it asks for a login).
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The page's script.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The page's style.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// Headers every answer carries: the page loads nothing from elsewhere and is framed by
/// nobody.
pub(super) async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Anything else.
pub(super) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such page").into_response()
}

/// `/healthz`: see `health.rs`. Open to all: it is for probes, and shows no secret.
pub(super) async fn healthz(State(app): Shared) -> Response {
    let (ok, doc) = super::health::health(&app.data);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(doc)).into_response()
}

/// `/metrics`, in the Prometheus text format.
pub(super) async fn metrics(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    let text = super::metrics::render(&app.data, &app.polls);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct Login {
    password: String,
}

/// `POST /login` (form-encoded `password`): sets the session cookie.
pub(super) async fn login(
    State(app): Shared,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<Login>,
) -> Response {
    match app.auth.login(peer.ip(), &headers, &form.password) {
        Ok(id) => (
            StatusCode::NO_CONTENT,
            [(header::SET_COOKIE, auth::session_cookie(&id))],
        )
            .into_response(),
        Err(refusal) => {
            tracing::debug!(peer = %peer.ip(), reason = %refusal.1, "web login refused");
            refused(refusal)
        }
    }
}

/// `POST /logout`.
pub(super) async fn logout(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(refusal) = app.auth.act(&headers) {
        return refused(refusal);
    }
    app.auth.logout(&headers);
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, auth::cleared_cookie())],
    )
        .into_response()
}

/// `/api/session`: whether a login is needed, and the CSRF token for actions.
pub(super) async fn session(State(app): Shared, headers: HeaderMap) -> Response {
    match app.auth.read(&headers) {
        Ok(csrf) => Json(json!({ "csrf": csrf, "login": app.auth.needs_login() })).into_response(),
        Err(refusal) => refused(refusal),
    }
}

/// `/api/overview`.
pub(super) async fn overview(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    Json(app.data.overview()).into_response()
}

fn no_device(id: &str) -> Response {
    let shown: String = id.chars().take(64).collect();
    (StatusCode::NOT_FOUND, format!("no device `{shown}`")).into_response()
}

/// `/api/device/{id}`: the device page's data.
pub(super) async fn device(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    match app.data.device(&id) {
        Some(d) => Json(app.data.device_page(d)).into_response(),
        None => no_device(&id),
    }
}

/// The CEM-control switch's new position.
#[derive(Deserialize)]
pub(super) struct Control {
    allowed: bool,
}

/// `POST /api/device/{id}/control` with `{"allowed": bool}`: the CEM-control switch.
pub(super) async fn control(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Control>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(refusal) = app.auth.act(&headers) {
        return refused(refusal);
    }
    let Json(control) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"allowed\": true|false}}: {}",
                    rejection.body_text()
                ),
            )
                .into_response();
        }
    };
    let Some(d) = app.data.device(&id) else {
        return no_device(&id);
    };
    d.gate.set(control.allowed);
    tracing::info!(device = %d.id, allowed = control.allowed, "CEM control switched on the web UI");
    StatusCode::NO_CONTENT.into_response()
}

/// Which inspector entries to send.
#[derive(Deserialize)]
pub(super) struct Since {
    #[serde(default)]
    since: u64,
}

fn resource_of(app: &App, id: &str) -> Option<String> {
    app.data
        .resources()
        .into_iter()
        .find(|(i, r)| i == id || r == id)
        .map(|(_, r)| r)
}

/// `/api/inspector/{id}?since=SEQ`: the resource's kept messages after `since`.
pub(super) async fn inspector(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(since): Query<Since>,
) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    let Some(resource) = resource_of(&app, &id) else {
        return no_device(&id);
    };
    Json(json!({
        "resource_id": resource,
        "messages": app.data.traffic.messages(&resource, since.since),
    }))
    .into_response()
}

/// `/api/inspector/{id}/s2log`: the resource's kept messages as a `.s2log` download.
pub(super) async fn s2log(
    State(app): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    let Some(resource) = resource_of(&app, &id) else {
        return no_device(&id);
    };
    let name = app
        .data
        .resources()
        .into_iter()
        .find(|(_, r)| *r == resource)
        .map_or_else(|| resource.clone(), |(i, _)| i);
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.s2log\""),
            ),
        ],
        app.data.traffic.s2log(&resource),
    )
        .into_response()
}

/// `/api/config`: what `s2gw check` says of the config file now, and the running
/// config's summary.
pub(super) async fn config(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    let source = app.data.source.clone();
    let checked = tokio::task::spawn_blocking(move || crate::commands::check_report(&source)).await;
    let (problems, warnings) =
        checked.unwrap_or_else(|_| (vec!["the check failed".into()], vec![]));
    Json(json!({
        "file": app.data.source.display().to_string(),
        "summary": app.data.summary,
        "problems": problems,
        "warnings": warnings,
    }))
    .into_response()
}

/// `/api/events`: server-sent `state` events with the overview, at once and on every
/// change (at most every [`EVENT_EVERY`]).
pub(super) async fn events(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(refusal) = app.auth.read(&headers) {
        return refused(refusal);
    }
    Sse::new(state_events(app))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn state_events(app: Arc<App>) -> impl Stream<Item = Result<Event, Infallible>> {
    let changes = app.changes.subscribe();
    futures_util::stream::unfold(
        (app, changes, true),
        |(app, mut changes, first)| async move {
            if !first {
                tokio::select! {
                    () = app.shutdown.cancelled() => return None,
                    changed = changes.changed() => changed.ok()?,
                }
                // Fold a burst of changes into one event.
                tokio::select! {
                    () = app.shutdown.cancelled() => return None,
                    () = tokio::time::sleep(EVENT_EVERY) => {}
                }
                changes.borrow_and_update();
            }
            let event = Event::default()
                .event("state")
                .json_data(app.data.overview())
                .unwrap_or_else(|_| Event::default().event("error").data("cannot encode"));
            Some((Ok(event), (app, changes, false)))
        },
    )
}
