//! The internal identity: who a call to a service is made for, signed by the party that
//! authenticated it, so a service trusts no header it cannot verify.
//!
//! Signatures are Ed25519. The gateway signs with its private key and every service holds only
//! the gateway's public key, so a service (say, a compromised scoring process) can verify
//! identities but never mint one. Scoring's own calls to ingestion are signed with a key of its
//! own that ingestion trusts only as the `scoring-service` principal and only for the two reads
//! scoring makes ([`SCORING_SCOPE`]).
//!
//! What a signature binds:
//! - the **issuer** (which key signed: `gateway` or `scoring`), the **audience** (the service
//!   process the call was sent to; a front accepts only its own name), the RPC **path**;
//! - the **principal** (id, role, department) and its **credential** (the API key's prefix), so
//!   the service can check against its own registry snapshot that the key still stands;
//! - the issue time (accepted for [`WINDOW_MICROS`] either side, for clock skew) and a 128-bit
//!   random **nonce** (each accepted once: per process here, and for calls that change state
//!   across every replica through the store, see the gateway's front);
//! - for every RPC whose request is one message, the SHA-256 of the request body as sent on the
//!   wire (the gRPC frame); the receiver buffers the body and compares before the service sees
//!   it. A client-streaming request (SubmitBatch) is marked `stream`: its messages are not
//!   bound, only everything above (see SECURITY.md).
//!
//! Header: `x-citycredit-identity: v2;<issuer>;<audience>;<principal>;<role>;<department>;
//! <credential>;<issued micros>;<nonce hex>;<body sha-256 hex | stream>;<signature hex>`.
//! The signature covers a domain-separation tag, the path, and every field before it.
//!
//! A **read grant** (`v3`, body field `any`) is the same signature without the per-call parts:
//! it binds issuer, audience, path and principal with its credential, and no request body, and
//! it is good for any number of calls of that one RPC within the window. Only an RPC that reads
//! ([`is_read_only`]) may be called with one: a verifier refuses a grant for any other path.
//! The signer reuses a grant for [`GRANT_REUSE_MICROS`] (the same header value on every such
//! call, which HPACK sends as one index), and a verifier checks its signature once and keeps it
//! ([`MAX_GRANTS`] at most), so a read costs neither a signature nor a verification per call.
//! Calls that change state keep `v2`: one signature, one nonce and the body's digest per call.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

use citycredit_core::auth::{Principal, Role};

/// The header carrying the signed identity.
pub const HEADER: &str = "x-citycredit-identity";
/// How long a signed identity is accepted after it was issued (and how far in the future, for
/// clock skew between hosts).
pub const WINDOW_MICROS: i64 = 30_000_000;
/// Most nonces one process remembers (about 64 bytes each: 32 MiB at the bound); beyond it the
/// oldest are forgotten early and only the window (and, for calls that change state, the
/// store's nonce table) refuses their replay. 500,000 covers the window at 16,000 calls/s.
const MAX_NONCES: usize = 500_000;
/// How long a signer reuses a read grant after issuing it: a third of the window, so a grant
/// reused to the end still has two thirds of its window for the clocks' skew and the call.
pub const GRANT_REUSE_MICROS: i64 = WINDOW_MICROS / 3;
/// Most read grants one [`GrantMemory`] keeps (about 400 bytes each: 1.6 MiB at the bound):
/// about one per (principal, read RPC, audience) every [`GRANT_REUSE_MICROS`].
pub const MAX_GRANTS: usize = 4096;

/// Read grants remembered with their issue time, at most [`MAX_GRANTS`]: the grants a signer
/// reuses, and those a verifier has checked. Full, it drops the entries its caller no longer
/// keeps, and if that frees nothing, all of them (they are made or checked again on next use).
#[derive(Debug)]
pub struct GrantMemory<K, V> {
    entries: Mutex<HashMap<K, (V, i64)>>,
}

