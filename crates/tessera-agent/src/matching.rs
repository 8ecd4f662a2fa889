//! Which registrations a process matches, without trying each of them: with 10,000
//! registrations, trying every one on every Workload API call cost more than the rest of the
//! call.
//!
//! Each registration is filed under one *anchor*: its first selector of a kind a process has at
//! most one value of (`unix:uid`, `unix:user`, `unix:path`). A process's candidates are the
//! registrations filed under its uid, its user and its executable, plus those with no anchor;
//! each candidate is still checked with every selector ([`Process::matches_all`]). A
//! registration the process matches has its anchor matched too, so it is always a candidate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tessera_core::agent_api::Registration;
use tessera_core::manifest::SelectorKind;
use tessera_core::SpiffeId;

use crate::attest::Process;

#[derive(Debug, Default, Clone)]
pub struct RegistrationIndex {
    /// How many registrations it was built from; any other count and it is not used.
    built_for: usize,
    by_uid: HashMap<u32, Vec<SpiffeId>>,
    by_user: HashMap<String, Vec<SpiffeId>>,
    by_path: HashMap<PathBuf, Vec<SpiffeId>>,
    unanchored: Vec<SpiffeId>,
}

impl RegistrationIndex {
    pub fn build(registrations: &HashMap<SpiffeId, Registration>) -> Self {
        let mut idx = Self {
            built_for: registrations.len(),
            ..Self::default()
        };
        for r in registrations.values() {
            let id = r.spiffe_id.clone();
            let anchor = r.selectors.iter().find_map(|s| match s.kind() {
                // A uid that does not parse matches no process: that registration is left to
                // the full check, which refuses it.
                SelectorKind::Uid => s.value().parse::<u32>().ok().map(Anchor::Uid),
                SelectorKind::User => Some(Anchor::User(s.value())),
                SelectorKind::Path => Some(Anchor::Path(Path::new(s.value()))),
                _ => None,
            });
            match anchor {
                Some(Anchor::Uid(u)) => idx.by_uid.entry(u).or_default().push(id),
                Some(Anchor::User(u)) => idx.by_user.entry(u.to_owned()).or_default().push(id),
                Some(Anchor::Path(p)) => idx.by_path.entry(p.to_owned()).or_default().push(id),
                None => idx.unanchored.push(id),
            }
        }
        idx
    }

    /// The registrations `p` matches, from `registrations` (the set this was built from; when
    /// it is not, every registration is tried).
    pub fn matching<'a>(
        &'a self,
        registrations: &'a HashMap<SpiffeId, Registration>,
        p: &'a Process,
    ) -> Box<dyn Iterator<Item = &'a Registration> + 'a> {
        if self.built_for != registrations.len() {
            return Box::new(
                registrations
                    .values()
                    .filter(move |r| p.matches_all(&r.selectors)),
            );
        }
        let none: &[SpiffeId] = &[];
        let by_uid = self.by_uid.get(&p.uid).map_or(none, Vec::as_slice);
        let by_user = p
            .user
            .as_ref()
            .and_then(|u| self.by_user.get(u))
            .map_or(none, Vec::as_slice);
        let by_path = p
            .exe
            .as_ref()
            .and_then(|e| self.by_path.get(e))
            .map_or(none, Vec::as_slice);
        Box::new(
            by_uid
                .iter()
                .chain(by_user)
                .chain(by_path)
                .chain(&self.unanchored)
                .filter_map(|id| registrations.get(id))
                .filter(move |r| p.matches_all(&r.selectors)),
        )
    }
}

enum Anchor<'a> {
    Uid(u32),
    User(&'a str),
    Path(&'a Path),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::manifest::Selector;

    fn reg(id: &str, selectors: &[&str]) -> (SpiffeId, Registration) {
        let id = SpiffeId::parse(id).unwrap();
        let r = Registration {
            spiffe_id: id.clone(),
            selectors: selectors
                .iter()
                .map(|s| Selector::parse(s).unwrap())
                .collect(),
            x509_ttl_secs: 3600,
            jwt_ttl_secs: 300,
            nodes: Vec::new(),
            node_selectors: Vec::new(),
            federates_with: Vec::new(),
            revision: 1,
        };
        (id, r)
    }

    fn process(uid: u32, user: &str, exe: &str, groups: &[u32]) -> Process {
        Process {
            pid: 1,
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            groups: groups.to_vec(),
            user: Some(user.into()),
            group_names: Vec::new(),
            exe: Some(exe.into()),
            sha256: None,
            start_ticks: 0,
            placement: None,
            container: None,
            pod: None,
        }
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Registration>) -> Vec<String> {
        let mut v: Vec<String> = it.map(|r| r.spiffe_id.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_index_finds_exactly_what_trying_every_registration_finds() {
        let mut regs: HashMap<SpiffeId, Registration> = [
            reg("spiffe://t/uid", &["unix:uid:1000"]),
            reg(
                "spiffe://t/uid-and-path",
                &["unix:uid:1000", "unix:path:/usr/bin/api"],
            ),
            reg(
                "spiffe://t/uid-other-path",
                &["unix:uid:1000", "unix:path:/usr/bin/other"],
            ),
            reg("spiffe://t/user", &["unix:gid:50", "unix:user:svc"]),
            reg("spiffe://t/path", &["unix:path:/usr/bin//api"]),
            reg("spiffe://t/gid-only", &["unix:gid:50"]),
            reg("spiffe://t/other-uid", &["unix:uid:1001"]),
            reg("spiffe://t/bad-uid", &["unix:uid:0001000"]),
        ]
        .into_iter()
        .collect();
        for i in 0..1000 {
            let (id, r) = reg(
                &format!("spiffe://t/w/{i}"),
                &[&format!("unix:uid:{}", 2000 + i)],
            );
            regs.insert(id, r);
        }
        let idx = RegistrationIndex::build(&regs);
        for p in [
            process(1000, "svc", "/usr/bin/api", &[50]),
            process(1000, "nobody", "/usr/bin/other", &[]),
            process(2500, "svc", "/bin/sh", &[50]),
            process(7, "x", "/x", &[]),
        ] {
            let every = ids(regs.values().filter(|r| p.matches_all(&r.selectors)));
            assert_eq!(ids(idx.matching(&regs, &p)), every, "{p:?}");
        }
        let p = process(1000, "svc", "/usr/bin/api", &[50]);
        assert_eq!(
            ids(idx.matching(&regs, &p)),
            [
                "spiffe://t/bad-uid",
                "spiffe://t/gid-only",
                "spiffe://t/path",
                "spiffe://t/uid",
                "spiffe://t/uid-and-path",
                "spiffe://t/user"
            ]
        );
        // Registrations changed without a new index: it is not used.
        let (id, r) = reg("spiffe://t/new", &["unix:uid:1000"]);
        regs.insert(id, r);
        assert!(ids(idx.matching(&regs, &p)).contains(&"spiffe://t/new".to_owned()));
    }
}
