use super::*;

#[test]
fn kinds_round_trip_and_prefixes_match_whole_segments() {
    for k in AuditKind::ALL {
        assert_eq!(AuditKind::parse(k.as_str()), Some(k));
        assert_eq!(AuditKind::matching(k.as_str()), Some(vec![k]));
        assert!(k.as_str().starts_with("audit."));
    }
    let keys = Some(vec![AuditKind::KeyCreated, AuditKind::KeyRevoked]);
    assert_eq!(AuditKind::matching("key"), keys);
    assert_eq!(AuditKind::matching("audit.key"), keys);
    assert_eq!(AuditKind::matching(" key "), keys);
    assert_eq!(
        AuditKind::matching("key.created"),
        Some(vec![AuditKind::KeyCreated])
    );
    assert_eq!(
        AuditKind::matching("audit").map(|k| k.len()),
        Some(AuditKind::ALL.len())
    );
    // Only whole dotted segments: "ke" is not a prefix of "key".
    for none in [
        "",
        "ke",
        "audit.",
        "keys",
        "key.",
        "audit.key.create",
        "agent.state",
    ] {
        assert_eq!(AuditKind::matching(none), None, "{none}");
    }
}

#[test]
fn actors_name_who_without_secrets() {
    let g = super::super::apikey::generate();
    let key = ApiKey {
        key_id: g.key_id.clone(),
        name: "ci deploy".into(),
        role: Role::Operator,
        agent_ids: vec![],
        secret_sha256: g.secret_sha256,
        rate_limit: None,
        max_streams: None,
        created_at: 0,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
    };
    let a = serde_json::to_value(Actor::key(&key)).unwrap();
    assert_eq!(
        a,
        json!({"type": "key", "keyId": g.key_id, "name": "ci deploy", "role": "operator"})
    );
    assert_eq!(
        serde_json::to_value(Actor::webhook_secret(2)).unwrap(),
        json!({"type": "webhook", "name": "webhook secret 2"})
    );
    assert_eq!(
        serde_json::to_value(Actor::bootstrap()).unwrap(),
        json!({"type": "bootstrap", "name": "bootstrap key", "role": "admin"})
    );
    // A created key's entry names it, and holds nothing of its secret.
    let e = NewAudit::key_created(&Actor::bootstrap(), &key, 1_000_000).stored(7);
    let text = serde_json::to_string(&e).unwrap();
    assert!(!text.contains(&hex::encode(key.secret_sha256)));
    assert!(!text.contains(&g.plaintext[g.plaintext.len() - 64..]));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["kind"], "audit.key.created");
    assert_eq!(v["at"], "1970-01-01T00:00:01.000000+00:00");
    assert_eq!(v["target"], json!({"keyId": g.key_id}));
    assert_eq!(v["details"]["role"], "operator");
}

#[test]
fn stored_actors_read_back() {
    for a in [
        Actor::bootstrap(),
        Actor::webhook_secret(1),
        Actor::unsigned(),
        Actor::system("workflow file a.json"),
    ] {
        let back = Actor::from_stored(a.kind.as_str(), a.key_id.clone(), a.name.clone(), a.role);
        assert_eq!(back, Some(a));
    }
    assert_eq!(Actor::from_stored("robot", None, "x".into(), None), None);
    assert_eq!(
        Actor::from_stored("key", Some("k".into()), "x".into(), Some("root")),
        None
    );
}
