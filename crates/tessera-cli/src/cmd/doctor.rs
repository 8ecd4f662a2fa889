//! `tessera doctor`: a deployment checked from the outside, the way an on-call engineer would
//! start (seed 003's incident checklist): can the authority be reached, do the clocks agree,
//! what expires next, are the bundles held here current, are agents and sidecars hearing the
//! authority. Every finding names the runbook that applies.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde_json::Value;

use crate::cli::DoctorArgs;
use crate::render::{self, Finding, Status};
use crate::support::{parse_duration, print_as};

const AUTHORITY_OUTAGE: &str = "docs/runbooks/authority-outage.md";
const MASS_401S: &str = "docs/runbooks/mass-401s.md";
const CERT_EXPIRY: &str = "docs/runbooks/certificate-expiry.md";
const REVOCATION: &str = "docs/runbooks/revoke-compromised-workload.md";
const POLICY: &str = "docs/runbooks/policy-rollback.md";

const HOUR: i64 = 3600;

pub(crate) async fn run(a: DoctorArgs) -> anyhow::Result<u8> {
    let max_skew = parse_duration(&a.max_skew)?;
    let http = client(a.ca_file.as_deref())?;
    let base = a.server.trim_end_matches('/').to_owned();
    let now = tessera_core::now_unix();
    let mut out = Vec::new();
    let reachable = authority(&http, &base, max_skew, &mut out).await;
    let mut served = Vec::new();
    if reachable {
        let tds = if a.trust_domains.is_empty() {
            vec![None]
        } else {
            a.trust_domains.iter().map(|t| Some(t.as_str())).collect()
        };
        for td in tds {
            served.extend(served_bundle(&http, &base, td, now, &mut out).await);
        }
    }
    for file in &a.bundles {
        out.push(local_bundle(file, &served, now));
    }
    for url in &a.metrics {
        out.extend(metrics(&http, url, now).await);
    }
    let failed = out.iter().any(|f| f.status == Status::Fail);
    print_as(a.output, &out, || render::findings(&out));
    Ok(u8::from(failed))
}

