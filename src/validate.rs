//! Validation of everything a client or a worker sends: one function per
//! message, each returning the first broken rule as a [`FieldError`] that
//! names the field, so the manager can answer `InvalidArgument` with a message
//! a person can act on, and store nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use uuid::Uuid;

use crate::health;
use crate::labels::RESERVED_PREFIX;
use crate::limits::{self, quote};
use crate::v1::{
    FailureAction, HealthCheck, Placement, Protocol, RegisterRequest, RestartCondition,
    ServiceSpec, TaskSpec, TaskStatus, UpdateConfig, UpdateOrder, health_check, service_spec,
};

/// Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: i64 = 6 << 20;
/// The longest stop grace period a task may ask for.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(3600);
/// The stop grace period of a task that does not set one.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// The most tasks a replicated service may ask for.
pub const MAX_REPLICAS: u32 = 1_000_000;
/// The most completions a batch service may ask for.
pub const MAX_COMPLETIONS: u32 = 1_000_000;
/// The longest an update may wait between batches (`delay`) or watch a new
/// task (`monitor`).
pub const MAX_UPDATE_WAIT: Duration = Duration::from_secs(3600);
/// The longest service name: a DNS label.
pub const MAX_SERVICE_NAME: usize = 63;

/// A broken rule: which field, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, for example `spec.ports[1].host_port`.
    pub field: String,
    /// The rule it breaks, for people.
    pub rule: String,
}

impl FieldError {
    /// A broken rule on `field`.
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            rule: rule.into(),
        }
    }

    /// The same error with `prefix.` put before the field path (or
    /// `prefix` as the path, for an error about the whole message).
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.rule)
        } else {
            write!(f, "{}: {}", self.field, self.rule)
        }
    }
}

impl std::error::Error for FieldError {}

/// Parses a required id field.
///
/// # Errors
/// If `value` is empty or not a UUID.
pub fn id(field: &str, value: &str) -> Result<Uuid, FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    Uuid::parse_str(value).map_err(|_| {
        FieldError::new(
            field,
            format!("{} is not a valid id (a UUID)", quote(value)),
        )
    })
}

/// At most `max` entries (of `what`: "entries", "arguments") in `field`.
fn at_most(field: &str, n: usize, max: usize, what: &str) -> Result<(), FieldError> {
    if n > max {
        return Err(FieldError::new(field, format!("{n} {what}, at most {max}")));
    }
    Ok(())
}

/// At most `max` bytes in the string `field`.
fn bytes(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("{} bytes, at most {max}", value.len()),
        ));
    }
    Ok(())
}

/// The limits of a string map: how many entries, how long a key and a value.
struct MapLimits {
    entries: usize,
    key: usize,
    value: usize,
}

/// Label limits of tasks, node selectors and placement constraints.
const LABELS: MapLimits = MapLimits {
    entries: limits::MAX_LABELS,
    key: limits::MAX_LABEL_KEY_BYTES,
    value: limits::MAX_LABEL_VALUE_BYTES,
};

/// Checks the sizes of the map `field`, then `each` key and value, in the
/// order of the keys, so the first error is the same on every run.
fn string_map(
    field: &str,
    map: &HashMap<String, String>,
    max: &MapLimits,
    each: impl Fn(&str, &str) -> Result<(), FieldError>,
) -> Result<(), FieldError> {
    at_most(field, map.len(), max.entries, "entries")?;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        let entry = format!("{field}[{}]", quote(key));
        if key.len() > max.key {
            return Err(FieldError::new(
                entry,
                format!("a key of {} bytes, at most {}", key.len(), max.key),
            ));
        }
        let value = &map[key];
        if value.len() > max.value {
            return Err(FieldError::new(
                entry,
                format!("a value of {} bytes, at most {}", value.len(), max.value),
            ));
        }
        each(key, value).map_err(|e| FieldError::new(entry, e.rule))?;
    }
    Ok(())
}

