//! The YAML of `orchctl apply -f FILE`: one service per document, several
//! documents separated by `---`, read into [`ServiceSpec`]s. This module owns
//! that format: its field names (a task's fields are named after `orchctl
//! run`'s flags and take values as people write them: `memory: 64Mi`,
//! `ports: ["8080:80"]`, `stop_timeout: 10s`), how they map onto the proto,
//! and the errors a person sees for a bad file.
//!
//! Every error carries the line and column (1-based) of what is wrong and the
//! path of the field as written in the YAML (`task.memory`, `update.order`):
//! YAML syntax, unknown fields, type errors, bad values (sizes, ports,
//! durations, words), and the rules of [`validate::service_spec`], which runs
//! on each service once it is read. Nothing is partial: a file with one bad
//! document is refused whole.
//!
//! ```yaml
//! name: web
//! mode: replicated          # replicated | global | batch; default replicated
//! replicas: 3               # replicated only
//! # completions: 5          # batch only
//! # parallelism: 2          # batch only
//! task:
//!   image: orch-example/busybox
//!   command: [httpd, -f, -p, "80"]
//!   cpus: 0.1               # number or string: 0.5, "500m"
//!   memory: 32Mi            # string or integer bytes
//!   disk: 1Gi
//!   env: {GREETING: hi}
//!   labels: {team: web}
//!   ports: ["8080:80", "5353:53/udp"]     # HOST:CONTAINER[/tcp|/udp], as -p
//!   restart: on-failure     # never | on-failure | always
//!   max_restarts: 3
//!   stop_timeout: 10s       # as --stop-timeout (TaskSpec.stop_grace_period)
//!   health: {http: {port: 80, path: /}, interval: 1s, timeout: 1s, retries: 3, start_period: 0s}
//!   # or health: {tcp: {port: 80}} or health: {cmd: [sh, -c, "test -f /ready"]}
//! placement: {constraints: {zone: a}}
//! update: {parallelism: 1, delay: 0s, order: start-first, monitor: 5s, failure_action: rollback, max_failure_ratio: 0}
//! ```
//!
//! Fields left out stay unset in the spec, so the manager's defaults apply
//! (see [`crate::service`]), with two choices made here: a task that sets
//! `max_restarts` but no `restart` gets the default condition of its mode
//! (`always`, or `on-failure` for batch), and a task that sets `restart` but
//! no `max_restarts` gets no limit, as with `orchctl run`. A health `cmd`
//! written as one string runs in `/bin/sh -c`, as `--health-cmd` does; a list
//! runs as it is. A task's `name` and `constraints` (as `--name` and
//! `--constraint`) are read only to be refused with the reason: orch names a
//! service's tasks, and constraints belong in `placement.constraints`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::limits::quote;
use crate::quantity;
use crate::service;
use crate::v1::{
    BatchMode, ExecProbe, FailureAction, GlobalMode, HealthCheck, HttpProbe, Placement,
    PortMapping, Protocol, ReplicatedMode, RestartCondition, RestartPolicy, ServiceSpec, TaskSpec,
    TcpProbe, UpdateConfig, UpdateOrder, health_check, service_spec,
};
use crate::validate;

/// Why a manifest was refused: where, in which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The document the error is in, counted from 0 in the order of the file;
    /// empty documents count too, so `---` lines can be counted to find it.
    pub document: usize,
    /// The line of what is wrong, from 1.
    pub line: usize,
    /// The column of what is wrong, from 1, in characters.
    pub column: usize,
    /// The field's path as written in the YAML (`task.memory`,
    /// `task.ports[1]`, `update.order`); empty when the error is not about one
    /// field (broken YAML syntax).
    pub field: String,
    /// What is wrong, for people.
    pub message: String,
}

impl ManifestError {
    /// The error as one line naming the file, `web.yaml:7:12: task.memory: ...`.
    pub fn in_file<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        InFile { file, error: self }
    }
}

struct InFile<'a> {
    file: &'a str,
    error: &'a ManifestError,
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.error)
    }
}

/// `7:12: task.memory: "32Qi" has an unknown unit ...`: line, column, field
/// (if any) and message. Put the file name and a `:` in front, or use
/// [`ManifestError::in_file`].
impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Reads a manifest: every service in it, in the order of the file. An empty
/// document (nothing, or only comments) is skipped.
///
/// # Errors
/// The first thing wrong, with its position: broken YAML, an unknown field,
/// a value of the wrong type or one that does not read (`memory: 32Qi`,
/// `ports: ["99999:80"]`), a field of another mode (`replicas` in a global
/// service), or a rule of [`validate::service_spec`]. Errors found while
/// reading the YAML come before the rules: a type error in the second
/// document is reported even if the first breaks a rule. A rule's error is at
/// the field it names, or at the nearest enclosing field written in the file
/// (`task` for a missing `task.image`), or at the start of the document, its
/// first key (for a missing `name` or `task`).
pub fn parse(yaml: &str) -> Result<Vec<ServiceSpec>, ManifestError> {
    let options = serde_saphyr::options! { with_snippet: false };
    FAILED_PATH.with(|p| p.borrow_mut().take());
    let documents: Vec<Document> = serde_saphyr::from_multiple_with_options(yaml, options)
        .map_err(|e| yaml_error(yaml, &e))?;
    documents
        .into_iter()
        .map(|Document(doc)| {
            let start = pos(&doc.referenced).unwrap_or((1, 1));
            let mut at = Positions::new(start);
            let spec = doc.value.into_spec(&mut at).map_err(|e| e.in_file(yaml))?;
            validate::service_spec(&spec).map_err(|e| {
                let (field, (line, column)) = at.locate(&e.field);
                Located {
                    line,
                    column,
                    field,
                    message: e.rule,
                }
                .in_file(yaml)
            })?;
            Ok(spec)
        })
        .collect()
}

/// A line and a column, from 1.
type Pos = (usize, usize);

fn pos(loc: &Location) -> Option<Pos> {
    let line = usize::try_from(loc.line()).ok()?;
    let column = usize::try_from(loc.column()).ok()?;
    (line > 0 && column > 0).then_some((line, column))
}

/// An error with a position, before its document is known.
struct Located {
    line: usize,
    column: usize,
    field: String,
    message: String,
}

