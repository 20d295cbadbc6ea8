//! The admin API against a running daemon: every route of
//! docs/openapi.json answers as documented, logins and CSRF are enforced,
//! bad requests get clear 4xx answers, live changes take effect.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One HTTP/1.1 exchange over a fresh connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    // The event stream never ends: read it for a few seconds.
    let deadline =
        Instant::now() + if path.ends_with("/stream") { Duration::from_millis(2500) } else { Duration::from_secs(20) };
    s.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked") {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < nl + 2 + n {
            out.extend_from_slice(&b[(nl + 2).min(b.len())..]);
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[(nl + 4 + n).min(b.len())..];
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A daemon with the admin API, killed on drop.
struct Daemon {
    child: Child,
    admin: String,
    origin: String,
    dir: PathBuf,
    password: String,
    token: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PASSWORD: &str = "rack-unit-7 secret";

fn start(dir: &Path, extra: &str) -> Daemon {
    start_edited(dir, extra, |t| t)
}

/// `start` with the config text edited before the daemon reads it.
fn start_edited(dir: &Path, extra: &str, edit: impl Fn(String) -> String) -> Daemon {
    start_for(dir, extra, edit, "120")
}

/// `start_edited` with the daemon's `--duration`.
fn start_for(dir: &Path, extra: &str, edit: impl Fn(String) -> String, seconds: &str) -> Daemon {
    let passwd = dir.join("admin.passwd");
    common::lockstep_stdin(&["passwd", "--file", passwd.to_str().unwrap()], &format!("{PASSWORD}\n"));
    let tokens = dir.join("tokens");
    let token = common::lockstep_stdin(&["token", "--file", tokens.to_str().unwrap(), "--name", "ci"], "");
    let (origin, admin) = (free_port(), free_port());
    let text = format!(
        "[appliance]\nid = \"unit-1\"\n[channel]\nid = \"ch\"\nsegment_seconds = 1.0\n\
         [source]\nkind = \"test\"\nwidth = 320\nheight = 180\nfps = \"25\"\n\
         [audio]\nenabled = false\n\
         [[renditions]]\nname = \"180p\"\nheight = 180\nbitrate_kbps = 900\n\
         [[renditions]]\nname = \"90p\"\nheight = 90\nbitrate_kbps = 200\n\
         [output]\ndir = \"{}\"\nwindow_segments = 30\n[origin]\nlisten = \"127.0.0.1:{origin}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\npassword_file = \"{}\"\ntokens_file = \"{}\"\nlogin_attempts_per_minute = 5\n{extra}",
        dir.join("out").display(),
        passwd.display(),
        tokens.display(),
    );
    std::fs::write(dir.join("lockstep.toml"), edit(text)).unwrap();
    launch_for(dir, format!("127.0.0.1:{admin}"), format!("127.0.0.1:{origin}"), token, seconds)
}

/// Runs the daemon on `dir`'s lockstep.toml as it is.
fn launch(dir: &Path, admin: String, origin: String, token: String) -> Daemon {
    launch_for(dir, admin, origin, token, "120")
}

/// `launch` with the daemon's `--duration`.
fn launch_for(dir: &Path, admin: String, origin: String, token: String, seconds: &str) -> Daemon {
    let config = dir.join("lockstep.toml");
    let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child =
        common::lockstep().args(["run", "--duration", seconds, "--config"]).arg(&config).stderr(log).spawn().unwrap();
    let d = Daemon { child, admin, origin, dir: dir.to_path_buf(), password: PASSWORD.into(), token };
    let started = Instant::now();
    while TcpStream::connect(&d.admin).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "admin API not up: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    d
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Logs in: (cookie header value, CSRF token).
    fn login(&self) -> (String, String) {
        let body = serde_json::json!({ "password": self.password }).to_string();
        let r = http(&self.admin, "POST", "/api/v1/login", &[("Content-Type", "application/json")], body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
        let cookie = r.header("set-cookie").unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        let pair = cookie.split(';').next().unwrap().to_string();
        (pair, r.json()["csrf_token"].as_str().unwrap().to_string())
    }

    fn get(&self, path: &str, cookie: &str) -> Reply {
        http(&self.admin, "GET", path, &[("Cookie", cookie)], b"")
    }

    fn send(&self, method: &str, path: &str, cookie: &str, csrf: &str, body: &str) -> Reply {
        let h = [("Cookie", cookie), ("X-CSRF-Token", csrf), ("Content-Type", "application/json")];
        http(&self.admin, method, path, &h, body.as_bytes())
    }

    fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn() -> bool) {
        let started = Instant::now();
        while !ok() {
            assert!(started.elapsed() < limit, "{what} not within {limit:?}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// (method, path template) of every operation in the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                ops.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap();
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

fn is_public(op: &Value) -> bool {
    op["security"].as_array().is_some_and(Vec::is_empty)
}

#[test]
fn the_document_lists_exactly_the_routes_the_server_has() {
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin/api.rs")).unwrap();
    let served: BTreeSet<String> =
        source.split(".route(\"").skip(1).map(|rest| rest.split('"').next().unwrap().to_string()).collect();
    let doc = openapi();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(served, documented, "routes in src/admin/api.rs vs docs/openapi.json");
}

/// A channel beside the first: the same source and ladder under another id.
const EXTRA_CHANNEL: &str = r#"{"channel": {"id": "extra", "segment_seconds": 1.0},
    "source": {"kind": "test", "width": 320, "height": 180, "fps": "25"}, "audio": {"enabled": false},
    "renditions": [{"name": "180p", "height": 180, "bitrate_kbps": 900}, {"name": "90p", "height": 90, "bitrate_kbps": 200}]}"#;

#[test]
fn every_documented_route_answers_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    d.wait_for("first segment", Duration::from_secs(20), || {
        d.get("/api/v1/channels/ch", &cookie).json()["renditions"][0]["measured_kbps"].is_number()
    });
    let doc = openapi();
    let mut ops = operations(&doc);
    // Log out last, a channel created before it is deleted, stop before start.
    ops.sort_by_key(|(m, p, _)| (p.ends_with("/logout"), m == "DELETE", p.ends_with("/start"), m.clone(), p.clone()));
    let mut checked = 0;
    for (method, template, op) in ops {
        // The first channel cannot be deleted: delete the one created here.
        let id = if method == "DELETE" { "extra" } else { "ch" };
        let path = template.replace("{id}", id).replace("{name}", "90p").replace("{module}", "main.js");
        let body = match path.as_str() {
            "/api/v1/login" => serde_json::json!({ "password": d.password }).to_string(),
            "/api/v1/channels" => EXTRA_CHANNEL.to_string(),
            p if p.contains("/renditions/") => r#"{"bitrate_kbps": 150}"#.to_string(),
            p if p.ends_with("/clock/fault") => r#"{"offset_ns": 1000}"#.to_string(),
            p if p.ends_with("/drills/hang") => r#"{"seconds": 1}"#.to_string(),
            p if p.ends_with("/drills/latency") => r#"{"ms": 100, "seconds": 2}"#.to_string(),
            p if p.ends_with("/drills/origin-latency") => r#"{"ms": 10, "ramp_s": 1, "seconds": 1}"#.to_string(),
            p if p.ends_with("/predict/train") => r#"{"since_s": 600}"#.to_string(),
            p if p.ends_with("/drills/cpu") => r#"{"cpus": 1.5, "ramp_s": 1, "seconds": 1}"#.to_string(),
            p if p.ends_with("/drills/memory") => r#"{"mb": 8, "ramp_s": 1, "seconds": 1}"#.to_string(),
            // 8 MiB taken from what the output's file system has free.
            p if p.ends_with("/drills/disk") => format!(r#"{{"free_mb": {}, "seconds": 1}}"#, free_mib(&d.dir) - 8),
            p if p.ends_with("/drills/slip") || p.ends_with("/drills/forged-proposal") => {
                r#"{"frames": 1}"#.to_string()
            }
            p if p.ends_with("/source/controls") => r#"{"name": "Brightness", "value": 128}"#.to_string(),
            p if p.ends_with("/config") => r#"{"output": {"window_segments": 40}}"#.to_string(),
            _ => String::new(),
        };
        eprintln!("{method} {path}");
        if let Ok(Some(status)) = d.child.try_wait() {
            panic!("the daemon exited ({status}) before {method} {path}:\n{}", d.log());
        }
        let r = if method == "GET" { d.get(&path, &cookie) } else { d.send(&method, &path, &cookie, &csrf, &body) };
        let responses = op["responses"].as_object().unwrap();
        let expected: u16 = responses.keys().filter_map(|k| k.parse().ok()).filter(|s: &u16| *s < 300).min().unwrap();
        if path.ends_with("/drills/forged-proposal") {
            // This daemon is in no swarm: the documented 409 (tests/swarm.rs
            // runs the drill in a swarm).
            assert!(responses.contains_key("409"));
            assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
            assert!(r.text().contains("no swarm"), "{}", r.text());
            checked += 1;
            continue;
        }
        if path.ends_with("/drills/cpu") && !common::is_root() {
            // Lowering the daemon's cgroup CPU limit needs root here
            // (tests/drills.rs runs it); the documented 409 says so.
            assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
            assert!(r.text().contains("needs root"), "{}", r.text());
            checked += 1;
            continue;
        }
        if method == "PATCH" && path.ends_with("/source/controls") {
            // The test pattern is no capture device: the documented 409
            // (hwtests/ sets a real vivid control through this route).
            assert!(responses.contains_key("409"));
            assert_eq!(r.status, 409, "{method} {path}: {}", r.text());
            assert!(r.text().contains("not a capture device"), "{}", r.text());
            checked += 1;
            continue;
        }
        assert_eq!(r.status, expected, "{method} {path}: {}", r.text());
        let content = &responses[&expected.to_string()]["content"];
        if let Some(schema) = content.get("application/json").map(|c| &c["schema"]) {
            let v = r.json();
            let schema = resolve(&doc, schema);
            let (value, schema) = match (&v, schema["type"].as_str()) {
                (Value::Array(items), Some("array")) => match items.first() {
                    Some(first) => (first.clone(), resolve(&doc, &schema["items"])),
                    None => (Value::Null, schema),
                },
                _ => (v.clone(), schema),
            };
            if let (Value::Object(fields), Some(props)) = (&value, schema["properties"].as_object()) {
                for k in fields.keys() {
                    assert!(props.contains_key(k), "{method} {path}: `{k}` is not documented");
                }
                for k in schema["required"].as_array().into_iter().flatten() {
                    assert!(fields.contains_key(k.as_str().unwrap()), "{method} {path}: required `{k}` missing");
                }
            }
        } else if let Some(kind) = content.as_object().and_then(|c| c.keys().next()) {
            let got = r.header("content-type").unwrap_or_default();
            assert!(got.starts_with(kind.as_str()), "{method} {path}: content type {got}, documented {kind}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} operations documented");
}

/// MiB free on the file system holding `dir` (`df`).
fn free_mib(dir: &Path) -> u64 {
    let out = std::process::Command::new("df").args(["-m", "--output=avail"]).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df: {text}"))
}

#[test]
fn logins_and_csrf_tokens_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let doc = openapi();
    let (cookie, csrf) = d.login();
    for (method, template, op) in operations(&doc) {
        if is_public(&op) {
            continue;
        }
        let path = template.replace("{id}", "ch").replace("{name}", "90p");
        let r = http(&d.admin, &method, &path, &[("Content-Type", "application/json")], b"{}");
        assert_eq!(r.status, 401, "{method} {path} without login: {}", r.text());
        assert!(r.json()["error"].as_str().unwrap().contains("login required"));
        if method != "GET" {
            let r = http(&d.admin, &method, &path, &[("Cookie", &cookie), ("Content-Type", "application/json")], b"{}");
            assert_eq!(r.status, 403, "{method} {path} without CSRF token: {}", r.text());
            let r = d.send(&method, &path, &cookie, "not-the-token", "{}");
            assert_eq!(r.status, 403, "{method} {path} with a wrong CSRF token");
        }
    }
    // Bearer tokens: no CSRF needed, wrong token refused.
    let bearer = format!("Bearer {}", d.token);
    let r = http(&d.admin, "GET", "/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200);
    let metrics = r.text();
    for name in ["lockstep_frames_captured_total", "lockstep_api_requests_total", "lockstep_origin_requests_total"] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let h = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let r = http(&d.admin, "PATCH", "/api/v1/channels/ch/renditions/90p", &h, br#"{"bitrate_kbps": 120}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    let r = http(&d.admin, "GET", "/api/v1/status", &[("Authorization", "Bearer lst_0000")], b"");
    assert_eq!(r.status, 401);
    // Public: the health probe and the page.
    assert_eq!(http(&d.admin, "GET", "/healthz", &[], b"").status, 200);
    let page = http(&d.admin, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page.header("content-security-policy").is_some_and(|c| c.contains("default-src 'self'")));
    // The page's script: main.js and every module it imports, directly or
    // not, without a login (a module missing here would leave the page dead).
    let mut modules = vec!["main.js".to_string()];
    let mut seen = BTreeSet::new();
    while let Some(m) = modules.pop() {
        if !seen.insert(m.clone()) {
            continue;
        }
        let r = http(&d.admin, "GET", &format!("/js/{m}"), &[], b"");
        assert_eq!(r.status, 200, "/js/{m}: {}", r.text());
        assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/javascript")), "/js/{m}");
        for line in r.text().lines().filter(|l| l.starts_with("import ")) {
            let name = line.split("from './").nth(1).and_then(|rest| rest.split('\'').next()).unwrap();
            modules.push(name.to_string());
        }
    }
    assert!(seen.len() >= 10, "the page imports only {seen:?}");
    assert_eq!(http(&d.admin, "GET", "/js/nothing.js", &[], b"").status, 404);
    // The public origin serves playlists and segments, not the other files.
    d.wait_for("a playlist", Duration::from_secs(20), || {
        http(&d.origin, "GET", "/ch/90p/playlist.m3u8", &[], b"").status == 200
    });
    for private in ["/audit.jsonl", "/ch/metrics.prom", "/ch/../audit.jsonl", "/lockstep.toml"] {
        assert_eq!(http(&d.origin, "GET", private, &[], b"").status, 404, "origin served {private}");
    }
    // (The manifest gains its first line a moment after the playlist.)
    d.wait_for("peers fetch manifests", Duration::from_secs(10), || {
        http(&d.origin, "GET", "/ch/90p/manifest.jsonl", &[], b"").status == 200
    });
    // Logged out: the cookie no longer works.
    assert_eq!(d.send("POST", "/api/v1/logout", &cookie, &csrf, "").status, 204);
    assert_eq!(d.get("/api/v1/status", &cookie).status, 401);

    // Failed logins are limited per address, and audited without the password.
    for _ in 0..5 {
        let r = http(
            &d.admin,
            "POST",
            "/api/v1/login",
            &[("Content-Type", "application/json")],
            br#"{"password":"guess"}"#,
        );
        assert_eq!(r.status, 401);
    }
    let body = serde_json::json!({ "password": d.password }).to_string();
    let r = http(&d.admin, "POST", "/api/v1/login", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|s| (1..=60).contains(&s))));
    let audit = std::fs::read_to_string(dir.path().join("out/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"login-failed\"") && audit.contains("\"set-bitrate\"") && audit.contains("token:ci"),
        "{audit}"
    );
    assert!(
        !audit.contains(PASSWORD) && !audit.contains("guess") && !d.log().contains(PASSWORD),
        "a password was written"
    );
}

#[test]
fn bad_requests_get_clear_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let path = "/api/v1/channels/ch/renditions/90p";
    let cases: [(&str, u16, Option<&str>, &str); 7] = [
        (r#"{"bitrate_kbps": 150"#, 400, None, "malformed JSON"),
        (r#"{"bitrate_kbps": 150} x"#, 400, None, "malformed JSON"),
        (r#"{"bitrate_kbps": 150, "colour": 1}"#, 422, Some("colour"), "unknown field"),
        (r#"{}"#, 422, Some("bitrate_kbps"), "missing field"),
        (r#"{"bitrate_kbps": "fast"}"#, 422, Some("bitrate_kbps"), "invalid type"),
        (r#"{"bitrate_kbps": 20}"#, 422, Some("bitrate_kbps"), "allowed 50 to 100000"),
        (r#"{"bitrate_kbps": 4294967296}"#, 422, Some("bitrate_kbps"), "bitrate_kbps"),
    ];
    for (body, status, field, says) in cases {
        let r = d.send("PATCH", path, &cookie, &csrf, body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let v = r.json();
        assert!(v["error"].as_str().unwrap().contains(says), "{body}: {v}");
        assert_eq!(v["field"].as_str(), field, "{body}: {v}");
    }
    let h = [("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str()), ("Content-Type", "text/plain")];
    assert_eq!(http(&d.admin, "PATCH", path, &h, br#"{"bitrate_kbps":150}"#).status, 415);
    let r = d.send("PATCH", "/api/v1/channels/ch/renditions/4k", &cookie, &csrf, r#"{"bitrate_kbps":150}"#);
    assert_eq!((r.status, r.json()["field"].as_str()), (404, Some("name")));
    let r = d.get("/api/v1/channels/other", &cookie);
    assert_eq!((r.status, r.json()["field"].as_str()), (404, Some("id")));
    let r = d.get("/api/v1/swarm/alignment?limit=100000", &cookie);
    assert_eq!((r.status, r.json()["field"].as_str()), (422, Some("limit")));
    assert_eq!(d.get("/api/v1/analysis?limit=abc", &cookie).status, 400);
    assert_eq!(d.get("/api/v1/nothing", &cookie).status, 404);
    assert_eq!(d.send("DELETE", "/api/v1/status", &cookie, &csrf, "").status, 405);

    // Random bodies: always a 4xx, never a crash or a 5xx.
    let mut seed = 0x5eed_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "{",
        "}",
        "\"bitrate_kbps\"",
        ":",
        "1e400",
        "-1",
        "null",
        "[",
        "]",
        ",",
        "\"\\u0000\"",
        "150",
        "\u{fffd}",
        "true",
    ];
    let config_pieces = [
        "{",
        "}",
        "\"renditions\"",
        "\"source\"",
        "\"output\"",
        "\"window_segments\"",
        "\"kind\"",
        "\"test\"",
        ":",
        ",",
        "[",
        "]",
        "{\"name\": \"x\", \"height\": 90, \"bitrate_kbps\": 100}",
        "7",
        "-2",
        "null",
    ];
    for _ in 0..200 {
        let n = next() % 8;
        let body: String = (0..n).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
        let r = d.send("PATCH", path, &cookie, &csrf, &body);
        assert!((400..500).contains(&r.status) || r.status == 202, "{body:?}: {} {}", r.status, r.text());
        let r = d.send("POST", "/api/v1/login", "", "", &body);
        assert!((400..500).contains(&r.status), "login {body:?}: {} {}", r.status, r.text());
        let config: String =
            (0..n + 2).map(|_| config_pieces[(next() % config_pieces.len() as u64) as usize]).collect();
        let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, &config);
        let busy = r.status == 503 && r.text().contains("still being applied");
        assert!(
            (400..500).contains(&r.status) || r.status == 202 || busy,
            "config {config:?}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(http(&d.admin, "GET", "/healthz", &[], b"").status, 200, "still up");
}

#[test]
fn a_clock_fault_is_injected_and_cleared_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    d.wait_for("the clock", Duration::from_secs(20), || !d.get("/api/v1/clock", &cookie).json()["quality"].is_null());
    assert!(d.get("/api/v1/clock", &cookie).json()["quality"]["fault"].is_null(), "no fault configured");
    let r = d.send("PUT", "/api/v1/clock/fault", &cookie, &csrf, r#"{"offset_ns": 2000000, "frequency_ppm": 5.5}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!((v["fault"]["offset_ns"].as_i64(), v["fault_from_api"].as_bool()), (Some(2_000_000), Some(true)));
    let described = v["quality"]["fault"].as_str().unwrap_or_default().to_string();
    assert!(!described.is_empty(), "the running clock reports the fault: {v}");
    for (body, field) in [
        (r#"{"frequency_ppm": 5000}"#, "frequency_ppm"),
        (r#"{"offset_ns": 4000000000000}"#, "offset_ns"),
        (r#"{"step_after_s": -1}"#, "step_after_s"),
        (r#"{"offset": 1}"#, "offset"),
    ] {
        let r = d.send("PUT", "/api/v1/clock/fault", &cookie, &csrf, body);
        assert_eq!((r.status, r.json()["field"].as_str()), (422, Some(field)), "{body}: {}", r.text());
    }
    assert_eq!(
        d.get("/api/v1/clock", &cookie).json()["fault"]["offset_ns"],
        2_000_000,
        "a refused change changes nothing"
    );
    let r = d.send("PUT", "/api/v1/clock/fault", &cookie, &csrf, "{}");
    assert!(r.json()["quality"]["fault"].is_null(), "cleared: {}", r.text());
    let events = d.get("/api/v1/events?since=0", &cookie).json();
    assert_eq!(events.as_array().unwrap().iter().filter(|e| e["kind"] == "clock").count(), 2, "{events}");
    let audit = std::fs::read_to_string(dir.path().join("out/audit.jsonl")).unwrap();
    assert_eq!(audit.matches("set-clock-fault").count(), 2, "{audit}");
}

#[test]
fn the_health_agents_show_pressure_disk_and_an_encoder_losing_its_deadline_slack() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let slack = || d.get("/api/v1/health", &cookie).json()["channels"][0]["deadline_slack"].clone();
    // A few segments of 1 s in: most of a segment to spare.
    d.wait_for("deadline slack", Duration::from_secs(20), || slack()["segments"].as_u64().is_some_and(|n| n >= 3));
    let h = d.get("/api/v1/health", &cookie).json();
    let before = h["channels"][0]["deadline_slack"]["last_ms"].as_f64().unwrap();
    assert!(before > 500.0 && before < 1000.0, "{h}");
    assert!(["cgroup", "machine"].contains(&h["pressure_scope"].as_str().unwrap()), "{h}");
    assert!(h["pressure"]["cpu"]["some_avg10"].as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)), "{h}");
    let out = &h["channels"][0]["output"];
    assert!(
        out["free_bytes"].as_u64().unwrap() > 0 && out["free_bytes"].as_u64() <= out["total_bytes"].as_u64(),
        "{h}"
    );
    // The chain: this node's source, encoder, packager and origin, all ok.
    let chain = d.get("/api/v1/chain", &cookie).json();
    let kinds: Vec<&str> =
        chain["components"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["source", "encoder", "packager", "origin"], "{chain}");
    assert_eq!(chain["links"].as_array().unwrap().len(), 3, "{chain}");
    let encoder = |chain: &Value| chain["components"][1].clone();
    assert_eq!(encoder(&chain)["state"], "ok", "{chain}");
    assert_eq!(d.get("/api/v1/chain?channel=nope", &cookie).status, 404);
    // The encoder holds every segment 800 ms: the slack drops by as much,
    // and the chain shows its encoder in trouble, saying why.
    let r = d.send("POST", "/api/v1/channels/ch/drills/latency", &cookie, &csrf, r#"{"ms": 800, "seconds": 8}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    d.wait_for("the slack to drop", Duration::from_secs(10), || {
        slack()["last_ms"].as_f64().is_some_and(|s| s < before - 400.0)
    });
    let s = slack();
    assert!(s["min_ms"].as_f64().unwrap() < before - 400.0, "{s}");
    let chain = d.get("/api/v1/chain", &cookie).json();
    let e = encoder(&chain);
    assert!(e["state"] == "warn" || e["state"] == "bad", "{e}");
    assert!(e["reasons"].to_string().contains("deadline"), "{e}");
    // Prometheus has the same figures.
    let metrics = d.get("/metrics", &cookie).text();
    for family in [
        "lockstep_deadline_slack_seconds{channel=\"ch\"}",
        "lockstep_pressure_ratio{resource=\"cpu\"}",
        "lockstep_output_free_bytes{channel=\"ch\"}",
    ] {
        assert!(metrics.contains(family), "{family} missing");
    }
    // The history store recorded the agents' figures, the drill included.
    let listed = d.get("/api/v1/health/history", &cookie).json();
    let names: Vec<&str> = listed["series"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    for name in ["node/pressure_cpu", "channel/ch/slack_ms", "channel/ch/encode_latency_ms", "channel/ch/disk_used"] {
        assert!(names.contains(&name), "{name} not in the history: {listed}");
    }
    // Sampled once a second: the drill's slack shows within a few.
    let history = || d.get("/api/v1/health/history?series=channel/ch/slack_ms&since_s=120", &cookie).json();
    let lowest = |h: &serde_json::Value| {
        h["points"].as_array().unwrap().iter().filter_map(|p| p["mean"].as_f64()).fold(f64::INFINITY, f64::min)
    };
    d.wait_for("the drill's slack in the history", Duration::from_secs(10), || {
        let h = history();
        h["points"].as_array().is_some_and(|p| p.len() >= 5) && lowest(&h) < before - 400.0
    });
    let h = history();
    assert_eq!(h["resolution"], "raw", "{h}");
    let highest = h["points"].as_array().unwrap().iter().filter_map(|p| p["mean"].as_f64()).fold(0.0, f64::max);
    assert!(highest > before - 400.0, "the slack before the drill is in the history too: {h}");
    assert_eq!(d.get("/api/v1/health/history?series=nope", &cookie).status, 404);
    assert_eq!(d.get("/api/v1/health/history?since_s=0", &cookie).status, 400);
    assert!(dir.path().join("out/history.redb").is_file(), "the store is <output.dir>/history.redb");
    // Health is not public.
    assert_eq!(d.get("/api/v1/health", "").status, 401);
    assert_eq!(d.get("/api/v1/health/history", "").status, 401);
}

/// (index, SHA-256, bytes) of every segment in a track's manifest.
fn segments(track: &Path) -> Vec<(i64, String, u64)> {
    common::manifest(track).into_iter().map(|e| (e.index, e.sha256, e.bytes)).collect()
}

/// The daemon's 180p track encoded afresh, as fast as possible, from the
/// first frame of `first_segment` for `count` segments at `kbps`: the
/// test source is a function of the frame number and every segment is
/// encoded independently, so equal settings give equal bytes.
fn reference_180p(dir: &Path, first_segment: i64, count: u64, kbps: u32) -> Vec<(i64, String, u64)> {
    let out = dir.join(format!("ref-{kbps}"));
    std::fs::create_dir_all(&out).unwrap();
    let text = format!(
        "[appliance]\nid = \"ref\"\n[channel]\nid = \"ch\"\nsegment_seconds = 1.0\n\
         [source]\nkind = \"test\"\nwidth = 320\nheight = 180\nfps = \"25\"\npacing = \"fast\"\nstart_frame = {}\n\
         [audio]\nenabled = false\n[[renditions]]\nname = \"180p\"\nheight = 180\nbitrate_kbps = {kbps}\n\
         [output]\ndir = \"{}\"\nmode = \"archive\"\n",
        first_segment * 25,
        out.display()
    );
    let run = common::run_config(&out, &text, &["--frames", &(count * 25).to_string()]);
    assert!(run.status.success(), "reference encode at {kbps} kbit/s failed");
    segments(&out.join("ch/180p"))
}

#[test]
fn a_bitrate_change_applies_from_the_announced_segment_and_the_channel_stops_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let track = dir.path().join("out/ch/180p");
    d.wait_for("five segments", Duration::from_secs(20), || {
        track.join("manifest.jsonl").exists() && segments(&track).len() >= 5
    });
    let r = d.send("PATCH", "/api/v1/channels/ch/renditions/180p", &cookie, &csrf, r#"{"bitrate_kbps": 100}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    let from = r.json()["from_segment"].as_i64().unwrap();
    let pending = d.get("/api/v1/channels/ch", &cookie).json();
    assert_eq!(pending["renditions"][0]["pending"][0]["from_segment"].as_i64(), Some(from));
    d.wait_for("segments at the new bitrate", Duration::from_secs(30), || {
        segments(&track).iter().filter(|(i, ..)| *i >= from).count() >= 2
    });
    // The content changes from scene to scene, so sizes alone prove little:
    // compare each live segment with fresh encodes of the same frames at the
    // old and the new bitrate.
    let live: Vec<_> = segments(&track).into_iter().filter(|(i, ..)| (from - 1..=from + 1).contains(i)).collect();
    let old = reference_180p(dir.path(), from - 1, 3, 900);
    let new = reference_180p(dir.path(), from, 2, 100);
    eprintln!("180p segments (index, sha256, bytes): live {live:?}\nat 900 kbit/s {old:?}\nat 100 kbit/s {new:?}");
    assert_eq!(live.first(), old.first(), "the segment before the announced one is still encoded at 900 kbit/s");
    assert_eq!(live[1..], new[..], "from segment {from} on, the live segments are those of a 100 kbit/s encode");
    // Calm pictures fit under both targets, so sizes may even be equal or
    // slightly larger; the bytes still differ, which makes the identity
    // above a proof that the new bitrate is in force.
    assert_ne!(new[..], old[1..], "the two bitrates give different segments for these frames");
    let channel = d.get("/api/v1/channels/ch", &cookie).json();
    assert_eq!(channel["renditions"][0]["bitrate_kbps"], 100);
    assert_eq!(channel["renditions"][0]["configured_kbps"], 900);
    // Players choose variants by BANDWIDTH: the multivariant playlist
    // follows the change (1.5 x the target as peak, the target as average;
    // no audio in this channel).
    let master = std::fs::read_to_string(dir.path().join("out/ch/master.m3u8")).unwrap();
    let line = master.lines().find(|l| l.starts_with("#EXT-X-STREAM-INF") && l.contains("RESOLUTION=320x180")).unwrap();
    assert!(line.contains("BANDWIDTH=150000,AVERAGE-BANDWIDTH=100000"), "{master}");

    // Stop: the daemon stays up, frames stop; start: frames again.
    let r = d.send("POST", "/api/v1/channels/ch/stop", &cookie, &csrf, "");
    assert_eq!((r.status, r.json()["running"].as_bool()), (200, Some(false)));
    let frames = |d: &Daemon| d.get("/api/v1/status", &cookie).json()["frames_captured"].as_u64().unwrap();
    let stopped_at = frames(&d);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(frames(&d), stopped_at, "no frames while stopped");
    assert_eq!(d.get("/api/v1/status", &cookie).json()["channel"]["running"], false);
    let r = d.send("POST", "/api/v1/channels/ch/start", &cookie, &csrf, "");
    assert_eq!((r.status, r.json()["running"].as_bool()), (200, Some(true)));
    d.wait_for("frames after start", Duration::from_secs(10), || frames(&d) > stopped_at + 25);
    let events = d.get("/api/v1/events?since=0", &cookie).json();
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(kinds.contains(&"ladder") && kinds.iter().filter(|k| **k == "channel").count() >= 3, "{events}");
}

#[test]
fn live_changes_are_saved_to_the_configuration_file_and_the_next_start_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_edited(dir.path(), "", |t| format!("# Studio 4, rack B.\n{t}"));
    let (cookie, csrf) = d.login();
    let file = dir.path().join("lockstep.toml");
    let load = || lockstep::config::Config::load(&file).unwrap();
    assert_eq!(d.get("/api/v1/channels/ch/config", &cookie).json()["saved"]["file"], file.display().to_string());

    let r = d.send("PATCH", "/api/v1/channels/ch/renditions/90p", &cookie, &csrf, r#"{"bitrate_kbps": 250}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["saved"]["state"], "saved", "{}", r.text());
    assert_eq!(load().renditions[1].bitrate_kbps, 250);
    let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, r#"{"output": {"window_segments": 12}}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["saved"]["state"], "saved", "{}", r.text());
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(load().output.window_segments, 12);
    assert!(text.starts_with("# Studio 4, rack B.\n") && text.contains("id = \"unit-1\""), "{text}");
    assert_eq!(load().renditions[0].bitrate_kbps, 900, "untouched renditions keep their values");
    assert_eq!(load().renditions[1].bitrate_kbps, 250, "an edit without renditions keeps a live bitrate");

    // The next start runs what the operator left.
    let (admin, origin, token) = (d.admin.clone(), d.origin.clone(), d.token.clone());
    drop(d);
    let d = launch(dir.path(), admin, origin, token);
    let (cookie, csrf) = d.login();
    let config = d.get("/api/v1/channels/ch/config", &cookie).json();
    assert_eq!(
        (config["renditions"][1]["bitrate_kbps"].as_u64(), config["output"]["window_segments"].as_u64()),
        (Some(250), Some(12))
    );

    // An edit on disk is the operator's: never overwritten, and said so.
    std::fs::write(&file, format!("{text}# edited by hand\n")).unwrap();
    let r = d.send("PATCH", "/api/v1/channels/ch/renditions/90p", &cookie, &csrf, r#"{"bitrate_kbps": 300}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    let saved = &r.json()["saved"];
    assert_eq!(saved["state"], "error", "{saved}");
    assert!(saved["error"].as_str().unwrap_or("").contains("changed on disk"), "{saved}");
    assert!(std::fs::read_to_string(&file).unwrap().ends_with("# edited by hand\n"));
    assert_eq!(load().renditions[1].bitrate_kbps, 250);
}

#[test]
fn the_daemons_duration_counts_from_its_start_across_a_handover() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = start_for(dir.path(), "", |t| t, "8");
    let (cookie, csrf) = d.login();
    let t180 = dir.path().join("out/ch/180p");
    d.wait_for("two segments", Duration::from_secs(20), || {
        t180.join("manifest.jsonl").exists() && segments(&t180).len() >= 2
    });
    let first = segments(&t180)[0].0;
    let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, r#"{"output": {"window_segments": 20}}"#);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["applied"]["how"], "handover", "{}", r.text());
    // The daemon ends by itself; a safety limit only, not a measurement.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the daemon did not end\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{}", d.log());
    // 8 s of 1 s segments from the daemon's start (the first one it
    // joined at a boundary, plus the one it was in when the time ran out),
    // not 8 s from the successor's start (which would give 10 or more).
    let last = segments(&t180).last().unwrap().0;
    assert!(last - first <= 8, "segments {first}..={last} for an 8 s run\n{}", d.log());
}

#[test]
fn a_new_ladder_takes_over_at_a_segment_boundary_without_a_seam() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let out = dir.path().join("out/ch");
    let (t180, t90, t120) = (out.join("180p"), out.join("90p"), out.join("120p"));
    d.wait_for("four segments", Duration::from_secs(20), || {
        t180.join("manifest.jsonl").exists() && segments(&t180).len() >= 4
    });

    // Refused edits name the key and change nothing.
    let bad = [
        (r#"{"renditions": [{"name": "180p", "height": 181, "bitrate_kbps": 900}]}"#, "renditions[0].height"),
        (r#"{"output": {"dir": "/tmp/elsewhere"}}"#, "output.dir"),
        (r#"{"source": {"kind": "file", "path": "/nonexistent/clip.y4m"}}"#, "source.path"),
        (r#"{"renditions": []}"#, "renditions"),
    ];
    for (body, field) in bad {
        let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, body);
        assert!(matches!(r.status, 400 | 422), "{body}: {} {}", r.status, r.text());
        assert_eq!(r.json()["field"], field, "{body}: {}", r.text());
    }
    assert_eq!(d.get("/api/v1/channels/ch/config", &cookie).json()["renditions"].as_array().unwrap().len(), 2);

    // 90p goes, 120p comes, 180p stays.
    let ladder = r#"{"renditions": [
        {"name": "180p", "height": 180, "bitrate_kbps": 900},
        {"name": "120p", "height": 120, "bitrate_kbps": 300}]}"#;
    let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, ladder);
    assert_eq!(r.status, 202, "{}", r.text());
    let reply = r.json();
    assert_eq!(reply["applied"]["how"], "handover", "{reply}");
    let from = reply["applied"]["from_segment"].as_i64().unwrap();
    assert_eq!(reply["config"]["renditions"][1]["name"], "120p", "{reply}");
    d.wait_for("three segments of the new ladder", Duration::from_secs(30), || {
        t120.join("manifest.jsonl").exists() && segments(&t120).len() >= 3
    });
    d.wait_for("180p past the handover", Duration::from_secs(10), || {
        segments(&t180).iter().any(|(i, ..)| *i >= from + 2)
    });

    // The kept rendition runs on without a gap, and from the handover on
    // its bytes are those of any fresh encode of the same frames (so any
    // appliance's segments stay interchangeable with these).
    let kept: Vec<_> = segments(&t180).into_iter().filter(|(i, ..)| (from - 2..=from + 2).contains(i)).collect();
    let indices: Vec<i64> = kept.iter().map(|(i, ..)| *i).collect();
    assert_eq!(indices, (from - 2..=from + 2).collect::<Vec<_>>(), "180p segments around the handover");
    assert_eq!(kept[1..4], reference_180p(dir.path(), from - 1, 3, 900)[..], "180p bytes across the handover");
    let playlist = std::fs::read_to_string(t180.join("playlist.m3u8")).unwrap();
    assert!(!playlist.contains("#EXT-X-ENDLIST") && !playlist.contains("DISCONTINUITY:1"), "{playlist}");
    let listed = common::playlist_segments(&t180);
    assert!(listed.contains(&format!("seg-{}.m4s", from - 1)) && listed.contains(&format!("seg-{from}.m4s")));

    // The new rendition starts exactly at the handover, and decodes.
    let new = segments(&t120);
    assert_eq!(new.first().map(|(i, ..)| *i), Some(from), "120p starts at the handover segment");
    let names: Vec<String> = new.iter().take(3).map(|(i, ..)| format!("seg-{i}.m4s")).collect();
    let joined = common::concat(&t120, &names, &dir.path().join("120p.mp4"));
    assert_eq!(common::decode_errors(&joined), "");
    let probe = common::ffprobe_json(&["-show_streams", "-count_frames"], &joined);
    assert_eq!(probe["streams"][0]["height"], 120, "{probe}");
    assert_eq!(probe["streams"][0]["nb_read_frames"], "75", "{probe}");

    // The removed one ends cleanly at the segment before.
    let gone = std::fs::read_to_string(t90.join("playlist.m3u8")).unwrap();
    assert!(gone.trim_end().ends_with("#EXT-X-ENDLIST"), "{gone}");
    assert_eq!(segments(&t90).last().map(|(i, ..)| *i), Some(from - 1));
    let master = std::fs::read_to_string(out.join("master.m3u8")).unwrap();
    assert!(master.contains("180p/playlist.m3u8") && master.contains("120p/playlist.m3u8"), "{master}");
    assert!(!master.contains("90p/"), "{master}");

    // What GET returns, sent back, changes nothing.
    let now = d.get("/api/v1/channels/ch/config", &cookie).json();
    let back = serde_json::json!({
        "source": now["source"], "audio": now["audio"], "encoder": now["encoder"],
        "renditions": now["renditions"], "output": now["output"],
    });
    let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, &back.to_string());
    assert_eq!((r.status, r.json()["applied"]["how"].clone()), (202, "unchanged".into()), "{}", r.text());

    let channel = d.get("/api/v1/channels/ch", &cookie).json();
    assert_eq!(channel["running"], true);
    let names: Vec<&str> =
        channel["renditions"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(names, ["180p", "120p"]);
    assert!(d.log().contains("handover scheduled"), "{}", d.log());
    let events = d.get("/api/v1/events?since=0", &cookie).json();
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "config"), "{events}");
}

#[test]
fn a_source_that_cannot_run_twice_reopens_at_a_boundary_and_the_playlists_go_on() {
    // A new frame rate cannot hand over frame by frame (as a capture device
    // cannot be opened twice): the run ends at a boundary, the new one
    // opens the source and joins at the next.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let track = dir.path().join("out/ch/180p");
    d.wait_for("three segments", Duration::from_secs(20), || {
        track.join("manifest.jsonl").exists() && segments(&track).len() >= 3
    });
    let now = d.get("/api/v1/channels/ch/config", &cookie).json();
    let mut source = now["source"].clone();
    source["fps"] = "50".into();
    let body = serde_json::json!({ "source": source }).to_string();
    let r = d.send("PATCH", "/api/v1/channels/ch/config", &cookie, &csrf, &body);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["applied"]["how"], "reopen", "{}", r.text());
    let from = r.json()["applied"]["from_segment"].as_i64().unwrap();
    d.wait_for("two segments at 50 fps", Duration::from_secs(30), || {
        segments(&track).iter().filter(|(i, ..)| *i > from).count() >= 2
    });
    let entries = common::manifest(&track);
    let indices: Vec<i64> = entries.iter().map(|e| e.index).collect();
    assert!(indices.contains(&(from - 1)), "the old run published up to the boundary: {indices:?}");
    // Segment `from` is the gap unless the new run opened within a frame
    // of the boundary; either way, whatever follows is the new run's.
    let new: Vec<_> = entries.iter().filter(|e| e.index >= from).collect();
    assert!(new.iter().all(|e| e.samples == 50), "one second at 50 fps from the boundary on: {indices:?}");
    let first_new = new[0];
    assert!(first_new.index <= from + 3, "the new run joined soon: {indices:?}");
    let old = entries.iter().find(|e| e.index == from - 1).unwrap();
    assert_eq!(old.samples, 25);
    // One playlist on: no end, and a discontinuity over a gap (without a
    // gap the timestamps run on and the playlist needs none).
    let playlist = std::fs::read_to_string(track.join("playlist.m3u8")).unwrap();
    assert!(!playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
    if first_new.index > from {
        assert!(playlist.contains("#EXT-X-DISCONTINUITY"), "a gap before {}: {playlist}", first_new.index);
    }
    assert!(common::playlist_segments(&track).contains(&format!("seg-{}.m4s", first_new.index)), "{playlist}");
    let names = vec![format!("seg-{}.m4s", first_new.index)];
    let joined = common::concat(&track, &names, &dir.path().join("50fps.mp4"));
    assert_eq!(common::decode_errors(&joined), "");
    assert_eq!(d.get("/api/v1/channels/ch/config", &cookie).json()["source"]["fps"], "50");
    assert!(d.log().contains("reopens its source"), "{}", d.log());
}

#[test]
fn the_api_speaks_https_when_a_certificate_is_configured() {
    assert!(
        std::process::Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()),
        "this test needs `openssl` (apt-get install openssl; `./run test` installs it)"
    );
    assert!(
        std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()),
        "this test needs `curl` (`./run test` installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let extra = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let d = start(dir.path(), &extra);
    let url = format!("https://{}/api/v1/login", d.admin);
    let out = std::process::Command::new("curl")
        .args(["-s", "-i", "--cacert"])
        .arg(&cert)
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(serde_json::json!({ "password": d.password }).to_string())
        .arg(&url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    let cookie = text.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie")).unwrap();
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(text.to_ascii_lowercase().contains("strict-transport-security"));
    // Plain HTTP on the TLS port gets no answer.
    let mut s = TcpStream::connect(&d.admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "plain HTTP answered");
}

#[test]
fn an_admin_listener_without_credentials_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::config(dir.path(), 160, 90, None, &[("90p", 90, 200)]) + "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let out = common::run_config(dir.path(), &text, &["--duration", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.password_file") && err.contains("no default password"), "{err}");
    let text = common::config(dir.path(), 160, 90, None, &[("90p", 90, 200)])
        + &format!("[admin]\nlisten = \"127.0.0.1:0\"\npassword_file = \"{}\"\n", dir.path().join("missing").display());
    let out = common::run_config(dir.path(), &text, &["--duration", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"), "names the file");
}

#[test]
fn without_nvidia_libraries_an_nvenc_channel_falls_back_to_the_software_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "[encoder]\nbackend = \"nvenc\"\n");
    let (cookie, _) = d.login();
    d.wait_for("a segment", Duration::from_secs(30), || {
        d.get("/api/v1/channels/ch", &cookie).json()["renditions"][0]["measured_kbps"].is_number()
    });
    let log = d.log();
    assert!(log.contains("NVENC unavailable: ") && log.contains("using openh264"), "{log}");
}

#[test]
fn a_missing_capture_device_keeps_the_daemon_up_and_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_edited(dir.path(), "", |t| {
        t.replace("kind = \"test\"", "kind = \"v4l2\"\ndevice = \"/dev/video-not-here\"")
    });
    let (cookie, _) = d.login();
    let fault = || d.get("/api/v1/sources", &cookie).json()[0]["input_fault"].as_str().map(str::to_string);
    d.wait_for("the device fault in the API", Duration::from_secs(20), || fault().is_some());
    let fault = fault().unwrap_or_default();
    assert!(fault.contains("/dev/video-not-here") && fault.contains("cannot open"), "{fault}");
    // Still serving, and retrying.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.get("/api/v1/status", &cookie).status, 200);
    let log = d.log();
    assert!(log.matches("retrying in").count() >= 2, "{log}");
}

/// Whether `text` (a config file) has a `[[channels]]` table for `id`.
fn has_channel_table(text: &str, id: &str) -> bool {
    channel_table(text, id).is_some()
}

/// The `[[channels]]` entry `id` of a configuration file.
fn channel_table(text: &str, id: &str) -> Option<lockstep::config::ChannelSpec> {
    lockstep::config::Config::from_toml(text, "test").unwrap().channels.into_iter().find(|c| c.channel.id == id)
}

#[test]
fn channels_created_through_the_api_run_beside_the_first_outlive_a_restart_and_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), "");
    let (cookie, csrf) = d.login();
    let file = dir.path().join("lockstep.toml");

    // Refused, each with its reason.
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, &EXTRA_CHANNEL.replace("\"extra\"", "\"ch\""));
    assert_eq!(r.status, 409, "the first channel's id: {}", r.text());
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, &EXTRA_CHANNEL.replace("\"extra\"", "\"combined\""));
    assert_eq!((r.status, r.json()["field"].as_str()), (422, Some("channel.id")), "{}", r.text());
    let r =
        d.send("POST", "/api/v1/channels", &cookie, &csrf, &EXTRA_CHANNEL.replace("\"height\": 90", "\"height\": 7"));
    assert_eq!((r.status, r.json()["field"].as_str()), (422, Some("renditions[1].height")), "{}", r.text());
    let missing = r#"{"channel": {"id": "clip"}, "source": {"kind": "file", "path": "/nonexistent/clip.mp4"},
        "renditions": [{"name": "90p", "height": 90, "bitrate_kbps": 200}]}"#;
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, missing);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("/nonexistent/clip.mp4"), "{}", r.text());
    let r = d.send("DELETE", "/api/v1/channels/ch", &cookie, &csrf, "");
    assert_eq!(r.status, 409, "the first channel is not deleted: {}", r.text());
    assert!(!has_channel_table(&std::fs::read_to_string(&file).unwrap(), "extra"));

    // Created: it runs beside the first, on the same timeline, and its
    // segments are those of the first channel (same source, same ladder).
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, EXTRA_CHANNEL);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!((r.json()["id"].as_str(), r.json()["first"].as_bool()), (Some("extra"), Some(false)));
    assert_eq!(r.json()["saved"]["state"], "saved", "{}", r.text());
    assert!(has_channel_table(&std::fs::read_to_string(&file).unwrap(), "extra"), "saved as [[channels]]");
    let (ours, theirs) = (dir.path().join("out/ch/180p"), dir.path().join("out/extra/180p"));
    let common = || {
        let first = segments(&ours);
        let shared: Vec<_> =
            segments(&theirs).into_iter().filter(|s| first.iter().any(|f| f.0 == s.0)).collect::<Vec<_>>();
        (first, shared)
    };
    d.wait_for("three segments of the new channel", Duration::from_secs(30), || {
        theirs.join("manifest.jsonl").exists() && common().1.len() >= 3
    });
    let (first, shared) = common();
    for s in &shared {
        let same = first.iter().find(|f| f.0 == s.0).unwrap();
        assert_eq!(s, same, "segment {} of `extra` differs from the first channel's", s.0);
    }
    let list = d.get("/api/v1/channels", &cookie).json();
    let ids: Vec<&str> = list.as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, ["ch", "extra"]);
    let origin = http(&d.origin, "GET", "/extra/master.m3u8", &[], b"");
    assert_eq!(origin.status, 200, "the origin serves the new channel");
    let metrics = d.get("/metrics", &cookie).text();
    assert!(metrics.contains("lockstep_channel_running{channel=\"extra\"} 1"), "{metrics}");
    let mut families: Vec<&str> = metrics.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let declared = families.len();
    families.sort_unstable();
    families.dedup();
    assert_eq!(families.len(), declared, "every family is declared once across both channels:\n{metrics}");
    for family in ["lockstep_channel_running", "lockstep_analysis_frames_total", "lockstep_frames_captured_total"] {
        let samples = metrics.lines().filter(|l| l.starts_with(&format!("{family}{{"))).count();
        assert_eq!(samples, 2, "{family}: one sample per channel:\n{metrics}");
    }

    // A failing channel says why while the others keep publishing.
    let clip = dir.path().join("clip.mp4");
    let made = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=25:duration=2", "-pix_fmt"])
        .args(["yuv420p", "-c:v", "libx264", "-y"])
        .arg(&clip)
        .status()
        .expect("ffmpeg is installed by ./run deps");
    assert!(made.success());
    let clip_channel = missing
        .replace("/nonexistent/clip.mp4", clip.to_str().unwrap())
        .replace("\"file\"", "\"file\", \"loop\": true");
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, &clip_channel);
    assert_eq!(r.status, 201, "{}", r.text());
    // The file goes missing: the loop cannot open it again.
    std::fs::remove_file(&clip).unwrap();
    let before = segments(&theirs).len();
    d.wait_for("the clip channel's error", Duration::from_secs(20), || {
        let c = d.get("/api/v1/channels/clip", &cookie).json();
        c["running"] == false && c["error"].as_str().is_some_and(|e| e.contains("clip.mp4"))
    });
    d.wait_for("the other channels go on", Duration::from_secs(20), || segments(&theirs).len() >= before + 2);
    let r = d.send("DELETE", "/api/v1/channels/clip", &cookie, &csrf, "");
    assert_eq!(r.status, 200, "{}", r.text());

