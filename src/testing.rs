//! Generators of API messages for property tests and fuzzing (proptest
//! strategies), built from the rules of [`crate::validate`] as they are
//! documented, not from its code: valid messages, the same messages with one
//! field broken (paired with the path of the field that
//! [`crate::validate`] must name), and wild ones with any values at all.
//!
//! Compiled for this crate's tests, and for other crates' tests with the
//! `testing` feature. Sizes stay small (a few entries, short strings), so a
//! valid message stays within any sensible limit on input.

use std::time::Duration;

use proptest::collection::{btree_map, hash_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

use crate::labels::RESERVED_PREFIX;
use crate::v1::{
    BatchMode, ExecProbe, GlobalMode, HealthCheck, HttpProbe, Placement, PortMapping,
    RegisterRequest, ReplicatedMode, Resources, RestartPolicy, ServiceSpec, TaskSpec, TcpProbe,
    UpdateConfig, health_check, service_spec,
};
use crate::validate::{MAX_COMPLETIONS, MAX_REPLICAS, MIN_MEMORY_BYTES};

/// A message with one field broken, and the path of that field.
pub type Broken<T> = (T, String);

/// Text without NUL: any other character, unicode included.
fn text(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>().prop_filter("no NUL", |c| *c != '\0'), 0..=max)
        .prop_map(|cs| cs.into_iter().collect())
}

/// Text as a hostile client might send it: anything, NUL and control
/// characters included, now and then long.
pub fn wild_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-zA-Z0-9 ._:/=-]{0,12}",
        1 => Just(String::new()),
        1 => Just("orch.task-id".to_string()),
        1 => "[\\x00-\\x20]{1,4}",
        1 => (any::<char>(), 256..2000usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
}

fn port() -> impl Strategy<Value = u32> {
    1..=65535u32
}

fn duration(min: Duration, max: Duration) -> impl Strategy<Value = prost_types::Duration> {
    let (min, max) = (min.as_nanos(), max.as_nanos());
    #[allow(clippy::cast_possible_truncation)]
    (min..=max).prop_map(|n| crate::time::duration(Duration::from_nanos(n as u64)))
}

/// A duration that does not convert, or is longer than `max`.
fn bad_duration(max: Duration) -> impl Strategy<Value = prost_types::Duration> {
    let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
    prop_oneof![
        (i64::MIN..0, 0..1_000_000_000i32)
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        (0..=max, prop_oneof![i32::MIN..0, 1_000_000_000..=i32::MAX])
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        (max + 1..=i64::MAX / 2, 0..1_000_000_000i32)
            .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
        Just(prost_types::Duration {
            seconds: max,
            nanos: 1
        }),
    ]
}

/// A task name: empty, or a valid one.
fn task_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}"]
}

fn image() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._/-]{0,30}(:[a-z0-9._-]{1,10})?(@sha256:[0-9a-f]{64})?"
}

fn env() -> impl Strategy<Value = Map> {
    hash_map("[A-Za-z_][A-Za-z0-9_]{0,12}", text(16), 0..6)
}

fn labels() -> impl Strategy<Value = Map> {
    hash_map("[a-z][a-z0-9._/-]{0,12}", text(12), 0..4).prop_map(|mut m| {
        m.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
        m
    })
}

/// Published ports, no host port twice on one protocol (unset is TCP).
fn ports() -> impl Strategy<Value = Vec<PortMapping>> {
    vec((port(), port(), 0..=2i32), 0..4).prop_map(|ps| {
        let mut seen = std::collections::HashSet::new();
        ps.into_iter()
            .filter(|(host, _, protocol)| seen.insert((*host, (*protocol).max(1))))
            .map(|(host_port, container_port, protocol)| PortMapping {
                host_port,
                container_port,
                protocol,
            })
            .collect()
    })
}

fn restart() -> impl Strategy<Value = RestartPolicy> {
    (0..=3i32, any::<u32>()).prop_map(|(condition, max_restarts)| RestartPolicy {
        condition,
        max_restarts,
    })
}

fn probe() -> impl Strategy<Value = health_check::Probe> {
    prop_oneof![
        (
            port(),
            prop_oneof![Just(String::new()), "/[a-z0-9/._-]{0,16}"]
        )
            .prop_map(|(port, path)| health_check::Probe::Http(HttpProbe { port, path })),
        port().prop_map(|port| health_check::Probe::Tcp(TcpProbe { port })),
        ("[a-z/]{1,10}", vec(text(8), 0..3)).prop_map(|(program, args)| {
            let command = std::iter::once(program).chain(args).collect();
            health_check::Probe::Exec(ExecProbe { command })
        }),
    ]
}