impl Located {
    fn at(loc: &Location, field: impl Into<String>, message: impl Into<String>) -> Self {
        let (line, column) = pos(loc).unwrap_or((1, 1));
        Self {
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    fn in_file(self, yaml: &str) -> ManifestError {
        ManifestError {
            document: document_at(yaml, (self.line, self.column)),
            line: self.line,
            column: self.column,
            field: self.field,
            message: self.message,
        }
    }
}

/// Which document of `yaml` holds `at`: how many documents start at or before
/// it, less one. Reads the YAML's events again, which only errors pay for.
fn document_at(yaml: &str, at: Pos) -> usize {
    use serde_saphyr::granit_parser::{Event, Parser};
    let mut starts = 0usize;
    for event in Parser::new_from_str(yaml) {
        let Ok((event, span)) = event else { break };
        if (span.start.line(), span.start.col() + 1) > at {
            break;
        }
        if matches!(event, Event::DocumentStart(..)) {
            starts += 1;
        }
    }
    starts.saturating_sub(1)
}

// The path of the field a deserialization error is in, left here by
// `Document::deserialize` for `parse` to pick up: serde's errors carry no
// path, and the YAML crate's error type cannot be rebuilt with one without
// losing its position. `parse` runs on one thread from start to end and
// clears it first, so it never sees another call's path.
thread_local! {
    static FAILED_PATH: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// One document: a service, and where it starts.
struct Document(Spanned<ServiceDoc>);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_path_to_error::deserialize(deserializer)
            .map(Document)
            .map_err(|e| {
                let path = yaml_path(e.path());
                FAILED_PATH.with(|p| *p.borrow_mut() = Some(path));
                e.into_inner()
            })
    }
}

/// The maps whose keys are people's, not field names: their keys are
/// written `env["KEY"]`, as [`validate`] writes them.
const USER_MAPS: [&str; 3] = ["env", "labels", "constraints"];

/// A serde path as a YAML field path: `task.ports[1]`, `task.env["A"]`.
///
/// Every [`Spanned`] adds a segment `value` of its own after its field,
/// which is dropped. That is told apart from a map key `value` by where it
/// stands: a Spanned's `value` never follows another Spanned's `value`
/// (no mirror struct has a field `value`, and no Spanned wraps a Spanned),
/// while a key `value` of a user map always does (every user map is Spanned).
fn yaml_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    let mut dropped_last = false;
    let mut parent: Option<&str> = None;
    for segment in path.iter() {
        match segment {
            Segment::Map { key } if key == "value" && !dropped_last => {
                dropped_last = true;
                continue;
            }
            Segment::Map { key } => {
                if parent.is_some_and(|p| USER_MAPS.contains(&p)) {
                    out.push_str(&format!("[{}]", quote(key)));
                } else {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(key);
                }
                parent = Some(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
                parent = Some(variant);
            }
            Segment::Seq { index } => {
                out.push_str(&format!("[{index}]"));
                parent = None;
            }
            Segment::Unknown => parent = None,
        }
        dropped_last = false;
    }
    out
}

/// Renders the YAML crate's messages without its "at line X, column Y"
/// suffix: the position is a field of [`ManifestError`].
struct Plain;

struct NoLocation;

impl serde_saphyr::Localizer for NoLocation {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
}

impl serde_saphyr::MessageFormatter for Plain {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        &NoLocation
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        serde_saphyr::UserMessageFormatter.format_message(err)
    }
}

/// A [`ManifestError`] for an error of the YAML crate: syntax, an unknown
/// field, a type error, or a value one of the mirror types refused.
fn yaml_error(yaml: &str, err: &serde_saphyr::Error) -> ManifestError {
    let syntax = matches!(
        err,
        serde_saphyr::Error::ExternalMessage { source, .. }
            if matches!(source.as_ref(), serde_saphyr::ExternalMessageSource::Parser(_))
    );
    let field = FAILED_PATH
        .with(|p| p.borrow_mut().take())
        .filter(|_| !syntax)
        .unwrap_or_default();
    let (line, column) = err.location().as_ref().and_then(pos).unwrap_or((1, 1));
    let message = err.render_with_options(serde_saphyr::render_options! {
        formatter: &Plain,
        snippets: serde_saphyr::SnippetMode::Off,
    });
    Located {
        line,
        column,
        field,
        message,
    }
    .in_file(yaml)
}

/// Where the fields of one document are: proto paths (as [`validate`] names
/// them) with the YAML path and position of what set them, so a rule's
/// error can point at the line that broke it.
struct Positions {
    start: Pos,
    fields: Vec<(String, String, Pos)>,
}

impl Positions {
    fn new(start: Pos) -> Self {
        Self {
            start,
            fields: Vec::new(),
        }
    }

    fn add(&mut self, proto: impl Into<String>, yaml: impl Into<String>, loc: &Location) {
        if let Some(p) = pos(loc) {
            self.fields.push((proto.into(), yaml.into(), p));
        }
    }

