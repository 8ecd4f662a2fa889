//! The same suite runs against both backends.

use std::path::Path;

use serde_json::json;
use tessera_core::manifest::parse_str;

use super::*;

/// Records one client-assertion `jti` on its own; false for a replay.
async fn claim_assertion(store: &Store, client_id: &str, jti: &str, expires_at: i64) -> bool {
    let claim = AssertionClaim {
        client_id: client_id.into(),
        jti: jti.into(),
        expires_at,
    };
    let results = store
        .commit_batch(
            &[],
            &[BatchItem {
                claim: Some(claim),
                event: None,
            }],
        )
        .await
        .unwrap();
    results[0].fresh
}

async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("t.db")).await.unwrap();
    (store, dir)
}

async fn postgres() -> Option<Store> {
    let url = tessera_testkit::postgres_database()?;
    Some(Store::open_postgres(&url).await.unwrap())
}

fn event(kind: AuditKind, n: i64) -> AuditEvent {
    AuditEvent {
        kind,
        actor: "test".into(),
        subject: format!("s{n}"),
        outcome: Outcome::Ok,
        detail: json!({"n": n}),
    }
}

const MESH: &str = r#"
[[workload]]
id = "spiffe://example.org/a"
owner = "o"
purpose = "p"
[[workload]]
id = "spiffe://example.org/b"
owner = "o"
purpose = "p"
scopes = ["r"]
[[grant]]
from = "spiffe://example.org/a"
to = "spiffe://example.org/b"
scopes = ["r"]
why = "test"
[[client]]
id = "c1"
workload = "spiffe://example.org/a"
auth = "client_secret"
"#;

async fn suite(store: Store) {
    // Migrations are idempotent.
    store.migrate().await.unwrap();
    assert_eq!(store.state_version().await.unwrap(), 0);

    // Apply a state with its audit record, atomically.
    let s = parse_str(Path::new("m.toml"), MESH).unwrap();
    let mut ops: Vec<Op> = s
        .workloads
        .iter()
        .cloned()
        .map(Op::UpsertWorkload)
        .collect();
    ops.extend(s.grants.iter().cloned().map(Op::UpsertGrant));
    ops.extend(s.clients.iter().cloned().map(Op::UpsertClient));
    let recs = store
        .commit(&ops, &[event(AuditKind::Apply, 0)])
        .await
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].seq, 1);
    assert_eq!(recs[0].prev_hash, GENESIS);
    assert_eq!(store.state_version().await.unwrap(), 1);
    let loaded = store.load_state().await.unwrap();
    assert_eq!(loaded.workloads.len(), 2);
    assert_eq!(loaded.workloads[0].spec, s.workloads[0]);
    assert_eq!(loaded.grants, s.grants);
    assert_eq!(loaded.clients[0].spec, s.clients[0]);
    assert!(loaded.clients[0].secret.is_none());

    // A failing op rolls back the whole commit, audit record included.
    let bad = store
        .commit(
            &[
                Op::DeleteGrant {
                    from: "spiffe://example.org/a".into(),
                    to: "spiffe://example.org/b".into(),
                },
                Op::SetClientSecret {
                    client: "nope".into(),
                    secret: ClientSecretRecord {
                        hash: "h".into(),
                        created_at: 1,
                        expires_at: None,
                    },
                },
            ],
            &[event(AuditKind::TokenDenied, 0)],
        )
        .await;
    assert!(bad.is_err());
    assert_eq!(
        store.load_state().await.unwrap().grants.len(),
        1,
        "rolled back"
    );
    assert_eq!(
        store.audit_tail(10).await.unwrap().len(),
        1,
        "no record for a rolled-back change"
    );
    assert_eq!(store.state_version().await.unwrap(), 1);

    // Secrets and revocations.
    store
        .commit(
            &[
                Op::SetClientSecret {
                    client: "c1".into(),
                    secret: ClientSecretRecord {
                        hash: "aGFzaA".into(),
                        created_at: 5,
                        expires_at: Some(99),
                    },
                },
                Op::RevokeWorkload {
                    id: "spiffe://example.org/a".into(),
                    at: 7,
                },
                Op::RevokeToken {
                    jti: "j1".into(),
                    expires_at: i64::MAX,
                    at: 7,
                },
                Op::RevokeToken {
                    jti: "j0".into(),
                    expires_at: 10,
                    at: 7,
                },
            ],
            &[event(AuditKind::SecretWritten, 1)],
        )
        .await
        .unwrap();
    let loaded = store.load_state().await.unwrap();
    assert_eq!(
        loaded.clients[0].secret.as_ref().unwrap().expires_at,
        Some(99)
    );
    assert_eq!(loaded.workloads[0].revoked_at, Some(7));
    assert_eq!(
        store.revoked_tokens(100).await.unwrap(),
        vec![("j1".to_owned(), i64::MAX)]
    );

    // Replay protection for client assertions.
    assert!(claim_assertion(&store, "c1", "x", 100).await);
    assert!(!claim_assertion(&store, "c1", "x", 100).await);
    assert!(claim_assertion(&store, "c2", "x", 100).await);
    store.sweep(101).await.unwrap();
    assert!(
        claim_assertion(&store, "c1", "x", 200).await,
        "expired claims are swept"
    );

    // Keys.
    let key = KeyRecord {
        kid: "k1".into(),
        trust_domain: "example.org".into(),
        alg: "ES256".into(),
        sealed: "c2VhbGVk".into(),
        public_jwk: "{}".into(),
        created_at: 1,
        activate_at: 2,
        retire_at: None,
    };
    store
        .commit(
            &[Op::InsertKey(key.clone())],
            &[event(AuditKind::KeysCreated, 2)],
        )
        .await
        .unwrap();
    store
        .commit(
            &[Op::RetireKey {
                kid: "k1".into(),
                retire_at: 9,
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(store.keys().await.unwrap()[0].retire_at, Some(9));

    // Group commit: concurrent appends are all durable and chained in order.
    let log = AuditLog::spawn(store.clone(), None);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(event(AuditKind::TokenIssued, n)).await
        }));
    }
    // Assertion claims ride the same group commit: the first use wins, a replay is refused,
    // even when both arrive in one batch.
    let claim = |jti: &str| AssertionClaim {
        client_id: "c9".into(),
        jti: jti.into(),
        expires_at: i64::MAX,
    };
    let (a, b) = tokio::join!(log.claim(claim("dup")), log.claim(claim("dup")));
    let mut answers = vec![a.unwrap(), b.unwrap()];
    answers.sort();
    assert_eq!(answers, vec![false, true]);
    assert!(log.claim(claim("other")).await.unwrap());
    // A claim and its record in one commit: the record only when the claim is fresh.
    let rec = log
        .append_claimed(claim("with-event"), event(AuditKind::TokenIssued, 999))
        .await
        .unwrap();
    assert!(rec.is_some(), "a fresh claim keeps its record");
    let rec = log
        .append_claimed(claim("with-event"), event(AuditKind::TokenIssued, 998))
        .await
        .unwrap();
    assert!(rec.is_none(), "a replay writes no record");
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        200,
        "every concurrent append got its own record"
    );
    assert!(seqs.iter().all(|s| (4..=204).contains(s)), "{seqs:?}");
    assert_eq!(
        store.verify_audit().await.unwrap(),
        204,
        "200 appends and the claimed record"
    );
    let last = store
        .last_audit_for("s5", "token.issued")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.detail, r#"{"n":5}"#);

    // Tampering is found and located.
    store
        .danger_execute_raw("UPDATE audit SET outcome = 'denied' WHERE seq = 50")
        .await
        .unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "record 50: its content does not match its hash (the record was changed)"
    );
    store
        .danger_execute_raw("UPDATE audit SET outcome = 'ok' WHERE seq = 50")
        .await
        .unwrap();
    store.verify_audit().await.unwrap();
    store
        .danger_execute_raw("DELETE FROM audit WHERE seq = 60")
        .await
        .unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert_eq!(err, "record 60 is missing (found 61 in its place)");
    store
        .danger_execute_raw("DELETE FROM audit WHERE seq > 59")
        .await
        .unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert!(err.contains("records were cut from the end"), "{err}");
}

