//! # tollgate-policy
//!
//! Tollgate's policy language: the document model, validation with JSON
//! pointer errors, compilation to a fast evaluator, risk classes, and rate
//! limit windows. Pure: no I/O, no async. The sidecar enforces with it and the
//! control plane validates with it.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_policy::{Call, LocalCounters, Outcome, load};
//!
//! let bundle = load(r#"{"version": "1", "default": "deny",
//!     "tools": {"echo": {"rate_limit": {"max": 1, "window": "minute"}}}}"#).unwrap();
//! let counters = LocalCounters::new();
//! let call = Call::new("demo", "echo");
//! assert_eq!(bundle.decide(&call, Duration::ZERO, &counters).outcome, Outcome::Allow);
//! let again = bundle.decide(&call, Duration::ZERO, &counters);
//! assert_eq!(again.outcome, Outcome::RateLimited);
//! assert_eq!(&*again.rule, "/tools/echo/rate_limit");
//! assert_eq!(again.retry_after, Some(Duration::from_secs(60)));
//! ```
//!
//! The risk-class table is in [`classes`]; the window algorithm in [`limits`];
//! the evaluation order in [`evaluate`]; how grants name tokens, and the
//! keyed form a control plane distributes, in [`grant_key`].

pub mod approvals;
pub mod classes;
mod compile;
pub mod conditions;
pub mod document;
mod error;
pub mod evaluate;
mod glob;
pub mod grant_key;
pub mod limits;
mod schema;
mod validate;

pub use classes::{Annotations, RiskClass, classify};
pub use compile::{ApprovalSpec, Bundle, CompiledPolicy, FleetBucket, FleetLimit, Stats};
pub use conditions::Arguments;
pub use document::PolicyFile;
pub use error::{PolicyError, PolicyErrors};
pub use evaluate::{Call, Decision, LimitInfo, Listing, Outcome};
pub use grant_key::{GrantKey, key_grant_tokens, needs_grant_key};
pub use limits::{Admission, Charge, Counters, DEFAULT_SESSION_BUCKETS, LocalCounters};
pub use schema::json_schema;

/// The policy language version this crate reads.
pub const LANGUAGE_VERSION: &str = "1";

/// Reads, checks and compiles a policy file (a document or a bundle) from
/// JSON text. On failure, every error found, each with its JSON pointer.
pub fn load(text: &str) -> Result<Bundle, PolicyErrors> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => load_value(&value),
        Err(e) => Err(PolicyErrors(vec![PolicyError {
            pointer: String::new(),
            message: format!(
                "not valid JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        }])),
    }
}

/// [`load`] for an already parsed value.
pub fn load_value(value: &serde_json::Value) -> Result<Bundle, PolicyErrors> {
    load_distributed(value, None)
}

/// [`load_value`] for a bundle as a control plane distributes it: its
/// grants may name tokens by `token_hmac_sha256`, keyed with `grant_key`
/// (which came beside the bundle). Grants named by `token_sha256` load as
/// they always do, with or without a key.
pub fn load_distributed(
    value: &serde_json::Value,
    grant_key: Option<&GrantKey>,
) -> Result<Bundle, PolicyErrors> {
    read_with(value, grant_key).and_then(|file| compile_distributed(&file, grant_key))
}

/// Reads and checks the structure of a file without compiling it.
pub fn read(value: &serde_json::Value) -> Result<PolicyFile, PolicyErrors> {
    read_with(value, None)
}

fn read_with(
    value: &serde_json::Value,
    grant_key: Option<&GrantKey>,
) -> Result<PolicyFile, PolicyErrors> {
    let mut errs = error::Errors::default();
    let file = validate::read_file(value, &mut errs);
    match file {
        Some(file) if errs.is_empty() => Ok(file),
        Some(file) => {
            // Still compile what was valid, so cross-document errors show too.
            let _ = Bundle::compile(&file, grant_key, &mut errs);
            errs.into_result(file)
        }
        None => errs.into_result(PolicyFile::Bundle(Default::default())),
    }
}

/// Compiles a read file, with the checks that span the whole document.
pub fn compile(file: &PolicyFile) -> Result<Bundle, PolicyErrors> {
    compile_distributed(file, None)
}

/// [`compile`] with the grant key of a distributed bundle (see
/// [`load_distributed`]).
pub fn compile_distributed(
    file: &PolicyFile,
    grant_key: Option<&GrantKey>,
) -> Result<Bundle, PolicyErrors> {
    let mut errs = error::Errors::default();
    let bundle = Bundle::compile(file, grant_key, &mut errs);
    errs.into_result(bundle)
}
