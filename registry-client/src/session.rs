//! One registry endpoint: the HTTP clients, the credential for that host and the auth
//! state per repository, and the requests oci-client does not make safely enough for us
//! (manifests with a size cap, the token flow with realm checks and renewal on 401).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use crate::auth::{Challenge, Credential};
use crate::config::Config;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::ACCEPTED_MANIFESTS;
use crate::reference::Reference;

/// Pull or push: what a token is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Pull,
    Push,
}

impl Op {
    fn scope(self, repository: &str) -> String {
        match self {
            Op::Pull => format!("repository:{repository}:pull"),
            Op::Push => format!("repository:{repository}:pull,push"),
        }
    }

    fn oci(self) -> RegistryOperation {
        match self {
            Op::Pull => RegistryOperation::Pull,
            Op::Push => RegistryOperation::Push,
        }
    }
}

/// What a failing request was about, for error messages.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub reference: String,
    pub registry: String,
}

impl Ctx {
    pub fn of(reference: &Reference) -> Ctx {
        Ctx { reference: reference.to_string(), registry: reference.registry().to_string() }
    }
}

/// A manifest body as served.
#[derive(Debug)]
pub(crate) struct RawManifest {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub digest: Digest,
}

/// The connection to one registry host, shared by all pulls and pushes to it.
pub(crate) struct Session {
    host: String,
    base: String,
    plain_http: bool,
    require_https_realm: bool,
    read_timeout: Duration,
    max_manifest_bytes: u64,
    http: reqwest::Client,
    pub oci: oci_client::Client,
    credential: Option<Credential>,
    /// (repository, op) → the Authorization header value to send (None: anonymous).
    auth: tokio::sync::Mutex<HashMap<(String, Op), Option<String>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.host).finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(host: &str, config: &Config, credential: Option<Credential>) -> Result<Session> {
        crate::install_crypto_provider();
        let plain_http = config.is_plain_http(host);
        let base = format!("{}://{}", if plain_http { "http" } else { "https" }, host);
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("wasmlet-registry-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Invalid { context: format!("http client for {host}"), reason: e.to_string() })?;
        let oci_config = oci_client::client::ClientConfig {
            protocol: if plain_http {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            read_timeout: Some(config.read_timeout),
            connect_timeout: Some(config.connect_timeout),
            // We renew tokens ourselves on 401; oci-client must not fall back to the first
            // credential it saw (oci-client issue #221).
            default_token_expiration_secs: 24 * 3600,
            max_concurrent_upload: config.max_concurrent_downloads,
            max_concurrent_download: config.max_concurrent_downloads,
            ..Default::default()
        };
        let oci = oci_client::Client::try_from(oci_config)
            .map_err(|e| Error::Invalid { context: format!("oci client for {host}"), reason: e.to_string() })?;
        Ok(Session {
            host: host.to_string(),
            base,
            plain_http,
            require_https_realm: config.require_https_realm,
            read_timeout: config.read_timeout,
            max_manifest_bytes: config.max_manifest_bytes,
            http,
            oci,
            credential,
            auth: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The Authorization header for (repository, op), negotiating it on first use or when
    /// `renew` is set (after a 401). Also hands the result to oci-client.
    pub async fn authorize(&self, r: &Reference, op: Op, renew: bool) -> Result<Option<String>> {
        let key = (r.repository().to_string(), op);
        let mut cache = self.auth.lock().await;
        if !renew && let Some(h) = cache.get(&key) {
            return Ok(h.clone());
        }
        let ctx = Ctx::of(r);
        let (header, oci_auth) = self.negotiate(r, op, &ctx).await?;
        // Anonymous needs nothing handed over (and oci-client would ping /v2/ again).
        if !matches!(oci_auth, RegistryAuth::Anonymous) {
            self.oci.auth(&r.to_oci(), &oci_auth, op.oci()).await.map_err(|e| from_oci(e, &ctx, "authentication"))?;
        }
        cache.insert(key, header.clone());
        Ok(header)
    }

    async fn negotiate(&self, r: &Reference, op: Op, ctx: &Ctx) -> Result<(Option<String>, RegistryAuth)> {
        let url = format!("{}/v2/", self.base);
        let resp = self.http.get(&url).send().await.map_err(|e| from_reqwest(e, ctx, "/v2/", self.read_timeout))?;
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse);
        let status = resp.status().as_u16();
        match challenge {
            _ if status == 200 => Ok((None, RegistryAuth::Anonymous)),
            Some(Challenge::Basic) => Ok(match &self.credential {
                Some(c) => (Some(c.basic_header()), RegistryAuth::Basic(c.username.clone(), c.password.clone())),
                None => (None, RegistryAuth::Anonymous),
            }),
            Some(Challenge::Bearer { realm, service, .. }) => {
                let token = self.fetch_token(&realm, service.as_deref(), &op.scope(r.repository()), ctx).await?;
                Ok((Some(format!("Bearer {token}")), RegistryAuth::Bearer(token)))
            }
            None if status == 401 => Err(Error::AuthChallenge {
                reference: ctx.reference.clone(),
                registry: ctx.registry.clone(),
                reason: "401 without a Basic or Bearer challenge".into(),
            }),
            None => Err(http_error(status, ctx, "/v2/", String::new())),
        }
    }

    /// The token flow. Credentials go to the realm only if it is https (or, for a
    /// plain-HTTP registry, the same host), never elsewhere.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str, ctx: &Ctx) -> Result<String> {
        let refuse = |reason: String| Error::AuthChallenge {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            reason,
        };
        let url = reqwest::Url::parse(realm).map_err(|e| refuse(format!("realm {realm:?} is not a URL: {e}")))?;
        let realm_host =
            url.host_str().unwrap_or_default().to_string() + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let same_host = realm_host == self.host;
        match url.scheme() {
            "https" => {}
            "http" if self.plain_http && same_host => {}
            "http" if !self.require_https_realm => {}
            s => return Err(refuse(format!("realm {realm} uses {s}; only https realms get credentials"))),
        }
        let mut req = self.http.get(url).query(&[("scope", scope)]);
        if let Some(s) = service {
            req = req.query(&[("service", s)]);
        }
        if let Some(c) = &self.credential {
            req = req.header(reqwest::header::AUTHORIZATION, c.basic_header());
        }
        let resp = req.send().await.map_err(|e| from_reqwest(e, ctx, "token", self.read_timeout))?;
        let status = resp.status().as_u16();
        let body = read_capped(resp, 1 << 20, ctx, "token", self.read_timeout).await?;
        if status == 401 || status == 403 {
            return Err(unauthorized(status, ctx, "token", &body));
        }
        if status != 200 {
            return Err(http_error(status, ctx, "token", String::from_utf8_lossy(&body).into_owned()));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| refuse(format!("token reply is not JSON: {e}")))?;
        t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| refuse("token reply has no token".into()))
    }

    /// GETs a manifest or index, at most `max_manifest_bytes`, and checks its digest
    /// against the reference (if pinned) and the Docker-Content-Digest header.
    pub async fn get_manifest(&self, r: &Reference, auth: Option<&str>) -> Result<RawManifest> {
        let ctx = Ctx::of(r);
        let what = format!("manifest {}", r.manifest_ref());
        let url = format!("{}/v2/{}/manifests/{}", self.base, r.repository(), r.manifest_ref());
        let mut req = self.http.get(&url).header(reqwest::header::ACCEPT, ACCEPTED_MANIFESTS.join(", "));
        if let Some(h) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|e| from_reqwest(e, &ctx, &what, self.read_timeout))?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header("content-type");
        let header_digest = header("docker-content-digest");
        if status != 200 {
            let body = read_capped(resp, 64 << 10, &ctx, &what, self.read_timeout).await.unwrap_or_default();
            return Err(status_error(status, &ctx, &what, &body));
        }
        let body = read_capped(resp, self.max_manifest_bytes, &ctx, &what, self.read_timeout).await?;
        let digest = verify_manifest_digest(&body, r.digest(), header_digest.as_deref(), &ctx)?;
        Ok(RawManifest { body, content_type, digest })
    }
}

