//! `citycredit.v1.DepartmentRegistryService`. Reads come from the published snapshot (no I/O)
//! except principals, keys and the change log; writes need the admin role, go to the store in one
//! transaction each, and republish the snapshots before answering.

mod api_keys;
mod changes;
mod departments;
mod domains;
mod groups;
mod principals;
mod regions;
mod reporting_duties;
mod responsibilities;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_server::DepartmentRegistryService;
use citycredit::status::Violation;
use citycredit::wire::{bare as strip, timestamp};
use citycredit_core::auth::{Action, Principal, Role};
use citycredit_core::city::{self, Department, Region};
use citycredit_core::text::{self, TextKind};

use crate::Registry;
use crate::error::RegistryError;
use crate::store::{Audit, ChangeRow, KeyRow, PrincipalRow, Renamed};

type Result<T> = std::result::Result<T, RegistryError>;

/// UpdateRegion and UpdateDepartment: checks the resource name and the new display name,
/// renames, logs "renamed OLD -> NEW", republishes the snapshots; the code renamed.
async fn rename(
    api: &RegistryApi,
    who: &Principal,
    kind: Renamed,
    name: &str,
    display_name: &str,
) -> std::result::Result<String, Status> {
    let (collection, action) = match kind {
        Renamed::Region => ("regions/", "UpdateRegion"),
        Renamed::Department => ("departments/", "UpdateDepartment"),
    };
    check_ids(&[("name", name)])?;
    let code = strip(name, collection).to_owned();
    let mut v = Vec::new();
    check_name("display_name", display_name, &mut v);
    invalid_if_any(v)?;
    let resource = format!("{collection}{code}");
    let old = {
        let org = api.org();
        match kind {
            Renamed::Region => org.city.region(&code).map(|r| r.name.clone()),
            Renamed::Department => org.city.department(&code).map(|d| d.name.clone()),
        }
    }
    .ok_or_else(|| RegistryError::NotFound(resource.clone()))?;
    api.registry
        .store
        .rename(
            kind,
            &code,
            display_name,
            Audit {
                principal: &who.id,
                action,
                resource: &resource,
                detail: format!("renamed {old} -> {display_name}"),
            },
        )
        .await
        .map_err(RegistryError::from)?;
    api.republish().await?;
    Ok(code)
}

/// Serves the registry.
#[derive(Clone, Debug)]
pub struct RegistryApi {
    registry: Arc<Registry>,
}

impl RegistryApi {
    pub fn new(registry: Arc<Registry>) -> Self {
        RegistryApi { registry }
    }

    fn org(&self) -> Arc<citycredit_core::org::Org> {
        self.registry.org().borrow().clone()
    }

    /// True when `who` may administer: the one decision, asked rather than re-derived.
    fn is_admin(&self, who: &Principal) -> bool {
        self.org().access.decide(who, Action::Administer).is_ok()
    }

    async fn republish(&self) -> Result<()> {
        self.registry.reload().await?;
        Ok(())
    }
}

// ----- validation -----

/// Identifier fields (codes, resource names, filters) follow the text rules of
/// `citycredit_core::text`: a NUL here reached the database and came back as INTERNAL.
fn check_ids(fields: &[(&str, &str)]) -> Result<()> {
    let mut v = Vec::new();
    for (field, value) in fields {
        if let Err(refused) = text::check(value, TextKind::Identifier) {
            v.push(Violation::new(*field, refused.to_string()));
        }
    }
    invalid_if_any(v)
}

fn check_name(field: &str, name: &str, out: &mut Vec<Violation>) {
    let n = name.chars().count();
    if let Err(refused) = text::check(name, TextKind::FreeText) {
        out.push(Violation::new(field, refused.to_string()));
    } else if n == 0 {
        out.push(Violation::new(field, "required"));
    } else if n > 100 {
        out.push(Violation::new(
            field,
            format!("at most 100 characters (got {n})"),
        ));
    } else if name.chars().any(char::is_control) || name.trim() != name {
        out.push(Violation::new(
            field,
            "no control characters or surrounding spaces",
        ));
    }
}

