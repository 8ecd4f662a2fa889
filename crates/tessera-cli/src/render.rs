//! Human-readable output. `--output json` prints the API's JSON instead.

use serde_json::Value;
use tessera_core::admin_api::{
    AgentSummary, CaInfo, CaRotated, ClientSummary, FederationSummary, GrantSummary, KeyInfo,
    KeyRotated, KeyStatus, TrustSummary, WorkloadSummary,
};
use tessera_policy::Explanation;

/// Member `k` of a JSON view, `null` when missing (never a panic, whatever the server sent).
pub(crate) fn field<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or(&Value::Null)
}

/// Text from the server as a terminal may show it: control characters (newlines that would
/// forge a line, escape sequences that would rewrite the screen) written as escapes. Every
/// human renderer takes strings through here; `--output json` is escaped by JSON.
pub(crate) fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => clean(s),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn list(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), clean))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
}

/// A timestamp, or `-`.
pub(crate) fn at(t: Option<i64>) -> String {
    time(&t.map_or(Value::Null, Value::from))
}

fn or_dash(s: Option<&impl std::fmt::Display>) -> String {
    s.map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn joined<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "-".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn workloads(rows: &[WorkloadSummary]) -> String {
    let mut out = String::from("ID\tOWNER\tENVIRONMENT\tKIND\tREVOKED\n");
    for r in rows {
        let revoked = if r.revoked_at.is_some() { "yes" } else { "no" };
        let kind = serde_json::to_value(r.kind).unwrap_or_default();
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{revoked}\n",
            r.id,
            r.owner,
            or_dash(r.environment.as_ref()),
            kind.as_str().unwrap_or("-")
        ));
    }
    out
}

pub(crate) fn clients(rows: &[ClientSummary]) -> String {
    let mut out = String::from("ID\tWORKLOAD\tAUTH\tSECRET EXPIRES\n");
    for r in rows {
        let exp = if r.has_secret {
            at(r.secret_expires_at)
        } else {
            "no secret".into()
        };
        let auth = serde_json::to_value(r.auth).unwrap_or_default();
        out.push_str(&format!(
            "{}\t{}\t{}\t{exp}\n",
            r.id,
            r.workload,
            auth.as_str().unwrap_or("-")
        ));
    }
    out
}

pub(crate) fn grants(rows: &[GrantSummary]) -> String {
    let mut out = String::from("FROM\tTO\tSCOPES\tREVIEW BY\tWHY\n");
    for r in rows {
        let overdue = if r.overdue { " (OVERDUE)" } else { "" };
        let review_by = r
            .review_by
            .as_ref()
            .and_then(|d| serde_json::to_value(d).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{}\t{}\t{}\t{review_by}{overdue}\t{}\n",
            r.from,
            r.to,
            joined(&r.scopes),
            r.why
        ));
    }
    out
}

pub(crate) fn agents(rows: &[AgentSummary]) -> String {
    let mut out =
        String::from("ID\tTRUST DOMAIN\tJOINED\tSVID VALID UNTIL\tREVOKED\tATTESTED BY\n");
    for r in rows {
        let revoked = match r.revoked_at {
            Some(t) => at(Some(t)),
            None => "no".into(),
        };
        let by = if r.selectors.is_empty() {
            "join token".to_owned()
        } else {
            r.selectors.join(" ")
        };
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{revoked}\t{by}\n",
            r.id,
            r.trust_domain,
            at(Some(r.joined_at)),
            at(Some(r.svid_not_after))
        ));
    }
    out
}

pub(crate) fn trusts(rows: &[TrustSummary]) -> String {
    let mut out = String::from("NAME\tISSUER\tAUDIENCE\tMAPS TO\n");
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            r.name,
            r.issuer,
            r.audience,
            joined(&r.maps_to)
        ));
    }
    out
}