/// Agents, join tokens, CAs and SVID records.
async fn identity_suite(store: Store) {
    let v0 = store.state_version().await.unwrap();
    let token = JoinTokenRecord {
        token_hash: "h1".into(),
        trust_domain: "example.org".into(),
        agent_id: "node-1".into(),
        created_at: 100,
        expires_at: 200,
    };
    store
        .commit(&[Op::InsertJoinToken(token.clone())], &[])
        .await
        .unwrap();
    assert_eq!(store.join_token("h1").await.unwrap(), Some(token));
    assert_eq!(store.join_token("nope").await.unwrap(), None);
    let redeem = |at| Op::RedeemJoinToken {
        token_hash: "h1".into(),
        at,
    };
    // Expired, then redeemed once, then refused as used; a failed redemption writes nothing.
    let expired = store
        .commit(&[redeem(200)], &[event(AuditKind::AgentJoined, 1)])
        .await;
    assert!(
        matches!(expired, Err(StoreError::Conflict(_))),
        "{expired:?}"
    );
    let agent = AgentRecord {
        id: "node-1".into(),
        trust_domain: "example.org".into(),
        joined_at: 150,
        svid_serial: "01".into(),
        svid_not_after: 3750,
        last_seen: 150,
        revoked_at: None,
        selectors: vec![],
    };
    store
        .commit(&[redeem(150), Op::InsertAgent(agent.clone())], &[])
        .await
        .unwrap();
    let again = store.commit(&[redeem(151)], &[]).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(
        store.load_state().await.unwrap().agents,
        vec![agent.clone()]
    );
    assert_ne!(
        store.state_version().await.unwrap(),
        v0,
        "a new agent is state"
    );

    let renew = Op::RenewAgent {
        id: "node-1".into(),
        svid_serial: "02".into(),
        svid_not_after: 7000,
        at: 3000,
    };
    let v1 = store.state_version().await.unwrap();
    store
        .commit(std::slice::from_ref(&renew), &[])
        .await
        .unwrap();
    assert_eq!(
        store.state_version().await.unwrap(),
        v1,
        "renewal is not state"
    );
    assert_eq!(
        store.load_state().await.unwrap().agents[0].svid_serial,
        "02"
    );
    store
        .commit(
            &[Op::RevokeAgent {
                id: "node-1".into(),
                at: 3100,
            }],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store.load_state().await.unwrap().agents[0].revoked_at,
        Some(3100)
    );
    assert!(matches!(
        store.commit(&[renew], &[]).await,
        Err(StoreError::Conflict(_))
    ));
    // Attesting again by the node does not undo a revocation.
    let again = store.commit(&[Op::AttestAgent(agent.clone())], &[]).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let sel = |s: &str| tessera_core::manifest::Selector::parse(s).unwrap();
    let mut node = AgentRecord {
        id: "k8s_prod_node-a".into(),
        selectors: vec![sel("k8s:cluster:prod"), sel("k8s:node_name:node-a")],
        ..agent.clone()
    };
    node.revoked_at = None;
    store
        .commit(&[Op::AttestAgent(node.clone())], &[])
        .await
        .unwrap();
    node.svid_serial = "03".into();
    node.selectors.pop();
    store
        .commit(&[Op::AttestAgent(node.clone())], &[])
        .await
        .unwrap();
    let agents = store.load_state().await.unwrap().agents;
    assert_eq!(agents.iter().find(|a| a.id == node.id), Some(&node));
    // Not into another trust domain under the same name.
    let moved = AgentRecord {
        trust_domain: "other.org".into(),
        ..node.clone()
    };
    assert!(matches!(
        store.commit(&[Op::AttestAgent(moved)], &[]).await,
        Err(StoreError::Conflict(_))
    ));

    let svids: Vec<SvidRecord> = (0..700)
        .map(|i| SvidRecord {
            serial: format!("{i:04x}"),
            spiffe_id: format!("spiffe://example.org/w{}", i % 2),
            agent_id: "node-1".into(),
            issued_at: i,
            not_after: i + 3600,
        })
        .collect();
    store.commit(&[Op::RecordSvids(svids)], &[]).await.unwrap();
    let got = store.svids_for("spiffe://example.org/w1", 3).await.unwrap();
    assert_eq!(
        got.iter().map(|s| s.issued_at).collect::<Vec<_>>(),
        vec![699, 697, 695]
    );

    let ca = CaRecord {
        id: "ca1".into(),
        trust_domain: "example.org".into(),
        sealed: "c2VhbGVk".into(),
        cert: "Y2VydA==".into(),
        created_at: 1,
        activate_at: 1,
        retire_at: None,
        not_after: 99,
    };
    store
        .commit(&[Op::InsertCa(ca.clone())], &[])
        .await
        .unwrap();
    store
        .commit(
            &[Op::RetireCa {
                id: "ca1".into(),
                retire_at: 50,
            }],
            &[],
        )
        .await
        .unwrap();
    let cas = store.cas().await.unwrap();
    assert_eq!(cas.len(), 1);
    assert_eq!(cas[0].retire_at, Some(50));
    assert_eq!(cas[0].cert, ca.cert);
}

