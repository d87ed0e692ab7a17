//! Reading Rust source as far as the module-graph check needs: comments and
//! literals blanked out, then a flat list of tokens with their line numbers,
//! and the few shapes read from tokens: brackets, `use` trees, items.

/// One token of stripped source: an identifier, `::`, or one punctuation
/// character. `$crate` (in macros) reads as `crate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub text: String,
    /// 1-based, as editors count.
    pub line: usize,
}

/// `src` with every comment, string, byte string, raw string and character
/// literal replaced by spaces. Newlines are kept, so line numbers still hold;
/// a path written inside a comment or a string is no reference.
pub fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        let after_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some(end) = (!after_ident).then(|| literal_end(&c, i)).flatten() {
            for &ch in &c[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// If a string or character literal starts at `i`, the index just past it.
/// A lifetime (`'a`) is no literal.
fn literal_end(c: &[char], i: usize) -> Option<usize> {
    let at = |k: usize| c.get(k).copied();
    // Prefixes: b"", c"", r"", r#""#, br"", cr#""#.
    let mut j = i;
    if matches!(at(j), Some('b' | 'c')) {
        j += 1;
    }
    if at(j) == Some('r') {
        let mut k = j + 1;
        while at(k) == Some('#') {
            k += 1;
        }
        if at(k) != Some('"') {
            return None;
        }
        let hashes = k - (j + 1);
        k += 1;
        while k < c.len() {
            if c[k] == '"' && (1..=hashes).all(|h| at(k + h) == Some('#')) {
                return Some(k + 1 + hashes);
            }
            k += 1;
        }
        return Some(c.len());
    }
    match at(j) {
        Some('"') => {
            let mut k = j + 1;
            while k < c.len() && c[k] != '"' {
                k += if c[k] == '\\' { 2 } else { 1 };
            }
            Some((k + 1).min(c.len()))
        }
        Some('\'') if j == i || at(i) == Some('b') => {
            if at(j + 1) == Some('\\') {
                let mut k = j + 3;
                while k < c.len() && c[k] != '\'' {
                    k += 1;
                }
                Some((k + 1).min(c.len()))
            } else if at(j + 2) == Some('\'') {
                Some(j + 3)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The tokens of stripped source. Numbers and other literals' remains are
/// dropped; only identifiers, `::` and punctuation matter here.
pub fn tokens(stripped: &str) -> Vec<Token> {
    let c: Vec<char> = stripped.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            if !ch.is_ascii_digit() {
                let text = c[start..i].iter().collect();
                out.push(Token { text, line });
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else if ch == '$' && c[i + 1..].starts_with(&['c', 'r', 'a', 't', 'e']) {
            // `$crate` is the crate the macro is defined in: this one.
            i += 1;
        } else {
            out.push(Token {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

pub fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The index of the bracket closing the one at `open`.
pub fn matching(t: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (k, tok) in t.iter().enumerate().skip(open) {
        match tok.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    t.len()
}

/// Skips the item (or field, or statement) starting at `i` that a
/// `#[cfg(test)]` marks: up to its `;` or `,`, or past its `{ … }` body.
pub fn skip_item(t: &[Token], mut i: usize) -> usize {
    while i < t.len() {
        match t[i].text.as_str() {
            ";" | "," => return i + 1,
            "}" | ")" | "]" => return i,
            "{" => return matching(t, i) + 1,
            "(" | "[" => i = matching(t, i) + 1,
            _ => i += 1,
        }
    }
    i
}

/// Reads a use tree starting at `i` under `prefix`; pushes each leaf as
/// (path, name it binds, line). Returns the index after the tree (and its
/// `;` at the top level).
pub fn use_tree(
    t: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let is = |i: usize, s: &str| t.get(i).is_some_and(|x| x.text == s);
    if is(i, "::") {
        i += 1;
    }
    let mut segs = prefix.to_vec();
    loop {
        if is(i, "{") {
            i += 1;
            while i < t.len() && !is(i, "}") {
                i = use_tree(t, i, &segs, out);
                if is(i, ",") {
                    i += 1;
                }
            }
            i += 1;
            break;
        }
        if is(i, "*") {
            out.push((segs.clone(), None, t[i].line));
            i += 1;
            break;
        }
        let Some(tok) = t.get(i).filter(|x| is_ident(&x.text)) else {
            break;
        };
        let line = tok.line;
        i += 1;
        if is(i, "::") {
            segs.push(tok.text.clone());
            i += 1;
            continue;
        }
        let mut name = tok.text.clone();
        if tok.text == "self" {
            name = segs.last().cloned().unwrap_or_default();
        } else {
            segs.push(tok.text.clone());
        }
        if is(i, "as") {
            name = t.get(i + 1).map(|x| x.text.clone()).unwrap_or_default();
            i += 2;
        }
        out.push((segs.clone(), Some(name), line));
        break;
    }
    if prefix.is_empty() && is(i, ";") {
        i += 1;
    }
    i
}
