//! `aerodb`: command-line tool.
//!
//! `aerodb replica --primary P.db --replica R.db [--segment-bytes N]
//! [--until-caught-up]` runs the threaded replica runtime: it prints each
//! change of the applied CommitId and of the global state, and runs until
//! stdin closes (or, with `--until-caught-up`, until the replica is Ready
//! with everything the primary had), then stops cleanly.
//!
//! `aerodb catch-up --primary P.db --replica R.db [--segment-bytes N]`
//! applies everything the primary has that the replica lacks, one segment
//! per SQLite transaction, single-threaded, without the runtime, then exits.
//! Both read the primary read-only.

use replication::runtime::{is_blocked, Config};
use replication::state::GlobalKind;
use replication::wal::{validate, CommitId, Segment};
use std::io::Write;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::{ApplyError, ReplicaDb};
use storage_adapter::runtime::Replica;

const USAGE: &str = "usage: aerodb replica --primary PRIMARY.db|http://HOST:PORT --replica REPLICA.db [--token-file FILE] [--segment-bytes N] [--until-caught-up]
       aerodb catch-up --primary PRIMARY.db --replica REPLICA.db [--segment-bytes N]
       aerodb serve --db PRIMARY.db --listen 127.0.0.1:PORT --token-file FILE [--allow-remote]";

/// Default target size of a segment read from the primary.
const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;

fn run_replica(
    primary: &str,
    replica: &str,
    segment_bytes: usize,
    until_caught_up: bool,
    token_file: Option<&str>,
) -> Result<(), String> {
    let config = Config {
        segment_bytes,
        ..Config::default()
    };
    let (head, handle) = if primary.starts_with("http://") {
        let token_file =
            token_file.ok_or_else(|| format!("--primary {primary} needs --token-file\n{USAGE}"))?;
        let token = std::fs::read_to_string(token_file)
            .map_err(|e| format!("--token-file {token_file}: {e}"))?;
        let source = storage_adapter::http_source::HttpSource::open(primary, token.trim())
            .map_err(|e| e.to_string())?;
        let head = source.head().map_err(|e| e.to_string())?.head;
        let generation = source.generation();
        let handle = Replica::start(replica, Box::new(source), generation, config)
            .map_err(|e| e.to_string())?;
        (head, handle)
    } else {
        let head = PrimaryWalReader::open(primary)
            .and_then(|r| r.head())
            .map_err(|e| format!("primary {primary}: {e}"))?;
        let handle =
            Replica::start_from_file(replica, primary, config).map_err(|e| e.to_string())?;
        (head, handle)
    };
    // stdin closing asks for a stop (so a parent can stop it cleanly).
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    if !until_caught_up {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            let _ = closed_tx.send(());
        });
    }
    let mut shown = (CommitId(0), String::new());
    let out = std::io::stdout();
    loop {
        // Wake on every published change; the deadline only bounds how long
        // a check of stdin can be delayed (no decision depends on it).
        let s = handle
            .wait_until(Instant::now() + Duration::from_millis(50), |s| {
                (s.applied.commit_id, s.global.to_string()) != shown || !s.running
            })
            .unwrap_or_else(|s| s);
        let now = (s.applied.commit_id, s.global.to_string());
        if now != shown {
            let mut o = out.lock();
            let _ = writeln!(
                o,
                "applied commit {} (WAL offset {}); state {}",
                s.applied.commit_id, s.applied.wal_offset, s.global
            );
            let _ = o.flush();
            shown = now;
        }
        if !s.running || is_blocked(&s.global) {
            break;
        }
        if until_caught_up && s.applied.commit_id >= head && s.global.kind() == GlobalKind::Ready {
            break;
        }
        if closed_rx.try_recv().is_ok() {
            break;
        }
    }
    let blocked = handle.snapshot().global.clone();
    let last = handle.stop();
    println!(
        "stopped: applied commit {}; state {}",
        last.applied.commit_id, last.global
    );
    for c in &last.components {
        if let Some(e) = &c.last_error {
            println!("{}: last error {e}", c.component);
        }
    }
    if is_blocked(&blocked) {
        return Err(format!("replication was blocked: {blocked}"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aerodb: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| format!("{name} needs a value\n{USAGE}")),
    }
}

