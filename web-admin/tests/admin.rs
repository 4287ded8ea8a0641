//! In-process tests of the admin router with fake services.
// Test fakes and helpers outside `#[test]` functions: a panic is the right failure here.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use web_admin::*;

const DOMAIN: &str = "example.test";
const PASSWORD: &str = "hunter2-admin";

#[derive(Default)]
struct FakeRooms {
    rooms: Mutex<BTreeMap<String, (Room, Vec<Participant>)>>,
}

fn participant(id: &str) -> Participant {
    Participant {
        id: id.into(),
        from: format!("sip:{id}@{DOMAIN}"),
        codec: "opus".into(),
        talking: false,
        level: 10,
        loss_pct: 0.0,
        jitter_ms: 1.5,
        muted: false,
    }
}

impl Rooms for FakeRooms {
    fn list(&self) -> AdminResult<Vec<Room>> {
        Ok(self
            .rooms
            .lock()
            .unwrap()
            .values()
            .map(|r| r.0.clone())
            .collect())
    }
    fn get(&self, name: &str) -> AdminResult<Option<Room>> {
        Ok(self.rooms.lock().unwrap().get(name).map(|r| r.0.clone()))
    }
    fn create(&self, r: &NewRoom) -> AdminResult<Room> {
        let mut m = self.rooms.lock().unwrap();
        if m.contains_key(&r.name) {
            return Err(AdminError::Conflict(format!("room {} exists", r.name)));
        }
        let room = Room {
            name: r.name.clone(),
            uri: format!("sip:{}@{DOMAIN}", r.name),
            pin: r.pin.clone(),
            max_participants: r.max_participants,
            participants: 0,
        };
        m.insert(r.name.clone(), (room.clone(), vec![]));
        Ok(room)
    }
    fn update(&self, name: &str, u: &RoomUpdate) -> AdminResult<Room> {
        let mut m = self.rooms.lock().unwrap();
        let r = m
            .get_mut(name)
            .ok_or_else(|| AdminError::NotFound(format!("room {name}")))?;
        r.0.pin = u.pin.clone();
        r.0.max_participants = u.max_participants;
        Ok(r.0.clone())
    }
    fn delete(&self, name: &str) -> AdminResult<()> {
        self.rooms
            .lock()
            .unwrap()
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| AdminError::NotFound(format!("room {name}")))
    }
    fn participants(&self, name: &str) -> AdminResult<Vec<Participant>> {
        self.rooms
            .lock()
            .unwrap()
            .get(name)
            .map(|r| r.1.clone())
            .ok_or_else(|| AdminError::NotFound(format!("room {name}")))
    }
    fn set_muted(&self, room: &str, p: &str, muted: bool) -> AdminResult<()> {
        let mut m = self.rooms.lock().unwrap();
        let r = m
            .get_mut(room)
            .ok_or_else(|| AdminError::NotFound(format!("room {room}")))?;
        let p =
            r.1.iter_mut()
                .find(|x| x.id == p)
                .ok_or_else(|| AdminError::NotFound(format!("participant {p}")))?;
        p.muted = muted;
        Ok(())
    }
    fn kick(&self, room: &str, p: &str) -> AdminResult<()> {
        let mut m = self.rooms.lock().unwrap();
        let r = m
            .get_mut(room)
            .ok_or_else(|| AdminError::NotFound(format!("room {room}")))?;
        let before = r.1.len();
        r.1.retain(|x| x.id != p);
        if r.1.len() == before {
            return Err(AdminError::NotFound(format!("participant {p}")));
        }
        Ok(())
    }
}

#[derive(Default)]
struct FakeDirectory {
    users: Mutex<BTreeMap<String, String>>,
}