impl<K: Eq + std::hash::Hash, V: Clone> Default for GrantMemory<K, V> {
    fn default() -> Self {
        GrantMemory {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + std::hash::Hash, V: Clone> GrantMemory<K, V> {
    /// What is remembered for `key`, with its issue time.
    pub fn get<Q>(&self, key: &Q) -> Option<(V, i64)>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.lock().get(key).cloned()
    }

    /// Remembers `value`, issued at `issued`; `keep(issued)` tells which entries may stay when
    /// the memory is full.
    pub fn insert(&self, key: K, value: V, issued: i64, keep: impl Fn(i64) -> bool) {
        let mut entries = self.lock();
        if entries.len() >= MAX_GRANTS {
            entries.retain(|_, (_, at)| keep(*at));
            if entries.len() >= MAX_GRANTS {
                entries.clear();
            }
        }
        entries.insert(key, (value, issued));
    }

    /// How many are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, i64)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
/// RPC methods that only read (by name prefix). Every other method changes state: it is signed
/// per call and, in a split deployment, has its nonce claimed in the store. A new RPC is
/// guarded until someone decides it only reads.
const READ_ONLY_PREFIXES: &[&str] = &[
    "Get",
    "BatchGet",
    "List",
    "Query",
    "Watch",
    "Explain",
    "WhatIf",
    "Compare",
    "Verify",
    "AuditCodes",
];

/// True when the RPC at `path` (`/package.Service/Method`) only reads.
pub fn is_read_only(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    READ_ONLY_PREFIXES.iter().any(|p| method.starts_with(p))
}

/// Separates these signatures from anything else the keys might ever sign.
const SIGNING_CONTEXT: &str = "citycredit-internal-identity";
/// The principal scoring acts as towards ingestion.
pub const SCORING_PRINCIPAL: &str = "scoring-service";
/// The only RPCs ingestion accepts with scoring's key.
pub const SCORING_SCOPE: &[&str] = &[
    "/citycredit.v1.MetricSubmissionService/QueryAggregates",
    "/citycredit.v1.MetricSubmissionService/WatchChanges",
];

/// Who signed an identity, and so which public key verifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Issuer {
    /// The gateway: any principal that authenticated with an API key.
    Gateway,
    /// The scoring service: only itself ([`SCORING_PRINCIPAL`]), only towards ingestion, only
    /// for [`SCORING_SCOPE`].
    Scoring,
}

impl Issuer {
    pub fn as_str(self) -> &'static str {
        match self {
            Issuer::Gateway => "gateway",
            Issuer::Scoring => "scoring",
        }
    }

    fn parse(s: &str) -> Option<Issuer> {
        match s {
            "gateway" => Some(Issuer::Gateway),
            "scoring" => Some(Issuer::Scoring),
            _ => None,
        }
    }
}

/// The service process a call is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// DepartmentRegistryService and ReviewService.
    Registry,
    /// MetricSubmissionService and CodeAuditService.
    Ingestion,
    /// ScoringService, IndicatorService and NotificationService.
    Scoring,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Registry => "registry",
            Audience::Ingestion => "ingestion",
            Audience::Scoring => "scoring",
        }
    }

    fn parse(s: &str) -> Option<Audience> {
        match s {
            "registry" => Some(Audience::Registry),
            "ingestion" => Some(Audience::Ingestion),
            "scoring" => Some(Audience::Scoring),
            _ => None,
        }
    }

    /// The audience that serves a gRPC path (`/citycredit.v1.X/Method`).
    pub fn of_path(path: &str) -> Option<Audience> {
        use crate::proto::v1::{
            code_audit_service_server, department_registry_service_server,
            indicator_service_server, metric_submission_service_server,
            notification_service_server, review_service_server, scoring_service_server,
        };
        let service = path.strip_prefix('/')?.split('/').next()?;
        match service {
            // The review service runs in the registry's process (README "The review cycle").
            department_registry_service_server::SERVICE_NAME
            | review_service_server::SERVICE_NAME => Some(Audience::Registry),
            metric_submission_service_server::SERVICE_NAME
            | code_audit_service_server::SERVICE_NAME => Some(Audience::Ingestion),
            // The notifier runs beside scoring (mode `all`) and reads its outcomes.
            scoring_service_server::SERVICE_NAME
            | indicator_service_server::SERVICE_NAME
            | notification_service_server::SERVICE_NAME => Some(Audience::Scoring),
            _ => None,
        }
    }
}

