//! The module graph of one crate and the cycles in it. Works on a map of
//! file paths to source text, so tests can feed it made-up crates.

use std::collections::{BTreeMap, BTreeSet};

use super::source::{Token, is_ident, matching, skip_item, strip, tokens, use_tree};

/// A module's path below the crate root; the root is the empty path.
pub type ModPath = Vec<String>;

/// A dependency of one module on a sibling, both children of `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub parent: ModPath,
    pub from: String,
    pub to: String,
    /// `file:line` of the path that makes the dependency.
    pub at: String,
}

/// Sibling modules that depend on each other in a circle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub parent: ModPath,
    pub modules: BTreeSet<String>,
    /// Every edge between the cycle's modules, with where it is made.
    pub edges: Vec<Edge>,
}

/// What reading a crate found.
#[derive(Debug, Default)]
pub struct Crate {
    pub modules: BTreeSet<ModPath>,
    pub edges: Vec<Edge>,
    /// Files read as (non-test) modules.
    pub files: BTreeSet<String>,
    /// Files declared as `#[cfg(test)]` modules, not read.
    pub test_files: BTreeSet<String>,
}

/// A path written in a module, before resolution.
struct Written {
    module: ModPath,
    segs: Vec<String>,
    at: String,
    /// `Some(name)` for a `use` leaf, which also brings `name` into scope.
    binds: Option<String>,
}

/// Reads the crate whose root file (`lib.rs` or `main.rs`, a key of
/// `files`) is `root`; file keys are paths relative to `src/`, with `/`.
/// `display` prefixes file names in `Edge::at`.
pub fn read_crate(
    files: &BTreeMap<String, String>,
    root: &str,
    display: &str,
) -> Result<Crate, String> {
    let mut krate = Crate::default();
    let mut written = Vec::new();
    let mut queue = vec![(root.to_string(), ModPath::new())];
    krate.modules.insert(ModPath::new());
    while let Some((file, module)) = queue.pop() {
        let src = files
            .get(&file)
            .ok_or_else(|| format!("{display}{file}: file not found"))?;
        krate.files.insert(file.clone());
        let mut reader = FileReader {
            files,
            file: &file,
            raw: src.lines().collect(),
            display,
            module: module.clone(),
            crate_out: &mut krate,
            written: &mut written,
            children: Vec::new(),
        };
        reader.read(&tokens(&strip(src)))?;
        for (child_file, child_module) in std::mem::take(&mut reader.children) {
            queue.push((child_file, child_module));
        }
    }
    let uses = use_map(&krate.modules, &written);
    for w in &written {
        let Some(abs) = resolve(&krate.modules, &w.module, &w.segs) else {
            continue;
        };
        let Some(target) = locate(&krate.modules, &uses, abs, 0) else {
            continue;
        };
        if let Some(edge) = sibling_edge(&w.module, &target, &w.at) {
            krate.edges.push(edge);
        }
    }
    Ok(krate)
}

/// The sibling edge a reference from `from` to `to` makes: at the level of
/// their nearest common parent. None when one contains the other.
pub fn sibling_edge(from: &[String], to: &[String], at: &str) -> Option<Edge> {
    let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if common == from.len() || common == to.len() {
        return None;
    }
    Some(Edge {
        parent: from[..common].to_vec(),
        from: from[common].clone(),
        to: to[common].clone(),
        at: at.to_string(),
    })
}

