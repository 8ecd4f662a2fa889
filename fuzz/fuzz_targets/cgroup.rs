//! A process's `/proc/PID/cgroup` as the agent reads it (`tessera_agent::cgroup`): text the
//! kernel writes, but whose paths a container's own cgroup names shape. Oracles: no panic; a
//! container ID found is 64 lowercase hex digits that occur in the text; a pod UID found occurs
//! in the text (dashed or underscored).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_agent::cgroup::Placement;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = Placement::parse(text) else {
        return;
    };
    if let Some((_, id)) = &p.container {
        let id = id.as_str();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(text.contains(id));
    }
    if let Some(pod) = &p.pod {
        let pod = pod.as_str();
        assert!(text.contains(pod) || text.contains(&pod.replace('-', "_")));
    }
});