/// A valid health check.
pub fn health_check() -> impl Strategy<Value = HealthCheck> {
    let interval = option::of(duration(
        crate::health::MIN_INTERVAL,
        crate::health::MAX_INTERVAL,
    ));
    (
        probe(),
        interval,
        any::<Index>(),
        option::of(1..=10u32),
        option::of(duration(Duration::ZERO, crate::health::MAX_INTERVAL)),
        any::<bool>(),
    )
        .prop_map(
            |(probe, interval, timeout, retries, start_period, has_timeout)| {
                let mut check = HealthCheck {
                    probe: Some(probe),
                    interval,
                    retries,
                    start_period,
                    ..Default::default()
                };
                // At most the interval in force.
                let most = crate::health::settings(&check).interval.as_nanos();
                #[allow(clippy::cast_possible_truncation)]
                let nanos = 1 + timeout.index(most as usize) as u64;
                check.timeout =
                    has_timeout.then(|| crate::time::duration(Duration::from_nanos(nanos)));
                check
            },
        )
}

type Map = std::collections::HashMap<String, String>;

/// A task spec's fields, in the order of the proto, grouped as proptest's
/// tuples allow.
type TaskParts = (
    String,
    String,
    Vec<String>,
    Map,
    (Option<i64>, Option<i64>, Option<i64>),
    (
        Vec<PortMapping>,
        Option<RestartPolicy>,
        Map,
        Map,
        Option<prost_types::Duration>,
        Option<HealthCheck>,
    ),
);

fn assemble((name, image, command, env, resources, rest): TaskParts) -> TaskSpec {
    let (milli_cpus, memory_bytes, disk_bytes) = resources;
    let (ports, restart, labels, node_selector, stop_grace_period, health_check) = rest;
    TaskSpec {
        name,
        image,
        command,
        env,
        milli_cpus,
        memory_bytes,
        disk_bytes,
        ports,
        restart,
        labels,
        node_selector,
        stop_grace_period,
        health_check,
    }
}

/// A valid task spec, as `SubmitTask` takes it.
pub fn task_spec() -> impl Strategy<Value = TaskSpec> {
    let resources = (
        option::of(1..=64_000i64),
        option::of(MIN_MEMORY_BYTES..=1 << 40),
        option::of(1..=1i64 << 40),
    );
    let rest = (
        ports(),
        option::of(restart()),
        labels(),
        hash_map("[a-z][a-z0-9._/-]{0,12}", text(12), 0..3),
        option::of(duration(Duration::ZERO, crate::validate::MAX_STOP_GRACE)),
        option::of(health_check()),
    );
    (
        task_name(),
        image(),
        vec(text(16), 0..6),
        env(),
        resources,
        rest,
    )
        .prop_map(assemble)
}

/// A valid task spec with one field broken: every rule of
/// [`crate::validate::task_spec`] in turn, each with values drawn at random.
pub fn broken_task_spec() -> impl Strategy<Value = Broken<TaskSpec>> {
    (task_spec(), task_break(true)).prop_map(|(mut spec, b)| {
        let field = b.apply(&mut spec);
        (spec, field)
    })
}

/// One way to break one field of a valid task spec.
#[derive(Debug, Clone)]
enum TaskBreak {
    Name(String),
    NodeSelector,
    Image(String),
    /// An argument with a NUL, inserted at `at`.
    Command(Index, String),
    EnvKey(String),
    EnvValue(String, String),
    MilliCpus(i64),
    Memory(i64),
    Disk(i64),
    /// A mapping inserted at `at` whose host port (or else container port)
    /// is out of range.
    PortRange(Index, bool, u32),
    Protocol(i32),
    /// A copy of the mapping at `at`, on the same protocol.
    DuplicatePort(Index, u32),
    Restart(i32),
    Label(String),
    Grace(prost_types::Duration),
    Health(HealthCheck, String),
}

/// A host port none of `ports` uses.
fn free_port(ports: &[PortMapping]) -> u32 {
    (1..=65535)
        .find(|p| ports.iter().all(|m| m.host_port != *p))
        .unwrap_or(1)
}

