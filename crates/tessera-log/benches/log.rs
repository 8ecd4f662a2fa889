//! The log's costs off the request path: signing a checkpoint, making an inclusion proof from
//! tiles, extending the tree by a second's worth of records.

use criterion::{criterion_group, criterion_main, Criterion};
use std::collections::HashMap;
use tessera_log::tiles::{extend, right_edge, TileSet};
use tessera_log::tree::{inclusion_proof, root};
use tessera_log::{leaf_hash, Checkpoint, KeyType, NoteSigner};

fn grown(n: u64) -> TileSet {
    let leaves: Vec<_> = (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let mut set = TileSet::default();
    for (id, t) in extend(0, &HashMap::new(), &leaves).unwrap_or_default() {
        set.tiles.insert(id, t);
    }
    set
}

fn bench(c: &mut Criterion) {
    let signer = NoteSigner::from_seed("bench/audit", KeyType::Ed25519, &[1; 32])
        .unwrap_or_else(|_| std::process::exit(1));
    let text = Checkpoint {
        origin: "bench/audit".into(),
        size: 1_000_000,
        root: [7; 32],
        extensions: vec![],
    }
    .text();
    c.bench_function("checkpoint_sign", |b| b.iter(|| signer.sign_text(&text)));

    let n = 1_000_000u64;
    let set = grown(n);
    c.bench_function("inclusion_proof_1m", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = (i + 7919) % n;
            inclusion_proof(&set, i, n)
        })
    });
    c.bench_function("root_1m", |b| b.iter(|| root(&set, n - 3)));

    let leaves: Vec<_> = (0..20_000u64)
        .map(|i| leaf_hash(&i.to_le_bytes()))
        .collect();
    c.bench_function("extend_by_20k", |b| {
        let edge: HashMap<_, _> = right_edge(n)
            .into_iter()
            .filter_map(|(id, _)| set.tiles.get(&id).map(|t| (id, t.clone())))
            .collect();
        b.iter(|| extend(n, &edge, &leaves))
    });
    c.bench_function("leaf_hash_300b", |b| {
        let data = vec![b'x'; 300];
        b.iter(|| leaf_hash(&data))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
