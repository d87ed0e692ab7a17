//! The approval page, in a real headless Chromium and by hand: an approver
//! signs in with an operator token, sees the held call and approves it, and
//! the agent's call completes with the upstream's real result. Requests
//! without a login, with a forged form or from another site change nothing.
//!
//! Real peers: server-everything as the upstream, the `tollgate` control
//! plane and a `tollgate-sidecar` in fleet mode, Chromium over WebDriver.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::{Value, json};
use tollgate_e2e::browser::Browser;
use tollgate_e2e::controlplane::ControlPlane;
use tollgate_e2e::net::{self, Reply};
use tollgate_e2e::peers::{Everything, Peers, Transport};
use tollgate_e2e::scratch::Scratch;
use tollgate_e2e::sidecar::{self, Sidecar};

/// `echo` needs a person's approval; the call is held up to a minute.
fn policy(hold: &str) -> Value {
    json!({
        "version": "1",
        "default": "allow",
        "tools": {
            "echo": {
                "action": "require_approval",
                "approval": {"timeout": "10m", "hold": hold, "show_arguments": true}
            }
        }
    })
}

struct Setup {
    // Fields drop in order: the sidecar before the control plane it talks to.
    sidecar: Sidecar,
    cp: ControlPlane,
    _everything: Everything,
    _state: Scratch,
}

fn setup(peers: &Peers, hold: &str) -> Setup {
    let everything = peers.everything(Transport::StreamableHttp);
    let cp = ControlPlane::start();
    cp.push(&policy(hold));
    let state = Scratch::new("approval-page-sidecar");
    let sidecar = sidecar::builder()
        .upstream(format!("http://{}/mcp", everything.addr))
        .node_id("pod-a")
        .control_plane(cp.url(), state.path())
        .arg("--approval-url")
        .arg(format!("http://{}", cp.http))
        .wait_ready()
        .start();
    Setup {
        sidecar,
        cp,
        _everything: everything,
        _state: state,
    }
}

/// `tollgate token create` as the first admin; the token from stdout.
fn create_token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let out = cp.cli(&["token", "create", "--role", role, "--name", name]);
    assert!(
        out.status.success(),
        "token create: {}{}",
        out.stdout,
        out.stderr
    );
    out.stdout.trim().to_owned()
}

/// Calls `echo` through the sidecar in a new session, on its own thread.
fn call_echo(addr: SocketAddr, message: &str) -> std::thread::JoinHandle<Reply> {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"message": message}}})
    .to_string();
    std::thread::spawn(move || {
        let (session, _) = net::open_mcp_session(addr, "approval-page-test");
        net::post_mcp(addr, Some(&session), &body)
    })
}