impl TaskBreak {
    /// Breaks the field in `s` and returns its path.
    fn apply(&self, s: &mut TaskSpec) -> String {
        match self {
            Self::Name(n) => {
                s.name = n.clone();
                "name".into()
            }
            Self::NodeSelector => {
                s.node_selector.insert(String::new(), "x".into());
                "node_selector".into()
            }
            Self::Image(bad) => {
                s.image = bad.clone();
                "image".into()
            }
            Self::Command(at, arg) => {
                let i = at.index(s.command.len() + 1);
                s.command.insert(i, format!("{arg}\0{arg}"));
                format!("command[{i}]")
            }
            Self::EnvKey(key) => {
                s.env.insert(key.clone(), "v".into());
                format!("env[{key:?}]")
            }
            Self::EnvValue(key, v) => {
                s.env.insert(key.clone(), format!("{v}\0"));
                format!("env[{key:?}]")
            }
            Self::MilliCpus(m) => {
                s.milli_cpus = Some(*m);
                "milli_cpus".into()
            }
            Self::Memory(b) => {
                s.memory_bytes = Some(*b);
                "memory_bytes".into()
            }
            Self::Disk(b) => {
                s.disk_bytes = Some(*b);
                "disk_bytes".into()
            }
            Self::PortRange(at, host, bad) => {
                let i = at.index(s.ports.len() + 1);
                // A host port no other mapping uses, so that only the
                // broken port is wrong.
                let free = free_port(&s.ports);
                let (host_port, container_port, name) = if *host {
                    (*bad, 80, "host_port")
                } else {
                    (free, *bad, "container_port")
                };
                s.ports.insert(
                    i,
                    PortMapping {
                        host_port,
                        container_port,
                        protocol: 0,
                    },
                );
                format!("ports[{i}].{name}")
            }
            Self::Protocol(p) => {
                s.ports.push(PortMapping {
                    host_port: free_port(&s.ports),
                    container_port: 80,
                    protocol: *p,
                });
                format!("ports[{}].protocol", s.ports.len() - 1)
            }
            Self::DuplicatePort(at, port) => {
                if s.ports.is_empty() {
                    s.ports.push(PortMapping {
                        host_port: *port,
                        container_port: *port,
                        protocol: 0,
                    });
                }
                let original = s.ports[at.index(s.ports.len())];
                // Unset and TCP are the same protocol.
                let protocol = match original.protocol {
                    0 => 1,
                    1 => 0,
                    p => p,
                };
                s.ports.push(PortMapping {
                    protocol,
                    ..original
                });
                format!("ports[{}].host_port", s.ports.len() - 1)
            }
            Self::Restart(condition) => {
                s.restart = Some(RestartPolicy {
                    condition: *condition,
                    max_restarts: 1,
                });
                "restart.condition".into()
            }
            Self::Label(key) => {
                s.labels.insert(key.clone(), "x".into());
                if key.is_empty() {
                    "labels".into()
                } else {
                    format!("labels[{key:?}]")
                }
            }
            Self::Grace(d) => {
                s.stop_grace_period = Some(*d);
                "stop_grace_period".into()
            }
            Self::Health(check, field) => {
                s.health_check = Some(check.clone());
                format!("health_check.{field}")
            }
        }
    }
}

fn bad_port() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 65536..=u32::MAX]
}

