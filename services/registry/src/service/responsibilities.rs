//! Responsibilities: who answers for which indicator, item or item section, and the duties that
//! follow: what a department must report (rulebook section 9) and what it may (section 8).

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;

use super::{
    RegistryApi, check_ids, invalid_if_any, party_pb, role_of, subject_code, subject_name,
};
use crate::error::RegistryError;
use crate::store::Audit;

pub(super) async fn list_responsibilities(
    api: &RegistryApi,
    request: Request<pb::ListResponsibilitiesRequest>,
) -> std::result::Result<Response<pb::ListResponsibilitiesResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    let req = request.into_inner();
    check_ids(&[("subject", &req.subject), ("party", &req.party)])?;
    let org = api.org();
    let subject = if req.subject.is_empty() {
        None
    } else {
        Some(subject_code(&api.registry, &req.subject)?)
    };
    let party = strip(strip(&req.party, "departments/"), "groups/");
    let mut out = Vec::new();
    for r in &org.city.responsibilities {
        // An item with sections lists its sections' responsibilities.
        if subject
            .as_ref()
            .is_some_and(|s| s != &r.subject && !r.subject.starts_with(&format!("{s}/")))
        {
            continue;
        }
        for (i, p) in r.parties.iter().enumerate() {
            if !party.is_empty() && p != party {
                continue;
            }
            out.push(pb::Responsibility {
                subject: subject_name(&api.registry, &r.subject),
                party: Some(party_pb(&org.city, p, i)),
            });
        }
    }
    Ok(Response::new(pb::ListResponsibilitiesResponse {
        responsibilities: out,
    }))
}

pub(super) async fn set_responsibilities(
    api: &RegistryApi,
    request: Request<pb::SetResponsibilitiesRequest>,
) -> std::result::Result<Response<pb::SetResponsibilitiesResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let req = request.into_inner();
    let mut ids = vec![("subject".to_owned(), req.subject.clone())];
    ids.extend(
        req.parties
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("parties[{i}]"), p.clone())),
    );
    check_ids(
        &ids.iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let code = subject_code(&api.registry, &req.subject)?;
    if !api.registry.catalog.is_responsibility_subject(&code) {
        let sections = api
            .registry
            .catalog
            .item(&code)
            .map(|i| {
                i.subjects()
                    .iter()
                    .map(|s| subject_name(&api.registry, s))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        return Err(RegistryError::invalid(
            "subject",
            format!("items/{code} has sections, each with its own list: set one of {sections}"),
        )
        .into());
    }
    let org = api.org();
    let mut v = Vec::new();
    let mut parties = Vec::new();
    if req.parties.is_empty() {
        v.push(Violation::new(
            "parties",
            "at least one responsible party (the first leads)",
        ));
    }
    for (i, p) in req.parties.iter().enumerate() {
        let bare = strip(strip(p, "departments/"), "groups/").to_owned();
        if org.city.department(&bare).is_none() && org.city.group(&bare).is_none() {
            v.push(Violation::new(
                format!("parties[{i}]"),
                format!("unknown department or group `{p}`"),
            ));
        } else if parties.contains(&bare) {
            v.push(Violation::new(
                format!("parties[{i}]"),
                format!("`{p}` is listed twice"),
            ));
        } else {
            parties.push(bare);
        }
    }
    invalid_if_any(v)?;
    let resource = subject_name(&api.registry, &code);
    api.registry
        .store
        .set_responsibilities(
            &code,
            &parties,
            Audit {
                principal: &who.id,
                action: "SetResponsibilities",
                resource: &resource,
                detail: parties.join(", "),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    let org = api.org();
    let responsibilities = org
        .city
        .parties(&code)
        .iter()
        .enumerate()
        .map(|(i, p)| pb::Responsibility {
            subject: resource.clone(),
            party: Some(party_pb(&org.city, p, i)),
        })
        .collect();
    Ok(Response::new(pb::SetResponsibilitiesResponse {
        responsibilities,
    }))
}

pub(super) async fn get_department_duties(
    api: &RegistryApi,
    request: Request<pb::GetDepartmentDutiesRequest>,
) -> std::result::Result<Response<pb::GetDepartmentDutiesResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    check_ids(&[("department", &request.get_ref().department)])?;
    let code = strip(&request.get_ref().department, "departments/").to_owned();
    let org = api.org();
    if org.city.department(&code).is_none() {
        return Err(RegistryError::NotFound(format!("departments/{code}")).into());
    }
    let duties = org
        .city
        .duties_of_department(&code)
        .into_iter()
        .map(|d| pb::Duty {
            subject: subject_name(&api.registry, &d.subject),
            role: role_of(d.role) as i32,
            via_group: d
                .via_group
                .map(|g| format!("groups/{g}"))
                .unwrap_or_default(),
            metric_keys: api
                .registry
                .catalog
                .subject_metrics(&d.subject)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        })
        .collect();
    let expected_metrics = org
        .access
        .expected_metrics(&code)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let permitted_metrics = org
        .access
        .department_metrics(&code)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let expected_reports = org
        .access
        .expected_reports(&code)
        .into_iter()
        .map(|(m, regions)| pb::ExpectedReport {
            metric_key: m.to_owned(),
            regions: regions.iter().map(|r| format!("regions/{r}")).collect(),
        })
        .collect();
    Ok(Response::new(pb::GetDepartmentDutiesResponse {
        department_code: code,
        duties,
        expected_metrics,
        permitted_metrics,
        expected_reports,
    }))
}

pub(super) async fn list_responsible_departments(
    api: &RegistryApi,
    request: Request<pb::ListResponsibleDepartmentsRequest>,
) -> std::result::Result<Response<pb::ListResponsibleDepartmentsResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    check_ids(&[("subject", &request.get_ref().subject)])?;
    let code = subject_code(&api.registry, &request.get_ref().subject)?;
    let org = api.org();
    let metrics: Vec<String> = api
        .registry
        .catalog
        .subject_metrics(&code)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let duties = org.city.duties_for_subject(&code);
    Ok(Response::new(pb::ListResponsibleDepartmentsResponse {
        department_codes: duties.iter().map(|d| d.department.clone()).collect(),
        departments: duties
            .into_iter()
            .map(|d| pb::Duty {
                subject: format!("departments/{}", d.department),
                role: role_of(d.role) as i32,
                via_group: d
                    .via_group
                    .map(|g| format!("groups/{g}"))
                    .unwrap_or_default(),
                metric_keys: metrics.clone(),
            })
            .collect(),
    }))
}
