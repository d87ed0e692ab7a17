//! Session lifecycle through the bridge: sessions must be live, a crash or
//! DELETE ends the child, sessions are capped (per grant too) and idle ones
//! end, and a command that fails answers `initialize` with its exit.

use super::*;

#[tokio::test]
async fn requests_need_a_live_session() {
    let peer = bridge().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let reply = peer.post(None, list.clone()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = peer.post(Some("nope"), list).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let error = reply.events.all().await;
    assert_eq!(error[0]["error"]["code"], -32600);
    let reply = peer.post(None, json!("not a message")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_crash_ends_the_session_and_initialize_starts_a_new_child() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let messages = peer.tool(&session, 3, "crash", json!({})).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["id"], 3);
    let error = messages[0]["error"]["message"].as_str().unwrap();
    assert!(
        error.starts_with("the stdio server `stub` exited: exit status: 3"),
        "{error}"
    );

    let list = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"});
    let reply = peer.post(Some(&session), list).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    let again = peer.initialize().await;
    assert_ne!(again, session);
    let echo = peer.tool(&again, 5, "echo", json!({"text": "back"})).await;
    assert_eq!(text(&echo[0]), "back");
}

#[tokio::test]
async fn delete_stops_the_child() {
    let peer = bridge().await;
    let session = peer.initialize().await;
    let pid = peer.tool(&session, 1, "pid", json!({})).await;
    let proc = PathBuf::from(format!("/proc/{}", text(&pid[0])));
    assert!(proc.exists());

    let reply = peer.send(Method::DELETE, Some(&session), None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    gone(&proc).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(
        peer.post(Some(&session), list).await.status,
        StatusCode::NOT_FOUND
    );
    let reply = peer.send(Method::DELETE, Some(&session), None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// Waits until a process has exited and been reaped.
async fn gone(proc: &std::path::Path) {
    tokio::time::timeout(WAIT, async {
        while proc.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the child still runs");
}

#[tokio::test]
async fn sessions_are_capped() {
    let peer = bridge_with(Limits {
        max_sessions: 1,
        ..Limits::default()
    })
    .await;
    let session = peer.initialize().await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let reply = peer.post(None, init.clone()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let error = reply.events.all().await;
    assert!(
        error[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already runs 1 sessions"),
        "{error:?}"
    );

    peer.send(Method::DELETE, Some(&session), None).await;
    // The slot frees once the child has exited.
    tokio::time::timeout(WAIT, async {
        while peer.post(None, init.clone()).await.status != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slot was not freed");
}

#[tokio::test]
async fn sessions_are_capped_per_grant() {
    let mut alice = bridge_with(Limits {
        max_sessions_per_grant: 1,
        ..Limits::default()
    })
    .await;
    alice.caller = Some("alice".into());
    let bob = Peer {
        bridge: Arc::clone(&alice.bridge),
        caller: Some("bob".into()),
    };
    alice.initialize().await;
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let reply = alice.post(None, init).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let error = reply.events.all().await;
    assert!(
        error[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the most one grant may"),
        "{error:?}"
    );
    // Another grant is not held back by alice's sessions.
    bob.initialize().await;
}

#[tokio::test]
async fn idle_sessions_end() {
    let peer = bridge_with(Limits {
        idle: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let session = peer.initialize().await;
    let pid = peer.tool(&session, 1, "pid", json!({})).await;
    gone(&PathBuf::from(format!("/proc/{}", text(&pid[0])))).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(
        peer.post(Some(&session), list).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_command_that_fails_answers_initialize_with_its_exit() {
    let peer = Peer {
        bridge: start("nope", "exec tollgate-no-such-command", Limits::default()).unwrap(),
        caller: None,
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let reply = peer.post(None, init).await;
    assert_eq!(reply.status, StatusCode::OK);
    let messages = reply.events.all().await;
    assert_eq!(messages[0]["id"], 0);
    assert_eq!(
        messages[0]["error"]["message"],
        "the stdio server `nope` exited: exit status: 127"
    );
}
