//! Authorization at the transport: the principal of a gRPC request, a refused action as a gRPC
//! status, and the signed internal identity that carries a principal between processes
//! (`identity`, bound to gRPC paths and frames). The decision itself is
//! `citycredit_core::auth::Access::decide`.

pub mod identity;

use tonic::{Code, Status};

use citycredit_core::auth::{Denied, Principal};

use crate::status::with_info;

/// A refused action as PERMISSION_DENIED, naming who, what, which metric and which region.
pub fn denied(d: Denied) -> Status {
    with_info(
        Code::PermissionDenied,
        d.to_string(),
        &[
            ("principal", &d.principal),
            ("action", d.action),
            ("metric", &d.metric),
            ("region", &d.region),
        ],
    )
}

/// The authenticated principal of a request, or UNAUTHENTICATED.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    request.extensions().get::<Principal>().ok_or_else(|| {
        with_info(
            Code::Unauthenticated,
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
