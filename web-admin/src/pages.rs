//! Server-rendered HTML pages (maud). Every form works without JavaScript; the only
//! script, `static/live.js`, updates the live room view from Server-Sent Events.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use futures_util::stream::Stream;
use maud::{html, Markup, DOCTYPE};

use crate::auth::{ct_eq, verify_password, Refusal};
use crate::error::AdminError;
use crate::model::{NewAccount, NewRoom, Participant, RoomUpdate};
use crate::{source_ip, validate, AdminState};

const COOKIE: &str = "sn_session";
const CSS: &str = include_str!("../static/admin.css");
const LIVE_JS: &str = include_str!("../static/live.js");

type Fields = HashMap<String, String>;

pub(crate) fn routes(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/rooms", get(rooms_page).post(rooms_create))
        .route("/rooms/{name}", get(room_page).post(room_update))
        .route("/rooms/{name}/delete", post(room_delete))
        .route("/rooms/{name}/events", get(room_events))
        .route("/rooms/{name}/participants/{id}/mute", post(p_mute))
        .route("/rooms/{name}/participants/{id}/kick", post(p_kick))
        .route("/users", get(users_page).post(users_add))
        .route("/users/{user}/password", post(users_password))
        .route("/users/{user}/delete", post(users_delete))
        .route("/relay", get(relay_page))
        .route("/static/admin.css", get(css))
        .route("/static/live.js", get(js))
        .route_layer(axum::middleware::from_fn_with_state(state, csrf_guard))
}

/// A logged-in browser session; pages that need one redirect to `/login` without it.
pub(crate) struct Authed {
    id: String,
    csrf: String,
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn session_of(st: &AdminState, headers: &HeaderMap) -> Option<Authed> {
    let id = cookie_value(headers)?;
    let s = st.0.sessions.get(&id)?;
    Some(Authed { id, csrf: s.csrf })
}

impl FromRequestParts<AdminState> for Authed {
    type Rejection = Redirect;
    async fn from_request_parts(parts: &mut Parts, st: &AdminState) -> Result<Self, Redirect> {
        session_of(st, &parts.headers).ok_or_else(|| Redirect::to("/login"))
    }
}

fn forbidden(st: &AdminState, why: &str) -> Response {
    st.0.counters.csrf_refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::FORBIDDEN,
        Html(layout("Forbidden", None, html! { h1 { "Forbidden" } p { (why) } }).into_string()),
    )
        .into_response()
}