async fn vault_suite(store: Store) {
    let meta = SecretRecord {
        name: "payments/stripe".into(),
        owner: "team-pay".into(),
        purpose: "charges".into(),
        content_type: "text/plain".into(),
        environment: "prod".into(),
        tags: [("tier".to_owned(), "1".to_owned())].into(),
        rotation_period: Some(86_400),
        current_version: 0,
        created_at: 10,
        updated_at: 10,
        deleted_at: None,
        purge_after: None,
    };
    let version = |v: i64| SecretVersionRecord {
        name: "payments/stripe".into(),
        version: v,
        ciphertext: format!("c{v}"),
        wrapped_key: format!("k{v}"),
        created_at: 10 + v,
        created_by: "admin".into(),
        enabled: true,
        not_before: None,
        expires_at: Some(1000),
    };
    let before = store.state_version().await.unwrap();
    store
        .commit(
            &[
                Op::UpsertSecret(meta.clone()),
                Op::InsertSecretVersion(version(1)),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        store.state_version().await.unwrap(),
        before,
        "secrets are not configuration state"
    );
    // Versions follow each other: a stale writer (2 again) or a gap (4) is a conflict, and
    // nothing of it is stored.
    store
        .commit(&[Op::InsertSecretVersion(version(2))], &[])
        .await
        .unwrap();
    for v in [2, 4] {
        assert!(matches!(
            store
                .commit(&[Op::InsertSecretVersion(version(v))], &[])
                .await,
            Err(StoreError::Conflict(_))
        ));
    }
    let got = store.secret("payments/stripe").await.unwrap().unwrap();
    assert_eq!(got.current_version, 2);
    assert_eq!(got.tags, meta.tags);
    let v1 = store
        .secret_version("payments/stripe", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1, version(1));
    // One round trip for the read path: the current version, a given one, a missing one.
    let (m, v) = store
        .secret_with_version("payments/stripe", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m.current_version, v), (2, Some(version(2))));
    let (_, v) = store
        .secret_with_version("payments/stripe", Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, Some(version(1)));
    let (_, v) = store
        .secret_with_version("payments/stripe", Some(9))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, None);
    assert!(store
        .secret_with_version("nope", None)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .secret_versions("payments/stripe")
            .await
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    store
        .commit(
            &[Op::SetSecretVersion {
                name: "payments/stripe".into(),
                version: 1,
                enabled: false,
            }],
            &[],
        )
        .await
        .unwrap();
    assert!(
        !store
            .secret_version("payments/stripe", 1)
            .await
            .unwrap()
            .unwrap()
            .enabled
    );
    // Metadata changes leave the versions alone.
    let mut changed = meta.clone();
    changed.owner = "team-new".into();
    store
        .commit(&[Op::UpsertSecret(changed)], &[])
        .await
        .unwrap();
    let got = store.secret("payments/stripe").await.unwrap().unwrap();
    assert_eq!((got.owner.as_str(), got.current_version), ("team-new", 2));
    // Purge needs a delete first; a deleted secret takes no version and is listed only on request.
    let purge = Op::PurgeSecret("payments/stripe".into());
    assert!(matches!(
        store.commit(std::slice::from_ref(&purge), &[]).await,
        Err(StoreError::Conflict(_))
    ));
    store
        .commit(
            &[Op::DeleteSecret {
                name: "payments/stripe".into(),
                at: 50,
                purge_after: 100,
            }],
            &[],
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .commit(&[Op::InsertSecretVersion(version(3))], &[])
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.secrets(false).await.unwrap().is_empty());
    assert_eq!(store.secrets(true).await.unwrap()[0].deleted_at, Some(50));
    store
        .commit(&[Op::RestoreSecret("payments/stripe".into())], &[])
        .await
        .unwrap();
    assert_eq!(store.secrets(false).await.unwrap().len(), 1);
    store
        .commit(
            &[
                Op::DeleteSecret {
                    name: "payments/stripe".into(),
                    at: 60,
                    purge_after: 100,
                },
                purge,
            ],
            &[],
        )
        .await
        .unwrap();
    assert!(store.secret("payments/stripe").await.unwrap().is_none());
    assert!(store
        .secret_version("payments/stripe", 2)
        .await
        .unwrap()
        .is_none());
}

