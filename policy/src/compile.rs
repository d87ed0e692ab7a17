//! Compiling documents into evaluators, with the checks that span a document:
//! glob ties, counters declared twice, tool keys that differ only in case.
//!
//! Tool names match case-insensitively (ASCII): `Delete_X` is judged as
//! `delete_x`, so a case variant of a denied name is denied too, whatever the
//! upstream does with case.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::classes::RiskClass;
use crate::conditions::{CompiledCondition, RegexCache};
use crate::document::*;
use crate::error::{Errors, child};
use crate::glob::{self, Pattern};
use crate::grant_key::{GrantKey, TokenHashing, decode_hex32, grant_tokens};

/// A compiled bundle: what the sidecar swaps in and decides with.
#[derive(Debug)]
pub struct Bundle {
    pub(crate) policies: Policies,
    /// Grant id by token hash (raw bytes), hashed as `token_hashing` says.
    pub(crate) grants_by_token: HashMap<[u8; 32], Arc<str>>,
    pub(crate) token_hashing: TokenHashing,
    /// Grant ids and labels.
    pub(crate) grants: BTreeMap<Arc<str>, BTreeMap<String, String>>,
    /// Policies attached to a grant, by grant, then server.
    pub(crate) grant_policies: HashMap<Box<str>, HashMap<Box<str>, CompiledPolicy>>,
    pub(crate) stats: Stats,
}

#[derive(Debug)]
pub(crate) enum Policies {
    /// A single document: it applies to every server.
    Single(Box<CompiledPolicy>),
    /// One policy per server.
    PerServer(HashMap<Box<str>, CompiledPolicy>),
}

/// A fleet-wide bucket a bundle's limits define (see [`Bundle::fleet_buckets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBucket {
    /// The server.
    pub server: String,
    /// The counter's id.
    pub counter: Arc<str>,
    /// `global` or `grant`.
    pub scope: Scope,
    /// The grant id, or `""` for global.
    pub key: Arc<str>,
    /// The window's length.
    pub window: Duration,
    /// Calls admitted per window.
    pub max: u64,
    /// What a sidecar does while it cannot renew the lease.
    pub on_unavailable: OnUnavailable,
}

/// A limit as a bundle states it, found by server and counter (see
/// [`Bundle::fleet_limit`]): what the control plane accounts a fleet bucket
/// by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLimit {
    /// The scope its buckets are keyed by.
    pub scope: Scope,
    /// The window's length.
    pub window: Duration,
    /// Calls admitted per window.
    pub max: u64,
    /// What a sidecar does while it cannot renew the lease.
    pub on_unavailable: OnUnavailable,
}

/// Sizes of a bundle, for `policy check` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries under `tools`, over every policy.
    pub tools: usize,
    /// Limits (`limits` entries and `rate_limit`s), over every policy.
    pub limits: usize,
}

/// One compiled policy document.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) mode: Mode,
    pub(crate) default: DefaultAction,
    pub(crate) hidden_exact: HashMap<Box<str>, Arc<str>>,
    pub(crate) hidden_globs: GlobSet,
    pub(crate) hidden_glob_pointers: Vec<Arc<str>>,
    pub(crate) exact: HashMap<Box<str>, usize>,
    /// Globs, most specific first; position `i` is `glob_rules[i]`.
    pub(crate) globs: glob::GlobIndex,
    pub(crate) glob_rules: Vec<usize>,
    pub(crate) classes: [Option<usize>; 5],
    pub(crate) all_tools: Option<usize>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) default_pointer: Arc<str>,
    pub(crate) default_reason: Arc<str>,
}

/// A rule ready to apply.
#[derive(Debug)]
pub(crate) struct CompiledRule {
    pub(crate) pointer: Arc<str>,
    pub(crate) action: Action,
    pub(crate) reason: Option<Arc<str>>,
    pub(crate) pinned_class: Option<RiskClass>,
    pub(crate) deny_if: Vec<CompiledGroup>,
    pub(crate) require: Vec<CompiledGroup>,
    pub(crate) limits: Vec<CompiledLimit>,
    pub(crate) approval: Option<ApprovalSpec>,
}

#[derive(Debug)]
pub(crate) struct CompiledGroup {
    pub(crate) pointer: Arc<str>,
    pub(crate) on_deny: Option<Arc<str>>,
    /// Each condition with its pointer.
    pub(crate) conditions: Vec<(Arc<str>, CompiledCondition)>,
}

