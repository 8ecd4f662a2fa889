//! Where a process runs, read from its `/proc/PID/cgroup`: the container (Docker, Podman,
//! containerd, CRI-O; cgroup v1 and v2, cgroupfs and systemd drivers), the Kubernetes pod, the
//! systemd unit and slice. Only the kernel writes that file, and a process can move only into a
//! cgroup it may write to, so the placement is evidence; the container's labels and image are
//! then read from the runtime by its ID, never from the process.
//!
//! The parser is strict where a wrong answer would be a wrong identity: an ID is 64 lowercase hex
//! digits in a component of a known shape, and two different container IDs (or pods) in one file
//! are refused rather than one of them chosen.

/// A container runtime, as the cgroup path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
    /// A Kubernetes pod's container under the cgroupfs driver: the path names no runtime.
    Kubernetes,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::CriO => "cri-o",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// A container's ID: 64 lowercase hex digits. Built only by [`Placement::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    fn parse(s: &str) -> Option<Self> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Kubernetes pod's UID, in its dashed form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodUid(String);

impl PodUid {
    /// `8-4-4-4-12` hex digits, dashed or (as systemd slices write it) underscored.
    fn parse(s: &str) -> Option<Self> {
        // One separator or the other, never a mix: a mixed form is no name a runtime writes.
        if s.contains('-') && s.contains('_') {
            return None;
        }
        let dashed = s.replace('_', "-");
        let groups: Vec<&str> = dashed.split('-').collect();
        let shape = [8, 4, 4, 4, 12];
        (groups.len() == 5
            && groups.iter().zip(shape).all(|(g, n)| {
                g.len() == n
                    && g.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }))
        .then_some(Self(dashed))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the cgroup file says about a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub container: Option<(Runtime, ContainerId)>,
    pub pod: Option<PodUid>,
    /// The systemd unit (`nginx.service`, `session-3.scope`), outside containers only.
    pub unit: Option<String>,
    /// The innermost systemd slice (`system.slice`).
    pub slice: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("line {line} of the cgroup file is not `hierarchy:controllers:path`")]
    Line { line: usize },
    #[error("the cgroup file names two containers (`{0}` and `{1}`)")]
    TwoContainers(String, String),
    #[error("the cgroup file names two pods (`{0}` and `{1}`)")]
    TwoPods(String, String),
}

/// A container in one path component, given the component above it.
fn container_in(component: &str, parent: &str) -> Option<(Runtime, ContainerId)> {
    if let Some(scope) = component.strip_suffix(".scope") {
        for (prefix, runtime) in [
            ("docker-", Runtime::Docker),
            ("libpod-", Runtime::Podman),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::CriO),
        ] {
            if let Some(id) = scope.strip_prefix(prefix).and_then(ContainerId::parse) {
                return Some((runtime, id));
            }
        }
        return None;
    }
    if let Some(id) = component
        .strip_prefix("libpod-")
        .and_then(ContainerId::parse)
    {
        return Some((Runtime::Podman, id));
    }
    if let Some(id) = component.strip_prefix("crio-").and_then(ContainerId::parse) {
        return Some((Runtime::CriO, id));
    }
    let id = ContainerId::parse(component)?;
    match parent {
        "docker" => Some((Runtime::Docker, id)),
        p if p.starts_with("pod") && pod_in(p).is_some() => Some((Runtime::Kubernetes, id)),
        _ => None,
    }
}

/// A pod in one path component: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice`.
fn pod_in(component: &str) -> Option<PodUid> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let (prefix, uid) = name.rsplit_once("pod")?;
    if !(prefix.is_empty() || prefix.starts_with("kubepods")) {
        return None;
    }
    PodUid::parse(uid)
}