/// Checks a command's number of arguments and each one's length and bytes.
fn command(field: &str, args: &[String]) -> Result<(), FieldError> {
    at_most(field, args.len(), limits::MAX_ARGS, "arguments")?;
    for (i, arg) in args.iter().enumerate() {
        bytes(&format!("{field}[{i}]"), arg, limits::MAX_ARG_BYTES)?;
        if arg.contains('\0') {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "must not contain NUL",
            ));
        }
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a task spec; field paths are relative to the spec (`image`, `ports[0].host_port`).
///
/// # Errors
/// The first rule the spec breaks.
pub fn task_spec(spec: &TaskSpec) -> Result<(), FieldError> {
    if !spec.name.is_empty() && (spec.name.len() > 63 || !is_name(&spec.name)) {
        return Err(FieldError::new(
            "name",
            format!(
                "{} must be 1-63 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
                quote(&spec.name)
            ),
        ));
    }
    if spec.image.trim().is_empty() {
        return Err(FieldError::new("image", "is required"));
    }
    bytes("image", &spec.image, limits::MAX_IMAGE_BYTES)?;
    if spec
        .image
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(FieldError::new(
            "image",
            format!(
                "{} is not an image reference (no spaces or control characters)",
                quote(&spec.image)
            ),
        ));
    }
    command("command", &spec.command)?;
    let env = MapLimits {
        entries: limits::MAX_ENV,
        key: limits::MAX_ENV_KEY_BYTES,
        value: limits::MAX_ENV_VALUE_BYTES,
    };
    string_map("env", &spec.env, &env, |key, value| {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(FieldError::new(
                "",
                "a variable name must be non-empty and contain neither '=' nor NUL",
            ));
        }
        if value.contains('\0') {
            return Err(FieldError::new("", "a value must not contain NUL"));
        }
        Ok(())
    })?;
    if let Some(m) = spec.milli_cpus
        && m < 1
    {
        return Err(FieldError::new(
            "milli_cpus",
            format!("{m} must be at least 1 (leave it unset for no cpu limit)"),
        ));
    }
    if let Some(b) = spec.memory_bytes
        && b < MIN_MEMORY_BYTES
    {
        return Err(FieldError::new(
            "memory_bytes",
            format!(
                "{b} must be at least 6Mi (6291456), Docker's smallest limit (leave it unset for no limit)"
            ),
        ));
    }
    if let Some(b) = spec.disk_bytes
        && b < 1
    {
        return Err(FieldError::new(
            "disk_bytes",
            format!("{b} must be positive"),
        ));
    }
    at_most("ports", spec.ports.len(), limits::MAX_PORTS, "entries")?;
    let mut seen = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        for (name, port) in [
            ("host_port", p.host_port),
            ("container_port", p.container_port),
        ] {
            if !(1..=65535).contains(&port) {
                return Err(FieldError::new(
                    format!("ports[{i}].{name}"),
                    format!("{port} is not a port (1-65535)"),
                ));
            }
        }
        let protocol = Protocol::try_from(p.protocol).map_err(|_| {
            FieldError::new(
                format!("ports[{i}].protocol"),
                format!("{} is not a known protocol", p.protocol),
            )
        })?;
        if !seen.insert((p.host_port, normal_protocol(protocol))) {
            return Err(FieldError::new(
                format!("ports[{i}].host_port"),
                format!("{} is published twice", p.host_port),
            ));
        }
    }
    if let Some(r) = &spec.restart {
        RestartCondition::try_from(r.condition).map_err(|_| {
            FieldError::new(
                "restart.condition",
                format!(
                    "{} is not a restart condition (never, on-failure or always)",
                    r.condition
                ),
            )
        })?;
    }
    for (field, map) in [
        ("labels", &spec.labels),
        ("node_selector", &spec.node_selector),
    ] {
        if map.contains_key("") {
            return Err(FieldError::new(field, "keys must be non-empty"));
        }
        string_map(field, map, &LABELS, |key, _| {
            if field == "labels" && key.starts_with(RESERVED_PREFIX) {
                return Err(FieldError::new(
                    "",
                    format!("the prefix {RESERVED_PREFIX:?} is reserved for orch"),
                ));
            }
            Ok(())
        })?;
    }
    if let Some(g) = &spec.stop_grace_period {
        match crate::time::std_duration(g) {
            Some(d) if d <= MAX_STOP_GRACE => {}
            _ => {
                return Err(FieldError::new(
                    "stop_grace_period",
                    "must be between 0 and 1 hour",
                ));
            }
        }
    }
    if let Some(check) = &spec.health_check {
        health_check(check).map_err(|e| e.within("health_check"))?;
    }
    encoded_at_most(spec)
}

/// The whole of a spec (field path empty) is at most
/// [`limits::MAX_SPEC_BYTES`] encoded.
fn encoded_at_most(spec: &impl prost::Message) -> Result<(), FieldError> {
    let total = spec.encoded_len();
    if total > limits::MAX_SPEC_BYTES {
        return Err(FieldError::new(
            "",
            format!(
                "{total} bytes encoded, at most {} ({})",
                limits::MAX_SPEC_BYTES,
                limits::size(limits::MAX_SPEC_BYTES)
            ),
        ));
    }
    Ok(())
}

/// Checks a health check; field paths are relative to it (`http.port`, `interval`).
///
/// # Errors
/// The first rule the check breaks.
pub fn health_check(check: &HealthCheck) -> Result<(), FieldError> {
    let port = |field: &str, port: u32| {
        if (1..=65535).contains(&port) {
            Ok(())
        } else {
            Err(FieldError::new(
                field,
                format!("{port} is not a port (1-65535)"),
            ))
        }
    };
    match &check.probe {
        None => {
            return Err(FieldError::new(
                "probe",
                "is required: one of http, tcp or exec",
            ));
        }
        Some(health_check::Probe::Http(http)) => {
            port("http.port", http.port)?;
            bytes("http.path", &http.path, limits::MAX_HTTP_PATH_BYTES)?;
            if !http.path.is_empty()
                && (!http.path.starts_with('/')
                    || http
                        .path
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(FieldError::new(
                    "http.path",
                    format!(
                        "{} must start with '/' and contain no spaces or control characters",
                        quote(&http.path)
                    ),
                ));
            }
        }
        Some(health_check::Probe::Tcp(tcp)) => port("tcp.port", tcp.port)?,
        Some(health_check::Probe::Exec(exec)) => {
            if exec.command.first().is_none_or(|p| p.is_empty()) {
                return Err(FieldError::new(
                    "exec.command",
                    "is required: at least the program to run",
                ));
            }
            command("exec.command", &exec.command)?;
        }
    }
    // A duration that does not convert (negative, bad nanoseconds) is as
    // wrong as one out of range, and gets the same message.
    let within = |field: &str,
                  d: &Option<prost_types::Duration>,
                  min: Duration,
                  max: Duration,
                  rule: &str| {
        match d.as_ref().map(crate::time::std_duration) {
            None => Ok(()),
            Some(Some(d)) if (min..=max).contains(&d) => Ok(()),
            Some(_) => Err(FieldError::new(field, rule)),
        }
    };
    within(
        "interval",
        &check.interval,
        health::MIN_INTERVAL,
        health::MAX_INTERVAL,
        "must be between 100ms and 1 hour",
    )?;
    let interval = health::settings(check).interval;
    within(
        "timeout",
        &check.timeout,
        Duration::from_nanos(1),
        interval,
        &format!(
            "must be more than 0 and at most the interval ({})",
            humanize(interval)
        ),
    )?;
    if check.retries == Some(0) {
        return Err(FieldError::new(
            "retries",
            "must be at least 1 (leave it unset for 3)",
        ));
    }
    within(
        "start_period",
        &check.start_period,
        Duration::ZERO,
        health::MAX_INTERVAL,
        "must be between 0 and 1 hour",
    )?;
    Ok(())
}

