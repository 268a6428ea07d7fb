//! The one authorization path of every RPC handler of every service. The caller is the
//! principal the authentication layer put in the request's extensions (UNAUTHENTICATED
//! `CREDENTIAL_REFUSED` without one); whether it may act is the one decision,
//! [`Access::decide`] (PERMISSION_DENIED `ACTION_NOT_ALLOWED`).
//!
//! A handler whose action does not depend on the request body begins with [`authorize`]. The
//! handlers that submit or retract values name a metric and a region per value, known only
//! once the body is read (a stream's messages, a retraction's stored target): they begin with
//! [`caller`] and decide each value with `Access::decide` as it is read.

use tonic::{Code, Request, Status};

use crate::auth::{Access, Action, Principal};
use crate::status::{Reason, with_reason};

/// The caller of `request`, if `access` lets it do `action`.
pub fn authorize<'r, T>(
    request: &'r Request<T>,
    access: &Access,
    action: Action<'_>,
) -> Result<&'r Principal, Status> {
    let principal = caller(request)?;
    access.decide(principal, action)?;
    Ok(principal)
}

/// The authenticated caller of `request`, or UNAUTHENTICATED.
pub fn caller<T>(request: &Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| {
        with_reason(
            Code::Unauthenticated,
            Reason::CredentialRefused,
            "no credential: send `authorization: Bearer <api key>`",
            &[],
        )
    })
}
