//! How `orchctl` prints tasks, nodes, events and services: aligned tables for people,
//! and JSON with stable field names for scripts (the names are part of the
//! CLI's contract, listed in README.md).

use std::time::SystemTime;

use orch::quantity::{format_bytes, format_milli_cpus};
use orch::task_state;
use orch::v1::{
    DesiredState, Event, FailureAction, HealthCheck, JobState, Node, NodeMetrics, NodeState,
    NodeVerdict, PlacementPlan, PlanServiceResponse, PortMapping, Protocol, Resources,
    RestartCondition, RestartPolicy, RolloutState, Service, ServiceChange, ServiceSpec,
    ServiceVersion, SlotPlan, Task, TaskAttempt, TaskSpec, TaskState, UpdateOrder, event,
    health_check, service_spec,
};
use serde_json::{Value, json};

pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts {
        Some(t) => {
            Value::String(humantime::format_rfc3339_millis(orch::time::system_time(t)).to_string())
        }
        None => Value::Null,
    }
}

/// "3s ago", "5m ago": how long ago a time was, roughly.
fn ago(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = ts else { return "-".into() };
    let secs = SystemTime::now()
        .duration_since(orch::time::system_time(t))
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn desired_name(d: DesiredState) -> &'static str {
    match d {
        DesiredState::Unspecified => "unspecified",
        DesiredState::Running => "running",
        DesiredState::Stopped => "stopped",
    }
}

fn node_state_name(s: NodeState) -> &'static str {
    match s {
        NodeState::Unspecified => "unspecified",
        NodeState::Ready => "ready",
        NodeState::Down => "down",
        NodeState::Draining => "draining",
        NodeState::Removed => "removed",
    }
}

/// A task as JSON.
pub fn task_json(t: &Task) -> Value {
    let spec = t.spec.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "name": spec.name,
        "image": spec.image,
        "state": task_state::name(t.state()),
        "desired_state": desired_name(t.desired_state()),
        "node_id": t.node_id,
        "container_id": t.container_id,
        "attempt": t.attempt,
        "restart_count": t.restart_count,
        "exit_code": t.exit_code,
        "message": t.message,
        "created_at": rfc3339(t.created_at.as_ref()),
        "restart_at": rfc3339(t.restart_at.as_ref()),
        "health": orch::health::name(t.health()),
        "service": t.service,
        "slot": t.slot,
        "service_version": t.service_version,
    })
}

/// One attempt of a task as JSON: `attempt, node_id, container_id,
/// started_at, finished_at, exit_code, message`, and its `state` and
/// `health` changes.
pub fn attempt_json(a: &TaskAttempt) -> Value {
    json!({
        "attempt": a.attempt,
        "node_id": a.node_id,
        "container_id": a.container_id,
        "started_at": rfc3339(a.started_at.as_ref()),
        "finished_at": rfc3339(a.finished_at.as_ref()),
        "exit_code": a.exit_code,
        "message": a.message,
        "state": task_state::name(a.state()),
        "health": a.health.iter().map(|h| json!({
            "time": rfc3339(h.time.as_ref()),
            "health": orch::health::name(h.health()),
        })).collect::<Vec<_>>(),
    })
}

/// A placement plan as JSON: the chosen node and every node's verdict
/// (`chosen`, `feasible` or `refused`).
pub fn plan_json(p: &PlacementPlan) -> Value {
    json!({
        "chosen_node_id": p.chosen_node_id,
        "chosen_node_name": p.chosen_node_name,
        "strategy": p.strategy,
        "unplaceable": p.unplaceable,
        "nodes": p.nodes.iter().map(|v| json!({
            "node_id": v.node_id,
            "name": v.name,
            "verdict": verdict_word(p, v),
            "feasible": v.feasible,
            "score": v.score,
            "siblings": v.siblings,
            "tie_breaker": v.tie_breaker,
            "sampled": v.sampled,
            "filter": v.filter,
            "reason": v.reason,
        })).collect::<Vec<_>>(),
    })
}

/// `chosen`, `feasible` or `refused`.
fn verdict_word(p: &PlacementPlan, v: &NodeVerdict) -> &'static str {
    if !p.chosen_node_id.is_empty() && v.node_id == p.chosen_node_id {
        "chosen"
    } else if v.feasible {
        "feasible"
    } else {
        "refused"
    }
}

/// A plan as a table: one row per node.
pub fn print_plan(p: &PlacementPlan) {
    let rows: Vec<Vec<String>> = p
        .nodes
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                verdict_word(p, v).to_owned(),
                if v.feasible {
                    format!("{:.3}", v.score)
                } else {
                    "-".to_owned()
                },
                or_dash(&v.filter),
                v.reason.clone(),
            ]
        })
        .collect();
    print_table(&["NODE", "VERDICT", "SCORE", "FILTER", "REASON"], &rows);
}

/// The lines under a pending task: why each node does not take it (or, for
/// a task waiting out a restart's backoff, where it would go now).
pub fn print_pending_reasons(p: &PlacementPlan) {
    if p.chosen_node_id.is_empty() {
        println!("why it waits (per node):");
    } else {
        println!("would go to {} now (per node):", p.chosen_node_name);
    }
    for v in &p.nodes {
        if v.feasible {
            println!("  {}: fits ({})", v.name, v.reason);
        } else {
            println!("  {}: {}: {}", v.name, v.filter, v.reason);
        }
    }
}

/// A time as RFC 3339 to the second, or `-`.
fn seconds_text(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(
        || "-".to_owned(),
        |t| humantime::format_rfc3339_seconds(orch::time::system_time(t)).to_string(),
    )
}

/// A task's attempts as a table, oldest first; an attempt's health changes
/// follow its reason, as `[healthy 12:00:01, unhealthy 12:00:31]`.
pub fn print_attempts(attempts: &[TaskAttempt]) {
    let rows: Vec<Vec<String>> = attempts
        .iter()
        .map(|a| {
            let mut reason = a.message.clone();
            if !a.health.is_empty() {
                let changes: Vec<String> = a
                    .health
                    .iter()
                    .map(|h| {
                        let at = seconds_text(h.time.as_ref());
                        // The time of day is enough beside the STARTED column.
                        let at = at.get(11..19).unwrap_or(&at).to_owned();
                        format!("{} {at}", orch::health::name(h.health()).unwrap_or("none"))
                    })
                    .collect();
                reason = format!("{reason} [{}]", changes.join(", "))
                    .trim()
                    .to_owned();
            }
            vec![
                a.attempt.to_string(),
                or_dash(a.node_id.get(..8).unwrap_or(&a.node_id)),
                or_dash(a.container_id.get(..12).unwrap_or(&a.container_id)),
                seconds_text(a.started_at.as_ref()),
                seconds_text(a.finished_at.as_ref()),
                a.exit_code
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                or_dash(&reason),
            ]
        })
        .collect();
    print_table(
        &[
            "ATTEMPT",
            "NODE",
            "CONTAINER",
            "STARTED",
            "ENDED",
            "EXIT",
            "REASON",
        ],
        &rows,
    );
}

