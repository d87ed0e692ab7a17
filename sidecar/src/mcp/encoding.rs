//! The one body encoding the sidecar forwards: UTF-8 JSON, not compressed.
//!
//! Policy judges a body as UTF-8 JSON. An upstream that decodes by the
//! `Content-Type` charset (UTF-7, UTF-16, Latin-1 …) or by `Content-Encoding`
//! would read other characters out of the same bytes — `+AGQ-elete` is
//! `delete` in UTF-7 — and run a call policy never saw. So a POSTed message
//! is read only when both headers say what the sidecar reads: the charset
//! absent or `utf-8`, the content coding absent or `identity`. Anything
//! else is refused before the body is read, and nothing is forwarded.

use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};

/// Why a POSTed body's encoding is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// A charset other than UTF-8.
    #[error(
        "the Content-Type charset {0:?} is not accepted: MCP messages are UTF-8 JSON and this sidecar forwards only what it read the way the server will; send `Content-Type: application/json` (UTF-8)"
    )]
    Charset(String),
    /// A content coding other than identity.
    #[error(
        "the Content-Encoding {0:?} is not accepted: this sidecar judges and forwards MCP messages uncompressed; send the body without a Content-Encoding"
    )]
    Coding(String),
    /// More than one `Content-Type`, or one that is not visible ASCII.
    #[error(
        "the request has several Content-Type headers or one that is not plain ASCII; send one `Content-Type: application/json`"
    )]
    AmbiguousType,
}

/// Checks that a POSTed body is declared as what the sidecar reads: UTF-8 and
/// uncompressed. Cheap for the usual `application/json` (one look-up each).
pub fn check(headers: &HeaderMap) -> Result<(), EncodingError> {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    if let Some(value) = types.next() {
        if types.next().is_some() {
            return Err(EncodingError::AmbiguousType);
        }
        let Ok(value) = value.to_str() else {
            return Err(EncodingError::AmbiguousType);
        };
        // Every `charset` parameter must be UTF-8: parsers differ on which of
        // several wins, and on quoting, so none may say otherwise. A split
        // inside a quoted value can only find more parameters to refuse.
        for param in value.split(';').skip(1) {
            let (name, charset) = param.split_once('=').unwrap_or((param, ""));
            if !name.trim().eq_ignore_ascii_case("charset") {
                continue;
            }
            let charset = charset.trim();
            let unquoted = charset
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .unwrap_or(charset);
            if !(unquoted.eq_ignore_ascii_case("utf-8") || unquoted.eq_ignore_ascii_case("utf8")) {
                return Err(EncodingError::Charset(charset.to_owned()));
            }
        }
    }
    for value in headers.get_all(CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        if !text
            .split(',')
            .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(EncodingError::Coding(text.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn utf8_and_identity_pass() {
        for ok in [
            &[][..],
            &[("content-type", "application/json")][..],
            &[("content-type", "application/json; charset=utf-8")][..],
            &[("content-type", "application/json;charset=UTF-8")][..],
            &[("content-type", "application/json; charset=\"utf-8\"")][..],
            &[("content-type", "application/json; charset=utf8; v=1")][..],
            &[("content-encoding", "identity")][..],
            &[("content-encoding", "Identity, identity")][..],
        ] {
            assert_eq!(check(&headers(ok)), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn other_charsets_and_codings_are_refused() {
        for (pairs, want) in [
            (
                &[("content-type", "application/json; charset=utf-7")][..],
                EncodingError::Charset("utf-7".into()),
            ),
            (
                &[("content-type", "application/json; CHARSET = \"UTF-16LE\"")][..],
                EncodingError::Charset("\"UTF-16LE\"".into()),
            ),
            (
                &[(
                    "content-type",
                    "application/json; charset=utf-8; charset=utf-7",
                )][..],
                EncodingError::Charset("utf-7".into()),
            ),
            (
                &[("content-type", "application/json; charset=")][..],
                EncodingError::Charset(String::new()),
            ),
            (
                &[("content-type", "application/json; charset")][..],
                EncodingError::Charset(String::new()),
            ),
            (
                &[
                    ("content-type", "application/json"),
                    ("content-type", "application/json; charset=latin1"),
                ][..],
                EncodingError::AmbiguousType,
            ),
            (
                &[("content-encoding", "gzip")][..],
                EncodingError::Coding("gzip".into()),
            ),
            (
                &[("content-encoding", "identity, br")][..],
                EncodingError::Coding("identity, br".into()),
            ),
            (
                &[
                    ("content-encoding", "identity"),
                    ("content-encoding", "deflate"),
                ][..],
                EncodingError::Coding("deflate".into()),
            ),
            (
                &[("content-encoding", "")][..],
                EncodingError::Coding(String::new()),
            ),
        ] {
            assert_eq!(check(&headers(pairs)), Err(want), "{pairs:?}");
        }
    }
}
