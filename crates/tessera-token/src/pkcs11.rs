//! Keys held in a PKCS#11 token (an HSM, or SoftHSM2 in tests), through `cryptoki`.
//!
//! A key is generated inside the token as sensitive and non-extractable and is found again by
//! its label; Tessera keeps only its public half. Signing borrows a logged-in session from a
//! small pool (one session serves one thread at a time, so the pool is what lets signatures run
//! in parallel). A call that fails because the token went away fails (closed) and marks the
//! module broken; the next call reconnects first (the pooled sessions dropped, the library
//! finalized and initialized again, the token found by its label, logged in, object handles
//! found afresh). Nothing here ever falls back to a software key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::key::Alg;

/// DER of the named curve P-256 (OID 1.2.840.10045.3.1.7), `CKA_EC_PARAMS` of an ES256 key.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID of Ed25519 (1.3.101.112), `CKA_EC_PARAMS` of an EdDSA key (PKCS#11 3.0).
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Why the token refused, or could not be used. Each names the token (and slot) concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HsmError {
    #[error("`{module}` is not a PKCS#11 module: {reason}")]
    NotAModule { module: String, reason: String },
    #[error("the PKCS#11 module `{module}` did not start: {reason}")]
    Init { module: String, reason: String },
    #[error("no PKCS#11 token labelled `{0}` (is it initialised? `softhsm2-util --show-slots`)")]
    NoToken(String),
    #[error("PKCS#11 token `{token}` (slot {slot}): the PIN is refused ({reason})")]
    Pin {
        token: String,
        slot: u64,
        reason: String,
    },
    #[error("PKCS#11 token `{token}` (slot {slot}): {op} failed: {reason}")]
    Call {
        token: String,
        slot: u64,
        op: &'static str,
        reason: String,
    },
    #[error("PKCS#11 token `{token}`: no private key labelled `{label}`")]
    Missing { token: String, label: String },
    #[error("PKCS#11 token `{token}`: key `{label}` {problem}")]
    BadKey {
        token: String,
        label: String,
        problem: String,
    },
}

/// An open PKCS#11 module, logged in to one token.
pub struct Hsm {
    /// The library and the token's slot; replaced whole on a reconnection. Calls hold it
    /// shared, a reconnection exclusively.
    conn: RwLock<Option<Conn>>,
    module: String,
    token: String,
    pin: AuthPin,
    pool: Mutex<Vec<Session>>,
    pool_size: usize,
    /// Bumped when the token failed: cached object handles of older generations are stale.
    generation: AtomicU64,
    /// Set when a call failed as if the token went away: the next call reconnects first.
    broken: AtomicBool,
    /// Calls that failed because the token or its session went away, and reconnections that
    /// succeeded (for metrics).
    failures: AtomicU64,
    reconnects: AtomicU64,
}

struct Conn {
    ctx: Pkcs11,
    slot: Slot,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("slot", &self.slot_id())
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Loads `module`, initializes it and finds the token labelled `token`.
    fn open(module: &str, token: &str) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(module).map_err(|e| HsmError::NotAModule {
            module: module.to_owned(),
            reason: one_line(&e),
        })?;
        match ctx.initialize(CInitializeArgs::OsThreads) {
            Ok(()) | Err(CkError::AlreadyInitialized) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(HsmError::Init {
                    module: module.to_owned(),
                    reason: one_line(&e),
                })
            }
        }
        let init = |e: CkError| HsmError::Init {
            module: module.to_owned(),
            reason: one_line(&e),
        };
        for slot in ctx.get_slots_with_initialized_token().map_err(init)? {
            let info = ctx.get_token_info(slot).map_err(init)?;
            if info.label().trim_end() == token {
                return Ok(Self { ctx, slot });
            }
        }
        Err(HsmError::NoToken(token.to_owned()))
    }
}

