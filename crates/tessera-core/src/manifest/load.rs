//! Reading identity files: a file or a folder of `.toml` files, each parsed strictly into the
//! model with `file:line:column` errors, then checked as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::doc::*;
use super::model::*;
use super::values::*;
use super::*;

/// Reads one identity file, or every `*.toml` in a folder (in name order), into one state.
pub fn load(path: &Path) -> Result<DesiredState, ManifestError> {
    let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(path).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ManifestError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ManifestError::File {
                path: path.display().to_string(),
                message: "the folder holds no `.toml` identity files".into(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut state = DesiredState::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.display().to_string(),
            source,
        })?;
        parse_into(&mut state, &file, &text)?;
    }
    check_duplicates(&state)?;
    Ok(state)
}

/// Parses one file's text. `file` names it in errors and anchors relative paths.
pub fn parse_str(file: &Path, text: &str) -> Result<DesiredState, ManifestError> {
    let mut state = DesiredState::default();
    parse_into(&mut state, file, text)?;
    check_duplicates(&state)?;
    Ok(state)
}

struct Locator<'a> {
    path: String,
    text: &'a str,
    /// Byte offset at which each line starts, so that locating a span is a binary search and a
    /// file of 10,000 workloads is not rescanned from the top for each one.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    fn new(path: String, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            path,
            text,
            line_starts,
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // INVARIANT: line_starts[0] == 0 <= offset, so the partition point is at least 1.
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self
            .line_starts
            .get(line.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(0, |l| l.chars().count())
            + 1;
        (line, column)
    }

    fn at(&self, span: Range<usize>, message: impl Into<String>) -> ManifestError {
        let (line, column) = self.line_col(span.start);
        ManifestError::At {
            path: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    fn source(&self, span: Range<usize>) -> String {
        format!("{}:{}", self.path, self.line_col(span.start).0)
    }
}

fn parse_into(state: &mut DesiredState, file: &Path, text: &str) -> Result<(), ManifestError> {
    let loc = Locator::new(file.display().to_string(), text);
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        loc.at(span, e.message().trim_end().replace('\n', "; "))
    })?;
    let base = file.parent().unwrap_or(Path::new("."));

    for w in doc.workload {
        let span = w.span();
        let w = w.into_inner();
        let ttl = |t: Option<Spanned<Ttl>>, default: Duration, max: Duration, name: &str| {
            let Some(t) = t else {
                return Ok(Ttl(default));
            };
            let span = t.span();
            let t = t.into_inner();
            if t.0 < MIN_TTL || t.0 > max {
                return Err(loc.at(
                    span,
                    format!(
                        "`{name}` must be between {} and {}",
                        humantime::format_duration(MIN_TTL),
                        humantime::format_duration(max)
                    ),
                ));
            }
            Ok(t)
        };
        let jwt_ttl = ttl(w.jwt_ttl, DEFAULT_JWT_TTL, MAX_JWT_TTL, "jwt_ttl")?;
        let x509_ttl = ttl(w.x509_ttl, DEFAULT_X509_TTL, MAX_X509_TTL, "x509_ttl")?;
        if let Some(s) = w.selectors.iter().find(|s| !s.kind().for_workloads()) {
            return Err(loc.at(
                span,
                format!("`{s}` describes a node agent, not a process: put it in `node_selectors`"),
            ));
        }
        if let Some(s) = w.node_selectors.iter().find(|s| !s.kind().for_agents()) {
            return Err(loc.at(
                span,
                format!("`{s}` is not a node selector (known: k8s:cluster, k8s:agent_ns, k8s:agent_sa, k8s:node_name)"),
            ));
        }
        let mut scopes = w.scopes;
        scopes.sort();
        scopes.dedup();
        let mut jit = Vec::new();
        for j in w.jit {
            let jspan = j.span();
            let j = j.into_inner();
            if !scopes.contains(&j.scope) {
                return Err(loc.at(
                    jspan,
                    format!(
                        "jit scope `{}` is not one of this workload's `scopes`",
                        j.scope
                    ),
                ));
            }
            if j.max_ttl.0 < MIN_TTL || j.max_ttl.0 > jwt_ttl.0 {
                return Err(loc.at(
                    jspan,
                    format!(
                        "jit scope `{}`: `max_ttl` must be between {} and the workload's `jwt_ttl` ({})",
                        j.scope,
                        humantime::format_duration(MIN_TTL),
                        humantime::format_duration(jwt_ttl.0)
                    ),
                ));
            }
            if jit.iter().any(|x: &JitScope| x.scope == j.scope) {
                return Err(loc.at(jspan, format!("jit scope `{}` is declared twice", j.scope)));
            }
            jit.push(j);
        }
        state.workloads.push(Workload {
            id: w.id.into_inner(),
            owner: w.owner,
            purpose: w.purpose,
            environment: w.environment,
            tags: w.tags,
            selectors: w.selectors,
            jwt_ttl,
            x509_ttl,
            aliases: w.aliases,
            scopes,
            kind: w.kind,
            nodes: w.nodes,
            node_selectors: w.node_selectors,
            jit,
            federates_with: {
                let mut f = w.federates_with;
                f.sort();
                f.dedup();
                f
            },
            source: loc.source(span),
        });
    }
    for g in doc.grant {
        let span = g.span();
        let g = g.into_inner();
        if g.why.get_ref().trim().is_empty() {
            return Err(loc.at(g.why.span(), "`why` must say why this trust exists"));
        }
        for r in &g.routes {
            for m in &r.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(loc.at(
                        span,
                        format!("`{m}` is not an HTTP method (write it in capitals, e.g. `GET`)"),
                    ));
                }
            }
            for p in &r.paths {
                if !p.starts_with('/') {
                    return Err(loc.at(span, format!("route path `{p}` must start with `/`")));
                }
                // INVARIANT: route paths become Cedar string literals; these characters are the
                // ones that could end or escape one.
                if p.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
                    return Err(loc.at(
                        span,
                        format!(
                            "route path `{}` holds a quote, a backslash or a control character",
                            p.escape_debug()
                        ),
                    ));
                }
            }
        }
        state.grants.push(Grant {
            from: g.from,
            to: g.to,
            scopes: g.scopes,
            routes: g.routes,
            why: g.why.into_inner(),
            review_by: g.review_by,
            deployment: g.deployment,
            token_rate: g.token_rate,
            call_rate: g.call_rate,
            source: loc.source(span),
        });
    }
    for c in doc.client {
        let span = c.span();
        let c = c.into_inner();
        // The audit trail names an outside issuer's trust `trust:NAME`: a client may not
        // take a name that reads as one.
        if c.id.as_str().to_ascii_lowercase().starts_with("trust:") {
            return Err(loc.at(
                span,
                format!(
                    "client id `{}`: the `trust:` prefix is reserved for trusts",
                    c.id.as_str()
                ),
            ));
        }
        let jwks = match (&c.auth, c.jwks_file) {
            (ClientAuth::PrivateKeyJwt, None) => {
                return Err(loc.at(span, "a `private_key_jwt` client needs `jwks_file`"));
            }
            (ClientAuth::ClientSecret, Some(f)) => {
                return Err(loc.at(
                    f.span(),
                    "`jwks_file` is only for `private_key_jwt` clients",
                ));
            }
            (_, Some(f)) => Some(read_relative(&loc, base, &f)?),
            (_, None) => None,
        };
        state.clients.push(Client {
            id: c.id,
            workload: c.workload,
            auth: c.auth,
            jwks,
            secret_ttl: c.secret_ttl,
            source: loc.source(span),
        });
    }
    for t in doc.trust {
        let span = t.span();
        let t = t.into_inner();
        let jwks = t
            .jwks_file
            .as_ref()
            .map(|f| read_relative(&loc, base, f))
            .transpose()?;
        if !(t.issuer.starts_with("https://") || t.issuer.starts_with("http://")) {
            return Err(loc.at(span, format!("trust issuer `{}` must be a URL", t.issuer)));
        }
        state.trusts.push(Trust {
            name: t.name,
            issuer: t.issuer,
            jwks,
            audience: t.audience,
            algorithms: t.algorithms,
            max_age: t.max_age,
            single_use: t.single_use,
            private_network: t.private_network,
            map: t.map,
            source: loc.source(span),
        });
    }
    for f in doc.federation {
        let span = f.span();
        let f = f.into_inner();
        state.federations.push(federation(&loc, base, span, f)?);
    }
    for c in doc.cluster {
        let span = c.span();
        let c = c.into_inner();
        state.clusters.push(cluster(&loc, base, span, c)?);
    }
    if !doc.secret_grant.is_empty() {
        let mut text = String::new();
        for g in doc.secret_grant {
            let span = g.span();
            let g = g.into_inner();
            if g.why.get_ref().trim().is_empty() {
                return Err(loc.at(g.why.span(), "`why` must say why this access exists"));
            }
            if g.secrets.is_empty() {
                return Err(loc.at(span, "`secrets` names no secret"));
            }
            // INVARIANT: SPIFFE IDs and secret patterns hold no `"` or `\` (their parsers refuse
            // them), and the comment loses line breaks, so nothing here changes the policy's
            // structure.
            let why: String = g
                .why
                .get_ref()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let review = g
                .review_by
                .map_or_else(String::new, |d| format!("; review by {d}"));
            let actions = match g.access {
                SecretAccess::Read => "[Action::\"read_secret\", Action::\"describe_secret\"]",
                SecretAccess::Metadata => "[Action::\"describe_secret\"]",
            };
            let names: Vec<String> = g
                .secrets
                .iter()
                .map(|p| match p.prefix() {
                    Some(prefix) => format!("resource.name like \"{prefix}*\""),
                    None => format!("resource.name == \"{}\"", p.as_str()),
                })
                .collect();
            text.push_str(&format!(
                "// secret_grant at {}: {why}{review}\npermit (principal == Workload::\"{}\", action in {actions}, resource)\nwhen {{ {} }};\n\n",
                loc.source(span),
                g.from,
                names.join(" || ")
            ));
        }
        state.policies.push(PolicyFile {
            name: format!("secret grants of {}", loc.path),
            text,
        });
    }
    if let Some(p) = doc.policies {
        for pattern in p.files {
            let found =
                glob_files(base, pattern.get_ref()).map_err(|m| loc.at(pattern.span(), m))?;
            if found.is_empty() {
                return Err(loc.at(
                    pattern.span(),
                    format!("no policy file matches `{}`", pattern.get_ref()),
                ));
            }
            for (name, path) in found {
                let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                state.policies.push(PolicyFile { name, text });
            }
        }
    }
    Ok(())
}

