//! The errors of capture (the primary's SQL functions and Rust API), and
//! the SQLite version capture needs.

use crate::primary_wal::{WalReadError, MAX_COMMIT_ID};
use crate::raw::RawError;
use replication::wal::{CommitId, EncodeError, Generation};
use rusqlite::ffi;
use std::ffi::c_int;

/// Errors of the primary's SQL functions and Rust API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CaptureError {
    /// The database has not been made a primary.
    #[error("not an AeroDB primary: run aerodb_primary_init() first")]
    NotPrimary,
    /// The database is a replica: it cannot also be a primary.
    #[error("aerodb_primary_init(): this database is an AeroDB replica (it has aerodb_replica_position); a database cannot be both")]
    IsReplica,
    /// No such table in the main database.
    #[error("aerodb_replicate('{table}'): no table named '{table}' in the main database")]
    NoSuchTable {
        /// The argument.
        table: String,
    },
    /// The table cannot be replicated.
    #[error("aerodb_replicate('{table}'): {reason}")]
    Refused {
        /// The argument.
        table: String,
        /// Why, and what to do.
        reason: String,
    },
    /// `aerodb_alter` refused the statements; nothing changed.
    #[error("aerodb_alter: {reason}")]
    AlterRefused {
        /// Why, and what to do.
        reason: String,
    },
    /// `aerodb_resync` refused; nothing changed.
    #[error("aerodb_resync: {reason}")]
    ResyncRefused {
        /// Why, and what to do.
        reason: String,
    },
    /// The table's replication cannot be stopped.
    #[error("aerodb_unreplicate('{table}'): {reason}")]
    UnreplicateRefused {
        /// The argument (or the table as registered).
        table: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A SQL function got a bad argument.
    #[error("{function}: argument {argument} {problem}")]
    BadArgument {
        /// The function.
        function: &'static str,
        /// Argument position (1-based) or name.
        argument: String,
        /// What is wrong.
        problem: String,
    },
    /// CommitIds exhausted.
    #[error("CommitId {0} exceeds the largest CommitId this format stores ({MAX_COMMIT_ID})")]
    CommitIdOverflow(CommitId),
    /// A value is over a WAL limit.
    #[error("cannot capture change of table '{table}': {source}")]
    Encode {
        /// The table.
        table: String,
        /// The limit broken.
        source: EncodeError,
    },
    /// Reading or sealing the WAL failed.
    #[error(transparent)]
    Wal(#[from] WalReadError),
    /// Other SQLite failure, with what was being done.
    #[error("{doing}: {source}")]
    Sqlite {
        /// What was being done.
        doing: String,
        /// The SQLite error.
        source: RawError,
    },
    /// A replicated table changed under capture: writes are refused until
    /// `aerodb_replicate` runs again.
    #[error("replication of table '{table}' is broken: {problem}; its writes are refused and its WAL is not served until aerodb_replicate('{table}') is run again (which ships every row again); change replicated tables with aerodb_alter('...'), which replicates the statements themselves")]
    CaptureBroken {
        /// The table.
        table: String,
        /// What changed.
        problem: String,
    },
    /// A trigger that fires before capture can skip it.
    #[error("write to replicated table '{table}' refused: trigger {trigger} fires before its capture triggers (it is TEMP or newer than them) and can end its statement with IGNORE or FAIL (RAISE(IGNORE), RAISE(FAIL), an OR FAIL statement, or a write to a table whose constraints or triggers can FAIL), which keeps a row change but skips its capture; drop it, or run aerodb_replicate('{table}') after creating it so that capture fires first (TEMP triggers always fire first)")]
    UnsafeTrigger {
        /// The table.
        table: String,
        /// The trigger.
        trigger: String,
    },
    /// A copy of this primary is attached.
    #[error("write refused: database '{schema}' attached to this connection is a copy of this primary (same generation); its capture triggers would record its writes as this primary's. DETACH it, or write it from its own connection")]
    CopyAttached {
        /// The attached database's name.
        schema: String,
    },
    /// The database's journal cannot undo a statement.
    #[error("write to a replicated table refused: journal_mode is OFF, so SQLite cannot undo a statement whose capture fails; use WAL (or any other journal mode)")]
    JournalOff,
    /// A row event of this transaction could not be captured.
    #[error("the transaction cannot commit: a write to a replicated table was not captured ({0}); roll it back")]
    Uncaptured(String),
    /// A captured write to a primary that is not this connection's main
    /// database.
    #[error("write to a replicated table of primary {generation} refused: the connection's main database is {}; write to a primary through a connection whose main database is that primary (not through ATTACH)", main.map(|g| format!("primary {g}")).unwrap_or_else(|| "not a primary".into()))]
    NotMainDatabase {
        /// The generation the table's triggers belong to.
        generation: Generation,
        /// The main database's generation, if it is a primary.
        main: Option<Generation>,
    },
    /// The SQLite library is too old.
    #[error("SQLite {actual} is too old: AeroDB needs SQLite {required} or newer")]
    SqliteTooOld {
        /// The running version.
        actual: String,
        /// The minimum.
        required: &'static str,
    },
}

pub(crate) fn sqlite(doing: impl Into<String>) -> impl FnOnce(RawError) -> CaptureError {
    let doing = doing.into();
    move |source| CaptureError::Sqlite { doing, source }
}

/// Minimum SQLite version (`pragma_table_list`, 3.37).
pub const MIN_SQLITE_VERSION: c_int = 3_037_000;
/// The same, for messages.
pub const MIN_SQLITE_VERSION_STR: &str = "3.37.0";

/// Refuses SQLite libraries older than [`MIN_SQLITE_VERSION`].
pub fn check_sqlite_version() -> Result<(), CaptureError> {
    // SAFETY: plain getters with no preconditions.
    let (n, s) = unsafe {
        (
            ffi::sqlite3_libversion_number(),
            std::ffi::CStr::from_ptr(ffi::sqlite3_libversion())
                .to_string_lossy()
                .into_owned(),
        )
    };
    version_check(n, s)
}

pub(crate) fn version_check(number: c_int, text: String) -> Result<(), CaptureError> {
    if number < MIN_SQLITE_VERSION {
        return Err(CaptureError::SqliteTooOld {
            actual: text,
            required: MIN_SQLITE_VERSION_STR,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_sqlite_older_than_the_minimum_with_a_clear_error() {
        let err = version_check(3_036_000, "3.36.0".into()).expect_err("too old");
        assert_eq!(
            err.to_string(),
            "SQLite 3.36.0 is too old: AeroDB needs SQLite 3.37.0 or newer"
        );
        version_check(3_037_000, "3.37.0".into()).expect("minimum accepted");
        version_check(3_040_001, "3.40.1".into()).expect("Debian 12 accepted");
    }
}
