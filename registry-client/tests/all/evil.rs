//! A deliberately misbehaving registry: wrong bytes, truncation, 5xx, stalls, huge
//! manifests, endless blobs, lying digest headers, cross-host redirects, expiring
//! tokens, foreign realms and ambiguous documents. Plain blocking HTTP/1.1 on loopback,
//! one thread per connection, `Connection: close` on every reply.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry_client::{Config, Credential, Digest, Error, Keychain, PullOptions, Reference, Retry};
use serde_json::json;

use crate::common::{TestClient, rt};

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Announce the full length, send `body[..cut]`, close.
    Truncate {
        body: Vec<u8>,
        cut: usize,
    },
    /// Send headers and a little, then go quiet for `pause`.
    Stall {
        pause: Duration,
    },
    /// Stream `chunk` forever (no Content-Length) until the client goes away.
    Endless {
        chunk: Vec<u8>,
    },
}

impl Reply {
    pub fn ok(body: Vec<u8>, content_type: &str) -> Reply {
        Reply::Full { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body }
    }
    pub fn status(status: u16) -> Reply {
        Reply::Full {
            status,
            headers: vec![],
            body: format!("{{\"errors\":[{{\"code\":\"X\",\"message\":\"{status}\"}}]}}").into_bytes(),
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        if let Reply::Full { headers, .. } = &mut self {
            headers.push((k.into(), v.into()));
        }
        self
    }
}

type Handler = Arc<dyn Fn(&Request, usize) -> Reply + Send + Sync>;

/// The server: every request is logged; `handler` gets it and how many requests the
/// same path has seen before.
pub struct Evil {
    pub host: String,
    pub log: Arc<Mutex<Vec<Request>>>,
}

impl Evil {
    pub fn start(handler: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Evil {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (handler, log, counts) = (handler.clone(), log2.clone(), counts.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log, &counts));
            }
        });
        Evil { host, log }
    }

    pub fn requests(&self, path_part: &str) -> Vec<Request> {
        self.log.lock().unwrap().iter().filter(|r| r.path.contains(path_part)).cloned().collect()
    }
}

fn serve(
    stream: TcpStream,
    handler: &(dyn Fn(&Request, usize) -> Reply + Send + Sync),
    log: &Mutex<Vec<Request>>,
    counts: &Mutex<HashMap<String, usize>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let req = Request { method, path: path.clone(), headers };
    log.lock().unwrap().push(req.clone());
    let key = path.split('?').next().unwrap().to_string();
    let n = {
        let mut c = counts.lock().unwrap();
        let e = c.entry(key).or_default();
        *e += 1;
        *e - 1
    };
    let mut out = stream;
    let _ = write_reply(&mut out, handler(&req, n), &req);
}

fn write_reply(out: &mut TcpStream, reply: Reply, req: &Request) -> std::io::Result<()> {
    let head = |status: u16, extra: &str| format!("HTTP/1.1 {status} X\r\nConnection: close\r\n{extra}\r\n");
    match reply {
        Reply::Full { status, headers, body } => {
            // Honour a Range request on 200 replies, like a real registry.
            let range = req
                .headers
                .get("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let (status, body, extra) = match range {
                Some(off) if status == 200 && off <= body.len() => (
                    206,
                    body[off..].to_vec(),
                    format!("Content-Range: bytes {off}-{}/{}\r\n", body.len().saturating_sub(1), body.len()),
                ),
                _ => (status, body, String::new()),
            };
            let mut extra = extra + &format!("Content-Length: {}\r\n", body.len());
            for (k, v) in headers {
                extra.push_str(&format!("{k}: {v}\r\n"));
            }
            out.write_all(head(status, &extra).as_bytes())?;
            if req.method != "HEAD" {
                out.write_all(&body)?;
            }
        }
        Reply::Truncate { body, cut } => {
            out.write_all(head(200, &format!("Content-Length: {}\r\n", body.len())).as_bytes())?;
            out.write_all(&body[..cut])?;
        }
        Reply::Stall { pause } => {
            out.write_all(head(200, "Content-Length: 1000000\r\n").as_bytes())?;
            out.write_all(&[0u8; 10])?;
            out.flush()?;
            std::thread::sleep(pause);
        }
        Reply::Endless { chunk } => {
            out.write_all(head(200, "Content-Type: application/octet-stream\r\n").as_bytes())?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                out.write_all(&chunk)?;
            }
        }
    }
    out.flush()
}

