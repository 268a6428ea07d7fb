//! Domains of the open domain sets.

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::proto::v1 as pb;
use citycredit::status::Violation;
use citycredit_core::auth::Action;

use super::{RegistryApi, check_code, check_ids, check_name, invalid_if_any};
use crate::error::RegistryError;
use crate::store::Audit;

pub(super) async fn list_domains(
    api: &RegistryApi,
    request: Request<pb::ListDomainsRequest>,
) -> std::result::Result<Response<pb::ListDomainsResponse>, Status> {
    authorize(&request, &api.org().access, Action::Read)?;
    let set_code = request.into_inner().domain_set;
    check_ids(&[("domain_set", &set_code)])?;
    let set = api
        .registry
        .catalog
        .domain_set(&set_code)
        .ok_or_else(|| RegistryError::NotFound(format!("domainSets/{set_code}")))?;
    let mut domains: Vec<pb::RegisteredDomain> = set
        .domains
        .iter()
        .map(|d| pb::RegisteredDomain {
            domain_set: set.code.clone(),
            code: d.code.clone(),
            display_name: d.title.clone(),
            builtin: true,
            display_name_en: d.title_en.clone().unwrap_or_default(),
        })
        .collect();
    for (code, name) in api
        .registry
        .store
        .domains_of(&set.code)
        .await
        .map_err(RegistryError::from)?
    {
        domains.push(pb::RegisteredDomain {
            domain_set: set.code.clone(),
            code,
            display_name: name,
            builtin: false,
            display_name_en: String::new(),
        });
    }
    Ok(Response::new(pb::ListDomainsResponse { domains }))
}

pub(super) async fn register_domain(
    api: &RegistryApi,
    request: Request<pb::RegisterDomainRequest>,
) -> std::result::Result<Response<pb::RegisterDomainResponse>, Status> {
    let who = authorize(&request, &api.org().access, Action::Administer)?.clone();
    let d = request.into_inner().domain.unwrap_or_default();
    check_ids(&[("domain.domain_set", &d.domain_set)])?;
    let mut v = Vec::new();
    check_code("domain.code", &d.code, "domain", 40, &mut v);
    check_name("domain.display_name", &d.display_name, &mut v);
    if !d.display_name_en.is_empty() {
        v.push(Violation::new(
            "domain.display_name_en",
            "a registered domain keeps one display name: leave display_name_en empty",
        ));
    }
    invalid_if_any(v)?;
    let set = api
        .registry
        .catalog
        .domain_set(&d.domain_set)
        .ok_or_else(|| RegistryError::NotFound(format!("domainSets/{}", d.domain_set)))?;
    if !set.open {
        return Err(RegistryError::DomainSetClosed(set.code.clone()).into());
    }
    let known = set.domains.iter().any(|x| x.code == d.code)
        || api
            .org()
            .registered_domains
            .get(&set.code)
            .is_some_and(|x| x.contains(&d.code));
    let resource = format!("domainSets/{}/domains/{}", set.code, d.code);
    if known {
        return Err(RegistryError::AlreadyExists(resource).into());
    }
    api.registry
        .store
        .register_domain(
            &set.code,
            &d.code,
            &d.display_name,
            Audit {
                principal: &who.id,
                action: "RegisterDomain",
                resource: &resource,
                detail: d.display_name.clone(),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    Ok(Response::new(pb::RegisterDomainResponse {
        domain: Some(pb::RegisteredDomain {
            domain_set: set.code.clone(),
            code: d.code,
            display_name: d.display_name,
            builtin: false,
            display_name_en: String::new(),
        }),
    }))
}
