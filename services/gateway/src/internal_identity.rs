//! The gateway's side of the internal identity (see `citycredit::auth::identity`), and what the
//! service front shares with it:
//!
//! - [`EdgeSigner`]: step 6 of the gateway. It signs the principal for the upstream's audience
//!   with the SHA-256 of the request body of every RPC whose request is one message and that
//!   changes state; the edge has read that body whole already (within the byte budget) and
//!   hashed it as it arrived, so the body is buffered once and read once. Client streams
//!   (SubmitBatch) are signed as `stream`. An RPC that only reads carries a read grant
//!   (`citycredit::auth::identity`, `v3`) for the principal and that RPC, made once and reused
//!   for `GRANT_REUSE_MICROS`: no signature per call, and a header value HPACK indexes.
//! - [`read_body`]: the bounded buffering of the service front.
//! - [`SharedNonces`]: the replay guard every replica of a service shares through the store. A
//!   front claims the nonce of every call that changes state (`INSERT ... ON CONFLICT DO
//!   NOTHING` on `identity_nonces`); a second claim, from any replica, is a replay. Reads are
//!   guarded per process only: replaying one yields the answer the original caller got, to an
//!   attacker who (without mTLS) already saw it on the wire.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tonic::Code;

pub use citycredit::auth::identity::is_read_only;
use citycredit::auth::identity::{
    Audience, BodyBinding, GRANT_REUSE_MICROS, GrantMemory, IdentitySigner, Issuer, WINDOW_MICROS,
};
use citycredit::status::{Reason, with_reason};
use citycredit_core::auth::Principal;
use citycredit_store::{Db, StoreError};

use crate::rpc_table::parse_grpc_timeout;
use crate::upstream::Body;

/// How long a request body may take to arrive when the call carries no deadline.
pub const BODY_WAIT: Duration = Duration::from_secs(30);
/// The gRPC frame header before each message: a flag byte and a 4-byte length.
const FRAME_HEADER: usize = 5;

/// Buffers a request body of at most `max_message` bytes (one gRPC message and its frame
/// header) within `wait`. The refusal is a ready gRPC answer.
pub async fn read_body(
    body: Body,
    max_message: usize,
    wait: Duration,
) -> Result<Bytes, http::Response<Body>> {
    let limit = max_message.saturating_add(FRAME_HEADER);
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(wait, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(with_reason(
            Code::OutOfRange,
            Reason::MessageTooLarge,
            format!("the request message is larger than {max_message} bytes"),
            &[],
        )
        .into_http()),
        Ok(Err(_)) => Err(with_reason(
            Code::Cancelled,
            Reason::RequestStreamBroken,
            "the request body ended before it was complete",
            &[],
        )
        .into_http()),
        Err(_) => Err(with_reason(
            Code::DeadlineExceeded,
            Reason::RequestReadTimeout,
            format!(
                "the request body did not arrive within {} ms",
                wait.as_millis()
            ),
            &[],
        )
        .into_http()),
    }
}

/// How long to wait for a request body: the call's deadline, else [`BODY_WAIT`].
pub fn body_wait(headers: &http::HeaderMap) -> Duration {
    headers
        .get(crate::headers::GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(BODY_WAIT, |d| d.min(BODY_WAIT))
}

/// Signs callers' identities for the upstreams (the gateway's private key).
pub struct EdgeSigner {
    signer: IdentitySigner,
    /// The read grants in use: (principal, path) -> header.
    grants: GrantMemory<GrantKey, http::HeaderValue>,
    /// Whether reads carry grants (`gateway.read_grants`); off, every call is signed.
    read_grants: bool,
}

impl std::fmt::Debug for EdgeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeSigner")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl EdgeSigner {
    /// A signer with the gateway's key; `read_grants`: reads carry reused read grants.
    pub fn new(signer: IdentitySigner, read_grants: bool) -> EdgeSigner {
        debug_assert_eq!(signer.issuer(), Issuer::Gateway);
        EdgeSigner {
            signer,
            grants: GrantMemory::default(),
            read_grants,
        }
    }

    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signer.public_key()
    }

    /// Adds the signed identity of `principal` for `path`'s service to `headers`, bound to the
    /// request body by `body` (its digest, for an RPC whose request is one message; `Stream`
    /// for a client stream); or why it cannot (a bug: the gateway answers INTERNAL).
    pub fn sign(
        &self,
        principal: &Principal,
        path: &str,
        body: BodyBinding,
        headers: &mut http::HeaderMap,
        now_micros: i64,
    ) -> Result<(), &'static str> {
        let audience =
            Audience::of_path(path).ok_or("no service to pass the caller's identity to")?;
        if self.read_grants && matches!(body, BodyBinding::Digest(_)) && is_read_only(path) {
            let header = self.grant(principal, audience, path, now_micros)?;
            headers.insert(crate::headers::IDENTITY, header);
            return Ok(());
        }
        let header = self
            .signer
            .sign(principal, audience, path, body, now_micros)
            .and_then(|h| http::HeaderValue::from_str(&h).ok())
            .ok_or("cannot pass the caller's identity on")?;
        headers.insert(crate::headers::IDENTITY, header);
        Ok(())
    }
}

