//! `aerodb status REPLICA.db [--json]`: what `replica_state`,
//! `replica_components` and the read gate say about a replica file, for
//! people (text) and scripts (one JSON object). Read-only; works whether or
//! not a runtime runs on the file.
//!
//! Exit code: 0 when the gate allows reads (read-safe, or stopped without a
//! recorded block), 1 when replication is blocked, 2 when the replica
//! diverged from its primary or the file cannot be read as a replica.

use clap::Args;
use replication::read_gate::{Decision, DecisionCode};
use rusqlite::{Connection, OpenFlags};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use storage_adapter::runtime::read_gate_in;
use storage_adapter::status::{ReplicaStatus, Role};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The replica database file (opened read-only).
    #[arg(value_name = "REPLICA.db")]
    replica: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// One row of `aerodb_replica_components`.
struct ComponentRow {
    component: String,
    state: String,
    blocking_reason: Option<String>,
    last_transition: Option<String>,
    error_code: Option<String>,
    error: Option<String>,
}

/// Everything the report shows, read in one read transaction.
struct Report {
    status: ReplicaStatus,
    components: Vec<ComponentRow>,
    verdict: Decision,
}

fn read(conn: &mut Connection) -> Result<Report, String> {
    let tx = conn
        .transaction()
        .map_err(|e| format!("beginning a read transaction: {e}"))?;
    let status = ReplicaStatus::read(&tx).map_err(|e| e.to_string())?;
    match status.role {
        Role::Replica => {}
        Role::Primary => return Err("it is an AeroDB primary, not a replica".into()),
        Role::None => return Err("it is not an AeroDB replica".into()),
    }
    let has_components: bool = tx
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'aerodb_replica_components'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    let mut components = Vec::new();
    if has_components {
        let mut s = tx
            .prepare(
                "SELECT component, state, blocking_reason, last_transition, error_code, error FROM aerodb_replica_components ORDER BY rowid",
            )
            .map_err(|e| e.to_string())?;
        let rows = s
            .query_map([], |r| {
                Ok(ComponentRow {
                    component: r.get(0)?,
                    state: r.get(1)?,
                    blocking_reason: r.get(2)?,
                    last_transition: r.get(3)?,
                    error_code: r.get(4)?,
                    error: r.get(5)?,
                })
            })
            .map_err(|e| e.to_string())?;
        for row in rows {
            components.push(row.map_err(|e| e.to_string())?);
        }
    }
    // The gate over the same read transaction as everything above.
    let verdict = read_gate_in(&tx, None);
    Ok(Report {
        status,
        components,
        verdict,
    })
}

fn exit_for(code: DecisionCode) -> u8 {
    match code {
        DecisionCode::Allowed => 0,
        DecisionCode::Behind | DecisionCode::NotStarted | DecisionCode::Blocked => 1,
        DecisionCode::Diverged | DecisionCode::Unobservable => 2,
    }
}

fn as_json(path: &str, r: &Report) -> Value {
    let s = &r.status;
    let rec = s.runtime.as_ref();
    json!({
        "path": path,
        "role": s.role.as_str(),
        "generation": s.generation.map(|g| g.to_string()),
        "applied_commit_id": s.applied_commit_id.map(|c| c.0),
        "applied_wal_offset": s.applied_wal_offset.map(|o| o.0),
        "received_commit_id": rec.map(|r| r.received_commit_id.0),
        "validated_commit_id": rec.map(|r| r.validated_commit_id.0),
        "global_state": rec.map(|r| r.global_state.as_str()),
        "read_status": rec.map(|r| r.read_status.as_str()),
        "blocking_reason": rec.and_then(|r| r.blocking_reason.as_deref()),
        "last_transition": rec.and_then(|r| r.last_transition.as_deref()),
        "last_transition_reason": rec.and_then(|r| r.last_transition_reason.as_deref()),
        "replicated_tables": s.replicated_tables,
        "snapshot_commit_id": s.snapshot_commit_id.map(|c| c.0),
        "source_head_commit_id": s.source_head.map(|c| c.0),
        "lag_commits": s.lag_commits(),
        "verdict": {
            "code": r.verdict.code.as_str(),
            "allowed": r.verdict.allowed(),
            "reason": r.verdict.explanation,
        },
        "components": r.components.iter().map(|c| json!({
            "component": c.component,
            "state": c.state,
            "blocking_reason": c.blocking_reason,
            "last_transition": c.last_transition,
            "error_code": c.error_code,
            "error": c.error,
        })).collect::<Vec<_>>(),
    })
}

fn as_text(path: &str, r: &Report) -> String {
    let s = &r.status;
    let mut out = format!("replica {path}\n");
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("  {k:<22} {v}\n"));
    let show = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    line(
        &mut out,
        "generation",
        show(s.generation.map(|g| g.to_string())),
    );
    line(
        &mut out,
        "applied",
        format!(
            "commit {} (WAL offset {})",
            show(s.applied_commit_id.map(|c| c.to_string())),
            show(s.applied_wal_offset.map(|o| o.to_string()))
        ),
    );
    if let Some(head) = s.source_head {
        line(
            &mut out,
            "source head",
            format!(
                "commit {head} (lag {} commits)",
                s.lag_commits().unwrap_or_default()
            ),
        );
    }
    match &s.runtime {
        Some(rec) => {
            line(
                &mut out,
                "state",
                if rec.read_status.is_empty() {
                    rec.global_state.clone()
                } else {
                    format!("{} ({})", rec.global_state, rec.read_status)
                },
            );
            line(
                &mut out,
                "received / validated",
                format!(
                    "commit {} / commit {}",
                    rec.received_commit_id, rec.validated_commit_id
                ),
            );
            if let Some(b) = &rec.blocking_reason {
                line(&mut out, "blocking reason", b.clone());
            }
            if let Some(t) = &rec.last_transition {
                line(
                    &mut out,
                    "last transition",
                    format!(
                        "{t}: {}",
                        rec.last_transition_reason.as_deref().unwrap_or("")
                    ),
                );
            }
        }
        None => line(&mut out, "state", "no runtime has run on it".into()),
    }
    line(
        &mut out,
        "replicated tables",
        s.replicated_tables.to_string(),
    );
    if let Some(c) = s.snapshot_commit_id {
        line(
            &mut out,
            "bootstrapped from",
            format!("snapshot at commit {c}"),
        );
    }
    line(&mut out, "reads", r.verdict.to_string());
    if !r.components.is_empty() {
        out.push_str("components\n");
        for c in &r.components {
            out.push_str(&format!("  {:<22} {}\n", c.component, c.state));
            if let Some(b) = &c.blocking_reason {
                out.push_str(&format!("  {:<22} blocked: {b}\n", ""));
            }
            if let (Some(code), Some(e)) = (&c.error_code, &c.error) {
                out.push_str(&format!("  {:<22} last error {code}: {e}\n", ""));
            }
        }
    }
    out
}

/// Prints the report (or why there is none) and returns the exit code.
pub fn run(args: StatusArgs) -> ExitCode {
    let path = args.replica.display().to_string();
    let opened = Connection::open_with_flags(
        &args.replica,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("opening it read-only: {e}"));
    match opened.and_then(|mut conn| read(&mut conn)) {
        Ok(report) => {
            if args.json {
                println!("{}", as_json(&path, &report));
            } else {
                print!("{}", as_text(&path, &report));
            }
            ExitCode::from(exit_for(report.verdict.code))
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({"path": path, "error": e}));
            } else {
                eprintln!("aerodb status: {path}: {e}");
            }
            ExitCode::from(2)
        }
    }
}
