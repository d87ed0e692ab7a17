//! Two rules about the shape of the source, checked over the whole repository
//! (issue #13; ARCHITECTURE.md §1).
//!
//! **No module cycle inside a crate.** For each crate's `src/` tree (policy,
//! proto, sidecar, controlplane, and this crate's harness), starting at
//! `lib.rs` and `main.rs` and following `mod` declarations, every path a
//! module writes — in `use` trees, and any `crate::…`, `super::…` or
//! `self::…` path in code — is a dependency on the module it lands in. Names a
//! module imports or re-exports (`pub use x::Y`) are followed to where they
//! come from; glob imports are not. A dependency counts at the level of the
//! two modules' nearest common parent: in the sidecar, `crate::control::
//! quota::X` written in `enforce.rs` is an edge `enforce → control`, and
//! `super::backoff` written in `control/client.rs` is `client → backoff`
//! inside `control`. A module using its own descendants or ancestors is no
//! edge. The rule: within each parent, the edges between its children have no
//! cycle. Comments and string literals are blanked first; whatever is
//! marked `#[cfg(test)]` (test modules, `x_tests.rs` files declared so) is
//! skipped: tests may reach anywhere. Every other `.rs` file under `src/`
//! must be reached through `mod` declarations, so none escapes the check.
//! Each cycle is listed with its modules and the `file:line` of every edge
//! in it. [`KNOWN_CYCLES`] names the cycles tolerated while they are being
//! removed; any other cycle fails.
//!
//! **Long files say why.** Every `.rs` file under `sidecar/src` and
//! `controlplane/src` longer than 500 lines carries the line
//! `//! Longer than 500 lines: <reason>` in its leading `//!` block
//! ([`LONG_FILE_MARKER`]), except the files in [`LONG_FILES_BEING_SPLIT`].
//!
//! Both allowances are checked for staleness too: an entry that no longer
//! matches anything fails, so the lists only shrink.

#[path = "module_graph/graph.rs"]
mod graph;
#[path = "module_graph/source.rs"]
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use graph::{Cycle, Edge, ModPath, cycles, read_crate, sibling_edge};

/// The crates whose `src/` trees are checked, by directory.
const CRATES: [&str; 5] = ["policy", "proto", "sidecar", "controlplane", "tests"];

/// Cycles tolerated for now: (crate directory, parent module with `::`
/// between names and `crate` for the root, the exact set of modules).
/// A cycle among a subset of one of these sets is tolerated too. None today:
/// a cycle is removed, not listed.
const KNOWN_CYCLES: &[(&str, &str, &[&str])] = &[];

/// The exact marker a file over [`MAX_LINES`] carries, followed by a reason,
/// on one of the `//!` lines it starts with.
const LONG_FILE_MARKER: &str = "//! Longer than 500 lines: ";

/// Lines a source file may have without saying why.
const MAX_LINES: usize = 500;

/// Long files excused while they are being split (paths from the
/// repository root). None today: a long file is split or says why.
const LONG_FILES_BEING_SPLIT: [&str; 0] = [];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Every `.rs` file under `dir`, keyed by its path relative to `dir` with `/`.
fn rust_files(dir: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &format!("{prefix}{name}/"), out);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                out.insert(format!("{prefix}{name}"), text);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, "", &mut out);
    out
}

fn module_name(path: &ModPath) -> String {
    if path.is_empty() {
        "crate".into()
    } else {
        path.join("::")
    }
}

