//! A minimal W3C WebDriver client for Debian's headless Chromium through
//! `chromedriver`, over plain HTTP/1.1 on a `TcpStream` (one connection per command).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of an element reference in a WebDriver answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Every command's answer must arrive within this.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A WebDriver error: its `error` code (`no such element`, `stale element reference`, …)
/// and message.
#[derive(Debug)]
pub struct WdError {
    pub error: String,
    pub message: String,
}

/// One headless Chromium session; the session is deleted and chromedriver killed when
/// dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

/// One HTTP/1.1 exchange with chromedriver; returns (status, parsed JSON body).
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, COMMAND_TIMEOUT)?;
    s.set_read_timeout(Some(COMMAND_TIMEOUT))?;
    s.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // chromedriver keeps the connection open despite `Connection: close`: read the head,
    // then exactly Content-Length bytes (or to the end when chunked or unsized).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed before the head"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while raw.len() < head_end + len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut raw)?;
        }
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let rest = if head.contains("transfer-encoding: chunked") {
        dechunk(&body)
    } else {
        body
    };
    let value = serde_json::from_str(&rest).unwrap_or(Value::Null);
    Ok((status, value))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Standard base64 (as WebDriver screenshots are) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue, // padding, line breaks
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session
    /// with the flags this machine needs and a fresh profile. `log` receives
    /// chromedriver's log.
    pub fn start(log: &Path) -> Browser {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/ensure-deps.sh (apt-get install chromium chromium-driver)"
            );
        }
        let port = free_tcp_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let profile = tempfile::tempdir().expect("tempdir");
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, v)) = exchange(addr, "GET", "/status", None) {
                if v["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver not ready within 10 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "pageLoadStrategy": "normal",
                    "timeouts": { "pageLoad": 10_000, "script": 10_000, "implicit": 0 },
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": [
                            "--headless",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--disable-dev-shm-usage",
                            "--window-size=1280,900",
                            format!("--user-data-dir={}", browser._profile.path().display()),
                        ]
                    }
                }
            }
        });
        let v = browser
            .raw("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("new session: {e:?}"));
        browser.session = v["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One command; the answer's `value`, or its WebDriver error.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let (status, v) = exchange(self.addr, method, path, body).map_err(|e| WdError {
            error: "io".into(),
            message: format!("{method} {path}: {e}"),
        })?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(WdError {
                error: value["error"].as_str().unwrap_or("unknown").to_string(),
                message: format!(
                    "{method} {path}: {status} {}",
                    value["message"].as_str().unwrap_or("")
                ),
            })
        }
    }

    /// A command in this session.
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let path = format!("/session/{}{path}", self.session);
        self.raw(method, &path, body.as_ref())
    }

    /// Loads `url` (waits for its load event).
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|e| panic!("navigate to {url}: {e:?}"));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The current DOM serialised (reflects what scripts changed since the load).
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The first element matching `css`.
    pub fn find(&self, css: &str) -> Result<String, WdError> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| WdError {
                error: "no element id".into(),
                message: v.to_string(),
            })
    }

    /// Types `text` into an element.
    pub fn send_keys(&self, element: &str, text: &str) -> Result<(), WdError> {
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Clicks an element.
    pub fn click(&self, element: &str) -> Result<(), WdError> {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(|_| ())
    }

    /// Finds `css` and clicks it, retrying (within `timeout`) while it is missing or was
    /// replaced between the find and the click (live pages redraw their rows).
    pub fn click_css(&self, css: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let res = self.find(css).and_then(|el| self.click(&el));
            match res {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("could not click {css} within {timeout:?}: {e:?}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Polls the page source until `pred` holds (true) or `timeout` passes (false).
    pub fn wait_source(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.source()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a PNG screenshot of the viewport to `dir/name.png` and returns its path.
    pub fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let v = self
            .cmd("GET", "/screenshot", None)
            .unwrap_or_else(|e| panic!("screenshot {name}: {e:?}"));
        let png = base64_decode(v.as_str().expect("base64 screenshot"));
        assert!(
            png.starts_with(b"\x89PNG"),
            "screenshot {name} is not a PNG"
        );
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.raw("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