/// A duration for an error message: "10s", "1.5s", "250ms".
fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// The protocol a port mapping means: unset is TCP.
pub fn normal_protocol(p: Protocol) -> Protocol {
    match p {
        Protocol::Unspecified => Protocol::Tcp,
        other => other,
    }
}

/// The stop grace period a spec asks for, or the default.
pub fn stop_grace(spec: &TaskSpec) -> Duration {
    spec.stop_grace_period
        .as_ref()
        .and_then(crate::time::std_duration)
        .unwrap_or(DEFAULT_STOP_GRACE)
}

/// Whether `name` is a DNS label: 1-63 characters of `[a-z0-9-]`, starting
/// with a letter and not ending with '-'.
fn is_dns_label(name: &str) -> bool {
    name.len() <= MAX_SERVICE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks a service's name (field `name`): a DNS label.
///
/// # Errors
/// If it is empty or not a DNS label.
pub fn service_name(name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    if !is_dns_label(name) {
        return Err(FieldError::new(
            "name",
            format!(
                "{} must be 1-63 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'",
                quote(name)
            ),
        ));
    }
    Ok(())
}

/// Checks a service spec; field paths are relative to the spec (`name`,
/// `replicated.replicas`, `task.image`, `update.monitor`). The task template
/// is checked by [`task_spec`], its errors prefixed `task.`.
///
/// # Errors
/// The first rule the spec breaks, in the order of the spec's fields.
pub fn service_spec(spec: &ServiceSpec) -> Result<(), FieldError> {
    service_name(&spec.name)?;
    let at_least_one = "must be at least 1 (leave it unset for 1)";
    match &spec.mode {
        None => {
            return Err(FieldError::new(
                "mode",
                "is required: one of replicated, global or batch",
            ));
        }
        Some(service_spec::Mode::Replicated(r)) => {
            if let Some(n) = r.replicas
                && n > MAX_REPLICAS
            {
                return Err(FieldError::new(
                    "replicated.replicas",
                    format!("{n} must be at most {MAX_REPLICAS}"),
                ));
            }
        }
        Some(service_spec::Mode::Global(_)) => {}
        Some(service_spec::Mode::Batch(b)) => {
            match b.completions {
                Some(0) => return Err(FieldError::new("batch.completions", at_least_one)),
                Some(n) if n > MAX_COMPLETIONS => {
                    return Err(FieldError::new(
                        "batch.completions",
                        format!("{n} must be at most {MAX_COMPLETIONS}"),
                    ));
                }
                _ => {}
            }
            if b.parallelism == Some(0) {
                return Err(FieldError::new("batch.parallelism", at_least_one));
            }
        }
    }
    let Some(task) = &spec.task else {
        return Err(FieldError::new("task", "is required"));
    };
    if !task.name.is_empty() {
        return Err(FieldError::new(
            "task.name",
            "must be empty: orch names a service's tasks NAME.SLOT",
        ));
    }
    if !task.node_selector.is_empty() {
        return Err(FieldError::new(
            "task.node_selector",
            "must be empty (use placement.constraints)",
        ));
    }
    task_spec(task).map_err(|e| e.within("task"))?;
    if matches!(spec.mode, Some(service_spec::Mode::Batch(_)))
        && task
            .restart
            .as_ref()
            .is_some_and(|r| r.condition() == RestartCondition::Always)
    {
        return Err(FieldError::new(
            "task.restart.condition",
            "a batch task may not restart always: it would never complete (use on-failure or never)",
        ));
    }
    if let Some(p) = &spec.placement {
        placement(p).map_err(|e| e.within("placement"))?;
    }
    if let Some(u) = &spec.update {
        update_config(u).map_err(|e| e.within("update"))?;
    }
    encoded_at_most(spec)
}

/// Checks a service's placement; field paths are relative to it (`constraints`).
///
/// # Errors
/// The first rule the placement breaks.
pub fn placement(placement: &Placement) -> Result<(), FieldError> {
    if placement.constraints.contains_key("") {
        return Err(FieldError::new("constraints", "keys must be non-empty"));
    }
    string_map(
        "constraints",
        &placement.constraints,
        &LABELS,
        |_, _| Ok(()),
    )
}

/// Checks a service's update config; field paths are relative to it
/// (`parallelism`, `monitor`).
///
/// # Errors
/// The first rule the config breaks.
pub fn update_config(update: &UpdateConfig) -> Result<(), FieldError> {
    if update.parallelism == Some(0) {
        return Err(FieldError::new(
            "parallelism",
            "must be at least 1 (leave it unset for 1)",
        ));
    }
    for (field, d) in [("delay", &update.delay), ("monitor", &update.monitor)] {
        if let Some(d) = d
            && crate::time::std_duration(d).is_none_or(|d| d > MAX_UPDATE_WAIT)
        {
            return Err(FieldError::new(field, "must be between 0 and 1 hour"));
        }
    }
    UpdateOrder::try_from(update.order).map_err(|_| {
        FieldError::new(
            "order",
            format!(
                "{} is not an update order (stop-first or start-first)",
                update.order
            ),
        )
    })?;
    FailureAction::try_from(update.failure_action).map_err(|_| {
        FieldError::new(
            "failure_action",
            format!(
                "{} is not a failure action (pause, rollback or continue)",
                update.failure_action
            ),
        )
    })?;
    if let Some(r) = update.max_failure_ratio
        && !(0.0..=1.0).contains(&r)
    {
        // NaN is not in the range either.
        return Err(FieldError::new(
            "max_failure_ratio",
            format!("{r} must be between 0 and 1"),
        ));
    }
    Ok(())
}

/// Checks a worker's registration.
///
/// # Errors
/// The first rule the request breaks.
pub fn register(req: &RegisterRequest) -> Result<(), FieldError> {
    if !req.node_id.is_empty() {
        id("node_id", &req.node_id)?;
    }
    if req.name.trim().is_empty() {
        return Err(FieldError::new("name", "is required"));
    }
    bytes("name", &req.name, limits::MAX_NODE_NAME_BYTES)?;
    bytes("address", &req.address, limits::MAX_NODE_ADDRESS_BYTES)?;
    let node_labels = MapLimits {
        entries: limits::MAX_NODE_LABELS,
        key: limits::MAX_LABEL_KEY_BYTES,
        value: limits::MAX_NODE_LABEL_VALUE_BYTES,
    };
    string_map("labels", &req.labels, &node_labels, |_, _| Ok(()))?;
    let Some(c) = &req.capacity else {
        return Err(FieldError::new("capacity", "is required"));
    };
    for (field, v) in [
        ("capacity.milli_cpus", c.milli_cpus),
        ("capacity.memory_bytes", c.memory_bytes),
        ("capacity.disk_bytes", c.disk_bytes),
    ] {
        if v < 1 {
            return Err(FieldError::new(field, format!("{v} must be positive")));
        }
    }
    Ok(())
}

/// Checks a worker's report (`StatusBatch.statuses`) and cuts what is for
/// people only (each status's `message`, and its `container_id`) to its
/// limit rather than refuse the report: losing a state change would be
/// worse than a shortened pull error.
///
/// # Errors
/// If the batch has more than [`limits::MAX_STATUSES`] statuses.
pub fn statuses(statuses: &mut [TaskStatus]) -> Result<(), FieldError> {
    at_most("statuses", statuses.len(), limits::MAX_STATUSES, "entries")?;
    for s in statuses {
        limits::truncate(&mut s.message, limits::MAX_STATUS_MESSAGE_BYTES);
        limits::truncate(&mut s.container_id, limits::MAX_CONTAINER_ID_BYTES);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ExecProbe, HttpProbe, PortMapping, Resources, RestartPolicy, TcpProbe};

    fn valid() -> TaskSpec {
        TaskSpec {
            name: "web-1".into(),
            image: "busybox:latest".into(),
            command: vec!["sleep".into(), "10".into()],
            env: [("A".to_string(), "1".to_string())].into(),
            milli_cpus: Some(500),
            memory_bytes: Some(64 << 20),
            ports: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: 0,
            }],
            ..Default::default()
        }
    }

    /// Applies `edit` to a valid spec and checks the error names `field`.
    fn check(edit: impl FnOnce(&mut TaskSpec), field: &str) {
        let mut spec = valid();
        edit(&mut spec);
        let err = task_spec(&spec).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(!err.rule.is_empty());
    }

    #[test]
    fn a_valid_spec_passes() {
        assert_eq!(task_spec(&valid()), Ok(()));
        assert_eq!(
            task_spec(&TaskSpec {
                image: "x".into(),
                ..Default::default()
            }),
            Ok(())
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        check(|s| s.name = "-bad".into(), "name");
        check(|s| s.name = "a".repeat(64), "name");
        check(|s| s.name = "has space".into(), "name");
        check(|s| s.image = String::new(), "image");
        check(|s| s.image = "   ".into(), "image");
        check(|s| s.image = "bad image".into(), "image");
        check(|s| s.command.push("a\0b".into()), "command[2]");
        check(
            |s| {
                s.env.insert("A=B".into(), "x".into());
            },
            "env[\"A=B\"]",
        );
        check(
            |s| {
                s.env.insert(String::new(), "x".into());
            },
            "env[\"\"]",
        );
        check(
            |s| {
                s.env.insert("B".into(), "x\0".into());
            },
            "env[\"B\"]",
        );
        check(|s| s.milli_cpus = Some(0), "milli_cpus");
        check(|s| s.milli_cpus = Some(-500), "milli_cpus");
        check(|s| s.memory_bytes = Some(0), "memory_bytes");
        check(|s| s.memory_bytes = Some(-1), "memory_bytes");
        check(|s| s.memory_bytes = Some(1 << 20), "memory_bytes");
        check(|s| s.disk_bytes = Some(0), "disk_bytes");
        check(|s| s.ports[0].host_port = 0, "ports[0].host_port");
        check(|s| s.ports[0].host_port = 70000, "ports[0].host_port");
        check(|s| s.ports[0].container_port = 0, "ports[0].container_port");
        check(|s| s.ports[0].protocol = 9, "ports[0].protocol");
        check(
            |s| {
                s.ports.push(PortMapping {
                    host_port: 8080,
                    container_port: 81,
                    protocol: 1,
                })
            },
            "ports[1].host_port",
        );
        check(
            |s| {
                s.restart = Some(RestartPolicy {
                    condition: 7,
                    max_restarts: 0,
                })
            },
            "restart.condition",
        );
        check(
            |s| {
                s.labels.insert("orch.task-id".into(), "x".into());
            },
            "labels[\"orch.task-id\"]",
        );
        check(
            |s| {
                s.labels.insert(String::new(), "x".into());
            },
            "labels",
        );
        check(
            |s| {
                s.node_selector.insert(String::new(), "x".into());
            },
            "node_selector",
        );
        check(
            |s| {
                s.stop_grace_period = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            },
            "stop_grace_period",
        );
        check(
            |s| {
                s.stop_grace_period = Some(prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                })
            },
            "stop_grace_period",
        );
    }

    fn http(port: u32, path: &str) -> Option<health_check::Probe> {
        Some(health_check::Probe::Http(HttpProbe {
            port,
            path: path.into(),
        }))
    }

    fn exec(command: &[&str]) -> Option<health_check::Probe> {
        Some(health_check::Probe::Exec(ExecProbe {
            command: command.iter().map(|s| s.to_string()).collect(),
        }))
    }

    /// A valid spec with a valid HTTP check, edited by `edit`.
    fn check_health(edit: impl FnOnce(&mut HealthCheck), field: &str) {
        check(
            |s| {
                let mut h = HealthCheck {
                    probe: http(8080, "/health"),
                    ..Default::default()
                };
                edit(&mut h);
                s.health_check = Some(h);
            },
            field,
        );
    }

    fn ms(n: u64) -> Option<prost_types::Duration> {
        Some(crate::time::duration(Duration::from_millis(n)))
    }

    #[test]
    fn each_health_check_rule_names_its_field() {
        check_health(|h| h.probe = None, "health_check.probe");
        check_health(|h| h.probe = http(0, "/"), "health_check.http.port");
        check_health(|h| h.probe = http(65536, "/"), "health_check.http.port");
        check_health(|h| h.probe = http(80, "health"), "health_check.http.path");
        check_health(|h| h.probe = http(80, "/a b"), "health_check.http.path");
        check_health(
            |h| h.probe = Some(health_check::Probe::Tcp(TcpProbe { port: 0 })),
            "health_check.tcp.port",
        );
        check_health(|h| h.probe = exec(&[]), "health_check.exec.command");
        check_health(|h| h.probe = exec(&["", "x"]), "health_check.exec.command");
        check_health(
            |h| h.probe = exec(&["test", "a\0"]),
            "health_check.exec.command[1]",
        );
        check_health(|h| h.interval = ms(99), "health_check.interval");
        check_health(|h| h.interval = ms(3_600_001), "health_check.interval");
        check_health(
            |h| {
                h.interval = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            },
            "health_check.interval",
        );
        check_health(|h| h.timeout = ms(0), "health_check.timeout");
        // Longer than the default interval (10s), and than a set one.
        check_health(|h| h.timeout = ms(10_001), "health_check.timeout");
        check_health(
            |h| {
                h.interval = ms(1000);
                h.timeout = ms(1001);
            },
            "health_check.timeout",
        );
        check_health(|h| h.retries = Some(0), "health_check.retries");
        check_health(
            |h| h.start_period = ms(3_600_001),
            "health_check.start_period",
        );
        check_health(
            |h| {
                h.start_period = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: -5,
                })
            },
            "health_check.start_period",
        );
    }

    #[test]
    fn valid_health_checks_pass() {
        for probe in [
            http(8080, "/health"),
            http(1, ""),
            Some(health_check::Probe::Tcp(TcpProbe { port: 65535 })),
            exec(&["true"]),
        ] {
            let spec = TaskSpec {
                health_check: Some(HealthCheck {
                    probe,
                    interval: ms(100),
                    timeout: ms(100),
                    retries: Some(1),
                    start_period: ms(0),
                }),
                ..valid()
            };
            assert_eq!(task_spec(&spec), Ok(()), "{spec:?}");
        }
    }

    #[test]
    fn same_port_on_two_protocols_is_allowed() {
        let mut spec = valid();
        spec.ports.push(PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Udp as i32,
        });
        assert_eq!(task_spec(&spec), Ok(()));
    }

    fn service(mode: service_spec::Mode) -> ServiceSpec {
        ServiceSpec {
            name: "web-2".into(),
            mode: Some(mode),
            task: Some(TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            placement: Some(Placement {
                constraints: [("zone".to_string(), "a".to_string())].into(),
            }),
            update: Some(UpdateConfig {
                parallelism: Some(2),
                delay: ms(0),
                order: UpdateOrder::StartFirst as i32,
                monitor: ms(3_600_000),
                failure_action: FailureAction::Continue as i32,
                max_failure_ratio: Some(1.0),
            }),
        }
    }

    fn replicated(replicas: Option<u32>) -> service_spec::Mode {
        service_spec::Mode::Replicated(crate::v1::ReplicatedMode { replicas })
    }

    fn batch(completions: Option<u32>, parallelism: Option<u32>) -> service_spec::Mode {
        service_spec::Mode::Batch(crate::v1::BatchMode {
            completions,
            parallelism,
        })
    }

    /// Applies `edit` to a valid replicated service and checks the error names `field`.
    fn check_service(edit: impl FnOnce(&mut ServiceSpec), field: &str) {
        let mut spec = service(replicated(Some(3)));
        edit(&mut spec);
        let err = service_spec(&spec).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(!err.rule.is_empty());
    }

    fn task(s: &mut ServiceSpec) -> &mut TaskSpec {
        s.task.get_or_insert_default()
    }

    fn update(s: &mut ServiceSpec) -> &mut UpdateConfig {
        s.update.get_or_insert_default()
    }

    #[test]
    fn valid_services_of_each_mode_pass() {
        let global = service_spec::Mode::Global(crate::v1::GlobalMode {});
        for mode in [
            replicated(Some(3)),
            replicated(Some(0)),
            replicated(Some(MAX_REPLICAS)),
            replicated(None),
            global,
            batch(Some(5), Some(2)),
            batch(Some(MAX_COMPLETIONS), None),
            batch(None, None),
        ] {
            let spec = service(mode);
            assert_eq!(service_spec(&spec), Ok(()), "{spec:?}");
        }
        // The least a service needs.
        let spec = ServiceSpec {
            name: "a".into(),
            mode: Some(replicated(None)),
            task: Some(TaskSpec {
                image: "x".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(service_spec(&spec), Ok(()));
        // A batch task may restart on failure or never.
        for condition in [RestartCondition::OnFailure, RestartCondition::Never] {
            let mut spec = service(batch(None, None));
            task(&mut spec).restart = Some(RestartPolicy {
                condition: condition as i32,
                max_restarts: 0,
            });
            assert_eq!(service_spec(&spec), Ok(()));
        }
    }

    #[test]
    fn service_names_are_dns_labels() {
        for good in ["a", "web", "web-2", "a1", &"a".repeat(63)] {
            let mut spec = service(replicated(None));
            spec.name = good.to_string();
            assert_eq!(service_spec(&spec), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Web",
            "1web",
            "-web",
            "web-",
            "web_2",
            "web.2",
            "wéb",
            "web 2",
            &"a".repeat(64),
        ] {
            check_service(|s| s.name = bad.to_string(), "name");
        }
    }

    #[test]
    fn each_service_rule_names_its_field() {
        check_service(|s| s.mode = None, "mode");
        check_service(
            |s| s.mode = Some(replicated(Some(MAX_REPLICAS + 1))),
            "replicated.replicas",
        );
        check_service(|s| s.mode = Some(batch(Some(0), None)), "batch.completions");
        check_service(
            |s| s.mode = Some(batch(Some(MAX_COMPLETIONS + 1), None)),
            "batch.completions",
        );
        check_service(|s| s.mode = Some(batch(None, Some(0))), "batch.parallelism");
        check_service(|s| s.task = None, "task");
        check_service(|s| task(s).image.clear(), "task.image");
        check_service(|s| task(s).name = "web.1".into(), "task.name");
        check_service(
            |s| {
                task(s).node_selector.insert("zone".into(), "a".into());
            },
            "task.node_selector",
        );
        check_service(|s| task(s).memory_bytes = Some(1), "task.memory_bytes");
        check_service(
            |s| {
                task(s).health_check = Some(HealthCheck::default());
            },
            "task.health_check.probe",
        );
        check_service(
            |s| {
                s.mode = Some(batch(None, None));
                task(s).restart = Some(RestartPolicy {
                    condition: RestartCondition::Always as i32,
                    max_restarts: 0,
                });
            },
            "task.restart.condition",
        );
        check_service(
            |s| {
                s.placement
                    .get_or_insert_default()
                    .constraints
                    .insert(String::new(), "a".into());
            },
            "placement.constraints",
        );
        check_service(|s| update(s).parallelism = Some(0), "update.parallelism");
        check_service(|s| update(s).delay = ms(3_600_001), "update.delay");
        check_service(
            |s| {
                update(s).delay = Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                })
            },
            "update.delay",
        );
        check_service(|s| update(s).monitor = ms(3_600_001), "update.monitor");
        check_service(
            |s| {
                update(s).monitor = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: -1,
                })
            },
            "update.monitor",
        );
        check_service(|s| update(s).order = 3, "update.order");
        check_service(|s| update(s).failure_action = 4, "update.failure_action");
        for ratio in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            check_service(
                |s| update(s).max_failure_ratio = Some(ratio),
                "update.max_failure_ratio",
            );
        }
    }

    /// Applies `edit` to a valid spec and checks the error names `field`
    /// and says `rule`, in a short message.
    fn check_limit(edit: impl FnOnce(&mut TaskSpec), field: &str, rule: &str) {
        let mut spec = valid();
        edit(&mut spec);
        let err = task_spec(&spec).expect_err(field);
        assert_eq!(err.field, field, "{err}");
        assert!(err.rule.contains(rule), "{err}");
        assert!(err.to_string().len() < 200, "{err}");
    }

    /// `n` distinct keys `K0`, `K1`, ... with `value`.
    fn entries(n: usize, value: &str) -> HashMap<String, String> {
        (0..n)
            .map(|i| (format!("K{i}"), value.to_string()))
            .collect()
    }

    #[test]
    fn each_limit_of_a_task_spec_names_its_field_and_the_limit() {
        use crate::limits::*;
        // Each limit, just reached, passes.
        let mut at_limits = valid();
        at_limits.image = "a".repeat(MAX_IMAGE_BYTES);
        at_limits.command = vec!["x".into(); MAX_ARGS];
        at_limits.env = entries(MAX_ENV, "v");
        at_limits.labels = entries(MAX_LABELS, "v");
        at_limits.node_selector = entries(MAX_LABELS, "v");
        at_limits.ports = (1..=MAX_PORTS as u32)
            .map(|p| PortMapping {
                host_port: p,
                container_port: p,
                protocol: 0,
            })
            .collect();
        assert_eq!(task_spec(&at_limits), Ok(()));
        let mut long = valid();
        long.command = vec!["x".repeat(MAX_ARG_BYTES)];
        long.env = [("K".repeat(MAX_ENV_KEY_BYTES), "v".into())].into();
        long.labels = [(
            "k".repeat(MAX_LABEL_KEY_BYTES),
            "v".repeat(MAX_LABEL_VALUE_BYTES),
        )]
        .into();
        assert_eq!(task_spec(&long), Ok(()));
        let mut big_value = valid();
        big_value.env = [("BIG".to_string(), "v".repeat(MAX_ENV_VALUE_BYTES))].into();
        assert_eq!(task_spec(&big_value), Ok(()));

        // One past each.
        check_limit(
            |s| s.image = "a".repeat(MAX_IMAGE_BYTES + 1),
            "image",
            "513 bytes, at most 512",
        );
        check_limit(
            |s| s.command = vec!["x".into(); 200_000],
            "command",
            "200000 arguments, at most 4096",
        );
        check_limit(
            |s| s.command.push("x".repeat(MAX_ARG_BYTES + 1)),
            "command[2]",
            "131073 bytes, at most 131072",
        );
        check_limit(
            |s| s.env = entries(100_000, "v"),
            "env",
            "100000 entries, at most 1024",
        );
        check_limit(
            |s| {
                s.env.insert("K".repeat(MAX_ENV_KEY_BYTES + 1), "v".into());
            },
            &format!("env[{}]", quote(&"K".repeat(257))),
            "a key of 257 bytes, at most 256",
        );
        check_limit(
            |s| {
                s.env.insert("BIG".into(), "v".repeat(2 << 20));
            },
            "env[\"BIG\"]",
            "a value of 2097152 bytes, at most 131072",
        );
        for field in ["labels", "node_selector"] {
            fn map<'a>(s: &'a mut TaskSpec, field: &str) -> &'a mut HashMap<String, String> {
                if field == "labels" {
                    &mut s.labels
                } else {
                    &mut s.node_selector
                }
            }
            check_limit(
                |s| *map(s, field) = entries(50_000, "v"),
                field,
                "50000 entries, at most 256",
            );
            check_limit(
                |s| {
                    map(s, field).insert("k".repeat(254), "v".into());
                },
                &format!("{field}[{}]", quote(&"k".repeat(254))),
                "a key of 254 bytes, at most 253",
            );
            check_limit(
                |s| {
                    map(s, field).insert("k".into(), "v".repeat(4097));
                },
                &format!("{field}[\"k\"]"),
                "a value of 4097 bytes, at most 4096",
            );
        }
        check_limit(
            |s| {
                s.ports = (1..=1025)
                    .map(|p| PortMapping {
                        host_port: p,
                        container_port: 80,
                        protocol: 0,
                    })
                    .collect()
            },
            "ports",
            "1025 entries, at most 1024",
        );
        check_limit(
            |s| {
                s.health_check = Some(HealthCheck {
                    probe: http(80, &format!("/{}", "a".repeat(MAX_HTTP_PATH_BYTES))),
                    ..Default::default()
                })
            },
            "health_check.http.path",
            "2049 bytes, at most 2048",
        );
        check_limit(
            |s| {
                s.health_check = Some(HealthCheck {
                    probe: exec(&["x"; 4097]),
                    ..Default::default()
                })
            },
            "health_check.exec.command",
            "4097 arguments, at most 4096",
        );
        // Every field within its limit, the whole over its own.
        check_limit(
            |s| {
                s.env = entries(3, &"v".repeat(MAX_ENV_VALUE_BYTES));
            },
            "",
            "at most 262144 (256 KiB)",
        );
    }

    #[test]
    fn an_error_quotes_a_huge_value_only_by_its_start() {
        let huge = "x y".repeat(1 << 20);
        let mut spec = valid();
        spec.name = huge.clone();
        let err = task_spec(&spec).unwrap_err().to_string();
        assert!(err.len() < 300 && err.contains("(3145728 bytes)"), "{err}");
        let mut spec = valid();
        spec.image = "bad image".into();
        assert!(task_spec(&spec).unwrap_err().rule.contains("\"bad image\""));
        let mut spec = valid();
        spec.env.insert(huge.clone(), "v".into());
        assert!(task_spec(&spec).unwrap_err().to_string().len() < 300);
        let err = id("id", &huge).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        let err = service_name(&huge).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }

    #[test]
    fn each_limit_of_a_service_spec_names_its_field() {
        use crate::limits::*;
        check_service(
            |s| s.placement.get_or_insert_default().constraints = entries(257, "a"),
            "placement.constraints",
        );
        check_service(
            |s| {
                s.placement
                    .get_or_insert_default()
                    .constraints
                    .insert("zone".into(), "a".repeat(MAX_LABEL_VALUE_BYTES + 1));
            },
            "placement.constraints[\"zone\"]",
        );
        check_service(|s| task(s).image = "a".repeat(3 << 20), "task.image");
        // The task within its limit, the service over its own.
        let mut spec = service(replicated(None));
        task(&mut spec).command = vec!["x".repeat(MAX_ARG_BYTES)];
        spec.placement.get_or_insert_default().constraints =
            entries(100, &"a".repeat(MAX_LABEL_VALUE_BYTES));
        let err = service_spec(&spec).unwrap_err();
        assert_eq!(err.within("spec").field, "spec");
    }

    #[test]
    fn each_limit_of_a_registration_names_its_field() {
        use crate::limits::*;
        let good = RegisterRequest {
            name: "w".repeat(MAX_NODE_NAME_BYTES),
            address: "a".repeat(MAX_NODE_ADDRESS_BYTES),
            labels: entries(MAX_NODE_LABELS, &"v".repeat(MAX_NODE_LABEL_VALUE_BYTES)),
            capacity: Some(Resources {
                milli_cpus: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        assert_eq!(register(&good), Ok(()));
        type Edit = fn(&mut RegisterRequest);
        let cases: [(Edit, &str, &str); 4] = [
            (|r| r.name.push('w'), "name", "254 bytes, at most 253"),
            (
                |r| r.address.push('a'),
                "address",
                "1025 bytes, at most 1024",
            ),
            (
                |r| r.labels = entries(65, "v"),
                "labels",
                "65 entries, at most 64",
            ),
            (
                |r| {
                    r.labels.insert("K0".into(), "v".repeat(254));
                },
                "labels[\"K0\"]",
                "a value of 254 bytes, at most 253",
            ),
        ];
        for (edit, field, rule) in cases {
            let mut r = good.clone();
            edit(&mut r);
            let err = register(&r).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.rule.contains(rule), "{err}");
        }
    }

    #[test]
    fn a_report_is_bounded_and_its_messages_cut() {
        use crate::limits::*;
        let mut batch = vec![TaskStatus::default(); MAX_STATUSES + 1];
        let err = statuses(&mut batch).unwrap_err();
        assert_eq!(err.to_string(), "statuses: 10001 entries, at most 10000");
        let mut batch = vec![TaskStatus {
            message: "m".repeat(1 << 20),
            container_id: "c".repeat(1000),
            ..Default::default()
        }];
        statuses(&mut batch).unwrap();
        assert!(batch[0].message.len() <= MAX_STATUS_MESSAGE_BYTES);
        assert!(batch[0].message.ends_with('…'));
        assert!(batch[0].container_id.len() <= MAX_CONTAINER_ID_BYTES);
    }

    #[test]
    fn field_errors_read_well() {
        let err = FieldError::new("image", "is required").within("specs[3]");
        assert_eq!(err.to_string(), "specs[3].image: is required");
    }

    #[test]
    fn ids() {
        assert!(id("id", "").is_err());
        assert_eq!(id("id", "nope").unwrap_err().field, "id");
        assert!(id("id", "0190a4c6-57b6-7c6e-8000-000000000000").is_ok());
    }

    #[test]
    fn registrations() {
        let good = RegisterRequest {
            name: "w1".into(),
            capacity: Some(Resources {
                milli_cpus: 2000,
                memory_bytes: 1 << 30,
                disk_bytes: 1 << 30,
            }),
            ..Default::default()
        };
        assert_eq!(register(&good), Ok(()));
        let mut r = good.clone();
        r.name.clear();
        assert_eq!(register(&r).unwrap_err().field, "name");
        let mut r = good.clone();
        r.capacity = None;
        assert_eq!(register(&r).unwrap_err().field, "capacity");
        let mut r = good.clone();
        if let Some(c) = r.capacity.as_mut() {
            c.memory_bytes = 0;
        }
        assert_eq!(register(&r).unwrap_err().field, "capacity.memory_bytes");
        let mut r = good;
        r.node_id = "x".into();
        assert_eq!(register(&r).unwrap_err().field, "node_id");
    }
}
