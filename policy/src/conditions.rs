//! Conditions on a call's arguments (`deny_if`, `require`), compiled once.
//!
//! Every operator except `exists` is false when the path is missing or null,
//! or when the value has the wrong type for it (`lt` on a string, `regex` on a
//! number). So a `deny_if` group does not fire on an argument the agent left
//! out; write a `require` with `exists` when an argument must be present.

use std::cell::OnceCell;

use hashbrown::HashMap;
use regex::Regex;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::document::Op;

/// A call's arguments, as the caller has them.
#[derive(Debug, Clone, Copy, Default)]
pub enum Arguments<'a> {
    /// No `arguments` in the call.
    #[default]
    None,
    /// Already parsed.
    Value(&'a Value),
    /// Raw JSON text, parsed only if a condition needs it.
    Raw(&'a RawValue),
}

/// Arguments parsed at most once per decision.
pub(crate) struct ArgsView<'a> {
    source: Arguments<'a>,
    parsed: OnceCell<Option<Value>>,
}

impl<'a> ArgsView<'a> {
    pub(crate) fn new(source: Arguments<'a>) -> Self {
        Self {
            source,
            parsed: OnceCell::new(),
        }
    }

    fn root(&self) -> Option<&Value> {
        match self.source {
            Arguments::None => None,
            Arguments::Value(v) => Some(v),
            Arguments::Raw(raw) => self
                .parsed
                .get_or_init(|| serde_json::from_str(raw.get()).ok())
                .as_ref(),
        }
    }

    /// False when raw arguments are not valid JSON (or nest deeper than
    /// serde_json's limit of 128): then no condition can be checked, and the
    /// call must be refused rather than judged on missing values.
    pub(crate) fn readable(&self) -> bool {
        !matches!(self.source, Arguments::Raw(_)) || self.root().is_some()
    }