/// One `[[cluster]]`: an https issuer (http only on loopback, for tests and `--dev`), at least
/// one service account.
fn cluster(
    loc: &Locator<'_>,
    base: &Path,
    span: Range<usize>,
    c: ClusterDoc,
) -> Result<Cluster, ManifestError> {
    // The server checks the rest at apply (https, or http on loopback with `--dev`).
    let issuer = c.issuer.get_ref();
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(loc.at(
            c.issuer.span(),
            format!(
                "cluster `{}`: `issuer` `{issuer}` must be an https:// URL",
                c.name
            ),
        ));
    }
    if c.service_accounts.is_empty() {
        return Err(loc.at(
            span,
            format!("cluster `{}`: `service_accounts` names no `namespace:name` allowed to attest agents", c.name),
        ));
    }
    let mut service_accounts = Vec::new();
    for sa in &c.service_accounts {
        let parsed = ServiceAccount::parse(sa.get_ref()).ok_or_else(|| {
            loc.at(
                sa.span(),
                format!(
                    "`{}` is not a service account as `namespace:name`",
                    sa.get_ref()
                ),
            )
        })?;
        service_accounts.push(parsed);
    }
    let jwks = c
        .jwks_file
        .as_ref()
        .map(|f| read_relative(loc, base, f))
        .transpose()?;
    let token_review = match c.token_review {
        None => None,
        Some(t) => {
            let tspan = t.span();
            let t = t.into_inner();
            if !t.url.starts_with("https://") && !t.url.starts_with("http://") {
                return Err(loc.at(
                    tspan,
                    format!(
                        "cluster `{}`: `token_review.url` `{}` must be an https:// URL",
                        c.name, t.url
                    ),
                ));
            }
            if !t.token_file.starts_with('/') {
                return Err(loc.at(tspan, format!("cluster `{}`: `token_review.token_file` must be an absolute path on the authority's host (it is read there, at each review)", c.name)));
            }
            let ca = t
                .ca_file
                .as_ref()
                .map(|f| read_relative(loc, base, f))
                .transpose()?;
            Some(TokenReview {
                url: t.url,
                ca,
                token_file: t.token_file,
            })
        }
    };
    Ok(Cluster {
        name: c.name,
        trust_domain: c.trust_domain,
        issuer: c.issuer.into_inner(),
        jwks,
        private_network: c.private_network,
        service_accounts,
        token_review,
        source: loc.source(span),
    })
}

