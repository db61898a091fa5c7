//! Property tests of the pure parsers and checks that face untrusted input
//! (signature verification, timestamps, state reports, workflow
//! definitions): whatever the input, they answer without panicking, and what
//! they accept round-trips. They run under proptest as part of `cargo test`;
//! the same parsers are also fuzzed, coverage-guided, by the cargo-fuzz
//! targets in fuzz/ (README "Fuzzing"; CI runs each for a bounded time), and
//! the inputs those runs found are pinned here as plain tests.
//! PROPTEST_CASES raises the number of cases per property (default 256).

use std::time::Duration;

use chrono::Utc;
use opscore::domain::agent::{AgentId, NotifyBody};
use opscore::domain::signature::{parse_webhook_timestamp, sign, verify_signature};
use opscore::domain::state::StateReportBody;
use opscore::domain::time::{format_micros, parse_timestamp, to_micros};
use opscore::domain::workflow::parse_definition;
use proptest::prelude::*;

const TOL: Duration = Duration::from_secs(300);

proptest! {
    /// Arbitrary header values and bodies never panic the verifier, and are
    /// accepted only when they carry the right signature.
    #[test]
    fn signature_check_never_panics(ts in ".{0,40}", sig in ".{0,80}", body in proptest::collection::vec(any::<u8>(), 0..512), now in any::<i64>()) {
        let r = verify_signature(b"secret", Some(&ts), Some(&sig), &body, now, TOL);
        if r.is_ok() {
            let expected = sign(b"secret", &ts, &body);
            let given = sig.trim();
            prop_assert_eq!(given.strip_prefix("sha256=").unwrap_or(given).to_ascii_lowercase(), expected);
        }
    }

    /// A correct signature is accepted for any body and secret; flipping any
    /// one bit of the body makes it refused.
    #[test]
    fn signatures_bind_the_body(secret in proptest::collection::vec(any::<u8>(), 1..64), body in proptest::collection::vec(any::<u8>(), 1..512), flip in any::<usize>()) {
        let now = 1_700_000_000;
        let ts = now.to_string();
        let sig = sign(&secret, &ts, &body);
        prop_assert!(verify_signature(&secret, Some(&ts), Some(&sig), &body, now, TOL).is_ok());
        let mut tampered = body.clone();
        let i = flip % tampered.len();
        tampered[i] ^= 1 << (flip % 8);
        prop_assert!(verify_signature(&secret, Some(&ts), Some(&sig), &tampered, now, TOL).is_err());
    }

    /// Timestamp parsers never panic; what they accept renders and parses
    /// back to the same microsecond.
    #[test]
    fn timestamps_round_trip(s in ".{0,48}") {
        let _ = parse_webhook_timestamp(&s);
        if let Ok(dt) = parse_timestamp(&s) {
            let us = to_micros(dt);
            let again = parse_timestamp(&format_micros(us)).map(to_micros);
            prop_assert_eq!(again, Ok(us));
        }
    }

    /// Any instant in range survives the wire format.
    #[test]
    fn instants_survive_the_wire(us in 0i64..253_402_300_799_000_000) {
        prop_assert_eq!(parse_timestamp(&format_micros(us)).map(to_micros), Ok(us));
    }

    /// State report bodies: arbitrary JSON values in each field never panic
    /// validation, and an accepted report names the path's agent.
    #[test]
    fn state_reports_never_panic(agent in "[a-z0-9]{1,8}", ts in prop_oneof![Just(serde_json::json!("2026-04-21T10:00:00Z")), any::<i64>().prop_map(serde_json::Value::from), ".{0,30}".prop_map(serde_json::Value::from)],
                                 state in prop_oneof![Just(serde_json::json!("idle")), ".{0,70}".prop_map(serde_json::Value::from), Just(serde_json::Value::Null)],
                                 details in prop_oneof![Just(serde_json::json!({"k": 1})), Just(serde_json::json!([1])), Just(serde_json::Value::Null), ".{0,20}".prop_map(serde_json::Value::from)]) {
        let path = AgentId::parse(&agent).unwrap();
        let body = serde_json::json!({"agentId": agent, "timestamp": ts, "state": state, "details": details}).to_string();
        if let Ok(parsed) = serde_json::from_str::<StateReportBody>(&body) {
            if let Ok(report) = parsed.validate(&path, Utc::now(), std::time::Duration::from_secs(300)) {
                prop_assert_eq!(report.agent_id, path);
            }
        }
    }

    /// Registration bodies built from arbitrary strings never panic.
    #[test]
    fn registrations_never_panic(event in ".{0,12}", id in ".{0,140}", url in ".{0,60}", caps in proptest::collection::vec(".{0,20}", 0..5)) {
        let body = serde_json::json!({"event_type": event, "agent_details": {"agentId": id, "agentName": "n", "version": "1", "contactEndpoint": url, "capabilities": caps}}).to_string();
        if let Ok(parsed) = serde_json::from_str::<NotifyBody>(&body) {
            let _ = parsed.validate();
        }
    }

    /// Workflow definitions with random chains: validation never panics,
    /// and an accepted definition has unique ids and no cycle.
    #[test]
    fn definitions_validate_without_panicking(nexts in proptest::collection::vec(proptest::option::of(0usize..12), 0..10), dup in any::<bool>()) {
        let n = nexts.len();
        let tasks: Vec<serde_json::Value> = nexts.iter().enumerate().map(|(i, next)| {
            let id = if dup && i == 1 { "t0".to_owned() } else { format!("t{i}") };
            serde_json::json!({"taskId": id, "nextTaskId": next.map(|j| format!("t{j}"))})
        }).collect();
        let text = serde_json::json!({"id": "w", "tasks": tasks}).to_string();
        let def = parse_definition(&text, false).unwrap();
        if def.validate().is_ok() {
            let ids: std::collections::HashSet<_> = def.tasks.iter().map(|t| t.task_id.clone()).collect();
            prop_assert_eq!(ids.len(), n);
            for start in &def.tasks {
                let mut cur = start.next_task_id.clone();
                let mut steps = 0;
                while let Some(id) = cur {
                    steps += 1;
                    prop_assert!(steps <= n, "cycle accepted");
                    cur = def.task(&id).and_then(|t| t.next_task_id.clone());
                }
            }
        }
    }

    /// Arbitrary text as a YAML or JSON definition never panics the parser.
    #[test]
    fn definition_parsing_never_panics(text in ".{0,200}", yaml in any::<bool>()) {
        if let Ok(def) = parse_definition(&text, yaml) {
            let _ = def.validate();
        }
    }
}

/// A float in a task's parameters survives the canonical (stored) form
/// exactly. serde_json's default float parsing can be one ulp off, so the
/// stored definition read back differed from the one accepted; found by the
/// definition fuzz target (fuzz/corpus/definition/seed-regress-float-roundtrip).
#[test]
fn canonical_json_keeps_floats_exact() {
    let text = r#"{"id":"w","tasks":[{"taskId":"a","parameters":{"h":4111111111111111111111111111111111111111111111111111111111111111110993.0,"i":4.111111111111111e69,"j":0.1}}]}"#;
    let def = parse_definition(text, false).unwrap();
    assert_eq!(def.validate(), Ok(()));
    let canonical = def.canonical_json();
    let again = parse_definition(&canonical, false).unwrap();
    assert_eq!(again, def, "{canonical}");
    assert_eq!(again.canonical_json(), canonical);
    let params = &def.tasks[0].parameters;
    assert_eq!(params["i"].as_f64(), Some(4.111111111111111e69));
}