/// What an apply would change, in words.
fn would_change(change: ServiceChange) -> &'static str {
    match change {
        ServiceChange::Created => "would be created",
        ServiceChange::Updated => "would be updated to a new version",
        ServiceChange::Scaled => "would be scaled",
        ServiceChange::Reconfigured => "would be reconfigured",
        ServiceChange::Unchanged | ServiceChange::Unspecified => "would not change",
    }
}

/// A service's dry run as JSON.
pub fn service_plan_json(name: &str, p: &PlanServiceResponse) -> Value {
    json!({
        "service": name,
        "change": format!("{:?}", p.change()).to_lowercase(),
        "slots": p.slots.iter().map(|s| json!({
            "slot": s.slot,
            "pinned_node_id": s.pinned_node_id,
            "placement": plan_json(&s.placement.clone().unwrap_or_default()),
        })).collect::<Vec<_>>(),
        "slots_not_planned": p.slots_not_planned,
    })
}

/// At most this many tasks of a service's dry run are listed one by one;
/// beyond, they are counted per node.
const LISTED_SLOTS: usize = 10;

/// A service's dry run for people: the change, where each new task would
/// go (counted per node past `LISTED_SLOTS`), and every node's verdict for
/// the first one.
pub fn print_service_plan(name: &str, p: &PlanServiceResponse) {
    let total = p.slots.len() + p.slots_not_planned as usize;
    let tasks = if total == 1 { "task" } else { "tasks" };
    println!(
        "service {name} {}, creating {total} {tasks}",
        would_change(p.change())
    );
    let slot_name = |s: &SlotPlan| {
        if s.pinned_node_id.is_empty() {
            format!("{name}.{}", s.slot)
        } else {
            format!(
                "{name} on {}",
                s.pinned_node_id.get(..8).unwrap_or(&s.pinned_node_id)
            )
        }
    };
    let placement = |s: &SlotPlan| s.placement.clone().unwrap_or_default();
    if p.slots.len() <= LISTED_SLOTS {
        for s in &p.slots {
            let pl = placement(s);
            if pl.chosen_node_id.is_empty() {
                println!("  {}: fits nowhere: {}", slot_name(s), pl.unplaceable);
            } else {
                println!("  {}: {}", slot_name(s), pl.chosen_node_name);
            }
        }
    } else {
        let mut per_node: std::collections::BTreeMap<String, usize> = Default::default();
        let mut nowhere = 0;
        for s in &p.slots {
            let pl = placement(s);
            if pl.chosen_node_id.is_empty() {
                nowhere += 1;
            } else {
                *per_node.entry(pl.chosen_node_name).or_default() += 1;
            }
        }
        let counts: Vec<String> = per_node.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        println!("  tasks per node: {}", counts.join(", "));
        if nowhere > 0 {
            println!("  {nowhere} fit nowhere");
        }
        if p.slots_not_planned > 0 {
            println!("  {} more not planned", p.slots_not_planned);
        }
    }
    if let Some(first) = p.slots.first() {
        println!("{} on every node:", slot_name(first));
        print_plan(&placement(first));
    }
}

fn resources_json(r: Option<&Resources>) -> Value {
    let r = r.copied().unwrap_or_default();
    json!({ "milli_cpus": r.milli_cpus, "memory_bytes": r.memory_bytes, "disk_bytes": r.disk_bytes })
}

fn usage_json(m: Option<&NodeMetrics>) -> Value {
    match m {
        None => Value::Null,
        Some(m) => json!({
            "cpu_percent": m.cpu_percent,
            "memory_used_bytes": m.memory_used_bytes,
            "memory_total_bytes": m.memory_total_bytes,
            "disk_free_bytes": m.disk_free_bytes,
            "load_1m": m.load_1m,
            "load_5m": m.load_5m,
            "load_15m": m.load_15m,
        }),
    }
}

/// A node as JSON.
pub fn node_json(n: &Node) -> Value {
    json!({
        "id": n.id,
        "name": n.name,
        "address": n.address,
        "state": node_state_name(n.state()),
        "capacity": resources_json(n.capacity.as_ref()),
        "allocated": resources_json(n.allocated.as_ref()),
        "usage": usage_json(n.usage.as_ref()),
        "last_heartbeat": rfc3339(n.last_heartbeat.as_ref()),
        "task_count": n.task_count,
        "draining": n.draining,
        "labels": n.labels,
        "certificate_expires_at": rfc3339(n.certificate_expires_at.as_ref()),
    })
}

/// An event as one line of JSON.
pub fn event_json(e: &Event) -> Value {
    let mut v = json!({ "sequence": e.sequence, "time": rfc3339(e.time.as_ref()) });
    match &e.kind {
        Some(event::Kind::Task(t)) => {
            v["type"] = "task".into();
            v["task_id"] = t.task_id.clone().into();
            v["name"] = t.name.clone().into();
            v["attempt"] = t.attempt.into();
            v["state"] = task_state::name(t.state()).into();
            v["desired_state"] = desired_name(t.desired_state()).into();
            v["node_id"] = t.node_id.clone().into();
            v["message"] = t.message.clone().into();
            v["health"] = orch::health::name(t.health()).into();
        }
        Some(event::Kind::Node(n)) => {
            v["type"] = "node".into();
            v["node_id"] = n.node_id.clone().into();
            v["name"] = n.name.clone().into();
            v["state"] = node_state_name(n.state()).into();
            v["message"] = n.message.clone().into();
        }
        Some(event::Kind::Service(sv)) => {
            v["type"] = "service".into();
            v["name"] = sv.name.clone().into();
            v["version"] = sv.version.into();
            v["rollout_state"] = rollout_state_name(sv.rollout_state()).into();
            v["message"] = sv.message.clone().into();
            v["deleted"] = sv.deleted.into();
        }
        None => {}
    }
    v
}

/// The lowercase word for a rollout state, as JSON and tables show it.
pub fn rollout_state_name(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Unspecified => "none",
        RolloutState::RollingOut => "rolling_out",
        RolloutState::Completed => "completed",
        RolloutState::Paused => "paused",
        RolloutState::RollingBack => "rolling_back",
        RolloutState::RolledBack => "rolled_back",
    }
}

