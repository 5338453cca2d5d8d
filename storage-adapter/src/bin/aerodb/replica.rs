//! `aerodb replica --primary FILE|URL --replica R.db`: the threaded replica
//! runtime as a service.
//!
//! It prints each change of the applied CommitId and of the global state on
//! stdout, and runs until SIGTERM or SIGINT (or, when asked, until stdin
//! closes or the replica has caught up with the primary's head at start).
//! A stop, whatever asked for it, is the runtime's recorded stop (state
//! Disabled, the reason in `replica_transitions`), as
//! `aerodb_replica_stop()` records it. A source outage
//! (`SOURCE_UNAVAILABLE`) is not the end: the runtime shows it
//! (read-blocked) and resumes when the source answers again, as it does in
//! the SQL runtime. Any other block (a rejected segment, a fork, a failed
//! apply) needs an operator: the process stops the replica and exits 1.
//!
//! No timer orders anything (X5): the main thread waits on the runtime's
//! published state; signals and stdin reach it as stop requests the
//! Supervisor records, which publish a stopped state.

use super::{limit_help, options_from, Failure, LimitArgs};
use clap::Args;
use replication::runtime::FailureCode;
use replication::runtime::{is_blocked, Component, View};
use replication::state::{BlockReason, GlobalKind, GlobalState, ReadStatus};
use replication::wal::CommitId;
use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use storage_adapter::options::{NumberOption, POLL_INTERVAL_MS, QUEUE_DEPTH};
use storage_adapter::runtime::Replica;

#[derive(Args, Debug)]
pub struct ReplicaArgs {
    /// The primary: a database file (opened read-only) or the
    /// http(s)://HOST:PORT of an `aerodb serve`.
    #[arg(long, value_name = "FILE|URL")]
    primary: String,
    /// The replica database file (created if missing).
    #[arg(long, value_name = "FILE")]
    replica: String,
    /// File holding the server's bearer token (http:// and https://
    /// primaries only).
    #[arg(long, value_name = "FILE")]
    token_file: Option<String>,
    /// The CA certificates (PEM) to trust for an https:// primary (a
    /// private CA); the webpki roots without it.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    #[arg(long, value_name = "N", help = limit_help("Segments queued between the runtime's stages", QUEUE_DEPTH))]
    queue_depth: Option<u64>,
    #[arg(long, value_name = "MS", help = limit_help("How often a primary file is checked for new WAL, in ms (file primaries only)", POLL_INTERVAL_MS))]
    poll_interval_ms: Option<u64>,
    /// Stop once the replica is Ready with everything the primary had when
    /// it started.
    #[arg(long)]
    until_caught_up: bool,
    /// Stop when stdin closes (for a parent process that holds a pipe);
    /// without it stdin is not read.
    #[arg(long)]
    stop_on_stdin_eof: bool,
    /// Serve Prometheus metrics (/metrics), /health and /ready on
    /// HOST:PORT, unauthenticated (port 0: any free port, printed).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// /ready answers 200 only within this many commits of the source's
    /// head (and Ready read-safe, reads allowed).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "metrics_listen"
    )]
    ready_max_lag: u64,
}

/// Longest single wait on the published state before waiting again: a
/// bound on one wait, not a decision (every decision is on the state).
const WAIT_BOUND: Duration = Duration::from_secs(3600);

