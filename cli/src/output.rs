//! How `orchctl` prints tasks, nodes and events: aligned tables for people,
//! and JSON with stable field names for scripts (the names are part of the
//! CLI's contract, listed in README.md).

use std::time::SystemTime;

use orch::quantity::{format_bytes, format_milli_cpus};
use orch::task_state;
use orch::v1::{
    DesiredState, Event, Node, NodeMetrics, NodeState, Resources, RolloutState, Task, TaskState,
    event,
};
use serde_json::{Value, json};

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Value {
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
    })
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
    })
}

/// An event as one line of JSON.
pub fn event_json(e: &Event) -> Value {
    let mut v = json!({ "sequence": e.sequence, "time": rfc3339(e.time.as_ref()) });
    match &e.kind {
        Some(event::Kind::Task(t)) => {
            v["type"] = "task".into();
            v["task_id"] = t.task_id.clone().into();
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
    let time = time.as_str().unwrap_or("-");
    match &e.kind {
        Some(event::Kind::Task(t)) => format!(
            "{time} task {} attempt {} {}{}{}{}",
            t.task_id,
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
fn print_table(header: &[&str], rows: &[Vec<String>]) {
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
        ("desired state", desired_name(t.desired_state()).into()),
        ("node", or_dash(&t.node_id)),
        ("container", or_dash(&t.container_id)),
        ("attempt", t.attempt.to_string()),
        ("restarts", t.restart_count.to_string()),
        ("cpus", limit(spec.milli_cpus, format_milli_cpus)),
        ("memory", limit(spec.memory_bytes, format_bytes)),
        (
            "created",
            rfc3339(t.created_at.as_ref())
                .as_str()
                .unwrap_or("-")
                .to_string(),
        ),
    ];
    if let Some(code) = t.exit_code {
        lines.push(("exit code", code.to_string()));
    }
    if let Some(at) = rfc3339(t.restart_at.as_ref()).as_str() {
        lines.push(("next restart", at.to_string()));
    }
    if !t.message.is_empty() {
        lines.push(("message", t.message.clone()));
    }
    for (k, v) in lines {
        println!("{:<14} {v}", format!("{k}:"));
    }
}

/// The node list.
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