/// What a signature says about the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyBinding {
    /// SHA-256 of the whole request body as sent (one gRPC frame).
    Digest([u8; 32]),
    /// A client stream: the messages are not bound.
    Stream,
    /// A read grant (`v3`): no request body is bound; only for RPCs that read.
    Unbound,
}

impl BodyBinding {
    /// The binding of a buffered request body.
    pub fn of(body: &[u8]) -> BodyBinding {
        BodyBinding::Digest(Sha256::digest(body).into())
    }

    /// The binding of a unary request carrying `message` (uncompressed, as tonic sends it: a
    /// zero flag byte, the length as 4 bytes big-endian, the encoded message).
    pub fn of_message<M: prost::Message>(message: &M) -> BodyBinding {
        let encoded = message.encode_to_vec();
        let mut hasher = Sha256::new();
        hasher.update([0u8]);
        hasher.update(
            u32::try_from(encoded.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        hasher.update(&encoded);
        BodyBinding::Digest(hasher.finalize().into())
    }

    fn encode(self) -> String {
        match self {
            BodyBinding::Digest(d) => hex::encode(d),
            BodyBinding::Stream => "stream".to_owned(),
            BodyBinding::Unbound => "any".to_owned(),
        }
    }

    fn parse(s: &str) -> Option<BodyBinding> {
        if s == "stream" {
            return Some(BodyBinding::Stream);
        }
        if s == "any" {
            return Some(BodyBinding::Unbound);
        }
        let mut d = [0u8; 32];
        hex::decode_to_slice(s, &mut d).ok()?;
        Some(BodyBinding::Digest(d))
    }
}

/// Why an internal identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("malformed internal identity")]
    Malformed,
    #[error("internal identity signed by `{0}`, whose key this service does not hold")]
    UnknownIssuer(&'static str),
    #[error("internal identity signature does not verify")]
    BadSignature,
    #[error("internal identity is for `{0}`, not this service")]
    WrongAudience(&'static str),
    #[error("internal identity expired or from the future")]
    Stale,
    #[error("internal identity replayed")]
    Replayed,
    #[error("scoring's key may not sign this call")]
    OutOfScope,
    #[error("a read grant cannot carry a call that changes state")]
    GrantForChange,
}

/// An identity that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub issuer: Issuer,
    pub principal: Principal,
    pub issued_micros: i64,
    /// The nonce, hex: the key of the store's replay guard.
    pub nonce: String,
    pub body: BodyBinding,
}

fn field_ok(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() && b != b';')
}

fn signed_message(path: &str, fields: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + path.len() + fields.len() + 2);
    m.extend_from_slice(SIGNING_CONTEXT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(fields.as_bytes());
    m
}

/// Why key material cannot be used. Messages say how to make a good key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "not an Ed25519 {what}: expected one line of 64 hex digits; make keys with `citycredit keys generate --out DIR`"
    )]
    Malformed { what: &'static str },
    #[error(
        "this {what} is a placeholder or has too little entropy; make keys with `citycredit keys generate --out DIR`"
    )]
    Weak { what: &'static str },
}

/// Reads 32 bytes from key text: one line of 64 hex digits (lines starting with `#` and blank
/// lines are ignored).
fn key_bytes(text: &str, what: &'static str) -> Result<[u8; 32], KeyError> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return Err(KeyError::Malformed { what });
    };
    if citycredit_core::auth::secrets::is_placeholder(line) {
        return Err(KeyError::Weak { what });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(line, &mut out).map_err(|_| KeyError::Malformed { what })?;
    // 32 random bytes hold about 30 distinct values; fewer than 16 is a pattern, not a key.
    let distinct = out.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 16 {
        return Err(KeyError::Weak { what });
    }
    Ok(out)
}

/// Parses a public key file's text (see [`IdentitySigner::public_key_text`]).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let what = "public key";
    let bytes = key_bytes(text, what)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Malformed { what })?;
    if key.is_weak() {
        return Err(KeyError::Weak { what });
    }
    Ok(key)
}

/// Signs identities with one issuer's private key.
pub struct IdentitySigner {
    issuer: Issuer,
    key: SigningKey,
}

impl fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentitySigner({})", self.issuer.as_str())
    }
}

impl IdentitySigner {
    /// A fresh random key (everything in one process: it never leaves memory).
    pub fn generate(issuer: Issuer) -> IdentitySigner {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        IdentitySigner { issuer, key }
    }

