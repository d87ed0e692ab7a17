//! `tollgate inject`'s input and output: a YAML stream (one or more
//! documents) or a JSON object, injected document by document and written
//! back in the form it came in.

use serde_json::Value;

use super::{InjectError, Options, Report, patch_object};

/// Largest input read (a manifest bundle, not a data set).
pub const MAX_INPUT: usize = 32 << 20;

/// The injected text, and a report per workload (with its document's index).
#[derive(Debug)]
pub struct Injected {
    pub text: String,
    pub reports: Vec<(usize, Report)>,
}

/// Why the input could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("the input is {0} bytes; more than {MAX_INPUT} is not read")]
    TooLarge(usize),
    #[error("not valid JSON: {0}")]
    Json(serde_json::Error),
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("document {doc}: {error}")]
    Inject { doc: usize, error: InjectError },
    #[error("document {doc}: the injected object could not be written: {message}")]
    Write { doc: usize, message: String },
}

/// Injects every document of `input` (JSON when it starts with `{` or `[`).
pub fn inject(input: &str, opts: &Options) -> Result<Injected, TextError> {
    if input.len() > MAX_INPUT {
        return Err(TextError::TooLarge(input.len()));
    }
    let json = input.trim_start().starts_with(['{', '[']);
    let docs: Vec<Value> = if json {
        vec![serde_json::from_str(input).map_err(TextError::Json)?]
    } else {
        serde_saphyr::from_multiple::<Value>(input)
            .map_err(|e| TextError::Yaml(e.to_string()))?
            .into_iter()
            .filter(|d| !d.is_null())
            .collect()
    };
    let mut reports = Vec::new();
    let mut out = Vec::with_capacity(docs.len());
    for (doc, mut value) in docs.into_iter().enumerate() {
        let injection =
            patch_object(&value, opts).map_err(|error| TextError::Inject { doc, error })?;
        json_patch::patch(&mut value, &injection.patch).map_err(|e| TextError::Write {
            doc,
            message: e.to_string(),
        })?;
        reports.extend(injection.reports.into_iter().map(|r| (doc, r)));
        out.push(value);
    }
    let text = if json {
        let mut s = out
            .first()
            .map(serde_json::to_string_pretty)
            .transpose()
            .map_err(|e| TextError::Write {
                doc: 0,
                message: e.to_string(),
            })?
            .unwrap_or_default();
        s.push('\n');
        s
    } else {
        let mut s = String::new();
        for (doc, value) in out.iter().enumerate() {
            if doc > 0 {
                s.push_str("---\n");
            }
            let yaml = serde_saphyr::to_string(value).map_err(|e| TextError::Write {
                doc,
                message: e.to_string(),
            })?;
            s.push_str(&yaml);
            if !s.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    };
    Ok(Injected { text, reports })
}