impl Directory for FakeDirectory {
    fn list(&self) -> AdminResult<Vec<Account>> {
        Ok(self
            .users
            .lock()
            .unwrap()
            .keys()
            .map(|u| Account {
                user: u.clone(),
                aor: format!("sip:{u}@{DOMAIN}"),
                registrations: u32::from(u == "alice"),
            })
            .collect())
    }
    fn add(&self, user: &str, password: &str) -> AdminResult<Account> {
        let mut m = self.users.lock().unwrap();
        if m.contains_key(user) {
            return Err(AdminError::Conflict(format!("user {user} exists")));
        }
        m.insert(user.into(), password.into());
        Ok(Account {
            user: user.into(),
            aor: format!("sip:{user}@{DOMAIN}"),
            registrations: 0,
        })
    }
    fn set_password(&self, user: &str, password: &str) -> AdminResult<()> {
        let mut m = self.users.lock().unwrap();
        let p = m
            .get_mut(user)
            .ok_or_else(|| AdminError::NotFound(format!("user {user}")))?;
        *p = password.into();
        Ok(())
    }
    fn delete(&self, user: &str) -> AdminResult<()> {
        self.users
            .lock()
            .unwrap()
            .remove(user)
            .map(|_| ())
            .ok_or_else(|| AdminError::NotFound(format!("user {user}")))
    }
    fn registrations(&self, user: &str) -> AdminResult<Vec<Registration>> {
        if !self.users.lock().unwrap().contains_key(user) {
            return Err(AdminError::NotFound(format!("user {user}")));
        }
        Ok(if user == "alice" {
            vec![Registration {
                contact: "sip:alice@192.0.2.7:5062".into(),
                expires_in_s: 3599,
                transport: "udp".into(),
                user_agent: Some("baresip".into()),
            }]
        } else {
            vec![]
        })
    }
}

struct FakeRelays {
    secret: Option<Vec<u8>>,
}

impl Relays for FakeRelays {
    fn allocations(&self) -> AdminResult<Vec<Allocation>> {
        Ok(vec![Allocation {
            client: "192.0.2.1:5000".into(),
            relayed: "198.51.100.1:49152".into(),
            username: "1700000000:webrtc".into(),
            expires_in_s: 600,
            permissions: 1,
            channels: 1,
            bytes_out: 100,
            bytes_in: 200,
        }])
    }
    fn sessions(&self) -> AdminResult<Vec<AnchoredSession>> {
        Ok(vec![AnchoredSession {
            call_id: "abc@host".into(),
            a: "192.0.2.1:4000".into(),
            b: "192.0.2.2:4002".into(),
            packets: 50,
            age_s: 1,
        }])
    }
    fn turn_secret(&self) -> Option<Vec<u8>> {
        self.secret.clone()
    }
    fn turn_uris(&self) -> Vec<String> {
        vec!["turn:127.0.0.1:3478?transport=udp".into()]
    }
}

struct FakeNode {
    health: Mutex<Vec<ComponentHealth>>,
}

impl Node for FakeNode {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: "12D3KooWtest".into(),
            domain: DOMAIN.into(),
            version: "0.1.0".into(),
            uptime_s: 42,
            listeners: vec![Listener {
                service: "sip".into(),
                transport: "udp".into(),
                addr: "127.0.0.1:5060".into(),
            }],
            counts: Counts {
                rooms: 1,
                ..Counts::default()
            },
            mixer_shards: vec![ShardLoad {
                shard: 0,
                rooms: 1,
                participants: 2,
                load_pct: 3.5,
            }],
        }
    }
    fn health(&self) -> Vec<ComponentHealth> {
        self.health.lock().unwrap().clone()
    }
    fn metrics(&self) -> String {
        "# HELP supernode_sip_requests_total SIP requests received.\n# TYPE supernode_sip_requests_total counter\nsupernode_sip_requests_total 7\n".into()
    }
}

#[derive(Default)]
struct FakeAuth {
    phc: Mutex<Option<String>>,
    tokens: Mutex<Vec<ApiToken>>,
}