/// Failures that mean the session or the token is gone (not that the request was bad).
fn is_connection_error(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::GeneralError
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

impl Hsm {
    /// Loads `module`, finds the token labelled `token` and logs in with `pin`. Keeps up to
    /// `pool_size` sessions open for signing.
    pub fn open(
        module: &str,
        token: &str,
        pin: &str,
        pool_size: usize,
    ) -> Result<Arc<Self>, HsmError> {
        let conn = Conn::open(module, token)?;
        let hsm = Arc::new(Self {
            conn: RwLock::new(Some(conn)),
            module: module.to_owned(),
            token: token.to_owned(),
            pin: AuthPin::from(pin.to_owned()),
            pool: Mutex::new(Vec::new()),
            pool_size: pool_size.max(1),
            generation: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        // Log in now, so a wrong PIN stops the start rather than the first request.
        hsm.with_session("login", |_| Ok(()))?;
        Ok(hsm)
    }

    /// Starts over after the token went away: drops every session, finalizes the library
    /// (the old context's last reference), initializes it again and finds the token.
    fn reconnect(&self) -> Result<(), HsmError> {
        let mut conn = self.conn.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(()); // another thread did it
        }
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // INVARIANT: no session of the old context is left (the pool is empty and every call
        // holds `conn` shared), so taking it drops its last reference: C_Finalize runs before
        // the next C_Initialize (the library's state is global, one per process).
        drop(conn.take());
        *conn = Some(Conn::open(&self.module, &self.token)?);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.broken.store(false, Ordering::SeqCst);
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Calls that failed because the token or its session went away, since the start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reconnections to the token that succeeded, since the start.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Marks the module broken: the next call reconnects first.
    fn mark_broken(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.broken.store(true, Ordering::SeqCst);
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The token's slot (0 while it is being reconnected).
    pub fn slot_id(&self) -> u64 {
        self.conn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |c| c.slot.id())
    }

    /// Takes the slot from the caller, who holds `conn` already (taking it again could wait
    /// behind a reconnection that waits for the caller).
    fn call_error(&self, slot: u64, op: &'static str, e: &CkError) -> HsmError {
        HsmError::Call {
            token: self.token.clone(),
            slot,
            op,
            reason: one_line(e),
        }
    }

    fn open_session(&self, conn: &Conn) -> Result<Session, HsmError> {
        let session = conn
            .ctx
            .open_rw_session(conn.slot)
            .map_err(|e| self.call_error(conn.slot.id(), "opening a session", &e))?;
        // Login is per application, not per session: another session may have done it.
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(
                e @ CkError::Pkcs11(
                    RvError::PinIncorrect
                    | RvError::PinInvalid
                    | RvError::PinLenRange
                    | RvError::PinExpired
                    | RvError::PinLocked
                    | RvError::UserPinNotInitialized,
                    _,
                ),
            ) => Err(HsmError::Pin {
                token: self.token.clone(),
                slot: conn.slot.id(),
                reason: one_line(&e),
            }),
            Err(e) => Err(self.call_error(conn.slot.id(), "login", &e)),
        }
    }

    fn give_back(&self, session: Session) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.pool_size {
            pool.push(session);
        }
    }

    /// Runs `f` on a pooled session. A connection failure empties the pool and invalidates
    /// cached handles; the error is returned either way (never retried on another key).
    fn with_session<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        if self.broken.load(Ordering::SeqCst) {
            self.reconnect().inspect_err(|_| {
                self.failures.fetch_add(1, Ordering::Relaxed);
            })?;
        }
        let guard = self.conn.read().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_ref().ok_or_else(|| HsmError::Call {
            token: self.token.clone(),
            slot: 0,
            op,
            reason: "the token is being reconnected".into(),
        })?;
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let session = match pooled {
            Some(s) => s,
            None => self.open_session(conn).inspect_err(|e| {
                if matches!(e, HsmError::Call { .. }) {
                    self.mark_broken();
                }
            })?,
        };
        match f(&session) {
            Ok(v) => {
                self.give_back(session);
                Ok(v)
            }
            Err(e) => {
                if is_connection_error(&e) {
                    self.mark_broken();
                    self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    drop(session);
                } else {
                    self.give_back(session);
                }
                Err(self.call_error(conn.slot.id(), op, &e))
            }
        }
    }

    /// Generates a key pair for `alg` in the token under `label`: the private half sensitive,
    /// non-extractable and for signing only. Refuses a label already in use.
    pub fn generate(self: &Arc<Self>, label: &str, alg: Alg) -> Result<HsmKey, HsmError> {
        let (mechanism, params) = match alg {
            Alg::ES256 => (Mechanism::EccKeyPairGen, P256_PARAMS),
            Alg::EdDSA => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS),
            Alg::RS256 => {
                return Err(self.bad_key(label, "RS256 is for verification only"));
            }
        };
        if self
            .find_handles(label, ObjectClass::PRIVATE_KEY)?
            .is_some()
        {
            return Err(self.bad_key(label, "already exists; labels are never reused"));
        }
        let id = label.as_bytes().to_vec();
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(params.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Derive(false),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id),
        ];
        self.with_session("generating a key", |s| {
            s.generate_key_pair(&mechanism, &public, &private)
        })?;
        self.find(label, alg)
    }

    /// Tessera uses only keys that cannot leave the token.
    fn refuse_extractable(
        &self,
        label: &str,
        sensitive: bool,
        extractable: bool,
    ) -> Result<(), HsmError> {
        if extractable || !sensitive {
            return Err(self.bad_key(
                label,
                "can leave the token (CKA_EXTRACTABLE set or CKA_SENSITIVE unset); Tessera uses only non-extractable keys",
            ));
        }
        Ok(())
    }

    fn bad_key(&self, label: &str, problem: impl Into<String>) -> HsmError {
        HsmError::BadKey {
            token: self.token.clone(),
            label: label.to_owned(),
            problem: problem.into(),
        }
    }

    fn find_handles(
        &self,
        label: &str,
        class: ObjectClass,
    ) -> Result<Option<ObjectHandle>, HsmError> {
        let found = self.with_session("finding a key", |s| {
            s.find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(self.bad_key(label, "is ambiguous: several objects carry that label")),
        }
    }

    /// Finds the key pair labelled `label` and checks it is a signing key for `alg` that cannot
    /// leave the token. Returns the key with its public half read from the token.
    pub fn find(self: &Arc<Self>, label: &str, alg: Alg) -> Result<HsmKey, HsmError> {
        let private = self
            .find_handles(label, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| HsmError::Missing {
                token: self.token.clone(),
                label: label.to_owned(),
            })?;
        let attrs = self.with_session("reading a key's attributes", |s| {
            s.get_attributes(
                private,
                &[
                    AttributeType::KeyType,
                    AttributeType::EcParams,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Sign,
                ],
            )
        })?;
        let (want_type, want_params) = match alg {
            Alg::ES256 => (KeyType::EC, P256_PARAMS),
            Alg::EdDSA => (KeyType::EC_EDWARDS, ED25519_PARAMS),
            Alg::RS256 => return Err(self.bad_key(label, "RS256 is for verification only")),
        };
        let (mut sensitive, mut extractable, mut sign) = (false, true, false);
        for a in &attrs {
            match a {
                Attribute::KeyType(t) if *t != want_type => {
                    return Err(self.bad_key(
                        label,
                        format!("is of type {t}, not the one {} needs", alg.as_str()),
                    ))
                }
                Attribute::EcParams(p) if !same_curve(p, want_params) => {
                    return Err(self.bad_key(
                        label,
                        format!(
                            "is on another curve than the one {} needs (CKA_EC_PARAMS {})",
                            alg.as_str(),
                            p.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        ),
                    ))
                }
                Attribute::Sensitive(v) => sensitive = *v,
                Attribute::Extractable(v) => extractable = *v,
                Attribute::Sign(v) => sign = *v,
                _ => {}
            }
        }
        self.refuse_extractable(label, sensitive, extractable)?;
        if !sign {
            return Err(self.bad_key(label, "is not a signing key (CKA_SIGN unset)"));
        }
        let public_handle = self
            .find_handles(label, ObjectClass::PUBLIC_KEY)?
            .ok_or_else(|| self.bad_key(label, "has no public key object beside it"))?;
        let point = self.with_session("reading a public key", |s| {
            s.get_attributes(public_handle, &[AttributeType::EcPoint])
        })?;
        let point = point
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| self.bad_key(label, "has no CKA_EC_POINT"))?;
        let public = unwrap_ec_point(&point, alg)
            .ok_or_else(|| self.bad_key(label, "has a public point of the wrong size"))?;
        Ok(HsmKey {
            hsm: self.clone(),
            label: label.to_owned(),
            alg,
            public,
            handle: CachedHandle::new(self, private),
        })
    }

    /// Generates an AES-256 key in the token under `label` for sealing (the KEK): sensitive,
    /// non-extractable, for encryption and decryption only.
    pub fn generate_aes(self: &Arc<Self>, label: &str) -> Result<HsmAesKey, HsmError> {
        if self.find_handles(label, ObjectClass::SECRET_KEY)?.is_some() {
            return Err(self.bad_key(label, "already exists; labels are never reused"));
        }
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        self.with_session("generating a key", |s| {
            s.generate_key(&Mechanism::AesKeyGen, &template)
        })?;
        self.find_aes(label)
    }

    /// Finds the AES-256 key labelled `label` and checks it cannot leave the token.
    pub fn find_aes(self: &Arc<Self>, label: &str) -> Result<HsmAesKey, HsmError> {
        let handle = self
            .find_handles(label, ObjectClass::SECRET_KEY)?
            .ok_or_else(|| HsmError::Missing {
                token: self.token.clone(),
                label: label.to_owned(),
            })?;
        let attrs = self.with_session("reading a key's attributes", |s| {
            s.get_attributes(
                handle,
                &[
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
        })?;
        let (mut sensitive, mut extractable) = (false, true);
        for a in &attrs {
            match a {
                Attribute::KeyType(t) if *t != KeyType::AES => {
                    return Err(self.bad_key(label, format!("is of type {t}, not AES")))
                }
                Attribute::ValueLen(n) if u64::from(*n) != 32 => {
                    return Err(self.bad_key(label, "is not a 256-bit AES key"))
                }
                Attribute::Sensitive(v) => sensitive = *v,
                Attribute::Extractable(v) => extractable = *v,
                _ => {}
            }
        }
        self.refuse_extractable(label, sensitive, extractable)?;
        Ok(HsmAesKey {
            hsm: self.clone(),
            label: label.to_owned(),
            handle: CachedHandle::new(self, handle),
        })
    }
}

/// DER of the PrintableString `edwards25519`: how PKCS#11 3.0 also names Ed25519's curve.
const ED25519_NAME: &[u8] = b"\x13\x0cedwards25519";

/// Whether a key's `CKA_EC_PARAMS` names the curve `want`. Ed25519 has two spellings.
fn same_curve(params: &[u8], want: &[u8]) -> bool {
    params == want || (want == ED25519_PARAMS && params == ED25519_NAME)
}

/// An object's handle as last found, valid while the module was not reconnected since.
struct CachedHandle(Mutex<Option<(u64, ObjectHandle)>>);

impl CachedHandle {
    fn new(hsm: &Hsm, handle: ObjectHandle) -> Self {
        Self(Mutex::new(Some((
            hsm.generation.load(Ordering::SeqCst),
            handle,
        ))))
    }

    /// The cached handle, or the object found again by `label` after a reconnection.
    fn get(&self, hsm: &Hsm, label: &str, class: ObjectClass) -> Result<ObjectHandle, HsmError> {
        let generation = hsm.generation.load(Ordering::SeqCst);
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, h)) = *cached {
            if g == generation {
                return Ok(h);
            }
        }
        let h = hsm
            .find_handles(label, class)?
            .ok_or_else(|| HsmError::Missing {
                token: hsm.token.clone(),
                label: label.to_owned(),
            })?;
        *cached = Some((generation, h));
        Ok(h)
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point; some modules return the bare point.
fn unwrap_ec_point(value: &[u8], alg: Alg) -> Option<Vec<u8>> {
    let len = match alg {
        Alg::ES256 => 65,
        Alg::EdDSA => 32,
        Alg::RS256 => return None,
    };
    match value {
        [0x04, l, rest @ ..] if usize::from(*l) == len && rest.len() == len => Some(rest.to_vec()),
        bare if bare.len() == len && (alg != Alg::ES256 || bare.first() == Some(&4)) => {
            Some(bare.to_vec())
        }
        _ => None,
    }
}

fn one_line(e: &impl std::fmt::Display) -> String {
    e.to_string().replace('\n', " ")
}

/// A private key in the token: a label and the handle found for it (re-found after a
/// reconnection).
pub struct HsmKey {
    hsm: Arc<Hsm>,
    label: String,
    alg: Alg,
    /// The point (ES256, uncompressed) or the 32-byte key (EdDSA), as read from the token.
    public: Vec<u8>,
    handle: CachedHandle,
}

impl std::fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmKey")
            .field("token", &self.hsm.token)
            .field("label", &self.label)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl HsmKey {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    pub(crate) fn public_bytes(&self) -> &[u8] {
        &self.public
    }

    fn handle(&self) -> Result<ObjectHandle, HsmError> {
        self.handle
            .get(&self.hsm, &self.label, ObjectClass::PRIVATE_KEY)
    }

    /// The signature over `message`: ES256 as `r || s` (64 bytes, JWS form), EdDSA as 64 bytes.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let handle = self.handle()?;
        match self.alg {
            Alg::EdDSA => {
                // Built per call: a mechanism holds raw pointers, so it is neither Send nor Sync.
                let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                self.hsm
                    .with_session("signing", |s| s.sign(&mechanism, handle, message))
            }
            Alg::ES256 | Alg::RS256 => {
                // CKM_ECDSA over the SHA-256 digest (ring hashes): every module has it, where
                // CKM_ECDSA_SHA256 is optional (SoftHSM 2.6 lacks it).
                let digest = ring::digest::digest(&ring::digest::SHA256, message);
                self.hsm.with_session("signing", |s| {
                    s.sign(&Mechanism::Ecdsa, handle, digest.as_ref())
                })
            }
        }
    }
}

