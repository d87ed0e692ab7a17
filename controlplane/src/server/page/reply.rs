//! The approval page's answers: pages, redirects and refusals, each with the
//! headers every page answer carries.

use askama::Template;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::view;

pub fn to_login(next: &str) -> Response<Full<Bytes>> {
    let target: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", next)
        .finish();
    redirect(&format!("/login?{target}"))
}

pub fn redirect(to: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    harden(resp)
}

pub fn not_found() -> Response<Full<Bytes>> {
    plain(
        StatusCode::NOT_FOUND,
        "not found: the approval page is /approvals/ap_… (list: /approvals)\n",
    )
}

pub fn css() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(view::CSS.as_bytes())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    harden(resp)
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    harden(resp)
}

pub fn html(status: StatusCode, page: &impl Template) -> Response<Full<Bytes>> {
    let body = match page.render() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "rendering the approval page failed");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered; see the control plane's log\n",
            );
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(resp)
}

/// Headers every page answer carries: no script, no framing, no caching, no
/// referrer to other sites.
fn harden(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