    /// The YAML path and position of a proto field path: those of the field
    /// itself, or of the nearest enclosing field that was written (the rest
    /// of the path kept), or the document's start.
    fn locate(&self, field: &str) -> (String, Pos) {
        let mut prefix = field;
        loop {
            if let Some((_, yaml, p)) = self.fields.iter().find(|(proto, ..)| proto == prefix) {
                return (format!("{yaml}{}", &field[prefix.len()..]), *p);
            }
            match prefix.rfind(['.', '[']) {
                Some(i) => prefix = &prefix[..i],
                None => return (field.to_string(), self.start),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The mirror of the YAML format. Rules for the path of errors (see
// `yaml_path`): no struct here has a field named `value`, no Spanned wraps a
// Spanned, and every map of people's keys is Spanned.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceDoc {
    name: Option<Spanned<String>>,
    mode: Option<Spanned<Word<ModeWord>>>,
    replicas: Option<Spanned<Count>>,
    completions: Option<Spanned<Count>>,
    parallelism: Option<Spanned<Count>>,
    task: Option<Spanned<TaskDoc>>,
    placement: Option<Spanned<PlacementDoc>>,
    update: Option<Spanned<UpdateDoc>>,
}

type StringMap = Spanned<BTreeMap<String, Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskDoc {
    /// Read only to be refused by validation with a reason: orch names tasks.
    name: Option<Spanned<String>>,
    image: Option<Spanned<String>>,
    command: Option<Spanned<Vec<Spanned<String>>>>,
    cpus: Option<Spanned<MilliCpus>>,
    memory: Option<Spanned<Bytes>>,
    disk: Option<Spanned<Bytes>>,
    env: Option<StringMap>,
    labels: Option<StringMap>,
    /// As `--constraint`; read only to be refused by validation with a
    /// pointer to `placement.constraints`.
    constraints: Option<StringMap>,
    ports: Option<Spanned<Vec<Spanned<Port>>>>,
    restart: Option<Spanned<Word<RestartCondition>>>,
    max_restarts: Option<Spanned<Count>>,
    stop_timeout: Option<Spanned<Dur>>,
    health: Option<Spanned<HealthDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthDoc {
    http: Option<Spanned<HttpDoc>>,
    tcp: Option<Spanned<TcpDoc>>,
    cmd: Option<Spanned<Cmd>>,
    interval: Option<Spanned<Dur>>,
    timeout: Option<Spanned<Dur>>,
    retries: Option<Spanned<Count>>,
    start_period: Option<Spanned<Dur>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    port: Spanned<Count>,
    path: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpDoc {
    port: Spanned<Count>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementDoc {
    constraints: Option<StringMap>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDoc {
    parallelism: Option<Spanned<Count>>,
    delay: Option<Spanned<Dur>>,
    order: Option<Spanned<Word<UpdateOrder>>>,
    monitor: Option<Spanned<Dur>>,
    failure_action: Option<Spanned<Word<FailureAction>>>,
    max_failure_ratio: Option<Spanned<Ratio>>,
}

// ---------------------------------------------------------------------------
// Values as people write them. Each refuses what does not read with a
// message naming the value; the path and position are added around it.

/// A count: a whole number, 0 or more, that fits in 32 bits.
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                u32::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} must not be negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                // Integers too large for 64 bits arrive as floats.
                if v.is_finite() && v.fract() == 0.0 && v >= f64::from(u32::MAX) {
                    return Err(E::custom(format!("{v} is too large")));
                }
                Err(E::custom(format!("{v} is not a whole number")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                Err(E::custom(format!(
                    "expected a whole number, not {}",
                    quote(v)
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: `64Mi`, `1g`, or a whole number of bytes.
struct Bytes(i64);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like 64Mi, 1Gi or 1048576")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Bytes, E> {
                i64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                if v < 0 {
                    return Err(E::custom(format!("{v} must not be negative")));
                }
                Ok(Bytes(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Bytes, E> {
                Err(E::custom(format!(
                    "{v} is not a size: write a unit, like 64Mi or 1.5Gi, or a whole number of bytes"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                quantity::parse_bytes(v).map(Bytes).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A cpu amount in millicpus: `0.5`, `2`, `"500m"`.
struct MilliCpus(i64);

impl<'de> Deserialize<'de> for MilliCpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MilliCpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a cpu amount like 0.5, 2 or \"250m\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MilliCpus, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MilliCpus, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<MilliCpus, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MilliCpus, E> {
                quantity::parse_milli_cpus(v)
                    .map(MilliCpus)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration with its unit: `500ms`, `5s`, `1m`, `1h 30m`.
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration like 500ms, 5s or 1m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    return Ok(Dur(Duration::ZERO));
                }
                Err(E::custom(format!(
                    "{v} has no unit: write a duration like {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "{v} is not a duration like 500ms, 5s or 1m"
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "{v} is not a duration like 500ms, 5s or 1m"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                humantime::parse_duration(v).map(Dur).map_err(|e| {
                    E::custom(format!(
                        "{} is not a duration like 500ms, 5s or 1m: {e}",
                        quote(v)
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A share from 0 to 1; the range is [`validate`]'s rule.
struct Ratio(f64);

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number from 0 to 1")
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ratio, E> {
                Ok(Ratio(v as f64))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ratio, E> {
                Ok(Ratio(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ratio, E> {
                Ok(Ratio(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                Err(E::custom(format!(
                    "expected a number from 0 to 1, not {}",
                    quote(v)
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A published port, `HOST:CONTAINER[/tcp|/udp]`, read by the rules of
/// `orchctl run -p`.
struct Port(PortMapping);

/// Reads a published port as `orchctl run -p` does: `8080:80`, `53:53/udp`.
fn parse_port(s: &str) -> Result<PortMapping, String> {
    let bad = || {
        format!(
            "{} is not HOST:CONTAINER[/tcp|/udp], for example 8080:80",
            quote(s)
        )
    };
    let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(bad()),
    };
    let (host, container) = ports.split_once(':').ok_or_else(bad)?;
    let port = |p: &str| {
        p.parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("{} in {} is not a port (1-65535)", quote(p), quote(s)))
    };
    Ok(PortMapping {
        host_port: port(host)?,
        container_port: port(container)?,
        protocol: protocol as i32,
    })
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port like \"8080:80\" or \"53:53/udp\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                Err(E::custom(format!(
                    "{v} is not HOST:CONTAINER[/tcp|/udp]: write \"{v}:{v}\" to publish it on the same port"
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                parse_port(v).map(Port).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A health check's command: a list run as it is, or one string run by
/// `/bin/sh -c` (as `--health-cmd`).
struct Cmd(Vec<String>);

impl<'de> Deserialize<'de> for Cmd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cmd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a list like [test, -f, /ready] or a shell line")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cmd, E> {
                Ok(Cmd(vec!["/bin/sh".into(), "-c".into(), v.into()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cmd, A::Error> {
                let mut args = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    args.push(arg);
                }
                Ok(Cmd(args))
            }
        }
        d.deserialize_any(V)
    }
}

/// A word from a closed set, as people write it: `on-failure`, `start-first`.
struct Word<T>(T);

/// The words of a closed set and what each means.
trait Words: Sized + Copy + 'static {
    /// What the words name, for a message: "a restart condition".
    const WHAT: &'static str;
    const WORDS: &'static [(&'static str, Self)];
}

impl<'de, T: Words> Deserialize<'de> for Word<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: Words> Visitor<'_> for V<T> {
            type Value = Word<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}: {}", T::WHAT, one_of::<T>())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Word<T>, E> {
                T::WORDS
                    .iter()
                    .find(|(word, _)| *word == v)
                    .map(|(_, value)| Word(*value))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "{} is not {}: use {}",
                            quote(v),
                            T::WHAT,
                            one_of::<T>()
                        ))
                    })
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// `a, b or c`.
fn one_of<T: Words>() -> String {
    let words: Vec<&str> = T::WORDS.iter().map(|(w, _)| *w).collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ModeWord {
    Replicated,
    Global,
    Batch,
}

impl ModeWord {
    fn word(self) -> &'static str {
        match self {
            Self::Replicated => "replicated",
            Self::Global => "global",
            Self::Batch => "batch",
        }
    }
}

impl Words for ModeWord {
    const WHAT: &'static str = "a mode";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("replicated", Self::Replicated),
        ("global", Self::Global),
        ("batch", Self::Batch),
    ];
}

impl Words for RestartCondition {
    const WHAT: &'static str = "a restart condition";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("never", Self::Never),
        ("on-failure", Self::OnFailure),
        ("always", Self::Always),
    ];
}

impl Words for UpdateOrder {
    const WHAT: &'static str = "an update order";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("stop-first", Self::StopFirst),
        ("start-first", Self::StartFirst),
    ];
}

impl Words for FailureAction {
    const WHAT: &'static str = "a failure action";
    const WORDS: &'static [(&'static str, Self)] = &[
        ("pause", Self::Pause),
        ("rollback", Self::Rollback),
        ("continue", Self::Continue),
    ];
}

// ---------------------------------------------------------------------------
// From the mirror to the proto, noting where each field was written.

fn duration(d: &Spanned<Dur>) -> prost_types::Duration {
    crate::time::duration(d.value.0)
}

/// A user map as the proto's, noting the position of the map and of each value.
fn string_map(
    map: Option<StringMap>,
    proto: &str,
    yaml: &str,
    at: &mut Positions,
) -> HashMap<String, String> {
    let Some(map) = map else {
        return HashMap::new();
    };
    at.add(proto, yaml, &map.referenced);
    map.value
        .into_iter()
        .map(|(key, value)| {
            at.add(
                format!("{proto}[{}]", quote(&key)),
                format!("{yaml}[{}]", quote(&key)),
                &value.referenced,
            );
            (key, value.value)
        })
        .collect()
}

impl ServiceDoc {
    fn into_spec(self, at: &mut Positions) -> Result<ServiceSpec, Located> {
        if let Some(name) = &self.name {
            at.add("name", "name", &name.referenced);
        }
        let mode = self
            .mode
            .as_ref()
            .map_or(ModeWord::Replicated, |m| m.value.0);
        if let Some(m) = &self.mode {
            at.add("mode", "mode", &m.referenced);
        }
        for (field, value, of) in [
            ("replicas", &self.replicas, ModeWord::Replicated),
            ("completions", &self.completions, ModeWord::Batch),
            ("parallelism", &self.parallelism, ModeWord::Batch),
        ] {
            if let Some(v) = value
                && mode != of
            {
                return Err(Located::at(
                    &v.referenced,
                    field,
                    format!(
                        "is only for mode {}; this service's mode is {}",
                        of.word(),
                        mode.word()
                    ),
                ));
            }
        }
        let mode = match mode {
            ModeWord::Replicated => {
                if let Some(r) = &self.replicas {
                    at.add("replicated.replicas", "replicas", &r.referenced);
                }
                service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: self.replicas.map(|r| r.value.0),
                })
            }
            ModeWord::Global => service_spec::Mode::Global(GlobalMode {}),
            ModeWord::Batch => {
                if let Some(c) = &self.completions {
                    at.add("batch.completions", "completions", &c.referenced);
                }
                if let Some(p) = &self.parallelism {
                    at.add("batch.parallelism", "parallelism", &p.referenced);
                }
                service_spec::Mode::Batch(BatchMode {
                    completions: self.completions.map(|c| c.value.0),
                    parallelism: self.parallelism.map(|p| p.value.0),
                })
            }
        };
        let task = match self.task {
            Some(t) => {
                at.add("task", "task", &t.referenced);
                Some(t.value.into_spec(&mode, at)?)
            }
            None => None,
        };
        let placement = self.placement.map(|p| {
            at.add("placement", "placement", &p.referenced);
            Placement {
                constraints: string_map(
                    p.value.constraints,
                    "placement.constraints",
                    "placement.constraints",
                    at,
                ),
            }
        });
        let update = self.update.map(|u| {
            at.add("update", "update", &u.referenced);
            u.value.into_config(at)
        });
        Ok(ServiceSpec {
            name: self.name.map(|n| n.value).unwrap_or_default(),
            mode: Some(mode),
            task,
            placement,
            update,
        })
    }
}

impl TaskDoc {
    fn into_spec(self, mode: &service_spec::Mode, at: &mut Positions) -> Result<TaskSpec, Located> {
        macro_rules! note {
            ($field:expr, $proto:literal, $yaml:literal) => {
                if let Some(v) = &$field {
                    at.add($proto, $yaml, &v.referenced);
                }
            };
        }
        note!(self.name, "task.name", "task.name");
        note!(self.image, "task.image", "task.image");
        note!(self.command, "task.command", "task.command");
        note!(self.cpus, "task.milli_cpus", "task.cpus");
        note!(self.memory, "task.memory_bytes", "task.memory");
        note!(self.disk, "task.disk_bytes", "task.disk");
        note!(self.ports, "task.ports", "task.ports");
        note!(
            self.stop_timeout,
            "task.stop_grace_period",
            "task.stop_timeout"
        );
        // The word first: `locate` takes the first match for `task.restart`.
        note!(self.restart, "task.restart", "task.restart");
        note!(self.restart, "task.restart.condition", "task.restart");
        note!(self.max_restarts, "task.restart", "task.max_restarts");
        note!(
            self.max_restarts,
            "task.restart.max_restarts",
            "task.max_restarts"
        );
        let command = self.command.map_or_else(Vec::new, |c| {
            c.value
                .into_iter()
                .enumerate()
                .map(|(i, arg)| {
                    at.add(
                        format!("task.command[{i}]"),
                        format!("task.command[{i}]"),
                        &arg.referenced,
                    );
                    arg.value
                })
                .collect()
        });
        let ports = self.ports.map_or_else(Vec::new, |p| {
            p.value
                .into_iter()
                .enumerate()
                .map(|(i, port)| {
                    at.add(
                        format!("task.ports[{i}]"),
                        format!("task.ports[{i}]"),
                        &port.referenced,
                    );
                    port.value.0
                })
                .collect()
        });
        let restart = match (&self.restart, &self.max_restarts) {
            (None, None) => None,
            (condition, max) => Some(RestartPolicy {
                condition: condition.as_ref().map_or_else(
                    || service::default_restart(Some(mode)).condition,
                    |c| c.value.0 as i32,
                ),
                max_restarts: max.as_ref().map_or(0, |m| m.value.0),
            }),
        };
        let health_check = match self.health {
            Some(h) => {
                at.add("task.health_check", "task.health", &h.referenced);
                Some(h.value.into_check(&h.referenced, at)?)
            }
            None => None,
        };
        Ok(TaskSpec {
            name: self.name.map(|n| n.value).unwrap_or_default(),
            image: self.image.map(|i| i.value).unwrap_or_default(),
            command,
            env: string_map(self.env, "task.env", "task.env", at),
            milli_cpus: self.cpus.map(|c| c.value.0),
            memory_bytes: self.memory.map(|m| m.value.0),
            disk_bytes: self.disk.map(|d| d.value.0),
            ports,
            restart,
            labels: string_map(self.labels, "task.labels", "task.labels", at),
            node_selector: string_map(
                self.constraints,
                "task.node_selector",
                "task.constraints",
                at,
            ),
            stop_grace_period: self.stop_timeout.as_ref().map(duration),
            health_check,
        })
    }
}

impl HealthDoc {
    fn into_check(self, start: &Location, at: &mut Positions) -> Result<HealthCheck, Located> {
        let mut probes = Vec::new();
        if let Some(http) = self.http {
            at.add(
                "task.health_check.http",
                "task.health.http",
                &http.referenced,
            );
            at.add(
                "task.health_check.http.port",
                "task.health.http.port",
                &http.value.port.referenced,
            );
            if let Some(path) = &http.value.path {
                at.add(
                    "task.health_check.http.path",
                    "task.health.http.path",
                    &path.referenced,
                );
            }
            probes.push((
                "http",
                http.referenced,
                health_check::Probe::Http(HttpProbe {
                    port: http.value.port.value.0,
                    path: http.value.path.map(|p| p.value).unwrap_or_default(),
                }),
            ));
        }
        if let Some(tcp) = self.tcp {
            at.add("task.health_check.tcp", "task.health.tcp", &tcp.referenced);
            at.add(
                "task.health_check.tcp.port",
                "task.health.tcp.port",
                &tcp.value.port.referenced,
            );
            probes.push((
                "tcp",
                tcp.referenced,
                health_check::Probe::Tcp(TcpProbe {
                    port: tcp.value.port.value.0,
                }),
            ));
        }
        if let Some(cmd) = self.cmd {
            at.add(
                "task.health_check.exec.command",
                "task.health.cmd",
                &cmd.referenced,
            );
            probes.push((
                "cmd",
                cmd.referenced,
                health_check::Probe::Exec(ExecProbe {
                    command: cmd.value.0,
                }),
            ));
        }
        let probe = match probes.len() {
            0 => {
                return Err(Located::at(
                    start,
                    "task.health",
                    "needs a probe: one of http, tcp or cmd",
                ));
            }
            1 => probes.pop().map(|(.., probe)| probe),
            _ => {
                let (word, loc, _) = &probes[1];
                return Err(Located::at(
                    loc,
                    format!("task.health.{word}"),
                    format!(
                        "a health check has one probe, and this one has {} and {word}",
                        probes[0].0
                    ),
                ));
            }
        };
        for (field, value) in [
            ("interval", &self.interval),
            ("timeout", &self.timeout),
            ("start_period", &self.start_period),
        ] {
            if let Some(v) = value {
                at.add(
                    format!("task.health_check.{field}"),
                    format!("task.health.{field}"),
                    &v.referenced,
                );
            }
        }
        if let Some(r) = &self.retries {
            at.add(
                "task.health_check.retries",
                "task.health.retries",
                &r.referenced,
            );
        }
        Ok(HealthCheck {
            probe,
            interval: self.interval.as_ref().map(duration),
            timeout: self.timeout.as_ref().map(duration),
            retries: self.retries.map(|r| r.value.0),
            start_period: self.start_period.as_ref().map(duration),
        })
    }
}

impl UpdateDoc {
    fn into_config(self, at: &mut Positions) -> UpdateConfig {
        macro_rules! note {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    at.add(
                        concat!("update.", stringify!($field)),
                        concat!("update.", stringify!($field)),
                        &v.referenced,
                    );
                }
            };
        }
        note!(parallelism);
        note!(delay);
        note!(order);
        note!(monitor);
        note!(failure_action);
        note!(max_failure_ratio);
        UpdateConfig {
            parallelism: self.parallelism.map(|p| p.value.0),
            delay: self.delay.as_ref().map(duration),
            order: self.order.map_or(0, |o| o.value.0 as i32),
            monitor: self.monitor.as_ref().map(duration),
            failure_action: self.failure_action.map_or(0, |a| a.value.0 as i32),
            max_failure_ratio: self.max_failure_ratio.map(|r| r.value.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"name: web
mode: replicated          # replicated | global | batch; default replicated
replicas: 3               # replicated only (error at its line for other modes)
# completions: 5          # batch only
# parallelism: 2          # batch only
task:
  image: orch-example/busybox
  command: [httpd, -f, -p, "80"]
  cpus: 0.1               # number or string: 0.5, "500m"
  memory: 32Mi            # string or integer bytes
  disk: 1Gi
  env: {GREETING: hi}
  labels: {team: web}
  ports: ["8080:80", "5353:53/udp"]     # HOST:CONTAINER[/tcp|/udp], as -p
  restart: on-failure     # never | on-failure | always
  max_restarts: 3
  stop_timeout: 10s       # as --stop-timeout (TaskSpec.stop_grace_period)
  health: {http: {port: 80, path: /}, interval: 1s, timeout: 1s, retries: 3, start_period: 0s}
  # or health: {tcp: {port: 80}} or health: {cmd: [sh, -c, "test -f /ready"]}  (exactly one probe)
placement: {constraints: {zone: a}}
update: {parallelism: 1, delay: 0s, order: start-first, monitor: 5s, failure_action: rollback, max_failure_ratio: 0}
"#;

    fn secs(n: u64) -> Option<prost_types::Duration> {
        Some(crate::time::duration(Duration::from_secs(n)))
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(yaml: &str) -> ServiceSpec {
        let mut specs = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(specs.len(), 1, "{specs:?}");
        specs.remove(0)
    }

    #[test]
    fn the_example_reads_field_by_field() {
        let spec = one(EXAMPLE);
        assert_eq!(spec.name, "web");
        assert_eq!(
            spec.mode,
            Some(service_spec::Mode::Replicated(ReplicatedMode {
                replicas: Some(3)
            }))
        );
        let task = spec.task.expect("task");
        assert_eq!(task.name, "");
        assert_eq!(task.image, "orch-example/busybox");
        assert_eq!(task.command, ["httpd", "-f", "-p", "80"]);
        assert_eq!(task.milli_cpus, Some(100));
        assert_eq!(task.memory_bytes, Some(32 << 20));
        assert_eq!(task.disk_bytes, Some(1 << 30));
        assert_eq!(task.env, map(&[("GREETING", "hi")]));
        assert_eq!(task.labels, map(&[("team", "web")]));
        assert_eq!(
            task.ports,
            [
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp as i32,
                },
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: Protocol::Udp as i32,
                },
            ]
        );
        assert_eq!(
            task.restart,
            Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                max_restarts: 3,
            })
        );
        assert!(task.node_selector.is_empty());
        assert_eq!(task.stop_grace_period, secs(10));
        assert_eq!(
            task.health_check,
            Some(HealthCheck {
                probe: Some(health_check::Probe::Http(HttpProbe {
                    port: 80,
                    path: "/".into(),
                })),
                interval: secs(1),
                timeout: secs(1),
                retries: Some(3),
                start_period: secs(0),
            })
        );
        assert_eq!(
            spec.placement,
            Some(Placement {
                constraints: map(&[("zone", "a")]),
            })
        );
        assert_eq!(
            spec.update,
            Some(UpdateConfig {
                parallelism: Some(1),
                delay: secs(0),
                order: UpdateOrder::StartFirst as i32,
                monitor: secs(5),
                failure_action: FailureAction::Rollback as i32,
                max_failure_ratio: Some(0.0),
            })
        );
    }

    #[test]
    fn the_least_a_service_needs() {
        let spec = one("name: web\ntask: {image: busybox}\n");
        assert_eq!(
            spec,
            ServiceSpec {
                name: "web".into(),
                mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
                    replicas: None
                })),
                task: Some(TaskSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                placement: None,
                update: None,
            }
        );
    }

    #[test]
    fn several_documents_in_order_and_empty_ones_skipped() {
        let yaml = "\
# a comment before anything
---
name: web
task: {image: busybox}
---
# an empty document
---
name: agent
mode: global
task: {image: agent, cpus: \"500m\", memory: 67108864}
---
name: job
mode: batch
completions: 5
parallelism: 2
task:
  image: busybox
  command: [sh, -c, exit 0]
  health: {cmd: test -f /ready}
---
";
        let specs = parse(yaml).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "agent", "job"]);
        assert_eq!(
            specs[1].mode,
            Some(service_spec::Mode::Global(GlobalMode {}))
        );
        let agent = specs[1].task.as_ref().expect("task");
        assert_eq!(agent.milli_cpus, Some(500));
        assert_eq!(agent.memory_bytes, Some(64 << 20));
        assert_eq!(
            specs[2].mode,
            Some(service_spec::Mode::Batch(BatchMode {
                completions: Some(5),
                parallelism: Some(2),
            }))
        );
        let job = specs[2].task.as_ref().expect("task");
        assert_eq!(job.command, ["sh", "-c", "exit 0"]);
        assert_eq!(
            job.health_check.as_ref().and_then(|h| h.probe.clone()),
            Some(health_check::Probe::Exec(ExecProbe {
                command: vec!["/bin/sh".into(), "-c".into(), "test -f /ready".into()],
            }))
        );
        assert_eq!(parse(""), Ok(vec![]));
        assert_eq!(parse("# nothing\n---\n---\n"), Ok(vec![]));
    }

    #[test]
    fn values_as_people_write_them() {
        let task = |yaml: &str| {
            one(&format!("name: web\ntask: {{image: busybox, {yaml}}}\n"))
                .task
                .expect("task")
        };
        assert_eq!(task("cpus: 2").milli_cpus, Some(2000));
        assert_eq!(task("cpus: \"0.5\"").milli_cpus, Some(500));
        assert_eq!(task("cpus: 250m").milli_cpus, Some(250));
        assert_eq!(task("memory: 1g").memory_bytes, Some(1 << 30));
        assert_eq!(task("memory: \"64Mi\"").memory_bytes, Some(64 << 20));
        assert_eq!(task("stop_timeout: 1m 30s").stop_grace_period, secs(90));
        assert_eq!(task("stop_timeout: 0").stop_grace_period, secs(0));
        assert_eq!(task("env: {PORT: 80}").env, map(&[("PORT", "80")]));
        // Unquoted ports are strings in YAML 1.2, not base-60 numbers.
        let ports = one("name: web\ntask:\n  image: x\n  ports:\n    - 8080:80\n    - 53:53/udp\n")
            .task
            .expect("task")
            .ports;
        assert_eq!(
            ports
                .iter()
                .map(|p| (p.host_port, p.container_port))
                .collect::<Vec<_>>(),
            [(8080, 80), (53, 53)]
        );
        assert_eq!(
            task("ports: [\"53:53/tcp\"]").ports[0].protocol,
            Protocol::Tcp as i32
        );
        assert_eq!(
            task("health: {tcp: {port: 6379}}")
                .health_check
                .and_then(|h| h.probe),
            Some(health_check::Probe::Tcp(TcpProbe { port: 6379 }))
        );
        assert_eq!(
            task("health: {cmd: [test, -f, /ready]}")
                .health_check
                .and_then(|h| h.probe),
            Some(health_check::Probe::Exec(ExecProbe {
                command: vec!["test".into(), "-f".into(), "/ready".into()],
            }))
        );
        // An http probe without a path leaves it to the default ("/").
        assert_eq!(
            task("health: {http: {port: 80}}")
                .health_check
                .and_then(|h| h.probe),
            Some(health_check::Probe::Http(HttpProbe {
                port: 80,
                path: String::new(),
            }))
        );
    }

    #[test]
    fn restart_defaults_follow_the_mode() {
        let restart = |yaml: &str| one(yaml).task.and_then(|t| t.restart);
        assert_eq!(restart("name: web\ntask: {image: x}\n"), None);
        assert_eq!(
            restart("name: web\ntask: {image: x, max_restarts: 5}\n"),
            Some(RestartPolicy {
                condition: RestartCondition::Always as i32,
                max_restarts: 5,
            })
        );
        assert_eq!(
            restart("name: job\nmode: batch\ntask: {image: x, max_restarts: 5}\n"),
            Some(RestartPolicy {
                condition: RestartCondition::OnFailure as i32,
                max_restarts: 5,
            })
        );
        assert_eq!(
            restart("name: web\ntask: {image: x, restart: never}\n"),
            Some(RestartPolicy {
                condition: RestartCondition::Never as i32,
                max_restarts: 0,
            })
        );
    }

    /// Parses `yaml` and checks it is refused at `line`:`column`, with a
    /// field or message containing `contains`.
    #[track_caller]
    fn check_err(yaml: &str, line: usize, column: usize, contains: &str) {
        let err = parse(yaml).expect_err(contains);
        let text = err.to_string();
        assert_eq!((err.line, err.column), (line, column), "{text}");
        assert!(
            text.contains(contains),
            "{text:?} should contain {contains:?}"
        );
        assert!(!err.message.is_empty());
        assert!(!text.contains("at line"), "{text}");
    }

    /// A service `web` whose task has `fields` (a flow mapping's inside)
    /// after its image: on line 2, the task's `{` is at column 7 and
    /// `fields` start at column 24.
    fn with_task(fields: &str) -> String {
        format!("name: web\ntask: {{image: busybox, {fields}}}\n")
    }

    #[test]
    #[rustfmt::skip]
    fn yaml_syntax_errors() {
        check_err("name: web\n  bad: indent\n", 2, 6, "mapping values are not allowed");
        check_err("name: web\ntask: {image: x\n", 2, 7, "unclosed bracket");
        check_err("name: 'web\n", 1, 7, "unclosed quote");
        check_err("name: web\nname: again\n", 2, 1, "duplicate");
        check_err("- web\n", 1, 1, "mapping");
        // A syntax error names no field, wherever the parser was.
        for yaml in ["name: web\n  bad: indent\n", "name: web\ntask: {image: x\n", "task:\n  image: 'x\n"] {
            assert_eq!(parse(yaml).map_err(|e| e.field), Err(String::new()), "{yaml}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn unknown_fields() {
        check_err("name: web\nimage: busybox\n", 2, 1, "image: unknown field");
        check_err(&with_task("imgae: x"), 2, 24, "task.imgae: unknown field");
        check_err(&with_task("health: {tcp: {port: 80}, every: 1s}"), 2, 50, "task.health.every: unknown field");
        check_err(&with_task("health: {tcp: {port: 80, host: a}}"), 2, 49, "task.health.tcp.host: unknown field");
        check_err("name: web\ntask: {image: x}\nupdate: {paralelism: 2}\n", 3, 10, "update.paralelism");
        check_err("name: web\ntask: {image: x}\nplacement: {zone: a}\n", 3, 13, "placement.zone");
    }

    #[test]
    #[rustfmt::skip]
    fn type_errors() {
        check_err("name: web\nreplicas: three\ntask: {image: x}\n", 2, 11, "replicas: expected a whole number, not \"three\"");
        check_err("name: web\nreplicas: \"3\"\ntask: {image: x}\n", 2, 11, "replicas: expected a whole number, not \"3\"");
        check_err("name: web\nreplicas: 1.5\ntask: {image: x}\n", 2, 11, "replicas: 1.5 is not a whole number");
        check_err("name: web\nreplicas: [3]\ntask: {image: x}\n", 2, 1, "replicas: invalid type: sequence, expected a whole number");
        check_err("name: web\ntask: busybox\n", 2, 7, "task: expected mapping start");
        check_err(&with_task("command: echo hi"), 2, 33, "task.command: expected sequence start");
        check_err(&with_task("env: {A: [1]}"), 2, 33, "task.env[\"A\"]: expected string scalar");
        check_err(&with_task("env: {value: [1]}"), 2, 37, "task.env[\"value\"]: expected string scalar");
        check_err(&with_task("health: {http: {port: x}}"), 2, 46, "task.health.http.port: expected a whole number, not \"x\"");
        check_err(&with_task("health: {http: {path: /}}"), 2, 40, "task.health.http: missing field `port`");
        check_err("name: web\ntask: {image: x}\nupdate: {max_failure_ratio: half}\n", 3, 29, "update.max_failure_ratio: expected a number from 0 to 1, not \"half\"");
    }

    #[test]
    #[rustfmt::skip]
    fn bad_values() {
        check_err("name: web\nreplicas: -3\ntask: {image: x}\n", 2, 11, "replicas: -3 must not be negative");
        check_err("name: web\nreplicas: 99999999999\ntask: {image: x}\n", 2, 11, "replicas: 99999999999 is too large");
        check_err("name: web\nreplicas: 99999999999999999999999\ntask: {image: x}\n", 2, 11, "replicas: 100000000000000000000000 is too large");
        check_err(&with_task("memory: 32Qi"), 2, 32, "task.memory: \"32Qi\" has an unknown unit");
        check_err(&with_task("memory: -1"), 2, 32, "task.memory: -1 must not be negative");
        check_err(&with_task("memory: 1.5"), 2, 32, "task.memory: 1.5 is not a size");
        check_err(&with_task("disk: lots"), 2, 30, "task.disk: \"lots\" is not a size");
        check_err(&with_task("cpus: -1"), 2, 30, "task.cpus: \"-1\" is not a cpu amount");
        check_err(&with_task("cpus: 0.0005"), 2, 30, "task.cpus: \"0.0005\" is finer");
        check_err(&with_task("ports: [\"8080:80\", \"99999:80\"]"), 2, 43, "task.ports[1]: \"99999\" in \"99999:80\" is not a port");
        check_err(&with_task("ports: [\"8080\"]"), 2, 32, "task.ports[0]: \"8080\" is not HOST:CONTAINER");
        check_err(&with_task("ports: [\"80:80/sctp\"]"), 2, 32, "task.ports[0]: \"80:80/sctp\"");
        check_err(&with_task("ports: [80]"), 2, 32, "task.ports[0]: 80 is not HOST:CONTAINER");
        check_err(&with_task("stop_timeout: 5 parsecs"), 2, 38, "task.stop_timeout: \"5 parsecs\" is not a duration");
        check_err(&with_task("stop_timeout: 10"), 2, 38, "task.stop_timeout: 10 has no unit");
        check_err(&with_task("health: {tcp: {port: 80}, interval: soon}"), 2, 60, "task.health.interval: \"soon\" is not a duration");
        check_err("name: web\ntask: {image: x}\nupdate: {delay: -5s}\n", 3, 17, "update.delay");
        check_err("name: web\nmode: replicatd\ntask: {image: x}\n", 2, 7, "mode: \"replicatd\" is not a mode: use replicated, global or batch");
        check_err(&with_task("restart: sometimes"), 2, 33, "task.restart: \"sometimes\" is not a restart condition: use never, on-failure or always");
        check_err("name: web\ntask: {image: x}\nupdate: {order: sideways}\n", 3, 17, "update.order: \"sideways\" is not an update order: use stop-first or start-first");
        check_err("name: web\ntask: {image: x}\nupdate: {failure_action: panic}\n", 3, 26, "update.failure_action: \"panic\" is not a failure action");
    }

    #[test]
    #[rustfmt::skip]
    fn fields_of_another_mode() {
        check_err("name: web\nmode: global\nreplicas: 3\ntask: {image: x}\n", 3, 11, "replicas: is only for mode replicated; this service's mode is global");
        check_err("name: web\nmode: batch\nreplicas: 3\ntask: {image: x}\n", 3, 11, "replicas: is only for mode replicated");
        check_err("name: web\ncompletions: 3\ntask: {image: x}\n", 2, 14, "completions: is only for mode batch; this service's mode is replicated");
        check_err("name: web\nmode: global\nparallelism: 2\ntask: {image: x}\n", 3, 14, "parallelism: is only for mode batch");
    }

    #[test]
    #[rustfmt::skip]
    fn health_checks_have_one_probe() {
        check_err(&with_task("health: {http: {port: 80}, tcp: {port: 80}}"), 2, 56, "task.health.tcp: a health check has one probe, and this one has http and tcp");
        check_err(&with_task("health: {interval: 1s}"), 2, 32, "task.health: needs a probe");
    }

    #[test]
    #[rustfmt::skip]
    fn rules_are_reported_at_their_field() {
        // The rules of validate::service_spec, at the field they name.
        check_err("name: Web\ntask: {image: x}\n", 1, 7, "name: \"Web\" must be 1-63 characters");
        check_err("name: web\nreplicas: 1000001\ntask: {image: x}\n", 2, 11, "replicas: 1000001 must be at most 1000000");
        check_err("name: job\nmode: batch\ncompletions: 0\ntask: {image: x}\n", 3, 14, "completions: must be at least 1");
        check_err("name: job\nmode: batch\nparallelism: 0\ntask: {image: x}\n", 3, 14, "parallelism: must be at least 1");
        check_err("name: web\ntask: {image: x}\nupdate:\n  parallelism: 0\n", 4, 16, "update.parallelism: must be at least 1");
        check_err("name: web\ntask: {image: x}\nupdate:\n  monitor: 2h\n", 4, 12, "update.monitor: must be between 0 and 1 hour");
        check_err("name: web\ntask: {image: x}\nupdate:\n  max_failure_ratio: 1.5\n", 4, 22, "update.max_failure_ratio: 1.5 must be between 0 and 1");
        check_err(&with_task("name: web-1"), 2, 30, "task.name: must be empty");
        check_err(&with_task("constraints: {zone: a}"), 2, 37, "task.constraints: must be empty (use placement.constraints)");
        check_err("name: job\nmode: batch\ntask:\n  image: x\n  restart: always\n", 5, 12, "task.restart: a batch task may not restart always");
        check_err(&with_task("memory: 1Mi"), 2, 32, "task.memory: 1048576 must be at least 6Mi");
        check_err(&with_task("cpus: 0"), 2, 30, "task.cpus: 0 must be at least 1");
        check_err(&with_task("ports: [\"80:80\", \"80:81\"]"), 2, 41, "task.ports[1].host_port: 80 is published twice");
        check_err(&with_task("labels: {orch.slot: x}"), 2, 44, "task.labels[\"orch.slot\"]: the prefix");
        check_err(&with_task("env: {\"A=B\": x}"), 2, 37, "task.env[\"A=B\"]: a variable name");
        check_err(&with_task("stop_timeout: 2h"), 2, 38, "task.stop_timeout: must be between 0 and 1 hour");
        check_err(&with_task("health: {http: {port: 0}}"), 2, 46, "task.health.http.port: 0 is not a port");
        check_err(&with_task("health: {http: {port: 80, path: health}}"), 2, 56, "task.health.http.path: \"health\" must start with '/'");
        check_err(&with_task("health: {tcp: {port: 80}, interval: 10ms}"), 2, 60, "task.health.interval: must be between 100ms and 1 hour");
        check_err(&with_task("health: {tcp: {port: 80}, retries: 0}"), 2, 59, "task.health.retries: must be at least 1");
        check_err(&with_task("health: {cmd: []}"), 2, 38, "task.health.cmd: is required");
        check_err("name: web\ntask: {image: x}\nplacement: {constraints: {\"\": a}}\n", 3, 26, "placement.constraints");
        // A missing field: at the nearest field that was written, or the
        // document's start.
        check_err("name: web\ntask:\n  command: [true]\n", 3, 3, "task.image: is required");
        check_err("name: web\ntask: {image: \"  \"}\n", 2, 15, "task.image: is required");
        check_err("name: web\n", 1, 1, "task: is required");
        check_err("# a service\nmode: global\ntask: {image: x}\n", 2, 1, "name: is required");
    }

    #[test]
    fn errors_name_their_document() {
        let yaml = "name: a\ntask: {image: x}\n---\n---\nname: b\ntask: {image: x, memory: 32Qi}\n";
        let err = parse(yaml).expect_err("bad memory");
        assert_eq!((err.document, err.line, err.column), (2, 6, 26), "{err}");
        let yaml = "---\nname: a\ntask: {image: x}\n---\nname: b\nreplicas: 0\nupdate: {parallelism: 0}\ntask: {image: x}\n";
        let err = parse(yaml).expect_err("parallelism 0");
        assert_eq!((err.document, err.line, err.column), (1, 7, 23), "{err}");
        assert_eq!(err.field, "update.parallelism");
        let err =
            parse("name: a\ntask: {image: x}\n---\nname: b\n  bad: indent\n").expect_err("syntax");
        assert_eq!(err.document, 1, "{err}");
        assert_eq!(err.field, "", "{err}");
        // Nothing partial: one bad document refuses the file.
        assert!(parse("name: a\ntask: {image: x}\n---\nname: B\ntask: {image: x}\n").is_err());
    }

    #[test]
    fn errors_read_as_one_line() {
        let err = parse("name: web\ntask:\n  image: x\n  memory: 32Qi\n").expect_err("bad memory");
        assert_eq!(err.field, "task.memory");
        assert_eq!(
            err.in_file("web.yaml").to_string(),
            format!("web.yaml:4:11: task.memory: {}", err.message)
        );
        assert_eq!(
            err.to_string(),
            "4:11: task.memory: \"32Qi\" has an unknown unit \"Qi\" (use Ki, Mi, Gi or Ti)"
        );
        let err = parse("name: web\n  bad: indent\n").expect_err("syntax");
        assert!(!err.to_string().contains("\n"), "{err}");
    }

    #[test]
    fn ports_follow_the_cli() {
        assert_eq!(
            parse_port("8080:80"),
            Ok(PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp as i32,
            })
        );
        assert_eq!(
            parse_port("53:53/udp").map(|p| p.protocol),
            Ok(Protocol::Udp as i32)
        );
        for bad in [
            "8080",
            "0:80",
            "8080:70000",
            "a:b",
            "80:80/sctp",
            ":80",
            "80:",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }
}
