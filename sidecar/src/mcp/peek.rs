//! A single-pass, borrowed look at a JSON-RPC message: what it is, and for a
//! `tools/call`, the tool's name and raw arguments.
//!
//! Nothing is copied unless the name has escapes (`"\u0064elete_x"` is read as
//! `delete_x`, exactly as the upstream will read it). A body the peek cannot
//! read is never forwarded: the peers on either side might read it another
//! way. In particular a message whose `method` — or a `tools/call` whose
//! `params.name` — appears twice is refused, because JSON parsers disagree on
//! which duplicate wins.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// The JSON-RPC method policy decides.
pub const TOOLS_CALL: &str = "tools/call";

/// A peeked body: one message or a batch.
#[derive(Debug)]
pub enum Peeked<'a> {
    /// One JSON-RPC message.
    Single(Message<'a>),
    /// A JSON-RPC batch (2025-03-26 allows them), in order.
    Batch(Vec<Message<'a>>),
}

impl<'a> Peeked<'a> {
    /// The messages, one or many.
    pub fn messages(&self) -> &[Message<'a>] {
        match self {
            Peeked::Single(m) => std::slice::from_ref(m),
            Peeked::Batch(ms) => ms,
        }
    }
}

/// What kind of JSON-RPC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A method and an id: expects a response.
    Request,
    /// A method and no id.
    Notification,
    /// A `result` or `error` with an id.
    Response,
}

/// One message, borrowed from the body.
#[derive(Debug)]
pub struct Message<'a> {
    /// The raw `id`, if any (`null` counts as none).
    pub id: Option<&'a RawValue>,
    /// The method, escapes decoded.
    pub method: Option<Cow<'a, str>>,
    /// Request, notification or response.
    pub kind: Kind,
    /// The tool call, when the method is `tools/call`.
    pub call: Option<ToolCall<'a>>,
    /// The message's own bytes (the whole body for a single message).
    pub raw: &'a [u8],
}

impl Message<'_> {
    /// The method, or `""` for a response.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// A `tools/call`'s name and arguments.
#[derive(Debug)]
pub struct ToolCall<'a> {
    /// The tool's name, escapes decoded.
    pub name: Cow<'a, str>,
    /// The raw `arguments` object, if any.
    pub arguments: Option<&'a RawValue>,
}

/// Why a body could not be read; each maps to one JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// Not JSON (or nested deeper than the parser allows).
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    /// JSON, but not a JSON-RPC message.
    #[error("not a JSON-RPC message: {0}")]
    Invalid(String),
    /// A key whose duplicates peers would resolve differently.
    #[error(
        "`{0}` appears twice in one message; peers disagree on which one counts, so Tollgate \
         refuses it — send each key once"
    )]
    DuplicateKey(&'static str),
}