/// One `[[federation]]`: its endpoint a URL, the profile's own fields present and the other's
/// absent, its files read and the initial bundle parsed (so a bad file fails here, at its line).
fn federation(
    loc: &Locator<'_>,
    base: &Path,
    span: Range<usize>,
    f: FederationDoc,
) -> Result<Federation, ManifestError> {
    let endpoint = f.bundle_endpoint.get_ref();
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(loc.at(
            f.bundle_endpoint.span(),
            format!("`bundle_endpoint` `{endpoint}` must be an https:// URL"),
        ));
    }
    let td = &f.trust_domain;
    let (initial_bundle, ca) = match f.profile {
        BundleProfile::HttpsSpiffe => {
            if f.ca_file.is_some() {
                return Err(loc.at(span, "`ca_file` is for the `https_web` profile only"));
            }
            let Some(id) = &f.endpoint_spiffe_id else {
                return Err(loc.at(span, format!("federation with `{td}`: the `https_spiffe` profile needs `endpoint_spiffe_id`")));
            };
            let Some(file) = &f.initial_bundle else {
                return Err(loc.at(span, format!("federation with `{td}`: the `https_spiffe` profile needs `initial_bundle` (the bundle that authenticates `{id}` the first time)")));
            };
            let text = read_relative(loc, base, file)?;
            crate::bundle::SpiffeBundle::parse(text.as_bytes()).map_err(|e| {
                loc.at(
                    file.span(),
                    format!("`{}` is not a SPIFFE bundle: {e}", file.get_ref()),
                )
            })?;
            (Some(text), None)
        }
        BundleProfile::HttpsWeb => {
            if f.endpoint_spiffe_id.is_some() || f.initial_bundle.is_some() {
                return Err(loc.at(span, "`endpoint_spiffe_id` and `initial_bundle` are for the `https_spiffe` profile only"));
            }
            let ca = f
                .ca_file
                .as_ref()
                .map(|c| read_relative(loc, base, c))
                .transpose()?;
            (None, ca)
        }
    };
    let token_issuer = match f.token_issuer {
        Some(t) if !(t.get_ref().starts_with("https://") || t.get_ref().starts_with("http://")) => {
            return Err(loc.at(
                t.span(),
                format!("`token_issuer` `{}` must be a URL", t.get_ref()),
            ))
        }
        t => t.map(Spanned::into_inner),
    };
    Ok(Federation {
        trust_domain: f.trust_domain,
        bundle_endpoint: f.bundle_endpoint.into_inner(),
        profile: f.profile,
        endpoint_spiffe_id: f.endpoint_spiffe_id,
        initial_bundle,
        ca,
        token_issuer,
        source: loc.source(span),
    })
}