/// Every way to break one field of a task spec. `with_name`: also the
/// fields only a task of its own may set (`name`, `node_selector`).
fn task_break(with_name: bool) -> BoxedStrategy<TaskBreak> {
    let name = prop_oneof![
        "[-_.][a-zA-Z0-9]{0,10}",
        "[a-z]{1,5}[ /:@!\u{e9}\u{4e2d}][a-z]{0,5}",
        "[a-z0-9]{64,80}",
    ]
    .prop_map(TaskBreak::Name);
    let image = prop_oneof![
        Just(String::new()),
        "[ \t\n]{1,3}",
        "[a-z]{1,5}[ \t\n\u{7}\u{85}][a-z]{1,5}",
        "[a-z]{513,600}",
    ]
    .prop_map(TaskBreak::Image);
    let env_key = prop_oneof![
        Just(String::new()),
        "[A-Z]{0,4}=[A-Z]{0,4}",
        "[A-Z]{0,4}\0[A-Z]{0,4}",
    ]
    .prop_map(TaskBreak::EnvKey);
    let label = prop_oneof![
        Just(String::new()),
        "[a-z-]{0,10}".prop_map(|k| format!("{RESERVED_PREFIX}{k}")),
    ]
    .prop_map(TaskBreak::Label);
    let common = prop_oneof![
        image,
        (any::<Index>(), text(6)).prop_map(|(at, a)| TaskBreak::Command(at, a)),
        env_key,
        ("[A-Z]{1,8}", text(4)).prop_map(|(k, v)| TaskBreak::EnvValue(k, v)),
        (i64::MIN..=0).prop_map(TaskBreak::MilliCpus),
        (i64::MIN..MIN_MEMORY_BYTES).prop_map(TaskBreak::Memory),
        (i64::MIN..=0).prop_map(TaskBreak::Disk),
        (any::<Index>(), any::<bool>(), bad_port())
            .prop_map(|(at, host, bad)| TaskBreak::PortRange(at, host, bad)),
        prop_oneof![i32::MIN..0, 3..=i32::MAX].prop_map(TaskBreak::Protocol),
        (any::<Index>(), port()).prop_map(|(at, p)| TaskBreak::DuplicatePort(at, p)),
        prop_oneof![i32::MIN..0, 4..=i32::MAX].prop_map(TaskBreak::Restart),
        label,
        bad_duration(crate::validate::MAX_STOP_GRACE).prop_map(TaskBreak::Grace),
        broken_health_check().prop_map(|(check, field)| TaskBreak::Health(check, field)),
    ];
    if with_name {
        prop_oneof![1 => name, 1 => Just(TaskBreak::NodeSelector), 14 => common].boxed()
    } else {
        common.boxed()
    }
}

/// A valid health check with one field broken, and that field's path
/// relative to the check.
pub fn broken_health_check() -> impl Strategy<Value = Broken<HealthCheck>> {
    let probe = prop_oneof![
        Just((None, "probe")),
        bad_port().prop_map(|port| (
            Some(health_check::Probe::Http(HttpProbe {
                port,
                path: "/".into()
            })),
            "http.port"
        )),
        prop_oneof!["[a-z]{1,5}", "/[a-z]{0,3}[ \t\u{1}][a-z]{0,3}"].prop_map(|path| (
            Some(health_check::Probe::Http(HttpProbe { port: 80, path })),
            "http.path"
        )),
        bad_port().prop_map(|port| (
            Some(health_check::Probe::Tcp(TcpProbe { port })),
            "tcp.port"
        )),
        prop_oneof![
            Just(vec![]),
            vec(text(4), 0..3)
                .prop_map(|rest| { std::iter::once(String::new()).chain(rest).collect() })
        ]
        .prop_map(|command| (
            Some(health_check::Probe::Exec(ExecProbe { command })),
            "exec.command"
        )),
    ];
    let probe = (health_check(), probe).prop_map(|(mut check, (probe, field))| {
        check.probe = probe;
        (check, field.to_string())
    });
    let exec_nul =
        (health_check(), vec(text(4), 0..3), any::<Index>()).prop_map(|(mut check, args, at)| {
            let mut command: Vec<String> =
                std::iter::once("true".to_string()).chain(args).collect();
            let i = 1 + at.index(command.len());
            command.insert(i, "a\0".into());
            check.probe = Some(health_check::Probe::Exec(ExecProbe { command }));
            (check, format!("exec.command[{i}]"))
        });
    let interval = (
        health_check(),
        prop_oneof![
            duration(
                Duration::ZERO,
                crate::health::MIN_INTERVAL - Duration::from_nanos(1)
            ),
            bad_duration(crate::health::MAX_INTERVAL),
        ],
    )
        .prop_map(|(mut check, d)| {
            check.interval = Some(d);
            check.timeout = None;
            (check, "interval".to_string())
        });
    let timeout = (health_check(), 1..=3_600_000_000_000u64, any::<bool>()).prop_map(
        |(mut check, extra, zero)| {
            let interval = crate::health::settings(&check).interval;
            check.timeout = Some(crate::time::duration(if zero {
                Duration::ZERO
            } else {
                interval + Duration::from_nanos(extra)
            }));
            (check, "timeout".to_string())
        },
    );
    let retries = health_check().prop_map(|mut check| {
        check.retries = Some(0);
        (check, "retries".to_string())
    });
    let start =
        (health_check(), bad_duration(crate::health::MAX_INTERVAL)).prop_map(|(mut check, d)| {
            check.start_period = Some(d);
            (check, "start_period".to_string())
        });
    prop_oneof![probe, exec_nul, interval, timeout, retries, start]
}