/// An event as one line for people.
pub fn event_line(e: &Event) -> String {
    let time = rfc3339(e.time.as_ref());
    // The sequence, for `orchctl events --since`.
    let time = format!("{} #{}", time.as_str().unwrap_or("-"), e.sequence);
    match &e.kind {
        Some(event::Kind::Task(t)) => format!(
            "{time} task {}{} attempt {} {}{}{}{}",
            t.task_id,
            if t.name.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.name)
            },
            t.attempt,
            task_state::name(t.state()),
            if t.desired_state() == DesiredState::Stopped && !task_state::is_terminal(t.state()) {
                " (stopping)"
            } else {
                ""
            },
            orch::health::name(t.health())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default(),
            if t.message.is_empty() {
                String::new()
            } else {
                format!(": {}", t.message)
            }
        ),
        Some(event::Kind::Node(n)) => format!(
            "{time} node {} ({}) {}{}",
            n.node_id,
            n.name,
            node_state_name(n.state()),
            if n.message.is_empty() {
                String::new()
            } else {
                format!(": {}", n.message)
            }
        ),
        Some(event::Kind::Service(sv)) => format!(
            "{time} service {} version {} {}{}",
            sv.name,
            sv.version,
            if sv.deleted {
                "deleted"
            } else {
                rollout_state_name(sv.rollout_state())
            },
            if sv.message.is_empty() {
                String::new()
            } else {
                format!(": {}", sv.message)
            }
        ),
        None => format!("{time} (unknown event)"),
    }
}

/// Prints pretty JSON.
pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Prints rows as left-aligned columns separated by two spaces.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn state_cell(t: &Task) -> String {
    let state = task_state::name(t.state());
    let health = orch::health::name(t.health());
    match (t.state(), t.exit_code, health) {
        (TaskState::Completed | TaskState::Failed, Some(code), _) => format!("{state} ({code})"),
        // "running (healthy)": the health of a task with a health check.
        (TaskState::Running, _, Some(health)) => format!("{state} ({health})"),
        _ => state.to_string(),
    }
}

/// The task list.
pub fn print_tasks(tasks: &[Task]) {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let spec = t.spec.clone().unwrap_or_default();
            vec![
                t.id.clone(),
                or_dash(&spec.name),
                spec.image,
                state_cell(t),
                or_dash(t.node_id.get(..8).unwrap_or(&t.node_id)),
                ago(t.created_at.as_ref()),
                or_dash(&t.message),
            ]
        })
        .collect();
    print_table(
        &["ID", "NAME", "IMAGE", "STATE", "NODE", "CREATED", "MESSAGE"],
        &rows,
    );
}

/// One task, in detail.
pub fn print_task(t: &Task) {
    for (k, v) in task_detail(t) {
        println!("{:<14} {v}", format!("{k}:"));
    }
}

/// What `orchctl status TASK` shows of a task, line by line.
fn task_detail(t: &Task) -> Vec<(&'static str, String)> {
    let spec = t.spec.clone().unwrap_or_default();
    let limit =
        |v: Option<i64>, f: fn(i64) -> String| v.map(f).unwrap_or_else(|| "no limit".into());
    let mut lines = vec![
        ("id", t.id.clone()),
        ("name", or_dash(&spec.name)),
        ("image", spec.image.clone()),
        (
            "command",
            if spec.command.is_empty() {
                "(image default)".into()
            } else {
                spec.command.join(" ")
            },
        ),
        ("state", state_cell(t)),
    ];
    // An ended task wants nothing any more: "desired state: running" of a
    // completed task would only puzzle.
    if !task_state::is_terminal(t.state()) {
        lines.push(("desired state", desired_name(t.desired_state()).into()));
    }
    lines.extend([
        ("node", or_dash(&t.node_id)),
        ("container", or_dash(&t.container_id)),
        ("attempt", t.attempt.to_string()),
        ("restarts", t.restart_count.to_string()),
        ("cpus", limit(spec.milli_cpus, format_milli_cpus)),
        ("memory", limit(spec.memory_bytes, format_bytes)),
        ("env", pairs_text(&spec.env)),
        (
            "ports",
            if spec.ports.is_empty() {
                "none".into()
            } else {
                spec.ports
                    .iter()
                    .map(port_text)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("restart", restart_text(&spec.restart.unwrap_or_default())),
        (
            "created",
            rfc3339(t.created_at.as_ref())
                .as_str()
                .unwrap_or("-")
                .to_string(),
        ),
    ]);
    if let Some(code) = t.exit_code {
        lines.push(("exit code", code.to_string()));
    }
    if let Some(at) = rfc3339(t.restart_at.as_ref()).as_str() {
        lines.push(("next restart", at.to_string()));
    }
    if !t.message.is_empty() {
        lines.push(("message", t.message.clone()));
    }
    lines
}

/// The node list.
/// A manager as `orchctl managers -o json` prints it.
pub fn manager_json(m: &orch::v1::ManagerInfo) -> Value {
    json!({
        "id": m.id,
        "url": m.url,
        "role": if m.leader { "leader" } else { "follower" },
        "started_at": rfc3339(m.started_at.as_ref()),
        "leader_since": rfc3339(m.leader_since.as_ref()),
    })
}

/// `orchctl managers`: one row per manager, the leader's term's age.
pub fn print_managers(managers: &[orch::v1::ManagerInfo]) {
    let rows: Vec<Vec<String>> = managers
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.url.clone(),
                if m.leader { "leader" } else { "follower" }.into(),
                if m.leader {
                    ago(m.leader_since.as_ref())
                } else {
                    "-".into()
                },
                ago(m.started_at.as_ref()),
            ]
        })
        .collect();
    print_table(&["ID", "URL", "ROLE", "LEADING SINCE", "STARTED"], &rows);
}

pub fn print_nodes(nodes: &[Node]) {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let cap = n.capacity.unwrap_or_default();
            let alloc = n.allocated.unwrap_or_default();
            let usage = n.usage.unwrap_or_default();
            vec![
                n.id.clone(),
                n.name.clone(),
                node_state_name(n.state()).into(),
                n.task_count.to_string(),
                format!(
                    "{}/{}",
                    format_milli_cpus(alloc.milli_cpus),
                    format_milli_cpus(cap.milli_cpus)
                ),
                format!(
                    "{}/{}",
                    format_bytes(alloc.memory_bytes),
                    format_bytes(cap.memory_bytes)
                ),
                format!("{:.0}%", usage.cpu_percent),
                format_bytes(usage.memory_used_bytes),
                ago(n.last_heartbeat.as_ref()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "STATE",
            "TASKS",
            "CPUS",
            "MEMORY",
            "CPU USE",
            "MEM USE",
            "HEARTBEAT",
        ],
        &rows,
    );
}

