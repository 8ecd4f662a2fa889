//! Key custody's cost, for `bench/custody`: signatures with keys in a PKCS#11 token (SoftHSM2)
//! against keys in memory, in one process, one run.
//!
//! - the module's own cost: `C_Sign` on a session and handle held by this driver (cryptoki
//!   directly), the digest made beforehand, as the baseline;
//! - Tessera's path: `tessera_token::SigningKey::sign` on a key in the token (digest, a session
//!   from the pool, the cached handle) and on a key in memory (ring);
//! - throughput of Tessera's path with 1, 2 and 4 threads (the pool is sized to the cores);
//! - an X.509-SVID from a CSR (`CertificateAuthority::sign_csr`) and a JWT
//!   (`tessera_token::sign`), CA / signing key in the token against in memory.
//!
//!   tessera-hsmbench --module PATH --token LABEL --pin PIN [--seconds 2]
//!
//! Prints Markdown.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark driver: a failure should stop it loudly"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use tessera_core::{SpiffeId, TrustDomain};
use tessera_token::{Alg, Hsm, SigningKey};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Runs `f` for `secs` on one thread; µs per call.
fn per_op(secs: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// `a` and `b` called alternately, one call each, `n` times: (mean µs of a, mean µs of b,
/// median µs of b − a over the pairs). Alternating call by call keeps the VM's drift out of the
/// difference.
fn paired(n: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..50 {
        a();
        b();
    }
    let (mut ta, mut tb, mut diffs) = (0.0, 0.0, Vec::with_capacity(n));
    for _ in 0..n {
        let t0 = Instant::now();
        a();
        let t1 = Instant::now();
        b();
        let t2 = Instant::now();
        let (da, db) = ((t1 - t0).as_secs_f64() * 1e6, (t2 - t1).as_secs_f64() * 1e6);
        ta += da;
        tb += db;
        diffs.push(db - da);
    }
    (ta / n as f64, tb / n as f64, median(diffs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Signatures per second of `key` from `threads` threads for `secs`.
fn throughput(key: &Arc<SigningKey>, threads: usize, secs: f64) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let key = key.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < stop {
                    key.sign(b"a JWS signing input of typical length for an access token")
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let module = arg(&args, "--module").unwrap_or("/usr/lib/softhsm/libsofthsm2.so".into());
    let token = arg(&args, "--token").expect("--token LABEL");
    let pin = arg(&args, "--pin").expect("--pin PIN");
    let secs: f64 = arg(&args, "--seconds")
        .map(|s| s.parse().unwrap())
        .unwrap_or(2.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let hsm = Hsm::open(&module, &token, &pin, cores).unwrap();
    let in_token =
        Arc::new(SigningKey::in_token(hsm.generate("bench-es256", Alg::ES256).unwrap()).unwrap());
    let ed_in_token =
        Arc::new(SigningKey::in_token(hsm.generate("bench-ed25519", Alg::EdDSA).unwrap()).unwrap());
    let in_memory = Arc::new(SigningKey::generate(Alg::ES256).unwrap().0);
    let ed_in_memory = Arc::new(SigningKey::generate(Alg::EdDSA).unwrap().0);
    let message = b"a JWS signing input of typical length for an access token".repeat(6);

    // The module's own cost: this driver's own context on the same library (the library is
    // initialized once per process; cryptoki tolerates the second context), its own session
    // and the key's handle, the digest made once beforehand.
    let ctx = Pkcs11::new(&module).unwrap();
    let _ = ctx.initialize(CInitializeArgs::OsThreads);
    let slot = ctx
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == token)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::from(pin)));
    let handle = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"bench-es256".to_vec()),
        ])
        .unwrap()[0];
    let digest = ring::digest::digest(&ring::digest::SHA256, &message);
    let ed_handle = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"bench-ed25519".to_vec()),
        ])
        .unwrap()[0];
    let ed_mech = || {
        Mechanism::Eddsa(cryptoki::mechanism::eddsa::EddsaParams::new(
            cryptoki::mechanism::eddsa::EddsaSignatureScheme::Pure,
        ))
    };
    // The module's own call and Tessera's path to it, alternated call by call.
    let n = (secs * 4000.0) as usize;
    let (raw, token_path, overhead) = paired(
        n,
        || {
            session
                .sign(&Mechanism::Ecdsa, handle, digest.as_ref())
                .unwrap();
        },
        || {
            in_token.sign(&message).unwrap();
        },
    );
    let (ed_raw, ed_token_path, ed_overhead) = paired(
        n / 3,
        || {
            session.sign(&ed_mech(), ed_handle, &message).unwrap();
        },
        || {
            ed_in_token.sign(&message).unwrap();
        },
    );
    let rounds = 5;
    let slice = secs / rounds as f64;
    let memory_path = per_op(secs, || {
        in_memory.sign(&message).unwrap();
    });
    let ed_memory_path = per_op(secs, || {
        ed_in_memory.sign(&message).unwrap();
    });
    drop(session);

    println!(
        "machine: {cores} cores; SoftHSM2 ({module}); {secs} s per figure (module against Tessera's path: alternated call by call; whole operations: medians of 5 alternated rounds); one process, one run\n"
    );
    println!("| signature | module's own `C_Sign` (mean) | Tessera's path, key in the token (mean) | overhead beyond the module (median of the pairs) | key in memory (ring) |");
    println!("|---|---|---|---|---|");
    println!(
        "| ES256 ({n} pairs) | {raw:.1} µs | {token_path:.1} µs | {overhead:.1} µs | {memory_path:.1} µs |"
    );
    println!(
        "| EdDSA, the log's key ({} pairs) | {ed_raw:.1} µs | {ed_token_path:.1} µs | {ed_overhead:.1} µs | {ed_memory_path:.1} µs |",
        n / 3
    );

    println!("\n| threads | ES256 in the token, signatures/s | in memory, signatures/s |");
    println!("|---|---|---|");
    for threads in [1, 2, 4] {
        println!(
            "| {threads} | {:.0} | {:.0} |",
            throughput(&in_token, threads, secs),
            throughput(&in_memory, threads, secs)
        );
    }

    // Whole operations: an X.509-SVID from a CSR, and an access token.
    let td = TrustDomain::parse("example.org").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/bench").unwrap();
    let (_, csr) = tessera_ca::new_key_and_csr(&id).unwrap();
    let now = tessera_core::now_unix();
    let ca_key =
        Arc::new(SigningKey::in_token(hsm.generate("bench-ca", Alg::ES256).unwrap()).unwrap());
    let ca_token = tessera_ca::CertificateAuthority::self_signed(&td, ca_key, now, 86400).unwrap();
    let ca_memory = tessera_ca::CertificateAuthority::generate(&td, now, 86400)
        .unwrap()
        .0;
    let claims = serde_json::json!({"iss": "https://authority.example.org", "sub": "spiffe://example.org/a",
        "aud": "spiffe://example.org/b", "exp": now + 300, "iat": now, "jti": "bench", "client_id": "a"});
    let (mut svid_token, mut svid_memory, mut jwt_token, mut jwt_memory) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        svid_token.push(per_op(slice, || {
            ca_token.sign_csr(&csr, &id, now, 3600).unwrap();
        }));
        svid_memory.push(per_op(slice, || {
            ca_memory.sign_csr(&csr, &id, now, 3600).unwrap();
        }));
        jwt_token.push(per_op(slice, || {
            tessera_token::sign(&in_token, "at+jwt", &claims).unwrap();
        }));
        jwt_memory.push(per_op(slice, || {
            tessera_token::sign(&in_memory, "at+jwt", &claims).unwrap();
        }));
    }
    let (svid_token, svid_memory) = (median(svid_token), median(svid_memory));
    let (jwt_token, jwt_memory) = (median(jwt_token), median(jwt_memory));
    println!("\n| operation | key in the token | key in memory | difference |");
    println!("|---|---|---|---|");
    println!(
        "| X.509-SVID from a CSR (`sign_csr`) | {svid_token:.1} µs | {svid_memory:.1} µs | +{:.1} µs |",
        svid_token - svid_memory
    );
    println!(
        "| access token (`tessera_token::sign`, ES256) | {jwt_token:.1} µs | {jwt_memory:.1} µs | +{:.1} µs |",
        jwt_token - jwt_memory
    );
}