/// Federation relationships and their bundles: stored, replaced, and removed together.
async fn federation_suite(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"keys": [{"use": "jwt-svid", "kty": "EC", "kid": "k", "crv": "P-256", "x": "a", "y": "b"}]}"#,
    )
    .unwrap();
    let s = parse_str(
        &dir.path().join("f.toml"),
        r#"
[[federation]]
trust_domain = "partner.example"
bundle_endpoint = "https://partner/bundle"
profile = "https_spiffe"
endpoint_spiffe_id = "spiffe://partner.example/tessera/server"
initial_bundle = "b.json"
"#,
    )
    .unwrap();
    let f = s.federations[0].clone();
    let bundle = |seq: i64| FederatedBundleRecord {
        trust_domain: "partner.example".into(),
        bundle: format!("{{\"keys\": [], \"spiffe_sequence\": {seq}}}"),
        sequence: Some(seq),
        fetched_at: 100 + seq,
    };
    let before = store.state_version().await.unwrap();
    store
        .commit(
            &[
                Op::UpsertFederation(f.clone()),
                Op::StoreFederatedBundle(bundle(1)),
            ],
            &[event(AuditKind::BundleUpdated, 0)],
        )
        .await
        .unwrap();
    store
        .commit(
            &[Op::StoreFederatedBundle(bundle(2))],
            &[event(AuditKind::BundleUpdated, 0)],
        )
        .await
        .unwrap();
    assert_eq!(
        store.state_version().await.unwrap(),
        before + 2,
        "agents must hear of it"
    );
    let loaded = store.load_state().await.unwrap();
    assert_eq!(loaded.federations, vec![f]);
    assert_eq!(loaded.federated_bundles, vec![bundle(2)]);
    store
        .commit(
            &[Op::DeleteFederation("partner.example".into())],
            &[event(AuditKind::Apply, 0)],
        )
        .await
        .unwrap();
    let loaded = store.load_state().await.unwrap();
    assert!(loaded.federations.is_empty() && loaded.federated_bundles.is_empty());

    // Kubernetes clusters whose agents attest by token: stored whole, removed by name.
    let c = parse_str(
        &dir.path().join("c.toml"),
        r#"
[[cluster]]
name = "prod"
trust_domain = "example.org"
issuer = "https://oidc.prod.example"
service_accounts = ["tessera:agent"]
"#,
    )
    .unwrap()
    .clusters;
    store
        .commit(
            &[Op::UpsertCluster(c[0].clone())],
            &[event(AuditKind::Apply, 0)],
        )
        .await
        .unwrap();
    assert_eq!(store.load_state().await.unwrap().clusters, c);
    store
        .commit(
            &[Op::DeleteCluster("prod".into())],
            &[event(AuditKind::Apply, 0)],
        )
        .await
        .unwrap();
    assert!(store.load_state().await.unwrap().clusters.is_empty());
}

