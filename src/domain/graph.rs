//! The task graph of a definition (docs/api.md §3.5, docs/workflows.md
//! "Parallel tasks"): which tasks each task waits for. `A.nextTaskId = B`
//! means B depends on A; `B.dependsOn = [A, C]` means B depends on A and C.
//! A task with no dependency is a start task. Pure functions, no I/O.

use std::collections::HashMap;

use super::workflow::WorkflowDefinition;
use super::FieldError;

/// Whether any task of `def` names `dependsOn`: a definition without any
/// is a plain chain (docs/api.md §1.6) and keeps the chain's rules.
/// `"dependsOn": []` marks a start task of such a definition.
pub fn has_depends_on(def: &WorkflowDefinition) -> bool {
    def.tasks.iter().any(|t| t.depends_on.is_some())
}

/// For each task (by index), the indices of the tasks it depends on, once
/// each, in definition order. Names that match no task are left out
/// (validation refuses them).
pub fn dependencies(def: &WorkflowDefinition) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = def
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), i))
        .collect();
    let mut deps = vec![Vec::new(); def.tasks.len()];
    for (i, t) in def.tasks.iter().enumerate() {
        if let Some(&j) = t.next_task_id.as_deref().and_then(|n| index.get(n)) {
            deps[j].push(i);
        }
        for d in t.depends_on.iter().flatten() {
            if let Some(&j) = index.get(d.as_str()) {
                deps[i].push(j);
            }
        }
    }
    for d in &mut deps {
        d.sort_unstable();
        d.dedup();
    }
    deps
}

/// The tasks (by index) that depend on task `of`.
pub fn dependents(deps: &[Vec<usize>], of: usize) -> Vec<usize> {
    deps.iter()
        .enumerate()
        .filter(|(_, d)| d.contains(&of))
        .map(|(i, _)| i)
        .collect()
}

