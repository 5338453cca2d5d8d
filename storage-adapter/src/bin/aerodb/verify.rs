//! `aerodb verify --primary P.db --replica R.db [--json]`: does the replica
//! hold exactly the primary's rows? Both are compared at the primary's head,
//! read in one transaction; the replica (no runtime may hold it) is brought
//! to exactly that head first (`storage_adapter::verify`).
//!
//! Exit code: 0 equal, 1 they differ (the first table and row that differ
//! are named), 2 on usage or source errors.

use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use storage_adapter::verify::{verify, Verdict};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The primary database file (opened read-only).
    #[arg(long, value_name = "FILE")]
    primary: String,
    /// The replica database file (no runtime may be running on it).
    #[arg(long, value_name = "FILE")]
    replica: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn as_json(v: &Verdict) -> serde_json::Value {
    let digests = |d: &[storage_adapter::verify::TableDigest]| {
        d.iter()
            .map(|t| json!({"table": t.table, "rows": t.rows, "sha256": t.sha256}))
            .collect::<Vec<_>>()
    };
    json!({
        "commit_id": v.commit_id.0,
        "equal": v.difference.is_none(),
        "difference": v.difference.as_ref().map(|d| json!({"table": d.table, "detail": d.detail})),
        "primary": digests(&v.primary),
        "replica": digests(&v.replica),
    })
}

pub fn run(args: VerifyArgs) -> ExitCode {
    if args.primary.starts_with("http://") || args.primary.starts_with("https://") {
        eprintln!(
            "aerodb verify: --primary {}: only a primary file can be verified against in this build; run verify where the primary file is",
            args.primary
        );
        return ExitCode::from(2);
    }
    match verify(&args.primary, &args.replica) {
        Ok(v) => {
            if args.json {
                println!("{}", as_json(&v));
            } else {
                for t in &v.primary {
                    println!("{}: {} rows, sha256 {}", t.table, t.rows, t.sha256);
                }
                match &v.difference {
                    None => println!(
                        "equal: the replica holds exactly the primary's {} table(s) at commit {}",
                        v.primary.len(),
                        v.commit_id
                    ),
                    Some(d) => println!(
                        "differ at commit {}: table '{}': {}",
                        v.commit_id, d.table, d.detail
                    ),
                }
            }
            if v.difference.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("aerodb verify: {e}");
            ExitCode::from(2)
        }
    }
}