/// Refuse cross-site state changes: a foreign `Origin` or `Sec-Fetch-Site: cross-site`,
/// or (except for the login form) a missing session or a wrong `csrf` form field.
async fn csrf_guard(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let h = req.headers();
    if h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return forbidden(&st, "cross-site request refused");
    }
    if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let authority = origin.split_once("://").map(|(_, a)| a);
        if origin == "null" || host.is_none() || authority != host {
            return forbidden(&st, "request from a foreign origin refused");
        }
    }
    if req.uri().path() == "/login" {
        return next.run(req).await;
    }
    let Some(sess) = session_of(&st, h) else {
        return forbidden(&st, "no session: log in again");
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return forbidden(&st, "form too large");
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
    let token = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    match token {
        Some(t) if ct_eq(t.as_bytes(), sess.csrf.as_bytes()) => {}
        _ => return forbidden(&st, "missing or wrong CSRF token"),
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · supernode" }
                link rel="stylesheet" href="/static/admin.css";
            }
            body {
                @if let Some(csrf) = csrf {
                    nav {
                        a href="/" { "Dashboard" } " "
                        a href="/rooms" { "Rooms" } " "
                        a href="/users" { "Users" } " "
                        a href="/relay" { "Relay" } " "
                        form method="post" action="/logout" class="inline" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn page(title: &str, a: &Authed, body: Markup) -> Response {
    Html(layout(title, Some(&a.csrf), body).into_string()).into_response()
}

fn csrf_field(a: &Authed) -> Markup {
    html! { input type="hidden" name="csrf" value=(a.csrf); }
}

fn err_page(a: &Authed, e: AdminError) -> Response {
    let status = e.status();
    let mut r = page(
        "Error",
        a,
        html! { h1 { "Error" } p.error { (e.to_string()) } },
    );
    *r.status_mut() = status;
    r
}

fn field_msg(e: Option<&AdminError>, field: &str) -> Markup {
    html! {
        @if let Some(m) = e.and_then(|e| e.field_message(field)) {
            span.error id={(field) "-error"} { (m) }
        }
    }
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        LIVE_JS,
    )
        .into_response()
}

fn login_form(status: StatusCode, msg: Option<&str>) -> Response {
    let body = html! {
        h1 { "supernode admin" }
        form method="post" action="/login" {
            label for="password" { "Admin password" }
            input type="password" id="password" name="password" autocomplete="current-password" autofocus;
            @if let Some(m) = msg { span.error id="password-error" { (m) } }
            button type="submit" { "Log in" }
        }
    };
    (status, Html(layout("Log in", None, body).into_string())).into_response()
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, None)
}

async fn login(State(st): State<AdminState>, req: Request) -> Response {
    let src = source_ip(req.extensions());
    let form: Fields = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => serde_urlencoded::from_bytes(&b).unwrap_or_default(),
        Err(_) => Fields::new(),
    };
    let c = &st.0.counters;
    match st.0.limiter.check(&src) {
        Err(Refusal::Locked(s)) => {
            c.logins_refused.fetch_add(1, Ordering::Relaxed);
            return login_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "too many failed logins from this address; try again in {s} s"
                )),
            );
        }
        Err(Refusal::RateLimited) => {
            c.logins_refused.fetch_add(1, Ordering::Relaxed);
            return login_form(
                StatusCode::TOO_MANY_REQUESTS,
                Some("too many login attempts; wait a minute"),
            );
        }
        Ok(()) => {}
    }
    let phc = match st.0.svc.auth.password_hash() {
        Ok(Some(p)) => p,
        Ok(None) => {
            return login_form(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("no admin password is set: run `supernode admin set-password`"),
            )
        }
        Err(e) => return login_form(e.status(), Some(&e.to_string())),
    };
    let pw = form.get("password").map(String::as_str).unwrap_or("");
    if !verify_password(pw, &phc) {
        c.logins_failed.fetch_add(1, Ordering::Relaxed);
        let locked = st.0.limiter.failed(&src);
        let msg = if locked {
            "wrong password; this address is now locked out for a while"
        } else {
            "wrong password"
        };
        return login_form(StatusCode::UNAUTHORIZED, Some(msg));
    }
    st.0.limiter.succeeded(&src);
    c.logins_ok.fetch_add(1, Ordering::Relaxed);
    let (id, _) = st.0.sessions.create(st.0.cfg.session_ttl);
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        st.0.cfg.session_ttl.as_secs(),
        if st.0.cfg.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(State(st): State<AdminState>, a: Authed) -> Response {
    st.0.sessions.remove(&a.id);
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sn_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

async fn dashboard(State(st): State<AdminState>, a: Authed) -> Response {
    let s = st.0.svc.node.status();
    let health = st.0.svc.node.health();
    page(
        "Dashboard",
        &a,
        html! {
            h1 { "Node " (s.node_id) }
            p { "Domain " code { (s.domain) } " · version " (s.version) " · up " (s.uptime_s) " s" }
            h2 { "Health" }
            ul { @for c in &health { li { (c.name) ": " @if c.up { "up" } @else { "DOWN " (c.detail.clone().unwrap_or_default()) } } } }
            h2 { "Listeners" }
            ul { @for l in &s.listeners { li { (l.service) " " (l.transport) " " code { (l.addr) } } } }
            h2 { "Counts" }
            table {
                tr { th { "Registrations" } td { (s.counts.registrations) } }
                tr { th { "Active calls" } td { (s.counts.active_calls) } }
                tr { th { "Rooms" } td { (s.counts.rooms) } }
                tr { th { "Participants" } td { (s.counts.participants) } }
                tr { th { "Relay allocations" } td { (s.counts.relay_allocations) } }
            }
            h2 { "Mixer load" }
            table {
                tr { th { "Shard" } th { "Rooms" } th { "Participants" } th { "Load %" } }
                @for m in &s.mixer_shards { tr { td { (m.shard) } td { (m.rooms) } td { (m.participants) } td { (format!("{:.1}", m.load_pct)) } } }
            }
        },
    )
}

fn opt(f: &Fields, k: &str) -> Option<String> {
    f.get(k)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Parse the optional limit; a non-number is a field error.
fn parse_max(f: &Fields) -> Result<Option<u32>, AdminError> {
    match opt(f, "max_participants") {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| AdminError::invalid("max_participants", "must be a whole number")),
    }
}

fn rooms_view(st: &AdminState, a: &Authed, form: &Fields, err: Option<&AdminError>) -> Response {
    let rooms = match st.0.svc.rooms.list() {
        Ok(r) => r,
        Err(e) => return err_page(a, e),
    };
    let v = |k: &str| form.get(k).cloned().unwrap_or_default();
    page(
        "Rooms",
        a,
        html! {
            h1 { "Rooms" }
            table {
                tr { th { "Name" } th { "Dial" } th { "PIN" } th { "Max" } th { "Participants" } }
                @for r in &rooms {
                    tr {
                        td { a href={"/rooms/" (r.name)} { (r.name) } }
                        td { code.uri { (r.uri) } }
                        td { @if r.pin.is_some() { "yes" } @else { "no" } }
                        td { (r.max_participants.map(|m| m.to_string()).unwrap_or_else(|| "-".into())) }
                        td { (r.participants) }
                    }
                }
            }
            h2 { "Create a room" }
            @if let Some(e) = err { @if e.field_message("name").is_none() && e.field_message("pin").is_none() && e.field_message("max_participants").is_none() { p.error { (e.to_string()) } } }
            form method="post" action="/rooms" {
                (csrf_field(a))
                label for="name" { "Name" }
                input id="name" name="name" value=(v("name")) required;
                (field_msg(err, "name"))
                label for="pin" { "PIN (optional)" }
                input id="pin" name="pin" inputmode="numeric" value=(v("pin"));
                (field_msg(err, "pin"))
                label for="max_participants" { "Max participants (optional)" }
                input id="max_participants" name="max_participants" inputmode="numeric" value=(v("max_participants"));
                (field_msg(err, "max_participants"))
                button type="submit" { "Create" }
            }
        },
    )
}

async fn rooms_page(State(st): State<AdminState>, a: Authed) -> Response {
    rooms_view(&st, &a, &Fields::new(), None)
}

async fn rooms_create(State(st): State<AdminState>, a: Authed, Form(f): Form<Fields>) -> Response {
    let (max, max_err) = split_max(&f);
    let r = NewRoom {
        name: f
            .get("name")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        pin: opt(&f, "pin"),
        max_participants: max,
    };
    let res = merge(validate::new_room(&r), max_err).and_then(|_| st.0.svc.rooms.create(&r));
    match res {
        Ok(r) => Redirect::to(&format!("/rooms/{}", r.name)).into_response(),
        Err(e) => {
            let mut r = rooms_view(&st, &a, &f, Some(&e));
            *r.status_mut() = e.status();
            r
        }
    }
}

/// The parsed limit (none when unparsable) and the field error for an unparsable one.
fn split_max(f: &Fields) -> (Option<u32>, Option<AdminError>) {
    match parse_max(f) {
        Ok(m) => (m, None),
        Err(e) => (None, Some(e)),
    }
}

/// Combine a validation result with an extra field error, so the form shows all at once.
fn merge(res: Result<(), AdminError>, extra: Option<AdminError>) -> Result<(), AdminError> {
    match (res, extra) {
        (r, None) => r,
        (Ok(()), Some(e)) => Err(e),
        (Err(AdminError::Invalid(mut a)), Some(AdminError::Invalid(b))) => {
            a.extend(b);
            Err(AdminError::Invalid(a))
        }
        (Err(e), Some(_)) => Err(e),
    }
}

fn participant_row(a: &Authed, room: &str, p: &Participant) -> Markup {
    html! {
        tr id={"p-" (p.id)} data-id=(p.id) {
            td { (p.from) }
            td.codec { (p.codec) }
            td.talking { @if p.talking { span.talking { "talking" } } }
            td.level { meter min="0" max="100" value=(p.level) {} " " span.lv { (p.level) } }
            td.loss { (format!("{:.1}", p.loss_pct)) }
            td.jitter { (format!("{:.1}", p.jitter_ms)) }
            td {
                form method="post" action={"/rooms/" (room) "/participants/" (p.id) "/mute"} class="inline" {
                    (csrf_field(a))
                    input type="hidden" name="muted" value=(if p.muted { "false" } else { "true" });
                    button type="submit" class="mute" { @if p.muted { "Unmute" } @else { "Mute" } }
                }
                form method="post" action={"/rooms/" (room) "/participants/" (p.id) "/kick"} class="inline" {
                    (csrf_field(a))
                    button type="submit" class="kick" { "Kick" }
                }
            }
        }
    }
}

fn room_view(
    st: &AdminState,
    a: &Authed,
    name: &str,
    form: Option<&Fields>,
    err: Option<&AdminError>,
) -> Response {
    let room = match st.0.svc.rooms.get(name) {
        Ok(Some(r)) => r,
        Ok(None) => return err_page(a, AdminError::NotFound(format!("room {name}"))),
        Err(e) => return err_page(a, e),
    };
    let parts = st.0.svc.rooms.participants(name).unwrap_or_default();
    let pin = form
        .and_then(|f| f.get("pin").cloned())
        .unwrap_or_else(|| room.pin.clone().unwrap_or_default());
    let max = form
        .and_then(|f| f.get("max_participants").cloned())
        .unwrap_or_else(|| {
            room.max_participants
                .map(|m| m.to_string())
                .unwrap_or_default()
        });
    page(
        &room.name,
        a,
        html! {
            h1 { "Room " (room.name) }
            p { "Dial " code.uri { (room.uri) } }
            h2 { "Live" }
            table #participants data-room=(room.name) data-csrf=(a.csrf) {
                thead { tr { th { "Who" } th { "Codec" } th { "Talking" } th { "Level" } th { "Loss %" } th { "Jitter ms" } th {} } }
                tbody { @for p in &parts { (participant_row(a, &room.name, p)) } }
            }
            h2 { "Settings" }
            form method="post" action={"/rooms/" (room.name)} {
                (csrf_field(a))
                label for="pin" { "PIN (empty for none)" }
                input id="pin" name="pin" inputmode="numeric" value=(pin);
                (field_msg(err, "pin"))
                label for="max_participants" { "Max participants (empty for no limit)" }
                input id="max_participants" name="max_participants" inputmode="numeric" value=(max);
                (field_msg(err, "max_participants"))
                button type="submit" { "Save" }
            }
            form method="post" action={"/rooms/" (room.name) "/delete"} {
                (csrf_field(a))
                button type="submit" class="danger" { "Delete room" }
            }
            script src="/static/live.js" {}
        },
    )
}

