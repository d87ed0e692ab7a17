use tonic::metadata::MetadataValue;

use super::*;

fn stored(name: &str, role: Role) -> (StoredToken, String) {
    let issued = token::issue().expect("randomness");
    let t = StoredToken {
        id: issued.id,
        name: name.to_owned(),
        role,
        salt: issued.salt,
        hash: issued.hash,
        created_at: 1,
        created_by: "test".to_owned(),
        revoked_at: None,
    };
    (t, issued.token)
}

fn bearer(value: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert(
        "authorization",
        MetadataValue::try_from(value).expect("ascii"),
    );
    m
}

#[test]
fn a_token_is_admitted_up_to_its_role() {
    let (viewer, viewer_text) = stored("ci-view", Role::Viewer);
    let (admin, admin_text) = stored("ops", Role::Admin);
    let auth = Authority::new([viewer, admin]);
    let who = auth
        .check(
            &bearer(&format!("Bearer {viewer_text}")),
            Role::Viewer,
            "status",
        )
        .expect("a viewer may read");
    assert_eq!(who.name, "ci-view");
    let err = auth
        .check(
            &bearer(&format!("Bearer {viewer_text}")),
            Role::Admin,
            "policy push",
        )
        .expect_err("a viewer may not push");
    assert_eq!(
        err.to_string(),
        "`policy push` needs role admin; token \"ci-view\" has role viewer; ask an admin for a \
         token with role admin"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::PermissionDenied
    );
    // The scheme is case-insensitive; admin includes every lower role.
    for need in [Role::Viewer, Role::Approver, Role::Admin] {
        let who = auth
            .check(&bearer(&format!("bearer {admin_text}")), need, "x")
            .expect("admin");
        assert_eq!(who.role, Role::Admin);
    }
}

#[test]
fn missing_malformed_unknown_and_wrong_secrets_are_unauthenticated() {
    let (t, text) = stored("ops", Role::Admin);
    let id = t.id.clone();
    let auth = Authority::new([t]);
    let check = |m: &MetadataMap| auth.check(m, Role::Viewer, "status").expect_err("refused");

    let err = check(&MetadataMap::new());
    assert_eq!(err, AuthError::Missing);
    assert!(err.to_string().contains("TOLLGATE_TOKEN"), "{err}");
    assert!(err.to_string().contains("tollgate token create"), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::Unauthenticated
    );

    assert_eq!(check(&bearer(&text)), AuthError::Malformed, "no scheme");
    assert_eq!(
        check(&bearer(&format!("Basic {text}"))),
        AuthError::Malformed
    );
    assert_eq!(check(&bearer("Bearer tgt_nope")), AuthError::Malformed);

    let other = token::issue().expect("randomness").token;
    assert!(matches!(
        check(&bearer(&format!("Bearer {other}"))),
        AuthError::Unknown { .. }
    ));
    // The right id with another secret.
    let forged = format!("tgt_{id}_{}", "0".repeat(64));
    assert_eq!(
        check(&bearer(&format!("Bearer {forged}"))),
        AuthError::Unknown { id }
    );
}

#[test]
fn a_revoked_token_is_refused_at_once_and_named() {
    let (t, text) = stored("ci", Role::Admin);
    let id = t.id.clone();
    let auth = Authority::new([t]);
    let m = bearer(&format!("Bearer {text}"));
    assert!(auth.check(&m, Role::Viewer, "status").is_ok());
    assert_eq!(auth.live_admins(), 1);
    assert_eq!(
        auth.find("ci").map(|f| f.id),
        Some(id.clone()),
        "found by name"
    );
    auth.revoke(&id);
    assert_eq!(
        auth.check(&m, Role::Viewer, "status"),
        Err(AuthError::Revoked {
            name: "ci".to_owned()
        })
    );
    assert_eq!(auth.live_admins(), 0);
    assert_eq!(
        auth.find("ci"),
        None,
        "a revoked token is not found by name"
    );
    assert_eq!(auth.find(&id).map(|f| f.revoked), Some(true), "but by id");
}