fn client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(p) = ca {
        let pem = std::fs::read(p).with_context(|| format!("cannot read `{}`", p.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow!("`{}` holds no PEM certificate: {e}", p.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b.build()?)
}

fn finding(
    check: &'static str,
    status: Status,
    detail: String,
    runbook: Option<&'static str>,
) -> Finding {
    Finding {
        check,
        status,
        detail,
        runbook,
    }
}

/// `/readyz`, and the clock of its `Date` header against this host's (taken halfway through the
/// round trip; the header counts whole seconds, so one more second is tolerated).
async fn authority(
    http: &reqwest::Client,
    base: &str,
    max_skew: Duration,
    out: &mut Vec<Finding>,
) -> bool {
    let sent = SystemTime::now();
    let res = match http.get(format!("{base}/readyz")).send().await {
        Ok(r) => r,
        Err(e) => {
            out.push(finding(
                "reachable",
                Status::Fail,
                format!("`{base}` cannot be reached: {e}"),
                Some(AUTHORITY_OUTAGE),
            ));
            return false;
        }
    };
    let took = sent.elapsed().unwrap_or_default();
    let midpoint = sent + took / 2;
    let status = res.status();
    out.push(if status.is_success() {
        finding(
            "reachable",
            Status::Ok,
            format!("`{base}/readyz` answered in {} ms", took.as_millis()),
            None,
        )
    } else {
        finding(
            "reachable",
            Status::Fail,
            format!("`{base}/readyz` answered {status}: the authority is not ready"),
            Some(AUTHORITY_OUTAGE),
        )
    });
    let date = res
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let Some(date) = date else {
        out.push(finding(
            "clock skew",
            Status::Warn,
            "the authority sent no `Date` header to compare clocks with".into(),
            None,
        ));
        return true;
    };
    let (ahead, skew) = match date.duration_since(midpoint) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let tolerated = max_skew + Duration::from_secs(1);
    out.push(if skew <= tolerated {
        finding(
            "clock skew",
            Status::Ok,
            format!("within {} s of this host", skew.as_secs()),
            None,
        )
    } else {
        finding(
            "clock skew",
            Status::Fail,
            format!(
                "the authority's clock is {} s {} this host's (tolerated: {} s): tokens look {} here",
                skew.as_secs(),
                if ahead { "ahead of" } else { "behind" },
                max_skew.as_secs(),
                if ahead { "not yet valid" } else { "older than they are" },
            ),
            Some(MASS_401S),
        )
    });
    true
}

/// A trust domain's bundle as the authority serves it now (`td`, or the one the base URL issues
/// for): its CA certificates' expiry. Returns the certificates (DER), for comparing bundles held
/// elsewhere.
async fn served_bundle(
    http: &reqwest::Client,
    base: &str,
    td: Option<&str>,
    now: i64,
    out: &mut Vec<Finding>,
) -> Vec<Vec<u8>> {
    let fetched = async {
        let td = match td {
            Some(td) => tessera_core::TrustDomain::parse(td)
                .map_err(|e| anyhow!("--trust-domain `{td}`: {e}"))?
                .to_string(),
            None => {
                let meta: Value = http
                    .get(format!("{base}/.well-known/oauth-authorization-server"))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                meta.get("tessera_trust_domain")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("its metadata names no trust domain"))?
                    .to_owned()
            }
        };
        let bundle: Value = http
            .get(format!("{base}/bundle/{td}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok((td, bundle))
    };
    let (td, bundle) = match fetched.await {
        Ok(v) => v,
        Err(e) => {
            out.push(finding(
                "served bundle",
                Status::Fail,
                format!("the authority's trust bundle cannot be read: {e:#}"),
                Some(AUTHORITY_OUTAGE),
            ));
            return Vec::new();
        }
    };
    let certs = bundle_certificates(&bundle);
    out.push(expiry(
        "served bundle",
        &format!("the bundle of `{td}`"),
        &certs,
        now,
    ));
    certs
}

/// The soonest expiry among `certs`, against seed 004's 72/24/6-hour marks.
fn expiry(check: &'static str, what: &str, certs: &[Vec<u8>], now: i64) -> Finding {
    let soonest = certs
        .iter()
        .filter_map(|c| tessera_ca::validity(c))
        .map(|(_, not_after)| not_after)
        .min();
    let Some(not_after) = soonest else {
        return finding(
            check,
            Status::Fail,
            format!("{what} holds no readable CA certificate"),
            Some(CERT_EXPIRY),
        );
    };
    let left = not_after - now;
    let when = render::at(Some(not_after));
    if left <= 0 {
        finding(
            check,
            Status::Fail,
            format!("{what} holds a CA certificate that expired at {when}"),
            Some(CERT_EXPIRY),
        )
    } else if left < 24 * HOUR {
        finding(
            check,
            Status::Fail,
            format!("{what}: a CA certificate expires at {when}, within 24 hours"),
            Some(CERT_EXPIRY),
        )
    } else if left < 72 * HOUR {
        finding(
            check,
            Status::Warn,
            format!("{what}: a CA certificate expires at {when}, within 72 hours"),
            Some(CERT_EXPIRY),
        )
    } else {
        finding(
            check,
            Status::Ok,
            format!("{what}: the first CA certificate expires at {when}"),
            None,
        )
    }
}

/// DER certificates of a SPIFFE bundle's X.509 authorities (`use: x509-svid`, `x5c`).
fn bundle_certificates(bundle: &Value) -> Vec<Vec<u8>> {
    bundle
        .get("keys")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|k| k.get("use").and_then(Value::as_str) == Some("x509-svid"))
        .filter_map(|k| k.get("x5c").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|c| STANDARD.decode(c).ok())
        .collect()
}

/// A bundle held on this host (PEM, or a SPIFFE bundle in JSON): expired, or stale against the
/// authority's (it trusts none of the CAs the authority publishes now).
fn local_bundle(file: &Path, served: &[Vec<u8>], now: i64) -> Finding {
    let name = file.display().to_string();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            return finding(
                "local bundle",
                Status::Fail,
                format!("`{name}` cannot be read: {e}"),
                None,
            )
        }
    };
    let certs: Vec<Vec<u8>> = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => bundle_certificates(&v),
        Err(_) => CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .map(|c| c.to_vec())
            .collect(),
    };
    let checked = expiry("local bundle", &format!("`{name}`"), &certs, now);
    if checked.status != Status::Ok || served.is_empty() {
        return checked;
    }
    if !certs.iter().any(|c| served.contains(c)) {
        return finding(
            "local bundle",
            Status::Fail,
            format!("`{name}` trusts none of the CAs the authority publishes now: it is stale"),
            Some(CERT_EXPIRY),
        );
    }
    if served.iter().any(|c| !certs.contains(c)) {
        return finding(
            "local bundle",
            Status::Warn,
            format!("`{name}` lacks a CA the authority publishes (a rotation is under way): refresh it before that CA signs"),
            Some(CERT_EXPIRY),
        );
    }
    checked
}