    fn lookup(&self, path: &[Box<str>]) -> Option<&Value> {
        let mut at = self.root()?;
        for segment in path {
            at = match at {
                Value::Object(map) => map.get(&**segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        (!at.is_null()).then_some(at)
    }
}

/// A condition ready to test.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCondition {
    /// The path after `args.`, split at dots.
    path: Box<[Box<str>]>,
    test: Test,
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Neq(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Lt(f64),
    Lte(f64),
    Gt(f64),
    Gte(f64),
    Regex(Regex),
    Contains(Value),
    Exists(bool),
}

/// Regexes compiled so far, by pattern. A `Regex` is a shared handle, so every
/// condition with the same pattern uses one compiled program (and one match cache).
#[derive(Debug, Default)]
pub(crate) struct RegexCache(HashMap<Box<str>, Regex>);

impl RegexCache {
    fn get(&mut self, pattern: &str) -> Result<Regex, regex::Error> {
        if let Some(re) = self.0.get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(pattern)?;
        self.0.insert(pattern.into(), re.clone());
        Ok(re)
    }
}

impl CompiledCondition {
    /// Compiles a condition, or says what is wrong with its value (the path
    /// has already been checked to start with `args.`).
    pub(crate) fn new(
        path: &str,
        op: Op,
        value: Option<&Value>,
        regexes: &mut RegexCache,
    ) -> Result<Self, String> {
        let rest = path.strip_prefix("args.").unwrap_or(path);
        let path = rest.split('.').map(Box::from).collect();
        let need = |what: &str| format!("`{}` needs a `value` that is {what}", op.as_str());
        let number = || {
            value
                .and_then(Value::as_f64)
                .ok_or_else(|| need("a number"))
        };
        let any = || value.cloned().ok_or_else(|| need("any JSON value"));
        let list = || match value {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(need("an array of values")),
        };
        let test = match op {
            Op::Eq => Test::Eq(any()?),
            Op::Neq => Test::Neq(any()?),
            Op::In => Test::In(list()?),
            Op::NotIn => Test::NotIn(list()?),
            Op::Lt => Test::Lt(number()?),
            Op::Lte => Test::Lte(number()?),
            Op::Gt => Test::Gt(number()?),
            Op::Gte => Test::Gte(number()?),
            Op::Contains => Test::Contains(any()?),
            Op::Regex => {
                let Some(Value::String(pattern)) = value else {
                    return Err(need("a regular expression string"));
                };
                Test::Regex(regexes.get(pattern).map_err(|e| {
                    // regex's syntax errors span lines; the last one says what is wrong.
                    let text = e.to_string();
                    let what = text
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim_start_matches("error: ");
                    format!("invalid regex {pattern:?}: {what}")
                })?)
            }
            Op::Exists => match value {
                None => Test::Exists(true),
                Some(Value::Bool(b)) => Test::Exists(*b),
                Some(_) => return Err(need("true or false (or no value, meaning true)")),
            },
        };
        Ok(Self { path, test })
    }

    /// Whether the condition holds for these arguments.
    pub(crate) fn holds(&self, args: &ArgsView<'_>) -> bool {
        let found = args.lookup(&self.path);
        if let Test::Exists(want) = self.test {
            return found.is_some() == want;
        }
        let Some(v) = found else { return false };
        match &self.test {
            Test::Eq(x) => json_eq(v, x),
            Test::Neq(x) => !json_eq(v, x),
            Test::In(xs) => xs.iter().any(|x| json_eq(v, x)),
            Test::NotIn(xs) => !xs.iter().any(|x| json_eq(v, x)),
            Test::Lt(x) => v.as_f64().is_some_and(|n| n < *x),
            Test::Lte(x) => v.as_f64().is_some_and(|n| n <= *x),
            Test::Gt(x) => v.as_f64().is_some_and(|n| n > *x),
            Test::Gte(x) => v.as_f64().is_some_and(|n| n >= *x),
            Test::Regex(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            Test::Contains(x) => match (v, x) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), x) => items.iter().any(|item| json_eq(item, x)),
                _ => false,
            },
            Test::Exists(_) => false,
        }
    }
}

/// JSON equality where numbers compare by value (`1 == 1.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(path: &str, op: Op, value: Option<Value>, args: Value) -> bool {
        let c =
            CompiledCondition::new(path, op, value.as_ref(), &mut RegexCache::default()).unwrap();
        c.holds(&ArgsView::new(Arguments::Value(&args)))
    }

    #[test]
    fn raw_arguments_are_parsed_lazily_and_agree() {
        let raw = RawValue::from_string(r#"{"a":{"b":[1,2,3]}}"#.into()).unwrap();
        let c = CompiledCondition::new(
            "args.a.b.1",
            Op::Eq,
            Some(&json!(2)),
            &mut RegexCache::default(),
        )
        .unwrap();
        assert!(c.holds(&ArgsView::new(Arguments::Raw(&raw))));
        let text = RawValue::from_string(r#""text""#.into()).unwrap();
        assert!(!c.holds(&ArgsView::new(Arguments::Raw(&text))));
        assert!(ArgsView::new(Arguments::Raw(&text)).readable());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let deep = RawValue::from_string(deep).unwrap();
        assert!(!ArgsView::new(Arguments::Raw(&deep)).readable());
        assert!(!c.holds(&ArgsView::new(Arguments::None)));
    }

    #[test]
    fn missing_values_fail_every_op_but_exists() {
        let args = json!({"present": 1, "nothing": null});
        assert!(!holds("args.absent", Op::Neq, Some(json!(2)), args.clone()));
        assert!(!holds(
            "args.nothing",
            Op::NotIn,
            Some(json!([2])),
            args.clone()
        ));
        assert!(holds(
            "args.nothing",
            Op::Exists,
            Some(json!(false)),
            args.clone()
        ));
        assert!(holds("args.present", Op::Exists, None, args));
    }

    #[test]
    fn operand_errors_name_what_is_expected() {
        let e = CompiledCondition::new(
            "args.x",
            Op::In,
            Some(&json!(3)),
            &mut RegexCache::default(),
        )
        .unwrap_err();
        assert_eq!(e, "`in` needs a `value` that is an array of values");
        let e = CompiledCondition::new(
            "args.x",
            Op::Regex,
            Some(&json!("(")),
            &mut RegexCache::default(),
        )
        .unwrap_err();
        assert_eq!(e, r#"invalid regex "(": unclosed group"#);
        let mut regexes = RegexCache::default();
        for _ in 0..3 {
            CompiledCondition::new("args.q", Op::Regex, Some(&json!("^a+$")), &mut regexes)
                .unwrap();
        }
        CompiledCondition::new("args.q", Op::Regex, Some(&json!("^b+$")), &mut regexes).unwrap();
        assert_eq!(
            regexes.0.len(),
            2,
            "one compiled regex per distinct pattern"
        );
        let e =
            CompiledCondition::new("args.x", Op::Gt, None, &mut RegexCache::default()).unwrap_err();
        assert_eq!(e, "`gt` needs a `value` that is a number");
    }
}
