//! API-key authentication: every citycredit RPC must carry `authorization: Bearer <api key>`;
//! [`authenticate`] looks the key up in the in-memory key cache and gives the `Principal` the
//! gateway's edge attaches to the request for the services' authorization decision. Health and
//! reflection stay open ([`is_open_path`]). A missing or unknown key is `UNAUTHENTICATED`; the key
//! itself is never logged, only its visible prefix.

use tonic::Code;

use citycredit::status::{Reason, with_reason};
use citycredit_core::auth::Principal;

use crate::keys::{KeyRefusal, KeyView, prefix_of};

/// Paths that need no credential: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Why a request was not authenticated: what the caller is told (the detail goes to the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

impl Refusal {
    /// The gRPC answer: UNAUTHENTICATED `CREDENTIAL_REFUSED`.
    pub fn into_response(self) -> http::Response<tonic::body::Body> {
        with_reason(
            Code::Unauthenticated,
            Reason::CredentialRefused,
            self.0,
            &[],
        )
        .into_http()
    }
}

/// The key of an `authorization` value in its one canonical form: `Bearer`, exactly one space,
/// and a key of visible ASCII characters. Anything else (two spaces, a tab, surrounding or
/// trailing spaces, `bearer` in lower case, an empty key) is refused rather than tidied up: a
/// credential is compared byte for byte, and one spelling means logs, proxies and the platform
/// all agree on what was presented.
pub fn bearer_key(value: &str) -> Option<&str> {
    let key = value.strip_prefix("Bearer ")?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic())).then_some(key)
}

/// The principal of a request's credential, or why it is refused.
pub fn authenticate<B>(keys: &KeyView, req: &http::Request<B>) -> Result<Principal, Refusal> {
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().map_err(|_| ()));
    let key = match header {
        None => {
            return Err(Refusal(
                "no credential: send `authorization: Bearer <api key>`",
            ));
        }
        Some(Err(())) => {
            return Err(Refusal("the authorization header is not valid text"));
        }
        Some(Ok(value)) => match bearer_key(value) {
            Some(key) => key,
            None => {
                return Err(Refusal(
                    "the authorization header must be `Bearer <api key>`",
                ));
            }
        },
    };
    let now = citycredit_store::now_micros();
    match keys.borrow().authenticate(key, now) {
        Ok(p) => Ok(p.clone()),
        Err(why) => {
            let reason = match why {
                KeyRefusal::Unknown => "unknown or revoked",
                KeyRefusal::Mismatch => "wrong secret",
                KeyRefusal::Expired => "expired",
            };
            // Debug only: a flood of bad keys must not become a flood of log lines. The gateway
            // logs failed authentications as one summary per source address every 10 s.
            tracing::debug!(
                key_prefix = prefix_of(key),
                reason,
                path = %citycredit::status::clip(req.uri().path(), 128),
                "api key refused"
            );
            Err(Refusal("the api key is unknown, revoked or expired"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_key;

    #[test]
    fn only_the_canonical_bearer_form_is_accepted() {
        let key = "cc_0badc0de_00ff";
        assert_eq!(bearer_key(&format!("Bearer {key}")), Some(key));
        for bad in [
            format!("Bearer  {key}"),
            format!("Bearer\t{key}"),
            format!("Bearer {key} "),
            format!("Bearer {key}\t"),
            format!(" Bearer {key}"),
            format!("bearer {key}"),
            format!("BEARER {key}"),
            format!("Bearer {key} x"),
            "Bearer ".to_owned(),
            "Bearer".to_owned(),
            key.to_owned(),
        ] {
            assert_eq!(bearer_key(&bad), None, "{bad:?}");
        }
    }
}