fn check_code(field: &str, code: &str, what: &str, max: usize, out: &mut Vec<Violation>) {
    let ok = !code.is_empty()
        && code.len() <= max
        && code
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && code.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        });
    if !ok {
        out.push(Violation::new(
            field,
            format!("a {what} code is 1-{max} characters: lowercase letters, digits, '-', '_', '.', starting with a letter or digit"),
        ));
    }
}

fn invalid_if_any(v: Vec<Violation>) -> Result<()> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::Invalid(v))
    }
}

/// An API key's name: `principals/{id}/apiKeys/{prefix}` (the owner and the prefix) or the
/// bare prefix.
fn key_name(name: &str) -> Result<(Option<String>, String)> {
    let bad = || {
        RegistryError::invalid(
            "name",
            "principals/{id}/apiKeys/{prefix}, or the key's bare prefix",
        )
    };
    let plain = |s: &str| !s.is_empty() && !s.contains('/');
    match name.strip_prefix("principals/") {
        Some(rest) => match rest.split_once("/apiKeys/") {
            Some((id, prefix)) if plain(id) && plain(prefix) => {
                Ok((Some(id.to_owned()), prefix.to_owned()))
            }
            _ => Err(bad()),
        },
        None if plain(name) => Ok((None, name.to_owned())),
        None => Err(bad()),
    }
}

// ----- conversions -----

fn region_pb(r: &Region, city: &city::City) -> pb::Region {
    let level = u32::try_from(city.ancestry(&r.code).len() - 1).unwrap_or(u32::MAX);
    pb::Region {
        name: format!("regions/{}", r.code),
        code: r.code.clone(),
        display_name: r.name.clone(),
        parent: r
            .parent
            .as_ref()
            .map(|p| format!("regions/{p}"))
            .unwrap_or_default(),
        level,
    }
}

fn department_pb(d: &Department) -> pb::Department {
    pb::Department {
        name: format!("departments/{}", d.code),
        code: d.code.clone(),
        display_name: d.name.clone(),
        aliases: d.aliases.clone(),
        governs_region: d
            .governs
            .as_ref()
            .map(|g| format!("regions/{g}"))
            .unwrap_or_default(),
    }
}

fn group_pb(g: &city::Group) -> pb::Group {
    pb::Group {
        name: format!("groups/{}", g.code),
        code: g.code.clone(),
        display_name: g.name.clone(),
        members: g.members.clone(),
    }
}

fn role_pb(r: Role) -> pb::Role {
    match r {
        Role::Department => pb::Role::Department,
        Role::Platform => pb::Role::Platform,
        Role::Assessor => pb::Role::Assessor,
        Role::Operator => pb::Role::Operator,
        Role::Admin => pb::Role::Admin,
        Role::CreditOffice => pb::Role::CreditOffice,
    }
}

fn role_from_pb(r: pb::Role) -> Option<Role> {
    match r {
        pb::Role::Unspecified => None,
        pb::Role::Department => Some(Role::Department),
        pb::Role::Platform => Some(Role::Platform),
        pb::Role::Assessor => Some(Role::Assessor),
        pb::Role::Operator => Some(Role::Operator),
        pb::Role::Admin => Some(Role::Admin),
        pb::Role::CreditOffice => Some(Role::CreditOffice),
    }
}

fn principal_pb(p: &PrincipalRow) -> pb::Principal {
    pb::Principal {
        name: format!("principals/{}", p.id),
        id: p.id.clone(),
        display_name: p.display_name.clone(),
        role: role_pb(p.role) as i32,
        department_code: p.department.clone().unwrap_or_default(),
        create_time: Some(timestamp(p.create_micros)),
    }
}

fn key_pb(k: &KeyRow) -> pb::ApiKey {
    pb::ApiKey {
        name: format!("principals/{}/apiKeys/{}", k.principal, k.prefix),
        prefix: k.prefix.clone(),
        principal: format!("principals/{}", k.principal),
        create_time: Some(timestamp(k.create_micros)),
        expire_time: k.expire_micros.map(timestamp),
        revoke_time: k.revoke_micros.map(timestamp),
    }
}

