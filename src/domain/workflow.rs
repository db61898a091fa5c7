//! Workflow definitions (docs/api.md §1.6) and the rules that move a session's
//! tasks along: what a state report means for a task in flight, and how long
//! to wait before a retry. Pure functions, no I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::FieldError;

/// Most tasks one definition may hold.
pub const MAX_TASKS: usize = 256;
/// Longest id (definition or task).
pub const MAX_ID_LEN: usize = 128;
/// Largest serialised definition accepted.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Most retries a task may ask for.
pub const MAX_RETRIES_LIMIT: u32 = 100;
/// Longest task timeout or delay, in seconds (one week).
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;
/// Retries when a task does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Why a run failed when its agent's lease ran out while it was in flight.
pub const AGENT_STALE: &str = "agent stale";

/// A workflow definition as stored and served. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDefinition {
    /// Unique id.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// Optional description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Optional version string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The tasks; execution starts at the first.
    #[serde(default)]
    pub tasks: Vec<TaskDefinition>,
}

/// One task of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDefinition {
    /// Unique within the definition.
    pub task_id: String,
    /// Human name; sent to the agent as `task_name`.
    #[serde(default)]
    pub name: String,
    /// The capability the task needs (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_capability: Option<String>,
    /// The task's payload when it is not the first task given an
    /// `initialPayload`.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub parameters: Value,
    /// The task after this one, or null for the last.
    #[serde(default)]
    pub next_task_id: Option<String>,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// How long the agent may take once dispatched; server default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Wait before the task becomes due.
    #[serde(default)]
    pub delay_seconds: u64,
    /// Tasks that must complete before this one is due (docs/api.md §3.5).
    /// Present on any task (`[]` for a start task), the definition is a
    /// graph: every task with no dependency and no predecessor starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    /// How long a due run may wait for an agent before its attempt fails
    /// (docs/api.md §3.6); the server default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_seconds: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

fn default_retries() -> u32 {
    DEFAULT_MAX_RETRIES
}

/// Parse a definition from JSON or YAML text. `yaml` picks the format (file
/// extension); JSON is also valid YAML but is parsed as JSON for exact errors.
pub fn parse_definition(text: &str, yaml: bool) -> Result<WorkflowDefinition, String> {
    if yaml {
        serde_norway::from_str(text).map_err(|e| format!("invalid YAML: {e}"))
    } else {
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
    }
}

/// [`parse_definition`] for a file read from disk: the error gives the line,
/// the column and the reason, and never the file's content. The parsers'
/// own messages quote what they found (`invalid type: string "…"`), and a
/// file in the workflows directory may be anything, a key among them.
pub fn parse_definition_file(text: &str, yaml: bool) -> Result<WorkflowDefinition, String> {
    let (kind, at, message) = if yaml {
        match serde_norway::from_str(text) {
            Ok(def) => return Ok(def),
            Err(e) => (
                "YAML",
                e.location().map(|l| (l.line(), l.column())),
                e.to_string(),
            ),
        }
    } else {
        match serde_json::from_str(text) {
            Ok(def) => return Ok(def),
            Err(e) => ("JSON", Some((e.line(), e.column())), e.to_string()),
        }
    };
    // Both parsers end their message with the position; it is given apart.
    let reason = message
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .to_owned();
    let reason = elide_quoted(&reason);
    Err(match at {
        Some((line, column)) => format!("invalid {kind} at line {line}, column {column}: {reason}"),
        None => format!("invalid {kind}: {reason}"),
    })
}