// ---------------------------------------------------------------------------
// Services.

/// The word for a service's mode: `replicated`, `global` or `batch`.
pub fn mode_name(spec: &ServiceSpec) -> &'static str {
    match spec.mode {
        Some(service_spec::Mode::Replicated(_)) => "replicated",
        Some(service_spec::Mode::Global(_)) => "global",
        Some(service_spec::Mode::Batch(_)) => "batch",
        None => "unknown",
    }
}

/// The word for a batch service's job state; `None` for other services.
pub fn job_state_name(s: JobState) -> Option<&'static str> {
    match s {
        JobState::Unspecified => None,
        JobState::Running => Some("running"),
        JobState::Completed => Some("completed"),
        JobState::Failed => Some("failed"),
    }
}

fn restart_name(c: RestartCondition) -> &'static str {
    match c {
        RestartCondition::Unspecified | RestartCondition::Never => "never",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Always => "always",
    }
}

fn order_name(o: UpdateOrder) -> &'static str {
    match o {
        UpdateOrder::Unspecified | UpdateOrder::StopFirst => "stop-first",
        UpdateOrder::StartFirst => "start-first",
    }
}

fn failure_action_name(a: FailureAction) -> &'static str {
    match a {
        FailureAction::Unspecified | FailureAction::Rollback => "rollback",
        FailureAction::Pause => "pause",
        FailureAction::Continue => "continue",
    }
}

/// A duration as people write it: `5s`, `1m 30s`, `500ms`.
fn duration_text(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn proto_duration(d: Option<&prost_types::Duration>) -> Value {
    d.and_then(orch::time::std_duration)
        .map_or(Value::Null, |d| duration_text(d).into())
}

/// A service's state of rollout: the state of its latest rollout, or
/// unspecified if it has none.
fn rollout_state(s: &Service) -> RolloutState {
    s.rollout
        .as_ref()
        .map_or(RolloutState::Unspecified, |r| r.state())
}

/// A service as JSON: its name, mode, counts, version and rollout. The
/// fields are the same for every mode; those of another mode are null
/// (`replicas` for a global or batch service, `completions` and
/// `parallelism` for all but batch, `job_state` for all but batch).
pub fn service_json(s: &Service) -> Value {
    let spec = s.spec.clone().unwrap_or_default();
    let (replicas, completions, parallelism) = match &spec.mode {
        Some(service_spec::Mode::Replicated(r)) => (
            Value::from(orch::service::replicas(r)),
            Value::Null,
            Value::Null,
        ),
        Some(service_spec::Mode::Batch(b)) => (
            Value::Null,
            Value::from(orch::service::completions(b)),
            Value::from(orch::service::batch_parallelism(b)),
        ),
        _ => (Value::Null, Value::Null, Value::Null),
    };
    let rollout = s.rollout.as_ref();
    json!({
        "name": spec.name,
        "mode": mode_name(&spec),
        "version": s.version,
        "replicas": replicas,
        "completions": completions,
        "parallelism": parallelism,
        "desired": s.desired,
        "running": s.running,
        "completed": s.completed,
        "failed": s.failed,
        "job_state": job_state_name(s.job_state()),
        "rollout_state": rollout_state_name(rollout_state(s)),
        "rollout_message": rollout.map(|r| r.message.as_str()).unwrap_or_default(),
        "rollout": rollout.map_or(Value::Null, |r| json!({
            "from_version": r.from_version,
            "to_version": r.to_version,
            "updated": r.updated,
            "failed": r.failed,
            "total": r.total,
            "started_at": rfc3339(r.started_at.as_ref()),
            "finished_at": rfc3339(r.finished_at.as_ref()),
        })),
        "created_at": rfc3339(s.created_at.as_ref()),
        "updated_at": rfc3339(s.updated_at.as_ref()),
    })
}

/// A service as `service inspect -o json` shows it: [`service_json`] and
/// its `spec`, with the defaults of the restart policy, the stop timeout
/// and the update config filled in.
pub fn service_detail_json(s: &Service) -> Value {
    let mut v = service_json(s);
    let spec = s.spec.clone().unwrap_or_default();
    let mut task = task_spec_json(&spec.task.clone().unwrap_or_default());
    task["restart"] = restart_json(Some(&orch::service::restart_policy(&spec)));
    task["stop_timeout"] = duration_text(orch::validate::stop_grace(
        spec.task.as_ref().unwrap_or(&TaskSpec::default()),
    ))
    .into();
    let update = orch::service::update_settings(spec.update.as_ref());
    v["spec"] = json!({
        "task": task,
        "placement": {
            "constraints": spec.placement.map(|p| p.constraints).unwrap_or_default(),
        },
        "update": {
            "parallelism": update.parallelism,
            "delay": duration_text(update.delay),
            "order": order_name(update.order),
            "monitor": duration_text(update.monitor),
            "failure_action": failure_action_name(update.failure_action),
            "max_failure_ratio": update.max_failure_ratio,
        },
    });
    v
}

fn restart_json(r: Option<&RestartPolicy>) -> Value {
    r.map_or(
        Value::Null,
        |r| json!({ "condition": restart_name(r.condition()), "max_restarts": r.max_restarts }),
    )
}

fn port_text(p: &PortMapping) -> String {
    let udp = orch::validate::normal_protocol(p.protocol()) == Protocol::Udp;
    format!(
        "{}:{}{}",
        p.host_port,
        p.container_port,
        if udp { "/udp" } else { "" }
    )
}

fn health_check_json(h: Option<&HealthCheck>) -> Value {
    let Some(h) = h else { return Value::Null };
    let mut v = json!({
        "interval": proto_duration(h.interval.as_ref()),
        "timeout": proto_duration(h.timeout.as_ref()),
        "retries": h.retries,
        "start_period": proto_duration(h.start_period.as_ref()),
    });
    match &h.probe {
        Some(health_check::Probe::Http(p)) => {
            v["http"] = json!({ "port": p.port, "path": p.path });
        }
        Some(health_check::Probe::Tcp(p)) => v["tcp"] = json!({ "port": p.port }),
        Some(health_check::Probe::Exec(p)) => v["cmd"] = json!(p.command),
        None => {}
    }
    v
}

/// A task template as JSON, as it was written: unset fields are null.
/// Ports read as they are written on the command line, `8080:80/udp`.
pub fn task_spec_json(t: &TaskSpec) -> Value {
    json!({
        "image": t.image,
        "command": t.command,
        "env": t.env,
        "milli_cpus": t.milli_cpus,
        "memory_bytes": t.memory_bytes,
        "disk_bytes": t.disk_bytes,
        "ports": t.ports.iter().map(port_text).collect::<Vec<_>>(),
        "restart": restart_json(t.restart.as_ref()),
        "labels": t.labels,
        "stop_timeout": proto_duration(t.stop_grace_period.as_ref()),
        "health_check": health_check_json(t.health_check.as_ref()),
    })
}

/// The kept versions of a service as JSON, in the order given.
pub fn history_json(versions: &[ServiceVersion], current: u64) -> Value {
    Value::Array(
        versions
            .iter()
            .map(|v| {
                let task = v.task.clone().unwrap_or_default();
                json!({
                    "version": v.version,
                    "current": v.version == current,
                    "created_at": rfc3339(v.created_at.as_ref()),
                    "image": task.image,
                    "task": task_spec_json(&task),
                })
            })
            .collect(),
    )
}

/// The RUNNING cell: `running/desired`, or for a batch service
/// `completed/completions`.
fn running_cell(s: &Service) -> String {
    match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(service_spec::Mode::Batch(_)) => format!("{}/{}", s.completed, s.desired),
        _ => format!("{}/{}", s.running, s.desired),
    }
}

