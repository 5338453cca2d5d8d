//! The replica's options and their limits: one set for the JSON of
//! `aerodb_replica_start(source, options)` and the flags of `aerodb
//! replica`, checked by the same code, so both accept and refuse the same
//! values with the same explanation.
//!
//! Role in the spec: configuration of the runtime's bounds (STYLE 6: every
//! limit a named constant with a documented default, checked here) and of
//! the WAL source the Receiver reads. It decides nothing about
//! replication; [`ReplicaOptions::open_source`] only opens the source the
//! options describe.

use crate::http_source::HttpSource;
use crate::runtime::{FileSource, DEFAULT_POLL_INTERVAL};
use replication::runtime::{Config, WalSource};
use replication::wal::{CommitId, Generation};
use std::time::Duration;

/// A numeric option: its JSON key, its command-line flag and its bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Key in `aerodb_replica_start`'s JSON.
    pub key: &'static str,
    /// Flag of `aerodb replica`.
    pub flag: &'static str,
    /// Smallest value accepted.
    pub min: u64,
    /// Largest value accepted.
    pub max: u64,
    /// Value when not given.
    pub default: u64,
}

/// Target size of a segment asked from the source (at most 64 MiB, the
/// largest segment `aerodb serve` sends).
pub const SEGMENT_BYTES: Limit = Limit {
    key: "segment_bytes",
    flag: "--segment-bytes",
    min: 1,
    max: 64 << 20,
    default: 1 << 20,
};

/// Segments queued between Receiver and Validator and between Validator
/// and Applier (bounds memory whatever the backlog).
pub const QUEUE_DEPTH: Limit = Limit {
    key: "queue_depth",
    flag: "--queue-depth",
    min: 1,
    max: 1024,
    default: 2,
};

/// How often a primary file source looks for new WAL, in milliseconds.
pub const POLL_INTERVAL_MS: Limit = Limit {
    key: "poll_interval_ms",
    flag: "--poll-interval-ms",
    min: 1,
    max: 60_000,
    default: DEFAULT_POLL_INTERVAL.as_millis() as u64,
};

/// The numeric options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberOption {
    /// [`SEGMENT_BYTES`].
    SegmentBytes,
    /// [`QUEUE_DEPTH`].
    QueueDepth,
    /// [`POLL_INTERVAL_MS`].
    PollIntervalMs,
}

impl NumberOption {
    /// Its key, flag and bounds.
    pub fn limit(self) -> Limit {
        match self {
            NumberOption::SegmentBytes => SEGMENT_BYTES,
            NumberOption::QueueDepth => QUEUE_DEPTH,
            NumberOption::PollIntervalMs => POLL_INTERVAL_MS,
        }
    }
}

/// Key (flag `--token-file`) of the file holding an `aerodb serve` bearer
/// token; http sources only.
pub const TOKEN_FILE: &str = "token_file";

/// Key (flag `--ca-file`) of a PEM file of the CA certificates to trust
/// for an `https://` source (a private CA); the webpki roots without it.
pub const CA_FILE: &str = "ca_file";

/// The JSON keys accepted, for error messages.
pub const KEYS: &str = "segment_bytes, queue_depth, poll_interval_ms, token_file, ca_file";

/// How the caller spelled an option, so an error names it as they wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// A key of `aerodb_replica_start`'s JSON (`option "segment_bytes"`).
    Json,
    /// A command-line flag (`--segment-bytes`).
    Flag,
}

/// An option, named as the caller spelled it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionName {
    /// JSON key.
    pub key: &'static str,
    /// Flag.
    pub flag: &'static str,
    /// Which of the two the caller used.
    pub spelling: Spelling,
}

impl std::fmt::Display for OptionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.spelling {
            Spelling::Json => write!(f, "option \"{}\"", self.key),
            Spelling::Flag => f.write_str(self.flag),
        }
    }
}

