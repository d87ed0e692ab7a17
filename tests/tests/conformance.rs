//! The MCP conformance suite (`@modelcontextprotocol/conformance`, every
//! server scenario) against server-everything over Streamable HTTP, once
//! directly and once through the sidecar with an allow-all policy: a
//! transparent proxy must change no outcome, check by check.
//!
//! server-everything is not the suite's own fixture server: many scenarios
//! look for fixtures it does not have (tools such as `test_simple_text`,
//! resources such as `test://static-text`, prompts such as
//! `test_simple_prompt`), so they fail directly as well. The test therefore
//! requires the same outcome for every check (status and message), not that
//! every check passes; it prints both tallies.
//!
//! How the tool reports: for each scenario it prints
//! `Running client scenario '<name>' against server: <url>` and, with
//! `--output-dir`, `Results saved to <dir>`, where `<dir>/checks.json` is a
//! list of checks `{id, name, status, errorMessage?, details, …}` with
//! `status` one of `SUCCESS`, `FAILURE`, `WARNING`, `INFO`, `SKIPPED`; then a
//! summary. It exits 1 when any check failed or warned, so the exit status
//! says little here and the results are read from the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_e2e::{Peers, Scratch, Transport, process, sidecar};

/// One run of the whole suite takes about 2 s; this only stops a hang.
const SUITE_TIMEOUT: Duration = Duration::from_secs(90);

/// One check's outcome, as compared between the two runs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Check {
    id: String,
    status: String,
    /// `errorMessage`, with the server's URL and address replaced by `<server>`.
    message: String,
}

/// The outcome of one run of the suite.
#[derive(Debug)]
struct SuiteRun {
    label: &'static str,
    status: ExitStatus,
    /// Scenario name → its checks, sorted.
    scenarios: BTreeMap<String, Vec<Check>>,
}

impl SuiteRun {
    fn count(&self, status: &str) -> usize {
        self.scenarios
            .values()
            .flatten()
            .filter(|c| c.status == status)
            .count()
    }

    fn checks(&self) -> usize {
        self.scenarios.values().map(Vec::len).sum()
    }

    /// `13 passed, 21 failed, 2 warnings, 6 info (42 checks in 32 scenarios; exit status 1)`.
    fn tally(&self) -> String {
        let (pass, fail, warn) = (
            self.count("SUCCESS"),
            self.count("FAILURE"),
            self.count("WARNING"),
        );
        let other = self.checks() - pass - fail - warn;
        format!(
            "{pass} passed, {fail} failed, {warn} warnings, {other} info/skipped \
             ({} checks in {} scenarios; exit status {})",
            self.checks(),
            self.scenarios.len(),
            self.status
                .code()
                .map_or_else(|| "none".to_owned(), |c| c.to_string())
        )
    }
}

