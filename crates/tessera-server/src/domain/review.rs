//! Reviewing a grant: a reviewer extends it (a new review date, a reason) or withdraws it. The
//! decision takes effect at once (a new active policy-set version), is audited with the
//! reviewer's name, and comes back as the identity-file change that makes it lasting: a unified
//! diff written to the file when this server manages the identity files (`identity_dir`), else
//! the change for the owner to commit (`tessera apply` stays the source of truth).

use std::path::{Path, PathBuf};

use serde_json::json;
use tessera_core::admin_api::{GrantReviewRequest, GrantReviewed, ReviewAction};
use tessera_core::manifest::{Date, Grant};
use tessera_store::{AuditEvent, AuditKind, Op, Outcome, StoreError};

use crate::app::App;
use crate::domain::policy_sets::{self, PolicySetError};

/// Why a review is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The managed file cannot be read or written; nothing was changed.
    #[error("identity file `{path}`: {message}; nothing was changed")]
    File { path: String, message: String },
    #[error(transparent)]
    PolicySet(#[from] PolicySetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A review date at most this far ahead: a review is a promise to look again.
const MAX_EXTENSION_DAYS: i64 = 366;
const MAX_REASON: usize = 500;

/// `POST /v1/grants/review`.
pub(crate) async fn review(
    app: &App,
    actor: &str,
    req: &GrantReviewRequest,
) -> Result<GrantReviewed, ReviewError> {
    let snap = app.snapshot();
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON || reason.contains(['\n', '\r']) {
        return Err(ReviewError::Invalid(format!(
            "give a reason of one line, at most {MAX_REASON} characters"
        )));
    }
    let grant = snap
        .grants
        .iter()
        .find(|g| g.from == req.from && g.to == req.to)
        .cloned()
        .ok_or_else(|| {
            ReviewError::NotFound(format!("no grant from `{}` to `{}`", req.from, req.to))
        })?;
    let now = tessera_core::now_unix();
    let reviewed = match req.action {
        ReviewAction::Extend => {
            let date = req.review_by.ok_or_else(|| {
                ReviewError::Invalid("extending needs the new `review_by` date".into())
            })?;
            if date.end_unix() <= now {
                return Err(ReviewError::Invalid(format!(
                    "`{date}` is not in the future"
                )));
            }
            if date.end_unix() > now + MAX_EXTENSION_DAYS * 86_400 {
                return Err(ReviewError::Invalid(format!(
                    "`{date}` is more than a year ahead: review at least yearly"
                )));
            }
            Some(Grant {
                review_by: Some(date),
                ..grant.clone()
            })
        }
        ReviewAction::Withdraw => None,
    };
    let grants: Vec<Grant> = snap
        .grants
        .iter()
        .filter_map(|g| {
            if g.from == grant.from && g.to == grant.to {
                reviewed.clone()
            } else {
                Some(g.clone())
            }
        })
        .collect();
    let verb = match req.action {
        ReviewAction::Extend => "extended",
        ReviewAction::Withdraw => "withdrawn",
    };
    let (_, mut ops) = policy_sets::record_active(
        app,
        &snap,
        grants,
        snap.policies.clone(),
        actor,
        format!("grant {} -> {} {verb} in review", grant.from, grant.to),
    )
    .await?;
    ops.insert(
        0,
        match &reviewed {
            Some(g) => Op::UpsertGrant(g.clone()),
            None => Op::DeleteGrant {
                from: grant.from.to_string(),
                to: grant.to.to_string(),
            },
        },
    );
    let note = format!(
        "{verb} by {} on {}: {reason}",
        actor.strip_prefix("console:").unwrap_or(actor),
        Date(time::OffsetDateTime::now_utc().date())
    );
    let managed = managed_file(app, &grant.source)?;
    let (change, written) = match &managed {
        Some(path) => {
            let old = std::fs::read_to_string(path).map_err(|e| file_error(path, &e))?;
            let new = edit(&old, &grant, req.action, req.review_by, &note).map_err(|message| {
                ReviewError::File {
                    path: path.display().to_string(),
                    message,
                }
            })?;
            write_file(path, &new)?;
            let diff = similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .context_radius(3)
                .header(&path.display().to_string(), &path.display().to_string())
                .to_string();
            (diff, Some((path.clone(), old)))
        }
        None => (describe(&grant, req.action, req.review_by, &note), None),
    };
    let event = AuditEvent {
        kind: AuditKind::GrantReviewed,
        actor: actor.to_owned(),
        subject: format!("{} -> {}", grant.from, grant.to),
        outcome: Outcome::Ok,
        detail: json!({
            "action": verb, "reason": reason, "source": grant.source,
            "review_by": req.review_by, "previous_review_by": grant.review_by,
            "file_written": written.is_some(),
        }),
    };
    if let Err(e) = app.change(&ops, event).await {
        // The store refused: the file goes back to what it said, so both agree.
        if let Some((path, old)) = &written {
            if let Err(e) = write_file(path, old) {
                tracing::error!(error = %e, "review: cannot restore the identity file");
            }
        }
        return Err(e.into());
    }
    Ok(GrantReviewed {
        source: grant.source.clone(),
        change,
        applied: written.is_some(),
    })
}

fn file_error(path: &Path, e: &std::io::Error) -> ReviewError {
    ReviewError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The grant's file, when it is inside the managed folder (after resolving links: a source
/// cannot point the server at a file elsewhere).
fn managed_file(app: &App, source: &str) -> Result<Option<PathBuf>, ReviewError> {
    let Some(dir) = &app.config.identity_dir else {
        return Ok(None);
    };
    let file = source.rsplit_once(':').map_or(source, |(f, _)| f);
    let dir = dir.canonicalize().map_err(|e| file_error(dir, &e))?;
    match Path::new(file).canonicalize() {
        Ok(p) if p.starts_with(&dir) && p.extension().is_some_and(|e| e == "toml") => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// Writes `text` to `path` by a temporary file renamed over it, keeping its permissions.
fn write_file(path: &Path, text: &str) -> Result<(), ReviewError> {
    let tmp = path.with_extension("toml.review");
    let perms = std::fs::metadata(path)
        .map_err(|e| file_error(path, &e))?
        .permissions();
    std::fs::write(&tmp, text).map_err(|e| file_error(&tmp, &e))?;
    std::fs::set_permissions(&tmp, perms).map_err(|e| file_error(&tmp, &e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, &e))
}

/// The file's text with the grant's review date changed (and the note beside it), or the grant
/// removed. Everything else, comments and layout included, stays as it was.
fn edit(
    text: &str,
    grant: &Grant,
    action: ReviewAction,
    review_by: Option<Date>,
    note: &str,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().to_owned())?;
    let grants = doc
        .get_mut("grant")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or("the file has no `[[grant]]` tables")?;
    let is_it = |t: &toml_edit::Table| {
        t.get("from").and_then(|v| v.as_str()) == Some(grant.from.as_str())
            && t.get("to").and_then(|v| v.as_str()) == Some(grant.to.as_str())
    };
    let index = grants
        .iter()
        .position(is_it)
        .ok_or("the grant is not in its file any more")?;
    match action {
        ReviewAction::Withdraw => {
            grants.remove(index);
        }
        ReviewAction::Extend => {
            let date = review_by.ok_or("no review date")?;
            let t = grants
                .get_mut(index)
                .ok_or("the grant is not in its file")?;
            let mut value = toml_edit::value(date.to_string());
            if let Some(v) = value.as_value_mut() {
                v.decor_mut().set_suffix(format!("  # {note}"));
            }
            t.insert("review_by", value);
        }
    }
    Ok(doc.to_string())
}

/// The change for the owner to make, when the server does not hold the file.
fn describe(grant: &Grant, action: ReviewAction, review_by: Option<Date>, note: &str) -> String {
    match (action, review_by) {
        (ReviewAction::Extend, Some(d)) => format!(
            "In {}, in the [[grant]] from \"{}\" to \"{}\", set:\n    review_by = \"{d}\"  # {note}\nthen `tessera apply` the file.",
            grant.source, grant.from, grant.to
        ),
        _ => format!(
            "In {}, remove the [[grant]] from \"{}\" to \"{}\" ({note}),\nthen `tessera apply --prune` the folder.",
            grant.source, grant.from, grant.to
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::SpiffeId;

    const FILE: &str = r#"# Team orders.
[[grant]]
from = "spiffe://example.org/a"
to = "spiffe://example.org/b"
why = "A reads B"
review_by = "2026-01-01" # first review

[[grant]]
from = "spiffe://example.org/a"
to = "spiffe://example.org/c"
why = "A writes C"
"#;

    fn grant(to: &str) -> Grant {
        Grant {
            from: SpiffeId::parse("spiffe://example.org/a").unwrap(),
            to: SpiffeId::parse(to).unwrap(),
            scopes: vec![],
            routes: vec![],
            why: String::new(),
            review_by: None,
            deployment: false,
            token_rate: None,
            call_rate: None,
            source: "f.toml:2".into(),
        }
    }

    #[test]
    fn extending_changes_one_line() {
        let d = Date::parse("2027-03-01").unwrap();
        let out = edit(
            FILE,
            &grant("spiffe://example.org/b"),
            ReviewAction::Extend,
            Some(d),
            "extended by alice: still used",
        )
        .unwrap();
        assert!(out.contains("review_by = \"2027-03-01\"  # extended by alice: still used"));
        assert!(out.starts_with("# Team orders.\n"), "{out}");
        assert_eq!(out.lines().count(), FILE.lines().count());
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(parsed["grant"][1].get("review_by"), None);
    }

    #[test]
    fn withdrawing_removes_the_grant_only() {
        let out = edit(
            FILE,
            &grant("spiffe://example.org/c"),
            ReviewAction::Withdraw,
            None,
            "n",
        )
        .unwrap();
        let parsed: toml::Value = toml::from_str(&out).unwrap();
        let grants = parsed["grant"].as_array().unwrap();
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0]["to"].as_str(), Some("spiffe://example.org/b"));
    }

    proptest::proptest! {
        /// Whatever a file holds, an edit is an error or TOML that still parses, with the
        /// other grant untouched.
        #[test]
        fn edits_never_break_a_file(junk in ".{0,200}", extend in proptest::bool::ANY) {
            let text = format!("{FILE}\n{junk}\n");
            let d = Date::parse("2027-03-01").ok();
            let action = if extend { ReviewAction::Extend } else { ReviewAction::Withdraw };
            if let Ok(out) = edit(&text, &grant("spiffe://example.org/b"), action, d, "note") {
                let parsed: toml::Value = toml::from_str(&out).unwrap();
                let grants = parsed["grant"].as_array().unwrap();
                proptest::prop_assert!(grants.iter().any(|g| g["to"].as_str() == Some("spiffe://example.org/c")));
            }
        }
    }

    #[test]
    fn a_grant_not_in_the_file_is_an_error() {
        assert!(edit(
            FILE,
            &grant("spiffe://example.org/z"),
            ReviewAction::Withdraw,
            None,
            "n"
        )
        .is_err());
        assert!(edit(
            "x = 1",
            &grant("spiffe://example.org/b"),
            ReviewAction::Withdraw,
            None,
            "n"
        )
        .is_err());
    }
}