    /// A signer from a private key file's text (64 hex digits: the Ed25519 seed).
    pub fn from_text(issuer: Issuer, text: &str) -> Result<IdentitySigner, KeyError> {
        let mut seed = key_bytes(text, "private key")?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(IdentitySigner { issuer, key })
    }

    pub fn issuer(&self) -> Issuer {
        self.issuer
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The private key file's text.
    pub fn private_key_text(&self) -> String {
        format!(
            "# citycredit {} identity signing key (Ed25519 seed). Secret: only the {} holds it.\n{}\n",
            self.issuer.as_str(),
            self.issuer.as_str(),
            hex::encode(self.key.to_bytes())
        )
    }

    /// The public key file's text.
    pub fn public_key_text(&self) -> String {
        format!(
            "# citycredit {} identity public key (Ed25519). Services verify with it.\n{}\n",
            self.issuer.as_str(),
            hex::encode(self.public_key().to_bytes())
        )
    }

    /// The header value for `principal` calling `path` on `audience` at `now_micros`, binding
    /// `body`. None when the principal's fields cannot be carried (never for registry-made ids).
    pub fn sign(
        &self,
        principal: &Principal,
        audience: Audience,
        path: &str,
        body: BodyBinding,
        now_micros: i64,
    ) -> Option<String> {
        if body == BodyBinding::Unbound {
            // Only `grant` makes these (v3), and only for reads.
            return None;
        }
        self.signed("v2", principal, audience, path, body, now_micros)
    }

    /// A read grant (`v3`) for `principal` calling `path` on `audience`, issued at
    /// `now_micros`: good for any number of calls of `path` within the window, with any request.
    /// None for an RPC that changes state ([`is_read_only`]), or when the principal's fields
    /// cannot be carried.
    pub fn grant(
        &self,
        principal: &Principal,
        audience: Audience,
        path: &str,
        now_micros: i64,
    ) -> Option<String> {
        if !is_read_only(path) {
            return None;
        }
        self.signed(
            "v3",
            principal,
            audience,
            path,
            BodyBinding::Unbound,
            now_micros,
        )
    }

    fn signed(
        &self,
        version: &str,
        principal: &Principal,
        audience: Audience,
        path: &str,
        body: BodyBinding,
        now_micros: i64,
    ) -> Option<String> {
        let dept = principal.department.as_deref().unwrap_or("");
        let credential = principal.credential.as_deref().unwrap_or("");
        if principal.id.is_empty()
            || !field_ok(&principal.id)
            || !field_ok(dept)
            || !field_ok(credential)
        {
            return None;
        }
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let fields = format!(
            "{version};{};{};{};{};{dept};{credential};{now_micros};{};{}",
            self.issuer.as_str(),
            audience.as_str(),
            principal.id,
            principal.role.as_str(),
            hex::encode(nonce),
            body.encode(),
        );
        let signature = self.key.sign(&signed_message(path, &fields));
        Some(format!("{fields};{}", hex::encode(signature.to_bytes())))
    }
}

/// Verifies identities for one audience with the public keys it trusts.
pub struct IdentityVerifier {
    audience: Audience,
    gateway: VerifyingKey,
    scoring: Option<VerifyingKey>,
    seen: Mutex<Seen>,
    /// Read grants that verified: header value -> (path, identity).
    grants: GrantMemory<String, (String, Verified)>,
}

impl fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityVerifier({})", self.audience.as_str())
    }
}

#[derive(Default)]
struct Seen {
    nonces: HashMap<u128, i64>,
    order: VecDeque<(i64, u128)>,
}

impl IdentityVerifier {
    /// A verifier for `audience` trusting the gateway's key and, for ingestion, scoring's.
    pub fn new(
        audience: Audience,
        gateway: VerifyingKey,
        scoring: Option<VerifyingKey>,
    ) -> IdentityVerifier {
        IdentityVerifier {
            audience,
            gateway,
            // Only ingestion has anything to give scoring.
            scoring: scoring.filter(|_| audience == Audience::Ingestion),
            seen: Mutex::new(Seen::default()),
            grants: GrantMemory::default(),
        }
    }

    pub fn audience(&self) -> Audience {
        self.audience
    }