/// Any task spec at all: wild text, any numbers, any enum values.
pub fn wild_task_spec() -> impl Strategy<Value = TaskSpec> {
    let map = || hash_map(wild_text(), wild_text(), 0..4);
    let numbers = (
        option::of(any::<i64>()),
        option::of(any::<i64>()),
        option::of(any::<i64>()),
    );
    let rest = (
        vec(
            (any::<u32>(), any::<u32>(), any::<i32>()).prop_map(|(h, c, p)| PortMapping {
                host_port: h,
                container_port: c,
                protocol: p,
            }),
            0..4,
        ),
        option::of(
            (any::<i32>(), any::<u32>()).prop_map(|(condition, max_restarts)| RestartPolicy {
                condition,
                max_restarts,
            }),
        ),
        map(),
        map(),
        option::of(any_duration()),
        option::of(wild_health_check()),
    );
    (
        wild_text(),
        wild_text(),
        vec(wild_text(), 0..4),
        map(),
        numbers,
        rest,
    )
        .prop_map(assemble)
}

fn any_duration() -> impl Strategy<Value = prost_types::Duration> {
    (any::<i64>(), any::<i32>())
        .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
}

fn wild_health_check() -> impl Strategy<Value = HealthCheck> {
    let probe = prop_oneof![
        (any::<u32>(), wild_text())
            .prop_map(|(port, path)| health_check::Probe::Http(HttpProbe { port, path })),
        any::<u32>().prop_map(|port| health_check::Probe::Tcp(TcpProbe { port })),
        vec(wild_text(), 0..3).prop_map(|command| health_check::Probe::Exec(ExecProbe { command })),
    ];
    (
        option::of(probe),
        option::of(any_duration()),
        option::of(any_duration()),
        option::of(any::<u32>()),
        option::of(any_duration()),
    )
        .prop_map(
            |(probe, interval, timeout, retries, start_period)| HealthCheck {
                probe,
                interval,
                timeout,
                retries,
                start_period,
            },
        )
}

/// A service name: a DNS label.
fn service_name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

/// A valid task template of a service: no name, no node selector.
fn service_task() -> impl Strategy<Value = TaskSpec> {
    task_spec().prop_map(|mut t| {
        t.name.clear();
        t.node_selector.clear();
        t
    })
}

fn update_config() -> impl Strategy<Value = UpdateConfig> {
    let wait = || option::of(duration(Duration::ZERO, crate::validate::MAX_UPDATE_WAIT));
    (
        option::of(1..=100u32),
        wait(),
        0..=2i32,
        wait(),
        0..=3i32,
        option::of(0.0..=1.0f64),
    )
        .prop_map(
            |(parallelism, delay, order, monitor, failure_action, max_failure_ratio)| {
                UpdateConfig {
                    parallelism,
                    delay,
                    order,
                    monitor,
                    failure_action,
                    max_failure_ratio,
                }
            },
        )
}

/// A valid service spec of any mode.
pub fn service_spec() -> impl Strategy<Value = ServiceSpec> {
    let mode = prop_oneof![
        option::of(0..=MAX_REPLICAS)
            .prop_map(|replicas| service_spec::Mode::Replicated(ReplicatedMode { replicas })),
        Just(service_spec::Mode::Global(GlobalMode {})),
        (option::of(1..=MAX_COMPLETIONS), option::of(1..=100u32)).prop_map(
            |(completions, parallelism)| service_spec::Mode::Batch(BatchMode {
                completions,
                parallelism
            })
        ),
    ];
    let placement = option::of(
        btree_map("[a-z][a-z0-9._/-]{0,12}", text(8), 0..3).prop_map(|c| Placement {
            constraints: c.into_iter().collect(),
        }),
    );
    (
        service_name(),
        mode,
        service_task(),
        placement,
        option::of(update_config()),
    )
        .prop_map(|(name, mode, mut task, placement, update)| {
            if matches!(mode, service_spec::Mode::Batch(_))
                && let Some(r) = task.restart.as_mut()
                && r.condition == crate::v1::RestartCondition::Always as i32
            {
                // A batch task may not restart always.
                r.condition = crate::v1::RestartCondition::OnFailure as i32;
            }
            ServiceSpec {
                name,
                mode: Some(mode),
                task: Some(task),
                placement,
                update,
            }
        })
}

