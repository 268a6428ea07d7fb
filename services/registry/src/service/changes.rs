//! The registry's change log.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::{next_page_token, page};
use citycredit_core::auth::Action;

use super::{RegistryApi, change_pb, check_ids};
use crate::error::RegistryError;

pub(super) async fn list_registry_changes(
    api: &RegistryApi,
    request: Request<pb::ListRegistryChangesRequest>,
) -> std::result::Result<Response<pb::ListRegistryChangesResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Read)?.clone();
    let req = request.into_inner();
    check_ids(&[("page_token", &req.page_token)])?;
    let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
    // Administrators see every change; anyone else the changes to their own principal and
    // keys (who created them, when a key was revoked), nothing about others.
    let about = (!api.is_admin(&who)).then(|| format!("principals/{}", who.id));
    let (rows, total) = api
        .registry
        .store
        .changes(
            about.as_deref(),
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(limit).unwrap_or(i64::MAX),
        )
        .await
        .map_err(RegistryError::from)?;
    Ok(Response::new(pb::ListRegistryChangesResponse {
        changes: rows.iter().map(change_pb).collect(),
        next_page_token: next_page_token(offset, limit, usize::try_from(total).unwrap_or(0)),
    }))
}