/// An AES-256 key in the token that seals and opens (AES-GCM inside the token).
pub struct HsmAesKey {
    hsm: Arc<Hsm>,
    label: String,
    handle: CachedHandle,
}

impl std::fmt::Debug for HsmAesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmAesKey")
            .field("token", &self.hsm.token)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl HsmAesKey {
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    fn handle(&self) -> Result<ObjectHandle, HsmError> {
        self.handle
            .get(&self.hsm, &self.label, ObjectClass::SECRET_KEY)
    }

    /// AES-256-GCM in the token: `ciphertext || tag` (128-bit tag) under the 12-byte `nonce`.
    pub fn encrypt(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let handle = self.handle()?;
        let mut iv = *nonce;
        self.hsm.with_session("sealing", |s| {
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            s.encrypt(&Mechanism::AesGcm(params), handle, plaintext)
        })
    }

    /// The reverse of [`HsmAesKey::encrypt`]; `Ok(None)` when the tag does not verify (wrong
    /// key, other AAD, changed bytes), an error when the token failed.
    pub fn decrypt(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, HsmError> {
        let handle = self.handle()?;
        let mut iv = *nonce;
        let result = self.hsm.with_session("opening", |s| {
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            match s.decrypt(&Mechanism::AesGcm(params), handle, sealed) {
                Ok(v) => Ok(Some(v)),
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Ok(None),
                Err(e) => Err(e),
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_points_are_unwrapped_only_at_their_size() {
        let mut p256 = vec![4u8; 65];
        p256[1] = 9;
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&p256);
        assert_eq!(unwrap_ec_point(&wrapped, Alg::ES256), Some(p256.clone()));
        assert_eq!(unwrap_ec_point(&p256, Alg::ES256), Some(p256.clone()));
        assert_eq!(unwrap_ec_point(&p256[..64], Alg::ES256), None);
        let ed = [7u8; 32];
        let mut wrapped = vec![0x04, 32];
        wrapped.extend_from_slice(&ed);
        assert_eq!(unwrap_ec_point(&wrapped, Alg::EdDSA), Some(ed.to_vec()));
        assert_eq!(unwrap_ec_point(&wrapped[..20], Alg::EdDSA), None);
        assert_eq!(unwrap_ec_point(&wrapped, Alg::RS256), None);
    }

    #[test]
    fn a_library_that_is_not_a_module_is_named() {
        let err = Hsm::open("/bin/true", "t", "1234", 1).unwrap_err();
        assert!(
            matches!(&err, HsmError::NotAModule { module, .. } if module == "/bin/true"),
            "{err}"
        );
    }
}
