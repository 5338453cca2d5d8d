//! `aerodb`: command-line tool.
//!
//! `aerodb catch-up --primary P.db --replica R.db [--segment-bytes N]`
//! applies everything the primary has that the replica lacks, one segment
//! per SQLite transaction, single-threaded, then exits. It reads the primary
//! read-only. (The threaded replica runtime builds on the same steps:
//! read, decode, validate, apply.)

use replication::wal::{validate, Segment};
use std::process::ExitCode;
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::ReplicaDb;

const USAGE: &str =
    "usage: aerodb catch-up --primary PRIMARY.db --replica REPLICA.db [--segment-bytes N]";

/// Default target size of a segment read from the primary.
const DEFAULT_SEGMENT_BYTES: usize = 1 << 20;

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

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("catch-up") => {}
        Some(other) => return Err(format!("unknown command '{other}'\n{USAGE}")),
        None => return Err(USAGE.into()),
    }
    let known = ["--primary", "--replica", "--segment-bytes"];
    for pair in args[1..].chunks(2) {
        if !known.contains(&pair[0].as_str()) {
            return Err(format!("unknown argument '{}'\n{USAGE}", pair[0]));
        }
    }
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
        let (first, last) = validated.segment().header.range();
        position = db.apply(&validated).map_err(|e| e.to_string())?;
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
