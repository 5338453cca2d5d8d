//! Reading SQL text as SQLite reads it (comments, quoted names and string
//! literals), for the few places that must look at statements before
//! running them: the RAISE check of triggers that fire before capture, and
//! the DDL `aerodb_alter` runs (on the primary and again on the replica).

/// SQL tokens, upper-cased: words, quoted names and string literals (one
/// token each, quotes kept), single punctuation characters. Comments and
/// whitespace are dropped.
pub(crate) fn sql_tokens(sql: &str) -> Vec<String> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if matches!(c, '"' | '\'' | '`' | '[') {
            let close = if c == '[' { ']' } else { c };
            let start = i;
            i += 1;
            loop {
                match chars.get(i) {
                    None => break,
                    Some(&x) if x == close => {
                        // A doubled quote is one quote inside the token.
                        if close != ']' && chars.get(i + 1) == Some(&close) {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(_) => i += 1,
                }
            }
            out.push(chars[start..i.min(chars.len())].iter().collect::<String>());
        } else if c.is_alphanumeric() || c == '_' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            out.push(
                chars[start..i]
                    .iter()
                    .collect::<String>()
                    .to_ascii_uppercase(),
            );
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// A name token as SQLite reads it: quotes removed (a doubled quote is one
/// quote); a bare word as it is (upper-cased by [`sql_tokens`], which
/// SQLite's case-insensitive names allow).
pub(crate) fn unquote(token: &str) -> String {
    let mut chars = token.chars();
    match (chars.next(), token.chars().last()) {
        (Some('['), Some(']')) if token.len() >= 2 => token[1..token.len() - 1].to_owned(),
        (Some(q @ ('"' | '`' | '\'')), Some(e)) if e == q && token.len() >= 2 => {
            let inner = &token[1..token.len() - 1];
            inner.replace(&format!("{q}{q}"), &q.to_string())
        }
        _ => token.to_owned(),
    }
}

/// Checks that `sql` holds only statements `aerodb_alter` runs: ALTER
/// TABLE, CREATE [UNIQUE] INDEX, DROP INDEX, DROP TABLE (at least one).
pub(crate) fn check_ddl(sql: &str) -> Result<(), String> {
    let tokens = sql_tokens(sql);
    let mut n = 0;
    for statement in tokens.split(|t| t == ";").filter(|s| !s.is_empty()) {
        n += 1;
        let word = |i: usize| statement.get(i).map(String::as_str).unwrap_or("");
        let ok = match word(0) {
            "ALTER" => word(1) == "TABLE",
            "CREATE" => word(1) == "INDEX" || (word(1) == "UNIQUE" && word(2) == "INDEX"),
            "DROP" => word(1) == "INDEX" || word(1) == "TABLE",
            _ => false,
        };
        if !ok {
            let start: Vec<&str> = statement.iter().take(3).map(String::as_str).collect();
            return Err(format!(
                "statement {n} starts with `{}`; aerodb_alter runs ALTER TABLE, CREATE [UNIQUE] INDEX, DROP INDEX and DROP TABLE statements only (run other statements directly)",
                start.join(" ")
            ));
        }
        // The replica must do exactly what the primary did: a statement
        // that may do nothing here (IF EXISTS, IF NOT EXISTS) could act on
        // a table only the replica has.
        if statement
            .windows(2)
            .any(|w| w[0] == "IF" && (w[1] == "EXISTS" || w[1] == "NOT"))
        {
            return Err(format!(
                "statement {n} says IF [NOT] EXISTS; aerodb_alter runs statements that do the same on the primary and on every replica, so name what exists"
            ));
        }
        for (i, t) in statement.iter().enumerate() {
            let bare = t
                .trim_matches(|c| matches!(c, '"' | '`' | '[' | ']'))
                .to_ascii_lowercase();
            if bare.starts_with("aerodb_") || bare.starts_with("sqlite_") {
                return Err(format!(
                    "statement {n} names `{t}`: names starting with aerodb_ or sqlite_ are AeroDB's and SQLite's own"
                ));
            }
            // `schema.name`: only main (TEMP and attached databases are
            // not replicated; unqualified names are resolved in main).
            let identifier = t
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || matches!(c, '"' | '`' | '['));
            let after_dot = i > 0 && statement[i - 1] == ".";
            if identifier
                && !after_dot
                && statement.get(i + 1).map(String::as_str) == Some(".")
                && bare != "main"
            {
                return Err(format!(
                    "statement {n} names schema `{t}`; aerodb_alter changes tables of the main database only"
                ));
            }
            if bare == "temp" || bare == "temporary" {
                return Err(format!(
                    "statement {n} says {t}; aerodb_alter changes tables of the main database only"
                ));
            }
        }
    }
    if n == 0 {
        return Err("there is no statement to run".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_ddl;

    #[test]
    fn only_ddl_of_tables_and_indexes_passes() {
        for ok in [
            "ALTER TABLE t ADD COLUMN c",
            "alter table t rename to u; create unique index i on u(c);",
            "/* x; */ DROP INDEX i; -- y\n DROP TABLE t",
            "ALTER TABLE t ADD COLUMN c DEFAULT ';DELETE FROM t'",
            "ALTER TABLE t ADD COLUMN e DEFAULT (-0.0)",
            "ALTER TABLE main.t ADD COLUMN f REAL DEFAULT 1.5e3",
        ] {
            assert_eq!(check_ddl(ok), Ok(()), "{ok}");
        }
        for (bad, starts) in [
            ("DELETE FROM t", "DELETE FROM T"),
            ("ALTER TABLE t ADD COLUMN c; COMMIT", "COMMIT"),
            (
                "CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1; END",
                "CREATE TRIGGER X",
            ),
            ("CREATE TABLE u(x)", "CREATE TABLE U"),
            ("  ; -- nothing", ""),
            ("DROP TABLE IF EXISTS x", "IF [NOT] EXISTS"),
            ("CREATE INDEX IF NOT EXISTS i ON t(a)", "IF [NOT] EXISTS"),
            ("DROP TABLE aerodb_replica_segments", "aerodb_"),
            ("DROP TABLE \"AeroDB_x\"", "aerodb_"),
            ("ALTER TABLE temp.t ADD COLUMN c", "schema `TEMP`"),
            ("CREATE INDEX aux.i ON t(a)", "schema `AUX`"),
        ] {
            let e = check_ddl(bad).unwrap_err();
            assert!(
                e.contains(&format!("`{starts}`"))
                    || e.contains("no statement")
                    || e.contains(starts) && !starts.is_empty(),
                "{bad}: {e}"
            );
        }
    }
}
