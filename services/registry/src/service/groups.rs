//! Groups: departments that answer for a duty together.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;

use super::{RegistryApi, check_ids, group_pb, invalid_if_any};
use crate::error::RegistryError;
use crate::store::Audit;

pub(super) async fn list_groups(
    api: &RegistryApi,
    request: Request<pb::ListGroupsRequest>,
) -> std::result::Result<Response<pb::ListGroupsResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    Ok(Response::new(pb::ListGroupsResponse {
        groups: api.org().city.groups.iter().map(group_pb).collect(),
    }))
}

pub(super) async fn update_group_members(
    api: &RegistryApi,
    request: Request<pb::UpdateGroupMembersRequest>,
) -> std::result::Result<Response<pb::UpdateGroupMembersResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let req = request.into_inner();
    let mut ids = vec![("name".to_owned(), req.name.clone())];
    ids.extend(
        req.members
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("members[{i}]"), m.clone())),
    );
    check_ids(
        &ids.iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let code = strip(&req.name, "groups/").to_owned();
    let org = api.org();
    let resource = format!("groups/{code}");
    if org.city.group(&code).is_none() {
        return Err(RegistryError::NotFound(resource).into());
    }
    let mut v = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, m) in req.members.iter().enumerate() {
        if org.city.department(m).is_none() {
            v.push(Violation::new(
                format!("members[{i}]"),
                format!("unknown department `{m}`"),
            ));
        } else if !seen.insert(m) {
            v.push(Violation::new(
                format!("members[{i}]"),
                format!("`{m}` is listed twice"),
            ));
        }
    }
    invalid_if_any(v)?;
    api.registry
        .store
        .set_group_members(
            &code,
            &req.members,
            Audit {
                principal: &who.id,
                action: "UpdateGroupMembers",
                resource: &resource,
                detail: req.members.join(", "),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    let org = api.org();
    let g = org
        .city
        .group(&code)
        .ok_or_else(|| RegistryError::NotFound(resource))?;
    Ok(Response::new(pb::UpdateGroupMembersResponse {
        group: Some(group_pb(g)),
    }))
}
