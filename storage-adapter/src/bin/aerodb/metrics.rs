//! `aerodb replica --metrics-listen HOST:PORT`: Prometheus / OpenMetrics
//! text metrics, `/health` and `/ready`, unauthenticated, on a small HTTP
//! listener of their own (`http.rs`, `Limits::METRICS`: a scrape reads the
//! live snapshot and the replica file, nothing else).
//!
//! - `GET /metrics`: gauges of the live state (applied / validated /
//!   received CommitId, the source's head and the lag in commits, the
//!   global state as a labelled gauge, read-safe, running, each
//!   component's last error by code) and counters from the state store
//!   (transitions recorded, segments rejected). Every metric is documented
//!   in `docs/metrics.md`.
//! - `GET /health`: 200 while the process runs.
//! - `GET /ready`: 200 only when the replica is Ready read-safe, the read
//!   gate allows reads and it is within `--ready-max-lag` commits of its
//!   source's head; 503 with the reason (JSON) otherwise.
//!
//! Values are computed when scraped; nothing here decides anything about
//! replication.

use super::http::{self, Body, Connections};
use hyper::Response;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use replication::runtime::{View, Views};
use replication::state::{GlobalKind, GlobalState, ReadStatus};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use std::path::Path;
use storage_adapter::runtime::read_gate_in;
use storage_adapter::status::ReplicaStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    component: String,
    code: String,
}

/// What the replica file holds beyond the live snapshot.
#[derive(Default)]
struct Recorded {
    status: Option<ReplicaStatus>,
    transitions: u64,
    rejected: u64,
    gate: Option<replication::read_gate::Decision>,
}

