//! Who is signed in to the approval page: server-side logins keyed by a
//! random cookie, each with its own CSRF token.
//!
//! A login remembers the operator token's id, never the token: every request
//! looks the token up again ([`crate::auth::Authority::live`]), so revoking
//! the token signs its logins out at once. Logins are bounded (at most
//! [`MAX_LOGINS`], each for [`LOGIN_LIFETIME`]); the oldest goes first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The cookie that names a login.
pub const COOKIE: &str = "tollgate_session";
/// How long a login lasts.
pub const LOGIN_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Logins kept at once.
pub const MAX_LOGINS: usize = 1_000;

/// One signed-in approver.
#[derive(Debug, Clone)]
pub struct Login {
    /// The operator token's id.
    pub token_id: String,
    /// What every form of this login carries.
    pub csrf: String,
    made: Instant,
}

impl Login {
    /// Whether `presented` is this login's CSRF token (compared as digests,
    /// so the time taken says nothing about the token).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        Sha256::digest(presented.as_bytes()) == Sha256::digest(self.csrf.as_bytes())
    }
}

/// Every live login, by cookie value.
#[derive(Debug, Default)]
pub struct Logins {
    by_cookie: Mutex<HashMap<String, Login>>,
}

impl Logins {
    /// Signs `token_id` in; returns the cookie value. `None` only when the
    /// system's randomness fails.
    pub fn open(&self, token_id: &str) -> Option<String> {
        let cookie = random_hex()?;
        let login = Login {
            token_id: token_id.to_owned(),
            csrf: random_hex()?,
            made: Instant::now(),
        };
        let mut map = self.by_cookie.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| l.made.elapsed() < LOGIN_LIFETIME);
        while map.len() >= MAX_LOGINS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.made)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(cookie.clone(), login);
        Some(cookie)
    }

    /// The login a request's `Cookie` header names, if it is live.
    pub fn find(&self, cookie_header: Option<&str>) -> Option<Login> {
        let value = cookie_value(cookie_header?)?;
        let mut map = self.by_cookie.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(value) {
            Some(l) if l.made.elapsed() < LOGIN_LIFETIME => Some(l.clone()),
            Some(_) => {
                map.remove(value);
                None
            }
            None => None,
        }
    }

    /// Signs the login named by `cookie_header` out.
    pub fn close(&self, cookie_header: Option<&str>) {
        if let Some(value) = cookie_header.and_then(cookie_value) {
            let mut map = self.by_cookie.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(value);
        }
    }

    /// Logins open now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_cookie
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Our cookie's value in a `Cookie` header.
fn cookie_value(header: &str) -> Option<&str> {
    cookie::Cookie::split_parse(header)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value_raw().unwrap_or(""))
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_found_by_its_cookie_only() {
        let logins = Logins::default();
        let cookie = logins.open("tok1").expect("randomness");
        let header = format!("other=1; {COOKIE}={cookie}");
        let found = logins.find(Some(&header)).expect("the login");
        assert_eq!(found.token_id, "tok1");
        assert!(found.csrf_matches(&found.csrf.clone()));
        assert!(!found.csrf_matches("nope"));
        let forged = format!("{COOKIE}={}", "0".repeat(64));
        assert!(logins.find(Some(&forged)).is_none());
        assert!(logins.find(Some("garbage;;==")).is_none());
        logins.close(Some(&header));
        assert!(logins.find(Some(&header)).is_none());
    }

    #[test]
    fn logins_are_bounded() {
        let logins = Logins::default();
        let first = logins.open("t").expect("randomness");
        for _ in 0..MAX_LOGINS {
            logins.open("t").expect("randomness");
        }
        assert_eq!(logins.len(), MAX_LOGINS);
        assert!(logins.find(Some(&format!("{COOKIE}={first}"))).is_none());
    }
}
