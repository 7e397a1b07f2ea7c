//! `orchctl events`: follows the manager's events, filtered, and when the
//! stream breaks (the manager restarted, the connection was lost) reconnects
//! with a backoff and resumes after the last event it printed, so what it
//! prints has no gap and no duplicate. It gives up, non-zero, once the
//! manager has not answered for `--reconnect-for`, or at once if the
//! manager no longer keeps the events it would need.

use std::time::Duration;

use orch::api::LAST_SEQUENCE_TRAILER;
use orch::v1::{EventKind, WatchEventsRequest};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::CliError;
use crate::args::{EventKindArg, EventsArgs, Output};
use crate::client::{Client, connect, resolve, resolve_node, status_error};
use crate::config::Target;
use crate::output;

/// The first wait before reconnecting; it doubles up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a watch stopped.
enum Broke {
    /// The manager could not be reached.
    Connect(CliError),
    /// The call or its stream failed with this status.
    Status(Status),
}

impl Broke {
    /// Whether reconnecting cannot help: the request itself is refused, or
    /// the events it needs are gone.
    fn fatal(&self) -> bool {
        match self {
            Self::Connect(_) => false,
            Self::Status(s) => matches!(
                s.code(),
                Code::OutOfRange
                    | Code::InvalidArgument
                    | Code::NotFound
                    | Code::PermissionDenied
                    | Code::Unauthenticated
                    | Code::Unimplemented
            ),
        }
    }

    fn reason(&self) -> String {
        match self {
            Self::Connect(e) => e.0.clone(),
            Self::Status(s) => status_error(s.clone()).0,
        }
    }
}

/// `orchctl events`.
pub async fn events(manager: &Target, a: EventsArgs, out: Output) -> Result<(), CliError> {
    let mut client = connect(manager).await?;
    let mut request = WatchEventsRequest {
        since: a.since,
        service: a.service.unwrap_or_default(),
        kinds: a
            .kinds
            .iter()
            .map(|k| match k {
                EventKindArg::Task => EventKind::Task,
                EventKindArg::Node => EventKind::Node,
                EventKindArg::Service => EventKind::Service,
            } as i32)
            .collect(),
        ..Default::default()
    };
    if let Some(task) = &a.task {
        request.task_id = resolve(&mut client, task).await?.id;
    }
    if let Some(node) = &a.node {
        request.node_id = resolve_node(&mut client, node).await?.id;
    }
    // The last sequence passed: printed, or passed over by the filters as
    // the manager's trailer says. `None` until one is known.
    let mut position = a.since;
    let mut client = Some(client);
    // Since when the manager has been lost, and the next wait.
    let mut lost: Option<(Instant, Duration)> = None;
    loop {
        request.since = position;
        let broke = match watch(
            manager,
            client.take(),
            &request,
            &mut position,
            out,
            &mut lost,
        )
        .await
        {
            Ok(()) => Broke::Status(Status::unavailable("the manager closed the stream")),
            Err(broke) => broke,
        };
        if broke.fatal() {
            return Err(fatal(manager, &broke));
        }
        let from = position.map_or_else(|| "now".to_owned(), |p| format!("event {p}"));
        let (since, wait) = match lost {
            None => {
                eprintln!(
                    "orchctl: lost the manager at {manager} ({}); reconnecting from {from}",
                    broke.reason()
                );
                (Instant::now(), BACKOFF_FIRST)
            }
            Some(lost) => lost,
        };
        if since.elapsed() >= a.reconnect_for {
            let resume = position.map_or_else(String::new, |p| {
                format!("; resume with `orchctl events --since {p}`")
            });
            return Err(CliError(format!(
                "the manager at {manager} is gone: no answer for {} ({}){resume}",
                humantime::format_duration(a.reconnect_for),
                broke.reason()
            )));
        }
        tokio::time::sleep(wait).await;
        lost = Some((since, (wait * 2).min(BACKOFF_MAX)));
    }
}

/// Opens a watch (connecting first unless `client` is given) and prints
/// what it streams, moving `position`, until it breaks. Once it opens
/// after the manager was `lost`, it says so and clears it.
async fn watch(
    manager: &Target,
    client: Option<Client>,
    request: &WatchEventsRequest,
    position: &mut Option<u64>,
    out: Output,
    lost: &mut Option<(Instant, Duration)>,
) -> Result<(), Broke> {
    let mut client = match client {
        Some(client) => client,
        None => connect(manager).await.map_err(Broke::Connect)?,
    };
    let mut stream = client
        .watch_events(request.clone())
        .await
        .map_err(Broke::Status)?
        .into_inner();
    if lost.take().is_some() {
        let from = position.map_or_else(|| "now".to_owned(), |p| format!("after event {p}"));
        eprintln!("orchctl: resumed, from {from}");
    }
    loop {
        match stream.message().await {
            Ok(Some(event)) => {
                *position = Some(event.sequence);
                match out {
                    Output::Json => println!("{}", output::event_json(&event)),
                    Output::Table => println!("{}", output::event_line(&event)),
                }
            }
            Ok(None) => return Ok(()),
            Err(status) => {
                // The manager's trailer may say it got further (past
                // events the filters left out).
                if let Some(at) = status
                    .metadata()
                    .get(LAST_SEQUENCE_TRAILER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    *position = Some(position.map_or(at, |p| p.max(at)));
                }
                return Err(Broke::Status(status));
            }
        }
    }
}

/// The error of a watch that cannot go on.
fn fatal(manager: &Target, broke: &Broke) -> CliError {
    match broke {
        Broke::Status(s) if s.code() == Code::OutOfRange => CliError(format!(
            "the manager at {manager} does not have the events asked for: {}",
            s.message()
        )),
        _ => CliError(broke.reason()),
    }
}