/// One way to break one field of a valid service spec.
#[derive(Debug, Clone)]
enum ServiceBreak {
    Name(String),
    Mode(Option<service_spec::Mode>, &'static str),
    NoTask,
    TaskName(String),
    TaskSelector(String),
    Task(TaskBreak),
    BatchAlways(Option<u32>),
    Placement,
    Update(UpdateBreak),
}

/// One way to break one field of an update config.
#[derive(Debug, Clone)]
enum UpdateBreak {
    Parallelism,
    Delay(prost_types::Duration),
    Monitor(prost_types::Duration),
    Order(i32),
    FailureAction(i32),
    Ratio(f64),
}

impl ServiceBreak {
    /// Breaks the field in `s` and returns its path.
    fn apply(&self, s: &mut ServiceSpec) -> String {
        let task = s.task.get_or_insert_default();
        match self {
            Self::Name(n) => {
                s.name = n.clone();
                "name".into()
            }
            Self::Mode(mode, field) => {
                s.mode = *mode;
                (*field).into()
            }
            Self::NoTask => {
                s.task = None;
                "task".into()
            }
            Self::TaskName(n) => {
                task.name = n.clone();
                "task.name".into()
            }
            Self::TaskSelector(k) => {
                task.node_selector.insert(k.clone(), "x".into());
                "task.node_selector".into()
            }
            Self::Task(b) => format!("task.{}", b.apply(task)),
            Self::BatchAlways(completions) => {
                task.restart = Some(RestartPolicy {
                    condition: crate::v1::RestartCondition::Always as i32,
                    max_restarts: 0,
                });
                s.mode = Some(service_spec::Mode::Batch(BatchMode {
                    completions: *completions,
                    parallelism: None,
                }));
                "task.restart.condition".into()
            }
            Self::Placement => {
                s.placement
                    .get_or_insert_default()
                    .constraints
                    .insert(String::new(), "a".into());
                "placement.constraints".into()
            }
            Self::Update(b) => {
                let u = s.update.get_or_insert_default();
                let field = match b {
                    UpdateBreak::Parallelism => {
                        u.parallelism = Some(0);
                        "parallelism"
                    }
                    UpdateBreak::Delay(d) => {
                        u.delay = Some(*d);
                        "delay"
                    }
                    UpdateBreak::Monitor(d) => {
                        u.monitor = Some(*d);
                        "monitor"
                    }
                    UpdateBreak::Order(o) => {
                        u.order = *o;
                        "order"
                    }
                    UpdateBreak::FailureAction(a) => {
                        u.failure_action = *a;
                        "failure_action"
                    }
                    UpdateBreak::Ratio(r) => {
                        u.max_failure_ratio = Some(*r);
                        "max_failure_ratio"
                    }
                };
                format!("update.{field}")
            }
        }
    }
}

/// A valid service spec with one field broken: every rule of
/// [`crate::validate::service_spec`] in turn, and every rule of the task
/// template's, each with values drawn at random.
pub fn broken_service_spec() -> impl Strategy<Value = Broken<ServiceSpec>> {
    let name = prop_oneof![
        Just(String::new()),
        "[A-Z][a-z]{0,5}",
        "[0-9-][a-z0-9]{0,5}",
        "[a-z]{1,5}-",
        "[a-z]{1,3}[_. \u{e9}][a-z]{1,3}",
        // Longer than MAX_SERVICE_NAME.
        "[a-z]{64,80}",
    ]
    .prop_map(ServiceBreak::Name);
    let batch = |completions, parallelism| {
        Some(service_spec::Mode::Batch(BatchMode {
            completions,
            parallelism,
        }))
    };
    let mode = prop_oneof![
        Just(ServiceBreak::Mode(None, "mode")),
        (MAX_REPLICAS + 1..=u32::MAX).prop_map(|n| ServiceBreak::Mode(
            Some(service_spec::Mode::Replicated(ReplicatedMode {
                replicas: Some(n)
            })),
            "replicated.replicas"
        )),
        prop_oneof![Just(0), MAX_COMPLETIONS + 1..=u32::MAX]
            .prop_map(move |n| ServiceBreak::Mode(batch(Some(n), None), "batch.completions")),
        Just(ServiceBreak::Mode(
            batch(None, Some(0)),
            "batch.parallelism"
        )),
    ];
    let wait = || bad_duration(crate::validate::MAX_UPDATE_WAIT);
    let update = prop_oneof![
        Just(UpdateBreak::Parallelism),
        wait().prop_map(UpdateBreak::Delay),
        wait().prop_map(UpdateBreak::Monitor),
        prop_oneof![i32::MIN..0, 3..=i32::MAX].prop_map(UpdateBreak::Order),
        prop_oneof![i32::MIN..0, 4..=i32::MAX].prop_map(UpdateBreak::FailureAction),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            -1e300..-1e-12f64,
            1.000_000_001..1e300f64,
        ]
        .prop_map(UpdateBreak::Ratio),
    ]
    .prop_map(ServiceBreak::Update);
    let breaks = prop_oneof![
        2 => name,
        2 => mode,
        1 => Just(ServiceBreak::NoTask),
        1 => "[a-z0-9]{1,10}".prop_map(ServiceBreak::TaskName),
        1 => "[a-z]{1,5}".prop_map(ServiceBreak::TaskSelector),
        6 => task_break(false).prop_map(ServiceBreak::Task),
        1 => option::of(1..=100u32).prop_map(ServiceBreak::BatchAlways),
        1 => Just(ServiceBreak::Placement),
        3 => update,
    ];
    (service_spec(), breaks).prop_map(|(mut spec, b)| {
        let field = b.apply(&mut spec);
        (spec, field)
    })
}