impl EdgeSigner {
    /// The read grant of `principal` for `path`: the one in use while younger than
    /// `GRANT_REUSE_MICROS`, else a new one.
    fn grant(
        &self,
        principal: &Principal,
        audience: Audience,
        path: &str,
        now_micros: i64,
    ) -> Result<http::HeaderValue, &'static str> {
        let fresh = |issued: i64| (0..GRANT_REUSE_MICROS).contains(&(now_micros - issued));
        // Looked up by reference: a call whose grant is in use copies nothing.
        if let Some((header, issued)) = self.grants.get(&(principal, path) as &dyn GrantKeyView)
            && fresh(issued)
        {
            return Ok(header);
        }
        let header = self
            .signer
            .grant(principal, audience, path, now_micros)
            .and_then(|h| http::HeaderValue::from_str(&h).ok())
            .ok_or("cannot pass the caller's identity on")?;
        let key = GrantKey {
            principal: principal.clone(),
            path: path.to_owned(),
        };
        self.grants.insert(key, header.clone(), now_micros, fresh);
        Ok(header)
    }
}

/// What a read grant is remembered under: the principal and the RPC's path.
#[derive(Debug, PartialEq, Eq)]
struct GrantKey {
    principal: Principal,
    path: String,
}

/// A grant's key as borrowed parts, so that a look-up needs no owned [`GrantKey`] (the map
/// finds a `GrantKey` by any `dyn GrantKeyView`: they hash and compare alike).
trait GrantKeyView {
    fn principal(&self) -> &Principal;
    fn path(&self) -> &str;
}

impl GrantKeyView for GrantKey {
    fn principal(&self) -> &Principal {
        &self.principal
    }
    fn path(&self) -> &str {
        &self.path
    }
}

impl GrantKeyView for (&Principal, &str) {
    fn principal(&self) -> &Principal {
        self.0
    }
    fn path(&self) -> &str {
        self.1
    }
}

impl std::hash::Hash for dyn GrantKeyView + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.principal().hash(state);
        self.path().hash(state);
    }
}

impl PartialEq for dyn GrantKeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.principal() == other.principal() && self.path() == other.path()
    }
}

impl Eq for dyn GrantKeyView + '_ {}

impl std::hash::Hash for GrantKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self as &dyn GrantKeyView).hash(state);
    }
}

impl<'a> std::borrow::Borrow<dyn GrantKeyView + 'a> for GrantKey {
    fn borrow(&self) -> &(dyn GrantKeyView + 'a) {
        self
    }
}

/// The store's nonce table: one claim per nonce across every replica.
#[derive(Clone, Debug)]
pub struct SharedNonces {
    db: Db,
}

/// How often claimed nonces past their window are deleted.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

impl SharedNonces {
    pub fn new(db: Db) -> SharedNonces {
        SharedNonces { db }
    }