fn change_pb(c: &ChangeRow) -> pb::RegistryChange {
    pb::RegistryChange {
        id: u64::try_from(c.id).unwrap_or(0),
        principal: format!("principals/{}", c.principal),
        action: c.action.clone(),
        resource: c.resource.clone(),
        detail: c.detail.clone(),
        change_time: Some(timestamp(c.change_micros)),
    }
}

fn role_of(r: city::Role) -> pb::ResponsibilityRole {
    match r {
        city::Role::Lead => pb::ResponsibilityRole::Lead,
        city::Role::Co => pb::ResponsibilityRole::Co,
    }
}

fn party_pb(city: &city::City, code: &str, position: usize) -> pb::ResponsibleParty {
    let (party, display_name) = match city.group(code) {
        Some(g) => (format!("groups/{code}"), g.name.clone()),
        None => (
            format!("departments/{code}"),
            city.department(code)
                .map(|d| d.name.clone())
                .unwrap_or_default(),
        ),
    };
    pb::ResponsibleParty {
        party,
        display_name,
        role: if position == 0 {
            pb::ResponsibilityRole::Lead
        } else {
            pb::ResponsibilityRole::Co
        } as i32,
        position: u32::try_from(position).unwrap_or(u32::MAX),
    }
}

/// "indicators/B01" / "items/E07" / "items/E07/sections/rule-of-law" / bare codes ("B01",
/// "E07", "E07/rule-of-law") -> the subject code ("E07/rule-of-law" for a section), if the
/// catalog knows it.
fn subject_code(registry: &Registry, subject: &str) -> Result<String> {
    let code = strip(strip(subject, "indicators/"), "items/");
    let code = match code.split_once("/sections/") {
        Some((item, section)) => citycredit_core::catalog::section_subject(item, section),
        None => code.to_owned(),
    };
    let c = &registry.catalog;
    if c.indicator(&code).is_some() || c.item(&code).is_some() || c.section(&code).is_some() {
        Ok(code)
    } else if subject.is_empty() {
        Err(RegistryError::invalid(
            "subject",
            "required: indicators/{code}, items/{code} or items/{item}/sections/{section}",
        ))
    } else {
        Err(RegistryError::NotFound(subject.to_owned()))
    }
}

/// A subject code's resource name: "indicators/B01", "items/E01",
/// "items/E07/sections/rule-of-law".
fn subject_name(registry: &Registry, code: &str) -> String {
    if registry.catalog.indicator(code).is_some() {
        format!("indicators/{code}")
    } else {
        match code.split_once('/') {
            Some((item, section)) => format!("items/{item}/sections/{section}"),
            None => format!("items/{code}"),
        }
    }
}

#[tonic::async_trait]
impl DepartmentRegistryService for RegistryApi {
    async fn list_regions(
        &self,
        request: Request<pb::ListRegionsRequest>,
    ) -> std::result::Result<Response<pb::ListRegionsResponse>, Status> {
        regions::list_regions(self, request).await
    }

    async fn get_region(
        &self,
        request: Request<pb::GetRegionRequest>,
    ) -> std::result::Result<Response<pb::GetRegionResponse>, Status> {
        regions::get_region(self, request).await
    }

    async fn create_region(
        &self,
        request: Request<pb::CreateRegionRequest>,
    ) -> std::result::Result<Response<pb::CreateRegionResponse>, Status> {
        regions::create_region(self, request).await
    }

    async fn update_region(
        &self,
        request: Request<pb::UpdateRegionRequest>,
    ) -> std::result::Result<Response<pb::UpdateRegionResponse>, Status> {
        regions::update_region(self, request).await
    }

    async fn list_departments(
        &self,
        request: Request<pb::ListDepartmentsRequest>,
    ) -> std::result::Result<Response<pb::ListDepartmentsResponse>, Status> {
        departments::list_departments(self, request).await
    }

    async fn get_department(
        &self,
        request: Request<pb::GetDepartmentRequest>,
    ) -> std::result::Result<Response<pb::GetDepartmentResponse>, Status> {
        departments::get_department(self, request).await
    }