/// Why options were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// The JSON text does not parse.
    #[error("argument 2 (options) is not valid JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object.
    #[error("argument 2 (options) must be a JSON object, got {0}")]
    NotObject(String),
    /// A key this build does not know.
    #[error("unknown option \"{key}\" (known: {KEYS})")]
    Unknown {
        /// The key.
        key: String,
    },
    /// A number outside its limit, or not a number.
    #[error("{name} must be an integer from {min} to {max}, got {actual}")]
    OutOfRange {
        /// The option.
        name: OptionName,
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
        /// What was given.
        actual: String,
    },
    /// A path that is not a string.
    #[error("{name} must be a string (a file path), got {actual}")]
    NotPath {
        /// The option.
        name: OptionName,
        /// What was given.
        actual: String,
    },
    /// An http source without its token file.
    #[error("source '{url}' needs the {name} (a file holding the server's bearer token)")]
    NeedsToken {
        /// The source.
        url: String,
        /// The token file option.
        name: OptionName,
    },
    /// An option the source would ignore.
    #[error("{name} applies to {applies} sources only, not to '{url}'")]
    NotForSource {
        /// The option.
        name: OptionName,
        /// Which sources it applies to.
        applies: &'static str,
        /// The source given.
        url: String,
    },
}

/// Why the source the options describe could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenSourceError {
    /// The token file is unreadable.
    #[error("{name} '{path}': {reason}")]
    TokenFile {
        /// The option.
        name: OptionName,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The primary file or server refused or did not answer.
    #[error("source '{url}': {reason}")]
    Source {
        /// The source.
        url: String,
        /// Why.
        reason: String,
    },
}

/// The options of a replica runtime, checked.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// Segment size and queue depth of the runtime.
    pub config: Config,
    /// How often a file source looks for new WAL, if given.
    pub poll_interval: Option<Duration>,
    /// The bearer token's file, for http and https sources.
    pub token_file: Option<String>,
    /// The CA certificates (PEM) to trust, for https sources.
    pub ca_file: Option<String>,
    /// How the caller spells options (for errors).
    spelling: Spelling,
}

/// A source the Receiver can read, with what the caller needs to know of it.
pub struct OpenedSource {
    /// The source.
    pub source: Box<dyn WalSource>,
    /// The primary's generation.
    pub generation: Generation,
    /// The primary's head when it was opened.
    pub head: CommitId,
}