/// `tessera get federations`.
pub(crate) fn federations(rows: &[FederationSummary]) -> String {
    let mut out =
        String::from("TRUST DOMAIN\tPROFILE\tBUNDLE\tSEQUENCE\tLAST REFRESH\tCA EXPIRES\tSTATUS\n");
    for r in rows {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            r.trust_domain,
            r.profile,
            r.bundle,
            or_dash(r.spiffe_sequence.as_ref()),
            at(r.last_success),
            at(r.ca_expiries.iter().min().copied()),
            r.last_error
                .as_deref()
                .map_or("ok".to_owned(), |e| format!("failing: {e}")),
        ));
    }
    out
}

/// `tessera describe federation TD`.
pub(crate) fn describe_federation(f: &FederationSummary) -> String {
    let mut o = String::new();
    o.push_str(&format!("Federation:    {}\n", f.trust_domain));
    o.push_str(&format!(
        "Endpoint:      {} ({})\n",
        f.bundle_endpoint, f.profile
    ));
    if let Some(id) = &f.endpoint_spiffe_id {
        o.push_str(&format!("Endpoint ID:   {id}\n"));
    }
    if let Some(t) = &f.token_issuer {
        o.push_str(&format!("Token issuer:  {t} (identity chaining)\n"));
    }
    o.push_str(&format!("Defined at:    {}\n", f.source));
    o.push_str(&format!(
        "\nBundle:        {} (sequence {}, stored {})\n",
        f.bundle,
        or_dash(f.spiffe_sequence.as_ref()),
        at(f.fetched_at)
    ));
    for e in &f.ca_expiries {
        o.push_str(&format!("  X.509 authority, expires {}\n", at(Some(*e))));
    }
    o.push_str(&format!("  JWT keys: {}\n", f.jwt_keys));
    o.push_str(&format!(
        "\nRefresh:       last tried {}, last good {}, next {}\n",
        at(f.last_attempt),
        at(f.last_success),
        at(f.next_refresh)
    ));
    if let Some(e) = &f.last_error {
        o.push_str(&format!(
            "  failing: {e} (the last good bundle stays in force)\n"
        ));
    }
    o.push_str(&format!(
        "\nWorkloads that federate with it: {}\n",
        joined(&f.workloads)
    ));
    o
}

/// `tessera keys list`.
pub(crate) fn keys(rows: &[KeyInfo]) -> String {
    let mut o = String::from("TRUST DOMAIN\tKID\tALG\tSTATE\tSIGNS FROM\tWITHDRAWN AT\n");
    for k in rows {
        let state = serde_json::to_value(k.state).unwrap_or_default();
        o.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            k.trust_domain,
            k.kid,
            k.alg,
            state.as_str().unwrap_or("-"),
            at(Some(k.activate_at)),
            at(k.retire_at)
        ));
    }
    o
}

/// `tessera keys status`.
pub(crate) fn key_status(rows: &[KeyStatus]) -> String {
    let now = tessera_core::now_unix();
    let mut o = String::from("KIND\tTRUST DOMAIN\tID\tALG\tLOCATION\tAGE\tSTATE\tNEXT ROTATION\n");
    for k in rows {
        let age = k
            .created_at
            .map(|c| format!("{}d", (now - c).max(0) / 86400))
            .unwrap_or_else(|| "-".into());
        let next = match (k.next_rotation, &k.rotation) {
            (Some(t), _) => at(Some(t)),
            (None, Some(why)) => why.clone(),
            (None, None) => "-".into(),
        };
        o.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            k.kind,
            k.trust_domain.as_deref().unwrap_or("-"),
            clean(&k.id),
            k.alg,
            clean(&k.location),
            age,
            k.state,
            next
        ));
    }
    o
}

/// `tessera ca list`.
pub(crate) fn cas(rows: &[CaInfo]) -> String {
    let mut o = String::from("TRUST DOMAIN\tCA\tSTATE\tSIGNS FROM\tEXPIRES\n");
    for c in rows {
        let state = serde_json::to_value(c.state).unwrap_or_default();
        o.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\n",
            c.trust_domain,
            c.id,
            state.as_str().unwrap_or("-"),
            at(Some(c.activate_at)),
            at(Some(c.not_after)),
        ));
    }
    o
}