/// A limit ready to charge.
#[derive(Debug, Clone)]
pub(crate) struct CompiledLimit {
    pub(crate) pointer: Arc<str>,
    pub(crate) counter: Arc<str>,
    pub(crate) scope: Scope,
    pub(crate) window: Window,
    pub(crate) window_len: Duration,
    pub(crate) max: u64,
    pub(crate) on_unavailable: OnUnavailable,
}

/// How approvals for a rule work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApprovalSpec {
    /// How long a request stays open.
    pub timeout: Duration,
    /// How long the agent's call is held waiting for a quick decision.
    pub hold: Duration,
    /// Whether approvers see the arguments (else only their digest).
    pub show_arguments: bool,
}

const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);

impl Bundle {
    /// Compiles a read document; errors are appended to `errs`. `grant_key`
    /// is the key of keyed grants (`token_hmac_sha256`); a bundle with keyed
    /// grants and no key is an error.
    pub(crate) fn compile(
        file: &PolicyFile,
        grant_key: Option<&GrantKey>,
        errs: &mut Errors,
    ) -> Bundle {
        let mut counters = CounterRegistry::default();
        let mut stats = Stats::default();
        match file {
            PolicyFile::Policy(doc) => {
                let policy = compile_policy(doc, "", None, &mut counters, &mut stats, errs);
                Bundle {
                    policies: Policies::Single(Box::new(policy)),
                    grants_by_token: HashMap::new(),
                    token_hashing: TokenHashing::Sha256,
                    grants: BTreeMap::new(),
                    grant_policies: HashMap::new(),
                    stats,
                }
            }
            PolicyFile::Bundle(b) => {
                let mut servers = HashMap::new();
                for (name, doc) in &b.servers {
                    let at = child("/servers", name);
                    let policy =
                        compile_policy(doc, &at, Some(name), &mut counters, &mut stats, errs);
                    servers.insert(name.as_str().into(), policy);
                }
                let (token_hashing, grants_by_token) = grant_tokens(b, grant_key, errs);
                let mut grants = BTreeMap::new();
                let mut grant_policies = HashMap::new();
                for (id, grant) in &b.grants {
                    let at = child("/grants", id);
                    let id: Arc<str> = id.as_str().into();
                    grants.insert(Arc::clone(&id), grant.labels.clone());
                    for (server, doc) in &grant.policies {
                        if !b.servers.contains_key(server) {
                            errs.push(
                                &child(&child(&at, "policies"), server),
                                format!("no server `{server}` under `/servers`; a grant's policy replaces a server's policy, so the server must exist"),
                            );
                        }
                        let at = child(&child(&at, "policies"), server);
                        let policy =
                            compile_policy(doc, &at, Some(server), &mut counters, &mut stats, errs);
                        grant_policies
                            .entry(Box::from(&*id))
                            .or_insert_with(HashMap::new)
                            .insert(server.as_str().into(), policy);
                    }
                }
                Bundle {
                    policies: Policies::PerServer(servers),
                    grants_by_token,
                    token_hashing,
                    grants,
                    grant_policies,
                    stats,
                }
            }
        }
    }

    /// Sizes of the bundle.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The grant a bearer token identifies: one SHA-256 of the token, and
    /// one HMAC when the bundle's grants are keyed. Does not allocate.
    pub fn grant_for_token(&self, token: &[u8]) -> Option<&Arc<str>> {
        if self.grants_by_token.is_empty() {
            return None;
        }
        self.grants_by_token
            .get(&self.token_hashing.of_token(token))
    }

    /// The grant a bearer token's SHA-256 (hex, either case) identifies, in
    /// either form of the bundle.
    pub fn grant_for_token_sha256(&self, hex: &str) -> Option<&Arc<str>> {
        let digest = decode_hex32(hex)?;
        self.grants_by_token
            .get(&self.token_hashing.of_sha256(&digest))
    }

    /// Whether the bundle names grants (then every call must carry a known token).
    pub fn has_grants(&self) -> bool {
        !self.grants.is_empty()
    }

    /// A grant's labels.
    pub fn grant_labels(&self, grant: &str) -> Option<&BTreeMap<String, String>> {
        self.grants.get(grant)
    }