/// Every set of two or more siblings that reach each other, per parent
/// (strongly connected components), with the edges among them.
pub fn cycles(edges: &[Edge]) -> Vec<Cycle> {
    let mut by_parent: BTreeMap<&ModPath, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for e in edges {
        by_parent
            .entry(&e.parent)
            .or_default()
            .entry(&e.from)
            .or_default()
            .insert(&e.to);
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        let reach = |start: &str| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![start];
            while let Some(n) = stack.pop() {
                for &m in graph.get(n).into_iter().flatten() {
                    if seen.insert(m) {
                        stack.push(m);
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&str, BTreeSet<&str>> =
            graph.keys().map(|&n| (n, reach(n))).collect();
        let mut done = BTreeSet::new();
        for (&n, from_n) in &reaches {
            if done.contains(n) || !from_n.contains(n) {
                continue;
            }
            let modules: BTreeSet<String> = from_n
                .iter()
                .filter(|m| reaches.get(*m).is_some_and(|r| r.contains(n)))
                .map(|m| m.to_string())
                .collect();
            done.extend(modules.iter().cloned());
            let mut edges: Vec<Edge> = edges
                .iter()
                .filter(|e| {
                    &e.parent == parent && modules.contains(&e.from) && modules.contains(&e.to)
                })
                .cloned()
                .collect();
            edges.sort_by_key(|e| (e.from.clone(), e.to.clone(), location_key(&e.at)));
            edges.dedup();
            out.push(Cycle {
                parent: parent.clone(),
                modules,
                edges,
            });
        }
    }
    out
}

/// `file:line` ordered by file, then line as a number.
fn location_key(at: &str) -> (String, usize) {
    match at.rsplit_once(':') {
        Some((file, line)) => (file.to_string(), line.parse().unwrap_or(0)),
        None => (at.to_string(), 0),
    }
}

struct FileReader<'a> {
    files: &'a BTreeMap<String, String>,
    file: &'a str,
    raw: Vec<&'a str>,
    display: &'a str,
    module: ModPath,
    crate_out: &'a mut Crate,
    written: &'a mut Vec<Written>,
    /// Out-of-line child modules found: (file, module path).
    children: Vec<(String, ModPath)>,
}

impl FileReader<'_> {
    fn at(&self, line: usize) -> String {
        format!("{}{}:{line}", self.display, self.file)
    }

    fn read(&mut self, t: &[Token]) -> Result<(), String> {
        let is = |i: usize, s: &str| t.get(i).is_some_and(|x| x.text == s);
        // Inline modules open here: (name, brace depth inside them).
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        let mut test_item = false;
        let mut attr_line: Option<usize> = None;
        let mut i = 0;
        while i < t.len() {
            // Attributes: note `#[cfg(test)]` and where the run began.
            if is(i, "#") && (is(i + 1, "[") || (is(i + 1, "!") && is(i + 2, "["))) {
                let open = if is(i + 1, "[") { i + 1 } else { i + 2 };
                let close = matching(t, open);
                let body: Vec<&str> = t[open + 1..close].iter().map(|x| x.text.as_str()).collect();
                test_item |= body == ["cfg", "(", "test", ")"];
                attr_line.get_or_insert(t[i].line);
                i = close + 1;
                continue;
            }
            let mod_at = if is(i, "mod") {
                Some(i)
            } else if is(i, "pub") && is(i + 1, "mod") {
                Some(i + 1)
            } else if is(i, "pub") && is(i + 1, "(") {
                let close = matching(t, i + 1);
                is(close + 1, "mod").then_some(close + 1)
            } else {
                None
            };
            let first_line = attr_line.take().unwrap_or(t[i].line);
            let here: ModPath = self
                .module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(n, _)| n.clone()))
                .collect();
            if let Some(m) = mod_at.filter(|&m| t.get(m + 1).is_some()) {
                let name = t[m + 1].text.clone();
                let path_attr = self.path_attribute(first_line, t[m].line);
                if is(m + 2, ";") {
                    let file = self.child_file(&inline, &name, path_attr.as_deref())?;
                    if test_item {
                        self.crate_out.test_files.insert(file);
                    } else {
                        let mut child = here.clone();
                        child.push(name);
                        self.crate_out.modules.insert(child.clone());
                        self.children.push((file, child));
                    }
                    test_item = false;
                    i = m + 3;
                    continue;
                }
                if is(m + 2, "{") && !test_item {
                    let mut child = here.clone();
                    child.push(name.clone());
                    self.crate_out.modules.insert(child);
                    inline.push((name, depth + 1));
                    depth += 1;
                    i = m + 3;
                    continue;
                }
            }
            if std::mem::take(&mut test_item) {
                i = skip_item(t, i);
                continue;
            }
            match t[i].text.as_str() {
                "{" => depth += 1,
                "}" => {
                    if inline.last().is_some_and(|&(_, d)| d == depth) {
                        inline.pop();
                    }
                    depth = depth.saturating_sub(1);
                }
                "use" => {
                    let mut leaves = Vec::new();
                    i = use_tree(t, i + 1, &[], &mut leaves);
                    for (segs, binds, line) in leaves {
                        self.written.push(Written {
                            module: here.clone(),
                            segs,
                            at: self.at(line),
                            binds,
                        });
                    }
                    continue;
                }
                "crate" | "super" | "self" if is(i + 1, "::") && !(i > 0 && is(i - 1, "::")) => {
                    let mut segs = vec![t[i].text.clone()];
                    let mut j = i + 1;
                    while is(j, "::") && t.get(j + 1).is_some_and(|x| is_ident(&x.text)) {
                        segs.push(t[j + 1].text.clone());
                        j += 2;
                    }
                    self.written.push(Written {
                        module: here,
                        segs,
                        at: self.at(t[j - 1].line),
                        binds: None,
                    });
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }

    /// The `#[path = "…"]` given on the raw lines `from..=to`, if any.
    fn path_attribute(&self, from: usize, to: usize) -> Option<String> {
        let lines = self
            .raw
            .get(from.saturating_sub(1)..to.min(self.raw.len()))?;
        lines.iter().find_map(|l| {
            let rest = l
                .trim()
                .strip_prefix("#[path")?
                .trim_start()
                .strip_prefix('=')?;
            let rest = rest.trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
    }

    /// Where `mod name;` declared here lives, per the reference's rules.
    fn child_file(
        &self,
        inline: &[(String, usize)],
        name: &str,
        path_attr: Option<&str>,
    ) -> Result<String, String> {
        let (dir, stem) = match self.file.rsplit_once('/') {
            Some((d, f)) => (format!("{d}/"), f),
            None => (String::new(), self.file),
        };
        let own_dir = matches!(stem, "lib.rs" | "main.rs" | "mod.rs");
        let mut base = dir.clone();
        if !own_dir {
            base.push_str(stem.trim_end_matches(".rs"));
            base.push('/');
        }
        for (n, _) in inline {
            base.push_str(n);
            base.push('/');
        }
        if let Some(p) = path_attr {
            return Ok(if inline.is_empty() {
                format!("{dir}{p}")
            } else {
                format!("{base}{p}")
            });
        }
        let flat = format!("{base}{name}.rs");
        let nested = format!("{base}{name}/mod.rs");
        match (
            self.files.contains_key(&flat),
            self.files.contains_key(&nested),
        ) {
            (true, false) => Ok(flat),
            (false, true) => Ok(nested),
            _ => Err(format!(
                "{}: `mod {name};` needs exactly one of {flat} and {nested}",
                self.at(0)
            )),
        }
    }
}

/// A written path made absolute (below the crate root), or None when it
/// leaves the crate.
fn resolve(modules: &BTreeSet<ModPath>, here: &[String], segs: &[String]) -> Option<Vec<String>> {
    let first = segs.first()?;
    match first.as_str() {
        "crate" => Some(segs[1..].to_vec()),
        "self" => Some(here.iter().chain(&segs[1..]).cloned().collect()),
        "super" => {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            let base = here.get(..here.len().checked_sub(ups)?)?;
            Some(base.iter().chain(&segs[ups..]).cloned().collect())
        }
        _ => {
            let mut child = here.to_vec();
            child.push(first.clone());
            modules
                .contains(&child)
                .then(|| here.iter().chain(segs).cloned().collect())
        }
    }
}

/// Per module, the names its `use` declarations bring into scope and the
/// absolute paths they stand for (None: outside the crate).
type UseMap = BTreeMap<ModPath, BTreeMap<String, Option<Vec<String>>>>;

fn use_map(modules: &BTreeSet<ModPath>, written: &[Written]) -> UseMap {
    let mut map = UseMap::new();
    for w in written {
        if let Some(name) = &w.binds {
            map.entry(w.module.clone())
                .or_default()
                .insert(name.clone(), resolve(modules, &w.module, &w.segs));
        }
    }
    map
}

/// The module an absolute path lands in: the deepest module on it, following
/// names a module imports (re-exports and plain `use`s alike).
fn locate(
    modules: &BTreeSet<ModPath>,
    uses: &UseMap,
    abs: Vec<String>,
    hops: usize,
) -> Option<ModPath> {
    let mut here = ModPath::new();
    for (k, seg) in abs.iter().enumerate() {
        let mut child = here.clone();
        child.push(seg.clone());
        if modules.contains(&child) {
            here = child;
            continue;
        }
        // Bounded: `use` declarations can name each other in a loop.
        if let Some(target) = uses
            .get(&here)
            .and_then(|u| u.get(seg))
            .filter(|_| hops < 8)
        {
            let mut next = target.clone()?;
            next.extend(abs[k + 1..].iter().cloned());
            return locate(modules, uses, next, hops + 1);
        }
        break;
    }
    Some(here)
}
