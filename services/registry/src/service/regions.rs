//! Regions: the city and the regions below it.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;
use citycredit_core::city::Region;

use super::{RegistryApi, check_ids, check_name, invalid_if_any, region_pb, rename};
use crate::error::RegistryError;
use crate::store::{Audit, Renamed};

pub(super) async fn list_regions(
    api: &RegistryApi,
    request: Request<pb::ListRegionsRequest>,
) -> std::result::Result<Response<pb::ListRegionsResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    let req = request.into_inner();
    check_ids(&[("parent", &req.parent), ("page_token", &req.page_token)])?;
    let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
    let org = api.org();
    let parent = strip(&req.parent, "regions/");
    let all: Vec<&Region> = org
        .city
        .regions
        .iter()
        .filter(|r| parent.is_empty() || r.parent.as_deref() == Some(parent))
        .collect();
    Ok(Response::new(pb::ListRegionsResponse {
        regions: all
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| region_pb(r, &org.city))
            .collect(),
        next_page_token: next_page_token(offset, limit, all.len()),
    }))
}

pub(super) async fn get_region(
    api: &RegistryApi,
    request: Request<pb::GetRegionRequest>,
) -> std::result::Result<Response<pb::GetRegionResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    check_ids(&[("name", &request.get_ref().name)])?;
    let code = strip(&request.get_ref().name, "regions/").to_owned();
    let org = api.org();
    let r = org
        .city
        .region(&code)
        .ok_or_else(|| RegistryError::NotFound(format!("regions/{code}")))?;
    Ok(Response::new(pb::GetRegionResponse {
        region: Some(region_pb(r, &org.city)),
    }))
}

pub(super) async fn create_region(
    api: &RegistryApi,
    request: Request<pb::CreateRegionRequest>,
) -> std::result::Result<Response<pb::CreateRegionResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let r = request.into_inner().region.unwrap_or_default();
    check_ids(&[("region.code", &r.code), ("region.parent", &r.parent)])?;
    let parent = strip(&r.parent, "regions/").to_owned();
    let mut v = Vec::new();
    if r.code.len() < 6 || r.code.len() > 12 || !r.code.bytes().all(|b| b.is_ascii_digit()) {
        v.push(Violation::new(
            "region.code",
            "6 to 12 digits (GB/T 2260, longer for townships)",
        ));
    }
    check_name("region.display_name", &r.display_name, &mut v);
    let org = api.org();
    if parent.is_empty() {
        v.push(Violation::new(
            "region.parent",
            "required: the city has its root already",
        ));
    } else if org.city.region(&parent).is_none() {
        v.push(Violation::new(
            "region.parent",
            format!("unknown region `{parent}`"),
        ));
    }
    invalid_if_any(v)?;
    if org.city.region(&r.code).is_some() {
        return Err(RegistryError::AlreadyExists(format!("regions/{}", r.code)).into());
    }
    let region = Region {
        code: r.code.clone(),
        name: r.display_name.clone(),
        parent: Some(parent.clone()),
    };
    let resource = format!("regions/{}", r.code);
    api.registry
        .store
        .create_region(
            &region,
            Audit {
                principal: &who.id,
                action: "CreateRegion",
                resource: &resource,
                detail: format!("{} under {parent}", r.display_name),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    let org = api.org();
    let stored = org
        .city
        .region(&r.code)
        .ok_or_else(|| RegistryError::NotFound(resource.clone()))?;
    Ok(Response::new(pb::CreateRegionResponse {
        region: Some(region_pb(stored, &org.city)),
    }))
}

pub(super) async fn update_region(
    api: &RegistryApi,
    request: Request<pb::UpdateRegionRequest>,
) -> std::result::Result<Response<pb::UpdateRegionResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let req = request.into_inner();
    let code = rename(api, &who, Renamed::Region, &req.name, &req.display_name).await?;
    let org = api.org();
    let r = org
        .city
        .region(&code)
        .ok_or_else(|| RegistryError::NotFound(format!("regions/{code}")))?;
    Ok(Response::new(pb::UpdateRegionResponse {
        region: Some(region_pb(r, &org.city)),
    }))
}