    /// The server names of a per-server bundle (empty for a single document).
    pub fn servers(&self) -> Vec<&str> {
        match &self.policies {
            Policies::Single(_) => Vec::new(),
            Policies::PerServer(m) => {
                let mut names: Vec<&str> = m.keys().map(|k| &**k).collect();
                names.sort_unstable();
                names
            }
        }
    }

    /// The fleet-wide buckets (scope `global`, and `grant` for every grant the
    /// bundle knows — `node_grant` when it has none) that calls to `servers`
    /// may charge: what a fleet sidecar asks leases for before the first call.
    /// Session buckets are keyed by sessions not yet seen, so none are listed.
    pub fn fleet_buckets(&self, servers: &[&str], node_grant: &Arc<str>) -> Vec<FleetBucket> {
        let grants: Vec<&Arc<str>> = if self.has_grants() {
            self.grants.keys().collect()
        } else {
            vec![node_grant]
        };
        let mut out: Vec<FleetBucket> = Vec::new();
        for server in servers {
            for grant in &grants {
                let Some(policy) = self.policy_for(server, grant) else {
                    continue;
                };
                for l in policy.rules.iter().flat_map(|r| &r.limits) {
                    let key = match l.scope {
                        Scope::Global => Arc::from(""),
                        Scope::Grant => Arc::clone(grant),
                        Scope::Session | Scope::Pod => continue,
                    };
                    let seen = out
                        .iter()
                        .any(|b| b.server == *server && b.counter == l.counter && b.key == key);
                    if !seen {
                        out.push(FleetBucket {
                            server: (*server).to_owned(),
                            counter: Arc::clone(&l.counter),
                            scope: l.scope,
                            key,
                            window: l.window_len,
                            max: l.max,
                            on_unavailable: l.on_unavailable,
                        });
                    }
                }
            }
        }
        out
    }

    /// The limit with counter id `counter` that calls to `server` charge,
    /// under any grant: the server's policy and every grant's policy for
    /// it. Limits sharing a counter agree on window, max and scope (compile
    /// checks that), so the first found is the counter's. `None` when no
    /// policy for `server` has that counter.
    pub fn fleet_limit(&self, server: &str, counter: &str) -> Option<FleetLimit> {
        let base = match &self.policies {
            Policies::Single(p) => Some(&**p),
            Policies::PerServer(m) => m.get(server),
        };
        let granted = self.grant_policies.values().filter_map(|m| m.get(server));
        base.into_iter()
            .chain(granted)
            .flat_map(|p| p.rules.iter().flat_map(|r| &r.limits))
            .find(|l| &*l.counter == counter)
            .map(|l| FleetLimit {
                scope: l.scope,
                window: l.window_len,
                max: l.max,
                on_unavailable: l.on_unavailable,
            })
    }

    /// The policy deciding `grant`'s calls to `server`, if any.
    pub fn policy_for(&self, server: &str, grant: &str) -> Option<&CompiledPolicy> {
        if !self.grant_policies.is_empty()
            && let Some(p) = self.grant_policies.get(grant).and_then(|m| m.get(server))
        {
            return Some(p);
        }
        match &self.policies {
            Policies::Single(p) => Some(p),
            Policies::PerServer(m) => m.get(server),
        }
    }
}

/// What one bundle's compile shares across its policies: the counter ids seen so
/// far (limits sharing one must agree) and the regexes compiled so far (a pattern
/// used by many rules is compiled, and held in memory, once).
#[derive(Default)]
struct CounterRegistry {
    counters: HashMap<Arc<str>, (String, Window, u64, Scope)>,
    regexes: RegexCache,
}