/// One sample per metric name (the first; these are unlabelled gauges) from a Prometheus text
/// exposition.
fn samples(text: &str) -> Vec<(&str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let name = l.split(['{', ' ']).next()?;
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((name, value))
        })
        .collect()
}

/// The `version` label of `tessera_policy_bundle_info`.
fn bundle_version(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.strip_prefix("tessera_policy_bundle_info{version=\""))
        .and_then(|rest| rest.split('"').next())
}

/// What an agent's or sidecar's metrics say about its link to the authority and what it holds.
async fn metrics(http: &reqwest::Client, url: &str, now: i64) -> Vec<Finding> {
    let text = match http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => {
            return vec![finding(
                "metrics",
                Status::Fail,
                format!("`{url}` cannot be read: {e}"),
                None,
            )]
        }
    };
    let all = samples(&text);
    let get = |name: &str| all.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let mut out = Vec::new();
    #[expect(
        clippy::cast_possible_truncation,
        reason = "gauges of whole seconds, far inside i64"
    )]
    let secs = |v: f64| v as i64;
    if let (Some(fresh), Some(stale)) = (
        get("tessera_change_feed_fresh"),
        get("tessera_change_feed_staleness_seconds"),
    ) {
        out.push(if fresh > 0.0 && stale <= 30.0 {
            finding(
                "revocations",
                Status::Ok,
                format!("`{url}`: the change stream was heard {} s ago", secs(stale)),
                None,
            )
        } else {
            finding(
                "revocations",
                Status::Fail,
                format!("`{url}`: the change stream has not been heard for {} s: revocations do not reach it", secs(stale)),
                Some(REVOCATION),
            )
        });
    }
    if let Some(at) = get("tessera_policy_bundle_synced_timestamp_seconds") {
        let age = now - secs(at);
        let version = bundle_version(&text).unwrap_or("none");
        out.push(if at > 0.0 && age <= 120 {
            finding(
                "policy bundle",
                Status::Ok,
                format!("`{url}`: version `{version}`, confirmed current {age} s ago"),
                None,
            )
        } else {
            finding(
                "policy bundle",
                Status::Warn,
                format!("`{url}`: its policy bundle (version `{version}`) has not been confirmed current for {age} s"),
                Some(POLICY),
            )
        });
    }
    if let Some(age) = get("tessera_agent_sync_age_seconds") {
        out.push(if age <= 120.0 {
            finding(
                "agent sync",
                Status::Ok,
                format!("`{url}`: synced {} s ago", secs(age)),
                None,
            )
        } else {
            finding(
                "agent sync",
                Status::Fail,
                format!(
                    "`{url}`: the agent has not synced with the authority for {} s",
                    secs(age)
                ),
                Some(AUTHORITY_OUTAGE),
            )
        });
    }
    let held = get("tessera_agent_svids").unwrap_or(1.0) > 0.0;
    for name in [
        "tessera_agent_svid_expiry_seconds",
        "tessera_proxy_svid_expiry_seconds",
    ] {
        if let (Some(left), true) = (get(name), held) {
            out.push(if left >= 600.0 {
                finding(
                    "svid expiry",
                    Status::Ok,
                    format!("`{url}`: the first SVID expires in {} s", secs(left)),
                    None,
                )
            } else {
                finding(
                    "svid expiry",
                    Status::Fail,
                    format!(
                        "`{url}`: an SVID expires in {} s and has not been renewed",
                        secs(left)
                    ),
                    Some(CERT_EXPIRY),
                )
            });
        }
    }
    if out.is_empty() {
        out.push(finding(
            "metrics",
            Status::Warn,
            format!("`{url}` shows none of the metrics of a Tessera agent or sidecar"),
            None,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::samples;

    #[test]
    fn the_bundle_version_is_read_from_its_label() {
        let text = "tessera_policy_bundle_info{version=\"9f2c\"} 1\n";
        assert_eq!(super::bundle_version(text), Some("9f2c"));
        assert_eq!(super::bundle_version("x 1\n"), None);
    }

    #[test]
    fn samples_are_read_by_name_with_or_without_labels() {
        let text = "# HELP x y\n# TYPE x gauge\nx 3\nz{a=\"b c\"} 4.5\n# EOF\n";
        assert_eq!(samples(text), vec![("x", 3.0), ("z", 4.5)]);
    }
}
