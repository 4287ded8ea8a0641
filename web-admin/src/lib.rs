//! The web admin: an axum router serving the operator's UI, the JSON API (with its
//! OpenAPI document), `/metrics` and `/healthz`.
//!
//! It defines the traits it needs ([`Rooms`], [`Directory`], [`Relays`], [`Node`],
//! [`AdminAuth`]), which the `supernode` crate implements, so that this crate never
//! imports the service it manages. supernode mounts it like this:
//!
//! ```rust,ignore
//! let services = web_admin::AdminServices { rooms, directory, relays, node, auth }; // Arc<dyn …>
//! if let Some(path) = web_admin::ensure_admin_password(&*services.auth, addr, &data_dir)? {
//!     println!("admin password written to {}", path.display());
//! }
//! let app = web_admin::router(web_admin::AdminState::new(services, web_admin::AdminConfig::default()));
//! let listener = tokio::net::TcpListener::bind(addr).await?;
//! println!("admin http://{}", listener.local_addr()?);
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! ```
//!
//! Serving with `ConnectInfo` matters: the login limiter locks out per source address,
//! and without it every client shares one bucket.

mod api;
pub use api::{openapi, API_ROUTES};
pub mod auth;
mod bootstrap;
mod error;
mod model;
mod pages;
pub mod turn;
pub mod validate;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use bootstrap::{ensure_admin_password, PASSWORD_FILE};
pub use error::{AdminError, AdminResult, FieldError};
pub use model::*;

/// The services the admin manages, as trait objects supernode provides.
#[derive(Clone)]
pub struct AdminServices {
    /// Rooms and live conferences.
    pub rooms: Arc<dyn Rooms>,
    /// SIP accounts and registrations.
    pub directory: Arc<dyn Directory>,
    /// TURN relay and anchored media.
    pub relays: Arc<dyn Relays>,
    /// Node identity, health and metrics.
    pub node: Arc<dyn Node>,
    /// Admin password hash and API tokens.
    pub auth: Arc<dyn AdminAuth>,
}

/// Tunables of the admin; [`AdminConfig::default`] suits production.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Add `Secure` to the session cookie (set when served behind TLS).
    pub secure_cookie: bool,
    /// Failed logins from one source before it is locked out.
    pub max_login_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Login attempts allowed per source per minute.
    pub logins_per_minute: u32,
    /// How long a browser session lasts.
    pub session_ttl: Duration,
    /// How often the live room view polls the mixer for changes.
    pub live_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            secure_cookie: false,
            max_login_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            logins_per_minute: 20,
            session_ttl: Duration::from_secs(12 * 3600),
            live_interval: Duration::from_millis(300),
        }
    }
}

/// Counters the admin itself exposes on `/metrics`.
#[derive(Default)]
pub(crate) struct AdminCounters {
    pub http_requests: AtomicU64,
    pub api_unauthorized: AtomicU64,
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub logins_refused: AtomicU64,
    pub csrf_refused: AtomicU64,
}

pub(crate) struct Inner {
    pub svc: AdminServices,
    pub cfg: AdminConfig,
    pub sessions: auth::Sessions,
    pub limiter: auth::LoginLimiter,
    pub counters: AdminCounters,
}

/// Everything the router's handlers share; cheap to clone.
#[derive(Clone)]
pub struct AdminState(pub(crate) Arc<Inner>);

impl AdminState {
    /// Build the state from supernode's services and the admin's configuration.
    pub fn new(services: AdminServices, config: AdminConfig) -> Self {
        let limiter = auth::LoginLimiter::new(
            config.max_login_failures,
            config.lockout,
            config.logins_per_minute,
        );
        AdminState(Arc::new(Inner {
            svc: services,
            cfg: config,
            sessions: auth::Sessions::default(),
            limiter,
            counters: AdminCounters::default(),
        }))
    }
}

/// The admin's whole HTTP surface: pages, `/api/v1`, `/metrics`, `/healthz`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(api::routes(state.clone()))
        .merge(pages::routes(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// Source address of a request (from `ConnectInfo`), for the login limiter.
pub(crate) fn source_ip(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

async fn security_headers(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    st.0.counters.http_requests.fetch_add(1, Ordering::Relaxed);
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: under it browsers send `Origin: null` with a same-origin form
    // POST (Fetch, "serializing a request origin"), which the CSRF guard must refuse, so
    // no form (login included) would work. `same-origin` sends no referrer off-site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Unknown paths: a problem document under `/api/`, plain text elsewhere.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::problem(StatusCode::NOT_FOUND, "no such API endpoint", &[])
    } else {
        (StatusCode::NOT_FOUND, "not found\n").into_response()
    }
}

/// A known path with the wrong method.
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        api::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint",
            &[],
        )
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response()
    }
}

async fn healthz(State(st): State<AdminState>) -> Response {
    let health = st.0.svc.node.health();
    let down: Vec<String> = health
        .iter()
        .filter(|c| !c.up)
        .map(|c| match &c.detail {
            Some(d) => format!("{}: {}", c.name, d),
            None => c.name.clone(),
        })
        .collect();
    if down.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("down: {}\n", down.join(", ")),
        )
            .into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    let mut text = st.0.svc.node.metrics();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let c = &st.0.counters;
    let counter = |text: &mut String, name: &str, help: &str, v: &AtomicU64| {
        text.push_str(&format!(
            "# HELP supernode_admin_{name} {help}\n# TYPE supernode_admin_{name} counter\nsupernode_admin_{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    };
    counter(
        &mut text,
        "http_requests_total",
        "HTTP requests served by the admin.",
        &c.http_requests,
    );
    counter(
        &mut text,
        "api_unauthorized_total",
        "API requests refused for a missing or bad token.",
        &c.api_unauthorized,
    );
    counter(
        &mut text,
        "logins_ok_total",
        "Successful admin logins.",
        &c.logins_ok,
    );
    counter(
        &mut text,
        "logins_failed_total",
        "Admin logins with a wrong password.",
        &c.logins_failed,
    );
    counter(
        &mut text,
        "logins_refused_total",
        "Admin logins refused by rate limit or lockout.",
        &c.logins_refused,
    );
    counter(
        &mut text,
        "csrf_refused_total",
        "State-changing form posts refused as cross-site.",
        &c.csrf_refused,
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