/// The result of `keys rotate`: per trust domain, the new key, published now, and when it
/// starts signing.
pub(crate) fn key_rotation(rows: &[KeyRotated]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{}: new key {} published now, signs from {}\n",
                r.trust_domain,
                r.kid,
                at(Some(r.activate_at))
            )
        })
        .collect()
}

/// The result of `ca rotate`: per trust domain, the new CA, in the bundle now, and when it
/// starts signing.
pub(crate) fn ca_rotation(rows: &[CaRotated]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{}: new CA {} in the bundle now, signs from {}\n",
                r.trust_domain,
                r.ca,
                at(Some(r.activate_at))
            )
        })
        .collect()
}

pub(crate) fn describe(w: &Value) -> String {
    let mut o = String::new();
    o.push_str(&format!("Workload:     {}\n", s(w, "id")));
    o.push_str(&format!("Owner:        {}\n", s(w, "owner")));
    o.push_str(&format!("Purpose:      {}\n", s(w, "purpose")));
    o.push_str(&format!("Environment:  {}\n", s(w, "environment")));
    o.push_str(&format!("Kind:         {}\n", s(w, "kind")));
    o.push_str(&format!("Defined at:   {}\n", s(w, "source")));
    o.push_str(&format!("Selectors:    {}\n", list(w, "selectors")));
    o.push_str(&format!("Aliases:      {}\n", list(w, "aliases")));
    o.push_str(&format!("Scopes:       {}\n", list(w, "scopes")));
    for j in w
        .get("jit")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        o.push_str(&format!(
            "  just in time: {} alone, at most {}{}{}\n",
            s(&j, "scope"),
            s(&j, "max_ttl"),
            j.get("hours")
                .and_then(Value::as_str)
                .map(|h| format!(", {h} UTC"))
                .unwrap_or_default(),
            j.get("environments")
                .map(|_| format!(", from {}", list(&j, "environments")))
                .unwrap_or_default()
        ));
    }
    o.push_str(&format!("Token TTL:    {}\n", s(w, "jwt_ttl")));
    if field(w, "federates_with")
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        o.push_str(&format!(
            "Federates:    {} (their bundles are handed to it)\n",
            list(w, "federates_with")
        ));
    }
    if w.get("revoked_at").is_some_and(|v| !v.is_null()) {
        o.push_str(&format!(
            "REVOKED:      {} (no new credentials)\n",
            time(field(w, "revoked_at"))
        ));
    }
    let grants = |title: &str, key: &str, arrow: &str, o: &mut String| {
        o.push_str(&format!("\n{title}:\n"));
        let rows = w
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if rows.is_empty() {
            o.push_str("  (none: deny by default)\n");
        }
        for g in rows {
            let overdue = if g.get("overdue") == Some(&Value::Bool(true)) {
                "  REVIEW OVERDUE"
            } else {
                ""
            };
            o.push_str(&format!(
                "  {arrow} {}  scopes: {}\n",
                s(&g, "workload"),
                list(&g, "scopes")
            ));
            o.push_str(&format!(
                "      why: {}\n      review by: {}{overdue}\n      granted at: {}\n",
                s(&g, "why"),
                s(&g, "review_by"),
                s(&g, "source")
            ));
            for (key, label) in [
                ("token_rate", "tokens at most"),
                ("call_rate", "calls at most"),
            ] {
                if let Some(r) = g.get(key).and_then(Value::as_str) {
                    o.push_str(&format!("      {label}: {r}\n"));
                }
            }
            if let Some(e) = g.get("effective").and_then(Value::as_str) {
                if e != "allowed" {
                    o.push_str(&format!(
                        "      IN EFFECT NOW (from an unknown address): denied, {e}\n"
                    ));
                }
            }
        }
    };
    grants("Can reach", "can_reach", "->", &mut o);
    grants("Reached by", "reached_by", "<-", &mut o);
    o.push_str("\nCredentials:\n");
    let clients = w
        .get("clients")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if clients.is_empty() {
        o.push_str("  no OAuth clients\n");
    }
    for c in clients {
        o.push_str(&format!("  client {} ({})\n", s(&c, "id"), s(&c, "auth")));
    }
    match w.get("last_issuance") {
        Some(Value::Object(l)) => o.push_str(&format!(
            "\nLast token:   {} for {} (jti {})\n",
            time(l.get("at").unwrap_or(&Value::Null)),
            l.get("detail").map(|d| s(d, "aud")).unwrap_or_default(),
            l.get("detail").map(|d| s(d, "jti")).unwrap_or_default()
        )),
        _ => o.push_str("\nLast token:   never\n"),
    }
    let svids = w
        .get("recent_x509_svids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if w.get("selectors")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        o.push_str(&format!(
            "\nAttested by:  {} (node agents: {})\n",
            list(w, "selectors"),
            if w.get("nodes")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                list(w, "nodes")
            } else {
                "any in its trust domain".to_owned()
            }
        ));
        if svids.is_empty() {
            o.push_str("X.509-SVIDs:  none issued yet\n");
        }
        for v in &svids {
            o.push_str(&format!(
                "X.509-SVID:   serial {} via agent {}, issued {}, valid until {}\n",
                s(v, "serial"),
                s(v, "agent_id"),
                time(field(v, "issued_at")),
                time(field(v, "not_after"))
            ));
        }
    }
    o.push_str("\nTo revoke:\n");
    for line in w
        .get("how_to_revoke")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        o.push_str(&format!("  {}\n", line.as_str().unwrap_or_default()));
    }
    o
}

