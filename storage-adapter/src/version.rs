//! The product's version: `aerodb_version()` in SQL and `aerodb --version`
//! print the same string, so a user can tell which build a shell loaded
//! and which binary serves or replicates.

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;

/// The version of this build (the crate version, e.g. `0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Registers `aerodb_version()` on `conn`: returns [`VERSION`].
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        "aerodb_version",
        0,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |_ctx| Ok(VERSION),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn aerodb_version_returns_the_crate_version() {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory database");
        super::register(&conn).expect("registered");
        let v: String = conn
            .query_row("SELECT aerodb_version()", [], |r| r.get(0))
            .expect("callable");
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }
}
