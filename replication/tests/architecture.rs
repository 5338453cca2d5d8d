//! Structural rules of the spec that a behavioural test cannot catch,
//! checked over the source of the runtime (replication/src and
//! storage-adapter/src): if someone adds a sleep, a timed wait, a detached
//! thread or a retry loop, this fails and names the file and line.

use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            // Binaries are tools around the runtime, not the runtime.
            if path.file_name().is_some_and(|n| n == "bin") {
                continue;
            }
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// (file, line number, line) of every non-comment line containing `needle`.
fn find(needle: &str) -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let mut files = Vec::new();
    sources(&root.join("replication/src"), &mut files);
    sources(&root.join("storage-adapter/src"), &mut files);
    let mut hits = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).expect("readable");
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if line.contains(needle) {
                let rel = f.strip_prefix(root).expect("under root");
                hits.push((rel.display().to_string(), i + 1, line.trim().to_owned()));
            }
        }
    }
    hits
}

fn files(hits: &[(String, usize, String)]) -> Vec<&str> {
    let mut f: Vec<&str> = hits.iter().map(|h| h.0.as_str()).collect();
    f.dedup();
    f
}

#[test]
fn no_sleep_orders_anything_in_the_runtime() {
    // X5: no timing-based coordination.
    assert_eq!(find("sleep("), vec![], "sleeps in the runtime");
}

#[test]
fn timed_waits_exist_only_where_time_decides_nothing() {
    // X5: the only timed waits are the transport's wait for new WAL (on
    // the stop signal: it decides when to look again) and the client-side
    // deadline of Runtime::wait_until / wait_for.
    let recv = find("recv_timeout(");
    assert_eq!(
        files(&recv),
        vec!["replication/src/runtime/ports.rs"],
        "{recv:?}"
    );
    let cond = find("wait_timeout(");
    assert_eq!(files(&cond), vec!["replication/src/runtime.rs"], "{cond:?}");
    assert_eq!(cond.len(), 1, "{cond:?}");
}

#[test]
fn every_thread_is_a_named_joined_component() {
    // X1: no background best-effort threads. The runtime spawns exactly
    // the four component threads, each named, each handle kept and joined
    // (Pipeline / Runtime); nothing uses a detached `thread::spawn`. The
    // storage adapter's control socket (`runtime/control.rs`, what
    // `aerodb verify` holds a running replica through) adds its acceptor
    // and one thread per connection: named, joined when the runtime stops
    // (the acceptor by `ControlServer::drop`, the connections' by the
    // acceptor), deciding nothing (a hold or release goes to the
    // Supervisor, its answer back).
    assert_eq!(find("thread::spawn("), vec![], "detached threads");
    let named = find(".name(\"aerodb-");
    let mut names: Vec<&str> = named.iter().map(|h| h.2.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        vec![
            ".name(\"aerodb-applier\".into())",
            ".name(\"aerodb-control\".into())",
            ".name(\"aerodb-control-conn\".into())",
            ".name(\"aerodb-receiver\".into())",
            ".name(\"aerodb-supervisor\".into())",
            ".name(\"aerodb-validator\".into())",
        ]
    );
    assert_eq!(find(".join()").len(), 6, "{:?}", find(".join()"));
}

#[test]
fn nothing_retries_in_a_loop() {
    // X4: no implicit progress via retries.
    for needle in ["retry", "retries", "backoff"] {
        let hits = find(needle);
        assert_eq!(hits, vec![], "{needle}");
    }
}

#[test]
fn no_global_mutable_state() {
    // X2: no shared mutable state across components: no statics that
    // mutate.
    for needle in ["static mut", "lazy_static", "thread_local!"] {
        assert_eq!(find(needle), vec![], "{needle}");
    }
}