    async fn create_department(
        &self,
        request: Request<pb::CreateDepartmentRequest>,
    ) -> std::result::Result<Response<pb::CreateDepartmentResponse>, Status> {
        departments::create_department(self, request).await
    }

    async fn update_department(
        &self,
        request: Request<pb::UpdateDepartmentRequest>,
    ) -> std::result::Result<Response<pb::UpdateDepartmentResponse>, Status> {
        departments::update_department(self, request).await
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> std::result::Result<Response<pb::ListGroupsResponse>, Status> {
        groups::list_groups(self, request).await
    }

    async fn update_group_members(
        &self,
        request: Request<pb::UpdateGroupMembersRequest>,
    ) -> std::result::Result<Response<pb::UpdateGroupMembersResponse>, Status> {
        groups::update_group_members(self, request).await
    }

    async fn list_responsibilities(
        &self,
        request: Request<pb::ListResponsibilitiesRequest>,
    ) -> std::result::Result<Response<pb::ListResponsibilitiesResponse>, Status> {
        responsibilities::list_responsibilities(self, request).await
    }

    async fn set_responsibilities(
        &self,
        request: Request<pb::SetResponsibilitiesRequest>,
    ) -> std::result::Result<Response<pb::SetResponsibilitiesResponse>, Status> {
        responsibilities::set_responsibilities(self, request).await
    }

    async fn get_department_duties(
        &self,
        request: Request<pb::GetDepartmentDutiesRequest>,
    ) -> std::result::Result<Response<pb::GetDepartmentDutiesResponse>, Status> {
        responsibilities::get_department_duties(self, request).await
    }

    async fn list_responsible_departments(
        &self,
        request: Request<pb::ListResponsibleDepartmentsRequest>,
    ) -> std::result::Result<Response<pb::ListResponsibleDepartmentsResponse>, Status> {
        responsibilities::list_responsible_departments(self, request).await
    }

    async fn create_reporting_duty(
        &self,
        request: Request<pb::CreateReportingDutyRequest>,
    ) -> std::result::Result<Response<pb::CreateReportingDutyResponse>, Status> {
        reporting_duties::create_reporting_duty(self, request).await
    }

    async fn delete_reporting_duty(
        &self,
        request: Request<pb::DeleteReportingDutyRequest>,
    ) -> std::result::Result<Response<pb::DeleteReportingDutyResponse>, Status> {
        reporting_duties::delete_reporting_duty(self, request).await
    }

    async fn list_reporting_duties(
        &self,
        request: Request<pb::ListReportingDutiesRequest>,
    ) -> std::result::Result<Response<pb::ListReportingDutiesResponse>, Status> {
        reporting_duties::list_reporting_duties(self, request).await
    }

    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> std::result::Result<Response<pb::ListDomainsResponse>, Status> {
        domains::list_domains(self, request).await
    }

    async fn register_domain(
        &self,
        request: Request<pb::RegisterDomainRequest>,
    ) -> std::result::Result<Response<pb::RegisterDomainResponse>, Status> {
        domains::register_domain(self, request).await
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> std::result::Result<Response<pb::CreatePrincipalResponse>, Status> {
        principals::create_principal(self, request).await
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> std::result::Result<Response<pb::ListPrincipalsResponse>, Status> {
        principals::list_principals(self, request).await
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> std::result::Result<Response<pb::CreateApiKeyResponse>, Status> {
        api_keys::create_api_key(self, request).await
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> std::result::Result<Response<pb::ListApiKeysResponse>, Status> {
        api_keys::list_api_keys(self, request).await
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> std::result::Result<Response<pb::RevokeApiKeyResponse>, Status> {
        api_keys::revoke_api_key(self, request).await
    }

    async fn list_registry_changes(
        &self,
        request: Request<pb::ListRegistryChangesRequest>,
    ) -> std::result::Result<Response<pb::ListRegistryChangesResponse>, Status> {
        changes::list_registry_changes(self, request).await
    }
}