pub(crate) fn audit(rows: &Value) -> String {
    let mut o = String::new();
    for r in rows.as_array().cloned().unwrap_or_default() {
        o.push_str(&format!(
            "#{} {} {} {} actor={} subject={} {}\n",
            s(&r, "seq"),
            time(field(&r, "at")),
            s(&r, "kind"),
            s(&r, "outcome"),
            s(&r, "actor"),
            s(&r, "subject"),
            s(&r, "detail")
        ));
    }
    o
}

pub(crate) fn describe_trust(t: &Value) -> String {
    let mut o = String::new();
    o.push_str(&format!("Trust:        {}\n", s(t, "name")));
    o.push_str(&format!("Issuer:       {}\n", s(t, "issuer")));
    o.push_str(&format!("Audience:     {}\n", s(t, "audience")));
    o.push_str(&format!("Algorithms:   {}\n", list(t, "algorithms")));
    o.push_str(&format!(
        "Max age:      {} s{}\n",
        field(t, "max_age_seconds"),
        if *field(t, "single_use") == Value::Bool(true) {
            "; single use"
        } else {
            ""
        }
    ));
    o.push_str(&format!("Defined at:   {}\n", s(t, "source")));
    let k = field(t, "keys");
    o.push_str(&format!("\nKeys ({}):\n", s(k, "source")));
    if let Some(age) = k.get("fetched_seconds_ago").filter(|v| !v.is_null()) {
        o.push_str(&format!("  fetched {age} s ago\n"));
    }
    for key in field(k, "keys").as_array().cloned().unwrap_or_default() {
        o.push_str(&format!("  {} ({})\n", s(&key, "kid"), s(&key, "alg")));
    }
    if let Some(e) = k.get("last_error").and_then(Value::as_str) {
        o.push_str(&format!("  last error: {e}\n"));
    }
    o.push_str("\nRules (first match wins):\n");
    for r in field(t, "rules").as_array().cloned().unwrap_or_default() {
        o.push_str(&format!(
            "  {}. {} -> {} ({})\n",
            field(&r, "rule"),
            field(&r, "claims"),
            s(&r, "workload"),
            s(&r, "kind")
        ));
    }
    o.push_str(&format!(
        "\nGlobs (`*`) allowed in: {}\n",
        list(t, "glob_claims")
    ));
    o
}

