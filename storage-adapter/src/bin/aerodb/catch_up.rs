//! `aerodb catch-up --primary P.db --replica R.db [--segment-bytes N]`:
//! applies everything the primary has that the replica lacks, one segment
//! per SQLite transaction, single-threaded, without the runtime, then
//! exits. Reads the primary read-only.

use super::{options_from, Failure, LimitArgs};
use clap::Args;
use replication::wal::{validate, Segment};
use storage_adapter::options::NumberOption;
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::{next_segment, ApplyError, ReplicaDb};

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
    while let Some(bytes) = reader
        .segment(position.commit_id.next(), segment_bytes)
        .map_err(|e| run(&e))?
    {
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
            "applied segment {first}..={} ({} bytes); replica at commit {} (WAL offset {})",
            position.commit_id,
            bytes.len(),
            position.commit_id,
            position.wal_offset
        );
    }
    println!("caught up: replica at commit {}", position.commit_id);
    Ok(())
}