/// Any service spec at all.
pub fn wild_service_spec() -> impl Strategy<Value = ServiceSpec> {
    let mode = option::of(prop_oneof![
        option::of(any::<u32>())
            .prop_map(|replicas| service_spec::Mode::Replicated(ReplicatedMode { replicas })),
        Just(service_spec::Mode::Global(GlobalMode {})),
        (option::of(any::<u32>()), option::of(any::<u32>())).prop_map(
            |(completions, parallelism)| service_spec::Mode::Batch(BatchMode {
                completions,
                parallelism
            })
        ),
    ]);
    let update = option::of(
        (
            option::of(any::<u32>()),
            option::of(any_duration()),
            any::<i32>(),
            option::of(any_duration()),
            any::<i32>(),
            option::of(any::<f64>()),
        )
            .prop_map(
                |(parallelism, delay, order, monitor, failure_action, max_failure_ratio)| {
                    UpdateConfig {
                        parallelism,
                        delay,
                        order,
                        monitor,
                        failure_action,
                        max_failure_ratio,
                    }
                },
            ),
    );
    (
        wild_text(),
        mode,
        option::of(wild_task_spec()),
        option::of(
            hash_map(wild_text(), wild_text(), 0..3)
                .prop_map(|constraints| Placement { constraints }),
        ),
        update,
    )
        .prop_map(|(name, mode, task, placement, update)| ServiceSpec {
            name,
            mode,
            task,
            placement,
            update,
        })
}

/// A valid worker registration, new (no node id) or returning.
pub fn register_request() -> impl Strategy<Value = RegisterRequest> {
    (
        prop_oneof![
            Just(String::new()),
            any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())
        ],
        "[a-z][a-z0-9-]{0,15}",
        "[a-z0-9.:]{0,20}",
        labels(),
        (1..=64_000i64, 1..=1i64 << 40, 1..=1i64 << 42),
    )
        .prop_map(
            |(node_id, name, address, labels, (cpus, memory, disk))| RegisterRequest {
                node_id,
                name,
                address,
                labels,
                capacity: Some(Resources {
                    milli_cpus: cpus,
                    memory_bytes: memory,
                    disk_bytes: disk,
                }),
            },
        )
}

/// One way to break one field of a valid registration.
#[derive(Debug, Clone)]
enum RegisterBreak {
    NodeId(String),
    Name(String),
    NoCapacity,
    /// Capacity field 0, 1 or 2 (cpus, memory, disk) not positive.
    Capacity(usize, i64),
}