/// The id of the one pending request, once the control plane has it.
fn pending_id(cp: &ControlPlane) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cp.cli(&["approvals", "list", "--state", "pending", "--json"]);
        assert!(
            out.status.success(),
            "approvals list: {}{}",
            out.stdout,
            out.stderr
        );
        let ids: Vec<String> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|v| match v {
                Value::Array(items) => items,
                other => vec![other],
            })
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect();
        if let [id] = ids.as_slice() {
            return id.clone();
        }
        assert!(ids.len() < 2, "more than one pending request: {ids:?}");
        assert!(
            Instant::now() < deadline,
            "no pending approval request within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of a `tools/call` reply's first content item.
fn result_text(reply: &Reply) -> String {
    let v = reply.message();
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no result text in {v}"))
        .to_owned()
}

#[test]
fn an_approver_signs_in_in_chromium_approves_and_the_held_call_completes() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let Some(browser) = Browser::require() else {
        return;
    };
    let s = setup(&peers, "60s");
    let token = create_token(&s.cp, "alice", "approver");

    let held = call_echo(s.sidecar.listen, "ship it");
    let id = pending_id(&s.cp);
    let page = format!("http://{}/approvals/{id}", s.cp.http);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let c = browser.session().await;
        c.goto(&page).await.expect("open the page");
        // Not signed in: the page sends the browser to sign in first.
        let at = c.current_url().await.expect("url");
        assert_eq!(
            at.path(),
            "/login",
            "an anonymous visit must sign in first: {at}"
        );
        c.find(Locator::Id("token"))
            .await
            .expect("the token field")
            .send_keys(&token)
            .await
            .expect("type the token");
        c.find(Locator::Id("sign-in"))
            .await
            .expect("the sign-in button")
            .click()
            .await
            .expect("sign in");
        // Signed in, the browser is back on the request's page.
        if c.wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("state"))
            .await
            .is_err()
        {
            let source = c.source().await.unwrap_or_default();
            panic!("not on the request's page after signing in:\n{source}");
        }
        let at = c.current_url().await.expect("url");
        assert_eq!(
            at.path(),
            format!("/approvals/{id}"),
            "back on the request after signing in"
        );
        let main = c
            .find(Locator::Css("body"))
            .await
            .expect("the page")
            .text()
            .await
            .expect("its text");
        for want in [
            id.as_str(),
            "echo",
            "pod-a",
            "PENDING",
            "/tools/echo",
            "alice",
            "ship it",
        ] {
            assert!(
                main.to_uppercase().contains(&want.to_uppercase()),
                "the page should show {want:?}:\n{main}"
            );
        }
        let png = c.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        if let Some(path) = std::env::var_os("TOLLGATE_SCREENSHOT") {
            std::fs::write(&path, &png).expect("write the screenshot");
        }
        c.find(Locator::Id("reason"))
            .await
            .expect("the reason field")
            .send_keys("release window is open")
            .await
            .expect("type a reason");
        c.find(Locator::Id("approve"))
            .await
            .expect("the Approve button")
            .click()
            .await
            .expect("approve");
        // The decision redirects back to the page, which no longer offers the buttons.
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.find(Locator::Id("approve")).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "still offered Approve after approving"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = c
            .find(Locator::Id("state"))
            .await
            .expect("the state")
            .text()
            .await
            .expect("its text")
            .to_lowercase();
        assert!(
            state == "approved" || state == "used",
            "state after Approve: {state}"
        );
        c.close().await.expect("close the browser");
    });

    let reply = held.join().expect("the held call's thread");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        result_text(&reply),
        "Echo: ship it",
        "the upstream's real result"
    );
    let listed = s.cp.cli(&["approvals", "list", "--json"]);
    assert!(
        listed.stdout.contains("alice") && listed.stdout.contains("used"),
        "decided by alice and used once: {}",
        listed.stdout
    );
}

/// A form POST to `path` on the control plane's HTTP port.
fn post_form(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    form: &str,
) -> Reply {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    let cookie_header;
    if let Some(c) = cookie {
        cookie_header = format!("tollgate_session={c}");
        headers.push(("Cookie", cookie_header.as_str()));
    }
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    net::request(addr, "POST", path, &headers, Some(form.as_bytes()))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Signs in by hand: the login cookie's value.
fn sign_in(addr: SocketAddr, token: &str) -> String {
    let reply = post_form(
        addr,
        "/login",
        None,
        None,
        &format!("token={token}&next=%2Fapprovals"),
    );
    assert_eq!(reply.status, 303, "sign in: {}", reply.text());
    let set = reply
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {:?}", reply.headers));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "the login cookie must be {attr}: {set}");
    }
    set.split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_else(|| panic!("a cookie value in {set}"))
}

/// The CSRF token of a signed-in page.
fn csrf_of(addr: SocketAddr, path: &str, cookie: &str) -> String {
    let cookie_header = format!("tollgate_session={cookie}");
    let page =
        net::request(addr, "GET", path, &[("Cookie", &cookie_header)], None).expect("GET the page");
    assert_eq!(page.status, 200, "{}", page.text());
    let text = page.text();
    let at = text.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    text[at..at + 64].to_owned()
}

