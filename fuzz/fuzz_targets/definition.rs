//! Workflow definitions (docs/api.md §1.6) from arbitrary text, read both as
//! JSON and as YAML: the HTTP route (`parse_json`, or serde_norway for a YAML
//! content type) and the startup file loader (`parse_definition`).
//!
//! Input: the definition text (UTF-8; other bytes skip).
//!
//! Properties checked, beyond "no panic":
//! - the route's JSON parser and the file loader's agree on every text;
//! - a refused definition names at least one field;
//! - an accepted definition re-validates from its canonical JSON (the stored
//!   form): it parses back to an equal definition, whose canonical JSON is
//!   the same text, within the size limit; its chain from every task ends
//!   within as many steps as there are tasks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use opscore::domain::workflow::{parse_definition, WorkflowDefinition, MAX_DEFINITION_BYTES};
use opscore::http::extract::parse_json;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let loader = parse_definition(text, false);
    let route = parse_json::<WorkflowDefinition>(data);
    match (&loader, &route) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "route and loader read different definitions"),
        (Err(_), Err(e)) => assert!(matches!(e.status().as_u16(), 400 | 422)),
        _ => panic!(
            "route and loader disagree: {:?} vs {:?}",
            loader.is_ok(),
            route.is_ok()
        ),
    }
    if let Ok(def) = loader {
        check(&def);
    }
    if let Ok(def) = parse_definition(text, true) {
        check(&def);
    }
});

fn check(def: &WorkflowDefinition) {
    if let Err(errors) = def.validate() {
        assert!(!errors.is_empty(), "422 that names no field");
        assert!(errors
            .iter()
            .all(|e| !e.field.is_empty() && !e.message.is_empty()));
        return;
    }
    let canonical = def.canonical_json();
    assert!(
        canonical.len() <= MAX_DEFINITION_BYTES,
        "{} bytes accepted",
        canonical.len()
    );
    let again = match parse_definition(&canonical, false) {
        Ok(d) => d,
        Err(e) => panic!("canonical form does not parse: {e}\n{canonical}"),
    };
    assert_eq!(
        &again, def,
        "canonical form reads back differently:\n{canonical}"
    );
    assert_eq!(again.validate(), Ok(()));
    assert_eq!(again.canonical_json(), canonical);
    for start in &def.tasks {
        assert!(def.task(&start.task_id).is_some());
        let mut cur = start.next_task_id.as_deref();
        let mut steps = 0;
        while let Some(id) = cur {
            steps += 1;
            assert!(
                steps <= def.tasks.len(),
                "cycle accepted from {}",
                start.task_id
            );
            cur = def.task(id).and_then(|t| t.next_task_id.as_deref());
        }
    }
}