/// What asked the replica to stop.
#[derive(Debug)]
enum StopCause {
    Signal(&'static str),
    StdinClosed,
}

impl StopCause {
    fn reason(&self) -> String {
        match self {
            StopCause::Signal(name) => format!("stopped by {name} (aerodb replica)"),
            StopCause::StdinClosed => "stdin closed (aerodb replica --stop-on-stdin-eof)".into(),
        }
    }
}

/// Why the loop over published states ended.
#[derive(Clone, Debug, PartialEq)]
enum End {
    /// The runtime no longer runs (a stop was recorded, or it failed).
    NotRunning,
    /// Blocked by something other than a source outage.
    Blocked(String),
    /// `--until-caught-up` and there.
    CaughtUp,
}

/// Whether the replica is blocked only because its source does not answer
/// (the Receiver waits for it and resumes by itself).
fn waiting_for_source(s: &View) -> bool {
    matches!(
        &s.global,
        GlobalState::Ready {
            read: ReadStatus::Blocked(BlockReason::ReceiverFailed { .. })
        }
    ) && s
        .component(Component::Receiver)
        .last_error
        .as_ref()
        .is_some_and(|f| f.code == FailureCode::SourceUnavailable)
}

/// What the loop decides after a published state.
fn end_of(s: &View, until: Option<CommitId>) -> Option<End> {
    if !s.running {
        return Some(End::NotRunning);
    }
    if is_blocked(&s.global) && !waiting_for_source(s) {
        return Some(End::Blocked(s.global.to_string()));
    }
    match until {
        Some(head) if s.applied.commit_id >= head && s.global.kind() == GlobalKind::Ready => {
            Some(End::CaughtUp)
        }
        _ => None,
    }
}

pub fn run(args: ReplicaArgs) -> Result<(), Failure> {
    let mut options = options_from(
        "replica",
        &[
            (NumberOption::SegmentBytes, args.limits.segment_bytes),
            (NumberOption::QueueDepth, args.queue_depth),
            (NumberOption::PollIntervalMs, args.poll_interval_ms),
        ],
    )?;
    options.token_file = args.token_file.clone();
    options.ca_file = args.ca_file.clone();
    options
        .check_source(&args.primary)
        .map_err(|e| Failure::usage("replica", e))?;
    let opened = options
        .open_source(&args.primary)
        .map_err(|e| Failure::Run(e.to_string()))?;
    let head = opened.head;
    let (causes_tx, causes) = mpsc::channel::<StopCause>();
    // Signals are caught before the runtime starts, so none is lost.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Failure::Run(format!("installing the signal handlers: {e}")))?;
    let handle = Replica::start(
        &args.replica,
        opened.source,
        opened.generation,
        options.config,
    )
    .map_err(|e| Failure::Run(e.to_string()))?;
    tracing::info!(
        primary = %args.primary,
        replica = %args.replica,
        "replica runtime started; stops on SIGTERM or SIGINT"
    );
    let signal_thread = {
        let (stopper, causes_tx, signals_handle) =
            (handle.stop_requester(), causes_tx.clone(), signals.handle());
        let thread = std::thread::Builder::new()
            .name("aerodb-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    let name = match signal {
                        signal_hook::consts::SIGTERM => "SIGTERM",
                        _ => "SIGINT",
                    };
                    let cause = StopCause::Signal(name);
                    tracing::info!("{name} received; stopping the replica");
                    // The cause first: the main thread reads it once the
                    // stop this request records is published.
                    let reason = cause.reason();
                    let _ = causes_tx.send(cause);
                    stopper.request_stop(reason);
                }
            })
            .map_err(|e| Failure::Run(format!("spawning the signal thread: {e}")))?;
        (thread, signals_handle)
    };
    if args.stop_on_stdin_eof {
        let stopper = handle.stop_requester();
        // Not joined: it blocks in read(2) until stdin closes; the process
        // may end first.
        std::thread::Builder::new()
            .name("aerodb-stdin".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                let cause = StopCause::StdinClosed;
                let reason = cause.reason();
                let _ = causes_tx.send(cause);
                stopper.request_stop(reason);
            })
            .map_err(|e| Failure::Run(format!("spawning the stdin thread: {e}")))?;
    }
    // The metrics listener: a one-thread runtime of its own, bound now (a
    // port that cannot be had fails the start), served until the replica
    // stops.
    let metrics = match &args.metrics_listen {
        Some(listen) => {
            let addrs = super::serve::resolve("replica", "--metrics-listen", listen, true)?;
            let runtime = super::http::runtime("aerodb-metrics", 1, 2).map_err(Failure::Run)?;
            let listener = runtime
                .block_on(async { super::http::bind(&addrs, "--metrics-listen") })
                .map_err(Failure::Run)?;
            let bound = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| listen.clone());
            println!("metrics: serving /metrics, /health and /ready on http://{bound}");
            let _ = std::io::stdout().flush();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (views, path, max_lag) = (
                handle.views(),
                std::path::PathBuf::from(&args.replica),
                args.ready_max_lag,
            );
            let handler = move |request: hyper::Request<hyper::body::Incoming>, _peer| {
                let (views, path) = (views.clone(), path.clone());
                async move {
                    let target = request.uri().path().to_owned();
                    tokio::task::spawn_blocking(move || {
                        super::metrics::replica_answer(&target, &views, &path, max_lag)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        super::http::json(500, &serde_json::json!({"error": e.to_string()}))
                    })
                }
            };
            let thread = std::thread::Builder::new()
                .name("aerodb-metrics".into())
                .spawn(move || {
                    runtime.block_on(super::http::serve(
                        listener,
                        None,
                        super::http::Limits::METRICS,
                        super::http::Connections::default(),
                        handler,
                        async {
                            let _ = stopped.await;
                        },
                    ))
                })
                .map_err(|e| Failure::Run(format!("spawning the metrics thread: {e}")))?;
            Some((stop, thread))
        }
        None => None,
    };
    let end = follow(&handle, args.until_caught_up.then_some(head));
    if let Some((stop, thread)) = metrics {
        let _ = stop.send(());
        let _ = thread.join();
    }
    let last = handle.stop();
    signal_thread.1.close();
    let _ = signal_thread.0.join();
    println!(
        "stopped: applied commit {}; state {}",
        last.applied.commit_id, last.global
    );
    for c in &last.components {
        if let Some(e) = &c.last_error {
            println!("{}: last error {e}", c.component);
        }
    }
    let _ = std::io::stdout().flush();
    outcome(
        end,
        causes.try_recv().ok(),
        args.until_caught_up.then_some(head),
        &last,
    )
}

