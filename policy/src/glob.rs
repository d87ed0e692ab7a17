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

/// Tool globs indexed for look-up without a regex engine: `lit*`, `*lit` and
/// `lit*lit` (one `*`, no `?`), the shapes tool policies use, are found by
/// hashing the name's prefix or suffix of each length that occurs; any other
/// glob falls back to a `globset::GlobSet`. A match is the glob's position in
/// the list given to [`GlobIndex::new`] (most specific first), and
/// [`GlobIndex::best`] returns the smallest.
/// Literal → value, for one literal length.
type ByLiteral<V> = Vec<(usize, hashbrown::HashMap<Box<[u8]>, V>)>;

#[derive(Debug, Default)]
pub(crate) struct GlobIndex {
    /// `lit*`: by literal length, literal → position.
    prefix: ByLiteral<usize>,
    /// `*lit`: by literal length, literal → position.
    suffix: ByLiteral<usize>,
    /// `a*b`: by length of `a`, `a` → (`b`, position).
    infix: ByLiteral<Vec<(Box<[u8]>, usize)>>,
    /// Everything else, with the position of each.
    other: globset::GlobSet,
    other_positions: Vec<usize>,
}

impl GlobIndex {
    /// Indexes lower-cased globs, most specific first (each already checked to build).
    pub(crate) fn new(globs: &[globset::Glob]) -> Result<Self, globset::Error> {
        fn slot<V: Default>(
            list: &mut ByLiteral<V>,
            len: usize,
        ) -> &mut hashbrown::HashMap<Box<[u8]>, V> {
            let i = match list.iter().position(|(l, _)| *l == len) {
                Some(i) => i,
                None => {
                    list.push((len, hashbrown::HashMap::new()));
                    list.len() - 1
                }
            };
            &mut list[i].1
        }
        let mut index = GlobIndex::default();
        let mut others = globset::GlobSetBuilder::new();
        for (pos, glob) in globs.iter().enumerate() {
            let text = glob.glob();
            let stars = text.matches('*').count();
            if stars != 1 || text.contains('?') {
                others.add(glob.clone());
                index.other_positions.push(pos);
                continue;
            }
            let (a, b) = text.split_once('*').unwrap_or((text, ""));
            let (a, b) = (a.as_bytes(), b.as_bytes());
            if b.is_empty() {
                slot(&mut index.prefix, a.len())
                    .entry(a.into())
                    .or_insert(pos);
            } else if a.is_empty() {
                slot(&mut index.suffix, b.len())
                    .entry(b.into())
                    .or_insert(pos);
            } else {
                slot(&mut index.infix, a.len())
                    .entry(a.into())
                    .or_default()
                    .push((b.into(), pos));
            }
        }
        index.other = others.build()?;
        Ok(index)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.prefix.is_empty()
            && self.suffix.is_empty()
            && self.infix.is_empty()
            && self.other.is_empty()
    }

    /// The position of the first (most specific) glob matching `name`.
    pub(crate) fn best(&self, name: &str, scratch: &mut Vec<usize>) -> Option<usize> {
        let n = name.as_bytes();
        let mut best = usize::MAX;
        for (len, map) in &self.prefix {
            if let Some(&pos) = n.get(..*len).and_then(|p| map.get(p)) {
                best = best.min(pos);
            }
        }
        for (len, map) in &self.suffix {
            if let Some(&pos) = n
                .len()
                .checked_sub(*len)
                .and_then(|start| map.get(&n[start..]))
            {
                best = best.min(pos);
            }
        }
        for (len, map) in &self.infix {
            if let Some(list) = n.get(..*len).and_then(|p| map.get(p)) {
                for (b, pos) in list {
                    if n.len() >= len + b.len() && n.ends_with(b) {
                        best = best.min(*pos);
                    }
                }
            }
        }
        if !self.other.is_empty() {
            scratch.clear();
            self.other.matches_into(name, scratch);
            if let Some(&i) = scratch.iter().min() {
                best = best.min(self.other_positions[i]);
            }
        }
        (best != usize::MAX).then_some(best)
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    #[test]
    fn index_agrees_with_globset() {
        let mut seed = 0x9e3779b97f4a7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let alpha = ['a', 'b', '_', '*', '?'];
        for _ in 0..300 {
            let count = 1 + next(12) as usize;
            let mut globs = Vec::new();
            for _ in 0..count {
                let len = 1 + next(6) as usize;
                let mut g: String = (0..len).map(|_| alpha[next(5) as usize]).collect();
                if !g.contains(['*', '?']) {
                    g.push('*');
                }
                globs.push(
                    globset::GlobBuilder::new(&g)
                        .literal_separator(false)
                        .backslash_escape(false)
                        .build()
                        .unwrap(),
                );
            }
            let mut set = globset::GlobSetBuilder::new();
            for g in &globs {
                set.add(g.clone());
            }
            let set = set.build().unwrap();
            let index = GlobIndex::new(&globs).unwrap();
            let mut scratch = Vec::new();
            for _ in 0..200 {
                let len = next(8) as usize;
                let name: String = (0..len).map(|_| alpha[next(3) as usize]).collect();
                let want = set.matches(&name).into_iter().min();
                assert_eq!(index.best(&name, &mut scratch), want, "{name} {globs:?}");
            }
        }
    }
}
