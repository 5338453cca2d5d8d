//! `aerodb catch-up --primary P.db --replica R.db [--segment-bytes N]`:
//! applies everything the primary has that the replica lacks, one segment
//! per SQLite transaction, single-threaded, without the runtime, then
//! exits. Reads the primary read-only. When the primary's WAL no longer
//! holds the commits the replica needs (truncated), it bootstraps from a
//! snapshot of the primary first, as `aerodb replica` does.

use super::{options_from, Failure, LimitArgs};
use clap::Args;
use replication::wal::{validate, ChainPosition, CommitId, Segment};
use std::path::Path;
use storage_adapter::options::NumberOption;
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::{next_segment, ApplyError, ReplicaDb};
use storage_adapter::snapshot;

#[derive(Args, Debug)]
pub struct CatchUpArgs {
    /// The primary database file (opened read-only).
    #[arg(long, value_name = "FILE")]
    primary: String,
    /// The replica database file (created if missing).
    #[arg(long, value_name = "FILE")]
    replica: String,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(args: CatchUpArgs) -> Result<(), Failure> {
    let options = options_from(
        "catch-up",
        &[(NumberOption::SegmentBytes, args.limits.segment_bytes)],
    )?;
    let segment_bytes = options.config.segment_bytes;
    let (primary, replica) = (&args.primary, &args.replica);
    let run = |e: &dyn std::fmt::Display| Failure::Run(e.to_string());
    let reader = PrimaryWalReader::open(primary)
        .map_err(|e| Failure::Run(format!("primary {primary}: {e}")))?;
    let mut db =
        ReplicaDb::open(replica).map_err(|e| Failure::Run(format!("replica {replica}: {e}")))?;
    let mut position = db
        .init(reader.generation())
        .map_err(|e| Failure::Run(format!("replica {replica}: {e}")))?;
    let head = reader.head().map_err(|e| run(&e))?;
    println!(
        "primary generation {} head commit {head}; replica at commit {} (WAL offset {})",
        reader.generation(),
        position.commit_id,
        position.wal_offset
    );
    loop {
        let next = position.commit_id.next();
        let oldest = reader.oldest().map_err(|e| run(&e))?;
        if next < oldest && next <= head {
            // The WAL the replica needs is gone: bootstrap from a snapshot
            // of the primary, as `aerodb replica` does.
            position = bootstrap(primary, replica, &mut db, next, oldest)?;
            continue;
        }
        let Some(bytes) = reader.segment(next, segment_bytes).map_err(|e| run(&e))? else {
            break;
        };
        let segment = Segment::decode(&bytes).map_err(|e| run(&e))?;
        let validated = validate(segment, &position).map_err(|e| run(&e))?;
        let first = validated.segment().header.first_commit_id;
        // A segment that ends inside a transaction is applied with the
        // ones that follow, up to the one that ends it (one transaction).
        position = db
            .apply_transaction(Some(&validated), &mut |_, at| {
                next_segment(&reader, at, segment_bytes)?.ok_or(ApplyError::TransactionCut {
                    after: at.commit_id,
                })
            })
            .map_err(|e| run(&e))?;
        println!(
            "applied segment {first}..={} ({} bytes); replica at commit {} (WAL offset {}) of the primary's head {head} ({} to go)",
            position.commit_id,
            bytes.len(),
            position.commit_id,
            position.wal_offset,
            head.0.saturating_sub(position.commit_id.0)
        );
    }
    println!("caught up: replica at commit {}", position.commit_id);
    Ok(())
}

/// Takes a snapshot of `primary` beside the replica file, checks its
/// checksum and installs it in one transaction (the snapshot stands for
/// commits `next..=` its CommitId). Returns the position after it.
fn bootstrap(
    primary: &str,
    replica: &str,
    db: &mut ReplicaDb,
    next: CommitId,
    oldest: CommitId,
) -> Result<ChainPosition, Failure> {
    println!(
        "the primary's WAL starts at commit {oldest}; the replica needs commit {next}: bootstrapping from a snapshot of the primary"
    );
    let beside = Path::new(replica)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = tempfile::Builder::new()
        .prefix(".aerodb-snapshot-")
        .tempdir_in(beside)
        .map_err(|e| {
            Failure::Run(format!(
                "creating a snapshot directory in {}: {e}",
                beside.display()
            ))
        })?;
    let path = dir.path().join("snapshot.db");
    let info = snapshot::take(primary, &path)
        .map_err(|e| Failure::Run(format!("snapshot of primary {primary}: {e}")))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "took a snapshot of the primary at commit {} ({bytes} bytes, {} tables); checking it",
        info.commit_id,
        info.tables.len()
    );
    let (recorded, computed) = snapshot::inspect(&path)
        .map_err(|e| Failure::Run(format!("reading the snapshot of {primary}: {e}")))?;
    if recorded != info || computed != info.checksum {
        return Err(Failure::Run(format!(
            "the snapshot of {primary} does not check: it records checksum 0x{:08x}, its tables compute 0x{computed:08x}",
            recorded.checksum
        )));
    }
    let end = db
        .install_snapshot(next, info.commit_id, &path, info.position())
        .map_err(|e| Failure::Run(format!("replica {replica}: {e}")))?;
    println!(
        "installed a snapshot of commits {next}..={} ({} tables, checksum 0x{:08x}); replica at commit {} (WAL offset {})",
        info.commit_id,
        info.tables.len(),
        info.checksum,
        end.commit_id,
        end.wal_offset
    );
    Ok(end)
}