fn compile_policy(
    doc: &PolicyDocument,
    at: &str,
    server: Option<&str>,
    counters: &mut CounterRegistry,
    stats: &mut Stats,
    errs: &mut Errors,
) -> CompiledPolicy {
    let mut rules = Vec::new();
    let mut add =
        |rule: &Rule, pointer: String, counters: &mut CounterRegistry, errs: &mut Errors| {
            let compiled = compile_rule(rule, pointer, server, counters, errs);
            stats.limits += compiled.limits.len();
            rules.push(compiled);
            rules.len() - 1
        };

    // Hidden names and globs.
    let mut hidden_exact = HashMap::new();
    let mut hidden = GlobSetBuilder::new();
    let mut hidden_glob_pointers = Vec::new();
    for (i, name) in doc.hide.iter().enumerate() {
        let pointer: Arc<str> = child(&child(at, "hide"), &i.to_string()).into();
        let lower = name.to_ascii_lowercase();
        match glob::parse(name) {
            Ok(Pattern::Exact) => {
                hidden_exact
                    .entry(lower.into_boxed_str())
                    .or_insert(pointer);
            }
            Ok(Pattern::Glob(_)) => {
                if let Some(g) = build_glob(&lower, &pointer, errs) {
                    hidden.add(g);
                    hidden_glob_pointers.push(pointer);
                }
            }
            Err(_) => {} // reported while reading
        }
    }

    // Tools: exact names in a map, globs by specificity.
    let tools_at = child(at, "tools");
    let mut exact = HashMap::new();
    let mut lower_keys: HashMap<String, &str> = HashMap::new();
    let mut globs: Vec<(glob::Specificity, &str, String, usize)> = Vec::new();
    for (name, rule) in &doc.tools {
        stats.tools += 1;
        let pointer = child(&tools_at, name);
        let lower = name.to_ascii_lowercase();
        if let Some(first) = lower_keys.insert(lower.clone(), name) {
            errs.push(
                &pointer,
                format!("`{first}` and `{name}` differ only in case, and tool names match case-insensitively; merge the two rules"),
            );
        }
        let Ok(pattern) = glob::parse(name) else {
            continue;
        };
        let id = add(rule, pointer, counters, errs);
        match pattern {
            Pattern::Exact => {
                exact.insert(lower.into_boxed_str(), id);
            }
            Pattern::Glob(spec) => globs.push((spec, name, lower, id)),
        }
    }
    // Most specific first; equal specificity must not overlap.
    globs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    for (i, (spec, name, lower, _)) in globs.iter().enumerate() {
        for (other_spec, other, other_lower, _) in &globs[..i] {
            if other_spec == spec
                && let Some(example) = glob::common_match(other_lower, lower)
            {
                errs.push(
                    &child(&tools_at, name),
                    format!(
                        "`{name}` and `{other}` are equally specific globs and both match \
                         \"{example}\", so neither can win; make one more specific or add an \
                         exact rule for the names they share"
                    ),
                );
            }
        }
    }
    let mut glob_list = Vec::new();
    let mut glob_rules = Vec::new();
    for (_, name, lower, id) in &globs {
        if let Some(g) = build_glob(lower, &child(&tools_at, name), errs) {
            glob_list.push(g);
            glob_rules.push(*id);
        }
    }
    let glob_index = glob::GlobIndex::new(&glob_list).unwrap_or_else(|e| {
        errs.push(at, format!("the globs could not be compiled together: {e}"));
        glob::GlobIndex::default()
    });

    let mut classes = [None; 5];
    for (class, rule) in &doc.classes {
        let pointer = child(&child(at, "classes"), class.as_str());
        classes[*class as usize] = Some(add(rule, pointer, counters, errs));
    }
    let all_tools = doc
        .all_tools
        .as_ref()
        .map(|rule| add(rule, child(at, "all_tools"), counters, errs));

    let (default_pointer, default_reason) = match doc.default {
        DefaultAction::Deny => (
            "(default deny)",
            "no rule in the policy allows this tool, and the policy's default is deny",
        ),
        DefaultAction::Allow => (
            "(default allow)",
            "no rule names this tool; the policy's default is allow",
        ),
    };
    CompiledPolicy {
        mode: doc.mode,
        default: doc.default,
        hidden_exact,
        hidden_globs: build_set(hidden, at, errs),
        hidden_glob_pointers,
        exact,
        globs: glob_index,
        glob_rules,
        classes,
        all_tools,
        rules,
        default_pointer: default_pointer.into(),
        default_reason: default_reason.into(),
    }
}