#[test]
fn the_page_refuses_anonymous_forged_and_cross_site_decisions() {
    let Some(peers) = Peers::require() else {
        return;
    };
    let s = setup(&peers, "0s");
    let approver = create_token(&s.cp, "alice", "approver");
    let viewer = create_token(&s.cp, "val", "viewer");
    let http = s.cp.http;

    // Not held: the agent is told the call is pending at once.
    let first = call_echo(s.sidecar.listen, "careful")
        .join()
        .expect("the call");
    assert!(
        first.text().contains("ap_"),
        "pending, naming the request: {}",
        first.text()
    );
    let id = pending_id(&s.cp);
    let path = format!("/approvals/{id}");
    let decide = format!("{path}/decide");

    // No login: sent to sign in, with the page to come back to.
    let anon = net::get(http, &path).expect("GET");
    assert_eq!(anon.status, 303);
    assert!(
        anon.header("location")
            .is_some_and(|l| l.starts_with("/login?next=")),
        "{:?}",
        anon.headers
    );
    let anon_post = post_form(http, &decide, None, None, "decision=approve");
    assert_eq!(
        anon_post.status, 303,
        "an anonymous decision goes to sign in"
    );

    // A wrong token does not sign in.
    let wrong = post_form(
        http,
        "/login",
        None,
        None,
        &format!("token=tgt_{}_{}", "0".repeat(16), "0".repeat(64)),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());

    // A viewer signs in and sees the request but cannot decide it.
    let v = sign_in(http, &viewer);
    let v_csrf = csrf_of(http, &path, &v);
    let refused = post_form(
        http,
        &decide,
        Some(&v),
        None,
        &format!("csrf={v_csrf}&decision=approve"),
    );
    assert_eq!(refused.status, 403, "{}", refused.text());

    // An approver's login without the form's CSRF token, or posted from another site.
    let a = sign_in(http, &approver);
    let a_csrf = csrf_of(http, &path, &a);
    let no_csrf = post_form(http, &decide, Some(&a), None, "decision=approve");
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.text());
    let other_login = post_form(
        http,
        &decide,
        Some(&a),
        None,
        &format!("csrf={v_csrf}&decision=approve"),
    );
    assert_eq!(
        other_login.status,
        403,
        "another login's CSRF token: {}",
        other_login.text()
    );
    let cross = post_form(
        http,
        &decide,
        Some(&a),
        Some("http://evil.example"),
        &format!("csrf={a_csrf}&decision=approve"),
    );
    assert_eq!(cross.status, 403, "{}", cross.text());
    // Deny needs a reason.
    let no_reason = post_form(
        http,
        &decide,
        Some(&a),
        None,
        &format!("csrf={a_csrf}&decision=deny&reason="),
    );
    assert_eq!(no_reason.status, 400, "{}", no_reason.text());
    let still =
        s.cp.cli(&["approvals", "list", "--state", "pending", "--json"]);
    assert!(
        still.stdout.contains(&id),
        "nothing above decided it: {}",
        still.stdout
    );

    // The approver decides once; a second decision is refused with who decided.
    let ok = post_form(
        http,
        &decide,
        Some(&a),
        None,
        &format!("csrf={a_csrf}&decision=deny&reason=not+today"),
    );
    assert_eq!(ok.status, 303, "{}", ok.text());
    let again = post_form(
        http,
        &decide,
        Some(&a),
        None,
        &format!("csrf={a_csrf}&decision=approve"),
    );
    assert_eq!(again.status, 409, "{}", again.text());
    assert!(
        again.text().contains("alice"),
        "says who decided: {}",
        again.text()
    );

    // An unknown request.
    let unknown = format!("/approvals/ap_{}", "a".repeat(26));
    let cookie_header = format!("tollgate_session={a}");
    let missing =
        net::request(http, "GET", &unknown, &[("Cookie", &cookie_header)], None).expect("GET");
    assert_eq!(missing.status, 404, "{}", missing.text());

    // The agent's retry gets the denial's reason, and nothing went upstream.
    let retry = call_echo(s.sidecar.listen, "careful")
        .join()
        .expect("the retry");
    assert!(
        retry.text().contains("not today"),
        "the approver's reason: {}",
        retry.text()
    );
    assert!(
        !retry.text().contains("Echo: careful"),
        "a denied call must not reach the upstream"
    );

    // Signing out ends the login.
    let out = post_form(http, "/logout", Some(&a), None, &format!("csrf={a_csrf}"));
    assert_eq!(out.status, 303);
    let after = net::request(http, "GET", &path, &[("Cookie", &cookie_header)], None).expect("GET");
    assert_eq!(after.status, 303, "signed out: back to the sign-in page");
}
