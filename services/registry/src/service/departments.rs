//! Departments.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;
use citycredit_core::city::Department;

use super::{
    RegistryApi, check_code, check_ids, check_name, department_pb, invalid_if_any, rename,
};
use crate::error::RegistryError;
use crate::store::{Audit, Renamed};

pub(super) async fn list_departments(
    api: &RegistryApi,
    request: Request<pb::ListDepartmentsRequest>,
) -> std::result::Result<Response<pb::ListDepartmentsResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    let req = request.into_inner();
    check_ids(&[("page_token", &req.page_token)])?;
    let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
    let org = api.org();
    let all = &org.city.departments;
    Ok(Response::new(pb::ListDepartmentsResponse {
        departments: all
            .iter()
            .skip(offset)
            .take(limit)
            .map(department_pb)
            .collect(),
        next_page_token: next_page_token(offset, limit, all.len()),
    }))
}

pub(super) async fn get_department(
    api: &RegistryApi,
    request: Request<pb::GetDepartmentRequest>,
) -> std::result::Result<Response<pb::GetDepartmentResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    check_ids(&[("name", &request.get_ref().name)])?;
    let code = strip(&request.get_ref().name, "departments/").to_owned();
    let org = api.org();
    let d = org
        .city
        .department(&code)
        .ok_or_else(|| RegistryError::NotFound(format!("departments/{code}")))?;
    Ok(Response::new(pb::GetDepartmentResponse {
        department: Some(department_pb(d)),
    }))
}

pub(super) async fn create_department(
    api: &RegistryApi,
    request: Request<pb::CreateDepartmentRequest>,
) -> std::result::Result<Response<pb::CreateDepartmentResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let d = request.into_inner().department.unwrap_or_default();
    check_ids(&[("department.governs_region", &d.governs_region)])?;
    let governs = strip(&d.governs_region, "regions/").to_owned();
    let org = api.org();
    let mut v = Vec::new();
    check_code("department.code", &d.code, "department", 40, &mut v);
    check_name("department.display_name", &d.display_name, &mut v);
    for (i, a) in d.aliases.iter().enumerate() {
        check_name(&format!("department.aliases[{i}]"), a, &mut v);
    }
    if !governs.is_empty() && org.city.region(&governs).is_none() {
        v.push(Violation::new(
            "department.governs_region",
            format!("unknown region `{governs}`"),
        ));
    }
    invalid_if_any(v)?;
    if org.city.department(&d.code).is_some() || org.city.group(&d.code).is_some() {
        return Err(RegistryError::AlreadyExists(format!("departments/{}", d.code)).into());
    }
    let dept = Department {
        code: d.code.clone(),
        name: d.display_name.clone(),
        aliases: d.aliases.clone(),
        governs: (!governs.is_empty()).then_some(governs),
    };
    let resource = format!("departments/{}", d.code);
    api.registry
        .store
        .create_department(
            &dept,
            Audit {
                principal: &who.id,
                action: "CreateDepartment",
                resource: &resource,
                detail: d.display_name.clone(),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    Ok(Response::new(pb::CreateDepartmentResponse {
        department: Some(department_pb(&dept)),
    }))
}

pub(super) async fn update_department(
    api: &RegistryApi,
    request: Request<pb::UpdateDepartmentRequest>,
) -> std::result::Result<Response<pb::UpdateDepartmentResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let req = request.into_inner();
    let code = rename(api, &who, Renamed::Department, &req.name, &req.display_name).await?;
    let org = api.org();
    let d = org
        .city
        .department(&code)
        .ok_or_else(|| RegistryError::NotFound(format!("departments/{code}")))?;
    Ok(Response::new(pb::UpdateDepartmentResponse {
        department: Some(department_pb(d)),
    }))
}