async fn room_page(State(st): State<AdminState>, a: Authed, Path(name): Path<String>) -> Response {
    room_view(&st, &a, &name, None, None)
}

async fn room_update(
    State(st): State<AdminState>,
    a: Authed,
    Path(name): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let (max, max_err) = split_max(&f);
    let u = RoomUpdate {
        pin: opt(&f, "pin"),
        max_participants: max,
    };
    let res =
        merge(validate::room_update(&u), max_err).and_then(|_| st.0.svc.rooms.update(&name, &u));
    match res {
        Ok(_) => Redirect::to(&format!("/rooms/{name}")).into_response(),
        Err(e @ AdminError::Invalid(_)) => {
            let mut r = room_view(&st, &a, &name, Some(&f), Some(&e));
            *r.status_mut() = e.status();
            r
        }
        Err(e) => err_page(&a, e),
    }
}

async fn room_delete(
    State(st): State<AdminState>,
    a: Authed,
    Path(name): Path<String>,
) -> Response {
    match st.0.svc.rooms.delete(&name) {
        Ok(()) => Redirect::to("/rooms").into_response(),
        Err(e) => err_page(&a, e),
    }
}

async fn p_mute(
    State(st): State<AdminState>,
    a: Authed,
    Path((name, id)): Path<(String, String)>,
    Form(f): Form<Fields>,
) -> Response {
    let muted = f.get("muted").map(|v| v != "false").unwrap_or(true);
    match st.0.svc.rooms.set_muted(&name, &id, muted) {
        Ok(()) => Redirect::to(&format!("/rooms/{name}")).into_response(),
        Err(e) => err_page(&a, e),
    }
}