/// The exit: 0 only when the run did what was asked (caught up with
/// `--until-caught-up`; stopped on request otherwise) and its Supervisor
/// recorded everything (a failure to record, a disk full say, is exit 1).
fn outcome(
    end: End,
    cause: Option<StopCause>,
    until: Option<CommitId>,
    last: &View,
) -> Result<(), Failure> {
    if let Some(e) = &last.component(Component::Supervisor).last_error {
        return Err(Failure::Run(format!(
            "the replica's supervisor failed at applied commit {}: {e}",
            last.applied.commit_id
        )));
    }
    match (end, cause, until) {
        (End::Blocked(state), _, _) => {
            Err(Failure::Run(format!("replication was blocked: {state}")))
        }
        (End::CaughtUp, _, _) => Ok(()),
        (End::NotRunning, Some(cause), Some(head)) => Err(Failure::Run(format!(
            "{} before catching up: applied commit {} of the primary's head {head}",
            cause.reason(),
            last.applied.commit_id
        ))),
        (End::NotRunning, Some(_), None) => Ok(()),
        (End::NotRunning, None, _) => Err(Failure::Run(format!(
            "the replica runtime stopped by itself: {}",
            last.global
        ))),
    }
}

/// " of source head H (N to go, R commits/s, ETA T s)" while behind the
/// source's advertised head, " of source head H" once there, "" before
/// anything was received. Wall-clock rate and ETA are for people only.
fn progress(s: &View, (since, from): (Instant, CommitId)) -> String {
    let Some(head) = s.source_head else {
        return String::new();
    };
    let at = s.applied.commit_id;
    if head <= at {
        return format!(" of source head {head}");
    }
    let left = head.0 - at.0;
    let secs = since.elapsed().as_secs_f64();
    let done = at.0.saturating_sub(from.0);
    if done == 0 || secs <= 0.0 {
        return format!(" of source head {head} ({left} to go)");
    }
    let rate = done as f64 / secs;
    format!(
        " of source head {head} ({left} to go, {rate:.0} commits/s, ETA {:.0} s)",
        left as f64 / rate
    )
}

