//! Authorization at the transport: the principal of a gRPC request, a refused action as a gRPC
//! status, and the signed internal identity that carries a principal between processes
//! (`identity`, bound to gRPC paths and frames). The decision itself is
//! `citycredit_core::auth::Access::decide`.
//!
//! This is the one authorization path of every RPC handler of every service. The caller is the
//! principal the authentication layer put in the request's extensions (UNAUTHENTICATED
//! `CREDENTIAL_REFUSED` without one); whether it may act is the one decision, `Access::decide`
//! (PERMISSION_DENIED `ACTION_NOT_ALLOWED`). A handler whose action does not depend on the
//! request body begins with [`authorize`]. The handlers that submit or retract values name a
//! metric and a region per value, known only once the body is read (a stream's messages, a
//! retraction's stored target): they begin with [`caller`] and decide each value with
//! `Access::decide` as it is read.

pub mod identity;

use tonic::{Code, Request, Status};

use citycredit_core::auth::{Access, Action, Denied, Principal};

use crate::status::{Reason, to_status, with_reason};

/// A refused action as PERMISSION_DENIED `ACTION_NOT_ALLOWED`, naming who, what, which metric
/// and which region (`Denied`'s `ServiceError` in `crate::status`). A function, not a `From`:
/// neither `Denied` (core) nor `Status` (tonic) belongs to this crate.
pub fn denied(d: Denied) -> Status {
    to_status(&d)
}

/// The caller of `request`, if `access` lets it do `action`.
pub fn authorize<'r, T>(
    request: &'r Request<T>,
    access: &Access,
    action: Action<'_>,
) -> Result<&'r Principal, Status> {
    let principal = caller(request)?;
    access.decide(principal, action).map_err(denied)?;
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

#[cfg(test)]
mod tests {
    use citycredit_core::auth::{Access, Action, Role};
    use citycredit_core::catalog::Catalog;
    use citycredit_core::city::City;

    use super::*;

    /// Moved from the decision's tests (`citycredit_core::auth`): a refusal reaches the caller
    /// as PERMISSION_DENIED.
    #[test]
    fn a_refusal_is_permission_denied() {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
        let a = Access::new(&catalog, &city);
        let samr = Principal {
            id: "department-1".to_owned(),
            role: Role::Department,
            department: Some("samr".to_owned()),
            credential: None,
        };
        let denied = a
            .decide(
                &samr,
                Action::Submit {
                    metric: "campaign.integrity_tour",
                    region: "330800",
                },
            )
            .err()
            .unwrap_or_else(|| panic!("samr must not report an assessed score"));
        let status: Status = super::denied(denied);
        assert_eq!(status.code(), Code::PermissionDenied);
    }
}