async fn p_kick(
    State(st): State<AdminState>,
    a: Authed,
    Path((name, id)): Path<(String, String)>,
) -> Response {
    match st.0.svc.rooms.kick(&name, &id) {
        Ok(()) => Redirect::to(&format!("/rooms/{name}")).into_response(),
        Err(e) => err_page(&a, e),
    }
}

struct Live {
    st: AdminState,
    room: String,
    prev: HashMap<String, Participant>,
    queue: VecDeque<Event>,
    first: bool,
    done: bool,
}

fn json_event(kind: &str, v: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .data(serde_json::to_string(v).unwrap_or_default())
}

impl Live {
    fn poll_changes(&mut self) {
        let now = match self.st.0.svc.rooms.participants(&self.room) {
            Ok(p) => p,
            Err(_) => {
                self.queue
                    .push_back(Event::default().event("gone").data(self.room.clone()));
                self.done = true;
                return;
            }
        };
        let mut next = HashMap::new();
        for p in now {
            match self.prev.get(&p.id) {
                None => self.queue.push_back(json_event("join", &p)),
                Some(old) if old != &p => self.queue.push_back(json_event("update", &p)),
                Some(_) => {}
            }
            next.insert(p.id.clone(), p);
        }
        for id in self.prev.keys() {
            if !next.contains_key(id) {
                self.queue
                    .push_back(json_event("leave", &serde_json::json!({ "id": id })));
            }
        }
        self.prev = next;
    }
}