pub(crate) fn explanation(x: &Explanation) -> String {
    let allowed = x.decision.allowed;
    let mut o = format!(
        "{}\n{}\n",
        x.request,
        if allowed { "ALLOW" } else { "DENY" }
    );
    let by = &x.decision.determined_by;
    if !by.is_empty() {
        o.push_str(if allowed {
            "  permitted by:\n"
        } else {
            "  forbidden by:\n"
        });
        for b in by {
            o.push_str(&format!("    {b}\n"));
        }
    }
    for e in &x.decision.errors {
        o.push_str(&format!("  error (denies): {e}\n"));
    }
    let missing = &x.missing;
    if !missing.is_empty() {
        o.push_str("  to allow it:\n");
        for m in missing {
            o.push_str(&format!("    {m}\n"));
        }
    }
    o
}

/// `tessera advise`: each finding, its evidence and the narrower grant.
pub(crate) fn advice(a: &tessera_core::admin_api::Advice) -> String {
    let mut o = format!(
        "{} records read over {} days; {} findings\n",
        a.records_read,
        a.window_seconds / 86_400,
        a.findings.len()
    );
    for f in &a.findings {
        o.push_str(&format!("\n{}  {}", f.kind, clean(&f.subject)));
        if let Some(t) = &f.target {
            o.push_str(&format!(" -> {}", clean(t)));
        }
        o.push_str(&format!("\n  {}\n", clean(&f.summary)));
        for e in &f.evidence {
            o.push_str(&format!("  - {}\n", clean(e)));
        }
        if let Some(src) = &f.source {
            o.push_str(&format!("  from {}\n", clean(src)));
        }
        match f.suggestion.as_deref() {
            Some("") => o.push_str("  suggested: remove it\n"),
            Some(s) => {
                o.push_str("  suggested:\n");
                for line in s.lines() {
                    o.push_str(&format!("    {}\n", clean(line)));
                }
            }
            None => {}
        }
    }
    o
}

/// How one `tessera doctor` check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Warn,
    Fail,
}

/// One `tessera doctor` finding: what was checked, how it came out, and the runbook to follow.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<&'static str>,
}

pub(crate) fn findings(rows: &[Finding]) -> String {
    let mut out = String::new();
    for f in rows {
        let status = match f.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("{status}  {:<18} {}", f.check, clean(&f.detail)));
        if let (Some(r), false) = (f.runbook, f.status == Status::Ok) {
            out.push_str(&format!("\n      runbook: {r}"));
        }
        out.push('\n');
    }
    let failed = rows.iter().filter(|f| f.status == Status::Fail).count();
    let warned = rows.iter().filter(|f| f.status == Status::Warn).count();
    out.push_str(&format!(
        "\n{} checks: {failed} failed, {warned} warnings\n",
        rows.len()
    ));
    out
}

/// `tessera agent attest`: the selectors, then what they match and nearly match.
pub(crate) fn attest_report(v: &tessera_agent::admin::AttestReport) -> String {
    let mut out = format!("process {}\n\nselectors:\n", v.pid);
    for s in &v.selectors {
        out.push_str(&format!("  {s}\n"));
    }
    if let Some(why) = &v.refused {
        out.push_str(&format!(
            "\nrefused: {why}\n(the Workload API gives this process nothing)\n"
        ));
    }
    out.push_str("\nmatches:\n");
    if v.matches.is_empty() {
        out.push_str("  (none)\n");
    }
    for m in &v.matches {
        out.push_str(&format!("  {m}\n"));
    }
    if !v.near.is_empty() {
        out.push_str("\nnearly (selectors missing):\n");
        for n in &v.near {
            out.push_str(&format!("  {}: {}\n", n.spiffe_id, n.missing.join(", ")));
        }
    }
    out
}