fn verify_manifest_digest(body: &[u8], pinned: Option<&Digest>, header: Option<&str>, ctx: &Ctx) -> Result<Digest> {
    let mismatch = |expected: String, actual: &Digest| Error::DigestMismatch {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        expected,
        actual: actual.to_string(),
    };
    let hash = |alg: &Digest| {
        let mut h = alg.hasher();
        h.update(body);
        h.finish()
    };
    let actual = match pinned {
        Some(p) => {
            let a = hash(p);
            if &a != p {
                return Err(mismatch(p.to_string(), &a));
            }
            a
        }
        None => Digest::sha256_of(body),
    };
    if let Some(h) = header {
        let claimed: Digest = h.parse()?;
        let a = hash(&claimed);
        if a != claimed {
            return Err(mismatch(claimed.to_string(), &a));
        }
    }
    Ok(actual)
}

/// Reads a response body, failing as soon as it passes `limit` bytes.
async fn read_capped(resp: reqwest::Response, limit: u64, ctx: &Ctx, what: &str, timeout: Duration) -> Result<Vec<u8>> {
    let too_large = || Error::TooLarge {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        what: what.to_string(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| from_reqwest(e, ctx, what, timeout))?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub(crate) fn status_error(status: u16, ctx: &Ctx, what: &str, body: &[u8]) -> Error {
    match status {
        401 | 403 => unauthorized(status, ctx, what, body),
        404 => Error::NotFound { reference: ctx.reference.clone(), registry: ctx.registry.clone(), what: what.into() },
        _ => http_error(status, ctx, what, String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned()),
    }
}

fn unauthorized(status: u16, ctx: &Ctx, what: &str, body: &[u8]) -> Error {
    Error::Unauthorized {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        what: what.into(),
        status,
        detail: String::from_utf8_lossy(&body[..body.len().min(256)]).trim().to_string(),
    }
}

fn http_error(status: u16, ctx: &Ctx, what: &str, detail: String) -> Error {
    Error::Http { reference: ctx.reference.clone(), registry: ctx.registry.clone(), what: what.into(), status, detail }
}

pub(crate) fn from_reqwest(e: reqwest::Error, ctx: &Ctx, what: &str, timeout: Duration) -> Error {
    if let Some(status) = e.status() {
        return status_error(status.as_u16(), ctx, what, b"");
    }
    if e.is_timeout() {
        return Error::Stalled {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            what: what.into(),
            seconds: timeout.as_secs(),
        };
    }
    Error::Transport {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        what: what.into(),
        source: Box::new(e),
    }
}

/// An error from inside a blob stream (reqwest's, or oci-client's digest check).
pub(crate) fn from_stream_io(e: std::io::Error, ctx: &Ctx, what: &str, timeout: Duration) -> Error {
    let inner = e.get_ref();
    if let Some(d) = inner.and_then(|i| i.downcast_ref::<oci_client::errors::DigestError>()) {
        return Error::DigestMismatch {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            expected: what.into(),
            actual: d.to_string(),
        };
    }
    if inner.and_then(|i| i.downcast_ref::<reqwest::Error>()).is_some() {
        let e = e.into_inner().expect("checked").downcast::<reqwest::Error>().expect("checked");
        return from_reqwest(*e, ctx, what, timeout);
    }
    Error::Transport {
        reference: ctx.reference.clone(),
        registry: ctx.registry.clone(),
        what: what.into(),
        source: Box::new(e),
    }
}

pub(crate) fn from_oci(e: OciDistributionError, ctx: &Ctx, what: &str) -> Error {
    use OciDistributionError as O;
    match e {
        O::RequestError(e) => from_reqwest(e, ctx, what, Duration::ZERO),
        O::IoError(e) => from_stream_io(e, ctx, what, Duration::ZERO),
        O::UnauthorizedError { .. } => unauthorized(401, ctx, what, b""),
        O::AuthenticationFailure(m) => unauthorized(401, ctx, what, m.as_bytes()),
        O::ServerError { code, message, .. } => status_error(code, ctx, what, message.as_bytes()),
        O::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as C;
            let detail = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(C::BlobUnknown | C::ManifestUnknown | C::NameUnknown) => {
                    status_error(404, ctx, what, detail.as_bytes())
                }
                Some(C::Unauthorized | C::Denied) => unauthorized(401, ctx, what, detail.as_bytes()),
                Some(C::Toomanyrequests) => http_error(429, ctx, what, detail),
                _ => http_error(400, ctx, what, detail),
            }
        }
        O::DigestError(d) => Error::DigestMismatch {
            reference: ctx.reference.clone(),
            registry: ctx.registry.clone(),
            expected: what.into(),
            actual: d.to_string(),
        },
        other => Error::Invalid {
            context: format!("{}: {what} at registry {}", ctx.reference, ctx.registry),
            reason: other.to_string(),
        },
    }
}