/// The graph rules of a definition that names `dependsOn` somewhere
/// (ids already known to be unique, every `nextTaskId` to name a task):
/// every `dependsOn` names a task, no task is reached both by a
/// `nextTaskId` and by its own `dependsOn`, and the edges of both kinds
/// have no cycle. Each problem names its tasks.
pub fn validate(def: &WorkflowDefinition) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let index: HashMap<&str, usize> = def
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.task_id.as_str(), i))
        .collect();
    for (i, t) in def.tasks.iter().enumerate() {
        for d in t.depends_on.iter().flatten() {
            if !index.contains_key(d.as_str()) {
                errors.push(FieldError::new(
                    format!("tasks[{i}].dependsOn"),
                    format!(
                        "task '{}' depends on '{d}', which names no task of this definition",
                        t.task_id
                    ),
                ));
            }
        }
    }
    for t in &def.tasks {
        let Some(&j) = t.next_task_id.as_deref().and_then(|n| index.get(n)) else {
            continue;
        };
        let target = &def.tasks[j];
        if target.depends_on.as_ref().is_some_and(|d| !d.is_empty()) {
            errors.push(FieldError::new(
                format!("tasks[{j}].dependsOn"),
                format!(
                    "task '{}' is reached both by the nextTaskId of task '{}' and by its own dependsOn; use one or the other",
                    target.task_id, t.task_id
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    let cycle = on_cycles(&dependencies(def));
    if !cycle.is_empty() {
        let names: Vec<String> = cycle
            .iter()
            .map(|&i| format!("'{}'", def.tasks[i].task_id))
            .collect();
        errors.push(FieldError::new(
            "tasks",
            format!(
                "the tasks {} depend on each other in a cycle",
                names.join(", ")
            ),
        ));
    }
    errors
}

/// The tasks left on or between cycles: what remains after repeatedly
/// removing tasks with no unremoved dependency, then tasks no unremoved
/// task depends on. Empty for an acyclic graph.
fn on_cycles(deps: &[Vec<usize>]) -> Vec<usize> {
    let n = deps.len();
    let mut left = vec![true; n];
    loop {
        let mut changed = false;
        for i in 0..n {
            if left[i] && deps[i].iter().all(|&d| !left[d]) {
                left[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    loop {
        let mut changed = false;
        for i in 0..n {
            let needed = (0..n).any(|k| left[k] && deps[k].contains(&i));
            if left[i] && !needed {
                left[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    (0..n).filter(|&i| left[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::workflow::parse_definition;

    fn def(tasks: &str) -> WorkflowDefinition {
        parse_definition(&format!(r#"{{"id":"w","tasks":{tasks}}}"#), false).unwrap()
    }

    #[test]
    fn dependencies_follow_both_edge_kinds() {
        for (tasks, want) in [
            (
                r#"[{"taskId":"a","nextTaskId":"b"},{"taskId":"b"}]"#,
                vec![vec![], vec![0]],
            ),
            (
                r#"[{"taskId":"a"},{"taskId":"b","dependsOn":["a"]},{"taskId":"c","dependsOn":["a"]},{"taskId":"d","dependsOn":["c","b","b"]}]"#,
                vec![vec![], vec![0], vec![0], vec![1, 2]],
            ),
            (
                r#"[{"taskId":"a","dependsOn":[]},{"taskId":"b"},{"taskId":"c","nextTaskId":"d"},{"taskId":"d"}]"#,
                vec![vec![], vec![], vec![], vec![2]],
            ),
        ] {
            assert_eq!(dependencies(&def(tasks)), want, "{tasks}");
        }
        let d = dependencies(&def(
            r#"[{"taskId":"a"},{"taskId":"b","dependsOn":["a"]},{"taskId":"c","dependsOn":["a"]}]"#,
        ));
        assert_eq!(dependents(&d, 0), [1, 2]);
        assert!(dependents(&d, 2).is_empty());
    }

    #[test]
    fn validation_names_the_tasks() {
        for (tasks, field, words) in [
            (
                r#"[{"taskId":"a","dependsOn":["zz"]}]"#,
                "tasks[0].dependsOn",
                &["'a'", "'zz'"][..],
            ),
            (
                r#"[{"taskId":"a","nextTaskId":"b"},{"taskId":"b","dependsOn":["c"]},{"taskId":"c"}]"#,
                "tasks[1].dependsOn",
                &["'b'", "'a'"][..],
            ),
            (
                r#"[{"taskId":"s"},{"taskId":"a","dependsOn":["s","b"]},{"taskId":"b","dependsOn":["a"]},{"taskId":"z","dependsOn":["b"]}]"#,
                "tasks",
                &["cycle", "'a'", "'b'"][..],
            ),
            (
                r#"[{"taskId":"a","dependsOn":["a"]}]"#,
                "tasks",
                &["cycle", "'a'"][..],
            ),
            (
                r#"[{"taskId":"a","nextTaskId":"b"},{"taskId":"b"},{"taskId":"c","dependsOn":["b","c"]}]"#,
                "tasks",
                &["cycle", "'c'"][..],
            ),
        ] {
            let errors = validate(&def(tasks));
            assert_eq!(errors.len(), 1, "{tasks}: {errors:?}");
            assert_eq!(errors[0].field, field, "{tasks}");
            for w in words {
                assert!(errors[0].message.contains(w), "{tasks}: {errors:?}");
            }
        }
        // The cycle names its members, not the tasks around it.
        let e = validate(&def(
            r#"[{"taskId":"s"},{"taskId":"a","dependsOn":["s","b"]},{"taskId":"b","dependsOn":["a"]},{"taskId":"z","dependsOn":["b"]}]"#,
        ));
        assert!(!e[0].message.contains("'s'") && !e[0].message.contains("'z'"));
        for ok in [
            r#"[{"taskId":"a"},{"taskId":"b","dependsOn":["a"]},{"taskId":"c","dependsOn":["a"]},{"taskId":"d","dependsOn":["b","c"]}]"#,
            r#"[{"taskId":"a","dependsOn":[]},{"taskId":"b"},{"taskId":"c"}]"#,
            r#"[{"taskId":"a","nextTaskId":"b"},{"taskId":"b"},{"taskId":"c","dependsOn":["b"]}]"#,
        ] {
            assert!(validate(&def(ok)).is_empty(), "{ok}");
        }
    }
}
