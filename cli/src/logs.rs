//! `orchctl logs`: a task's output, or every replica's of a service, through
//! the manager's `Logs` stream. Lines the container wrote to stdout go to
//! stdout and those it wrote to stderr to stderr, a service's each after
//! its task's `NAME.SLOT |`; with `--follow`, the end of a task's attempt is
//! said on stderr and becomes orchctl's exit code.

use std::io::Write;

use orch::v1::{GetServiceRequest, LogEnd, LogStream, LogsRequest, LogsResponse};

use crate::CliError;
use crate::args::LogsArgs;
use crate::client::{connect, resolve, status_error};
use crate::config::Target;

/// Prints the output `args` asks for. Returns the exit code: that of the
/// followed attempt (see [`exit_code`]), else 0.
pub async fn logs(manager: &Target, args: LogsArgs) -> Result<i32, CliError> {
    let mut client = connect(manager).await?;
    // A service's name first: its tasks may be named as it is.
    let service = client
        .get_service(GetServiceRequest {
            name: args.target.clone(),
        })
        .await
        .is_ok()
        && args.attempt.is_none();
    let task_id = if service {
        String::new()
    } else {
        resolve(&mut client, &args.target).await?.id
    };
    let stream = if args.stderr {
        LogStream::Stderr
    } else if args.stdout {
        LogStream::Stdout
    } else {
        LogStream::Unspecified
    };
    let request = LogsRequest {
        task_id,
        service: if service {
            args.target.clone()
        } else {
            String::new()
        },
        follow: args.follow,
        tail: args.tail,
        since: args.since.map(orch::time::duration),
        attempt: args.attempt.unwrap_or(0),
        stream: stream as i32,
    };
    let mut stream = client
        .logs(request)
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status_error)? {
        print(&message, service, args.timestamps)?;
        if let Some(end) = &message.end {
            eprintln!("orchctl: task {} {}", task_name(&message), end.message);
            if !service {
                return Ok(exit_code(end));
            }
        }
    }
    Ok(0)
}

/// Writes one response's lines, each to the stream the container wrote it
/// on, after the task's name for a service and the time if asked.
fn print(message: &LogsResponse, service: bool, timestamps: bool) -> Result<(), CliError> {
    let prefix = if service {
        format!("{} | ", task_name(message))
    } else {
        String::new()
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for line in &message.lines {
        let to = if line.stream() == LogStream::Stderr {
            &mut err
        } else {
            &mut out
        };
        to.extend_from_slice(prefix.as_bytes());
        if timestamps && let Some(time) = &line.time {
            let at = orch::time::system_time(time);
            to.extend_from_slice(format!("{} ", humantime::format_rfc3339_nanos(at)).as_bytes());
        }
        to.extend_from_slice(&line.text);
        to.push(b'\n');
    }
    let written = std::io::stdout()
        .write_all(&out)
        .and_then(|()| std::io::stdout().flush())
        .and_then(|()| std::io::stderr().write_all(&err));
    match written {
        // A closed pipe (`| head`) is no error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other.map_err(CliError::from),
    }
}

/// A task as orchctl shows it elsewhere: `NAME.SLOT` for a service's
/// replica (`NAME.<node>` for a global service's), else its name, else the
/// start of its id.
pub fn task_name(m: &LogsResponse) -> String {
    if !m.service.is_empty() {
        if m.slot > 0 {
            return format!("{}.{}", m.service, m.slot);
        }
        let node = m.pinned_node_id.get(..8).unwrap_or(&m.pinned_node_id);
        return format!("{}.{node}", m.service);
    }
    if !m.name.is_empty() {
        return m.name.clone();
    }
    m.task_id.get(..8).unwrap_or(&m.task_id).to_owned()
}

/// orchctl's exit code after a followed attempt ended: its container's
/// exit code (0 for success), or 1 for an end without a code or one that is
/// no exit status (outside 1 to 255).
pub fn exit_code(end: &LogEnd) -> i32 {
    match end.exit_code {
        Some(code) if (0..=255).contains(&code) => code,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_named_as_orchctl_names_it_elsewhere() {
        let m = |service: &str, slot, name: &str, pinned: &str| LogsResponse {
            task_id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            service: service.into(),
            slot,
            name: name.into(),
            pinned_node_id: pinned.into(),
            ..Default::default()
        };
        assert_eq!(task_name(&m("web", 2, "web", "")), "web.2");
        assert_eq!(
            task_name(&m(
                "agent",
                0,
                "agent",
                "0193ffee-0000-7000-8000-000000000000"
            )),
            "agent.0193ffee"
        );
        assert_eq!(task_name(&m("", 0, "job", "")), "job");
        assert_eq!(task_name(&m("", 0, "", "")), "0193a1b2");
    }

    #[test]
    fn the_exit_code_is_the_attempts_or_one() {
        let end = |code| LogEnd {
            exit_code: code,
            ..Default::default()
        };
        assert_eq!(exit_code(&end(Some(0))), 0);
        assert_eq!(exit_code(&end(Some(3))), 3);
        assert_eq!(exit_code(&end(Some(-1))), 1);
        assert_eq!(exit_code(&end(Some(300))), 1);
        assert_eq!(exit_code(&end(None)), 1);
    }
}