impl RegisterBreak {
    /// Breaks the field in `r` and returns its path.
    fn apply(&self, r: &mut RegisterRequest) -> String {
        match self {
            Self::NodeId(id) => {
                r.node_id = id.clone();
                "node_id".into()
            }
            Self::Name(n) => {
                r.name = n.clone();
                "name".into()
            }
            Self::NoCapacity => {
                r.capacity = None;
                "capacity".into()
            }
            Self::Capacity(which, v) => {
                let c = r.capacity.get_or_insert_default();
                let (field, slot) = match which {
                    0 => ("milli_cpus", &mut c.milli_cpus),
                    1 => ("memory_bytes", &mut c.memory_bytes),
                    _ => ("disk_bytes", &mut c.disk_bytes),
                };
                *slot = *v;
                format!("capacity.{field}")
            }
        }
    }
}

/// A valid registration with one field broken.
pub fn broken_register_request() -> impl Strategy<Value = Broken<RegisterRequest>> {
    let breaks = prop_oneof![
        "[a-z0-9-]{1,30}"
            .prop_filter("not a UUID", |s| uuid::Uuid::parse_str(s).is_err())
            .prop_map(RegisterBreak::NodeId),
        "[ \t\n]{0,3}".prop_map(RegisterBreak::Name),
        Just(RegisterBreak::NoCapacity),
        (0..3usize, i64::MIN..=0).prop_map(|(which, v)| RegisterBreak::Capacity(which, v)),
    ];
    (register_request(), breaks).prop_map(|(mut r, b)| {
        let field = b.apply(&mut r);
        (r, field)
    })
}

/// Any registration at all.
pub fn wild_register_request() -> impl Strategy<Value = RegisterRequest> {
    (
        wild_text(),
        wild_text(),
        wild_text(),
        hash_map(wild_text(), wild_text(), 0..3),
        option::of((any::<i64>(), any::<i64>(), any::<i64>())),
    )
        .prop_map(
            |(node_id, name, address, labels, capacity)| RegisterRequest {
                node_id,
                name,
                address,
                labels,
                capacity: capacity.map(|(milli_cpus, memory_bytes, disk_bytes)| Resources {
                    milli_cpus,
                    memory_bytes,
                    disk_bytes,
                }),
            },
        )
}

/// Whether `path` is a field path as [`crate::validate`] writes them: names
/// joined by `.`, each with optional `[index]` or `["key"]` (a key quoted as
/// Rust debug-prints it), the first name one of `fields`.
pub fn is_field_path(path: &str, fields: &[&str]) -> bool {
    path_len(path, fields) == Some(path.len())
}

/// Whether `message` reads `PATH: RULE`, as a [`crate::validate::FieldError`]
/// displays: a field path (see [`is_field_path`]), then a rule.
pub fn names_a_field(message: &str, fields: &[&str]) -> bool {
    path_len(message, fields)
        .and_then(|n| message[n..].strip_prefix(": "))
        .is_some_and(|rule| !rule.trim().is_empty())
}

/// The length of the field path `text` starts with, if its first name is one
/// of `fields`.
fn path_len(text: &str, fields: &[&str]) -> Option<usize> {
    let first = text.split(['.', '[', ':']).next().unwrap_or_default();
    if !fields.contains(&first) {
        return None;
    }
    let mut rest = text;
    loop {
        let name_len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        if name_len == 0 {
            return None;
        }
        rest = &rest[name_len..];
        while let Some(inner) = rest.strip_prefix('[') {
            let end = if let Some(quoted) = inner.strip_prefix('"') {
                // The closing quote is the first one not escaped.
                let mut escaped = false;
                let close = quoted.char_indices().find_map(|(i, c)| {
                    let close = c == '"' && !escaped;
                    escaped = c == '\\' && !escaped;
                    close.then_some(i)
                })?;
                let end = 1 + close + 1;
                // A long key is quoted cut short (`orch::limits::quote`):
                // `"abc…"… (N bytes)`.
                match inner[end..]
                    .strip_prefix("… (")
                    .and_then(|r| r.split_once(" bytes)"))
                {
                    Some((n, _)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                        end + "… (".len() + n.len() + " bytes)".len()
                    }
                    _ => end,
                }
            } else {
                inner
                    .find(|c: char| !c.is_ascii_digit())
                    .filter(|n| *n > 0)?
            };
            rest = inner[end..].strip_prefix(']')?;
        }
        match rest.strip_prefix('.') {
            Some(next) => rest = next,
            None => return Some(text.len() - rest.len()),
        }
    }
}

/// How many cases a property runs: `PROPTEST_CASES` if set (to run longer),
/// else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