    /// Claims `nonce` (issued at `issued_micros`); false when it was claimed before.
    pub async fn claim(&self, nonce: &str, issued_micros: i64) -> Result<bool, StoreError> {
        // Kept for two windows after issue: a replica whose clock lags by up to a window still
        // finds it.
        let expire = issued_micros.saturating_add(2 * WINDOW_MICROS);
        let done = sqlx::query(
            "INSERT INTO identity_nonces (nonce, expire_micros) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(expire)
        .execute(&self.db.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes nonces whose window has passed; returns how many.
    pub async fn prune(&self, now_micros: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM identity_nonces WHERE expire_micros < $1")
            .bind(now_micros)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Prunes every [`PRUNE_EVERY`] while the process runs.
    pub fn spawn_pruning(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.prune(citycredit_store::now_micros()).await {
                    tracing::warn!(error = %e, "pruning identity nonces failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc_table::RpcTable;
    use citycredit::auth::identity::HEADER;

    #[test]
    fn reads_reuse_one_grant_per_principal_and_changes_are_signed_per_call() {
        let signer = EdgeSigner::new(IdentitySigner::generate(Issuer::Gateway), true);
        let who = |id: &str| Principal {
            id: id.to_owned(),
            role: citycredit_core::auth::Role::Operator,
            department: None,
            credential: Some("cc_0badc0de".to_owned()),
        };
        let header = |p: &Principal, path: &str, now: i64| {
            let mut h = http::HeaderMap::new();
            let signed = signer.sign(p, path, BodyBinding::of(b"x"), &mut h, now);
            assert_eq!(signed, Ok(()));
            h.get(HEADER)
                .cloned()
                .unwrap_or_else(|| panic!("no header"))
        };
        let read = "/citycredit.v1.IndicatorService/GetCatalog";
        let change = "/citycredit.v1.MetricSubmissionService/SubmitValue";
        let t = 1_000_000_000;
        let first = header(&who("ops"), read, t);
        assert!(first.as_bytes().starts_with(b"v3;"), "{first:?}");
        assert_eq!(header(&who("ops"), read, t + GRANT_REUSE_MICROS - 1), first);
        assert_ne!(header(&who("ops"), read, t + GRANT_REUSE_MICROS), first);
        assert_ne!(header(&who("ops2"), read, t), first);
        assert_ne!(
            header(
                &who("ops"),
                "/citycredit.v1.IndicatorService/ListIndicators",
                t
            ),
            first
        );
        let a = header(&who("ops"), change, t);
        assert!(a.as_bytes().starts_with(b"v2;"), "{a:?}");
        assert_ne!(header(&who("ops"), change, t), a);

        // `gateway.read_grants = false`: every read is signed for itself, as a change is.
        let signer = EdgeSigner::new(IdentitySigner::generate(Issuer::Gateway), false);
        let header = |now: i64| {
            let mut h = http::HeaderMap::new();
            let signed = signer.sign(&who("ops"), read, BodyBinding::of(b"x"), &mut h, now);
            assert_eq!(signed, Ok(()));
            h.get(HEADER)
                .cloned()
                .unwrap_or_else(|| panic!("no header"))
        };
        let r = header(t);
        assert!(r.as_bytes().starts_with(b"v2;"), "{r:?}");
        assert_ne!(header(t), r);
    }

    #[test]
    fn exactly_the_state_changing_rpcs_claim_their_nonce_in_the_store() {
        let table = RpcTable::citycredit();
        let mut changing: Vec<String> = table
            .paths()
            .into_iter()
            .filter(|p| !is_read_only(p))
            .map(|p| p.rsplit('/').next().unwrap_or_default().to_owned())
            .collect();
        changing.sort();
        assert_eq!(
            changing,
            [
                "Approve",
                "CreateApiKey",
                "CreateCycle",
                "CreateDepartment",
                "CreatePrincipal",
                "CreateRegion",
                "CreateReportingDuty",
                "CreateSubscription",
                "DeleteReportingDuty",
                "DeleteSubscription",
                "GrantLockException",
                "RegisterDomain",
                "RetractSubmission",
                "Return",
                "RevokeApiKey",
                "RunNotifierPass",
                "SetDeadlines",
                "SetResponsibilities",
                "SubmitBatch",
                "SubmitForApproval",
                "SubmitValue",
                "Unapprove",
                "UpdateDepartment",
                "UpdateGroupMembers",
                "UpdateRegion",
            ],
            "a new RPC: decide whether it only reads (READ_ONLY_PREFIXES)"
        );
    }
}