mod serve;

fn run(args: &[String]) -> Result<(), String> {
    if args.first().map(String::as_str) == Some("serve") {
        return serve::run(&args[1..]);
    }
    let command = match args.first().map(String::as_str) {
        Some(c @ ("catch-up" | "replica")) => c,
        Some(other) => return Err(format!("unknown command '{other}'\n{USAGE}")),
        None => return Err(USAGE.into()),
    };
    let until_caught_up = args.iter().any(|a| a == "--until-caught-up");
    if until_caught_up && command != "replica" {
        return Err(format!(
            "--until-caught-up is an option of 'replica'\n{USAGE}"
        ));
    }
    let rest: Vec<String> = args[1..]
        .iter()
        .filter(|a| *a != "--until-caught-up")
        .cloned()
        .collect();
    let known = ["--primary", "--replica", "--segment-bytes", "--token-file"];
    for pair in rest.chunks(2) {
        if !known.contains(&pair[0].as_str()) {
            return Err(format!("unknown argument '{}'\n{USAGE}", pair[0]));
        }
    }
    let args = &rest[..];
    let primary =
        flag(args, "--primary")?.ok_or_else(|| format!("--primary is required\n{USAGE}"))?;
    let replica =
        flag(args, "--replica")?.ok_or_else(|| format!("--replica is required\n{USAGE}"))?;
    let segment_bytes = match flag(args, "--segment-bytes")? {
        None => DEFAULT_SEGMENT_BYTES,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--segment-bytes: '{v}' is not a positive integer"))?,
    };
    if command == "replica" {
        return run_replica(
            primary,
            replica,
            segment_bytes,
            until_caught_up,
            flag(args, "--token-file")?,
        );
    }
    let reader = PrimaryWalReader::open(primary).map_err(|e| format!("primary {primary}: {e}"))?;
    let mut db = ReplicaDb::open(replica).map_err(|e| format!("replica {replica}: {e}"))?;
    let mut position = db
        .init(reader.generation())
        .map_err(|e| format!("replica {replica}: {e}"))?;
    let head = reader.head().map_err(|e| e.to_string())?;
    println!(
        "primary generation {} head commit {head}; replica at commit {} (WAL offset {})",
        reader.generation(),
        position.commit_id,
        position.wal_offset
    );
    while let Some(bytes) = reader
        .segment(position.commit_id.next(), segment_bytes)
        .map_err(|e| e.to_string())?
    {
        let segment = Segment::decode(&bytes).map_err(|e| e.to_string())?;
        let validated = validate(segment, &position).map_err(|e| e.to_string())?;
        let first = validated.segment().header.first_commit_id;
        // A segment that ends inside a transaction is applied with the
        // ones that follow, up to the one that ends it.
        position = db
            .apply_transaction(Some(&validated), &mut |_, at| {
                let bytes = reader
                    .segment(at.commit_id.next(), segment_bytes)
                    .map_err(|e| ApplyError::Source(e.to_string()))?
                    .ok_or(ApplyError::TransactionCut {
                        after: at.commit_id,
                    })?;
                let segment =
                    Segment::decode(&bytes).map_err(|e| ApplyError::Source(e.to_string()))?;
                validate(segment, at).map_err(ApplyError::from)
            })
            .map_err(|e| e.to_string())?;
        let last = position.commit_id;
        println!(
            "applied segment {first}..={last} ({} bytes); replica at commit {} (WAL offset {})",
            bytes.len(),
            position.commit_id,
            position.wal_offset
        );
    }
    println!("caught up: replica at commit {}", position.commit_id);
    Ok(())
}
