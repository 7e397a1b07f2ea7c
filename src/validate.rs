//! Validation of everything a client or a worker sends: one function per
//! message, each returning the first broken rule as a [`FieldError`] that
//! names the field, so the manager can answer `InvalidArgument` with a message
//! a person can act on, and store nothing.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use uuid::Uuid;

use crate::health;
use crate::labels::RESERVED_PREFIX;
use crate::v1::{
    FailureAction, HealthCheck, Placement, Protocol, RegisterRequest, RestartCondition,
    ServiceSpec, TaskSpec, UpdateConfig, UpdateOrder, health_check, service_spec,
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

    /// The same error with `prefix.` put before the field path.
    #[must_use]
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = format!("{prefix}.{}", self.field);
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
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
    Uuid::parse_str(value)
        .map_err(|_| FieldError::new(field, format!("{value:?} is not a valid id (a UUID)")))
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
                "{:?} must be 1-63 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
                spec.name
            ),
        ));
    }
    if spec.image.trim().is_empty() {
        return Err(FieldError::new("image", "is required"));
    }
    if spec.image.len() > 255
        || spec
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(FieldError::new(
            "image",
            format!(
                "{:?} is not an image reference (no spaces, at most 255 characters)",
                spec.image
            ),
        ));
    }
    if let Some(i) = spec.command.iter().position(|a| a.contains('\0')) {
        return Err(FieldError::new(
            format!("command[{i}]"),
            "must not contain NUL",
        ));
    }
    let mut keys: Vec<&String> = spec.env.keys().collect();
    keys.sort();
    for key in keys {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(FieldError::new(
                format!("env[{key:?}]"),
                "a variable name must be non-empty and contain neither '=' nor NUL",
            ));
        }
        if spec.env[key].contains('\0') {
            return Err(FieldError::new(
                format!("env[{key:?}]"),
                "a value must not contain NUL",
            ));
        }
    }
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
        // In order, so the same spec always gets the same answer.
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            if key.is_empty() {
                return Err(FieldError::new(field, "keys must be non-empty"));
            }
            if field == "labels" && key.starts_with(RESERVED_PREFIX) {
                return Err(FieldError::new(
                    format!("labels[{key:?}]"),
                    format!("the prefix {RESERVED_PREFIX:?} is reserved for orch"),
                ));
            }
        }
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
                        "{:?} must start with '/' and contain no spaces or control characters",
                        http.path
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
            if let Some(i) = exec.command.iter().position(|a| a.contains('\0')) {
                return Err(FieldError::new(
                    format!("exec.command[{i}]"),
                    "must not contain NUL",
                ));
            }
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
                "{name:?} must be 1-63 characters of lowercase letters, digits and '-', starting with a letter and not ending with '-'"
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
    Ok(())
}

/// Checks a service's placement; field paths are relative to it (`constraints`).
///
/// # Errors
/// The first rule the placement breaks.
pub fn placement(placement: &Placement) -> Result<(), FieldError> {
    if placement.constraints.keys().any(String::is_empty) {
        return Err(FieldError::new("constraints", "keys must be non-empty"));
    }
    Ok(())
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