impl AdminAuth for FakeAuth {
    fn password_hash(&self) -> AdminResult<Option<String>> {
        Ok(self.phc.lock().unwrap().clone())
    }
    fn set_password_hash(&self, phc: &str) -> AdminResult<()> {
        *self.phc.lock().unwrap() = Some(phc.into());
        Ok(())
    }
    fn tokens(&self) -> AdminResult<Vec<ApiToken>> {
        Ok(self.tokens.lock().unwrap().clone())
    }
    fn add_token(&self, t: &ApiToken) -> AdminResult<()> {
        self.tokens.lock().unwrap().push(t.clone());
        Ok(())
    }
    fn revoke_token(&self, id: &str) -> AdminResult<()> {
        let mut t = self.tokens.lock().unwrap();
        let before = t.len();
        t.retain(|t| t.id != id);
        if t.len() == before {
            return Err(AdminError::NotFound(format!("token {id}")));
        }
        Ok(())
    }
}

struct App {
    router: Router,
    rooms: Arc<FakeRooms>,
    directory: Arc<FakeDirectory>,
    node: Arc<FakeNode>,
    token: String,
}

fn up(name: &str) -> ComponentHealth {
    ComponentHealth {
        name: name.into(),
        up: true,
        detail: None,
    }
}

fn app_with(secret: Option<Vec<u8>>) -> App {
    let rooms = Arc::new(FakeRooms::default());
    let directory = Arc::new(FakeDirectory::default());
    let node = Arc::new(FakeNode {
        health: Mutex::new(vec![up("sip"), up("relay"), up("mixer")]),
    });
    let auth = Arc::new(FakeAuth::default());
    auth.set_password_hash(&auth::hash_password(PASSWORD).unwrap())
        .unwrap();
    let (token, rec) = auth::new_api_token("tests");
    auth.add_token(&rec).unwrap();
    let state = AdminState::new(
        AdminServices {
            rooms: rooms.clone(),
            directory: directory.clone(),
            relays: Arc::new(FakeRelays { secret }),
            node: node.clone(),
            auth,
        },
        AdminConfig {
            max_login_failures: 3,
            live_interval: Duration::from_millis(20),
            ..AdminConfig::default()
        },
    );
    App {
        router: router(state),
        rooms,
        directory,
        node,
        token,
    }
}

fn app() -> App {
    app_with(Some(b"turn-secret".to_vec()))
}

fn from_ip(ip: &str) -> ConnectInfo<SocketAddr> {
    ConnectInfo(format!("{ip}:40000").parse().unwrap())
}

async fn send(app: &App, req: Request<Body>) -> Response<Body> {
    app.router.clone().oneshot(req).await.unwrap()
}