#[tokio::test]
async fn sqlite_suite() {
    let (store, _dir) = sqlite().await;
    suite(store.clone()).await;
    identity_suite(store.clone()).await;
    vault_suite(store.clone()).await;
    federation_suite(store).await;
}

#[tokio::test]
async fn postgres_suite() {
    if let Some(store) = postgres().await {
        suite(store.clone()).await;
        identity_suite(store.clone()).await;
        vault_suite(store.clone()).await;
        federation_suite(store).await;
    }
}

#[tokio::test]
async fn reordered_records_are_found() {
    let recs: Vec<AuditRecord> = {
        let mut prev = GENESIS.to_owned();
        (1..=3)
            .map(|i| {
                let r = AuditRecord::chain(i, 0, &event(AuditKind::SvidIssued, i), &prev, None)
                    .unwrap();
                prev = r.hash.clone();
                r
            })
            .collect()
    };
    assert!(verify_chain(&recs, 0, GENESIS.into(), None, i64::MAX).is_ok());
    // Swap the contents of records 2 and 3 but keep their sequence numbers.
    let mut swapped = recs.clone();
    swapped[1] = AuditRecord {
        seq: 2,
        ..recs[2].clone()
    };
    swapped[2] = AuditRecord {
        seq: 3,
        ..recs[1].clone()
    };
    assert!(verify_chain(&swapped, 0, GENESIS.into(), None, i64::MAX).is_err());
}

#[tokio::test]
async fn sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_store, dir) = sqlite().await;
    let mode = std::fs::metadata(dir.path().join("t.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");
}

/// Storage round trip: whatever text an audit record holds (quotes, backslashes, SQL, any
/// printable Unicode, JSON escapes for control characters in the detail), it reads back byte for
/// byte from both backends, and the chain over it verifies.
fn round_trip(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    events: &[AuditEvent],
) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
    rt.block_on(async {
        let before = store.audit_after(0, i64::MAX).await.unwrap().len() as i64;
        store.commit(&[], events).await.unwrap();
        let back = store.audit_after(before, i64::MAX).await.unwrap();
        proptest::prop_assert_eq!(back.len(), events.len());
        for (e, r) in events.iter().zip(&back) {
            proptest::prop_assert_eq!(r.kind.as_str(), e.kind.as_str());
            proptest::prop_assert_eq!(&r.actor, &e.actor);
            proptest::prop_assert_eq!(&r.subject, &e.subject);
            proptest::prop_assert_eq!(r.outcome.as_str(), e.outcome.as_str());
            let detail: serde_json::Value = serde_json::from_str(&r.detail).unwrap();
            proptest::prop_assert_eq!(&detail, &e.detail);
        }
        proptest::prop_assert!(store.verify_audit().await.is_ok());
        Ok(())
    })
}

fn arb_event() -> impl proptest::strategy::Strategy<Value = AuditEvent> {
    use proptest::prelude::*;
    // Text columns take printable text (PostgreSQL's TEXT refuses NUL; the server never puts
    // raw input there unparsed); the JSON detail takes anything, control characters included.
    let text = "[\\PC'\"\\\\;%_]{0,40}";
    (
        proptest::sample::select(AuditKind::ALL),
        text,
        text,
        any::<String>(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(|(kind, actor, subject, free, n, b)| AuditEvent {
            kind,
            actor,
            subject,
            outcome: if b { Outcome::Ok } else { Outcome::Denied },
            detail: json!({"free": free, "n": n, "nested": {"list": [free, n]}}),
        })
}

#[test]
fn audit_records_round_trip_on_both_backends() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sqlite_store, _dir) = rt.block_on(sqlite());
    let pg = rt.block_on(postgres());
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 48,
        ..Default::default()
    });
    runner
        .run(&proptest::collection::vec(arb_event(), 1..6), |events| {
            round_trip(&rt, &sqlite_store, &events)?;
            if let Some(pg) = &pg {
                round_trip(&rt, pg, &events)?;
            }
            Ok(())
        })
        .unwrap();
}

