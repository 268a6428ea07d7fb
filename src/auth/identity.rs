//! The internal identity the gateway passes to services: the authenticated principal, signed
//! with a secret only the gateway and the services hold (HMAC-SHA256), bound to the RPC path,
//! and valid for a short window. A service reached directly cannot be fooled by a forged header
//! (no secret), a header lifted from one call cannot be used for another RPC (path bound) or later
//! (window), and within the window each signature is accepted once (nonce cache).
//!
//! Header: `x-citycredit-identity: v1;<principal>;<role>;<department>;<issued micros>;<nonce>;<hex mac>`

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::auth::{Principal, Role};

/// The header carrying the signed identity.
pub const HEADER: &str = "x-citycredit-identity";
/// How long a signed identity is accepted after it was issued (and how far in the future, for
/// clock skew between hosts).
pub const WINDOW_MICROS: i64 = 30_000_000;
/// Most nonces remembered; beyond this the oldest are forgotten early (they are then refused as
/// replays only by their window).
const MAX_NONCES: usize = 1_000_000;

type HmacSha256 = Hmac<Sha256>;

/// Why an internal identity is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("malformed internal identity")]
    Malformed,
    #[error("internal identity signature does not verify")]
    BadSignature,
    #[error("internal identity expired or from the future")]
    Stale,
    #[error("internal identity replayed")]
    Replayed,
}

/// Signs and verifies internal identities with one shared secret.
pub struct IdentitySigner {
    key: Vec<u8>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentitySigner(..)")
    }
}

#[derive(Default)]
struct Seen {
    nonces: HashMap<u64, i64>,
    order: VecDeque<(i64, u64)>,
}

fn field_ok(s: &str) -> bool {
    !s.contains(';') && s.is_ascii()
}

impl IdentitySigner {
    /// A signer for `secret` (at least 32 bytes).
    pub fn new(secret: &[u8]) -> Option<IdentitySigner> {
        (secret.len() >= 32).then(|| IdentitySigner {
            key: secret.to_vec(),
            seen: Mutex::new(Seen::default()),
        })
    }

    fn mac(&self, path: &str, body: &str) -> Option<Vec<u8>> {
        let mut mac = HmacSha256::new_from_slice(&self.key).ok()?;
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(body.as_bytes());
        Some(mac.finalize().into_bytes().to_vec())
    }

    /// The header value for `principal` calling `path` at `now_micros`.
    pub fn sign(&self, principal: &Principal, path: &str, now_micros: i64) -> Option<String> {
        let dept = principal.department.as_deref().unwrap_or("");
        if !field_ok(&principal.id) || !field_ok(dept) {
            return None;
        }
        let nonce = rand::rng().next_u64();
        let body = format!(
            "v1;{};{};{};{};{:016x}",
            principal.id,
            principal.role.as_str(),
            dept,
            now_micros,
            nonce
        );
        let mac = self.mac(path, &body)?;
        Some(format!("{body};{}", hex::encode(mac)))
    }

    /// The principal of a header value for a call of `path` at `now_micros`.
    pub fn verify(
        &self,
        value: &str,
        path: &str,
        now_micros: i64,
    ) -> Result<Principal, IdentityError> {
        let (body, mac_hex) = value.rsplit_once(';').ok_or(IdentityError::Malformed)?;
        let parts: Vec<&str> = body.split(';').collect();
        let [version, id, role, dept, issued, nonce] = parts.as_slice() else {
            return Err(IdentityError::Malformed);
        };
        if *version != "v1" {
            return Err(IdentityError::Malformed);
        }
        let given = hex::decode(mac_hex).map_err(|_| IdentityError::Malformed)?;
        let mut mac =
            HmacSha256::new_from_slice(&self.key).map_err(|_| IdentityError::Malformed)?;
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&given)
            .map_err(|_| IdentityError::BadSignature)?;
        let issued: i64 = issued.parse().map_err(|_| IdentityError::Malformed)?;
        if (now_micros - issued).abs() > WINDOW_MICROS {
            return Err(IdentityError::Stale);
        }
        let nonce = u64::from_str_radix(nonce, 16).map_err(|_| IdentityError::Malformed)?;
        self.remember(nonce, issued, now_micros)?;
        let role = Role::parse(role).ok_or(IdentityError::Malformed)?;
        Ok(Principal {
            id: (*id).to_owned(),
            role,
            department: (!dept.is_empty()).then(|| (*dept).to_owned()),
            credential: None,
        })
    }

    fn remember(&self, nonce: u64, issued: i64, now: i64) -> Result<(), IdentityError> {
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

    fn principal() -> Principal {
        Principal {
            id: "samr-system".into(),
            role: Role::Department,
            department: Some("samr".into()),
            credential: None,
        }
    }

    #[test]
    fn signed_identities_verify_once_for_their_path_and_window() {
        let signer = IdentitySigner::new(&[7u8; 32]).unwrap_or_else(|| panic!("key"));
        let path = "/citycredit.v1.MetricSubmissionService/SubmitValue";
        let header = signer
            .sign(&principal(), path, 1_000_000_000)
            .unwrap_or_default();
        assert_eq!(signer.verify(&header, path, 1_000_000_500), Ok(principal()));
        assert_eq!(
            signer.verify(&header, path, 1_000_000_600),
            Err(IdentityError::Replayed)
        );

        let other = signer
            .sign(&principal(), path, 1_000_000_000)
            .unwrap_or_default();
        assert_eq!(
            signer.verify(
                &other,
                "/citycredit.v1.DepartmentRegistryService/CreateApiKey",
                1_000_000_000
            ),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            signer.verify(&other, path, 1_000_000_000 + WINDOW_MICROS + 1),
            Err(IdentityError::Stale)
        );

        let forged = other.replacen("department", "admin", 1);
        assert_eq!(
            signer.verify(&forged, path, 1_000_000_000),
            Err(IdentityError::BadSignature)
        );
        let wrong_key = IdentitySigner::new(&[8u8; 32]).unwrap_or_else(|| panic!("key"));
        let header = wrong_key.sign(&principal(), path, 5).unwrap_or_default();
        assert_eq!(
            signer.verify(&header, path, 5),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(
            signer.verify("v1;admin;admin;;5;00;zz", path, 5),
            Err(IdentityError::Malformed)
        );
        assert!(IdentitySigner::new(b"short").is_none());
    }
}
