//! What an agent's report means for the run in flight: which run it
//! concerns, and what it does to it.

use super::*;

#[test]
fn mentions() {
    let m = |d: Option<&str>| mention(d.map(raw).as_deref(), "run-1", "step_1", "sess-1");
    assert_eq!(m(None), Mention::Unnamed);
    assert_eq!(m(Some("null")), Mention::Unnamed);
    assert_eq!(m(Some(r#"{"x":1}"#)), Mention::Unnamed);
    assert_eq!(m(Some(r#"{"taskId":"run-1"}"#)), Mention::This);
    assert_eq!(m(Some(r#"{"taskId":"step_1"}"#)), Mention::This);
    assert_eq!(m(Some(r#"{"sessionId":"sess-1"}"#)), Mention::This);
    assert_eq!(m(Some(r#"{"sessionId":"sess-2"}"#)), Mention::Other);
    assert_eq!(
        m(Some(r#"{"sessionId":"sess-1","taskId":"x"}"#)),
        Mention::Other
    );
}

#[test]
fn report_effects() {
    use Mention::{Other, This, Unnamed};
    use ReportEffect as E;
    use RunStatus as R;
    let deadline = |received: Micros| Some(received + 4_000_000);
    let after = SENT + 1;
    // (run, what the report says of it, state, timestamp, received, busy) -> effect
    let table: Vec<(RunView, Mention, &str, Micros, Micros, bool, E)> = vec![
        // Finding 1: a heartbeat is not a finish; a task-less active
        // received after the dispatch is a start, then idle finishes.
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "finished",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "error",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "active",
            after,
            after,
            false,
            E::Started { deadline: None },
        ),
        (
            run(R::Dispatching, 1, Some(SENT)),
            Unnamed,
            "active",
            after,
            after,
            false,
            E::Started {
                deadline: deadline(after),
            },
        ),
        (
            run(R::Dispatching, 1, Some(SENT)),
            Unnamed,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "idle",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "finished",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "error",
            after,
            after,
            false,
            E::Failed,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "active",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "thinking",
            after,
            after,
            false,
            E::None,
        ),
        // Named reports are evidence by themselves.
        (
            run(R::Dispatched, 1, Some(SENT)),
            This,
            "idle",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Dispatching, 1, Some(SENT)),
            This,
            "idle",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            This,
            "error",
            after,
            after,
            false,
            E::Failed,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            This,
            "active",
            after,
            after,
            false,
            E::Started { deadline: None },
        ),
        // Finding 2: waiting for a retry, a report naming the run is honoured.
        (
            run(R::Queued, 1, Some(SENT)),
            This,
            "idle",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            This,
            "finished",
            after,
            after,
            false,
            E::Completed,
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            This,
            "active",
            after,
            after,
            false,
            E::Started {
                deadline: deadline(after),
            },
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            This,
            "active",
            after,
            after,
            true,
            E::None,
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            This,
            "error",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            Unnamed,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Queued, 1, Some(SENT)),
            Unnamed,
            "active",
            after,
            after,
            false,
            E::None,
        ),
        // Never sent: nothing can be about it.
        (
            run(R::Queued, 0, None),
            This,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        // Finding 5: stamped before the dispatch, never a start or a finish,
        // even received after it.
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "active",
            SENT - 200_000,
            after,
            false,
            E::None,
        ),
        (
            run(R::Dispatched, 1, Some(SENT)),
            This,
            "idle",
            SENT - 1,
            after,
            false,
            E::None,
        ),
        (
            run(R::Running, 1, Some(SENT)),
            Unnamed,
            "idle",
            SENT - 1,
            after,
            false,
            E::None,
        ),
        // A task-less active stamped after the dispatch but received before
        // it (agent clock ahead) is not evidence.
        (
            run(R::Dispatched, 1, Some(SENT)),
            Unnamed,
            "active",
            after,
            SENT - 1,
            false,
            E::None,
        ),
        // A report stamped before the agent's latest report that moved the
        // run is late news: an idle heartbeat stamped before the agent's
        // `active` does not finish the run, an `active` stamped before its
        // `error` does not restart it (both found by the property test).
        (
            moved(run(R::Running, 1, Some(SENT)), after + 10),
            Unnamed,
            "idle",
            after + 5,
            after + 20,
            false,
            E::None,
        ),
        (
            moved(run(R::Queued, 1, Some(SENT)), after + 10),
            This,
            "active",
            after + 5,
            after + 20,
            false,
            E::None,
        ),
        // Stamped at the same instant as the start (a quick agent's `active`
        // and `idle` within one clock tick): still the finish.
        (
            moved(run(R::Running, 1, Some(SENT)), after + 10),
            Unnamed,
            "idle",
            after + 10,
            after + 20,
            false,
            E::Completed,
        ),
        // About another run: nothing.
        (
            run(R::Running, 1, Some(SENT)),
            Other,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        // Finished runs: nothing.
        (
            run(R::Completed, 1, Some(SENT)),
            This,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Failed, 3, Some(SENT)),
            This,
            "error",
            after,
            after,
            false,
            E::None,
        ),
        (
            run(R::Cancelled, 1, Some(SENT)),
            This,
            "idle",
            after,
            after,
            false,
            E::None,
        ),
    ];
    for (i, (r, m, state, ts, rx, busy, want)) in table.into_iter().enumerate() {
        assert_eq!(
            report_effect(&r, m, &at(state, ts, rx), busy),
            want,
            "row {i}: {r:?} {m:?} {state} ts={ts} rx={rx}"
        );
    }
}

#[test]
fn which_run_a_report_concerns() {
    use Mention::{Other, This, Unnamed};
    let flying = run(RunStatus::Dispatched, 1, Some(SENT));
    let waiting = run(RunStatus::Queued, 1, Some(SENT));
    assert_eq!(
        concerned_run(&[(flying, Unnamed), (waiting, Unnamed)]),
        Some(0)
    );
    assert_eq!(
        concerned_run(&[(waiting, Unnamed), (flying, Unnamed)]),
        Some(1)
    );
    assert_eq!(concerned_run(&[(flying, Other), (waiting, This)]), Some(1));
    assert_eq!(concerned_run(&[(flying, Other), (waiting, Other)]), None);
    assert_eq!(concerned_run(&[(waiting, Unnamed)]), None);
    assert_eq!(concerned_run(&[]), None);
}
