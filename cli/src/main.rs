//! `orchctl`: the orch command-line client, and the launcher of the daemons
//! (`orchctl manager`, `orchctl worker`, `orchctl dev`).
//!
//! Client commands are thin: they parse what a person typed, call the
//! `Cluster` API, and print the answer as a table or as stable JSON. Every
//! failure ends with one readable line on stderr and a non-zero exit.

mod access;
mod args;
mod client;
mod config;
mod daemon;
mod events;
mod logs;
mod output;
mod services;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

/// An error for people: printed as one line after `orchctl: `.
#[derive(Debug)]
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    return ExitCode::SUCCESS;
                }
                // Help shown because something was missing is still a usage error.
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    let _ = e.print();
                    return ExitCode::from(2);
                }
                _ => {}
            }
            eprintln!(
                "orchctl: {} (see orchctl {}--help)",
                one_line(&e.to_string()),
                subcommand_path(std::env::args().skip(1))
            );
            return ExitCode::from(2);
        }
    };
    let daemon = matches!(
        cli.command,
        Command::Dev(_) | Command::Manager(_) | Command::Worker(_)
    );
    init_logging(daemon, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(message)) => {
            eprintln!("orchctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// clap's error without its usage block, on one line, keeping the list of
/// possible values when clap gives one.
fn one_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut line = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    // "the following required arguments were not provided:" lists them on
    // the indented lines after it.
    if line.ends_with(':') {
        let listed: Vec<&str> = lines
            .take_while(|l| l.starts_with(' '))
            .map(str::trim)
            .collect();
        if !listed.is_empty() {
            line.push(' ');
            line.push_str(&listed.join(", "));
        }
    }
    if let Some(values) = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("[possible values:"))
    {
        line.push(' ');
        line.push_str(values);
    }
    line
}

/// The subcommands named in `args`, each followed by a space: where a usage
/// error sends a person for help (`service create `).
fn subcommand_path(args: impl Iterator<Item = String>) -> String {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut path = String::new();
    // A word after `--flag` may be its value (`-o json`), not a command.
    let mut after_flag = false;
    for arg in args {
        if arg.starts_with('-') {
            after_flag = !arg.contains('=');
            continue;
        }
        match command.find_subcommand(&arg).cloned() {
            Some(sub) => {
                path.push_str(sub.get_name());
                path.push(' ');
                command = sub;
            }
            None if after_flag => {}
            None => break,
        }
        after_flag = false;
    }
    path
}

fn init_logging(daemon: bool, format: args::LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = if daemon { "info" } else { "warn" };
    let filter = EnvFilter::try_from_env("ORCH_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        args::LogFormat::Text => logs.try_init(),
        args::LogFormat::Json => logs.json().try_init(),
    };
}

/// The manager the client commands talk to, from flags, environment and
/// the client configuration file.
fn target(cli: &Cli) -> Result<config::Target, CliError> {
    let file = match config::path() {
        Some(path) => config::load(&path)?,
        None => config::FileConfig::default(),
    };
    let given = config::Given {
        manager: cli.manager.clone(),
        ca: cli.ca.clone(),
        token: cli.token.clone().filter(|t| !t.trim().is_empty()),
        insecure: cli.insecure,
    };
    if cli.insecure {
        eprintln!("orchctl: warning: --insecure: plain HTTP, the token travels in the clear");
    }
    config::resolve(&given, &file)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let out = cli.output;
    let insecure = cli.insecure;
    match cli.command {
        Command::Dev(a) => return daemon::dev(a, insecure).await,
        Command::Manager(a) => return daemon::manager(a, insecure).await,
        Command::Completion(a) => {
            use clap::CommandFactory;
            use std::io::Write as _;
            // Into memory first: clap_complete panics on a failed write,
            // and a closed pipe (`| head`) is no error of ours.
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "orchctl", &mut script);
            return match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            };
        }
        Command::Worker(a) => {
            let manager = cli
                .manager
                .clone()
                .unwrap_or_else(|| config::DEFAULT_MANAGER.to_owned());
            return daemon::worker(a, &manager, insecure).await;
        }
        _ => {}
    }
    let target = target(&cli)?;
    let manager = &target;
    let done = match cli.command {
        Command::Dev(_) | Command::Manager(_) | Command::Worker(_) => Ok(()),
        Command::Run(a) => client::run(manager, a, out).await,
        Command::Stop(a) => client::stop(manager, a, out).await,
        Command::Status(a) => client::status(manager, a, out).await,
        Command::Nodes => client::nodes(manager, out).await,
        Command::Managers => client::managers(manager, out).await,
        Command::Node(c) => client::node(manager, c, out).await,
        Command::Events(a) => events::events(manager, a, out).await,
        Command::Logs(a) => {
            let code = logs::logs(manager, a).await?;
            if code != 0 {
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Apply(a) => services::apply(manager, a, out).await,
        Command::Service(c) => services::service(manager, c, out).await,
        Command::Token(c) => access::token(manager, c, out).await,
        Command::Completion(_) => Ok(()),
        Command::JoinToken(a) => access::join_token(manager, a, out).await,
    };
    done.map_err(|e| client::plaintext_hint(manager, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(args: &[&str]) -> String {
        match Cli::try_parse_from(args) {
            Ok(cli) => panic!("parsed: {:?}", cli.command),
            Err(e) => one_line(&e.to_string()),
        }
    }

    #[test]
    fn a_usage_error_is_one_line_naming_what_is_missing() {
        let line = refusal(&[
            "orchctl",
            "service",
            "create",
            "--completions",
            "2",
            "web",
            "img",
        ]);
        assert!(line.ends_with("not provided: --batch"), "{line}");
        let line = refusal(&["orchctl", "service", "scale", "web"]);
        assert!(line.contains("\"web\" is not NAME=N"), "{line}");
        let line = refusal(&["orchctl", "-o", "yaml", "nodes"]);
        assert!(line.ends_with("[possible values: table, json]"), "{line}");
        // A duration's error in words, not the parser's internals.
        let line = refusal(&["orchctl", "run", "--stop-timeout", "forever", "img"]);
        assert!(
            line.ends_with("\"forever\" is not a duration like 10s, 500ms or 1m"),
            "{line}"
        );
    }

    #[test]
    fn a_usage_error_points_to_the_help_of_the_subcommand_typed() {
        let path = |args: &[&str]| subcommand_path(args.iter().map(|a| a.to_string()));
        assert_eq!(
            path(&["service", "create", "--bogus", "web"]),
            "service create "
        );
        assert_eq!(path(&["-o", "json", "run", "--cpus", "x"]), "run ");
        assert_eq!(path(&["--bogus"]), "");
        assert_eq!(path(&["nosuch", "run"]), "");
    }
}