/// The ROLLOUT cell: the rollout's state, with its progress while it goes
/// on; for a batch service, its job's state.
fn rollout_cell(s: &Service) -> String {
    let state = rollout_state(s);
    let word = rollout_state_name(state);
    let progress = match (&s.rollout, state) {
        (Some(r), RolloutState::RollingOut | RolloutState::RollingBack) => {
            format!("{word} ({}/{})", r.updated, r.total)
        }
        _ => word.to_string(),
    };
    match (job_state_name(s.job_state()), state) {
        (Some(job), RolloutState::Unspecified) => format!("job {job}"),
        (Some(job), _) => format!("{progress}, job {job}"),
        (None, _) => progress,
    }
}

/// The service list.
pub fn print_services(services: &[Service]) {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap_or_default();
            vec![
                spec.name.clone(),
                mode_name(&spec).into(),
                s.version.to_string(),
                running_cell(s),
                rollout_cell(s),
            ]
        })
        .collect();
    print_table(&["NAME", "MODE", "VERSION", "RUNNING", "ROLLOUT"], &rows);
}

/// How a service's mode and counts read: `replicated, 3 replicas`,
/// `global`, `batch, 5 completions, 2 at a time`.
fn mode_text(spec: &ServiceSpec) -> String {
    match &spec.mode {
        Some(service_spec::Mode::Replicated(r)) => {
            let n = orch::service::replicas(r);
            format!("replicated, {n} replica{}", if n == 1 { "" } else { "s" })
        }
        Some(service_spec::Mode::Batch(b)) => {
            let n = orch::service::completions(b);
            format!(
                "batch, {n} completion{}, {} at a time",
                if n == 1 { "" } else { "s" },
                orch::service::batch_parallelism(b)
            )
        }
        _ => mode_name(spec).to_string(),
    }
}

fn pairs_text(map: &std::collections::HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if pairs.is_empty() {
        return "none".into();
    }
    pairs.sort();
    pairs.join(", ")
}

fn restart_text(r: &RestartPolicy) -> String {
    let word = restart_name(r.condition());
    match (r.condition(), r.max_restarts) {
        (RestartCondition::Unspecified | RestartCondition::Never, _) | (_, 0) => word.into(),
        (_, max) => format!("{word}, at most {max} times"),
    }
}

pub fn time_text(ts: Option<&prost_types::Timestamp>) -> String {
    rfc3339(ts).as_str().unwrap_or("-").to_string()
}

/// One service, in detail: its spec with defaults, its counts and its rollout.
pub fn print_service(s: &Service) {
    let spec = s.spec.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let limit =
        |v: Option<i64>, f: fn(i64) -> String| v.map(f).unwrap_or_else(|| "no limit".into());
    let update = orch::service::update_settings(spec.update.as_ref());
    let mut lines = vec![
        ("name", spec.name.clone()),
        ("id", or_dash(&s.id)),
        ("mode", mode_text(&spec)),
        ("version", s.version.to_string()),
        ("image", task.image.clone()),
        (
            "command",
            if task.command.is_empty() {
                "(image default)".into()
            } else {
                task.command.join(" ")
            },
        ),
        ("cpus", limit(task.milli_cpus, format_milli_cpus)),
        ("memory", limit(task.memory_bytes, format_bytes)),
        (
            "restart",
            restart_text(&orch::service::restart_policy(&spec)),
        ),
        (
            "constraints",
            pairs_text(
                &spec
                    .placement
                    .as_ref()
                    .map(|p| p.constraints.clone())
                    .unwrap_or_default(),
            ),
        ),
    ];
    // A batch service has no rolling updates: its template cannot change.
    if !matches!(spec.mode, Some(service_spec::Mode::Batch(_))) {
        lines.push((
            "update",
            format!(
                "{} at a time, delay {}, {}, monitor {}, on failure {}, max failure ratio {}",
                update.parallelism,
                duration_text(update.delay),
                order_name(update.order),
                duration_text(update.monitor),
                failure_action_name(update.failure_action),
                update.max_failure_ratio
            ),
        ));
    }
    match job_state_name(s.job_state()) {
        Some(job) => lines.push((
            "job",
            format!(
                "{job}, {} of {} completed, {} failed, {} running",
                s.completed, s.desired, s.failed, s.running
            ),
        )),
        None => lines.push(("running", format!("{}/{}", s.running, s.desired))),
    }
    if let Some(r) = &s.rollout {
        lines.push((
            "rollout",
            format!(
                "{}, version {} -> {}, {} of {} updated, {} failed",
                rollout_state_name(r.state()),
                r.from_version,
                r.to_version,
                r.updated,
                r.total,
                r.failed
            ),
        ));
        if !r.message.is_empty() {
            lines.push(("message", r.message.clone()));
        }
        lines.push(("started", time_text(r.started_at.as_ref())));
        if r.finished_at.is_some() {
            lines.push(("finished", time_text(r.finished_at.as_ref())));
        }
    } else {
        lines.push((
            "rollout",
            rollout_state_name(RolloutState::Unspecified).into(),
        ));
    }
    lines.push(("created", time_text(s.created_at.as_ref())));
    lines.push(("updated", time_text(s.updated_at.as_ref())));
    for (k, v) in lines {
        println!("{:<14} {v}", format!("{k}:"));
    }
}

/// A service's task's state: as `ps` shows it, and `(stopping)` while a
/// task that should stop has not yet.
fn service_task_state(t: &Task) -> String {
    let state = state_cell(t);
    if t.desired_state() == DesiredState::Stopped && !task_state::is_terminal(t.state()) {
        format!("{state} (stopping)")
    } else {
        state
    }
}

