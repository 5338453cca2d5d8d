//! `GET /v1/segments`: the WAL from a CommitId on, long-polled (see
//! `super::watch` for what wakes a held long-poll).

// See serve.rs: the error side of a handler's Result is the answer.
#![allow(clippy::result_large_err)]

use super::{error, failed, http, number, with_reader, Reply, Shared};
use super::{BODY_BUDGET, MAX_SEGMENT_BYTES, MAX_WAIT, RECORD_ROOM};
use replication::wal::{CommitId, Segment};
use std::sync::Arc;
use std::time::Duration;
use storage_adapter::primary::{PrimaryError, PrimaryWalReader};
use storage_adapter::WalReadError;

/// What one read of the WAL for `/v1/segments` found.
enum Read {
    /// The answer.
    Reply(Reply),
    /// Nothing from `from` on yet; the primary's head is this.
    Nothing(CommitId),
}

/// A `/v1/segments` request's parameters.
#[derive(Clone, Copy)]
struct SegmentsAsk {
    from: CommitId,
    until: Option<CommitId>,
    max_bytes: usize,
}

fn empty(head: CommitId) -> Reply {
    http::response(
        204,
        &[("X-AeroDB-Head", head.0.to_string())],
        http::full(Vec::new()),
    )
}

pub(super) async fn segments(
    shared: &Arc<Shared>,
    params: &[(String, String)],
) -> Result<Reply, Reply> {
    for (k, _) in params {
        if !["from", "max_bytes", "wait_ms", "until"].contains(&k.as_str()) {
            return Err(error(
                400,
                &format!("unknown query parameter '{k}' (known: from, max_bytes, wait_ms, until)"),
            ));
        }
    }
    let from = CommitId(number(params, "from", None, 1..=i64::MAX as u64)?);
    // `until`: no record after it (what brings a replica to exactly one
    // CommitId, `aerodb verify`); nothing to wait for past it.
    let until = params
        .iter()
        .any(|(k, _)| k == "until")
        .then(|| number(params, "until", None, 0..=i64::MAX as u64).map(CommitId))
        .transpose()?;
    let max_bytes = number(
        params,
        "max_bytes",
        Some(1 << 20),
        1..=MAX_SEGMENT_BYTES as u64,
    )? as usize;
    let wait = Duration::from_millis(number(
        params,
        "wait_ms",
        Some(0),
        0..=MAX_WAIT.as_millis() as u64,
    )?);
    let deadline = tokio::time::Instant::now() + wait;
    let ask = SegmentsAsk {
        from,
        until,
        max_bytes,
    };
    let mut commits = shared.head.clone();
    let mut _held = None;
    loop {
        // Marked seen before the read: a commit after the read moves it.
        let seen = *commits.borrow_and_update();
        // An idle replica asking past the head again, with no commit seen
        // since a read found nothing there: nothing to read (the read that
        // found it was made after the same commit count was seen, and any
        // later commit moves the count).
        // Only a long-poll (wait_ms > 0) takes it: its empty answer says
        // no commit was seen during its wait. The head watcher sees a
        // commit a moment after it returns, so a request that asks without
        // waiting always reads (a fetch right after a commit finds it).
        let known = *shared
            .nothing_past
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, head)) = known.filter(|&(at, head)| {
            at == seen && until.is_none() && from == head.next() && !wait.is_zero()
        }) {
            if tokio::time::Instant::now() >= deadline {
                return Ok(empty(head));
            }
            _held.get_or_insert_with(|| shared.metrics.long_poll());
            if !next_commit(&mut commits, deadline).await {
                return Ok(empty(head));
            }
            continue;
        }
        // Room for what this read may build: its records and the body they
        // are encoded into, twice max_bytes, or twice a large record (a
        // segment holds at least one whole record, whatever max_bytes
        // says). A body that turns out larger takes room for itself before
        // it is sent; what the body does not use is given back at once,
        // the rest when it is sent or its client goes.
        let reserve = (2 * max_bytes.max(RECORD_ROOM)).min(BODY_BUDGET);
        let mut room = shared
            .body_budget
            .clone()
            .acquire_many_owned(reserve as u32)
            .await
            .map_err(|e| error(500, &e.to_string()))?;
        let head = match with_reader(shared, move |r| read_segments(r, ask)).await? {
            Read::Reply(reply) => {
                let used = (hyper::body::Body::size_hint(reply.body())
                    .exact()
                    .unwrap_or(0) as usize)
                    .min(BODY_BUDGET);
                let kept = if used > room.num_permits() {
                    // Given back first and taken again whole: a read that
                    // waits holds nothing (no two can wait on each other).
                    drop(room);
                    Some(
                        shared
                            .body_budget
                            .clone()
                            .acquire_many_owned(used as u32)
                            .await
                            .map_err(|e| error(500, &e.to_string()))?,
                    )
                } else {
                    let kept = room.split(used);
                    drop(room);
                    kept
                };
                return Ok(match kept {
                    Some(permit) => reply.map(|body| http::holding(body, permit)),
                    None => reply,
                });
            }
            Read::Nothing(head) => head,
        };
        drop(room);
        if from == head.next() {
            *shared
                .nothing_past
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((seen, head));
        }
        // Nothing from `from` on up to `until`: nothing to wait for.
        if until.is_some_and(|u| from > u) || tokio::time::Instant::now() >= deadline {
            return Ok(empty(head));
        }
        _held.get_or_insert_with(|| shared.metrics.long_poll());
        if !next_commit(&mut commits, deadline).await {
            return Ok(empty(head));
        }
    }
}