/// Live changes of a room's participants as Server-Sent Events: `join`, `update`
/// (talking, level, loss, jitter, mute), `leave`, and `gone` when the room disappears.
async fn room_events(
    State(st): State<AdminState>,
    _a: Authed,
    Path(name): Path<String>,
) -> Response {
    let interval = st.0.cfg.live_interval;
    let live = Live {
        st,
        room: name,
        prev: HashMap::new(),
        queue: VecDeque::new(),
        first: true,
        done: false,
    };
    let stream = futures_util::stream::unfold(live, move |mut l| async move {
        loop {
            if let Some(ev) = l.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), l));
            }
            if l.done {
                return None;
            }
            if !l.first {
                tokio::time::sleep(interval).await;
            }
            l.first = false;
            l.poll_changes();
        }
    });
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn users_view(st: &AdminState, a: &Authed, form: &Fields, err: Option<&AdminError>) -> Response {
    let users = match st.0.svc.directory.list() {
        Ok(u) => u,
        Err(e) => return err_page(a, e),
    };
    let v = |k: &str| form.get(k).cloned().unwrap_or_default();
    page(
        "Users",
        a,
        html! {
            h1 { "SIP accounts" }
            @for u in &users {
                section.user {
                    h2 { (u.user) " " code { (u.aor) } }
                    table {
                        tr { th { "Contact" } th { "Expires in (s)" } th { "Transport" } th { "User agent" } }
                        @for r in st.0.svc.directory.registrations(&u.user).unwrap_or_default() {
                            tr { td { code { (r.contact) } } td { (r.expires_in_s) } td { (r.transport) } td { (r.user_agent.unwrap_or_default()) } }
                        }
                    }
                    form method="post" action={"/users/" (u.user) "/password"} class="inline" {
                        (csrf_field(a))
                        input type="password" name="password" placeholder="new password" autocomplete="new-password";
                        button type="submit" { "Reset password" }
                    }
                    form method="post" action={"/users/" (u.user) "/delete"} class="inline" {
                        (csrf_field(a))
                        button type="submit" class="danger" { "Delete" }
                    }
                }
            }
            h2 { "Add an account" }
            @if let Some(e) = err { @if e.field_message("user").is_none() && e.field_message("password").is_none() { p.error { (e.to_string()) } } }
            form method="post" action="/users" {
                (csrf_field(a))
                label for="user" { "User" }
                input id="user" name="user" value=(v("user")) required;
                (field_msg(err, "user"))
                label for="password" { "Password" }
                input id="password" type="password" name="password" autocomplete="new-password";
                (field_msg(err, "password"))
                button type="submit" { "Add" }
            }
        },
    )
}