/// The SLOT cell: the task's slot, or for a task of a global service the
/// node it belongs to.
fn slot_cell(t: &Task) -> String {
    if t.slot > 0 {
        t.slot.to_string()
    } else {
        or_dash(t.pinned_node_id.get(..8).unwrap_or(&t.pinned_node_id))
    }
}

/// A service's tasks, by slot (or node), the newest of each slot first.
pub fn print_service_tasks(tasks: &[Task]) {
    let mut tasks: Vec<&Task> = tasks.iter().collect();
    let created = |t: &Task| t.created_at.map(|c| (c.seconds, c.nanos));
    tasks.sort_by(|a, b| {
        (a.slot, &a.pinned_node_id)
            .cmp(&(b.slot, &b.pinned_node_id))
            .then_with(|| created(b).cmp(&created(a)))
    });
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                slot_cell(t),
                t.id.clone(),
                service_task_state(t),
                or_dash(t.node_id.get(..8).unwrap_or(&t.node_id)),
                t.service_version.to_string(),
                or_dash(&t.message),
            ]
        })
        .collect();
    print_table(
        &["SLOT", "ID", "STATE", "NODE", "VERSION", "MESSAGE"],
        &rows,
    );
}

/// A service's kept versions, oldest first, the current one marked `*`,
/// each with what it changed from the one before.
pub fn print_history(versions: &[ServiceVersion], current: u64) {
    let rows: Vec<Vec<String>> = versions
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let previous = i.checked_sub(1).and_then(|p| versions.get(p));
            vec![
                format!(
                    "{}{}",
                    v.version,
                    if v.version == current { "*" } else { "" }
                ),
                ago(v.created_at.as_ref()),
                v.task.as_ref().map(|t| t.image.clone()).unwrap_or_default(),
                version_diff(previous, v),
            ]
        })
        .collect();
    print_table(&["VERSION", "CREATED", "IMAGE", "CHANGES"], &rows);
}

/// At most `max` characters of `s`, with `...` if cut.
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let cut: String = s.chars().take(max.saturating_sub(3)).collect();
    format!("{cut}...")
}

/// `+A -B ~C`: the keys added, removed and changed from `old` to `new`, or
/// `None` if none.
fn keys_diff(
    old: &std::collections::HashMap<String, String>,
    new: &std::collections::HashMap<String, String>,
) -> Option<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let marks: Vec<String> = keys
        .into_iter()
        .filter_map(|k| match (old.get(k), new.get(k)) {
            (None, Some(_)) => Some(format!("+{k}")),
            (Some(_), None) => Some(format!("-{k}")),
            (Some(a), Some(b)) if a != b => Some(format!("~{k}")),
            _ => None,
        })
        .collect();
    (!marks.is_empty()).then(|| marks.join(" "))
}

/// What `cur` changed from `prev`, the version before it, on one line for
/// people (best effort): `image a -> b, command sleep 1 -> sleep 2, env +A
/// -B ~C, memory 64Mi -> 128Mi`. `created` for version 1 with nothing
/// before it, `-` for an older version whose predecessor is no longer kept,
/// `no change` if nothing shown differs.
pub fn version_diff(prev: Option<&ServiceVersion>, cur: &ServiceVersion) -> String {
    let Some(prev) = prev else {
        return if cur.version <= 1 { "created" } else { "-" }.into();
    };
    let (a, b) = (
        prev.task.clone().unwrap_or_default(),
        cur.task.clone().unwrap_or_default(),
    );
    let mut changes: Vec<String> = Vec::new();
    let mut from_to = |what: &str, x: String, y: String| {
        if x != y {
            changes.push(format!("{what} {} -> {}", short(&x, 30), short(&y, 30)));
        }
    };
    from_to("image", a.image.clone(), b.image.clone());
    let command = |t: &TaskSpec| {
        if t.command.is_empty() {
            "(image default)".to_string()
        } else {
            t.command.join(" ")
        }
    };
    from_to("command", command(&a), command(&b));
    let limit = |v: Option<i64>, f: fn(i64) -> String| v.map_or_else(|| "none".into(), f);
    from_to(
        "cpus",
        limit(a.milli_cpus, format_milli_cpus),
        limit(b.milli_cpus, format_milli_cpus),
    );
    from_to(
        "memory",
        limit(a.memory_bytes, format_bytes),
        limit(b.memory_bytes, format_bytes),
    );
    from_to(
        "disk",
        limit(a.disk_bytes, format_bytes),
        limit(b.disk_bytes, format_bytes),
    );
    let ports = |t: &TaskSpec| {
        if t.ports.is_empty() {
            "none".to_string()
        } else {
            t.ports.iter().map(port_text).collect::<Vec<_>>().join(",")
        }
    };
    from_to("ports", ports(&a), ports(&b));
    let restart = |t: &TaskSpec| t.restart.as_ref().map_or("default".into(), restart_text);
    from_to("restart", restart(&a), restart(&b));
    from_to(
        "stop timeout",
        duration_text(orch::validate::stop_grace(&a)),
        duration_text(orch::validate::stop_grace(&b)),
    );
    for (what, x, y) in [
        ("env", &a.env, &b.env),
        ("labels", &a.labels, &b.labels),
        ("constraints", &constraints(prev), &constraints(cur)),
    ] {
        if let Some(d) = keys_diff(x, y) {
            changes.push(format!("{what} {d}"));
        }
    }
    match (&a.health_check, &b.health_check) {
        (None, Some(_)) => changes.push("health check added".into()),
        (Some(_), None) => changes.push("health check removed".into()),
        (Some(x), Some(y)) if x != y => changes.push("health check changed".into()),
        _ => {}
    }
    if changes.is_empty() {
        "no change".into()
    } else {
        changes.join(", ")
    }
}

fn constraints(v: &ServiceVersion) -> std::collections::HashMap<String, String> {
    v.placement
        .as_ref()
        .map(|p| p.constraints.clone())
        .unwrap_or_default()
}