    /// The identity in header `value` for a call of `path` at `now_micros`: signature, issuer
    /// scope, audience, window, and once per nonce in this process; a read grant (`v3`) only
    /// for a path that reads, its signature checked on its first use and remembered.
    pub fn verify(
        &self,
        value: &str,
        path: &str,
        now_micros: i64,
    ) -> Result<Verified, IdentityError> {
        if !value.starts_with("v3;") {
            return self.verify_signed(value, path, now_micros);
        }
        if !is_read_only(path) {
            return Err(IdentityError::GrantForChange);
        }
        let known = self
            .grants
            .get(value)
            .filter(|((p, _), _)| p == path)
            .map(|((_, v), _)| v);
        if let Some(v) = known {
            if now_micros.abs_diff(v.issued_micros) > WINDOW_MICROS.unsigned_abs() {
                return Err(IdentityError::Stale);
            }
            return Ok(v);
        }
        let v = self.verify_signed(value, path, now_micros)?;
        self.grants.insert(
            value.to_owned(),
            (path.to_owned(), v.clone()),
            v.issued_micros,
            |issued| now_micros.abs_diff(issued) <= WINDOW_MICROS.unsigned_abs(),
        );
        Ok(v)
    }

    /// Everything but the read grants' memory: a grant's signature is checked here like any.
    fn verify_signed(
        &self,
        value: &str,
        path: &str,
        now_micros: i64,
    ) -> Result<Verified, IdentityError> {
        let (fields, sig_hex) = value.rsplit_once(';').ok_or(IdentityError::Malformed)?;
        let parts: Vec<&str> = fields.split(';').collect();
        let [
            version,
            issuer,
            audience,
            id,
            role,
            dept,
            credential,
            issued,
            nonce,
            body,
        ] = parts.as_slice()
        else {
            return Err(IdentityError::Malformed);
        };
        let grant = match *version {
            "v2" => false,
            "v3" => true,
            _ => return Err(IdentityError::Malformed),
        };
        let issuer = Issuer::parse(issuer).ok_or(IdentityError::Malformed)?;
        let key = match issuer {
            Issuer::Gateway => &self.gateway,
            Issuer::Scoring => self
                .scoring
                .as_ref()
                .ok_or(IdentityError::UnknownIssuer(issuer.as_str()))?,
        };
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_hex, &mut sig).map_err(|_| IdentityError::Malformed)?;
        key.verify_strict(&signed_message(path, fields), &Signature::from_bytes(&sig))
            .map_err(|_| IdentityError::BadSignature)?;