async fn users_page(State(st): State<AdminState>, a: Authed) -> Response {
    users_view(&st, &a, &Fields::new(), None)
}

async fn users_add(State(st): State<AdminState>, a: Authed, Form(f): Form<Fields>) -> Response {
    let acc = NewAccount {
        user: f
            .get("user")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        password: f.get("password").cloned().unwrap_or_default(),
    };
    let res =
        validate::new_account(&acc).and_then(|_| st.0.svc.directory.add(&acc.user, &acc.password));
    match res {
        Ok(_) => Redirect::to("/users").into_response(),
        Err(e) => {
            let mut r = users_view(&st, &a, &f, Some(&e));
            *r.status_mut() = e.status();
            r
        }
    }
}

async fn users_password(
    State(st): State<AdminState>,
    a: Authed,
    Path(user): Path<String>,
    Form(f): Form<Fields>,
) -> Response {
    let pw = f.get("password").cloned().unwrap_or_default();
    let res = match validate::password(&pw) {
        Some(e) => Err(AdminError::Invalid(vec![e])),
        None => st.0.svc.directory.set_password(&user, &pw),
    };
    match res {
        Ok(()) => Redirect::to("/users").into_response(),
        Err(e @ AdminError::Invalid(_)) => {
            let mut r = users_view(&st, &a, &Fields::new(), Some(&e));
            *r.status_mut() = e.status();
            r
        }
        Err(e) => err_page(&a, e),
    }
}

async fn users_delete(
    State(st): State<AdminState>,
    a: Authed,
    Path(user): Path<String>,
) -> Response {
    match st.0.svc.directory.delete(&user) {
        Ok(()) => Redirect::to("/users").into_response(),
        Err(e) => err_page(&a, e),
    }
}

async fn relay_page(State(st): State<AdminState>, a: Authed) -> Response {
    let allocs = st.0.svc.relays.allocations().unwrap_or_default();
    let sessions = st.0.svc.relays.sessions().unwrap_or_default();
    page(
        "Relay",
        &a,
        html! {
            h1 { "Relay" }
            h2 { "TURN allocations" }
            table {
                tr { th { "Client" } th { "Relayed" } th { "User" } th { "Expires (s)" } th { "Perms" } th { "Channels" } th { "Bytes in" } th { "Bytes out" } }
                @for x in &allocs { tr { td { code { (x.client) } } td { code { (x.relayed) } } td { (x.username) } td { (x.expires_in_s) } td { (x.permissions) } td { (x.channels) } td { (x.bytes_in) } td { (x.bytes_out) } } }
            }
            h2 { "Anchored sessions" }
            table {
                tr { th { "Call-ID" } th { "A" } th { "B" } th { "Packets" } th { "Age (s)" } }
                @for s in &sessions { tr { td { code { (s.call_id) } } td { (s.a) } td { (s.b) } td { (s.packets) } td { (s.age_s) } } }
            }
        },
    )
}
