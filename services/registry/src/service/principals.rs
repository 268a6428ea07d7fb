//! Principals: who may call the platform, and in which role.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::bare as strip;
use citycredit_core::auth::{Action, Role};
use citycredit_store::now_micros;

use super::{
    RegistryApi, check_code, check_ids, check_name, invalid_if_any, principal_pb, role_from_pb,
};
use crate::error::RegistryError;
use crate::store::{Audit, PrincipalRow};

pub(super) async fn create_principal(
    api: &RegistryApi,
    request: Request<pb::CreatePrincipalRequest>,
) -> std::result::Result<Response<pb::CreatePrincipalResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let p = request.into_inner().principal.unwrap_or_default();
    check_ids(&[("principal.department_code", &p.department_code)])?;
    let mut v = Vec::new();
    check_code("principal.id", &p.id, "principal", 64, &mut v);
    let display_name = if p.display_name.is_empty() {
        p.id.clone()
    } else {
        p.display_name.clone()
    };
    check_name("principal.display_name", &display_name, &mut v);
    let role = role_from_pb(p.role());
    let department = strip(&p.department_code, "departments/").to_owned();
    match role {
        None => v.push(Violation::new(
            "principal.role",
            "required: ROLE_DEPARTMENT, ROLE_PLATFORM, ROLE_ASSESSOR, ROLE_OPERATOR, ROLE_ADMIN or ROLE_CREDIT_OFFICE",
        )),
        Some(Role::Department) if department.is_empty() => v.push(Violation::new(
            "principal.department_code",
            "required for the department role",
        )),
        Some(Role::Department) if api.org().city.department(&department).is_none() => {
            v.push(Violation::new(
                "principal.department_code",
                format!("unknown department `{department}`"),
            ));
        }
        Some(Role::Department) => {}
        Some(_) if !department.is_empty() => v.push(Violation::new(
            "principal.department_code",
            "only department principals have a department",
        )),
        Some(_) => {}
    }
    invalid_if_any(v)?;
    let role = role.unwrap_or(Role::Operator);
    if api
        .registry
        .store
        .principal(&p.id)
        .await
        .map_err(RegistryError::from)?
        .is_some()
    {
        return Err(RegistryError::AlreadyExists(format!("principals/{}", p.id)).into());
    }
    let row = PrincipalRow {
        id: p.id.clone(),
        display_name,
        role,
        department: (role == Role::Department).then_some(department),
        create_micros: now_micros(),
    };
    let resource = format!("principals/{}", p.id);
    api.registry
        .store
        .create_principal(
            &row,
            Audit {
                principal: &who.id,
                action: "CreatePrincipal",
                resource: &resource,
                detail: format!("role {}", role.as_str()),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    Ok(Response::new(pb::CreatePrincipalResponse {
        principal: Some(principal_pb(&row)),
    }))
}

pub(super) async fn list_principals(
    api: &RegistryApi,
    request: Request<pb::ListPrincipalsRequest>,
) -> std::result::Result<Response<pb::ListPrincipalsResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Read)?.clone();
    let req = request.into_inner();
    check_ids(&[("page_token", &req.page_token)])?;
    let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
    let (rows, total) = if api.is_admin(&who) {
        api.registry
            .store
            .principals(
                i64::try_from(offset).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX),
            )
            .await
            .map_err(RegistryError::from)?
    } else {
        // Everyone else sees only themselves: who else holds keys is the administrators'
        // business.
        let own: Vec<PrincipalRow> = api
            .registry
            .store
            .principal(&who.id)
            .await
            .map_err(RegistryError::from)?
            .into_iter()
            .collect();
        let total = i64::try_from(own.len()).unwrap_or(0);
        (own.into_iter().skip(offset).take(limit).collect(), total)
    };
    Ok(Response::new(pb::ListPrincipalsResponse {
        principals: rows.iter().map(principal_pb).collect(),
        next_page_token: next_page_token(offset, limit, usize::try_from(total).unwrap_or(0)),
    }))
}