/// Waits for the head watcher to see a commit (true) or for `deadline`
/// (false; also when the watcher is gone).
async fn next_commit(
    commits: &mut tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    tokio::select! {
        moved = commits.changed() => {
            if moved.is_err() {
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            true
        }
        _ = tokio::time::sleep_until(deadline) => false,
    }
}

fn read_segments(reader: &PrimaryWalReader, ask: SegmentsAsk) -> Result<Read, Reply> {
    let SegmentsAsk {
        from,
        until,
        max_bytes,
    } = ask;
    let fail = failed;
    // Read before the WAL: a replicated table changed and not replicated
    // again yet (a migration under way) answers 503 with it, and the
    // replica waits for the schema to move past it.
    let schema = reader.schema_version().map_err(fail)?;
    let oldest = reader.oldest().map_err(fail)?;
    let gone = |oldest: CommitId| {
        http::json(
            410,
            &serde_json::json!({
                "error": format!("commit {from} is no longer in the primary's WAL (oldest retained commit is {oldest}); bootstrap from /v1/snapshot"),
                "oldest": oldest.0,
            }),
        )
    };
    if from < oldest {
        return Err(gone(oldest));
    }
    let (records, head) = match reader.records_until(from, until, max_bytes) {
        Ok(r) => r,
        Err(
            e @ PrimaryError::Capture(storage_adapter::capture::CaptureError::CaptureBroken {
                ..
            }),
        ) => {
            return Err(http::json(
                503,
                &serde_json::json!({
                    "error": e.to_string(),
                    "schema_version": schema,
                }),
            ))
        }
        // Truncated after the check above: the same answer.
        Err(PrimaryError::Wal(WalReadError::Truncated { oldest_sealed, .. })) => {
            return Err(gone(oldest_sealed))
        }
        Err(e) => return Err(fail(e)),
    };
    if from.0 > head.0 + 1 {
        return Err(http::json(
            409,
            &serde_json::json!({
                "error": format!("commit {from} is beyond the primary's head {head}: the primary is behind this replica (was it restored from an older backup?)"),
                "head": head.0,
            }),
        ));
    }
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(Read::Nothing(head));
    };
    let (first, last) = (first.commit_id, last.commit_id);
    let bytes =
        Segment::encode(reader.generation(), &records).map_err(|e| error(500, &e.to_string()))?;
    Ok(Read::Reply(http::response(
        200,
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("X-AeroDB-First", first.0.to_string()),
            ("X-AeroDB-Last", last.0.to_string()),
            ("X-AeroDB-Head", head.0.to_string()),
        ],
        http::full(bytes),
    )))
}
