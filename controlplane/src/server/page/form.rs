//! What the approval page reads from a request: form bodies (bounded) and
//! whether a POST comes from this site.

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::reply::plain;

/// The largest form body read, in bytes.
const MAX_FORM: usize = 16 * 1024;

/// A POST from another site is refused before anything is read: by
/// `Sec-Fetch-Site` where the browser sends it, else by an `Origin` that is
/// not this host (an opaque `null` origin counts as another site).
pub fn cross_site<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let h = req.headers();
    let foreign = match h.get("sec-fetch-site").map(|v| v.to_str().unwrap_or("")) {
        Some(site) => site != "same-origin" && site != "none",
        None => h.get(header::ORIGIN).is_some_and(|o| {
            let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
            let origin = o.to_str().unwrap_or("");
            let authority = origin.split_once("://").map(|(_, a)| a);
            authority.is_none() || authority != host
        }),
    };
    foreign.then(|| {
        plain(
            StatusCode::FORBIDDEN,
            "refused: a form posted from another site; open the approval page itself and decide there\n",
        )
    })
}

/// The decoded fields of a form body (at most [`MAX_FORM`] bytes).
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub async fn read_form(req: Request<Incoming>) -> Result<Form, Response<Full<Bytes>>> {
    let form_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the page's form (application/x-www-form-urlencoded)\n",
        ));
    }
    let bytes = match Limited::new(req.into_body(), MAX_FORM).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is larger than 16 KiB or did not arrive whole; shorten the reason\n",
            ));
        }
    };
    Ok(Form(
        form_urlencoded::parse(&bytes)
            .map(|(n, v)| (n.into_owned(), v.into_owned()))
            .collect(),
    ))
}
