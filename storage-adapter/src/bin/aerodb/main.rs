//! `aerodb`: the command-line tool (DESIGN 6, "Command line").
//!
//! - `aerodb replica` runs the threaded replica runtime as a service
//!   (`replica.rs`): until SIGTERM/SIGINT, through source outages.
//! - `aerodb catch-up` applies what the replica lacks, single-threaded,
//!   without the runtime, then exits (`catch_up.rs`).
//! - `aerodb serve` serves a primary's WAL read-only over HTTP or HTTPS
//!   (`serve.rs`, on the server in `http.rs`).
//! - `aerodb status` shows a replica file's recorded state and read verdict
//!   (`status.rs`), text or JSON, with exit 0 / 1 / 2 for read-safe /
//!   blocked / diverged or unreadable.
//!
//! Conventions: `--help` / `-h` / `help CMD` on stdout with exit 0,
//! `--version`, `--flag=value`; exit codes 0 ok, 1 runtime failure,
//! 2 usage error (an unknown flag, a flag the command does not take, a
//! value outside its limit). The replica's limits are those of
//! `aerodb_replica_start`'s JSON, checked by the same code
//! (`storage_adapter::options`). Logs go to stderr through
//! `tracing-subscriber` (`RUST_LOG`, default `info`; `--log-format`).

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use storage_adapter::options::{
    Limit, NumberOption, OptionError, ReplicaOptions, Spelling, SEGMENT_BYTES,
};

mod catch_up;
mod http;
mod inotify;
mod metrics;
mod replica;
mod serve;
mod status;
mod verify;

/// SQLite replication: serve a primary's WAL, run a replica.
#[derive(Parser, Debug)]
#[command(
    name = "aerodb",
    version = storage_adapter::version::VERSION,
    arg_required_else_help = true,
    after_help = "Logs go to stderr; RUST_LOG sets their filter (default: info).\nExit codes: 0 ok, 1 failure, 2 usage error."
)]
struct Cli {
    /// Format of the log lines written to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event, with a UTC timestamp.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a replica of a primary file or an `aerodb serve`, as a service:
    /// until SIGTERM or SIGINT, through source outages.
    Replica(replica::ReplicaArgs),
    /// Apply everything the primary file has that the replica lacks,
    /// single-threaded and without the runtime, then exit.
    CatchUp(catch_up::CatchUpArgs),
    /// Serve a primary's WAL read-only over HTTP or HTTPS to replicas.
    Serve(serve::ServeArgs),
    /// Show a replica file's recorded state, components and read verdict;
    /// exit 0 read-safe, 1 blocked, 2 diverged or unreadable.
    Status(status::StatusArgs),
    /// Check that a replica file holds exactly the primary file's rows at
    /// the primary's head; exit 0 equal, 1 different, 2 on errors.
    Verify(verify::VerifyArgs),
}

/// The runtime's limits, as flags (the keys of `aerodb_replica_start`'s
/// JSON options; same bounds, same checks).
#[derive(Args, Debug, Default)]
struct LimitArgs {
    #[arg(long, value_name = "BYTES", help = limit_help("Target size of a segment asked from the source", SEGMENT_BYTES))]
    segment_bytes: Option<u64>,
}

/// A limit flag's help, with its bounds and default from the constants the
/// check uses (so the help cannot drift from it).
fn limit_help(what: &str, limit: Limit) -> String {
    format!(
        "{what} [{}..={}, default {}]",
        limit.min, limit.max, limit.default
    )
}

/// Why a command failed: a usage error (exit 2) or at run time (exit 1).
#[derive(Debug)]
enum Failure {
    /// The command line asks for something the command cannot do.
    Usage {
        command: &'static str,
        message: String,
    },
    /// Running it failed.
    Run(String),
}

impl Failure {
    fn usage(command: &'static str, e: OptionError) -> Failure {
        Failure::Usage {
            command,
            message: e.to_string(),
        }
    }
}

/// Starts the options from the defaults and applies the limits given.
fn options_from(
    command: &'static str,
    limits: &[(NumberOption, Option<u64>)],
) -> Result<ReplicaOptions, Failure> {
    let mut options = ReplicaOptions::new(Spelling::Flag);
    for (option, value) in limits {
        if let Some(v) = value {
            options
                .set(*option, *v)
                .map_err(|e| Failure::usage(command, e))?;
        }
    }
    Ok(options)
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // `e.exit()`: help and version on stdout with 0, usage errors on
    // stderr with 2.
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Replica(args) => replica::run(args),
        Command::CatchUp(args) => catch_up::run(args),
        Command::Serve(args) => serve::run(args),
        // Its exit code is the verdict's (0, 1 or 2), not ok/failure.
        Command::Status(args) => return status::run(args),
        Command::Verify(args) => return verify::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage { command, message }) => {
            let mut cmd = Cli::command();
            cmd.build();
            let sub = cmd
                .find_subcommand_mut(command)
                .expect("every Failure::Usage names one of the subcommands above");
            sub.error(clap::error::ErrorKind::ValueValidation, message)
                .exit()
        }
        Err(Failure::Run(message)) => {
            eprintln!("aerodb: {message}");
            ExitCode::FAILURE
        }
    }
}