/// A small Wasm artifact the evil server serves: (manifest bytes, config, layer).
pub struct Artifact {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
}

impl Artifact {
    pub fn new() -> Artifact {
        let layer: Vec<u8> = b"\0asm\x01\0\0\0".iter().copied().chain((0..200_000).map(|_| fastrand::u8(..))).collect();
        let config = br#"{"architecture":"wasm","os":"wasip1"}"#.to_vec();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": Digest::sha256_of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/wasm", "digest": Digest::sha256_of(&layer).to_string(), "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        Artifact { manifest, config, layer }
    }

    pub fn layer_digest(&self) -> Digest {
        Digest::sha256_of(&self.layer)
    }

    /// The honest answer for a request, if it is for this artifact.
    pub fn serve(&self, req: &Request) -> Reply {
        let p = req.path.as_str();
        if p == "/v2/" {
            Reply::ok(b"{}".to_vec(), "application/json")
        } else if p.contains("/manifests/") {
            Reply::ok(self.manifest.clone(), "application/vnd.oci.image.manifest.v1+json")
        } else if p.ends_with(&Digest::sha256_of(&self.config).to_string()) {
            Reply::ok(self.config.clone(), "application/octet-stream")
        } else if p.ends_with(&self.layer_digest().to_string()) {
            Reply::ok(self.layer.clone(), "application/octet-stream")
        } else {
            Reply::status(404)
        }
    }
}

/// Serves `a` honestly, except that a request for its layer (the `n`th, from 0) gets what
/// `layer` returns, when it returns something.
fn layer_fault(a: &Arc<Artifact>, layer: impl Fn(&Artifact, usize) -> Option<Reply> + Send + Sync + 'static) -> Evil {
    let a = a.clone();
    Evil::start(move |req, n| {
        let faulty = req.path.ends_with(&a.layer_digest().to_string()).then(|| layer(&a, n)).flatten();
        faulty.unwrap_or_else(|| a.serve(req))
    })
}

fn fast_config() -> Config {
    Config {
        retry: Retry { attempts: 3, initial: Duration::from_millis(10), max: Duration::from_millis(50) },
        read_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

fn client() -> TestClient {
    TestClient::with(fast_config(), Keychain::new())
}

fn app(host: &str) -> Reference {
    format!("{host}/evil/app:v1").parse().unwrap()
}

/// Nothing half-written may look complete: no blob but the config in `blobs/`.
fn assert_layer_not_stored(t: &TestClient, a: &Artifact) {
    assert!(!t.client.store().contains(&a.layer_digest(), None), "a bad layer was stored");
}

#[test]
fn wrong_bytes_are_rejected_not_retried_and_not_kept() {
    let a = Arc::new(Artifact::new());
    let evil = layer_fault(&a, |a, _| {
        let mut bad = a.layer.clone();
        bad[100] ^= 0xff;
        Some(Reply::ok(bad, "application/octet-stream"))
    });
    let t = client();
    let err = rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains(&evil.host), "the error names the registry: {err}");
    assert_eq!(evil.requests(&a.layer_digest().to_string()).len(), 1, "a digest mismatch is not retried");
    assert_layer_not_stored(&t, &a);
    let ingest: Vec<_> = std::fs::read_dir(t.client.store().root().join("ingest")).unwrap().collect();
    assert!(ingest.is_empty(), "wrong bytes are deleted, not kept for resume");
}

#[test]
fn truncated_blob_resumes_with_a_range_request() {
    let a = Arc::new(Artifact::new());
    let evil = layer_fault(&a, |a, n| (n == 0).then(|| Reply::Truncate { body: a.layer.clone(), cut: 150_000 }));
    let t = client();
    let image = rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap();
    assert_eq!(std::fs::read(&image.layers[0].blob).unwrap(), a.layer);
    let reqs = evil.requests(&a.layer_digest().to_string());
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].headers.get("range").map(String::as_str), Some("bytes=150000-"), "resumed where it broke off");
}

#[test]
fn always_truncated_blob_fails_after_retries_and_is_never_complete() {
    let a = Arc::new(Artifact::new());
    // ignore Range, always cut short
    let evil = layer_fault(&a, |a, _| Some(Reply::Truncate { body: a.layer.clone(), cut: 1000 }));
    let t = client();
    let err = rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(evil.requests(&a.layer_digest().to_string()).len(), 3, "tried as often as configured");
    assert_layer_not_stored(&t, &a);
}

