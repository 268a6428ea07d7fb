//! `citycredit.v1.DepartmentRegistryService`. Reads come from the published snapshot (no I/O)
//! except principals, keys and the change log; writes need the admin role, go to the store in one
//! transaction each, and republish the snapshots before answering.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use citycredit::auth;
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::department_registry_service_server::DepartmentRegistryService;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::{bare as strip, checked_micros, timestamp};
use citycredit_core::auth::{Action, Principal, Role};
use citycredit_core::city::{self, Department, Region};
use citycredit_core::text::{self, TextKind};
use citycredit_store::now_micros;

use crate::Registry;
use crate::error::RegistryError;
use crate::keys;
use crate::store::{Audit, ChangeRow, KeyRow, PrincipalRow};

type Result<T> = std::result::Result<T, RegistryError>;

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

    fn allow<T>(
        &self,
        req: &Request<T>,
        action: Action<'_>,
    ) -> std::result::Result<Principal, Status> {
        let p = auth::principal(req)?.clone();
        self.org().access.decide(&p, action).map_err(auth::denied)?;
        Ok(p)
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
    let mut level = 0u32;
    let mut at = r.parent.as_deref();
    while let Some(p) = at {
        level += 1;
        at = city.region(p).and_then(|x| x.parent.as_deref());
        if level as usize > city.regions.len() {
            break;
        }
    }
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

/// "indicators/B01" / "items/E07" / bare codes -> the code, if the catalog knows it.
fn subject_code(registry: &Registry, subject: &str) -> Result<String> {
    let code = strip(strip(subject, "indicators/"), "items/");
    if registry.catalog.indicator(code).is_some() || registry.catalog.item(code).is_some() {
        Ok(code.to_owned())
    } else if subject.is_empty() {
        Err(RegistryError::invalid(
            "subject",
            "required: indicators/{code} or items/{code}",
        ))
    } else {
        Err(RegistryError::NotFound(subject.to_owned()))
    }
}

fn subject_name(registry: &Registry, code: &str) -> String {
    if registry.catalog.indicator(code).is_some() {
        format!("indicators/{code}")
    } else {
        format!("items/{code}")
    }
}

#[tonic::async_trait]
impl DepartmentRegistryService for RegistryApi {
    async fn list_regions(
        &self,
        request: Request<pb::ListRegionsRequest>,
    ) -> std::result::Result<Response<pb::ListRegionsResponse>, Status> {
        self.allow(&request, Action::Read)?;
        let req = request.into_inner();
        check_ids(&[("parent", &req.parent), ("page_token", &req.page_token)])?;
        let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
        let org = self.org();
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

    async fn get_region(
        &self,
        request: Request<pb::GetRegionRequest>,
    ) -> std::result::Result<Response<pb::GetRegionResponse>, Status> {
        self.allow(&request, Action::Read)?;
        check_ids(&[("name", &request.get_ref().name)])?;
        let code = strip(&request.get_ref().name, "regions/").to_owned();
        let org = self.org();
        let r = org
            .city
            .region(&code)
            .ok_or_else(|| RegistryError::NotFound(format!("regions/{code}")))?;
        Ok(Response::new(pb::GetRegionResponse {
            region: Some(region_pb(r, &org.city)),
        }))
    }

    async fn create_region(
        &self,
        request: Request<pb::CreateRegionRequest>,
    ) -> std::result::Result<Response<pb::CreateRegionResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
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
        let org = self.org();
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
        self.registry
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
        self.republish().await?;
        let org = self.org();
        let stored = org
            .city
            .region(&r.code)
            .ok_or_else(|| RegistryError::NotFound(resource.clone()))?;
        Ok(Response::new(pb::CreateRegionResponse {
            region: Some(region_pb(stored, &org.city)),
        }))
    }

    async fn update_region(
        &self,
        request: Request<pb::UpdateRegionRequest>,
    ) -> std::result::Result<Response<pb::UpdateRegionResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let req = request.into_inner();
        check_ids(&[("name", &req.name)])?;
        let code = strip(&req.name, "regions/").to_owned();
        let mut v = Vec::new();
        check_name("display_name", &req.display_name, &mut v);
        invalid_if_any(v)?;
        let resource = format!("regions/{code}");
        let old = self
            .org()
            .city
            .region(&code)
            .map(|r| r.name.clone())
            .ok_or_else(|| RegistryError::NotFound(resource.clone()))?;
        self.registry
            .store
            .rename_region(
                &code,
                &req.display_name,
                Audit {
                    principal: &who.id,
                    action: "UpdateRegion",
                    resource: &resource,
                    detail: format!("renamed {old} -> {}", req.display_name),
                },
            )
            .await
            .map_err(RegistryError::from)?;
        self.republish().await?;
        let org = self.org();
        let r = org
            .city
            .region(&code)
            .ok_or_else(|| RegistryError::NotFound(resource))?;
        Ok(Response::new(pb::UpdateRegionResponse {
            region: Some(region_pb(r, &org.city)),
        }))
    }

    async fn list_departments(
        &self,
        request: Request<pb::ListDepartmentsRequest>,
    ) -> std::result::Result<Response<pb::ListDepartmentsResponse>, Status> {
        self.allow(&request, Action::Read)?;
        let req = request.into_inner();
        check_ids(&[("page_token", &req.page_token)])?;
        let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
        let org = self.org();
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

    async fn get_department(
        &self,
        request: Request<pb::GetDepartmentRequest>,
    ) -> std::result::Result<Response<pb::GetDepartmentResponse>, Status> {
        self.allow(&request, Action::Read)?;
        check_ids(&[("name", &request.get_ref().name)])?;
        let code = strip(&request.get_ref().name, "departments/").to_owned();
        let org = self.org();
        let d = org
            .city
            .department(&code)
            .ok_or_else(|| RegistryError::NotFound(format!("departments/{code}")))?;
        Ok(Response::new(pb::GetDepartmentResponse {
            department: Some(department_pb(d)),
        }))
    }

    async fn create_department(
        &self,
        request: Request<pb::CreateDepartmentRequest>,
    ) -> std::result::Result<Response<pb::CreateDepartmentResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let d = request.into_inner().department.unwrap_or_default();
        check_ids(&[("department.governs_region", &d.governs_region)])?;
        let governs = strip(&d.governs_region, "regions/").to_owned();
        let org = self.org();
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
        self.registry
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
        self.republish().await?;
        Ok(Response::new(pb::CreateDepartmentResponse {
            department: Some(department_pb(&dept)),
        }))
    }

    async fn update_department(
        &self,
        request: Request<pb::UpdateDepartmentRequest>,
    ) -> std::result::Result<Response<pb::UpdateDepartmentResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let req = request.into_inner();
        check_ids(&[("name", &req.name)])?;
        let code = strip(&req.name, "departments/").to_owned();
        let mut v = Vec::new();
        check_name("display_name", &req.display_name, &mut v);
        invalid_if_any(v)?;
        let resource = format!("departments/{code}");
        let old = self
            .org()
            .city
            .department(&code)
            .map(|d| d.name.clone())
            .ok_or_else(|| RegistryError::NotFound(resource.clone()))?;
        self.registry
            .store
            .rename_department(
                &code,
                &req.display_name,
                Audit {
                    principal: &who.id,
                    action: "UpdateDepartment",
                    resource: &resource,
                    detail: format!("renamed {old} -> {}", req.display_name),
                },
            )
            .await
            .map_err(RegistryError::from)?;
        self.republish().await?;
        let org = self.org();
        let d = org
            .city
            .department(&code)
            .ok_or_else(|| RegistryError::NotFound(resource))?;
        Ok(Response::new(pb::UpdateDepartmentResponse {
            department: Some(department_pb(d)),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> std::result::Result<Response<pb::ListGroupsResponse>, Status> {
        self.allow(&request, Action::Read)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: self.org().city.groups.iter().map(group_pb).collect(),
        }))
    }

    async fn update_group_members(
        &self,
        request: Request<pb::UpdateGroupMembersRequest>,
    ) -> std::result::Result<Response<pb::UpdateGroupMembersResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
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
        let org = self.org();
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
        self.registry
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
        self.republish().await?;
        let org = self.org();
        let g = org
            .city
            .group(&code)
            .ok_or_else(|| RegistryError::NotFound(resource))?;
        Ok(Response::new(pb::UpdateGroupMembersResponse {
            group: Some(group_pb(g)),
        }))
    }

    async fn list_responsibilities(
        &self,
        request: Request<pb::ListResponsibilitiesRequest>,
    ) -> std::result::Result<Response<pb::ListResponsibilitiesResponse>, Status> {
        self.allow(&request, Action::Read)?;
        let req = request.into_inner();
        check_ids(&[("subject", &req.subject), ("party", &req.party)])?;
        let org = self.org();
        let subject = if req.subject.is_empty() {
            None
        } else {
            Some(subject_code(&self.registry, &req.subject)?)
        };
        let party = strip(strip(&req.party, "departments/"), "groups/");
        let mut out = Vec::new();
        for r in &org.city.responsibilities {
            if subject.as_ref().is_some_and(|s| s != &r.subject) {
                continue;
            }
            for (i, p) in r.parties.iter().enumerate() {
                if !party.is_empty() && p != party {
                    continue;
                }
                out.push(pb::Responsibility {
                    subject: subject_name(&self.registry, &r.subject),
                    party: Some(party_pb(&org.city, p, i)),
                });
            }
        }
        Ok(Response::new(pb::ListResponsibilitiesResponse {
            responsibilities: out,
        }))
    }

    async fn set_responsibilities(
        &self,
        request: Request<pb::SetResponsibilitiesRequest>,
    ) -> std::result::Result<Response<pb::SetResponsibilitiesResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
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
        let code = subject_code(&self.registry, &req.subject)?;
        let org = self.org();
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
        let resource = subject_name(&self.registry, &code);
        self.registry
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
        self.republish().await?;
        let org = self.org();
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

    async fn get_department_duties(
        &self,
        request: Request<pb::GetDepartmentDutiesRequest>,
    ) -> std::result::Result<Response<pb::GetDepartmentDutiesResponse>, Status> {
        self.allow(&request, Action::Read)?;
        check_ids(&[("department", &request.get_ref().department)])?;
        let code = strip(&request.get_ref().department, "departments/").to_owned();
        let org = self.org();
        if org.city.department(&code).is_none() {
            return Err(RegistryError::NotFound(format!("departments/{code}")).into());
        }
        let duties = org
            .city
            .duties_of_department(&code)
            .into_iter()
            .map(|d| pb::Duty {
                subject: subject_name(&self.registry, &d.subject),
                role: role_of(d.role) as i32,
                via_group: d
                    .via_group
                    .map(|g| format!("groups/{g}"))
                    .unwrap_or_default(),
                metric_keys: self
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
            .department_metrics(&code)
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(Response::new(pb::GetDepartmentDutiesResponse {
            department_code: code,
            duties,
            expected_metrics,
        }))
    }

    async fn list_responsible_departments(
        &self,
        request: Request<pb::ListResponsibleDepartmentsRequest>,
    ) -> std::result::Result<Response<pb::ListResponsibleDepartmentsResponse>, Status> {
        self.allow(&request, Action::Read)?;
        check_ids(&[("subject", &request.get_ref().subject)])?;
        let code = subject_code(&self.registry, &request.get_ref().subject)?;
        let org = self.org();
        let metrics: Vec<String> = self
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

    async fn list_domains(
        &self,
        request: Request<pb::ListDomainsRequest>,
    ) -> std::result::Result<Response<pb::ListDomainsResponse>, Status> {
        self.allow(&request, Action::Read)?;
        let set_code = request.into_inner().domain_set;
        check_ids(&[("domain_set", &set_code)])?;
        let set = self
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
            })
            .collect();
        for (code, name) in self
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
            });
        }
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn register_domain(
        &self,
        request: Request<pb::RegisterDomainRequest>,
    ) -> std::result::Result<Response<pb::RegisterDomainResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let d = request.into_inner().domain.unwrap_or_default();
        check_ids(&[("domain.domain_set", &d.domain_set)])?;
        let mut v = Vec::new();
        check_code("domain.code", &d.code, "domain", 40, &mut v);
        check_name("domain.display_name", &d.display_name, &mut v);
        invalid_if_any(v)?;
        let set = self
            .registry
            .catalog
            .domain_set(&d.domain_set)
            .ok_or_else(|| RegistryError::NotFound(format!("domainSets/{}", d.domain_set)))?;
        if !set.open {
            return Err(RegistryError::FailedPrecondition(format!(
                "domain set `{}` is closed: its domains are fixed by the catalog",
                set.code
            ))
            .into());
        }
        let known = set.domains.iter().any(|x| x.code == d.code)
            || self
                .org()
                .registered_domains
                .get(&set.code)
                .is_some_and(|x| x.contains(&d.code));
        let resource = format!("domainSets/{}/domains/{}", set.code, d.code);
        if known {
            return Err(RegistryError::AlreadyExists(resource).into());
        }
        self.registry
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
        self.republish().await?;
        Ok(Response::new(pb::RegisterDomainResponse {
            domain: Some(pb::RegisteredDomain {
                domain_set: set.code.clone(),
                code: d.code,
                display_name: d.display_name,
                builtin: false,
            }),
        }))
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> std::result::Result<Response<pb::CreatePrincipalResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
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
            None => v.push(Violation::new("principal.role", "required: ROLE_DEPARTMENT, ROLE_PLATFORM, ROLE_ASSESSOR, ROLE_OPERATOR or ROLE_ADMIN")),
            Some(Role::Department) if department.is_empty() => v.push(Violation::new("principal.department_code", "required for the department role")),
            Some(Role::Department) if self.org().city.department(&department).is_none() => {
                v.push(Violation::new("principal.department_code", format!("unknown department `{department}`")));
            }
            Some(Role::Department) => {}
            Some(_) if !department.is_empty() => v.push(Violation::new("principal.department_code", "only department principals have a department")),
            Some(_) => {}
        }
        invalid_if_any(v)?;
        let role = role.unwrap_or(Role::Operator);
        if self
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
        self.registry
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

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> std::result::Result<Response<pb::ListPrincipalsResponse>, Status> {
        let who = self.allow(&request, Action::Read)?;
        let req = request.into_inner();
        check_ids(&[("page_token", &req.page_token)])?;
        let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
        let (rows, total) = if self.is_admin(&who) {
            self.registry
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
            let own: Vec<PrincipalRow> = self
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

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> std::result::Result<Response<pb::CreateApiKeyResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let req = request.into_inner();
        check_ids(&[("principal", &req.principal)])?;
        let id = strip(&req.principal, "principals/").to_owned();
        if id.is_empty() {
            return Err(RegistryError::invalid("principal", "required: principals/{id}").into());
        }
        let now = now_micros();
        let expire = req
            .expire_time
            .as_ref()
            .map(checked_micros)
            .transpose()
            .map_err(|why| RegistryError::invalid("expire_time", why))?;
        if expire.is_some_and(|e| e <= now) {
            return Err(RegistryError::invalid("expire_time", "must be in the future").into());
        }
        if self
            .registry
            .store
            .principal(&id)
            .await
            .map_err(RegistryError::from)?
            .is_none()
        {
            return Err(RegistryError::NotFound(format!("principals/{id}")).into());
        }
        let (prefix, secret) = keys::generate();
        let row = KeyRow {
            prefix: prefix.clone(),
            principal: id.clone(),
            create_micros: now,
            expire_micros: expire,
            revoke_micros: None,
        };
        let resource = format!("principals/{id}/apiKeys/{prefix}");
        self.registry
            .store
            .create_key(
                &row,
                &keys::hash(&secret),
                Audit {
                    principal: &who.id,
                    action: "CreateApiKey",
                    resource: &resource,
                    detail: String::new(),
                },
            )
            .await
            .map_err(RegistryError::from)?;
        self.republish().await?;
        tracing::info!(key_prefix = %prefix, principal = %id, by = %who.id, "api key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            api_key: Some(key_pb(&row)),
            secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> std::result::Result<Response<pb::ListApiKeysResponse>, Status> {
        self.allow(&request, Action::Administer)?;
        check_ids(&[("principal", &request.get_ref().principal)])?;
        let principal = strip(&request.get_ref().principal, "principals/").to_owned();
        let rows = self
            .registry
            .store
            .keys((!principal.is_empty()).then_some(principal.as_str()))
            .await
            .map_err(RegistryError::from)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.iter().map(key_pb).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> std::result::Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let who = self.allow(&request, Action::Administer)?;
        let name = request.into_inner().name;
        check_ids(&[("name", &name)])?;
        let (owner, prefix) = key_name(&name)?;
        // A key named under another principal is as unknown as a key that does not exist: the
        // same answer, so the call is no oracle for which prefixes exist.
        let unknown = || match &owner {
            Some(id) => RegistryError::NotFound(format!("principals/{id}/apiKeys/{prefix}")),
            None => RegistryError::NotFound(format!("apiKeys/{prefix}")),
        };
        let row = self
            .registry
            .store
            .key(&prefix)
            .await
            .map_err(RegistryError::from)?
            .filter(|row| owner.as_ref().is_none_or(|id| *id == row.principal))
            .ok_or_else(unknown)?;
        if row.revoke_micros.is_none() {
            let resource = format!("principals/{}/apiKeys/{prefix}", row.principal);
            self.registry
                .store
                .revoke_key(
                    &prefix,
                    now_micros(),
                    Audit {
                        principal: &who.id,
                        action: "RevokeApiKey",
                        resource: &resource,
                        detail: String::new(),
                    },
                )
                .await
                .map_err(RegistryError::from)?;
            self.republish().await?;
            tracing::info!(key_prefix = %prefix, by = %who.id, "api key revoked");
        }
        let row = self
            .registry
            .store
            .key(&prefix)
            .await
            .map_err(RegistryError::from)?
            .unwrap_or(row);
        Ok(Response::new(pb::RevokeApiKeyResponse {
            api_key: Some(key_pb(&row)),
        }))
    }

    async fn list_registry_changes(
        &self,
        request: Request<pb::ListRegistryChangesRequest>,
    ) -> std::result::Result<Response<pb::ListRegistryChangesResponse>, Status> {
        let who = self.allow(&request, Action::Read)?;
        let req = request.into_inner();
        check_ids(&[("page_token", &req.page_token)])?;
        let (offset, limit) = page(req.page_size, &req.page_token, 100, 1000)?;
        // Administrators see every change; anyone else the changes to their own principal and
        // keys (who created them, when a key was revoked), nothing about others.
        let about = (!self.is_admin(&who)).then(|| format!("principals/{}", who.id));
        let (rows, total) = self
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
}