fn recorded(replica: &Path) -> Recorded {
    let Ok(conn) = Connection::open_with_flags(
        replica,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) else {
        return Recorded::default();
    };
    let count = |sql: &str| -> u64 {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
            .unwrap_or(0) as u64
    };
    Recorded {
        status: ReplicaStatus::read(&conn).ok(),
        transitions: count("SELECT max(seq) FROM aerodb_replica_transitions"),
        rejected: count("SELECT count(*) FROM aerodb_replica_segments WHERE state = 'Rejected'"),
        gate: Some(read_gate_in(&conn, None)),
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The metrics text for the live snapshot and what the file records.
fn render(s: &View, r: &Recorded) -> String {
    let mut reg = Registry::default();
    gauge(
        &mut reg,
        "aerodb_replica_applied_commit_id",
        "Last CommitId applied (committed with the rows)",
        s.applied.commit_id.0 as i64,
    );
    gauge(
        &mut reg,
        "aerodb_replica_validated_commit_id",
        "Last CommitId validated",
        s.progress.validated.0 as i64,
    );
    gauge(
        &mut reg,
        "aerodb_replica_received_commit_id",
        "Last CommitId the Receiver persisted",
        s.progress.received.0 as i64,
    );
    if let Some(status) = &r.status {
        if let Some(head) = status.source_head {
            gauge(
                &mut reg,
                "aerodb_replica_source_head_commit_id",
                "Newest head the source advertised",
                head.0 as i64,
            );
            gauge(
                &mut reg,
                "aerodb_replica_lag_commits",
                "Commits of the source's advertised head not applied yet",
                head.0.saturating_sub(s.applied.commit_id.0) as i64,
            );
        }
    }
    let states = Family::<StateLabel, Gauge>::default();
    for kind in [
        GlobalKind::Disabled,
        GlobalKind::Initializing,
        GlobalKind::Recovering,
        GlobalKind::ReceivingWal,
        GlobalKind::ValidatingWal,
        GlobalKind::ApplyingWal,
        GlobalKind::Ready,
    ] {
        states
            .get_or_create(&StateLabel {
                state: kind.as_str().into(),
            })
            .set(i64::from(s.global.kind() == kind));
    }
    reg.register(
        "aerodb_replica_state",
        "The global state: 1 for the current one",
        states,
    );
    let safe = s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        };
    gauge(
        &mut reg,
        "aerodb_replica_read_safe",
        "1 when the replica is Ready and read-safe",
        i64::from(safe),
    );
    gauge(
        &mut reg,
        "aerodb_replica_running",
        "1 while the runtime runs",
        i64::from(s.running),
    );
    let errors = Family::<ErrorLabel, Gauge>::default();
    for c in &s.components {
        if let Some(e) = &c.last_error {
            errors
                .get_or_create(&ErrorLabel {
                    component: c.component.to_string(),
                    code: e.code.as_str().into(),
                })
                .set(1);
        }
    }
    reg.register(
        "aerodb_replica_component_error",
        "1 per component whose last error (kept until a later success) has this code",
        errors,
    );
    let transitions = Counter::<u64>::default();
    transitions.inc_by(r.transitions);
    reg.register(
        "aerodb_replica_transitions",
        "Global transitions recorded in the replica file",
        transitions,
    );
    let rejected = Counter::<u64>::default();
    rejected.inc_by(r.rejected);
    reg.register(
        "aerodb_replica_rejected_segments",
        "Segments the Validator rejected, as recorded",
        rejected,
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// `/ready`'s answer: whether it is ready, and why not.
fn readiness(s: &View, r: &Recorded, max_lag: u64) -> Result<String, String> {
    let gate = r
        .gate
        .as_ref()
        .ok_or_else(|| "the replica file cannot be read".to_string())?;
    if !gate.allowed() {
        return Err(gate.to_string());
    }
    let safe = s.global
        == GlobalState::Ready {
            read: ReadStatus::Safe,
        };
    if !safe {
        return Err(format!(
            "the replica is {} (applied commit {}), not Ready read-safe",
            s.global, s.applied.commit_id
        ));
    }
    let head = r.status.as_ref().and_then(|st| st.source_head);
    let lag = head.map(|h| h.0.saturating_sub(s.applied.commit_id.0));
    match lag {
        Some(lag) if lag > max_lag => Err(format!(
            "the replica lags its source by {lag} commits (applied {}, source head {}), over --ready-max-lag {max_lag}",
            s.applied.commit_id,
            head.unwrap_or_default()
        )),
        _ => Ok(format!(
            "Ready (read-safe) at applied commit {}, lag {} commits",
            s.applied.commit_id,
            lag.unwrap_or(0)
        )),
    }
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: u16, content_type: &str, body: String) -> Response<Body> {
    http::response(
        status,
        &[("Content-Type", content_type.into())],
        http::full(body),
    )
}

fn no_such(path: &str, endpoints: &str) -> Response<Body> {
    http::json(
        404,
        &json!({"error": format!("no such endpoint '{path}' (endpoints: {endpoints})")}),
    )
}

/// `aerodb replica --metrics-listen`'s answer to a request for `path`
/// (blocking: it reads the replica file).
pub fn replica_answer(path: &str, views: &Views, replica: &Path, max_lag: u64) -> Response<Body> {
    match path {
        "/health" => text(200, "text/plain", "ok\n".into()),
        "/metrics" => text(200, OPENMETRICS, render(&views.view(), &recorded(replica))),
        "/ready" => match readiness(&views.view(), &recorded(replica), max_lag) {
            Ok(why) => http::json(200, &json!({"ready": true, "reason": why})),
            Err(why) => http::json(503, &json!({"ready": false, "reason": why})),
        },
        other => no_such(other, "/metrics, /health, /ready"),
    }
}

// ------------------------------------------------------------ aerodb serve

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    endpoint: String,
    status: u16,
}

/// What `aerodb serve`'s workers count, shared with its metrics listener
/// (`--metrics-listen`). Cloning shares the same counters.
#[derive(Clone)]
pub struct ServeMetrics {
    requests: Family<RequestLabel, Counter>,
    bytes: Counter,
    long_polls: Gauge,
    /// The server's budget of segment bytes built and not yet sent, and
    /// its size.
    body_budget: std::sync::Arc<tokio::sync::Semaphore>,
    budget: usize,
}

/// A long-poll being held; dropping it ends it.
pub struct LongPoll(Gauge);

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ServeMetrics {
    /// Counters at zero; `body_budget` (of `budget` permits) is read when
    /// scraped.
    pub fn new(body_budget: std::sync::Arc<tokio::sync::Semaphore>, budget: usize) -> ServeMetrics {
        ServeMetrics {
            requests: Family::default(),
            bytes: Counter::default(),
            long_polls: Gauge::default(),
            body_budget,
            budget,
        }
    }

    /// Counts a request answered with `status` and `bytes` of body. Paths
    /// outside the API count as `other` (a client cannot grow the label
    /// set).
    pub fn request(&self, path: &str, status: u16, bytes: Option<u64>) {
        let endpoint = match path {
            "/v1/head" | "/v1/segments" | "/v1/snapshot" | "/v1/digest" => path,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabel {
                endpoint: endpoint.into(),
                status,
            })
            .inc();
        self.bytes.inc_by(bytes.unwrap_or(0));
    }

    /// A long-poll starts waiting for new WAL.
    pub fn long_poll(&self) -> LongPoll {
        self.long_polls.inc();
        LongPoll(self.long_polls.clone())
    }

    fn render(&self, db: &str, connections: &Connections) -> String {
        let mut reg = Registry::default();
        if let Ok(reader) = storage_adapter::primary::PrimaryWalReader::open(db) {
            if let Ok(head) = reader.head() {
                gauge(
                    &mut reg,
                    "aerodb_serve_head_commit_id",
                    "The primary's newest CommitId",
                    head.0 as i64,
                );
            }
            if let Ok(oldest) = reader.oldest() {
                gauge(
                    &mut reg,
                    "aerodb_serve_oldest_commit_id",
                    "The oldest CommitId whose WAL the primary still has",
                    oldest.0 as i64,
                );
            }
        }
        reg.register(
            "aerodb_serve_requests",
            "Requests answered, by endpoint and status",
            self.requests.clone(),
        );
        reg.register(
            "aerodb_serve_sent_bytes",
            "Response body bytes sent",
            self.bytes.clone(),
        );
        reg.register(
            "aerodb_serve_long_polls",
            "Long-polls held now (waiting for new WAL)",
            self.long_polls.clone(),
        );
        gauge(
            &mut reg,
            "aerodb_serve_unsent_bytes",
            "Room taken in the 256 MiB segment budget: segments being read and bodies waiting for slow clients",
            self.budget.saturating_sub(self.body_budget.available_permits()) as i64,
        );
        gauge(
            &mut reg,
            "aerodb_serve_open_connections",
            "Client connections open now",
            connections.open() as i64,
        );
        let refused = Counter::<u64>::default();
        refused.inc_by(connections.refused() as u64);
        reg.register(
            "aerodb_serve_refused_connections",
            "Connections closed on accept because --max-connections were open",
            refused,
        );
        let mut out = String::new();
        let _ = encode(&mut out, &reg);
        out
    }
}

/// `aerodb serve --metrics-listen`'s answer to a request for `path`
/// (blocking: it reads the primary).
pub fn primary_answer(
    path: &str,
    metrics: &ServeMetrics,
    db: &str,
    connections: &Connections,
) -> Response<Body> {
    match path {
        "/health" => text(200, "text/plain", "ok\n".into()),
        "/metrics" => text(200, OPENMETRICS, metrics.render(db, connections)),
        other => no_such(other, "/metrics, /health"),
    }
}