        // Signed by a key we trust: now what it says.
        let audience = Audience::parse(audience).ok_or(IdentityError::Malformed)?;
        if audience != self.audience {
            return Err(IdentityError::WrongAudience(audience.as_str()));
        }
        let role = Role::parse(role).ok_or(IdentityError::Malformed)?;
        let principal = Principal {
            id: (*id).to_owned(),
            role,
            department: (!dept.is_empty()).then(|| (*dept).to_owned()),
            credential: (!credential.is_empty()).then(|| (*credential).to_owned()),
        };
        if issuer == Issuer::Scoring
            && !(principal.id == SCORING_PRINCIPAL
                && principal.role == Role::Operator
                && principal.department.is_none()
                && principal.credential.is_none()
                && SCORING_SCOPE.contains(&path))
        {
            return Err(IdentityError::OutOfScope);
        }
        let issued: i64 = issued.parse().map_err(|_| IdentityError::Malformed)?;
        if now_micros.abs_diff(issued) > WINDOW_MICROS.unsigned_abs() {
            return Err(IdentityError::Stale);
        }
        let body = BodyBinding::parse(body).ok_or(IdentityError::Malformed)?;
        // A grant binds no body, and every other identity binds one.
        if grant != (body == BodyBinding::Unbound) {
            return Err(IdentityError::Malformed);
        }
        // Exactly 32 lowercase hex digits: one spelling per nonce (from_str_radix alone would
        // also take a sign).
        if nonce.len() != 32
            || !nonce
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(IdentityError::Malformed);
        }
        let nonce_value = u128::from_str_radix(nonce, 16).map_err(|_| IdentityError::Malformed)?;
        // A grant is for many calls: its nonce only tells grants apart.
        if !grant {
            self.remember(nonce_value, issued, now_micros)?;
        }
        Ok(Verified {
            issuer,
            principal,
            issued_micros: issued,
            nonce: (*nonce).to_owned(),
            body,
        })
    }

    fn remember(&self, nonce: u128, issued: i64, now: i64) -> Result<(), IdentityError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(&(at, n)) = seen.order.front() {
            if now - at > 2 * WINDOW_MICROS || seen.order.len() >= MAX_NONCES {
                seen.order.pop_front();
                seen.nonces.remove(&n);
            } else {
                break;
            }
        }
        if seen.nonces.insert(nonce, issued).is_some() {
            return Err(IdentityError::Replayed);
        }
        seen.order.push_back((issued, nonce));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/citycredit.v1.MetricSubmissionService/SubmitValue";
    const T: i64 = 1_000_000_000;

    fn principal() -> Principal {
        Principal {
            id: "samr-system".into(),
            role: Role::Department,
            department: Some("samr".into()),
            credential: Some("cc_0badc0de".into()),
        }
    }

    fn scoring_principal() -> Principal {
        Principal {
            id: SCORING_PRINCIPAL.into(),
            role: Role::Operator,
            department: None,
            credential: None,
        }
    }

    fn body() -> BodyBinding {
        BodyBinding::of(b"\0\0\0\0\x02hi")
    }

    #[test]
    fn signed_identities_verify_once_for_their_path_audience_body_and_window() {
        let gateway = IdentitySigner::generate(Issuer::Gateway);
        let ingestion = IdentityVerifier::new(Audience::Ingestion, gateway.public_key(), None);
        let h = gateway
            .sign(&principal(), Audience::Ingestion, PATH, body(), T)
            .unwrap_or_default();
        let v = ingestion
            .verify(&h, PATH, T + 500)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.principal, principal(), "the credential travels too");
        assert_eq!(v.body, body());
        assert_eq!(v.issuer, Issuer::Gateway);
        assert_eq!(
            ingestion.verify(&h, PATH, T + 600),
            Err(IdentityError::Replayed)
        );

        let sign = || {
            gateway
                .sign(&principal(), Audience::Ingestion, PATH, body(), T)
                .unwrap_or_default()
        };
        // Another RPC path, a later time, another audience.
        assert_eq!(
            ingestion.verify(
                &sign(),
                "/citycredit.v1.MetricSubmissionService/RetractSubmission",
                T
            ),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            ingestion.verify(&sign(), PATH, T + WINDOW_MICROS + 1),
            Err(IdentityError::Stale)
        );
        let registry = IdentityVerifier::new(Audience::Registry, gateway.public_key(), None);
        assert_eq!(
            registry.verify(&sign(), PATH, T),
            Err(IdentityError::WrongAudience("ingestion"))
        );
        // Any edited field (role, body digest, credential) breaks the signature.
        for (from, to) in [
            (";department;", ";admin;"),
            (";cc_0badc0de;", ";cc_0badc0df;"),
        ] {
            let edited = sign().replacen(from, to, 1);
            assert_eq!(
                ingestion.verify(&edited, PATH, T),
                Err(IdentityError::BadSignature),
                "{from}"
            );
        }
        let other_body = sign().replacen(
            &body().encode(),
            &BodyBinding::of(b"\0\0\0\0\x02ho").encode(),
            1,
        );
        assert_eq!(
            ingestion.verify(&other_body, PATH, T),
            Err(IdentityError::BadSignature)
        );
        // A key the service does not trust.
        let stranger = IdentitySigner::generate(Issuer::Gateway);
        let h = stranger
            .sign(&principal(), Audience::Ingestion, PATH, body(), T)
            .unwrap_or_default();
        assert_eq!(
            ingestion.verify(&h, PATH, T),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            ingestion.verify("v2;gateway;ingestion;a;admin;;;5;00;stream;zz", PATH, 5),
            Err(IdentityError::Malformed)
        );
        assert_eq!(
            ingestion.verify("v1;admin;admin;;5;00;00", PATH, 5),
            Err(IdentityError::Malformed)
        );
    }

    #[test]
    fn a_read_grant_serves_many_calls_of_its_one_read_within_its_window() {
        let gateway = IdentitySigner::generate(Issuer::Gateway);
        let scoring = IdentityVerifier::new(Audience::Scoring, gateway.public_key(), None);
        let read = "/citycredit.v1.IndicatorService/GetCatalog";
        let other_read = "/citycredit.v1.IndicatorService/ListIndicators";
        let g = gateway
            .grant(&principal(), Audience::Scoring, read, T)
            .unwrap_or_default();
        // Many calls, the signature checked on the first only: the same identity each time.
        for k in 0..3 {
            let v = scoring
                .verify(&g, read, T + k)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v.principal, principal());
            assert_eq!(v.body, BodyBinding::Unbound);
        }
        // Another read, after the window (remembered or not), another audience.
        assert_eq!(
            scoring.verify(&g, other_read, T),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            scoring.verify(&g, read, T + WINDOW_MICROS + 1),
            Err(IdentityError::Stale)
        );
        let ingestion = IdentityVerifier::new(Audience::Ingestion, gateway.public_key(), None);
        assert_eq!(
            ingestion.verify(&g, read, T),
            Err(IdentityError::WrongAudience("scoring"))
        );
        // Never for a call that changes state: not made, and not accepted if made.
        assert_eq!(
            gateway.grant(&principal(), Audience::Ingestion, PATH, T),
            None
        );
        assert_eq!(
            gateway.sign(
                &principal(),
                Audience::Ingestion,
                PATH,
                BodyBinding::Unbound,
                T
            ),
            None
        );
        let forced = gateway
            .signed(
                "v3",
                &principal(),
                Audience::Ingestion,
                PATH,
                BodyBinding::Unbound,
                T,
            )
            .unwrap_or_default();
        assert_eq!(
            ingestion.verify(&forced, PATH, T),
            Err(IdentityError::GrantForChange)
        );
        // A per-call identity turned into a grant (or the reverse) does not verify or parse.
        let per_call = gateway
            .sign(&principal(), Audience::Scoring, read, body(), T)
            .unwrap_or_default();
        assert_eq!(
            scoring.verify(&per_call.replacen("v2;", "v3;", 1), read, T),
            Err(IdentityError::BadSignature)
        );
        let unbound_v2 = gateway
            .signed(
                "v2",
                &principal(),
                Audience::Scoring,
                read,
                BodyBinding::Unbound,
                T,
            )
            .unwrap_or_default();
        assert_eq!(
            scoring.verify(&unbound_v2, read, T),
            Err(IdentityError::Malformed)
        );
        // The memory is bounded: beyond MAX_GRANTS, grants verify again and still pass.
        for k in 0..=i64::try_from(MAX_GRANTS).unwrap_or(0) {
            let g = gateway
                .grant(&principal(), Audience::Scoring, read, T + k)
                .unwrap_or_default();
            assert!(scoring.verify(&g, read, T + k).is_ok());
        }
        let kept = scoring.grants.len();
        assert!(kept <= MAX_GRANTS, "{kept}");
    }

    #[test]
    fn scorings_key_is_good_only_for_its_own_reads_on_ingestion() {
        let gateway = IdentitySigner::generate(Issuer::Gateway);
        let scoring = IdentitySigner::generate(Issuer::Scoring);
        let ingestion = IdentityVerifier::new(
            Audience::Ingestion,
            gateway.public_key(),
            Some(scoring.public_key()),
        );
        let read = SCORING_SCOPE[0];
        let h = scoring
            .sign(&scoring_principal(), Audience::Ingestion, read, body(), T)
            .unwrap_or_default();
        assert!(ingestion.verify(&h, read, T).is_ok());

        let admin = Principal {
            id: "admin".into(),
            role: Role::Admin,
            department: None,
            credential: Some("cc_bootstrap".into()),
        };
        for (who, path) in [(&admin, read), (&scoring_principal(), PATH)] {
            let h = scoring
                .sign(who, Audience::Ingestion, path, body(), T)
                .unwrap_or_default();
            assert_eq!(
                ingestion.verify(&h, path, T),
                Err(IdentityError::OutOfScope)
            );
        }
        // The registry and scoring do not even hold scoring's key.
        let registry = IdentityVerifier::new(
            Audience::Registry,
            gateway.public_key(),
            Some(scoring.public_key()),
        );
        let path = "/citycredit.v1.DepartmentRegistryService/CreateApiKey";
        let h = scoring
            .sign(&admin, Audience::Registry, path, body(), T)
            .unwrap_or_default();
        assert_eq!(
            registry.verify(&h, path, T),
            Err(IdentityError::UnknownIssuer("scoring"))
        );
        // Scoring's key passed off as the gateway's does not verify either.
        let forged = h.replacen("v2;scoring;", "v2;gateway;", 1);
        assert_eq!(
            registry.verify(&forged, path, T),
            Err(IdentityError::BadSignature)
        );
    }

    #[test]
    fn key_files_round_trip_and_weak_keys_are_refused() {
        let signer = IdentitySigner::generate(Issuer::Scoring);
        let again = IdentitySigner::from_text(Issuer::Scoring, &signer.private_key_text())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public_key(), signer.public_key());
        assert_eq!(
            parse_public_key(&signer.public_key_text()).ok(),
            Some(signer.public_key())
        );
        for weak in [
            "0".repeat(64),
            "0102".repeat(16),
            "CHANGE-ME-to-a-key".to_owned(),
        ] {
            assert!(
                matches!(
                    IdentitySigner::from_text(Issuer::Gateway, &weak),
                    Err(KeyError::Weak { .. })
                ),
                "{weak}"
            );
        }
        for malformed in ["", "abc", "zz".repeat(32).as_str(), "00\n11"] {
            assert!(
                matches!(
                    IdentitySigner::from_text(Issuer::Gateway, malformed),
                    Err(KeyError::Malformed { .. })
                ),
                "{malformed}"
            );
        }
    }

    #[test]
    fn unary_message_binding_is_the_grpc_frame() {
        let msg = crate::proto::v1::GetCatalogRequest {};
        assert_eq!(
            BodyBinding::of_message(&msg),
            BodyBinding::of(&[0, 0, 0, 0, 0])
        );
    }

    /// The per-call cost of the identity: one signature at the gateway, one verification (and
    /// the body digest of a 1 KiB request) at the service. Prints ns/op; run with
    /// `cargo test --release -p citycredit --lib identity_cost -- --nocapture` for the figure.
    #[test]
    fn identity_cost_is_small() {
        let gateway = IdentitySigner::generate(Issuer::Gateway);
        let verifier = IdentityVerifier::new(Audience::Ingestion, gateway.public_key(), None);
        let request = vec![7u8; 1024];
        let n: u32 = 2000;
        let start = std::time::Instant::now();
        let headers: Vec<String> = (0..n)
            .map(|i| {
                gateway
                    .sign(
                        &principal(),
                        Audience::Ingestion,
                        PATH,
                        BodyBinding::of(&request),
                        T + i64::from(i),
                    )
                    .unwrap_or_default()
            })
            .collect();
        let sign = start.elapsed() / n;
        let start = std::time::Instant::now();
        for (i, h) in headers.iter().enumerate() {
            let v = verifier.verify(h, PATH, T + i64::try_from(i).unwrap_or(0));
            assert_eq!(v.map(|v| v.body), Ok(BodyBinding::of(&request)));
        }
        let verify = start.elapsed() / n;
        // A read grant: signed once, checked once, then remembered.
        let read = "/citycredit.v1.IndicatorService/GetCatalog";
        let granted = IdentityVerifier::new(Audience::Scoring, gateway.public_key(), None);
        let g = gateway
            .grant(&principal(), Audience::Scoring, read, T)
            .unwrap_or_default();
        let start = std::time::Instant::now();
        for i in 0..n {
            assert!(granted.verify(&g, read, T + i64::from(i)).is_ok());
        }
        let reuse = start.elapsed() / n;
        eprintln!(
            "internal identity: sign {} ns/op, verify {} ns/op (1 KiB body digest included in both); \
             a read grant used again: {} ns/op",
            sign.as_nanos(),
            verify.as_nanos(),
            reuse.as_nanos()
        );
        // Generous for debug builds; the release figure is in SECURITY.md.
        assert!(
            sign + verify < std::time::Duration::from_millis(2),
            "{sign:?} + {verify:?}"
        );
    }
}