/// `message` with what every quoted part (`"…"`, `` `…` ``) holds replaced
/// by `…`: what a parser quotes is text from the input.
fn elide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in message.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    out.push(c);
                    quote = None;
                }
            }
            None => {
                out.push(c);
                if matches!(c, '"' | '`') {
                    out.push('…');
                    quote = Some(c);
                }
            }
        }
    }
    out
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl WorkflowDefinition {
    /// Check the rules of docs/api.md §1.6: ids well formed and unique, every
    /// `nextTaskId` names a task, no cycle, sizes bounded. Returns every
    /// problem found, each naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if !valid_id(&self.id) {
            errors.push(FieldError::new(
                "id",
                format!("must be 1 to {MAX_ID_LEN} characters of letters, digits, '.', '_', ':' and '-'"),
            ));
        }
        if self.tasks.len() > MAX_TASKS {
            errors.push(FieldError::new(
                "tasks",
                format!("at most {MAX_TASKS} tasks"),
            ));
            return Err(errors);
        }
        let mut seen = std::collections::HashMap::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let f = |name: &str| format!("tasks[{i}].{name}");
            if !valid_id(&t.task_id) {
                errors.push(FieldError::new(
                    f("taskId"),
                    "must be 1 to 128 characters of letters, digits, '.', '_', ':' and '-'",
                ));
            } else if seen.insert(t.task_id.as_str(), i).is_some() {
                errors.push(FieldError::new(
                    f("taskId"),
                    format!("duplicate task id '{}'", t.task_id),
                ));
            }
            if !t.parameters.is_object() {
                errors.push(FieldError::new(f("parameters"), "must be a JSON object"));
            }
            if t.max_retries > MAX_RETRIES_LIMIT {
                errors.push(FieldError::new(
                    f("maxRetries"),
                    format!("must be at most {MAX_RETRIES_LIMIT}"),
                ));
            }
            if t.timeout_seconds.is_some_and(|s| s == 0 || s > MAX_SECONDS) {
                errors.push(FieldError::new(
                    f("timeoutSeconds"),
                    format!("must be 1 to {MAX_SECONDS}"),
                ));
            }
            if t.queue_timeout_seconds
                .is_some_and(|s| s == 0 || s > MAX_SECONDS)
            {
                errors.push(FieldError::new(
                    f("queueTimeoutSeconds"),
                    format!("must be 1 to {MAX_SECONDS}"),
                ));
            }
            if t.delay_seconds > MAX_SECONDS {
                errors.push(FieldError::new(
                    f("delaySeconds"),
                    format!("must be at most {MAX_SECONDS}"),
                ));
            }
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(next) = &t.next_task_id {
                if !seen.contains_key(next.as_str()) {
                    errors.push(FieldError::new(
                        format!("tasks[{i}].nextTaskId"),
                        format!("names no task of this definition: '{next}'"),
                    ));
                }
            }
        }
        let graph = super::graph::has_depends_on(self);
        if errors.is_empty() && graph {
            errors = super::graph::validate(self);
        }
        if errors.is_empty() && !graph {
            // Every next exists and ids are unique: walk from each task; a
            // walk longer than the task count has revisited a task.
            for (i, start) in self.tasks.iter().enumerate() {
                let mut cur = start.next_task_id.as_deref();
                let mut steps = 0;
                while let Some(id) = cur {
                    steps += 1;
                    if steps > self.tasks.len() {
                        errors.push(FieldError::new(
                            format!("tasks[{i}].nextTaskId"),
                            format!("the chain from task '{}' has a cycle", start.task_id),
                        ));
                        break;
                    }
                    cur = seen
                        .get(id)
                        .and_then(|&j| self.tasks[j].next_task_id.as_deref());
                }
                if !errors.is_empty() {
                    break;
                }
            }
        }
        if errors.is_empty() && !graph {
            // Execution starts at the first task and follows nextTaskId: a
            // task off that chain would never run.
            let mut reached = vec![false; self.tasks.len()];
            let mut cur = self.tasks.first().map(|_| 0);
            while let Some(i) = cur.filter(|&i| !reached[i]) {
                reached[i] = true;
                cur = self.tasks[i]
                    .next_task_id
                    .as_deref()
                    .and_then(|id| seen.get(id).copied());
            }
            for (i, t) in self.tasks.iter().enumerate().filter(|(i, _)| !reached[*i]) {
                errors.push(FieldError::new(
                    format!("tasks[{i}].taskId"),
                    format!(
                        "task '{}' is unreachable: the chain from the first task '{}' never gets to it",
                        t.task_id, self.tasks[0].task_id
                    ),
                ));
            }
        }
        if errors.is_empty() {
            if let Ok(text) = serde_json::to_string(self) {
                if text.len() > MAX_DEFINITION_BYTES {
                    errors.push(FieldError::new(
                        "body",
                        format!("definition is larger than {MAX_DEFINITION_BYTES} bytes"),
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The task with this id.
    pub fn task(&self, task_id: &str) -> Option<&TaskDefinition> {
        self.tasks.iter().find(|t| t.task_id == task_id)
    }

    /// The canonical stored form: compact JSON with defaults filled in, so
    /// two bodies that mean the same definition compare equal.
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Which agents may take a session's tasks (docs/api.md §3.3): those with
/// the capability, when set, and among the agent ids, when any are given.
/// Empty: every registered agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSelector {
    /// A capability every chosen agent has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// The agents to choose among.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<Vec<String>>,
}

impl AgentSelector {
    /// The selector of a per-agent trigger (docs/api.md §1.4): a pool of
    /// one.
    pub fn one(agent: &str) -> Self {
        Self {
            capability: None,
            agent_ids: Some(vec![agent.to_owned()]),
        }
    }

    /// Check it: a capability and every agent id 1 to 128 characters, at
    /// most [`MAX_TASKS`] agent ids. Problems name their field under
    /// `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(c) = &self.capability {
            if c.is_empty() || c.len() > MAX_ID_LEN {
                errors.push(FieldError::new(
                    format!("{prefix}.capability"),
                    format!("must be 1 to {MAX_ID_LEN} characters"),
                ));
            }
        }
        if let Some(ids) = &self.agent_ids {
            if ids.len() > 1000 {
                errors.push(FieldError::new(
                    format!("{prefix}.agentIds"),
                    "at most 1000 agent ids",
                ));
            }
            for (i, id) in ids.iter().enumerate() {
                if !valid_id(id) {
                    errors.push(FieldError::new(
                        format!("{prefix}.agentIds[{i}]"),
                        "must be an agent id: 1 to 128 characters of letters, digits, '.', '_', ':' and '-'",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Session lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Created; its first task waits for dispatch.
    Started,
    /// A task has been dispatched.
    Running,
    /// Every task finished.
    Completed,
    /// A task failed for good.
    Failed,
    /// An operator cancelled it.
    Cancelled,
}

impl SessionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 5] = [
        Self::Started,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "started" => Self::Started,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// No further change happens to a session in this status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Task-run lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting to be due, or for its agent to be free.
    Queued,
    /// Claimed by a dispatcher, being sent.
    Dispatching,
    /// Accepted by the framework; the agent has not said it started.
    Dispatched,
    /// The agent reported `active`.
    Running,
    /// Done.
    Completed,
    /// Failed for good.
    Failed,
    /// Its session was cancelled.
    Cancelled,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Dispatching,
        Self::Dispatched,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// Stored/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatching => "dispatching",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parse the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "dispatching" => Self::Dispatching,
            "dispatched" => Self::Dispatched,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// States that can move a task along; reports of any other state are stored
/// and shown but mean nothing to the engine.
pub const MEANINGFUL_STATES: [&str; 4] = ["active", "idle", "finished", "error"];

/// Exponential backoff settings.
/// Its `Default` is that of the settings (`OPSCORE_*`), written in `config`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry, in milliseconds.
    pub base_ms: u64,
    /// Growth per attempt.
    pub factor: f64,
    /// Longest delay, in milliseconds.
    pub cap_ms: u64,
}

impl Backoff {
    /// Delay before retry number `attempt` (1 for the first retry), with
    /// "equal jitter": half the exponential delay plus a random share of the
    /// other half, so retries spread out but never come back immediately.
    /// `unit` is a random number in [0, 1).
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let exp = self.base_ms as f64 * self.factor.powi(attempt.saturating_sub(1).min(64) as i32);
        let capped = exp.min(self.cap_ms as f64).max(0.0);
        let half = capped / 2.0;
        (half + half * unit.clamp(0.0, 1.0)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::{RunStatus, SessionStatus};

    /// `ALL` holds each status once, and each round-trips through its
    /// stored name.
    #[test]
    fn every_status_is_listed_once() {
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
            assert_eq!(RunStatus::ALL.iter().filter(|&&o| o == s).count(), 1);
        }
        for s in SessionStatus::ALL {
            assert_eq!(SessionStatus::parse(s.as_str()), Some(s));
            assert_eq!(SessionStatus::ALL.iter().filter(|&&o| o == s).count(), 1);
        }
    }

    #[test]
    fn file_errors_give_the_position_never_the_content() {
        for (text, yaml, at) in [
            ("opk_0123_xyzzy\n", true, "line 1, column 1"),
            (
                "root:x:0:0:xyzzy:/root:/bin/bash\n",
                true,
                "line 1, column 1",
            ),
            (
                "{\"id\": \"w\", \"tasks\": \"xyzzy\"}",
                false,
                "line 1, column",
            ),
            (
                "{\"id\": \"w\",\n \"tasks\": [{\"taskId\": \"t\", \"maxRetries\": \"xyzzy\"}]}",
                false,
                "line 2",
            ),
            ("xyzzy", false, "line 1, column 1"),
        ] {
            let e = parse_definition_file(text, yaml).expect_err(text);
            assert!(e.contains(at), "{e}");
            assert!(!e.contains("xyzzy"), "{e}");
        }
        assert!(parse_definition_file("id: w\ntasks: []\n", true).is_ok());
    }

    use super::*;

    fn def(json: &str) -> WorkflowDefinition {
        parse_definition(json, false).unwrap()
    }

    const SAMPLE: &str = r#"{"id":"sample_workflow_id","name":"Sample","description":"optional","version":"1.0",
 "tasks":[{"taskId":"step_1","name":"First","agentCapability":"summarise","parameters":{"message":"hi"},"nextTaskId":"step_2"},
          {"taskId":"step_2","name":"Second","parameters":{"value":123},"nextTaskId":null}]}"#;

    #[test]
    fn sample_is_valid_with_defaults() {
        let d = def(SAMPLE);
        assert_eq!(d.validate(), Ok(()));
        assert_eq!(d.tasks[1].max_retries, 3);
        assert_eq!(d.tasks[0].delay_seconds, 0);
    }

    #[test]
    fn yaml_and_json_mean_the_same() {
        let yaml = "id: sample_workflow_id\nname: Sample\ndescription: optional\nversion: '1.0'\ntasks:\n  - taskId: step_1\n    name: First\n    agentCapability: summarise\n    parameters: {message: hi}\n    nextTaskId: step_2\n  - taskId: step_2\n    name: Second\n    parameters: {value: 123}\n    nextTaskId: null\n";
        let y = parse_definition(yaml, true).unwrap();
        assert_eq!(y.canonical_json(), def(SAMPLE).canonical_json());
    }

    #[test]
    fn refuses_duplicates_dangling_and_cycles() {
        let dup = def(r#"{"id":"w","tasks":[{"taskId":"a"},{"taskId":"a"}]}"#);
        assert!(dup.validate().unwrap_err()[0].message.contains("duplicate"));
        let dangling = def(r#"{"id":"w","tasks":[{"taskId":"a","nextTaskId":"zz"}]}"#);
        assert!(dangling.validate().unwrap_err()[0]
            .message
            .contains("names no task"));
        let cycle = def(
            r#"{"id":"w","tasks":[{"taskId":"a","nextTaskId":"b"},{"taskId":"b","nextTaskId":"a"}]}"#,
        );
        assert!(cycle.validate().unwrap_err()[0].message.contains("cycle"));
        let unreachable = def(
            r#"{"id":"w","tasks":[{"taskId":"a","nextTaskId":"c"},{"taskId":"b","nextTaskId":"c"},{"taskId":"c"},{"taskId":"d"}]}"#,
        );
        let errs = unreachable.validate().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tasks[1].taskId", "tasks[3].taskId"]);
        assert!(errs[0].message.contains("'b' is unreachable"), "{errs:?}");
        let self_loop = def(r#"{"id":"w","tasks":[{"taskId":"a","nextTaskId":"a"}]}"#);
        assert!(self_loop.validate().is_err());
        let bad =
            def(r#"{"id":"w w","tasks":[{"taskId":"a","parameters":[1],"timeoutSeconds":0}]}"#);
        let fields: Vec<_> = bad
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            ["id", "tasks[0].parameters", "tasks[0].timeoutSeconds"]
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            base_ms: 100,
            factor: 2.0,
            cap_ms: 1000,
        };
        assert_eq!(b.delay_ms(1, 0.0), 50);
        assert_eq!(b.delay_ms(1, 1.0), 100);
        assert_eq!(b.delay_ms(3, 1.0), 400);
        assert_eq!(b.delay_ms(10, 1.0), 1000);
        assert_eq!(b.delay_ms(10, 0.0), 500);
        assert_eq!(b.delay_ms(u32::MAX, 0.5), 750);
    }
}
