//! The README's "Embedding (Rust)" snippets, compiled and run as written
//! (`cargo run -p storage-adapter --example embedding`), in a fresh
//! temporary directory so `primary.db` and `replica.db` are new files.

use replication::runtime::{Component, Config};
use replication::wal::{validate, Segment};
use std::time::{Duration, Instant};
use storage_adapter::primary::PrimaryWalReader;
use storage_adapter::replica::ReplicaDb;
use storage_adapter::{primary::Primary, runtime::Replica};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::env::set_current_dir(dir.path())?;
    with_threads()?;
    std::fs::remove_file("replica.db")?;
    by_hand()
}

// README: the first snippet.
fn with_threads() -> Result<(), Box<dyn std::error::Error>> {
    let primary = Primary::open("primary.db")?; // WAL mode, capture functions, generation
    primary
        .connection()
        .execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")?;
    primary.replicate("t")?;
    primary
        .connection()
        .execute("INSERT INTO t VALUES (1, 'one')", [])?;
    let token = primary
        .last_commit_id()?
        .expect("this connection committed"); // read-your-writes token

    let replica = Replica::start_from_file("replica.db", "primary.db", Config::default())?;
    replica.wait_for(token, Instant::now() + Duration::from_secs(5))?; // client-side deadline
    let s = replica.view(); // immutable: global state, progress, components
    println!(
        "{} applied {} (WAL offset {})",
        s.global, s.applied.commit_id, s.applied.wal_offset
    );
    println!("{:?}", s.component(Component::Validator)); // state, blocking reason, last transition, last error
    println!("{}", replica.explain_read(Some(token))?); // allowed / refused, and why
    let history = replica.transitions()?; // every global transition, with reasons
    let segments = replica.segments()?; // Received / Validated / Applied / Rejected
    println!("{} transitions, {} segments", history.len(), segments.len());
    replica.stop(); // threads joined, stop recorded
    Ok(())
}

// README: "Without threads, the same steps by hand".
fn by_hand() -> Result<(), Box<dyn std::error::Error>> {
    let reader = PrimaryWalReader::open("primary.db")?; // read-only
    let mut replica = ReplicaDb::open("replica.db")?;
    let mut position = replica.init(reader.generation())?;
    while let Some(bytes) = reader.segment(position.commit_id.next(), 1 << 20)? {
        let segment = validate(Segment::decode(&bytes)?, &position)?;
        position = replica.apply(&segment)?; // one SQLite transaction
    }
    println!("by hand: replica at commit {}", position.commit_id);
    Ok(())
}