    // A channel stopped by command is saved as stopped (`start = false`).
    let r = d.send("POST", "/api/v1/channels", &cookie, &csrf, &EXTRA_CHANNEL.replace("\"extra\"", "\"held\""));
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(channel_table(&std::fs::read_to_string(&file).unwrap(), "held").is_some_and(|c| c.start));
    let r = d.send("POST", "/api/v1/channels/held/stop", &cookie, &csrf, "");
    assert_eq!((r.status, r.json()["running"].as_bool()), (200, Some(false)), "{}", r.text());
    d.wait_for("the stop saved", Duration::from_secs(10), || {
        channel_table(&std::fs::read_to_string(&file).unwrap(), "held").is_some_and(|c| !c.start)
    });

    // The next start runs the channel created through the API, and keeps
    // the stopped one stopped.
    let (admin, origin, token) = (d.admin.clone(), d.origin.clone(), d.token.clone());
    drop(d);
    let d = launch(dir.path(), admin, origin, token);
    let (cookie, csrf) = d.login();
    let before = segments(&theirs).len();
    d.wait_for("the new channel runs after the restart", Duration::from_secs(30), || {
        segments(&theirs).len() >= before + 2
    });
    assert_eq!(d.get("/api/v1/channels/extra", &cookie).json()["running"], true);
    let held = d.get("/api/v1/channels/held", &cookie).json();
    assert_eq!(held["running"], false, "{held}");
    let r = d.send("POST", "/api/v1/channels/held/start", &cookie, &csrf, "");
    assert_eq!((r.status, r.json()["running"].as_bool()), (200, Some(true)), "{}", r.text());
    d.wait_for("the start saved", Duration::from_secs(10), || {
        channel_table(&std::fs::read_to_string(&file).unwrap(), "held").is_some_and(|c| c.start)
    });
    let r = d.send("DELETE", "/api/v1/channels/held", &cookie, &csrf, "");
    assert_eq!(r.status, 200, "{}", r.text());

    // Deleted: gone from the appliance and the file, its segments kept.
    let r = d.send("DELETE", "/api/v1/channels/extra", &cookie, &csrf, "");
    assert_eq!((r.status, r.json()["deleted"].as_str()), (200, Some("extra")), "{}", r.text());
    assert_eq!(d.get("/api/v1/channels/extra", &cookie).status, 404);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!has_channel_table(&text, "extra") && !text.contains("[[channels]]"), "{text}");
    assert!(!segments(&theirs).is_empty(), "its segments stay on disk");
    let playlist = std::fs::read_to_string(theirs.join("playlist.m3u8")).unwrap();
    assert!(playlist.trim_end().ends_with("#EXT-X-ENDLIST"), "a deleted channel's playlist ends:\n{playlist}");
    let kept = segments(&theirs).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(segments(&theirs).len(), kept, "a deleted channel publishes no more");
    let events = d.get("/api/v1/events?since=0", &cookie).json().to_string();
    assert!(events.contains("channel extra deleted"), "{events}");
}
