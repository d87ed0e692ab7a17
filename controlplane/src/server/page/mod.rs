//! The approval page on the HTTP port: an approver signs in with an operator
//! token, sees a request (`GET /approvals/ID`) and approves or denies it.
//!
//! No link is pre-authenticated: a request without a live login is sent to
//! `/login` first, and every decision is checked again against the operator
//! token behind the login (revoked: signed out). Forms carry the login's
//! CSRF token and cross-site posts are refused; the login cookie is
//! `HttpOnly`, `SameSite=Strict` and, with TLS, `Secure`. Pages are plain
//! HTML forms (no script) under a strict Content-Security-Policy.
//!
//! Routes: `GET /approvals`, `GET /approvals/ID`, `POST /approvals/ID/decide`,
//! `GET|POST /login`, `POST /logout`, `GET /page.css`.

mod form;
mod reply;
pub mod session;
mod view;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tollgate_policy::approvals::ApprovalError;

use super::ControlPlane;
use crate::auth::Principal;
use crate::role::Role;
use form::{cross_site, read_form};
use reply::{css, html, not_found, plain, redirect, to_login};
use session::{COOKIE, LOGIN_LIFETIME, Login};
use view::{ApprovalPage, ListPage, LoginPage, MessagePage, Shown, SignedIn};

/// The longest reason accepted, in bytes (as the admin API).
const MAX_REASON: usize = 1_024;
/// Requests shown on the list.
const MAX_LISTED: usize = 200;

/// Whether the page serves `path`.
pub fn serves(path: &str) -> bool {
    path == "/login"
        || path == "/logout"
        || path == "/page.css"
        || path == "/approvals"
        || path.starts_with("/approvals/")
}

/// Answers one request for the page; `secure` when the port speaks TLS.
pub async fn respond(
    req: Request<Incoming>,
    cp: &ControlPlane,
    secure: bool,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::POST
        && let Some(refusal) = cross_site(&req)
    {
        return refusal;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/page.css") => css(),
        (&Method::GET, "/login") => {
            let next = next_of(req.uri().query());
            html(
                StatusCode::OK,
                &LoginPage {
                    signed_in: None,
                    error: None,
                    next,
                },
            )
        }
        (&Method::POST, "/login") => login(req, cp, secure).await,
        (&Method::POST, "/logout") => logout(req, cp).await,
        (&Method::GET, "/approvals") => match signed_in(&req, cp) {
            Some((login, who)) => list(cp, &login, &who),
            None => to_login("/approvals"),
        },
        (_, p) => match (p.strip_prefix("/approvals/"), &method) {
            (Some(rest), &Method::GET) if is_id(rest) => match signed_in(&req, cp) {
                Some((login, who)) => show(cp, rest, &login, &who, None, None),
                None => to_login(&path),
            },
            (Some(rest), &Method::POST) => {
                match rest.strip_suffix("/decide").filter(|id| is_id(id)) {
                    Some(id) => {
                        let id = id.to_owned();
                        decide(req, cp, &id).await
                    }
                    None => not_found(),
                }
            }
            _ => not_found(),
        },
    }
}

/// `ap_` and 26 base32 characters.
fn is_id(s: &str) -> bool {
    s.strip_prefix("ap_").is_some_and(|r| {
        r.len() == 26
            && r.bytes()
                .all(|b| b.is_ascii_alphabetic() || (b'2'..=b'7').contains(&b))
    })
}

/// The live login and who it is, if the request carries one.
fn signed_in<B>(req: &Request<B>, cp: &ControlPlane) -> Option<(Login, Principal)> {
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let login = cp.logins.find(cookie)?;
    match cp.auth.live(&login.token_id) {
        Some(who) => Some((login, who)),
        None => {
            // The token was revoked: its logins end with it.
            cp.logins.close(cookie);
            None
        }
    }
}

fn header_of(login: &Login, who: &Principal) -> SignedIn {
    SignedIn {
        name: who.name.clone(),
        role: who.role.as_str().to_owned(),
        csrf: login.csrf.clone(),
    }
}

fn show(
    cp: &ControlPlane,
    id: &str,
    login: &Login,
    who: &Principal,
    message: Option<String>,
    error: Option<(StatusCode, String)>,
) -> Response<Full<Bytes>> {
    let Some(record) = cp.approvals.get(id) else {
        return html(
            StatusCode::NOT_FOUND,
            &MessagePage {
                signed_in: Some(header_of(login, who)),
                heading: "No such request".to_owned(),
                text: format!(
                    "There is no approval request {id}. It may have been forgotten (ended requests are kept 7 days); see all requests."
                ),
            },
        );
    };
    let (status, error) = match error {
        Some((s, e)) => (s, Some(e)),
        None => (StatusCode::OK, None),
    };
    html(
        status,
        &ApprovalPage {
            signed_in: Some(header_of(login, who)),
            a: Shown::new(&record, view::now_ms()),
            can_decide: who.role >= Role::Approver,
            message,
            error,
        },
    )
}