/// A database the hand-written runner migrated (`schema_migrations`, every version applied)
/// opens under sqlx's migrator without re-running anything: its versions move to
/// `_sqlx_migrations` with sqlx's checksums, the old table goes, the data stays.
async fn legacy_database_is_bridged<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    open: impl std::future::Future<Output = Result<Store>>,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    String: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY)")
        .execute(&mut *conn)
        .await
        .unwrap();
    for m in migrate::MIGRATOR.iter() {
        sqlx::raw_sql(m.sql.as_ref())
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::raw_sql(&format!(
            "INSERT INTO schema_migrations (version) VALUES ({})",
            m.version
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    sqlx::raw_sql("INSERT INTO meta (key, value) VALUES ('kept', 'yes')")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let store = open.await.unwrap();
    assert_eq!(store.meta("kept").await.unwrap().as_deref(), Some("yes"));
    let (n, ok): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), SUM(CASE WHEN success THEN 1 ELSE 0 END) FROM _sqlx_migrations",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let expected = i64::try_from(migrate::MIGRATOR.iter().count()).unwrap();
    assert_eq!((n, ok), (expected, expected));
    // The old table is gone, so the bridge runs once; opening again changes nothing.
    assert!(sqlx::raw_sql("SELECT version FROM schema_migrations")
        .execute(pool)
        .await
        .is_err());
    drop(store);
}

#[tokio::test]
async fn sqlite_legacy_schema_is_bridged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("legacy.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    legacy_database_is_bridged(&pool, Store::open_sqlite(&path)).await;
    Store::open_sqlite(&path).await.unwrap();
}

#[tokio::test]
async fn postgres_legacy_schema_is_bridged() {
    let Some(url) = tessera_testkit::postgres_database() else {
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    legacy_database_is_bridged(&pool, Store::open_postgres(&url)).await;
    Store::open_postgres(&url).await.unwrap();
}

#[test]
fn audit_kinds_round_trip_by_name_and_are_unique() {
    let mut names = std::collections::HashSet::new();
    for k in AuditKind::ALL {
        assert!(names.insert(k.as_str()), "`{k}` is listed twice");
        assert_eq!(k.as_str().parse::<AuditKind>().unwrap(), *k);
        assert_eq!(serde_json::to_value(k).unwrap(), json!(k.as_str()));
    }
    assert!("token.minted".parse::<AuditKind>().is_err());
}

/// Finding 3: whoever can write the database but does not hold the key cannot remove a
/// record and re-chain the rest (with plain SHA-256, as the chain was before, or another key);
/// records written before the chain was keyed still verify.
#[tokio::test]
async fn a_keyed_chain_cannot_be_rewritten_without_the_key() {
    let (store, _dir) = sqlite().await;
    let log = AuditLog::spawn(store.clone(), None);
    for i in 1..=3 {
        log.append(event(AuditKind::SvidIssued, i)).await.unwrap();
    }
    store
        .key_audit_chain(AuditKey::new(&[7; 32]))
        .await
        .unwrap();
    for i in 4..=8 {
        log.append(event(AuditKind::SvidIssued, i)).await.unwrap();
    }
    assert_eq!(
        store.verify_audit().await.unwrap(),
        8,
        "legacy records still verify"
    );
    let all = store.audit_after(0, 100).await.unwrap();
    assert!(!all[2].hash.starts_with("k1:") && all[3].hash.starts_with("k1:"));

    // Delete record 5 and re-chain 6..8 as the unkeyed chain would, head included.
    let rechain = |key: Option<&AuditKey>| {
        let mut prev = all[3].hash.clone();
        let mut sql = String::from("DELETE FROM audit WHERE seq >= 5;");
        for (n, r) in all[5..].iter().enumerate() {
            let e = event(AuditKind::SvidIssued, 6 + n as i64);
            let seq = 5 + n as i64;
            let rec = AuditRecord::chain(seq, r.at, &e, &prev, key).unwrap();
            sql.push_str(&format!(
                "INSERT INTO audit (seq, at, kind, actor, subject, outcome, detail, prev_hash, hash) VALUES ({seq}, {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}');",
                rec.at, rec.kind, rec.actor, rec.subject, rec.outcome, rec.detail, rec.prev_hash, rec.hash
            ));
            prev = rec.hash;
        }
        sql.push_str(&format!(
            "UPDATE meta SET value = '7 {prev}' WHERE key = 'audit_head';"
        ));
        sql
    };
    let snapshot = store.audit_after(0, 100).await.unwrap();
    store.danger_execute_raw(&rechain(None)).await.unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert!(err.contains("record 5: it is not keyed"), "{err}");
    store
        .danger_execute_raw(&rechain(Some(&AuditKey::new(&[8; 32]))))
        .await
        .unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert!(
        err.contains("record 5: its content does not match"),
        "{err}"
    );
    // The legacy marker is keyed too: moving it forward does not cover rewritten records.
    store
        .danger_execute_raw(&format!(
            "{} UPDATE meta SET value = '8 k1:00' WHERE key = 'audit_legacy_until';",
            rechain(None)
        ))
        .await
        .unwrap();
    let err = store.verify_audit().await.unwrap_err().to_string();
    assert!(err.contains("it is not keyed"), "{err}");
    drop(snapshot);
}

/// What an attacker who can write the database does: replace the records with `records`
/// re-chained under `key` (the real one when they hold the KEK, `None` or another when not),
/// move the head, and, when `retile`, rebuild the whole tree from the new records.
async fn rewrite(store: &Store, records: &[AuditRecord], key: Option<&AuditKey>, retile: bool) {
    let mut sql = String::from("DELETE FROM audit;");
    let mut prev = GENESIS.to_owned();
    for (i, r) in records.iter().enumerate() {
        let seq = i as i64 + 1;
        let e = AuditEvent {
            kind: r.kind.parse().unwrap(),
            actor: r.actor.clone(),
            subject: r.subject.clone(),
            outcome: Outcome::Ok,
            detail: serde_json::from_str(&r.detail).unwrap(),
        };
        let rec = AuditRecord::chain(seq, r.at, &e, &prev, key).unwrap();
        sql.push_str(&format!(
            "INSERT INTO audit (seq, at, kind, actor, subject, outcome, detail, prev_hash, hash) VALUES ({seq}, {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}');",
            rec.at, rec.kind, rec.actor, rec.subject, rec.outcome, rec.detail, rec.prev_hash, rec.hash
        ));
        prev = rec.hash;
    }
    sql.push_str(&format!(
        "UPDATE meta SET value = '{} {prev}' WHERE key = 'audit_head';",
        records.len()
    ));
    if retile {
        sql.push_str("DELETE FROM audit_tiles; DELETE FROM meta WHERE key = 'log_size';");
    }
    store.danger_execute_raw(&sql).await.unwrap();
    if retile {
        store.extend_log(1_000_000).await.unwrap();
    }
}

fn checkpoint_of(size: u64, root: tessera_log::Hash) -> tessera_log::Checkpoint {
    tessera_log::Checkpoint {
        origin: "test/audit".into(),
        size,
        root,
        extensions: vec![],
    }
}

/// The transparency log: grown in steps, proofs from its tiles, and every rewrite an attacker
/// can make — with or without the audit key, tree rebuilt or not — refused against a
/// checkpoint kept outside the database, naming the record or the narrowest range.
async fn log_suite(store: Store) {
    use tessera_log::tree::{inclusion_proof, root, verify_inclusion};
    let key = AuditKey::new(&[7; 32]);
    store.key_audit_chain(key.clone()).await.unwrap();
    let log = AuditLog::spawn(store.clone(), None);
    let base = store
        .audit_tail(1)
        .await
        .unwrap()
        .first()
        .map_or(0, |r| r.seq);
    for i in 0..600 {
        log.append(event(AuditKind::TokenIssued, i)).await.unwrap();
    }
    assert_eq!(store.extend_log(100).await.unwrap(), 100);
    let size = store.extend_log(100_000).await.unwrap();
    assert_eq!(size, base as u64 + 600);
    let root_at = |n: u64| {
        let store = store.clone();
        async move { store.with_tree(|src| root(src, n)).await.unwrap() }
    };
    let cp = checkpoint_of(size, root_at(size).await);
    let early = (200, root_at(200).await);
    assert_eq!(
        store.verify_log(Some(&cp), &[early]).await.unwrap(),
        size as i64
    );

    let proof = store
        .with_tree(|src| inclusion_proof(src, 299, size))
        .await
        .unwrap();
    let rec = store.audit_record(300).await.unwrap().unwrap();
    verify_inclusion(
        &tessera_log::leaf_hash(&rec.leaf().to_bytes()),
        299,
        size,
        &proof,
        &cp.root,
    )
    .unwrap();

    let original = store.audit_after(0, 100_000).await.unwrap();
    let edited = |seq: usize| {
        let mut v = original.clone();
        v[seq - 1].detail = r#"{"n":-1}"#.into();
        v
    };
    let verify = || {
        let store = store.clone();
        let cp = cp.clone();
        async move {
            store
                .verify_log(Some(&cp), &[early])
                .await
                .unwrap_err()
                .to_string()
        }
    };

    // Without the key: an edit re-chained unkeyed, or under another key, is named.
    rewrite(&store, &edited(300), None, true).await;
    assert!(
        verify().await.contains("record 1: it is not keyed"),
        "{}",
        verify().await
    );
    rewrite(&store, &edited(300), Some(&AuditKey::new(&[8; 32])), true).await;
    assert!(
        verify().await.starts_with("record 1: its content"),
        "{}",
        verify().await
    );
    // With the key but the tree left alone: the record no longer matches its leaf.
    rewrite(&store, &original, Some(&key), true).await;
    rewrite(&store, &edited(300), Some(&key), false).await;
    assert_eq!(
        verify().await,
        "record 300: it does not match its leaf in the log's tree (the record or the tree was changed)"
    );
    // With the key and the tree rebuilt: only the checkpoints kept elsewhere tell, and the
    // stored one at 200 (signed; not re-signable without the log key) narrows it.
    rewrite(&store, &edited(300), Some(&key), true).await;
    assert_eq!(
        verify().await,
        format!("records 201 to {size} do not hash to the root of checkpoint {size}: one of them was changed, removed or reordered, and the chain and tree recomputed to hide it")
    );
    // Deleted, reordered: the same.
    let mut deleted = original.clone();
    deleted.remove(400);
    deleted.push(original[400].clone());
    rewrite(&store, &deleted, Some(&key), true).await;
    assert!(
        verify().await.starts_with("records 201 to"),
        "{}",
        verify().await
    );
    let mut reordered = original.clone();
    reordered.swap(250, 251);
    rewrite(&store, &reordered, Some(&key), true).await;
    assert!(
        verify().await.starts_with("records 201 to"),
        "{}",
        verify().await
    );
    // Truncated, head and tree recomputed: the checkpoint covers more than is left.
    rewrite(&store, &original[..500], Some(&key), true).await;
    assert_eq!(
        verify().await,
        format!("the log ends at record 500 but checkpoint {size} covers {size} records (records 501 to {size} were removed)")
    );
    // Put back exactly as it was: it verifies again.
    rewrite(&store, &original, Some(&key), true).await;
    assert_eq!(
        store.verify_log(Some(&cp), &[early]).await.unwrap(),
        size as i64
    );
    let forged = checkpoint_of(size, [1; 32]);
    assert!(store.verify_log(Some(&forged), &[]).await.is_err());
    let credential = store.record_of_credential("nope").await.unwrap();
    assert!(credential.is_none());
}

#[tokio::test]
async fn sqlite_log_suite() {
    let (store, _dir) = sqlite().await;
    log_suite(store).await;
}

#[tokio::test]
async fn postgres_log_suite() {
    if let Some(store) = postgres().await {
        log_suite(store).await;
    }
}

/// A database as the release before the log left it (schema up to 0005, records and a keyed
/// chain, no tree): upgraded in place, every record kept, the old chain still verifying, and
/// the records become the tree's first leaves.
async fn upgrade_from_before_the_log(
    store: Store,
    reopen: impl std::future::Future<Output = Store>,
) {
    let key = AuditKey::new(&[5; 32]);
    store.key_audit_chain(key.clone()).await.unwrap();
    let log = AuditLog::spawn(store.clone(), None);
    for i in 0..300 {
        log.append(event(AuditKind::TokenIssued, i)).await.unwrap();
    }
    let before = store.audit_after(0, 10_000).await.unwrap();
    // Back to the previous release's schema, records as they were.
    store
        .danger_execute_raw(
            "DROP TABLE audit_tiles; DROP TABLE audit_checkpoints; DROP INDEX audit_credential; \
             ALTER TABLE audit DROP COLUMN credential; DELETE FROM meta WHERE key = 'log_size'; \
             DELETE FROM _sqlx_migrations WHERE version = 6;",
        )
        .await
        .unwrap();
    drop(log);
    let store = reopen.await;
    store.key_audit_chain(key).await.unwrap();
    let after = store.audit_after(0, 10_000).await.unwrap();
    assert_eq!(after.len(), before.len(), "no record lost");
    assert!(after
        .iter()
        .zip(&before)
        .all(|(a, b)| (a.seq, &a.hash, &a.detail) == (b.seq, &b.hash, &b.detail)));
    assert_eq!(store.log_size().await.unwrap(), 0);
    let n = before.len() as u64;
    assert_eq!(store.extend_log(100_000).await.unwrap(), n);
    let root = store
        .with_tree(|src| tessera_log::tree::root(src, n))
        .await
        .unwrap();
    let cp = checkpoint_of(n, root);
    assert_eq!(store.verify_log(Some(&cp), &[]).await.unwrap(), n as i64);
    // New records continue the same chain and the same tree.
    AuditLog::spawn(store.clone(), None)
        .append(event(AuditKind::TokenIssued, 1000))
        .await
        .unwrap();
    assert_eq!(store.extend_log(100_000).await.unwrap(), n + 1);
    assert_eq!(
        store.verify_log(Some(&cp), &[]).await.unwrap(),
        n as i64 + 1
    );
}

#[tokio::test]
async fn sqlite_upgrades_from_before_the_log() {
    let (store, dir) = sqlite().await;
    let path = dir.path().join("t.db");
    upgrade_from_before_the_log(
        store,
        async move { Store::open_sqlite(&path).await.unwrap() },
    )
    .await;
}

#[tokio::test]
async fn postgres_upgrades_from_before_the_log() {
    let Some(url) = tessera_testkit::postgres_database() else {
        return;
    };
    let store = Store::open_postgres(&url).await.unwrap();
    upgrade_from_before_the_log(
        store,
        async move { Store::open_postgres(&url).await.unwrap() },
    )
    .await;
}

#[tokio::test]
async fn old_checkpoints_are_thinned_to_one_an_hour() {
    let (store, _dir) = sqlite().await;
    // One every six minutes for four hours, up to now.
    let now = 1_000_000;
    let at = |i: i64| now - 4 * 3600 + i * 360;
    let mut sql = String::new();
    for i in 0..=40 {
        sql.push_str(&format!(
            "INSERT INTO audit_checkpoints (size, at, note) VALUES ({i}, {}, 'n');",
            at(i)
        ));
    }
    store.danger_execute_raw(&sql).await.unwrap();
    let removed = store.prune_checkpoints(now).await.unwrap();
    let after: Vec<u64> = store
        .checkpoints()
        .await
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(41 - removed, after.len() as u64);
    // The last hour whole (i = 30..=40), then the last of each earlier hour.
    let old: Vec<u64> = after
        .iter()
        .copied()
        .filter(|&s| at(s as i64) < now - 3600)
        .collect();
    assert!(after.ends_with(&(30..=40).collect::<Vec<_>>()), "{after:?}");
    assert!(!old.is_empty() && old.len() <= 4, "{old:?}");
    for pair in old.windows(2) {
        assert_ne!(
            at(pair[0] as i64) / 3600,
            at(pair[1] as i64) / 3600,
            "{old:?}"
        );
    }
}