impl Placement {
    /// Reads the text of `/proc/PID/cgroup`.
    pub fn parse(text: &str) -> Result<Self, CgroupError> {
        let mut out = Self::default();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let mut parts = line.splitn(3, ':');
            let (Some(_hierarchy), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(CgroupError::Line { line: n + 1 });
            };
            let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
            let mut parent = "";
            for c in &components {
                if let Some(found) = container_in(c, parent) {
                    match &out.container {
                        Some((_, id)) if id != &found.1 => {
                            return Err(CgroupError::TwoContainers(
                                id.as_str().to_owned(),
                                found.1.as_str().to_owned(),
                            ))
                        }
                        _ => out.container = Some(found),
                    }
                }
                if let Some(pod) = pod_in(c) {
                    match &out.pod {
                        Some(p) if p != &pod => {
                            return Err(CgroupError::TwoPods(
                                p.as_str().to_owned(),
                                pod.as_str().to_owned(),
                            ))
                        }
                        _ => out.pod = Some(pod),
                    }
                }
                parent = c;
            }
            // systemd's own hierarchy (v1) or the unified one (v2) carries units and slices.
            if controllers == "name=systemd" || controllers.is_empty() {
                for c in &components {
                    if c.ends_with(".slice") {
                        out.slice = Some((*c).to_owned());
                    } else if (c.ends_with(".service") || c.ends_with(".scope"))
                        && container_in(c, "").is_none()
                    {
                        out.unit = Some((*c).to_owned());
                    }
                }
            }
        }
        if out.container.is_some() {
            // A container's scope is the runtime's, not a unit of the host's to attest by.
            out.unit = None;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c5e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
    const OTHER: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const POD: &str = "0b5e8f4a-1c2d-4e3f-9a8b-7c6d5e4f3a2b";

    fn placed(text: &str) -> Placement {
        Placement::parse(text).unwrap()
    }

    fn container(text: &str) -> Option<(Runtime, String)> {
        placed(text)
            .container
            .map(|(r, id)| (r, id.as_str().to_owned()))
    }

    #[test]
    fn every_runtime_layout_names_its_container() {
        let pod_ = POD.replace('-', "_");
        let cases = [
            // Docker, cgroupfs driver, v1.
            (format!("12:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n"), Runtime::Docker),
            // Docker, systemd driver, v2.
            (format!("0::/system.slice/docker-{ID}.scope\n"), Runtime::Docker),
            // Podman as root (systemd), with conmon's `container` child.
            (format!("0::/machine.slice/libpod-{ID}.scope/container\n"), Runtime::Podman),
            // Podman, cgroupfs manager (this machine's), hybrid v1 + v2.
            (format!("4:memory:/libpod_parent/libpod-{ID}\n0::/libpod_parent/libpod-{ID}\n"), Runtime::Podman),
            // Rootless Podman.
            (format!("0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n"), Runtime::Podman),
            // containerd under Kubernetes, systemd driver.
            (format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/cri-containerd-{ID}.scope\n"), Runtime::Containerd),
            // CRI-O.
            (format!("0::/kubepods.slice/kubepods-pod{pod_}.slice/crio-{ID}.scope\n"), Runtime::CriO),
            // Kubernetes, cgroupfs driver, v1.
            (format!("5:cpu,cpuacct:/kubepods/besteffort/pod{POD}/{ID}\n"), Runtime::Kubernetes),
        ];
        for (text, runtime) in cases {
            assert_eq!(container(&text), Some((runtime, ID.to_owned())), "{text}");
        }
        let k8s = placed(&format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_}.slice/cri-containerd-{ID}.scope\n"));
        assert_eq!(k8s.pod.unwrap().as_str(), POD);
        assert_eq!(k8s.unit, None, "a container's scope is no unit of the host");
    }

    #[test]
    fn systemd_units_and_slices_outside_containers() {
        let p = placed("9:name=systemd:/system.slice/nginx.service\n4:memory:/system.slice/nginx.service\n0::/system.slice/nginx.service\n");
        assert_eq!(
            (p.unit.as_deref(), p.slice.as_deref()),
            (Some("nginx.service"), Some("system.slice"))
        );
        assert_eq!(p.container, None);
        let p = placed("0::/user.slice/user-1000.slice/session-3.scope\n");
        assert_eq!(
            (p.unit.as_deref(), p.slice.as_deref()),
            (Some("session-3.scope"), Some("user-1000.slice"))
        );
        // This machine's own shape: nothing but a memory cgroup of the sandbox.
        let p = placed(
            "9:name=systemd:/\n4:memory:/process_api/f1e9026c2062e5caf0d32f2aa52913cc\n0::/\n",
        );
        assert_eq!(p, Placement::default());
    }

    #[test]
    fn look_alikes_and_conflicts_are_not_containers() {
        for text in [
            // Not 64 hex digits, upper case, or an ID without a runtime's parent.
            format!("0::/docker/{}\n", &ID[..63]),
            format!("0::/docker/{}\n", ID.to_uppercase()),
            format!("0::/system.slice/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.service\n"),
            format!("0::/system.slice/evil-docker-{ID}.scope\n"),
            // A pod-looking parent that is no pod.
            format!("0::/kubepods/podzzz/{ID}\n"),
            format!("0::/mine/crio-conmon-{ID}.scope\n"),
        ] {
            assert_eq!(container(&text), None, "{text}");
        }
        let two = format!("12:memory:/docker/{ID}\n0::/docker/{OTHER}\n");
        assert!(matches!(
            Placement::parse(&two),
            Err(CgroupError::TwoContainers(..))
        ));
        let pods = format!(
            "0::/kubepods/besteffort/pod{POD}/x\n1:cpu:/kubepods/pod{}/y\n",
            POD.replace('0', "1")
        );
        assert!(matches!(
            Placement::parse(&pods),
            Err(CgroupError::TwoPods(..))
        ));
        assert!(matches!(
            Placement::parse("no colons here\n"),
            Err(CgroupError::Line { line: 1 })
        ));
        // Found by fuzzing: a pod UID with both separators is no pod.
        let mixed = format!("0::/kubepods-pod{}.slice/x\n", POD.replacen('-', "_", 1));
        assert_eq!(placed(&mixed).pod, None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,400}") {
            let _ = Placement::parse(&text);
        }

        /// Whatever surrounds a container's scope, the ID found is that one or none.
        #[test]
        fn finds_only_the_id_it_was_given(prefix in "[a-z0-9./_-]{0,40}", suffix in "[a-z0-9/._-]{0,20}") {
            let text = format!("0::/{prefix}/docker-{ID}.scope/{suffix}\n");
            if let Ok(p) = Placement::parse(&text) {
                if let Some((_, id)) = p.container {
                    proptest::prop_assert_eq!(id.as_str(), ID);
                }
            }
        }
    }
}