/// A service's progress as one line: `web: rolling_out version 2: 1 of 3
/// updated` (`, 1 failed` when some failed), or for a batch service `job:
/// job running: 2 of 5 completed`.
pub fn progress_line(s: &Service) -> String {
    let name = s.spec.as_ref().map(|s| s.name.as_str()).unwrap_or_default();
    let failed = |n: u32| {
        if n > 0 {
            format!(", {n} failed")
        } else {
            String::new()
        }
    };
    if let Some(job) = job_state_name(s.job_state()) {
        return format!(
            "{name}: job {job}: {} of {} completed{}",
            s.completed,
            s.desired,
            failed(s.failed)
        );
    }
    match &s.rollout {
        Some(r) => format!(
            "{name}: {} version {}: {} of {} updated{}{}",
            rollout_state_name(r.state()),
            if r.to_version > 0 {
                r.to_version
            } else {
                s.version
            },
            r.updated,
            r.total,
            failed(r.failed),
            if r.waiting.is_empty() {
                String::new()
            } else {
                format!(" (waiting: {})", r.waiting)
            }
        ),
        None => format!("{name}: version {}: no rollout", s.version),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use orch::v1::{
        BatchMode, GlobalMode, Placement, ReplicatedMode, Rollout, UpdateConfig, service_spec,
    };

    use super::*;

    #[test]
    fn a_task_in_detail_shows_env_ports_and_restart_and_no_wish_once_ended() {
        let task = |state: orch::v1::TaskState| Task {
            id: "0192".into(),
            state: state as i32,
            desired_state: DesiredState::Running as i32,
            spec: Some(TaskSpec {
                image: "busybox".into(),
                env: HashMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
                ports: vec![PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp as i32,
                }],
                restart: Some(RestartPolicy {
                    condition: RestartCondition::OnFailure as i32,
                    max_restarts: 3,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let done: HashMap<_, _> = task_detail(&task(orch::v1::TaskState::Completed))
            .into_iter()
            .collect();
        assert_eq!(done["env"], "A=1, B=2");
        assert_eq!(done["ports"], "8080:80");
        assert_eq!(done["restart"], "on-failure, at most 3 times");
        assert!(!done.contains_key("desired state"), "{done:?}");
        let running: HashMap<_, _> = task_detail(&task(orch::v1::TaskState::Running))
            .into_iter()
            .collect();
        assert_eq!(running["desired state"], "running");
    }

    #[test]
    fn an_attempt_and_a_plan_as_json() {
        let a = TaskAttempt {
            attempt: 2,
            node_id: "n1".into(),
            container_id: "c2".into(),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_750_000_000,
                nanos: 0,
            }),
            exit_code: Some(1),
            message: "exited with code 1".into(),
            state: TaskState::Failed as i32,
            health: vec![orch::v1::HealthChange {
                time: None,
                health: orch::v1::HealthState::Unhealthy as i32,
            }],
            ..Default::default()
        };
        let v = attempt_json(&a);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempt",
                "container_id",
                "exit_code",
                "finished_at",
                "health",
                "message",
                "node_id",
                "started_at",
                "state"
            ]
        );
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["finished_at"], Value::Null);
        assert_eq!(v["state"], "failed");
        assert_eq!(v["health"][0]["health"], "unhealthy");

        let verdict = |id: &str, feasible: bool| NodeVerdict {
            node_id: id.into(),
            name: id.into(),
            feasible,
            ..Default::default()
        };
        let plan = PlacementPlan {
            chosen_node_id: "b".into(),
            nodes: vec![verdict("a", false), verdict("b", true), verdict("c", true)],
            ..Default::default()
        };
        let words: Vec<Value> = plan_json(&plan)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["verdict"].clone())
            .collect();
        assert_eq!(words, ["refused", "chosen", "feasible"]);
    }

    #[test]
    fn a_task_event_names_the_task() {
        let event = |name: &str| Event {
            sequence: 7,
            time: None,
            kind: Some(event::Kind::Task(orch::v1::TaskEvent {
                task_id: "0192".into(),
                attempt: 2,
                state: orch::v1::TaskState::Running as i32,
                name: name.into(),
                ..Default::default()
            })),
        };
        assert_eq!(
            event_line(&event("web")),
            "- #7 task 0192 (web) attempt 2 running"
        );
        assert_eq!(event_line(&event("")), "- #7 task 0192 attempt 2 running");
        assert_eq!(event_json(&event("web"))["name"], "web");
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut keys: Vec<String> = v
            .as_object()
            .unwrap_or_else(|| panic!("an object: {v}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// The field names of a service's JSON: a contract.
    const SERVICE_FIELDS: &[&str] = &[
        "completed",
        "completions",
        "created_at",
        "desired",
        "failed",
        "job_state",
        "mode",
        "name",
        "parallelism",
        "replicas",
        "rollout",
        "rollout_message",
        "rollout_state",
        "running",
        "updated_at",
        "version",
    ];

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn web() -> Service {
        Service {
            id: "0198a0a0-0000-7000-8000-000000000000".into(),
            spec: Some(ServiceSpec {
                name: "web".into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: Some(3),
                })),
                task: Some(TaskSpec {
                    image: "busybox".into(),
                    command: vec!["sleep".into(), "3600".into()],
                    ..Default::default()
                }),
                placement: Some(Placement {
                    constraints: HashMap::from([("zone".into(), "a".into())]),
                }),
                update: Some(UpdateConfig {
                    monitor: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
            }),
            version: 2,
            rollout: Some(Rollout {
                state: RolloutState::RollingOut as i32,
                message: "rolling out version 2: 1 of 3 updated".into(),
                from_version: 1,
                to_version: 2,
                started_at: ts(1_700_000_000),
                finished_at: None,
                updated: 1,
                failed: 0,
                total: 3,
                ..Rollout::default()
            }),
            created_at: ts(1_600_000_000),
            updated_at: ts(1_700_000_000),
            desired: 3,
            running: 3,
            ..Default::default()
        }
    }

    #[test]
    fn a_service_as_json() {
        let v = service_json(&web());
        assert_eq!(keys(&v), SERVICE_FIELDS);
        assert_eq!(v["name"], "web");
        assert_eq!(v["mode"], "replicated");
        assert_eq!(v["version"], 2);
        assert_eq!(v["replicas"], 3);
        assert_eq!(v["completions"], Value::Null);
        assert_eq!(v["parallelism"], Value::Null);
        assert_eq!(
            (v["desired"].clone(), v["running"].clone()),
            (3.into(), 3.into())
        );
        assert_eq!(v["job_state"], Value::Null);
        assert_eq!(v["rollout_state"], "rolling_out");
        assert_eq!(
            v["rollout_message"],
            "rolling out version 2: 1 of 3 updated"
        );
        assert_eq!(
            keys(&v["rollout"]),
            [
                "failed",
                "finished_at",
                "from_version",
                "started_at",
                "to_version",
                "total",
                "updated"
            ]
        );
        assert_eq!(v["rollout"]["from_version"], 1);
        assert_eq!(v["rollout"]["to_version"], 2);
        assert_eq!(v["rollout"]["updated"], 1);
        assert_eq!(v["rollout"]["started_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["rollout"]["finished_at"], Value::Null);
        assert_eq!(v["created_at"], "2020-09-13T12:26:40.000Z");
    }

    #[test]
    fn a_batch_or_global_service_as_json() {
        let mut job = web();
        let spec = job.spec.as_mut().expect("spec");
        spec.mode = Some(service_spec::Mode::Batch(BatchMode {
            completions: Some(5),
            parallelism: None,
        }));
        job.rollout = None;
        job.job_state = JobState::Running as i32;
        job.completed = 2;
        job.failed = 1;
        let v = service_json(&job);
        assert_eq!(keys(&v), SERVICE_FIELDS);
        assert_eq!(v["mode"], "batch");
        assert_eq!(v["replicas"], Value::Null);
        assert_eq!(v["completions"], 5);
        assert_eq!(v["parallelism"], 1, "the default");
        assert_eq!(v["job_state"], "running");
        assert_eq!(
            (v["completed"].clone(), v["failed"].clone()),
            (2.into(), 1.into())
        );
        assert_eq!(v["rollout_state"], "none");
        assert_eq!(v["rollout_message"], "");
        assert_eq!(v["rollout"], Value::Null);

        let mut global = web();
        global.spec.as_mut().expect("spec").mode = Some(service_spec::Mode::Global(GlobalMode {}));
        let v = service_json(&global);
        assert_eq!(keys(&v), SERVICE_FIELDS);
        assert_eq!(v["mode"], "global");
        assert_eq!(v["replicas"], Value::Null);
        assert_eq!(v["completions"], Value::Null);
    }

    #[test]
    fn inspect_json_shows_the_spec_with_defaults() {
        let v = service_detail_json(&web());
        let mut want: Vec<&str> = SERVICE_FIELDS.to_vec();
        want.push("spec");
        want.sort_unstable();
        assert_eq!(keys(&v), want);
        let spec = &v["spec"];
        assert_eq!(keys(spec), ["placement", "task", "update"]);
        assert_eq!(spec["task"]["image"], "busybox");
        assert_eq!(spec["task"]["command"], json!(["sleep", "3600"]));
        assert_eq!(spec["task"]["milli_cpus"], Value::Null);
        assert_eq!(
            spec["task"]["restart"],
            json!({"condition": "always", "max_restarts": 0})
        );
        assert_eq!(spec["task"]["stop_timeout"], "10s");
        assert_eq!(spec["placement"]["constraints"], json!({"zone": "a"}));
        assert_eq!(
            spec["update"],
            json!({
                "parallelism": 1,
                "delay": "0s",
                "order": "stop-first",
                "monitor": "1s",
                "failure_action": "rollback",
                "max_failure_ratio": 0.0,
            })
        );
    }

    #[test]
    fn a_task_of_a_service_as_json() {
        let task = Task {
            id: "t".into(),
            service: "web".into(),
            slot: 2,
            service_version: 3,
            ..Default::default()
        };
        let v = task_json(&task);
        assert_eq!(
            (&v["service"], &v["slot"], &v["service_version"]),
            (&json!("web"), &json!(2), &json!(3))
        );
        let alone = task_json(&Task::default());
        assert_eq!(
            (&alone["service"], &alone["slot"], &alone["service_version"]),
            (&json!(""), &json!(0), &json!(0))
        );
    }

    fn version(n: u64, task: TaskSpec, constraints: &[(&str, &str)]) -> ServiceVersion {
        ServiceVersion {
            service: "web".into(),
            version: n,
            task: Some(task),
            placement: Some(Placement {
                constraints: constraints
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            created_at: ts(1_700_000_000),
        }
    }

    #[test]
    fn the_history_line_says_what_changed() {
        let base = TaskSpec {
            image: "busybox:1".into(),
            command: vec!["sleep".into(), "60".into()],
            env: HashMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
            memory_bytes: Some(64 << 20),
            ..Default::default()
        };
        let v1 = version(1, base.clone(), &[]);
        assert_eq!(version_diff(None, &v1), "created");
        assert_eq!(version_diff(None, &version(4, base.clone(), &[])), "-");
        assert_eq!(
            version_diff(Some(&v1), &version(2, base.clone(), &[])),
            "no change"
        );

        let mut next = base.clone();
        next.image = "busybox:2".into();
        next.command = vec!["sleep".into(), "3600".into()];
        next.env = HashMap::from([("A".into(), "9".into()), ("C".into(), "3".into())]);
        next.memory_bytes = Some(128 << 20);
        next.milli_cpus = Some(500);
        let v2 = version(2, next, &[("zone", "a")]);
        assert_eq!(
            version_diff(Some(&v1), &v2),
            "image busybox:1 -> busybox:2, command sleep 60 -> sleep 3600, cpus none -> 0.5, \
             memory 64Mi -> 128Mi, env ~A -B +C, constraints +zone"
        );

        let mut checked = base.clone();
        checked.health_check = Some(HealthCheck::default());
        checked.stop_grace_period = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
        checked.restart = Some(RestartPolicy {
            condition: RestartCondition::OnFailure as i32,
            max_restarts: 3,
        });
        assert_eq!(
            version_diff(Some(&v1), &version(2, checked, &[])),
            "restart default -> on-failure, at most 3 times, stop timeout 10s -> 1s, health check added"
        );
        // Long commands are cut.
        let mut long = base;
        long.command = vec!["sh".into(), "-c".into(), "x".repeat(100)];
        let line = version_diff(Some(&v1), &version(2, long, &[]));
        assert!(line.starts_with("command sleep 60 -> sh -c xxx"), "{line}");
        assert!(line.ends_with("..."), "{line}");
        assert!(line.chars().count() < 60, "{line}");
    }

    #[test]
    fn history_json_marks_the_current_version() {
        let v = history_json(
            &[
                version(1, TaskSpec::default(), &[]),
                version(
                    2,
                    TaskSpec {
                        image: "busybox".into(),
                        ..Default::default()
                    },
                    &[],
                ),
            ],
            2,
        );
        let items = v.as_array().expect("an array");
        assert_eq!(items.len(), 2);
        for item in items {
            assert_eq!(
                keys(item),
                ["created_at", "current", "image", "task", "version"]
            );
        }
        assert_eq!(items[0]["current"], false);
        assert_eq!(
            (&items[1]["current"], &items[1]["image"]),
            (&json!(true), &json!("busybox"))
        );
        assert_eq!(items[1]["task"]["image"], "busybox");
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(&web()),
            "web: rolling_out version 2: 1 of 3 updated"
        );
        let mut failing = web();
        if let Some(r) = failing.rollout.as_mut() {
            r.failed = 1;
        }
        assert_eq!(
            progress_line(&failing),
            "web: rolling_out version 2: 1 of 3 updated, 1 failed"
        );
        assert_eq!(rollout_cell(&web()), "rolling_out (1/3)");
        assert_eq!(running_cell(&web()), "3/3");
    }
}
