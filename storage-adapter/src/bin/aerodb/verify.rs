//! `aerodb verify --primary P.db --replica R.db [--json]`: does the replica
//! hold exactly the primary's rows? Both are compared at the primary's head,
//! read in one transaction; the replica is brought to exactly that head
//! first (`storage_adapter::verify`). A replica whose runtime runs is held
//! meanwhile (through its control socket) and released after.
//!
//! Exit code: 0 equal, 1 they differ (the first table and row that differ
//! are named), 2 on usage or source errors.

use clap::Args;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use storage_adapter::verify::{verify, verify_url, Verdict};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The primary database file (opened read-only).
    #[arg(long, value_name = "FILE")]
    primary: String,
    /// The replica database file (a runtime running on it is held while
    /// verify works, and released after).
    #[arg(long, value_name = "FILE")]
    replica: PathBuf,
    /// A file holding the bearer token of the `aerodb serve` at
    /// `--primary http(s)://HOST:PORT`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The CA certificates (PEM) to trust for `--primary https://...`
    /// (a private CA); the webpki roots without it.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
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
        "held": v.held,
    })
}

pub fn run(args: VerifyArgs) -> ExitCode {
    let https = args.primary.starts_with("https://");
    if args.ca_file.is_some() && !https {
        eprintln!(
            "aerodb verify: --ca-file is for --primary https://...; not for {}",
            args.primary
        );
        return ExitCode::from(2);
    }
    let result = if https || args.primary.starts_with("http://") {
        let Some(file) = &args.token_file else {
            eprintln!(
                "aerodb verify: --primary {} needs --token-file",
                args.primary
            );
            return ExitCode::from(2);
        };
        let token = match std::fs::read_to_string(file) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                eprintln!("aerodb verify: --token-file {}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        verify_url(
            &args.primary,
            &token,
            args.ca_file.as_deref(),
            &args.replica,
        )
    } else {
        if args.token_file.is_some() {
            eprintln!("aerodb verify: --token-file is for --primary http(s)://...; a primary file needs none");
            return ExitCode::from(2);
        }
        verify(&args.primary, &args.replica)
    };
    match result {
        Ok(v) => {
            if args.json {
                println!("{}", as_json(&v));
            } else {
                for t in &v.primary {
                    println!("{}: {} rows, sha256 {}", t.table, t.rows, t.sha256);
                }
                if let Some(held) = &v.held {
                    println!("the running replica runtime was {held}");
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