#[test]
fn the_conformance_suite_has_the_same_outcomes_through_the_sidecar() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let scenarios = server_scenarios(&peers);

    // Two fresh servers, so neither run can see state the other left behind.
    let direct_server = peers.everything(Transport::StreamableHttp);
    let behind_server = peers.everything(Transport::StreamableHttp);
    let sidecar = sidecar::builder()
        .upstream(behind_server.url())
        .policy(&json!({ "version": "1", "default": "allow" }))
        .start();

    let scratch = Scratch::new("conformance");
    let direct = run_suite(
        &peers,
        "direct",
        &direct_server.url(),
        &[direct_server.addr.to_string()],
        &scratch,
    );
    let through = run_suite(
        &peers,
        "through the sidecar",
        &sidecar.mcp_url(),
        &[sidecar.listen.to_string(), behind_server.addr.to_string()],
        &scratch,
    );

    println!(
        "conformance server --suite all ({} scenarios):",
        scenarios.len()
    );
    println!("  direct:              {}", direct.tally());
    println!("  through the sidecar: {}", through.tally());
    for (name, checks) in &direct.scenarios {
        let line = |checks: &[Check]| {
            checks
                .iter()
                .map(|c| format!("{}={}", c.id, c.status))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let theirs = through.scenarios.get(name).map(|c| line(c));
        let same = theirs.as_deref() == Some(line(checks).as_str());
        println!(
            "  {} {name}: {}",
            if same { "=" } else { "≠" },
            line(checks)
        );
    }

    for run in [&direct, &through] {
        let ran: BTreeSet<&String> = run.scenarios.keys().collect();
        let listed: BTreeSet<&String> = scenarios.iter().collect();
        assert_eq!(
            ran, listed,
            "the {} run did not run exactly the scenarios `conformance list --server` lists",
            run.label
        );
    }
    // A guard against a vacuous comparison (e.g. a server that never came up,
    // where everything fails both ways).
    assert!(
        direct.count("SUCCESS") > 0,
        "no conformance check passed even directly against server-everything: {}",
        direct.tally()
    );

    let differences: Vec<String> = direct
        .scenarios
        .iter()
        .filter_map(|(name, want)| {
            let got = through
                .scenarios
                .get(name)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            (got != want.as_slice())
                .then(|| format!("{name}:\n    direct:  {want:?}\n    through: {got:?}"))
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{} scenario(s) have other outcomes through the sidecar than directly \
         (results kept under {}; rerun with TOLLGATE_LOG=debug for the sidecar's view):\n  {}",
        differences.len(),
        scratch.path().display(),
        differences.join("\n  ")
    );
    assert_eq!(
        through.status.code(),
        direct.status.code(),
        "the tool's exit status differs"
    );
}

/// The names `conformance list --server` prints (`  - ping [2025-06-18,…]`).
fn server_scenarios(peers: &Peers) -> Vec<String> {
    let mut cmd = peers.conformance();
    cmd.args(["list", "--server"]);
    let done = process::run("conformance list", cmd, None, SUITE_TIMEOUT);
    assert!(
        done.status.success(),
        "conformance list --server failed ({}):\n{}{}",
        done.status,
        done.stdout,
        done.stderr
    );
    let names: Vec<String> = done
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("- "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        !names.is_empty(),
        "no scenarios in `conformance list --server`'s output:\n{}",
        done.stdout
    );
    names
}

/// Runs every server scenario (`--suite all`, pending ones included) against
/// `url` and reads each scenario's `checks.json`; `addrs` (the server's
/// addresses) are replaced by `<server>` in messages, like `url`.
fn run_suite(
    peers: &Peers,
    label: &'static str,
    url: &str,
    addrs: &[String],
    scratch: &Scratch,
) -> SuiteRun {
    let out_dir = scratch.join(&label.replace(' ', "-"));
    let mut cmd = peers.conformance();
    cmd.args(["server", "--suite", "all", "--url", url, "--output-dir"])
        .arg(&out_dir);
    let done = process::run("conformance server", cmd, None, SUITE_TIMEOUT);
    let context = || {
        format!(
            "conformance server --url {url} ({label}, {}):\nstdout:\n{}\nstderr:\n{}",
            done.status, done.stdout, done.stderr
        )
    };
    assert!(
        done.stdout.contains("=== SUMMARY ==="),
        "the suite did not run to its summary; {}",
        context()
    );

    // `Running client scenario '<name>' …` then `Results saved to <dir>`.
    let mut scenarios = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in done.stdout.lines() {
        if let Some(rest) = line.strip_prefix("Running client scenario '") {
            current = rest.split('\'').next().map(str::to_owned);
        } else if let Some(dir) = line.strip_prefix("Results saved to ") {
            let name = current
                .take()
                .unwrap_or_else(|| panic!("results without a scenario: {line}; {}", context()));
            let checks = read_checks(&Path::new(dir.trim()).join("checks.json"), url, addrs);
            assert!(
                scenarios.insert(name.clone(), checks).is_none(),
                "scenario {name} ran twice; {}",
                context()
            );
        }
    }
    assert!(
        !scenarios.is_empty(),
        "no scenario results in the output; {}",
        context()
    );
    SuiteRun {
        label,
        status: done.status,
        scenarios,
    }
}

fn read_checks(path: &Path, url: &str, addrs: &[String]) -> Vec<Check> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let checks: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()));
    let mut checks: Vec<Check> = checks
        .as_array()
        .unwrap_or_else(|| panic!("{} is not a list of checks:\n{text}", path.display()))
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_owned();
            Check {
                id: field("id"),
                status: field("status"),
                message: addrs
                    .iter()
                    .fold(field("errorMessage").replace(url, "<server>"), |m, a| {
                        m.replace(a.as_str(), "<server>")
                    }),
            }
        })
        .collect();
    checks.sort();
    checks
}