/// Prints every change of the applied CommitId and the global state until
/// the loop must end.
fn follow(handle: &Replica, until: Option<CommitId>) -> End {
    let mut shown = (CommitId(0), String::new());
    let mut outage = false;
    // For the progress shown (rate and ETA; display only).
    let started = (Instant::now(), handle.view().applied.commit_id);
    loop {
        let s = handle
            .wait_until(Instant::now() + WAIT_BOUND, |s| {
                (s.applied.commit_id, s.global.to_string()) != shown || !s.running
            })
            .unwrap_or_else(|s| s);
        let now = (s.applied.commit_id, s.global.to_string());
        if now != shown {
            let mut o = std::io::stdout().lock();
            let _ = writeln!(
                o,
                "applied commit {} (WAL offset {}){}; state {}",
                s.applied.commit_id,
                s.applied.wal_offset,
                progress(&s, started),
                s.global
            );
            let _ = o.flush();
            shown = now;
        }
        match (waiting_for_source(&s), outage) {
            (true, false) => tracing::warn!(
                state = %s.global,
                "the WAL source does not answer; the replica keeps running and resumes when it answers again"
            ),
            (false, true) if s.running => {
                tracing::info!(state = %s.global, "the WAL source answers again")
            }
            _ => {}
        }
        outage = waiting_for_source(&s);
        if let Some(end) = end_of(&s, until) {
            return end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication::runtime::{ComponentStatus, Failure as RuntimeFailure};
    use replication::wal::{ChainPosition, Generation};

    fn last(applied: u64, supervisor_error: Option<&str>) -> View {
        let mut applied_at = ChainPosition::genesis(Generation(7));
        applied_at.commit_id = CommitId(applied);
        View {
            global: GlobalState::Disabled,
            progress: Default::default(),
            applied: applied_at,
            components: Component::ALL
                .iter()
                .map(|&component| ComponentStatus {
                    component,
                    state: "Stopped".into(),
                    blocking_reason: None,
                    last_transition: None,
                    last_error: (component == Component::Supervisor)
                        .then_some(supervisor_error)
                        .flatten()
                        .map(|e| RuntimeFailure::new(FailureCode::DiskFull, e)),
                })
                .collect(),
            last_transition: None,
            running: false,
            source_head: None,
        }
    }

    fn exit(r: Result<(), Failure>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(Failure::Run(m)) => m,
            Err(Failure::Usage { message, .. }) => format!("usage: {message}"),
        }
    }

    #[test]
    fn until_caught_up_succeeds_only_when_caught_up() {
        let head = Some(CommitId(473));
        assert_eq!(
            exit(outcome(End::CaughtUp, None, head, &last(473, None))),
            "ok"
        );
        // A signal before the head: asked to catch up, did not.
        assert_eq!(
            exit(outcome(
                End::NotRunning,
                Some(StopCause::Signal("SIGTERM")),
                head,
                &last(177, None)
            )),
            "stopped by SIGTERM (aerodb replica) before catching up: applied commit 177 of the primary's head 473"
        );
        // Without --until-caught-up, a requested stop is a success.
        assert_eq!(
            exit(outcome(
                End::NotRunning,
                Some(StopCause::Signal("SIGTERM")),
                None,
                &last(177, None)
            )),
            "ok"
        );
    }

    #[test]
    fn a_failed_supervisor_is_a_failure_whatever_ended_the_loop() {
        for (end, cause) in [
            (End::NotRunning, None),
            (End::NotRunning, Some(StopCause::Signal("SIGINT"))),
            (End::CaughtUp, None),
        ] {
            for until in [None, Some(CommitId(473))] {
                let why = exit(outcome(
                    end.clone(),
                    cause.as_ref().map(|_| StopCause::Signal("SIGINT")),
                    until,
                    &last(177, Some("database or disk is full")),
                ));
                assert_eq!(
                    why,
                    "the replica's supervisor failed at applied commit 177: DISK_FULL: database or disk is full",
                    "{end:?} {cause:?} {until:?}"
                );
            }
        }
    }
}
