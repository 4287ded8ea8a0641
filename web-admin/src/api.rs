//! The JSON API under `/api/v1`, its bearer-token check, RFC 9457 problem documents and
//! the OpenAPI document generated from these handlers.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{OpenApi, ToSchema};

use crate::auth::{ct_eq, hash_token};
use crate::error::{AdminError, FieldError};
use crate::model::*;
use crate::turn::{turn_credentials, TurnCredentials, TurnRequest};
use crate::{validate, AdminState};

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Problem {
    /// Problem type URI (`about:blank` unless a more specific one applies).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Explanation of this occurrence.
    pub detail: String,
    /// Field errors, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

pub(crate) fn problem(status: StatusCode, detail: &str, errors: &[FieldError]) -> Response {
    let p = Problem {
        kind: if errors.is_empty() {
            "about:blank".into()
        } else {
            "urn:supernode:problem:validation".into()
        },
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: detail.to_string(),
        errors: errors.to_vec(),
    };
    let body = serde_json::to_vec(&p).unwrap_or_default();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let errors = match &self {
            AdminError::Invalid(e) => e.clone(),
            _ => vec![],
        };
        problem(self.status(), &self.to_string(), &errors)
    }
}

type ApiResult<T> = Result<T, AdminError>;

fn body<T>(r: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    r.map(|Json(v)| v).map_err(|e| match e {
        // Well-formed JSON of the wrong shape (missing field, wrong type): a 422 naming it.
        JsonRejection::JsonDataError(d) => AdminError::invalid("body", d.body_text()),
        other => AdminError::BadRequest(other.body_text()),
    })
}

/// Every API route, as `METHOD path`: the OpenAPI document must list each (a test checks).
pub const API_ROUTES: &[&str] = &[
    "GET /api/v1/node",
    "GET /api/v1/rooms",
    "POST /api/v1/rooms",
    "GET /api/v1/rooms/{name}",
    "PUT /api/v1/rooms/{name}",
    "DELETE /api/v1/rooms/{name}",
    "GET /api/v1/rooms/{name}/participants",
    "POST /api/v1/rooms/{name}/participants/{id}/mute",
    "POST /api/v1/rooms/{name}/participants/{id}/kick",
    "GET /api/v1/users",
    "POST /api/v1/users",
    "DELETE /api/v1/users/{user}",
    "PUT /api/v1/users/{user}/password",
    "GET /api/v1/users/{user}/registrations",
    "GET /api/v1/relay/allocations",
    "GET /api/v1/relay/sessions",
    "POST /api/v1/turn/credentials",
    "GET /api/v1/tokens",
    "POST /api/v1/tokens",
    "DELETE /api/v1/tokens/{id}",
];

pub(crate) fn routes(state: AdminState) -> Router<AdminState> {
    let protected = Router::new()
        .route("/api/v1/node", get(node_status))
        .route("/api/v1/rooms", get(rooms_list).post(rooms_create))
        .route(
            "/api/v1/rooms/{name}",
            get(rooms_get).put(rooms_update).delete(rooms_delete),
        )
        .route("/api/v1/rooms/{name}/participants", get(participants))
        .route(
            "/api/v1/rooms/{name}/participants/{id}/mute",
            post(participant_mute),
        )
        .route(
            "/api/v1/rooms/{name}/participants/{id}/kick",
            post(participant_kick),
        )
        .route("/api/v1/users", get(users_list).post(users_add))
        .route("/api/v1/users/{user}", axum::routing::delete(users_delete))
        .route("/api/v1/users/{user}/password", put(users_password))
        .route("/api/v1/users/{user}/registrations", get(registrations))
        .route("/api/v1/relay/allocations", get(allocations))
        .route("/api/v1/relay/sessions", get(sessions))
        .route("/api/v1/turn/credentials", post(turn))
        .route("/api/v1/tokens", get(tokens_list).post(tokens_create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens_revoke))
        .route_layer(axum::middleware::from_fn_with_state(state, require_token));
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .merge(protected)
}

async fn require_token(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match token {
        Some(t) if !t.is_empty() => {
            let h = hash_token(t);
            match st.0.svc.auth.tokens() {
                Ok(list) => list.iter().any(|k| ct_eq(k.hash.as_bytes(), h.as_bytes())),
                Err(e) => return e.into_response(),
            }
        }
        _ => false,
    };
    if !ok {
        st.0.counters
            .api_unauthorized
            .fetch_add(1, Ordering::Relaxed);
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "a valid API token is required: Authorization: Bearer <token> (supernode admin token create)",
            &[],
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"supernode\""),
        );
        return r;
    }
    next.run(req).await
}

