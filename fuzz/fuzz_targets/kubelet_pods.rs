//! A kubelet's `/pods` answer as the agent reads it (`tessera_agent::kubelet::Pods`): JSON from
//! the node's kubelet, whose pod names, labels and container IDs the cluster's users shape.
//! Oracles: no panic; a container found for a pod UID and container ID belongs to that pod and
//! names that container ID in the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_agent::cgroup::Placement;
use tessera_agent::kubelet::Pods;

const PLACEMENT: &str = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6b3a1c2e_9f4d_4e8a_b1c7_2d5e8f0a3b6c.slice/cri-containerd-a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8.scope\n";

fuzz_target!(|data: &[u8]| {
    let Ok(pods) = Pods::parse(data) else {
        return;
    };
    let Ok(p) = Placement::parse(PLACEMENT) else {
        return;
    };
    let (Some(uid), Some((_, id))) = (p.pod, p.container) else {
        return;
    };
    if let Ok(c) = pods.container(&uid, &id) {
        assert_eq!(c.pod_uid, uid.as_str());
        let text = String::from_utf8_lossy(data);
        assert!(text.contains(id.as_str()));
    }
});