fn list(cp: &ControlPlane, login: &Login, who: &Principal) -> Response<Full<Bytes>> {
    let now = view::now_ms();
    let mut records = cp.approvals.list(None);
    // Pending first, then newest first (as listed).
    records.sort_by_key(|r| r.state != tollgate_policy::approvals::ApprovalState::Pending);
    let rows = records
        .iter()
        .take(MAX_LISTED)
        .map(|r| Shown::new(r, now))
        .collect();
    html(
        StatusCode::OK,
        &ListPage {
            signed_in: Some(header_of(login, who)),
            rows,
        },
    )
}

async fn login(req: Request<Incoming>, cp: &ControlPlane, secure: bool) -> Response<Full<Bytes>> {
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let next = safe_next(form.get("next"));
    let token = form.get("token").map(|t| t.trim()).unwrap_or("");
    match cp.auth.check_token(token, Role::Viewer, "approvals page") {
        Ok((token_id, who)) => {
            let Some(cookie) = cp.logins.open(&token_id) else {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not make a login: the system's randomness failed; try again\n",
                );
            };
            tracing::info!(approver = %who.name, role = %who.role, "signed in to the approval page");
            let mut resp = redirect(&next);
            let value = format!(
                "{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                LOGIN_LIFETIME.as_secs(),
                if secure { "; Secure" } else { "" }
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => html(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                signed_in: None,
                error: Some(format!("Not signed in: {e}")),
                next,
            },
        ),
    }
}

async fn logout(req: Request<Incoming>, cp: &ControlPlane) -> Response<Full<Bytes>> {
    let cookie = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let login = cp.logins.find(cookie.as_deref());
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if let Some(login) = login
        && login.csrf_matches(form.get("csrf").unwrap_or(""))
    {
        cp.logins.close(cookie.as_deref());
    }
    let mut resp = redirect("/login");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tollgate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

async fn decide(req: Request<Incoming>, cp: &ControlPlane, id: &str) -> Response<Full<Bytes>> {
    let Some((login, who)) = signed_in(&req, cp) else {
        return to_login(&format!("/approvals/{id}"));
    };
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !login.csrf_matches(form.get("csrf").unwrap_or("")) {
        return plain(
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token is missing or not this login's; reload the page and decide again\n",
        );
    }
    // The request's page again, with what is wrong.
    let refuse =
        |status: StatusCode, e: String| show(cp, id, &login, &who, None, Some((status, e)));
    if who.role < Role::Approver {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{} has role {}: deciding needs approver or admin (tollgate token create --role approver)",
                who.name, who.role
            ),
        );
    }
    let approve = match form.get("decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return refuse(StatusCode::BAD_REQUEST, "choose Approve or Deny".to_owned()),
    };
    let reason = form.get("reason").unwrap_or("").trim();
    if reason.len() > MAX_REASON {
        let e = format!(
            "the reason is {} bytes; keep it to {MAX_REASON}",
            reason.len()
        );
        return refuse(StatusCode::BAD_REQUEST, e);
    }
    match cp.approvals.decide(id, approve, reason, &who.name).await {
        Ok(r) => {
            tracing::info!(approval = %id, approver = %who.name, state = r.state.as_str(), "decided on the approval page");
            redirect(&format!("/approvals/{id}"))
        }
        Err(e) => {
            let status = match e {
                ApprovalError::Unknown(_) => StatusCode::NOT_FOUND,
                ApprovalError::NotPending { .. } | ApprovalError::Duplicate(_) => {
                    StatusCode::CONFLICT
                }
                ApprovalError::NoReason(_) => StatusCode::BAD_REQUEST,
            };
            refuse(status, e.to_string())
        }
    }
}

/// Where to go after signing in: only a page of this site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n == "/approvals" || (n.strip_prefix("/approvals/").is_some_and(is_id)) => {
            n.to_owned()
        }
        _ => "/approvals".to_owned(),
    }
}

fn next_of(query: Option<&str>) -> String {
    let next = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(n, _)| n == "next")
            .map(|(_, v)| v.into_owned())
    });
    safe_next(next.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pages_of_this_site_follow_a_sign_in() {
        let id = format!("/approvals/ap_{}", "a".repeat(26));
        assert_eq!(safe_next(Some(&id)), id);
        assert_eq!(safe_next(Some("/approvals")), "/approvals");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/approvals/../metrics",
            "/approvals/ap_x",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/approvals", "{bad}");
        }
        assert_eq!(
            next_of(Some(&format!("next={}", id.replace('/', "%2F")))),
            id
        );
    }

    #[test]
    fn ids_are_checked_before_any_lookup() {
        assert!(is_id(&format!("ap_{}", "abcdefghijklmnopqrstuvwxyz")));
        assert!(is_id("ap_234567abcdefghijklmnopqrst"));
        assert!(is_id("ap_ABCDEFGHIJKLMNOPQRSTUVWXYZ"));
        assert!(!is_id("ap_abcdefghijklmnopqrstuvwxy1"));
        assert!(!is_id("ap_short"));
        assert!(!is_id("xx_abcdefghijklmnopqrstuvwxyz"));
    }
}