async fn api(
    app: &App,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", app.token));
    let body = match body {
        Some(v) => {
            b = b.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let res = send(app, b.body(body).unwrap()).await;
    let status = res.status();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, ct, v)
}

async fn text(res: Response<Body>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn assert_problem(status: StatusCode, ct: &str, v: &Value, expect: StatusCode) {
    assert_eq!(status, expect, "{v}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(v["status"], expect.as_u16());
    assert!(v["type"].is_string() && v["title"].is_string() && v["detail"].is_string());
}

fn concrete(route: &str) -> (String, String) {
    let (m, p) = route.split_once(' ').unwrap();
    let p = p
        .replace("{name}", "r1")
        .replace("{id}", "p1")
        .replace("{user}", "alice");
    (m.to_string(), p)
}

#[tokio::test]
async fn every_api_route_needs_a_token() {
    let app = app();
    for route in API_ROUTES {
        let (m, p) = concrete(route);
        for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
            let mut b = Request::builder().method(m.as_str()).uri(&p);
            if let Some(a) = auth {
                b = b.header(header::AUTHORIZATION, a);
            }
            let res = send(&app, b.body(Body::empty()).unwrap()).await;
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{route}");
            assert_eq!(
                res.headers()[header::CONTENT_TYPE],
                "application/problem+json"
            );
            assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }
}

#[tokio::test]
async fn openapi_document_lists_every_route_without_token() {
    let app = app();
    let res = send(
        &app,
        Request::get("/api/v1/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let v: Value = serde_json::from_str(&text(res).await).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    for route in API_ROUTES {
        let (m, p) = route.split_once(' ').unwrap();
        assert!(
            v["paths"][p][m.to_lowercase()].is_object(),
            "openapi lacks {route}"
        );
    }
    let n: usize = v["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|ops| ops.as_object().unwrap().len())
        .sum();
    assert_eq!(n, API_ROUTES.len(), "undocumented or unlisted operations");
    assert!(v["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn rooms_crud_over_api() {
    let app = app();
    let (s, _, v) = api(
        &app,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "standup", "pin": "1234", "max_participants": 10})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["uri"], format!("sip:standup@{DOMAIN}"));
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "standup"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::CONFLICT);
    let (s, _, v) = api(&app, "GET", "/api/v1/rooms", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, _, v) = api(&app, "GET", "/api/v1/rooms/standup", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["pin"], "1234");
    let (s, _, v) = api(
        &app,
        "PUT",
        "/api/v1/rooms/standup",
        Some(json!({"pin": null, "max_participants": 20})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["max_participants"], 20);
    assert!(v["pin"].is_null());
    let (s, ct, v) = api(
        &app,
        "PUT",
        "/api/v1/rooms/standup",
        Some(json!({"pin": "12"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"][0]["field"], "pin");
    let (s, ct, v) = api(&app, "PUT", "/api/v1/rooms/nope", Some(json!({}))).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, _, _) = api(&app, "DELETE", "/api/v1/rooms/standup", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, ct, v) = api(&app, "GET", "/api/v1/rooms/standup", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, ct, v) = api(&app, "DELETE", "/api/v1/rooms/standup", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_room_over_api_is_a_field_problem_and_stores_nothing() {
    let app = app();
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/rooms",
        Some(json!({"name": "bad name@x", "max_participants": 1})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "max_participants"]);
    assert!(app.rooms.rooms.lock().unwrap().is_empty());
    let (s, ct, v) = api(&app, "POST", "/api/v1/rooms", Some(json!({"nom": 1}))).await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    // Not JSON at all.
    let res = send(
        &app,
        Request::post("/api/v1/rooms")
            .header(header::AUTHORIZATION, format!("Bearer {}", app.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{not json"))
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
}

#[tokio::test]
async fn participants_mute_and_kick_over_api() {
    let app = app();
    api(&app, "POST", "/api/v1/rooms", Some(json!({"name": "r1"}))).await;
    app.rooms
        .rooms
        .lock()
        .unwrap()
        .get_mut("r1")
        .unwrap()
        .1
        .push(participant("p1"));
    let (s, _, v) = api(&app, "GET", "/api/v1/rooms/r1/participants", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["codec"], "opus");
    let (s, ct, v) = api(&app, "GET", "/api/v1/rooms/zz/participants", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, _, _) = api(
        &app,
        "POST",
        "/api/v1/rooms/r1/participants/p1/mute",
        Some(json!({"muted": true})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(app.rooms.rooms.lock().unwrap()["r1"].1[0].muted);
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/rooms/r1/participants/nobody/mute",
        Some(json!({})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, _, _) = api(&app, "POST", "/api/v1/rooms/r1/participants/p1/kick", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(app.rooms.rooms.lock().unwrap()["r1"].1.is_empty());
    let (s, ct, v) = api(&app, "POST", "/api/v1/rooms/r1/participants/p1/kick", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn users_over_api() {
    let app = app();
    let (s, _, v) = api(
        &app,
        "POST",
        "/api/v1/users",
        Some(json!({"user": "alice", "password": "s3cret-pass"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["aor"], format!("sip:alice@{DOMAIN}"));
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/users",
        Some(json!({"user": "alice", "password": "s3cret-pass"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::CONFLICT);
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/users",
        Some(json!({"user": "bo b", "password": "short"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let (s, _, v) = api(&app, "GET", "/api/v1/users", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, _, v) = api(&app, "GET", "/api/v1/users/alice/registrations", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["transport"], "udp");
    let (s, ct, v) = api(&app, "GET", "/api/v1/users/nobody/registrations", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, _, _) = api(
        &app,
        "PUT",
        "/api/v1/users/alice/password",
        Some(json!({"password": "another-pass"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.directory.users.lock().unwrap()["alice"], "another-pass");
    let (s, ct, v) = api(
        &app,
        "PUT",
        "/api/v1/users/alice/password",
        Some(json!({"password": "x"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, ct, v) = api(
        &app,
        "PUT",
        "/api/v1/users/nobody/password",
        Some(json!({"password": "another-pass"})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
    let (s, _, _) = api(&app, "DELETE", "/api/v1/users/alice", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, ct, v) = api(&app, "DELETE", "/api/v1/users/alice", None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn relay_and_turn_credentials_over_api() {
    let app = app();
    let (s, _, v) = api(&app, "GET", "/api/v1/relay/allocations", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["relayed"], "198.51.100.1:49152");
    let (s, _, v) = api(&app, "GET", "/api/v1/relay/sessions", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["call_id"], "abc@host");
    let (s, _, v) = api(
        &app,
        "POST",
        "/api/v1/turn/credentials",
        Some(json!({"user": "bob", "ttl": 600})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (expiry, user) = v["username"].as_str().unwrap().split_once(':').unwrap();
    assert_eq!(user, "bob");
    let expiry: u64 = expiry.parse().unwrap();
    let expect = turn::turn_credentials(b"turn-secret", "bob", 600, expiry - 600, vec![]);
    assert_eq!(v["password"], expect.password);
    assert_eq!(v["ttl"], 600);
    assert_eq!(v["uris"][0], "turn:127.0.0.1:3478?transport=udp");
    // No body at all: defaults.
    let (s, _, v) = api(&app, "POST", "/api/v1/turn/credentials", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["username"].as_str().unwrap().ends_with(":webrtc"));
    let (s, ct, v) = api(
        &app,
        "POST",
        "/api/v1/turn/credentials",
        Some(json!({"user": "a:b", "ttl": 5})),
    )
    .await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    let app = app_with(None);
    let (s, ct, v) = api(&app, "POST", "/api/v1/turn/credentials", Some(json!({}))).await;
    assert_problem(s, &ct, &v, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn node_status_over_api() {
    let app = app();
    let (s, _, v) = api(&app, "GET", "/api/v1/node", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["domain"], DOMAIN);
    assert_eq!(v["mixer_shards"][0]["participants"], 2);
}

#[tokio::test]
async fn unknown_api_path_is_404_problem() {
    let app = app();
    let (s, _, _) = api(&app, "GET", "/api/v1/nothing", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_is_prometheus_text() {
    let app = app();
    let res = send(&app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let t = text(res).await;
    assert!(t.contains("supernode_sip_requests_total 7\n"));
    assert!(t.contains("# TYPE supernode_admin_http_requests_total counter\n"));
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("supernode_"), "{line}");
        value.parse::<f64>().unwrap();
    }
}

#[tokio::test]
async fn healthz_names_what_is_down() {
    let app = app();
    let res = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::OK);
    app.node.health.lock().unwrap()[1] = ComponentHealth {
        name: "relay".into(),
        up: false,
        detail: Some("socket closed".into()),
    };
    let res = send(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let t = text(res).await;
    assert!(t.contains("relay: socket closed"), "{t}");
    assert!(!t.contains("sip"));
}

#[tokio::test]
async fn security_headers_on_every_response() {
    let app = app();
    for uri in [
        "/healthz",
        "/metrics",
        "/login",
        "/api/v1/rooms",
        "/rooms",
        "/nothing",
    ] {
        let res = send(&app, Request::get(uri).body(Body::empty()).unwrap()).await;
        let h = res.headers();
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{uri}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        // `no-referrer` would make browsers send `Origin: null` on our own form posts,
        // which the CSRF guard refuses (seen in headless Chromium: no login possible).
        assert_eq!(h[header::REFERRER_POLICY], "same-origin", "{uri}");
    }
}

/// Log in from `ip`; returns the response.
async fn login_as(app: &App, ip: &str, password: &str) -> Response<Body> {
    let mut req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "admin.test")
        .header(header::ORIGIN, "http://admin.test")
        .body(Body::from(format!("password={password}")))
        .unwrap();
    req.extensions_mut().insert(from_ip(ip));
    send(app, req).await
}

struct Browser {
    cookie: String,
    csrf: String,
}

async fn logged_in(app: &App) -> Browser {
    let res = login_as(app, "192.0.2.10", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    let page = get_page(app, &cookie, "/rooms").await;
    let i = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = page[i..].split('"').next().unwrap().to_string();
    Browser { cookie, csrf }
}

async fn get_page(app: &App, cookie: &str, uri: &str) -> String {
    let res = send(
        app,
        Request::get(uri)
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "{uri}");
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    text(res).await
}

async fn post_form(
    app: &App,
    b: &Browser,
    uri: &str,
    form: &str,
    origin: Option<&str>,
) -> Response<Body> {
    let mut r = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::COOKIE, &b.cookie)
        .header(header::HOST, "admin.test");
    if let Some(o) = origin {
        r = r.header(header::ORIGIN, o);
    }
    send(app, r.body(Body::from(form.to_string())).unwrap()).await
}

#[tokio::test]
async fn login_and_logout_with_session_cookie() {
    let app = app();
    let res = send(&app, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/login");
    let login = text(send(&app, Request::get("/login").body(Body::empty()).unwrap()).await).await;
    assert!(login.contains("type=\"password\""));

    let res = login_as(&app, "192.0.2.10", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.starts_with("sn_session="));
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    let b = logged_in(&app).await;
    let dash = get_page(&app, &b.cookie, "/").await;
    assert!(dash.contains("12D3KooWtest") && dash.contains("127.0.0.1:5060"));

    let res = post_form(&app, &b, "/logout", &format!("csrf={}", b.csrf), None).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let res = send(
        &app,
        Request::get("/")
            .header(header::COOKIE, &b.cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn wrong_password_then_lockout_per_source() {
    let app = app();
    for _ in 0..2 {
        let res = login_as(&app, "192.0.2.66", "nope").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().get(header::SET_COOKIE).is_none());
        assert!(text(res).await.contains("wrong password"));
    }
    let res = login_as(&app, "192.0.2.66", "nope").await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Locked out now: even the right password is refused.
    let res = login_as(&app, "192.0.2.66", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get(header::SET_COOKIE).is_none());
    assert!(text(res).await.contains("try again in"));
    // Another source is not affected.
    let res = login_as(&app, "192.0.2.67", PASSWORD).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let app = app();
    let b = logged_in(&app).await;
    let form = "name=evil";
    let res = post_form(&app, &b, "/rooms", form, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "missing token");
    let res = post_form(&app, &b, "/rooms", &format!("{form}&csrf=wrong"), None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "wrong token");
    let res = post_form(
        &app,
        &b,
        "/rooms",
        &format!("{form}&csrf={}", b.csrf),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "foreign origin");
    let no_cookie = Browser {
        cookie: String::new(),
        csrf: b.csrf.clone(),
    };
    let res = post_form(
        &app,
        &no_cookie,
        "/rooms",
        &format!("{form}&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "no session");
    assert!(app.rooms.rooms.lock().unwrap().is_empty());
    // The same post from the admin's own page goes through.
    let res = post_form(
        &app,
        &b,
        "/rooms",
        &format!("{form}&csrf={}", b.csrf),
        Some("http://admin.test"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/rooms/evil");
    // A login form posted from another site is refused too.
    let mut req = Request::post("/login")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::HOST, "admin.test")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::from(format!("password={PASSWORD}")))
        .unwrap();
    req.extensions_mut().insert(from_ip("192.0.2.1"));
    assert_eq!(send(&app, req).await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_room_name_in_form_shows_message_beside_field_and_stores_nothing() {
    let app = app();
    let b = logged_in(&app).await;
    let res = post_form(
        &app,
        &b,
        "/rooms",
        &format!("name=bad+name&pin=12&max_participants=lots&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = text(res).await;
    assert!(page.contains("id=\"name-error\""), "{page}");
    assert!(page.contains("a SIP user part"));
    assert!(page.contains("value=\"bad name\""), "input kept");
    assert!(app.rooms.rooms.lock().unwrap().is_empty());
    let res = post_form(
        &app,
        &b,
        "/rooms",
        &format!("name=ok&pin=12&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(res).await.contains("id=\"pin-error\""));
    assert!(app.rooms.rooms.lock().unwrap().is_empty());
}

#[tokio::test]
async fn room_pages_create_edit_mute_kick_delete() {
    let app = app();
    let b = logged_in(&app).await;
    let res = post_form(
        &app,
        &b,
        "/rooms",
        &format!("name=standup&pin=&max_participants=&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let list = get_page(&app, &b.cookie, "/rooms").await;
    assert!(list.contains(&format!("sip:standup@{DOMAIN}")));
    app.rooms
        .rooms
        .lock()
        .unwrap()
        .get_mut("standup")
        .unwrap()
        .1
        .push(participant("p1"));
    let room = get_page(&app, &b.cookie, "/rooms/standup").await;
    assert!(room.contains(&format!("sip:standup@{DOMAIN}")));
    assert!(room.contains("id=\"p-p1\"") && room.contains("/static/live.js"));
    let res = post_form(
        &app,
        &b,
        "/rooms/standup",
        &format!("pin=4321&max_participants=5&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        app.rooms.rooms.lock().unwrap()["standup"].0.pin.as_deref(),
        Some("4321")
    );
    let res = post_form(
        &app,
        &b,
        "/rooms/standup",
        &format!("pin=&max_participants=1&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(res).await.contains("id=\"max_participants-error\""));
    assert_eq!(
        app.rooms.rooms.lock().unwrap()["standup"]
            .0
            .max_participants,
        Some(5)
    );
    let res = post_form(
        &app,
        &b,
        "/rooms/standup/participants/p1/mute",
        &format!("muted=true&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(app.rooms.rooms.lock().unwrap()["standup"].1[0].muted);
    let res = post_form(
        &app,
        &b,
        "/rooms/standup/participants/p1/kick",
        &format!("csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(app.rooms.rooms.lock().unwrap()["standup"].1.is_empty());
    let res = post_form(
        &app,
        &b,
        "/rooms/standup/delete",
        &format!("csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(app.rooms.rooms.lock().unwrap().is_empty());
    let res = send(
        &app,
        Request::get("/rooms/standup")
            .header(header::COOKIE, &b.cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn users_and_relay_pages() {
    let app = app();
    let b = logged_in(&app).await;
    let res = post_form(
        &app,
        &b,
        "/users",
        &format!("user=alice&password=s3cret-pass&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let page = get_page(&app, &b.cookie, "/users").await;
    assert!(page.contains("sip:alice@192.0.2.7:5062") && page.contains("baresip"));
    let res = post_form(
        &app,
        &b,
        "/users",
        &format!("user=alice&password=x&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(res).await.contains("id=\"password-error\""));
    let res = post_form(
        &app,
        &b,
        "/users/alice/password",
        &format!("password=new-password&csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.directory.users.lock().unwrap()["alice"], "new-password");
    let res = post_form(
        &app,
        &b,
        "/users/alice/delete",
        &format!("csrf={}", b.csrf),
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(app.directory.users.lock().unwrap().is_empty());
    let relay = get_page(&app, &b.cookie, "/relay").await;
    assert!(relay.contains("198.51.100.1:49152") && relay.contains("abc@host"));
    let js = send(
        &app,
        Request::get("/static/live.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(js.status(), StatusCode::OK);
}

async fn next_event(body: &mut Body) -> String {
    let mut out = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("event within 5 s")
            .unwrap()
            .unwrap();
        if let Ok(d) = frame.into_data() {
            out.push_str(std::str::from_utf8(&d).unwrap());
            if out.ends_with("\n\n") {
                return out;
            }
        }
    }
}

#[tokio::test]
async fn live_view_streams_join_update_leave() {
    let app = app();
    let b = logged_in(&app).await;
    api(&app, "POST", "/api/v1/rooms", Some(json!({"name": "live"}))).await;
    app.rooms
        .rooms
        .lock()
        .unwrap()
        .get_mut("live")
        .unwrap()
        .1
        .push(participant("p1"));
    let res = send(
        &app,
        Request::get("/rooms/live/events")
            .header(header::COOKIE, &b.cookie)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    let ev = next_event(&mut body).await;
    assert!(
        ev.starts_with("event: join\n") && ev.contains("\"id\":\"p1\""),
        "{ev}"
    );
    {
        let mut m = app.rooms.rooms.lock().unwrap();
        let p = &mut m.get_mut("live").unwrap().1[0];
        p.talking = true;
        p.level = 80;
    }
    let ev = next_event(&mut body).await;
    assert!(
        ev.starts_with("event: update\n")
            && ev.contains("\"talking\":true")
            && ev.contains("\"level\":80"),
        "{ev}"
    );
    app.rooms
        .rooms
        .lock()
        .unwrap()
        .get_mut("live")
        .unwrap()
        .1
        .clear();
    let ev = next_event(&mut body).await;
    assert!(
        ev.starts_with("event: leave\n") && ev.contains("p1"),
        "{ev}"
    );
    // Without a session the stream is not served.
    let res = send(
        &app,
        Request::get("/rooms/live/events")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn unknown_api_path_and_method_are_problems() {
    let app = app();
    let res = send(
        &app,
        Request::get("/api/v1/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let (s, ct, v) = api(&app, "PATCH", "/api/v1/rooms", None).await;
    assert_problem(s, &ct, &v, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn first_start_password_rules() {
    let dir = std::env::temp_dir().join(format!("web-admin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let auth = FakeAuth::default();
    let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let err = ensure_admin_password(&auth, public, &dir).unwrap_err();
    assert!(err.to_string().contains("supernode admin set-password"));
    assert!(auth.password_hash().unwrap().is_none());
    let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let path = ensure_admin_password(&auth, lo, &dir).unwrap().unwrap();
    let pw = std::fs::read_to_string(&path).unwrap();
    let phc = auth.password_hash().unwrap().unwrap();
    assert!(auth::verify_password(pw.trim(), &phc));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Once set, nothing changes, on any address.
    assert!(ensure_admin_password(&auth, public, &dir)
        .unwrap()
        .is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn tokens_over_api() {
    let mut app = app();
    let (s, _, v) = api(&app, "GET", "/api/v1/tokens", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["name"], "tests");
    assert!(v[0].get("hash").is_none(), "hashes are never served");
    let (s, _, v) = api(&app, "POST", "/api/v1/tokens", Some(json!({"name": "ci"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = v["id"].as_str().unwrap().to_string();
    let new_token = v["token"].as_str().unwrap().to_string();
    let (s, ct, v) = api(&app, "POST", "/api/v1/tokens", Some(json!({"name": ""}))).await;
    assert_problem(s, &ct, &v, StatusCode::UNPROCESSABLE_ENTITY);
    // The new token works; once revoked it does not.
    let old = std::mem::replace(&mut app.token, new_token);
    let (s, _, _) = api(&app, "GET", "/api/v1/node", None).await;
    assert_eq!(s, StatusCode::OK);
    app.token = old;
    let (s, _, _) = api(&app, "DELETE", &format!("/api/v1/tokens/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, ct, v) = api(&app, "DELETE", &format!("/api/v1/tokens/{id}"), None).await;
    assert_problem(s, &ct, &v, StatusCode::NOT_FOUND);
}