fn compile_rule(
    rule: &Rule,
    pointer: String,
    server: Option<&str>,
    counters: &mut CounterRegistry,
    errs: &mut Errors,
) -> CompiledRule {
    let mut limits = Vec::new();
    for (i, limit) in rule.limits.iter().enumerate() {
        let at = child(&child(&pointer, "limits"), &i.to_string());
        let scope = limit.scope.unwrap_or(Scope::Grant);
        let counter = counter_id(limit.counter.as_deref(), &at, server);
        counters.declare(&counter, &at, limit.window, limit.max, scope, errs);
        limits.push(CompiledLimit {
            counter,
            scope,
            window: limit.window,
            window_len: Duration::from_secs(limit.window.seconds()),
            max: limit.max,
            on_unavailable: limit.on_unavailable.unwrap_or_default(),
            pointer: at.into(),
        });
    }
    if let Some(rl) = &rule.rate_limit {
        let at = child(&pointer, "rate_limit");
        let counter = counter_id(None, &at, server);
        counters.declare(&counter, &at, rl.window, rl.max, Scope::Grant, errs);
        limits.push(CompiledLimit {
            counter,
            scope: Scope::Grant,
            window: rl.window,
            window_len: Duration::from_secs(rl.window.seconds()),
            max: rl.max,
            on_unavailable: OnUnavailable::default(),
            pointer: at.into(),
        });
    }
    let mut groups =
        |list: &[ConditionGroup], field: &str, errs: &mut Errors| -> Vec<CompiledGroup> {
            list.iter()
                .enumerate()
                .map(|(i, g)| {
                    let at = child(&child(&pointer, field), &i.to_string());
                    let conditions = g
                        .conditions
                        .iter()
                        .enumerate()
                        .filter_map(|(j, c)| {
                            let cat = child(&child(&at, "conditions"), &j.to_string());
                            match CompiledCondition::new(
                                &c.path,
                                c.op,
                                c.value.as_ref(),
                                &mut counters.regexes,
                            ) {
                                Ok(cc) => Some((Arc::from(cat), cc)),
                                Err(e) => {
                                    errs.push(&cat, e);
                                    None
                                }
                            }
                        })
                        .collect();
                    CompiledGroup {
                        pointer: at.into(),
                        on_deny: g.on_deny.as_deref().map(Arc::from),
                        conditions,
                    }
                })
                .collect()
        };
    let deny_if = groups(&rule.deny_if, "deny_if", errs);
    let require = groups(&rule.require, "require", errs);
    let approval = (rule.action == Some(Action::RequireApproval)).then(|| {
        let a = rule.approval.clone().unwrap_or_default();
        ApprovalSpec {
            timeout: a
                .timeout
                .and_then(|t| t.parse())
                .unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
            hold: a.hold.and_then(|t| t.parse()).unwrap_or(Duration::ZERO),
            show_arguments: a.show_arguments.unwrap_or(false),
        }
    });
    CompiledRule {
        action: rule.action.unwrap_or_default(),
        reason: rule.reason.as_deref().map(Arc::from),
        pinned_class: rule.class,
        deny_if,
        require,
        limits,
        approval,
        pointer: pointer.into(),
    }
}

/// A named counter is shared within its server (`server:name`, or `name` in
/// a single document); an unnamed one is the limit's own, named by its pointer.
fn counter_id(name: Option<&str>, pointer: &str, server: Option<&str>) -> Arc<str> {
    match (name, server) {
        (Some(n), Some(s)) => format!("{s}:{n}").into(),
        (Some(n), None) => n.into(),
        (None, _) => pointer.into(),
    }
}

impl CounterRegistry {
    fn declare(
        &mut self,
        id: &Arc<str>,
        at: &str,
        window: Window,
        max: u64,
        scope: Scope,
        errs: &mut Errors,
    ) {
        match self.counters.get(id) {
            Some((first, w, m, s)) if (*w, *m, *s) != (window, max, scope) => errs.push(
                at,
                format!(
                    "counter `{id}` is also declared at {first} with window {w}, max {m}, scope {}; \
                     limits that share a counter must agree on window, max and scope (here: \
                     window {window}, max {max}, scope {}) — give one a different `counter`",
                    s.as_str(),
                    scope.as_str()
                ),
            ),
            Some(_) => {}
            None => {
                self.counters.insert(Arc::clone(id), (at.to_owned(), window, max, scope));
            }
        }
    }
}

fn build_glob(lower: &str, pointer: &str, errs: &mut Errors) -> Option<globset::Glob> {
    match GlobBuilder::new(lower)
        .literal_separator(false)
        .backslash_escape(false)
        .build()
    {
        Ok(g) => Some(g),
        Err(e) => {
            errs.push(pointer, format!("invalid glob: {e}"));
            None
        }
    }
}

fn build_set(builder: GlobSetBuilder, at: &str, errs: &mut Errors) -> GlobSet {
    builder.build().unwrap_or_else(|e| {
        errs.push(at, format!("the globs could not be compiled together: {e}"));
        GlobSet::empty()
    })
}