impl PeekError {
    /// The JSON-RPC error code: -32700 for bad JSON, -32600 otherwise.
    pub fn code(&self) -> i32 {
        match self {
            PeekError::Syntax(_) => -32700,
            PeekError::Invalid(_) | PeekError::DuplicateKey(_) => -32600,
        }
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    // Not `Option<Cow<str>>`, which serde always copies: borrowed unless escaped.
    #[serde(borrow, default)]
    method: Option<MaybeStr<'a>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
    #[serde(default)]
    result: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
}

/// `params`, read in the same pass as the message: the tool's name (if a
/// string) and raw arguments; anything else is skipped.
#[derive(Default)]
struct Params<'a> {
    object: bool,
    name: Option<Result<Cow<'a, str>, ()>>,
    arguments: Option<&'a RawValue>,
    duplicate: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum ParamsField {
    Name,
    Arguments,
    #[serde(other)]
    Other,
}

/// A string, borrowed when it has no escapes, or `Err` for any other JSON value.
struct MaybeStr<'a>(Result<Cow<'a, str>, ()>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = MaybeStr<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Ok(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeStr(Ok(Cow::Owned(v.to_owned()))))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(MaybeStr(Err(())))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Err(())))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Err(())))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(MaybeStr(Err(())))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(MaybeStr(Err(())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(Err(())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(Err(())))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Params<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut p = Params {
                    object: true,
                    ..Params::default()
                };
                while let Some(k) = a.next_key::<ParamsField>()? {
                    match k {
                        ParamsField::Name => {
                            let v = a.next_value::<MaybeStr<'de>>()?;
                            if p.name.replace(v.0).is_some() {
                                p.duplicate = Some("name");
                            }
                        }
                        ParamsField::Arguments => {
                            let v = a.next_value::<&'de RawValue>()?;
                            if p.arguments.replace(v).is_some() && p.duplicate.is_none() {
                                p.duplicate = Some("arguments");
                            }
                        }
                        ParamsField::Other => {
                            a.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Params::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Params::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// How deeply a body may nest arrays and objects. Peers parse recursively
/// (and Tollgate's own conditions parse arguments with a limit of 128), so a
/// deeper body is refused before anyone parses it.
pub const MAX_DEPTH: usize = 64;

/// Reads a body: one message or a batch.
pub fn peek(body: &[u8]) -> Result<Peeked<'_>, PeekError> {
    // JSON is UTF-8 (RFC 8259 §8.1); peers repair invalid bytes differently,
    // and a parse of bytes only checks the strings it reads. Checked once here,
    // the parse below reads text and checks nothing twice.
    let text = match std::str::from_utf8(body) {
        Ok(t) => t,
        Err(e) => return Err(PeekError::Syntax(format!("the body is not UTF-8 ({e})"))),
    };
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(PeekError::Invalid(format!(
            "the body nests arrays or objects more than {MAX_DEPTH} levels deep"
        )));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(syntax)?;
            if items.is_empty() {
                return Err(PeekError::Invalid("an empty batch".into()));
            }
            items
                .into_iter()
                .map(|raw| message(raw.get()))
                .collect::<Result<_, _>>()
                .map(Peeked::Batch)
        }
        Some(b'{') => message(text).map(Peeked::Single),
        Some(_) => {
            // Still tell bad JSON apart from JSON that is not a message.
            serde_json::from_str::<IgnoredAny>(text).map_err(syntax)?;
            Err(PeekError::Invalid(
                "expected a JSON object or a batch (array)".into(),
            ))
        }
        None => Err(PeekError::Syntax("the body is empty".into())),
    }
}

fn message(text: &str) -> Result<Message<'_>, PeekError> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| classify(e, "method"))?;
    let method = match wire.method {
        Some(MaybeStr(Ok(m))) => Some(m),
        Some(MaybeStr(Err(()))) => {
            return Err(PeekError::Invalid("`method` must be a string".into()));
        }
        None => None,
    };
    let id = wire.id.filter(|raw| raw.get() != "null");
    let kind = match (&method, wire.result.is_some() || wire.error.is_some()) {
        (Some(_), false) if id.is_some() => Kind::Request,
        (Some(_), false) => Kind::Notification,
        (None, true) if wire.id.is_some() => Kind::Response,
        (Some(_), true) => {
            return Err(PeekError::Invalid(
                "a message with both a method and a result or error".into(),
            ));
        }
        _ => {
            return Err(PeekError::Invalid(
                "a message needs a `method`, or a `result` or `error` with an `id`".into(),
            ));
        }
    };
    let call = match &method {
        // A method that is `tools/call` but for case is judged as one too.
        Some(m) if m.eq_ignore_ascii_case(TOOLS_CALL) => {
            let need =
                || PeekError::Invalid("`tools/call` needs `params` with the tool's `name`".into());
            let p = wire.params.filter(|p| p.object).ok_or_else(need)?;
            match p.duplicate {
                Some("name") => return Err(PeekError::DuplicateKey("params.name")),
                Some(_) => return Err(PeekError::Invalid("duplicate field `arguments`".into())),
                None => {}
            }
            let name = match p.name {
                Some(Ok(n)) => n,
                Some(Err(())) => {
                    return Err(PeekError::Invalid("`params.name` must be a string".into()));
                }
                None => return Err(need()),
            };
            Some(ToolCall {
                name,
                arguments: p.arguments.filter(|raw| raw.get() != "null"),
            })
        }
        _ => None,
    };
    Ok(Message {
        id,
        method,
        kind,
        call,
        raw: text.as_bytes(),
    })
}

/// Whether brackets outside strings nest deeper than `max`. Not a validator:
/// the parse that follows rejects malformed text.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    // Fewer opening brackets in all than `max` (strings included) cannot nest
    // deeper: a vectorised count spares the byte-by-byte scan for most bodies.
    if memchr::memchr2_iter(b'[', b'{', body).count() <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

fn syntax(e: serde_json::Error) -> PeekError {
    PeekError::Syntax(e.to_string())
}

/// Separates duplicate keys and JSON-RPC shape errors from bad JSON.
fn classify(e: serde_json::Error, duplicate: &'static str) -> PeekError {
    let text = e.to_string();
    if text.starts_with("duplicate field `method`") {
        return PeekError::DuplicateKey("method");
    }
    if text.starts_with("duplicate field `name`") {
        return PeekError::DuplicateKey(duplicate);
    }
    if text.starts_with("duplicate field") {
        return PeekError::Invalid(text);
    }
    match e.classify() {
        serde_json::error::Category::Data => PeekError::Invalid(text),
        _ => PeekError::Syntax(text),
    }
}

#[cfg(test)]
#[path = "peek_tests.rs"]
mod tests;
