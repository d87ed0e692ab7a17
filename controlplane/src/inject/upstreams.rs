//! The MCP servers an injected sidecar fronts, from the pod's
//! `tollgate.dev/upstreams` annotation (or the injector's defaults):
//! `NAME=URL` entries separated by commas or whitespace, or one bare URL.

/// Where the sidecar serves MCP to the app, on the pod's loopback.
pub const MCP_PORT: u16 = 15080;
/// The environment variables injection owns in app containers: this one and
/// those starting with it plus `_`.
pub const MCP_URL_ENV: &str = "TOLLGATE_MCP_URL";

/// The annotation that chooses upstreams.
pub const ANNOTATION: &str = "tollgate.dev/upstreams";
/// Most upstreams one pod's sidecar fronts.
const MAX_UPSTREAMS: usize = 32;
/// Longest annotation value read.
const MAX_LEN: usize = 8 << 10;

/// One MCP server the sidecar fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `None` for a single bare URL (served at `/mcp` as server `default`).
    pub name: Option<String>,
    /// The URL, or `sse:URL` for a legacy HTTP+SSE server.
    pub target: String,
}

impl Upstream {
    /// The sidecar's `--upstream` value.
    pub fn arg(&self) -> String {
        match &self.name {
            Some(name) => format!("{name}={}", self.target),
            None => self.target.clone(),
        }
    }

    /// Where the app reaches this server through the sidecar.
    pub fn local_url(&self) -> String {
        match &self.name {
            Some(name) => format!("http://127.0.0.1:{MCP_PORT}/mcp/{name}"),
            None => format!("http://127.0.0.1:{MCP_PORT}/mcp"),
        }
    }

    /// `TOLLGATE_MCP_URL_<NAME>`, upper-cased, `-` as `_`.
    pub fn env_name(&self) -> String {
        let name = self.name.as_deref().unwrap_or("default");
        format!(
            "{MCP_URL_ENV}_{}",
            name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// Parses a list of upstream entries; the error says what to write instead.
pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Vec<Upstream>, String> {
    let mut out: Vec<Upstream> = Vec::new();
    for entry in entries {
        if out.len() == MAX_UPSTREAMS {
            return Err(format!("more than {MAX_UPSTREAMS} upstreams"));
        }
        let upstream = parse_one(entry)?;
        if let Some(name) = &upstream.name
            && out.iter().any(|u| u.name.as_ref() == Some(name))
        {
            return Err(format!("upstream {name:?} is named twice"));
        }
        out.push(upstream);
    }
    if out.len() > 1 && out.iter().any(|u| u.name.is_none()) {
        return Err(
            "a bare URL is only allowed as the only upstream: name each one (`NAME=URL`)".into(),
        );
    }
    Ok(out)
}

/// Parses the annotation's value.
pub fn parse_annotation(value: &str) -> Result<Vec<Upstream>, String> {
    if value.len() > MAX_LEN {
        return Err(format!(
            "{ANNOTATION} is {} bytes, more than {MAX_LEN}",
            value.len()
        ));
    }
    let entries = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|e| !e.is_empty());
    parse(entries).map_err(|e| format!("{ANNOTATION}: {e}"))
}

fn parse_one(entry: &str) -> Result<Upstream, String> {
    let (name, target) = match entry.split_once('=') {
        Some((name, target)) if !name.contains(':') => (Some(name), target),
        _ => (None, entry),
    };
    if let Some(name) = name {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return Err(format!(
                "upstream name {name:?} must be 1-63 lower-case letters, digits or '-', starting with a letter or digit"
            ));
        }
    }
    let url = target.strip_prefix("sse:").unwrap_or(target);
    if target.starts_with("stdio:") {
        return Err(format!(
            "{entry:?}: a stdio server cannot be injected (it would run inside the sidecar's image); serve it over HTTP"
        ));
    }
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !url.chars().any(char::is_control) => Ok(Upstream {
            name: name.map(str::to_owned),
            target: target.to_owned(),
        }),
        _ => Err(format!(
            "{entry:?} is not `NAME=URL` with an http:// or https:// URL (or `NAME=sse:URL` for a legacy SSE server)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_named_urls_or_one_bare_url() {
        let ups = parse_annotation("files=http://files.tools:8080/mcp,\n gh=sse:https://gh/sse")
            .expect("valid");
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].arg(), "files=http://files.tools:8080/mcp");
        assert_eq!(ups[1].env_name(), "TOLLGATE_MCP_URL_GH");
        assert_eq!(ups[1].local_url(), "http://127.0.0.1:15080/mcp/gh");
        let bare = parse_annotation("http://one:1/mcp").expect("valid");
        assert_eq!(bare[0].name, None);
        assert_eq!(bare[0].local_url(), "http://127.0.0.1:15080/mcp");
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        for bad in [
            "files=ftp://x",
            "Files=http://x",
            "files=stdio:npx server",
            "a=http://x,a=http://y",
            "http://x,b=http://y",
            "files=http://",
            "files",
        ] {
            let err = parse_annotation(bad).expect_err(bad);
            assert!(err.starts_with(ANNOTATION), "{bad}: {err}");
        }
        assert!(parse_annotation(&"a".repeat(MAX_LEN + 1)).is_err());
    }
}