fn read_relative(
    loc: &Locator<'_>,
    base: &Path,
    f: &Spanned<String>,
) -> Result<String, ManifestError> {
    let p = base.join(f.get_ref());
    std::fs::read_to_string(&p)
        .map_err(|e| loc.at(f.span(), format!("cannot read `{}`: {e}", p.display())))
}

/// Expands `dir/*.cedar`-style patterns: `*` may appear in the last component only.
fn glob_files(base: &Path, pattern: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let rel = Path::new(pattern);
    let (dir, name) = match (rel.parent(), rel.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(format!("`{pattern}` is not a file pattern")),
    };
    if dir.to_string_lossy().contains('*') {
        return Err(format!("`{pattern}`: `*` is allowed in the file name only"));
    }
    let full_dir = base.join(dir);
    if !name.contains('*') {
        let p = full_dir.join(name);
        return Ok(if p.is_file() {
            vec![(pattern.to_owned(), p)]
        } else {
            vec![]
        });
    }
    let entries = std::fs::read_dir(&full_dir)
        .map_err(|e| format!("cannot read folder `{}`: {e}", full_dir.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if crate::glob::matches(name, file_name) && entry.path().is_file() {
            out.push((dir.join(file_name).display().to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses two definitions of the same thing across the files being applied.
fn check_duplicates(state: &DesiredState) -> Result<(), ManifestError> {
    let dup = |source: &str, message: String| ManifestError::File {
        path: source.to_owned(),
        message,
    };
    let mut ids = BTreeMap::new();
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for w in &state.workloads {
        if let Some(prev) = ids.insert(w.id.as_str(), w.source.as_str()) {
            return Err(dup(
                &w.source,
                format!("workload `{}` is defined twice (also at {prev})", w.id),
            ));
        }
    }
    for w in &state.workloads {
        for a in &w.aliases {
            if ids.contains_key(a.as_str()) || names.insert(a.as_str(), w.source.as_str()).is_some()
            {
                return Err(dup(
                    &w.source,
                    format!("alias `{a}` names more than one workload"),
                ));
            }
        }
    }
    let mut pairs = BTreeSet::new();
    for g in &state.grants {
        if !pairs.insert((g.from.as_str(), g.to.as_str())) {
            return Err(dup(
                &g.source,
                format!(
                    "a second grant from `{}` to `{}`: merge them into one",
                    g.from, g.to
                ),
            ));
        }
    }
    let mut clients = BTreeSet::new();
    for c in &state.clients {
        if !clients.insert(c.id.as_str()) {
            return Err(dup(
                &c.source,
                format!("client `{}` is defined twice", c.id),
            ));
        }
    }
    let mut federated = BTreeSet::new();
    for f in &state.federations {
        if !federated.insert(f.trust_domain.as_str()) {
            return Err(dup(
                &f.source,
                format!("a second federation with `{}`", f.trust_domain),
            ));
        }
    }
    let mut clusters = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for c in &state.clusters {
        if !clusters.insert(c.name.as_str()) {
            return Err(dup(
                &c.source,
                format!("cluster `{}` is defined twice", c.name),
            ));
        }
        // A token is matched to its cluster by its issuer: two clusters cannot share one.
        if !issuers.insert(c.issuer.as_str()) {
            return Err(dup(
                &c.source,
                format!("a second cluster with issuer `{}`", c.issuer),
            ));
        }
    }
    let mut trusts = BTreeSet::new();
    for t in &state.trusts {
        if !trusts.insert(t.name.as_str()) {
            return Err(dup(
                &t.source,
                format!("trust `{}` is defined twice", t.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DesiredState, ManifestError> {
        parse_str(Path::new("mesh.toml"), text)
    }

    const GOOD: &str = r#"
[[workload]]
id = "spiffe://example.org/prod/a"
owner = "team-a"
purpose = "calls b"
environment = "prod"
selectors = ["unix:uid:1001", "unix:path:/usr/bin/a"]
jwt_ttl = "2m"

[[workload]]
id = "spiffe://example.org/prod/b"
owner = "team-b"
purpose = "serves"
aliases = ["b", "https://b.internal"]
scopes = ["b:read", "b:write"]

[[grant]]
from = "spiffe://example.org/prod/a"
to = "spiffe://example.org/prod/b"
scopes = ["b:read"]
routes = [{ methods = ["GET"], paths = ["/v1/*"] }]
why = "a reads b"
review_by = "2027-06-30"
"#;

    #[test]
    fn parses_a_mesh() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.workloads.len(), 2);
        assert_eq!(s.workloads[0].jwt_ttl, Ttl(Duration::from_secs(120)));
        assert_eq!(s.workloads[1].jwt_ttl, Ttl(DEFAULT_JWT_TTL));
        assert_eq!(s.workloads[0].selectors[1].value(), "/usr/bin/a");
        assert_eq!(s.grants[0].review_by.unwrap().to_string(), "2027-06-30");
        assert_eq!(s.grants[0].source, "mesh.toml:17");
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let text = GOOD.replace("owner = \"team-b\"", "owner = \"team-b\"\nownr = \"x\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("mesh.toml:13:1: unknown field `ownr`"), "{e}");
    }

    #[test]
    fn invalid_spiffe_id_names_line() {
        let text = GOOD.replace(
            "spiffe://example.org/prod/b\"\nowner",
            "spiffe://example.org/prod/b/\"\nowner",
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("mesh.toml:11:"), "{e}");
        assert!(e.contains("`spiffe://example.org/prod/b/`"), "{e}");
    }

    #[test]
    fn ttl_bounds() {
        let e = parse(&GOOD.replace("\"2m\"", "\"2h\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`jwt_ttl` must be between"), "{e}");
    }

    #[test]
    fn systemd_selectors() {
        for good in [
            "systemd:unit:nginx.service",
            "systemd:unit:getty@tty1.service",
            "systemd:unit:session-3.scope",
            "systemd:unit:dev-disk-by\\x2duuid.swap",
            "systemd:slice:system.slice",
        ] {
            let sel = Selector::parse(good).unwrap();
            assert_eq!(sel.to_string(), good);
        }
        assert_eq!(
            Selector::parse("systemd:unit:a:b.service").unwrap().value(),
            "a:b.service",
            "a unit name may hold `:`"
        );
        for bad in [
            "systemd:unit:nginx",
            "systemd:unit:system.slice",
            "systemd:slice:nginx.service",
            "systemd:unit:",
            "systemd:unit:a b.service",
            "systemd:unit:../x.service",
            "systemd:cgroup:/x",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        let e = parse(&GOOD.replace("unix:uid:1001", "systemd:unit:nginx"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mesh.toml:7:") && e.contains("systemd:unit"),
            "{e}"
        );
    }

    #[test]
    fn container_selectors() {
        let id = "sha256:3f1c5e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
        for good in [
            format!("container:image_id:{id}"),
            "container:image:docker.io/library/nginx:1.25".to_owned(),
            "container:image:localhost/tessera-test:latest".to_owned(),
            "container:name:orders-1".to_owned(),
            "container:label:app.kubernetes.io/name:orders".to_owned(),
            "container:label:team:".to_owned(),
            "container:env:SERVICE_ROLE:api:v2".to_owned(),
        ] {
            let sel = Selector::parse(&good).unwrap();
            assert_eq!(sel.to_string(), good);
        }
        assert_eq!(
            Selector::parse("container:label:com.example.tier:web")
                .unwrap()
                .value(),
            "com.example.tier:web"
        );
        for bad in [
            "container:image_id:3f1c",
            "container:image_id:sha256:XYZ",
            "container:image:",
            "container:image:a b",
            "container:name:-x",
            "container:name:a/b",
            "container:label:nokey",
            "container:label::v",
            "container:env:1X:v",
            "container:env:A-B:v",
            "container:env:A",
            "container:id:abc",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kubernetes_selectors_and_clusters() {
        let ok = parse(&GOOD.replace(
            r#"selectors = ["unix:uid:1001", "unix:path:/usr/bin/a"]"#,
            r#"selectors = ["k8s:ns:shop", "k8s:sa:orders", "k8s:pod_label:app.kubernetes.io/name:orders", "k8s:container_image:registry.example/shop/orders:1.4.2"]
node_selectors = ["k8s:cluster:prod", "k8s:node_name:node-a"]"#,
        ))
        .unwrap();
        assert_eq!(ok.workloads[0].node_selectors.len(), 2);
        for (bad, why) in [
            (
                r#"selectors = ["k8s:cluster:prod"]"#,
                "put it in `node_selectors`",
            ),
            (r#"selectors = ["k8s:ns:Shop"]"#, "a Kubernetes name"),
            (r#"selectors = ["k8s:pod_label:app"]"#, "`KEY:VALUE`"),
            (
                "selectors = [\"unix:uid:1\"]\nnode_selectors = [\"k8s:ns:shop\"]",
                "is not a node selector",
            ),
        ] {
            let e = parse(&GOOD.replace(
                r#"selectors = ["unix:uid:1001", "unix:path:/usr/bin/a"]"#,
                bad,
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(why) && e.contains("mesh.toml:"), "{bad}: {e}");
        }
        let cluster = |sa: &str, issuer: &str| {
            format!(
                "[[cluster]]\nname = \"prod\"\ntrust_domain = \"example.org\"\nissuer = \"{issuer}\"\nservice_accounts = [{sa}]\n"
            )
        };
        let c = parse(&cluster("\"tessera:agent\"", "https://oidc.example")).unwrap();
        assert_eq!(c.clusters[0].service_accounts[0].name, "agent");
        for (text, why) in [
            (
                cluster("", "https://oidc.example"),
                "names no `namespace:name`",
            ),
            (
                cluster("\"agent\"", "https://oidc.example"),
                "mesh.toml:5:21: `agent` is not a service account",
            ),
            (
                cluster("\"a:b\"", "oidc.example"),
                "must be an https:// URL",
            ),
            (
                format!(
                    "{}{}",
                    cluster("\"a:b\"", "https://x"),
                    cluster("\"a:b\"", "https://y")
                ),
                "cluster `prod` is defined twice",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_selector_refused() {
        let e = parse(&GOOD.replace("unix:uid:1001", "k8s:pod_uid:default"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a selector") || e.contains("not a known selector"),
            "{e}"
        );
        let e = parse(&GOOD.replace("unix:uid:1001", "unix:pid:7"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`unix:pid` is not a known selector type"), "{e}");
    }

    #[test]
    fn duplicates_refused() {
        let text = format!("{GOOD}\n[[workload]]\nid = \"spiffe://example.org/prod/a\"\nowner = \"x\"\npurpose = \"y\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("defined twice"), "{e}");
        let text = GOOD.replace(
            "aliases = [\"b\"",
            "aliases = [\"spiffe://example.org/prod/a\"",
        );
        assert!(parse(&text)
            .unwrap_err()
            .to_string()
            .contains("names more than one workload"));
    }

    #[test]
    fn grant_needs_a_reason() {
        let e = parse(&GOOD.replace("why = \"a reads b\"", "why = \"  \""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`why` must say why"), "{e}");
        let e = parse(&GOOD.replace("why = \"a reads b\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `why`"), "{e}");
    }

    #[test]
    fn shipped_example_parses() {
        // The repository's own `examples/`, exactly as users get it (key files included).
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mesh.toml");
        let s = load(&example).unwrap();
        assert_eq!(s.workloads.len(), 3);
        assert_eq!(s.grants.len(), 1);
        assert_eq!(s.trusts.len(), 1);
        assert_eq!(s.policies.len(), 1);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary text as an identity file: an error or a state, never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,400}") {
            let _ = parse_str(Path::new("p.toml"), &s);
        }

        #[test]
        fn selectors_never_panic(s in "\\PC{0,60}") {
            let _ = Selector::parse(&s);
            let _ = Selector::parse(&format!("unix:{s}"));
        }
    }

    #[test]
    fn the_trust_prefix_is_reserved() {
        let text = "[[workload]]\nid = \"spiffe://example.org/a\"\nowner = \"o\"\npurpose = \"p\"\n\n[[client]]\nid = \"Trust:github\"\nworkload = \"spiffe://example.org/a\"\nauth = \"client_secret\"\n";
        let err = crate::manifest::parse_str(std::path::Path::new("mesh.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reserved for trusts"), "{err}");
    }
}
