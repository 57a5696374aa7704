//! Who may use the web UI.
//!
//! - Bound to loopback with no password: anyone on this machine. Requests must name a
//!   loopback host (`Host: 127.0.0.1:8088`, `localhost:8088`), so a web page a browser on
//!   this machine visits cannot reach the UI through DNS rebinding.
//! - With a password (required for any other address, see `config/web.rs`): a login sets
//!   a random session id in an `HttpOnly; SameSite=Strict` cookie; without a valid one
//!   the API and `/metrics` answer 401 (`/metrics` also takes the password as a bearer
//!   token, for Prometheus). Five wrong passwords from one address lock it out for a
//!   minute (429).
//! - Every action is a POST carrying the `X-CSRF-Token` header the page read from
//!   `/api/session` (a header another site's page cannot set without a CORS preflight,
//!   which this server never grants), and whose `Origin`, when sent, is this server.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use rand::Rng as _;
use s2gw_core::Secret;
use subtle::ConstantTimeEq as _;

/// The session cookie's name.
pub const COOKIE: &str = "s2gw_session";
/// The header every POST carries.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Wrong passwords from one address before it is locked out.
pub const MAX_FAILURES: u32 = 5;
/// How long a lockout lasts.
pub const LOCKOUT: Duration = Duration::from_secs(60);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 64;
/// Addresses whose failures are remembered at once.
const MAX_TRACKED: usize = 1024;

/// A request refused: the status and the reason, for the answer's body.
pub type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    (status, reason.into())
}

struct Session {
    csrf: String,
    expires: Instant,
}

#[derive(Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// The web UI's gatekeeper.
pub struct Auth {
    password: Option<Secret>,
    /// The CSRF token when there is no password (one for everybody on this machine).
    open_csrf: String,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    s2gw_core::hex::encode(&bytes)
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
}

fn host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|h| h.to_str().ok())
}

/// Whether `host` (a Host header) names this machine's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl Auth {
    /// With `password`, logins are required.
    pub fn new(password: Option<Secret>) -> Self {
        Self {
            password,
            open_csrf: token(),
            sessions: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Whether a login is needed.
    pub fn needs_login(&self) -> bool {
        self.password.is_some()
    }

    /// May this request read? Returns the CSRF token that goes with it.
    pub fn read(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let Some(password) = &self.password else {
            if !host(headers).is_some_and(loopback_host) {
                return Err(refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    "this web UI answers only to a loopback host name (127.0.0.1, localhost)",
                ));
            }
            return Ok(self.open_csrf.clone());
        };
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            if equal(bearer.trim(), password.expose()) {
                return Ok(String::new());
            }
            return Err(refuse(StatusCode::UNAUTHORIZED, "wrong bearer token"));
        }
        let Some(id) = cookie(headers) else {
            return Err(refuse(StatusCode::UNAUTHORIZED, "log in first"));
        };
        let mut sessions = lock(&self.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions
            .iter()
            .find(|(key, _)| equal(key, id))
            .map(|(_, s)| s.csrf.clone())
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "the session expired: log in again",
                )
            })
    }

    /// May this request act (a POST)?
    pub fn act(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let csrf = self.read(headers)?;
        same_origin(headers)?;
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match given {
            Some(given) if !csrf.is_empty() && equal(given, &csrf) => Ok(()),
            Some(_) => Err(refuse(
                StatusCode::FORBIDDEN,
                "wrong CSRF token: reload the page",
            )),
            None => Err(refuse(
                StatusCode::FORBIDDEN,
                "an action needs the X-CSRF-Token header (from GET /api/session)",
            )),
        }
    }

    /// Check a password from `peer`; on success, a new session id.
    pub fn login(&self, peer: IpAddr, headers: &HeaderMap, given: &str) -> Result<String, Refusal> {
        let Some(password) = &self.password else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "this web UI has no password",
            ));
        };
        same_origin(headers)?;
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        if let Some(until) = failures.get(&peer).and_then(|f| f.locked_until)
            && until > now
        {
            let wait = until.duration_since(now).as_secs() + 1;
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many wrong passwords: try again in {wait} s"),
            ));
        }
        if !equal(given.trim(), password.expose()) {
            if failures.len() >= MAX_TRACKED && !failures.contains_key(&peer) {
                failures.retain(|_, f| f.locked_until.is_some_and(|u| u > now));
            }
            let entry = failures.entry(peer).or_default();
            entry.count += 1;
            if entry.count >= MAX_FAILURES {
                entry.count = 0;
                entry.locked_until = Some(now + LOCKOUT);
            }
            return Err(refuse(StatusCode::UNAUTHORIZED, "wrong password"));
        }
        failures.remove(&peer);
        drop(failures);
        let id = token();
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: token(),
                expires: now + SESSION_TTL,
            },
        );
        Ok(id)
    }

    /// End the session of this request.
    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            lock(&self.sessions).remove(id);
        }
    }
}

/// The `Set-Cookie` value of session `id`.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn cleared_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

/// A request whose `Origin` is another site is refused.
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host(headers)) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(refuse(
            StatusCode::FORBIDDEN,
            "cross-origin requests are refused",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_loopback_host_names_reach_an_open_ui() {
        let auth = Auth::new(None);
        assert!(auth.read(&headers(&[("host", "127.0.0.1:8088")])).is_ok());
        assert!(auth.read(&headers(&[("host", "localhost:8088")])).is_ok());
        assert!(auth.read(&headers(&[("host", "[::1]:8088")])).is_ok());
        let err = auth
            .read(&headers(&[("host", "evil.example:8088")]))
            .unwrap_err();
        assert_eq!(err.0, StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn an_action_needs_the_csrf_token_and_the_same_origin() {
        let auth = Auth::new(None);
        let csrf = auth.read(&headers(&[("host", "127.0.0.1:1")])).unwrap();
        assert_eq!(
            auth.act(&headers(&[("host", "127.0.0.1:1")]))
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
        let good = [("host", "127.0.0.1:1"), ("x-csrf-token", csrf.as_str())];
        assert!(auth.act(&headers(&good)).is_ok());
        let foreign = [
            ("host", "127.0.0.1:1"),
            ("x-csrf-token", csrf.as_str()),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(
            auth.act(&headers(&foreign)).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn wrong_passwords_lock_the_address_out() {
        let auth = Auth::new(Some(Secret::new("hunter2")));
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        let h = headers(&[("host", "gw:8088")]);
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                auth.login(ip, &h, "nope").unwrap_err().0,
                StatusCode::UNAUTHORIZED
            );
        }
        let locked = auth.login(ip, &h, "hunter2").unwrap_err();
        assert_eq!(locked.0, StatusCode::TOO_MANY_REQUESTS);
        let other: IpAddr = "10.0.0.10".parse().unwrap();
        let id = auth.login(other, &h, "hunter2").unwrap();
        let cookie = format!("{COOKIE}={id}");
        assert!(
            auth.read(&headers(&[("host", "gw:8088"), ("cookie", &cookie)]))
                .is_ok()
        );
        assert_eq!(auth.read(&h).unwrap_err().0, StatusCode::UNAUTHORIZED);
    }
}
