//! Tool-name globs: `*` matches any run of characters, `?` exactly one.
//!
//! Matching itself is `globset`'s; this module checks the syntax, ranks globs
//! by specificity and finds, for two globs, a name both match (so that a tie
//! between equally specific globs is reported with an example).

/// Characters that are not allowed in a tool key: they are glob syntax in
/// other dialects, so a reader could think they mean something here.
const RESERVED: &[char] = &['[', ']', '{', '}', '\\', '!'];

/// A tool key's parsed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// No wildcard: an exact name.
    Exact,
    /// A glob with its specificity.
    Glob(Specificity),
}

/// How specific a glob is: more literal characters, then more `?`, win.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Specificity {
    pub(crate) literals: usize,
    pub(crate) singles: usize,
}

/// Reads a tool key, or says what is wrong with it.
pub(crate) fn parse(key: &str) -> Result<Pattern, String> {
    if key.is_empty() {
        return Err("a tool name or glob must not be empty".into());
    }
    if let Some(c) = key.chars().find(|c| RESERVED.contains(c)) {
        return Err(format!(
            "`{c}` is not allowed in a tool name or glob; globs use only `*` (any run of \
             characters) and `?` (one character)"
        ));
    }
    if !key.contains(['*', '?']) {
        return Ok(Pattern::Exact);
    }
    let literals = key.chars().filter(|c| !matches!(c, '*' | '?')).count();
    let singles = key.chars().filter(|c| *c == '?').count();
    Ok(Pattern::Glob(Specificity { literals, singles }))
}

/// A name that both globs match (compared as written), if there is one.
pub(crate) fn common_match(a: &str, b: &str) -> Option<String> {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // memo[i][j]: can a[i..] and b[j..] match a common string?
    let mut memo = vec![vec![None::<bool>; b.len() + 1]; a.len() + 1];
    fn can(a: &[char], b: &[char], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(known) = memo[i][j] {
            return known;
        }
        let result = match (a.get(i), b.get(j)) {
            (None, None) => true,
            (Some('*'), _) => {
                can(a, b, i + 1, j, memo) || (j < b.len() && can(a, b, i, j + 1, memo))
            }
            (_, Some('*')) => {
                can(a, b, i, j + 1, memo) || (i < a.len() && can(a, b, i + 1, j, memo))
            }
            (Some(x), Some(y)) => {
                (*x == '?' || *y == '?' || x == y) && can(a, b, i + 1, j + 1, memo)
            }
            _ => false,
        };
        memo[i][j] = Some(result);
        result
    }
    if !can(&a, &b, 0, 0, &mut memo) {
        return None;
    }
    // Walk the memo to spell one common name.
    let (mut i, mut j, mut out) = (0, 0, String::new());
    loop {
        match (a.get(i), b.get(j)) {
            (None, None) => return Some(out),
            (Some('*'), _) if can(&a, &b, i + 1, j, &mut memo) => i += 1,
            (Some('*'), Some(y)) => {
                // `*` absorbs one of b's tokens; a `?` or `*` there stands for some letter.
                if *y != '*' {
                    out.push(if *y == '?' { 'x' } else { *y });
                }
                j += 1;
            }
            (_, Some('*')) if can(&a, &b, i, j + 1, &mut memo) => j += 1,
            (Some(x), Some('*')) => {
                out.push(if *x == '?' { 'x' } else { *x });
                i += 1;
            }
            (Some(x), Some(y)) => {
                out.push(match (*x, *y) {
                    ('?', '?') => 'x',
                    ('?', c) | (c, _) => c,
                });
                i += 1;
                j += 1;
            }
            // Unreachable when `can` said yes; stop rather than loop.
            _ => return Some(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob_matches(glob: &str, name: &str) -> bool {
        globset::Glob::new(glob)
            .unwrap()
            .compile_matcher()
            .is_match(name)
    }

    #[test]
    fn syntax() {
        assert_eq!(parse("delete_test"), Ok(Pattern::Exact));
        assert_eq!(
            parse("delete_*"),
            Ok(Pattern::Glob(Specificity {
                literals: 7,
                singles: 0
            }))
        );
        assert!(parse("a[bc]").unwrap_err().contains("`[` is not allowed"));
        assert!(parse("").is_err());
    }

    #[test]
    fn common_matches_are_found_and_spelled() {
        let cases = [
            ("delete_*", "*_session", true),
            ("a*", "b*", false),
            ("*x", "*y", false),
            ("a?c", "ab*", true),
            ("*", "*", true),
            ("a*b*c", "*bb*", true),
            ("get_?", "get_??", false),
        ];
        for (a, b, overlap) in cases {
            let found = common_match(a, b);
            assert_eq!(found.is_some(), overlap, "{a} vs {b}: {found:?}");
            if let Some(name) = found {
                assert!(glob_matches(a, &name), "{a} must match {name}");
                assert!(glob_matches(b, &name), "{b} must match {name}");
            }
        }
    }
}