#[utoipa::path(get, path = "/api/v1/node", tag = "node",
    responses((status = 200, body = NodeStatus), (status = 401, body = Problem)))]
async fn node_status(State(st): State<AdminState>) -> Json<NodeStatus> {
    Json(st.0.svc.node.status())
}

#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms",
    responses((status = 200, body = Vec<Room>), (status = 401, body = Problem)))]
async fn rooms_list(State(st): State<AdminState>) -> ApiResult<Json<Vec<Room>>> {
    Ok(Json(st.0.svc.rooms.list()?))
}

#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", request_body = NewRoom,
    responses((status = 201, body = Room), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn rooms_create(
    State(st): State<AdminState>,
    b: Result<Json<NewRoom>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Room>)> {
    let r = body(b)?;
    validate::new_room(&r)?;
    Ok((StatusCode::CREATED, Json(st.0.svc.rooms.create(&r)?)))
}

#[utoipa::path(get, path = "/api/v1/rooms/{name}", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses((status = 200, body = Room), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn rooms_get(
    State(st): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Room>> {
    st.0.svc
        .rooms
        .get(&name)?
        .map(Json)
        .ok_or_else(|| AdminError::NotFound(format!("room {name}")))
}

#[utoipa::path(put, path = "/api/v1/rooms/{name}", tag = "rooms", request_body = RoomUpdate,
    params(("name" = String, Path, description = "Room name")),
    responses((status = 200, body = Room), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn rooms_update(
    State(st): State<AdminState>,
    Path(name): Path<String>,
    b: Result<Json<RoomUpdate>, JsonRejection>,
) -> ApiResult<Json<Room>> {
    let u = body(b)?;
    validate::room_update(&u)?;
    Ok(Json(st.0.svc.rooms.update(&name, &u)?))
}

#[utoipa::path(delete, path = "/api/v1/rooms/{name}", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn rooms_delete(
    State(st): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    st.0.svc.rooms.delete(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/rooms/{name}/participants", tag = "rooms",
    params(("name" = String, Path, description = "Room name")),
    responses((status = 200, body = Vec<Participant>), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn participants(
    State(st): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<Participant>>> {
    Ok(Json(st.0.svc.rooms.participants(&name)?))
}

/// Mute request body.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct MuteRequest {
    /// True to mute, false to unmute (default true).
    #[serde(default = "yes")]
    muted: bool,
}

fn yes() -> bool {
    true
}

#[utoipa::path(post, path = "/api/v1/rooms/{name}/participants/{id}/mute", tag = "rooms",
    request_body(content = MuteRequest, description = "Mute (default) or unmute"),
    params(("name" = String, Path, description = "Room name"), ("id" = String, Path, description = "Participant id")),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn participant_mute(
    State(st): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
    b: Result<Json<MuteRequest>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let m = body(b)?;
    st.0.svc.rooms.set_muted(&name, &id, m.muted)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/rooms/{name}/participants/{id}/kick", tag = "rooms",
    params(("name" = String, Path, description = "Room name"), ("id" = String, Path, description = "Participant id")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn participant_kick(
    State(st): State<AdminState>,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    st.0.svc.rooms.kick(&name, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<Account>), (status = 401, body = Problem)))]
async fn users_list(State(st): State<AdminState>) -> ApiResult<Json<Vec<Account>>> {
    Ok(Json(st.0.svc.directory.list()?))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewAccount,
    responses((status = 201, body = Account), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn users_add(
    State(st): State<AdminState>,
    b: Result<Json<NewAccount>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Account>)> {
    let a = body(b)?;
    validate::new_account(&a)?;
    Ok((
        StatusCode::CREATED,
        Json(st.0.svc.directory.add(&a.user, &a.password)?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "SIP user")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn users_delete(
    State(st): State<AdminState>,
    Path(user): Path<String>,
) -> ApiResult<StatusCode> {
    st.0.svc.directory.delete(&user)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/users/{user}/password", tag = "users", request_body = PasswordReset,
    params(("user" = String, Path, description = "SIP user")),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn users_password(
    State(st): State<AdminState>,
    Path(user): Path<String>,
    b: Result<Json<PasswordReset>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let p = body(b)?;
    if let Some(e) = validate::password(&p.password) {
        return Err(AdminError::Invalid(vec![e]));
    }
    st.0.svc.directory.set_password(&user, &p.password)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users/{user}/registrations", tag = "users",
    params(("user" = String, Path, description = "SIP user")),
    responses((status = 200, body = Vec<Registration>), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn registrations(
    State(st): State<AdminState>,
    Path(user): Path<String>,
) -> ApiResult<Json<Vec<Registration>>> {
    Ok(Json(st.0.svc.directory.registrations(&user)?))
}

#[utoipa::path(get, path = "/api/v1/relay/allocations", tag = "relay",
    responses((status = 200, body = Vec<Allocation>), (status = 401, body = Problem)))]
async fn allocations(State(st): State<AdminState>) -> ApiResult<Json<Vec<Allocation>>> {
    Ok(Json(st.0.svc.relays.allocations()?))
}

#[utoipa::path(get, path = "/api/v1/relay/sessions", tag = "relay",
    responses((status = 200, body = Vec<AnchoredSession>), (status = 401, body = Problem)))]
async fn sessions(State(st): State<AdminState>) -> ApiResult<Json<Vec<AnchoredSession>>> {
    Ok(Json(st.0.svc.relays.sessions()?))
}

#[utoipa::path(post, path = "/api/v1/turn/credentials", tag = "relay",
    request_body(content = TurnRequest, description = "Optional user and ttl"),
    responses((status = 200, body = TurnCredentials), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)))]
async fn turn(
    State(st): State<AdminState>,
    b: Result<Json<TurnRequest>, JsonRejection>,
) -> ApiResult<Json<TurnCredentials>> {
    let r = match b {
        Err(JsonRejection::MissingJsonContentType(_)) => TurnRequest::default(),
        other => body(other)?,
    };
    let user = r.user.unwrap_or_else(|| "webrtc".to_string());
    let mut errs = Vec::new();
    if user.is_empty() || user.len() > 128 || user.contains(':') {
        errs.push(FieldError {
            field: "user".into(),
            message: "must be 1 to 128 characters without ':'".into(),
        });
    }
    let ttl = r.ttl.unwrap_or(3600);
    if !(60..=86400).contains(&ttl) {
        errs.push(FieldError {
            field: "ttl".into(),
            message: "must be between 60 and 86400 seconds".into(),
        });
    }
    if !errs.is_empty() {
        return Err(AdminError::Invalid(errs));
    }
    let secret = st.0.svc.relays.turn_secret().ok_or_else(|| {
        AdminError::Unavailable("the relay has no TURN REST secret configured".into())
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Json(turn_credentials(
        &secret,
        &user,
        ttl,
        now,
        st.0.svc.relays.turn_uris(),
    )))
}

/// What the operator sends to create an API token.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct NewToken {
    /// Label for the token (1-64 characters), shown in listings.
    name: String,
}

/// A token just created: the secret is shown this once and never stored.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedToken {
    /// Public identifier (used to revoke).
    id: String,
    /// The label given.
    name: String,
    /// The bearer token itself.
    token: String,
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<ApiToken>), (status = 401, body = Problem)))]
async fn tokens_list(State(st): State<AdminState>) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(st.0.svc.auth.tokens()?))
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 422, body = Problem)))]
async fn tokens_create(
    State(st): State<AdminState>,
    b: Result<Json<NewToken>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let n = body(b)?;
    let name = n.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(AdminError::invalid(
            "name",
            "must be 1 to 64 printable characters",
        ));
    }
    let (token, rec) = crate::auth::new_api_token(name);
    st.0.svc.auth.add_token(&rec)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: rec.id,
            name: rec.name,
            token,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn tokens_revoke(
    State(st): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    st.0.svc.auth.revoke_token(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(OpenApi)]
#[openapi(
    info(title = "supernode admin API", description = "Rooms, SIP accounts, relay and node status of a supernode. Authenticate with `Authorization: Bearer <token>` (create one with `supernode admin token create`). Errors are RFC 9457 problem documents."),
    paths(node_status, rooms_list, rooms_create, rooms_get, rooms_update, rooms_delete, participants,
        participant_mute, participant_kick, users_list, users_add, users_delete, users_password,
        registrations, allocations, sessions, turn, tokens_list, tokens_create, tokens_revoke),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The OpenAPI 3.1 document of the JSON API, as a JSON value.
pub fn openapi() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi())
}
