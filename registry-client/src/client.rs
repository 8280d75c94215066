//! The registry client: sessions per (host, credential), retries with back-off, and the
//! one place where a 401 leads to a renewed token.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::auth::{Credential, Keychain};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::reference::Reference;
use crate::session::{Op, Session};
use crate::store::Store;

/// Sessions by (registry host, credential fingerprint).
type Sessions = HashMap<(String, Option<String>), Arc<Session>>;

/// Pulls and pushes images; shares connections, tokens and the blob store between calls.
#[derive(Debug)]
pub struct Client {
    config: Config,
    keychain: Keychain,
    store: Arc<Store>,
    sessions: Mutex<Sessions>,
}

impl Client {
    pub fn new(config: Config, keychain: Keychain, store: Arc<Store>) -> Self {
        Client { config, keychain, store, sessions: Mutex::new(HashMap::new()) }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The session for `host`, with `explicit` credentials if given (they were given
    /// for this host), else whatever the keychain holds for exactly this host.
    pub(crate) fn session(&self, host: &str, explicit: Option<&Credential>) -> Result<Arc<Session>> {
        let credential = match explicit {
            Some(c) => Some(c.clone()),
            None => self.keychain.get(host)?,
        };
        let key = (host.to_string(), credential.as_ref().map(|c| format!("{}\0{}", c.username, c.password)));
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get(&key) {
            return Ok(s.clone());
        }
        let s = Arc::new(Session::new(host, &self.config, credential)?);
        sessions.insert(key, s.clone());
        Ok(s)
    }

    /// Runs `f` until it succeeds, fails for good, or the tries run out. Transient errors
    /// back off exponentially; a 401 renews the token once.
    pub(crate) async fn call<T, F, Fut>(&self, session: &Session, r: &Reference, op: Op, mut f: F) -> Result<T>
    where
        F: FnMut(Option<String>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        let mut renewed = false;
        loop {
            let header = session.authorize(r, op, false).await;
            let result = match header {
                Ok(h) => f(h).await,
                Err(e) => Err(e),
            };
            match result {
                Err(Error::Unauthorized { .. }) if !renewed => {
                    renewed = true;
                    session.authorize(r, op, true).await?;
                }
                Err(e) if e.is_retryable() && attempt < self.config.retry.attempts => {
                    attempt += 1;
                    let delay = self.config.retry.delay(attempt);
                    tracing::debug!(reference = %r, error = %e, attempt, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}
