//! Attestation beyond unix users, against the real kernel: a process placed in a systemd unit's
//! cgroup (made here, on the cgroup v2 hierarchy) gets the SVID registered for that unit through
//! the agent's Workload API, read by py-spiffe; the same client outside it gets none.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The cgroup v2 hierarchy's mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from this process's mount table.
fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount))
    })
}

/// A cgroup made for the test, removed when dropped (once its processes are gone).
struct TestCgroup(Vec<PathBuf>);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The SPIFFE IDs the Workload API at `socket` gives a python3 process started in `cgroup`
/// (or where this test runs, with `None`), or the error it got.
fn python_ids(socket: &Path, cgroup: Option<&Path>) -> Result<Vec<String>, String> {
    let script = format!(
        "from spiffe import WorkloadApiClient\n\
         with WorkloadApiClient(socket_path='unix://{}') as c:\n    \
         print(' '.join(sorted(str(s.spiffe_id) for s in c.fetch_x509_context().x509_svids)))\n",
        socket.display()
    );
    let mut cmd = Command::new("sh");
    match cgroup {
        // The shell moves itself into the cgroup, then becomes python.
        Some(dir) => cmd.arg("-c").arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec python3 -c \"$0\"",
            dir.display()
        )),
        None => cmd.arg("-c").arg("exec python3 -c \"$0\""),
    };
    let o = cmd.arg(script).output().unwrap();
    if o.status.success() {
        Ok(stdout(&o).split_whitespace().map(str::to_owned).collect())
    } else {
        Err(stderr(&o))
    }
}

#[test]
fn systemd_unit_attestation_from_a_real_cgroup() {
    let root = cgroup2_root().expect("no cgroup v2 hierarchy is mounted");
    let unit = format!("tessera-test-{}.service", std::process::id());
    let slice = root.join("tessera-test.slice");
    let dir = slice.join(&unit);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        // Making a cgroup needs root (or a delegated subtree); say so rather than pass.
        eprintln!(
            "skipped: cannot make a cgroup under `{}`: {e}",
            root.display()
        );
        return;
    }
    let _cleanup = TestCgroup(vec![slice, dir.clone()]);

    let s = server(Backend::Sqlite, &[]).unwrap();
    let files = tempfile::tempdir().unwrap();
    let mesh = write(
        files.path(),
        "mesh.toml",
        &format!(
            r#"
[[workload]]
id = "spiffe://example.org/prod/unit"
owner = "team-a"
purpose = "Runs as the systemd unit"
selectors = ["systemd:unit:{unit}"]

[[workload]]
id = "spiffe://example.org/prod/slice"
owner = "team-a"
purpose = "Anything in the test slice"
selectors = ["systemd:slice:tessera-test.slice"]

[[workload]]
id = "spiffe://example.org/prod/other-unit"
owner = "team-b"
purpose = "Another unit"
selectors = ["systemd:unit:nginx.service"]
"#
        ),
    );
    let o = tessera(&s.data, &["apply", "-f", mesh.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_agent, socket) = join_agent(&s, files.path(), "agent");

    let inside = python_ids(&socket, Some(&dir)).unwrap();
    assert_eq!(
        inside,
        [
            "spiffe://example.org/prod/slice",
            "spiffe://example.org/prod/unit"
        ],
        "the unit's process gets the unit's and the slice's SVIDs, no other"
    );
    let outside = python_ids(&socket, None).unwrap_err();
    assert!(outside.contains("no identity"), "{outside}");
}