fn describe(krate: &str, cycle: &Cycle) -> String {
    let mut s = format!(
        "{krate}: in {}: {{{}}}\n",
        module_name(&cycle.parent),
        cycle.modules.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    for e in &cycle.edges {
        s.push_str(&format!("    {} → {}  at {}\n", e.from, e.to, e.at));
    }
    s
}

fn is_known(krate: &str, cycle: &Cycle) -> bool {
    is_listed(KNOWN_CYCLES, krate, cycle)
}

fn is_listed(list: &[(&str, &str, &[&str])], krate: &str, cycle: &Cycle) -> bool {
    list.iter().any(|(k, parent, set)| {
        *k == krate
            && *parent == module_name(&cycle.parent)
            && cycle.modules.iter().all(|m| set.contains(&m.as_str()))
    })
}

#[test]
fn no_module_cycles_inside_a_crate() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut known_seen = BTreeSet::new();
    for krate in CRATES {
        let files = rust_files(&root.join(krate).join("src"));
        let mut read = BTreeSet::new();
        let mut test_dirs = Vec::new();
        for crate_root in ["lib.rs", "main.rs"] {
            if !files.contains_key(crate_root) {
                continue;
            }
            let parsed = read_crate(&files, crate_root, &format!("{krate}/src/"))
                .unwrap_or_else(|e| panic!("{e}"));
            read.extend(parsed.files.iter().cloned());
            read.extend(parsed.test_files.iter().cloned());
            test_dirs.extend(
                parsed
                    .test_files
                    .iter()
                    .filter_map(|f| f.strip_suffix(".rs").map(|d| format!("{d}/"))),
            );
            for cycle in cycles(&parsed.edges) {
                if is_known(krate, &cycle) {
                    known_seen.insert((krate, module_name(&cycle.parent)));
                } else {
                    problems.push(describe(krate, &cycle));
                }
            }
        }
        // A test module's own submodules (`tests.rs` with `tests/x.rs`) are
        // test code too.
        let in_test_dir = |f: &str| test_dirs.iter().any(|d: &String| f.starts_with(d.as_str()));
        for file in files
            .keys()
            .filter(|f| !read.contains(*f) && !in_test_dir(f))
        {
            problems.push(format!(
                "{krate}/src/{file}: not reached from lib.rs or main.rs, so not checked\n"
            ));
        }
    }
    for (krate, parent, set) in KNOWN_CYCLES {
        if !known_seen.contains(&(*krate, parent.to_string())) {
            problems.push(format!(
                "{krate}: the known cycle {set:?} in {parent} is gone: remove it from KNOWN_CYCLES\n"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles (ARCHITECTURE.md §1: layers run one way):\n{}",
        problems.concat()
    );
}

#[test]
fn long_files_say_why() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut excused = BTreeSet::new();
    for dir in ["sidecar/src", "controlplane/src"] {
        for (file, text) in rust_files(&root.join(dir)) {
            let path = format!("{dir}/{file}");
            let lines = text.lines().count();
            if lines <= MAX_LINES {
                continue;
            }
            let says_why = text.lines().take_while(|l| l.starts_with("//!")).any(|l| {
                l.strip_prefix(LONG_FILE_MARKER)
                    .is_some_and(|r| !r.trim().is_empty())
            });
            if LONG_FILES_BEING_SPLIT.contains(&path.as_str()) && !says_why {
                excused.insert(path);
            } else if !says_why {
                problems.push(format!(
                    "{path}: {lines} lines; split it, or say why in its leading `//!` block with \
                     `{LONG_FILE_MARKER}<reason>`"
                ));
            }
        }
    }
    for path in LONG_FILES_BEING_SPLIT {
        if !excused.contains(path) {
            problems.push(format!(
                "{path} is no longer long (or says why): remove it from LONG_FILES_BEING_SPLIT"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- The checker itself, on made-up crates. ----

fn made_up(files: &[(&str, &str)]) -> graph::Crate {
    let files: BTreeMap<String, String> = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    read_crate(&files, "lib.rs", "src/").unwrap_or_else(|e| panic!("{e}"))
}

fn cycle_sets(krate: &graph::Crate) -> Vec<(String, Vec<String>)> {
    cycles(&krate.edges)
        .iter()
        .map(|c| (module_name(&c.parent), c.modules.iter().cloned().collect()))
        .collect()
}

#[test]
fn siblings_using_each_other_are_a_cycle_with_each_edge_located() {
    let krate = made_up(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("a.rs", "use crate::b::B;\n"),
        ("b.rs", "pub struct B;\nfn f() { super::c::g() }\n"),
        ("c.rs", "pub fn g() {}\nuse crate::{a::A as X, b};\n"),
    ]);
    let found = cycles(&krate.edges);
    assert_eq!(
        cycle_sets(&krate),
        [("crate".into(), vec!["a".into(), "b".into(), "c".into()])]
    );
    let at: Vec<String> = found[0]
        .edges
        .iter()
        .map(|e| format!("{}→{} {}", e.from, e.to, e.at))
        .collect();
    assert_eq!(
        at,
        [
            "a→b src/a.rs:1",
            "b→c src/b.rs:2",
            "c→a src/c.rs:2",
            "c→b src/c.rs:2"
        ]
    );
    assert!(describe("made-up", &found[0]).contains("c → a  at src/c.rs:2"));
}

#[test]
fn edges_count_at_the_nearest_common_parent() {
    let e = |from: &[&str], to: &[&str]| {
        let p = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        sibling_edge(&p(from), &p(to), "x").map(|e: Edge| (module_name(&e.parent), e.from, e.to))
    };
    assert_eq!(
        e(&["enforce"], &["control", "quota"]),
        Some(("crate".into(), "enforce".into(), "control".into()))
    );
    assert_eq!(
        e(&["control", "client"], &["control", "backoff"]),
        Some(("control".into(), "client".into(), "backoff".into()))
    );
    assert_eq!(
        e(&["control"], &["control", "client"]),
        None,
        "a parent using its child"
    );
    assert_eq!(
        e(&["control", "client"], &["control"]),
        None,
        "a child using its parent"
    );
}

#[test]
fn a_parent_with_its_children_and_tests_reaching_anywhere_are_no_cycle() {
    let krate = made_up(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        (
            "a/mod.rs",
            "mod inner;\npub use inner::Thing;\nfn f() -> inner::Thing { todo!() }\n",
        ),
        ("a/inner.rs", "pub struct Thing;\nuse super::f;\n"),
        (
            "b.rs",
            "use crate::a::Thing;\n#[cfg(test)]\nmod tests { use crate::b; }\n\
             #[cfg(test)]\n#[path = \"b_tests.rs\"]\nmod more;\n",
        ),
        ("b_tests.rs", "use crate::b;\n"),
    ]);
    // In `a.rs` (not in test code): comments and strings name b, and do not count.
    let with_noise = made_up(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        (
            "a.rs",
            "// crate::b::B\n/* crate::b */ const S: &str = \"crate::b::B\"; const C: char = '\"';\n",
        ),
        ("b.rs", "use crate::a::S;\n"),
    ]);
    assert!(cycle_sets(&krate).is_empty(), "{:?}", krate.edges);
    assert_eq!(krate.test_files, BTreeSet::from(["b_tests.rs".to_string()]));
    assert!(cycle_sets(&with_noise).is_empty(), "{:?}", with_noise.edges);
}

#[test]
fn re_exports_are_followed_to_the_module_that_defines_the_item() {
    // `b` names `a`'s item through the root's re-export; `a` uses `b`.
    let krate = made_up(&[
        ("lib.rs", "mod a;\nmod b;\npub use a::Thing;\n"),
        ("a.rs", "pub struct Thing;\nfn f() { crate::b::g() }\n"),
        ("b.rs", "pub fn g() {}\nuse crate::Thing;\n"),
    ]);
    assert_eq!(
        cycle_sets(&krate),
        [("crate".into(), vec!["a".into(), "b".into()])]
    );
}

#[test]
fn cycles_deeper_down_name_their_parent() {
    let krate = made_up(&[
        ("lib.rs", "pub mod control;\n"),
        ("control/mod.rs", "pub mod backoff;\npub mod client;\n"),
        ("control/backoff.rs", "use super::client::Client;\n"),
        (
            "control/client.rs",
            "pub struct Client;\nfn f() { super::backoff::wait() }\n",
        ),
    ]);
    assert_eq!(
        cycle_sets(&krate),
        [("control".into(), vec!["backoff".into(), "client".into()])]
    );
}

#[test]
fn only_known_cycles_and_their_parts_are_tolerated() {
    let cycle = |parent: &[&str], modules: &[&str]| Cycle {
        parent: parent.iter().map(|s| s.to_string()).collect(),
        modules: modules.iter().map(|s| s.to_string()).collect(),
        edges: Vec::new(),
    };
    let known = ["enforce", "legacy", "sse_filter", "state"];
    let list: &[(&str, &str, &[&str])] = &[("sidecar", "crate", &known)];
    let is_known = |krate: &str, c: &Cycle| is_listed(list, krate, c);
    assert!(is_known("sidecar", &cycle(&[], &known)));
    assert!(is_known("sidecar", &cycle(&[], &["legacy", "state"])));
    assert!(!is_known(
        "sidecar",
        &cycle(&[], &[&known[..], &["snapshot"]].concat())
    ));
    assert!(!is_known(
        "sidecar",
        &cycle(&["control"], &["legacy", "state"])
    ));
    assert!(!is_known("controlplane", &cycle(&[], &known)));
}
