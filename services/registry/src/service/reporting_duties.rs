//! Reporting duties (rulebook section 9): who is expected to report which metrics for which
//! regions, beyond the defaults derived from the responsibility lists.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;
use citycredit_core::city::{self, ReportingDuty};

use super::{RegistryApi, check_ids, invalid_if_any};
use crate::error::RegistryError;
use crate::store::Audit;

fn duty_pb(d: &ReportingDuty, org: &citycredit_core::org::Org) -> pb::ReportingDuty {
    let party = if org.city.group(&d.party).is_some() {
        format!("groups/{}", d.party)
    } else {
        format!("departments/{}", d.party)
    };
    pb::ReportingDuty {
        name: format!("reportingDuties/{}", d.id),
        id: d.id.clone(),
        party,
        metric_keys: d.metrics.clone(),
        regions: d.regions.iter().map(|r| format!("regions/{r}")).collect(),
    }
}

pub(super) async fn list_reporting_duties(
    api: &RegistryApi,
    request: Request<pb::ListReportingDutiesRequest>,
) -> std::result::Result<Response<pb::ListReportingDutiesResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    let org = api.org();
    let mut duties: Vec<&ReportingDuty> = org.city.reporting_duties.iter().collect();
    duties.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Response::new(pb::ListReportingDutiesResponse {
        reporting_duties: duties.into_iter().map(|d| duty_pb(d, &org)).collect(),
    }))
}

pub(super) async fn create_reporting_duty(
    api: &RegistryApi,
    request: Request<pb::CreateReportingDutyRequest>,
) -> std::result::Result<Response<pb::CreateReportingDutyResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let d = request.into_inner().reporting_duty.unwrap_or_default();
    let mut ids: Vec<(String, String)> = vec![
        ("reporting_duty.id".to_owned(), d.id.clone()),
        ("reporting_duty.party".to_owned(), d.party.clone()),
    ];
    ids.extend(
        d.metric_keys
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("reporting_duty.metric_keys[{i}]"), m.clone())),
    );
    ids.extend(
        d.regions
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("reporting_duty.regions[{i}]"), r.clone())),
    );
    check_ids(
        &ids.iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let duty = ReportingDuty {
        id: d.id.clone(),
        party: strip(strip(&d.party, "departments/"), "groups/").to_owned(),
        metrics: d.metric_keys.clone(),
        regions: d
            .regions
            .iter()
            .map(|r| strip(r, "regions/").to_owned())
            .collect(),
    };
    let org = api.org();
    let problems = city::check_reporting_duty(
        &duty,
        &api.registry.catalog,
        &|p| org.city.department(p).is_some() || org.city.group(p).is_some(),
        &|r| org.city.region(r).is_some(),
    );
    invalid_if_any(
        problems
            .into_iter()
            .map(|p| Violation::new("reporting_duty", p))
            .collect(),
    )?;
    let resource = format!("reportingDuties/{}", duty.id);
    if org.city.reporting_duties.iter().any(|x| x.id == duty.id) {
        return Err(RegistryError::AlreadyExists(resource).into());
    }
    api.registry
        .store
        .create_reporting_duty(
            &duty,
            Audit {
                principal: &who.id,
                action: "CreateReportingDuty",
                resource: &resource,
                detail: format!(
                    "{} reports {} for {}",
                    duty.party,
                    duty.metrics.join(", "),
                    duty.regions.join(", ")
                ),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    let org = api.org();
    Ok(Response::new(pb::CreateReportingDutyResponse {
        reporting_duty: Some(duty_pb(&duty, &org)),
    }))
}

pub(super) async fn delete_reporting_duty(
    api: &RegistryApi,
    request: Request<pb::DeleteReportingDutyRequest>,
) -> std::result::Result<Response<pb::DeleteReportingDutyResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let name = request.into_inner().name;
    check_ids(&[("name", &name)])?;
    let id = strip(&name, "reportingDuties/").to_owned();
    if id.is_empty() {
        return Err(RegistryError::invalid("name", "required: reportingDuties/{id}").into());
    }
    let resource = format!("reportingDuties/{id}");
    let org = api.org();
    let Some(duty) = org
        .city
        .reporting_duties
        .iter()
        .find(|d| d.id == id)
        .cloned()
    else {
        return Err(RegistryError::NotFound(resource).into());
    };
    api.registry
        .store
        .delete_reporting_duty(
            &id,
            Audit {
                principal: &who.id,
                action: "DeleteReportingDuty",
                resource: &resource,
                detail: format!(
                    "{} no longer reports {} for {}",
                    duty.party,
                    duty.metrics.join(", "),
                    duty.regions.join(", ")
                ),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    Ok(Response::new(pb::DeleteReportingDutyResponse {
        reporting_duty: Some(duty_pb(&duty, &org)),
    }))
}