#[test]
fn server_errors_are_retried_with_backoff_until_success() {
    let a = Arc::new(Artifact::new());
    let a2 = a.clone();
    let evil = Evil::start(
        move |req, n| if req.path.contains("/manifests/") && n < 2 { Reply::status(503) } else { a2.serve(req) },
    );
    let t = client();
    rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap();
    assert_eq!(evil.requests("/manifests/").len(), 3);
}

#[test]
fn persistent_server_errors_give_a_retryable_error_naming_the_reference() {
    let evil = Evil::start(|req, _| {
        if req.path == "/v2/" { Reply::ok(b"{}".to_vec(), "application/json") } else { Reply::status(500) }
    });
    let t = client();
    let r = app(&evil.host);
    let err = rt().block_on(t.client.pull(&r, &PullOptions::default())).unwrap_err();
    assert!(matches!(err, Error::Http { status: 500, .. }), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&r.to_string()), "{err}");
    assert_eq!(evil.requests("/manifests/").len(), 3);
}

#[test]
fn a_stalled_blob_times_out_instead_of_hanging() {
    let a = Arc::new(Artifact::new());
    let evil = layer_fault(&a, |_, _| Some(Reply::Stall { pause: Duration::from_secs(30) }));
    let t = client();
    let started = Instant::now();
    let err = rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap_err();
    assert!(matches!(err, Error::Stalled { .. } | Error::Transport { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(20), "stall detection took {:?}", started.elapsed());
    assert_layer_not_stored(&t, &a);
}

#[test]
fn huge_manifests_are_refused_early() {
    let evil = Evil::start(|req, _| match req.path.as_str() {
        "/v2/" => Reply::ok(b"{}".to_vec(), "application/json"),
        p if p.contains("chunked") => Reply::Endless { chunk: vec![b' '; 64 << 10] },
        _ => Reply::ok(vec![b' '; 5 << 20], "application/vnd.oci.image.manifest.v1+json"),
    });
    let t = client();
    rt().block_on(async {
        for repo in ["evil/sized:v1", "evil/chunked:v1"] {
            let r: Reference = format!("{}/{repo}", evil.host).parse().unwrap();
            let err = t.client.pull(&r, &PullOptions::default()).await.unwrap_err();
            assert!(matches!(err, Error::TooLarge { limit: 4194304, .. }), "{repo}: {err}");
        }
    });
}

#[test]
fn an_endless_blob_is_cut_off_at_its_descriptor_size() {
    let a = Arc::new(Artifact::new());
    let evil = layer_fault(&a, |_, _| Some(Reply::Endless { chunk: vec![0u8; 64 << 10] }));
    let t = client();
    let err = rt().block_on(t.client.pull(&app(&evil.host), &PullOptions::default())).unwrap_err();
    assert!(matches!(err, Error::SizeMismatch { .. }), "{err}");
    assert_layer_not_stored(&t, &a);
}

#[test]
fn a_lying_digest_header_or_ambiguous_manifest_is_final() {
    let a = Arc::new(Artifact::new());
    let a2 = a.clone();
    let ambiguous = json!({"schemaVersion": 2, "manifests": [], "layers": [],
        "config": {"mediaType": "x", "digest": Digest::sha256_of(b"").to_string(), "size": 0}})
    .to_string();
    let evil = Evil::start(move |req, _| {
        if req.path.contains("/lying/") && req.path.contains("/manifests/") {
            return a2.serve(req).with_header("Docker-Content-Digest", &Digest::sha256_of(b"other").to_string());
        }
        if req.path.contains("/ambiguous/") && req.path.contains("/manifests/") {
            return Reply::ok(ambiguous.clone().into_bytes(), "application/vnd.oci.image.manifest.v1+json");
        }
        a2.serve(req)
    });
    let t = client();
    rt().block_on(async {
        let lying: Reference = format!("{}/evil/lying:v1", evil.host).parse().unwrap();
        let err = t.client.pull(&lying, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let amb: Reference = format!("{}/evil/ambiguous:v1", evil.host).parse().unwrap();
        let err = t.client.pull(&amb, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::Manifest { .. }) && err.to_string().contains("ambiguous"), "{err}");
    });
    // a reference pinned to one digest gets a manifest with another: refused
    rt().block_on(async {
        let pinned: Reference = format!("{}/evil/app@{}", evil.host, Digest::sha256_of(b"pinned")).parse().unwrap();
        let err = t.client.pull(&pinned, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    });
    assert_eq!(evil.requests("/lying/").len(), 1);
    assert_eq!(evil.requests("/ambiguous/").len(), 1);
}

#[test]
fn credentials_never_follow_a_redirect_to_another_host() {
    let a = Arc::new(Artifact::new());
    let a_other = a.clone();
    let other = Evil::start(move |req, _| {
        if req.path.starts_with("/storage/") {
            return Reply::ok(a_other.layer.clone(), "application/octet-stream");
        }
        Reply::status(404)
    });
    let cred = Credential::new("alice", "s3cret");
    let expected = cred.basic_header();
    let (a2, other_host) = (a.clone(), other.host.clone());
    let evil = Evil::start(move |req, _| {
        if req.headers.get("authorization") != Some(&expected) {
            return Reply::status(401).with_header("WWW-Authenticate", r#"Basic realm="evil""#);
        }
        if req.path.ends_with(&a2.layer_digest().to_string()) {
            let to = format!("http://{other_host}/storage/layer");
            return Reply::Full { status: 307, headers: vec![("Location".into(), to)], body: vec![] };
        }
        a2.serve(req)
    });
    let t = client();
    let opts = PullOptions { credential: Some(cred), ..Default::default() };
    let image = rt().block_on(t.client.pull(&app(&evil.host), &opts)).unwrap();
    assert_eq!(std::fs::read(&image.layers[0].blob).unwrap(), a.layer);
    let seen = other.requests("/storage/");
    assert!(!seen.is_empty(), "the redirect was followed");
    for r in seen {
        assert!(!r.headers.contains_key("authorization"), "credentials leaked to {}: {:?}", other.host, r.headers);
    }
    assert!(evil.requests("/manifests/").iter().all(|r| r.headers.contains_key("authorization")));
}

#[test]
fn an_expired_token_is_renewed_on_401() {
    let a = Arc::new(Artifact::new());
    let a2 = a.clone();
    let issued = Arc::new(Mutex::new(0u32));
    let issued2 = issued.clone();
    let cred = Credential::new("bob", "pw");
    let basic = cred.basic_header();
    let evil_host = Arc::new(Mutex::new(String::new()));
    let host2 = evil_host.clone();
    let evil = Evil::start(move |req, _| {
        if req.path.starts_with("/token") {
            assert_eq!(req.headers.get("authorization"), Some(&basic), "credentials go to the same-host realm");
            let mut n = issued2.lock().unwrap();
            *n += 1;
            return Reply::ok(json!({"token": format!("tok-{n}")}).to_string().into_bytes(), "application/json");
        }
        let current = format!("Bearer tok-{}", *issued2.lock().unwrap());
        // tok-1 "expires" as soon as the manifest has been read with it
        let expired = req.headers.get("authorization").map(String::as_str) == Some("Bearer tok-1")
            && !req.path.contains("/manifests/");
        if req.headers.get("authorization") != Some(&current) || expired {
            let challenge = format!(r#"Bearer realm="http://{}/token",service="evil""#, host2.lock().unwrap());
            return Reply::status(401).with_header("WWW-Authenticate", &challenge);
        }
        a2.serve(req)
    });
    *evil_host.lock().unwrap() = evil.host.clone();
    let t = client();
    let opts = PullOptions { credential: Some(cred), ..Default::default() };
    rt().block_on(t.client.pull(&app(&evil.host), &opts)).unwrap();
    assert!(*issued.lock().unwrap() >= 2, "a fresh token was fetched after the 401");
    let token_reqs = evil.requests("/token");
    assert!(token_reqs.iter().all(|r| r.path.contains("scope=repository%3Aevil%2Fapp%3Apull")), "{token_reqs:?}");
}

#[test]
fn a_plain_http_realm_on_another_host_gets_no_credentials() {
    let thief = Evil::start(|_, _| Reply::ok(json!({"token": "stolen"}).to_string().into_bytes(), "application/json"));
    let realm = format!(r#"Bearer realm="http://{}/token",service="evil""#, thief.host);
    let evil = Evil::start(move |_, _| Reply::status(401).with_header("WWW-Authenticate", &realm));
    let t = client();
    let opts = PullOptions { credential: Some(Credential::new("carol", "pw")), ..Default::default() };
    let err = rt().block_on(t.client.pull(&app(&evil.host), &opts)).unwrap_err();
    assert!(matches!(err, Error::AuthChallenge { .. }), "{err}");
    assert!(thief.log.lock().unwrap().is_empty(), "nothing was sent to the foreign realm");
}