fn is_http(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

impl ReplicaOptions {
    /// The defaults, with errors naming options as `spelling` does.
    pub fn new(spelling: Spelling) -> ReplicaOptions {
        ReplicaOptions {
            config: Config {
                segment_bytes: SEGMENT_BYTES.default as usize,
                queue_depth: QUEUE_DEPTH.default as usize,
            },
            poll_interval: None,
            token_file: None,
            ca_file: None,
            spelling,
        }
    }

    fn name(&self, key: &'static str, flag: &'static str) -> OptionName {
        OptionName {
            key,
            flag,
            spelling: self.spelling,
        }
    }

    /// Parses `aerodb_replica_start`'s JSON object; unknown keys are an error.
    pub fn from_json(json: &str) -> Result<ReplicaOptions, OptionError> {
        let mut options = ReplicaOptions::new(Spelling::Json);
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| OptionError::NotJson(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| OptionError::NotObject(value.to_string()))?;
        for (key, v) in object {
            let option = match key.as_str() {
                "segment_bytes" => NumberOption::SegmentBytes,
                "queue_depth" => NumberOption::QueueDepth,
                "poll_interval_ms" => NumberOption::PollIntervalMs,
                TOKEN_FILE => {
                    let path = v.as_str().ok_or_else(|| OptionError::NotPath {
                        name: options.name(TOKEN_FILE, "--token-file"),
                        actual: v.to_string(),
                    })?;
                    options.token_file = Some(path.to_owned());
                    continue;
                }
                CA_FILE => {
                    let path = v.as_str().ok_or_else(|| OptionError::NotPath {
                        name: options.name(CA_FILE, "--ca-file"),
                        actual: v.to_string(),
                    })?;
                    options.ca_file = Some(path.to_owned());
                    continue;
                }
                other => return Err(OptionError::Unknown { key: other.into() }),
            };
            let limit = option.limit();
            match v.as_u64() {
                Some(n) => options.set(option, n)?,
                None => {
                    return Err(OptionError::OutOfRange {
                        name: options.name(limit.key, limit.flag),
                        min: limit.min,
                        max: limit.max,
                        actual: v.to_string(),
                    })
                }
            }
        }
        Ok(options)
    }

    /// Sets a numeric option after checking it against its limit.
    pub fn set(&mut self, option: NumberOption, value: u64) -> Result<(), OptionError> {
        let limit = option.limit();
        if !(limit.min..=limit.max).contains(&value) {
            return Err(OptionError::OutOfRange {
                name: self.name(limit.key, limit.flag),
                min: limit.min,
                max: limit.max,
                actual: value.to_string(),
            });
        }
        match option {
            NumberOption::SegmentBytes => self.config.segment_bytes = value as usize,
            NumberOption::QueueDepth => self.config.queue_depth = value as usize,
            NumberOption::PollIntervalMs => self.poll_interval = Some(Duration::from_millis(value)),
        }
        Ok(())
    }

    /// Refuses options `source` would ignore or lack: the token file is
    /// for (and required by) http and https sources, the CA file for https
    /// sources, the poll interval for files.
    pub fn check_source(&self, source: &str) -> Result<(), OptionError> {
        let token = self.name(TOKEN_FILE, "--token-file");
        if self.ca_file.is_some() && !source.starts_with("https://") {
            return Err(OptionError::NotForSource {
                name: self.name(CA_FILE, "--ca-file"),
                applies: "https://",
                url: source.into(),
            });
        }
        match (is_http(source), &self.token_file, self.poll_interval) {
            (true, None, _) => Err(OptionError::NeedsToken {
                url: source.into(),
                name: token,
            }),
            (true, Some(_), Some(_)) => Err(OptionError::NotForSource {
                name: self.name(POLL_INTERVAL_MS.key, POLL_INTERVAL_MS.flag),
                applies: "primary file",
                url: source.into(),
            }),
            (false, Some(_), _) => Err(OptionError::NotForSource {
                name: token,
                applies: "http:// and https://",
                url: source.into(),
            }),
            _ => Ok(()),
        }
    }

    /// Opens the WAL source `source` (a primary file path or an `http://`
    /// URL of `aerodb serve`) as these options describe.
    pub fn open_source(&self, source: &str) -> Result<OpenedSource, OpenSourceError> {
        let failed = |reason: String| OpenSourceError::Source {
            url: source.into(),
            reason,
        };
        if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|e| OpenSourceError::TokenFile {
                name: self.name(TOKEN_FILE, "--token-file"),
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let ca = self.ca_file.as_deref().map(std::path::Path::new);
            let s = HttpSource::open_with_ca(source, token.trim(), ca)
                .map_err(|f| failed(f.to_string()))?;
            let head = s.head().map_err(|f| failed(f.to_string()))?.head;
            let generation = s.generation();
            return Ok(OpenedSource {
                source: Box::new(s),
                generation,
                head,
            });
        }
        let s = FileSource::open(source)
            .map_err(|e| failed(e.to_string()))?
            .with_poll_interval(self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL));
        let head = crate::primary::PrimaryWalReader::open(source)
            .and_then(|r| r.head())
            .map_err(|e| failed(e.to_string()))?;
        let generation = s.generation();
        Ok(OpenedSource {
            source: Box::new(s),
            generation,
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::zero_segment(
        r#"{"segment_bytes": 0}"#,
        "option \"segment_bytes\" must be an integer from 1 to 67108864, got 0"
    )]
    #[case::huge_queue(
        r#"{"queue_depth": 1025}"#,
        "option \"queue_depth\" must be an integer from 1 to 1024, got 1025"
    )]
    #[case::text_poll(
        r#"{"poll_interval_ms": "5"}"#,
        "option \"poll_interval_ms\" must be an integer from 1 to 60000, got \"5\""
    )]
    #[case::token_number(
        r#"{"token_file": 3}"#,
        "option \"token_file\" must be a string (a file path), got 3"
    )]
    #[case::ca_number(
        r#"{"ca_file": []}"#,
        "option \"ca_file\" must be a string (a file path), got []"
    )]
    #[case::unknown(r#"{"bogus": 1}"#, "unknown option \"bogus\" (known: segment_bytes, queue_depth, poll_interval_ms, token_file, ca_file)")]
    #[case::array("[1]", "argument 2 (options) must be a JSON object, got [1]")]
    fn json_options_out_of_their_limits_are_refused_naming_the_key(
        #[case] json: &str,
        #[case] expected: &str,
    ) {
        assert_eq!(
            ReplicaOptions::from_json(json)
                .map(|_| ())
                .unwrap_err()
                .to_string(),
            expected
        );
    }

    #[test]
    fn flags_are_checked_against_the_same_limits_and_named_as_flags() {
        let mut o = ReplicaOptions::new(Spelling::Flag);
        assert_eq!(
            o.set(NumberOption::SegmentBytes, 0)
                .unwrap_err()
                .to_string(),
            "--segment-bytes must be an integer from 1 to 67108864, got 0"
        );
        o.set(NumberOption::QueueDepth, 8).expect("in range");
        assert_eq!(o.config.queue_depth, 8);
        let json = ReplicaOptions::from_json(r#"{"queue_depth": 8}"#).expect("valid");
        assert_eq!(
            (json.config.segment_bytes, json.config.queue_depth),
            (o.config.segment_bytes, o.config.queue_depth)
        );
    }

    #[rstest]
    #[case::http_without_token("http://127.0.0.1:1", None, None, "source 'http://127.0.0.1:1' needs the --token-file (a file holding the server's bearer token)")]
    #[case::file_with_token(
        "p.db",
        Some("t"),
        None,
        "--token-file applies to http:// and https:// sources only, not to 'p.db'"
    )]
    #[case::http_with_poll(
        "http://h:1",
        Some("t"),
        Some(5),
        "--poll-interval-ms applies to primary file sources only, not to 'http://h:1'"
    )]
    #[case::https_without_token(
        "https://h:1",
        None,
        None,
        "source 'https://h:1' needs the --token-file (a file holding the server's bearer token)"
    )]
    fn options_a_source_would_ignore_or_lack_are_refused(
        #[case] source: &str,
        #[case] token: Option<&str>,
        #[case] poll: Option<u64>,
        #[case] expected: &str,
    ) {
        let mut o = ReplicaOptions::new(Spelling::Flag);
        o.token_file = token.map(str::to_owned);
        if let Some(p) = poll {
            o.set(NumberOption::PollIntervalMs, p).expect("in range");
        }
        assert_eq!(o.check_source(source).unwrap_err().to_string(), expected);
    }

    #[rstest]
    #[case::http(
        "http://h:1",
        Some("--ca-file applies to https:// sources only, not to 'http://h:1'")
    )]
    #[case::file(
        "p.db",
        Some("--ca-file applies to https:// sources only, not to 'p.db'")
    )]
    #[case::https("https://h:1", None)]
    fn a_ca_file_is_for_https_sources_only(#[case] source: &str, #[case] refused: Option<&str>) {
        let mut o = ReplicaOptions::new(Spelling::Flag);
        o.token_file = (source != "p.db").then(|| "t".to_owned());
        o.ca_file = Some("ca.pem".into());
        assert_eq!(
            o.check_source(source)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            refused
        );
    }
}
