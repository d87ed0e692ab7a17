//! What the load benchmark's programs share: flag parsing and the request they send.
//!
//! The programs (in `src/bin/`) are `upstream` (a fast MCP server),
//! `passthrough` (a bare proxy: the ceiling a hyper proxy reaches),
//! `loadgen` (the closed-loop load generator) and `genpolicy` (the
//! 1,000-rule policy). `bench/run.sh` wires them together.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// `--name value` flags; every flag takes exactly one value.
#[derive(Debug)]
pub struct Flags {
    values: HashMap<String, Vec<String>>,
}

impl Flags {
    /// Reads the process's arguments; `usage` is printed on `--help` or a malformed flag.
    pub fn from_env(usage: &str) -> Self {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let Some(name) = a.strip_prefix("--").filter(|n| *n != "help") else {
                exit_usage(usage, &format!("unexpected argument {a:?}"));
            };
            let Some(v) = args.next() else {
                exit_usage(usage, &format!("--{name} needs a value"));
            };
            values.entry(name.to_owned()).or_default().push(v);
        }
        Self { values }
    }

    /// The flag's last value parsed as `T`, or `default`; exits on a bad value.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T
    where
        T::Err: Display,
    {
        match self.values.get(name).and_then(|v| v.last()) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|e| {
                eprintln!("--{name} {v}: {e}");
                std::process::exit(2)
            }),
        }
    }

    /// Every value given for a repeatable flag.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }
}

fn exit_usage(usage: &str, problem: &str) -> ! {
    eprintln!("{problem}\n\n{usage}");
    std::process::exit(2)
}

/// The `tools/call` the generator sends: about 1 KB of arguments for a
/// read-only search, with `id` set per request.
///
/// The body is `{"jsonrpc":"2.0","id":<id>,"method":"tools/call","params":{"name":<tool>,"arguments":{…}}}`;
/// `prefix` ends just before the id, `suffix` starts just after it.
#[derive(Debug, Clone)]
pub struct CallTemplate {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
}

impl CallTemplate {
    /// The template for a call of `tool`.
    pub fn new(tool: &str) -> Self {
        let params = serde_json::json!({"name": tool, "arguments": arguments()});
        Self {
            prefix: br#"{"jsonrpc":"2.0","id":"#.to_vec(),
            suffix: format!(r#","method":"tools/call","params":{params}}}"#).into_bytes(),
        }
    }

    /// The body with this id.
    pub fn body(&self, id: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + self.suffix.len() + 20);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(id.to_string().as_bytes());
        out.extend_from_slice(&self.suffix);
        out
    }
}

/// About 1 KB of arguments (between 900 and 1,200 bytes as JSON).
pub fn arguments() -> serde_json::Value {
    serde_json::json!({
        "query": "assignee in (currentUser()) AND status != Done AND project in (PLAT, INFRA, SEC) \
                  AND updated >= -14d ORDER BY priority DESC, updated DESC",
        "fields": ["key", "summary", "status", "assignee", "priority", "labels", "updated", "created"],
        "max_results": 50,
        "start_at": 0,
        "expand": ["renderedFields", "names"],
        "filters": {
            "include_archived": false,
            "teams": ["platform", "infrastructure", "security"],
            "labels_any": ["oncall", "incident", "regression", "customer-facing"],
            "updated_after": "2025-06-01T00:00:00Z"
        },
        "context": {
            "agent": "triage-assistant",
            "run_id": "7f1c9e2a-4b3d-4e8f-9a6b-2c5d7e8f9a0b",
            "trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "notes": "Summarise open work for the weekly triage; group by team and priority; \
                      flag anything blocked for more than three days or missing an assignee."
        },
        "include": {"comments": true, "worklogs": false, "attachments": false, "changelog": true},
        "client": {"name": "tollgate-loadtest", "version": "0.1.0", "locale": "en-GB"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_is_about_one_kilobyte_of_valid_json() {
        let args = arguments().to_string();
        assert!((900..1200).contains(&args.len()), "{} bytes", args.len());
        let body = CallTemplate::new("jira_search_users").body(42);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], 42);
        assert_eq!(v["method"], "tools/call");
        assert_eq!(v["params"]["name"], "jira_search_users");
    }
}
