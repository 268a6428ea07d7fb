//! The city's organisation: regions, departments, groups, who is responsible for which
//! indicator, evaluation item or item section, and the explicit reporting duties (who is
//! expected to report which metrics for which regions, rulebook section 9). Loaded from a city
//! file (Quzhou compiled in) and validated against the catalog. The registry seeds its store
//! from it on first start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{Catalog, Diagnostics, LoadError, MetricKind, Problem};
use crate::review::{Cycle, CycleContext, CycleFile, check_cycle_header, check_deadlines};

/// The city file compiled into the binary.
pub const BUILTIN_CITY_NAME: &str = "builtin:deploy/cities/quzhou.toml";
/// Text of the compiled-in city file.
pub const BUILTIN_CITY_TOML: &str = include_str!("../../../../deploy/cities/quzhou.toml");

/// An administrative division.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
}

/// A responsible unit.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Department {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A county government: the region it governs. City-level departments leave it unset.
    #[serde(default)]
    pub governs: Option<String>,
}

/// A named group of departments.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub code: String,
    pub name: String,
    pub members: Vec<String>,
}

/// Lead (first named) or co-responsible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Lead,
    Co,
}

/// Who is responsible for one indicator, item or item section: the parties in source order,
/// the first leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responsibility {
    /// An indicator code ("B01"), the code of an item without sections ("E01") or an item
    /// section (`E07/rule-of-law`). An item with sections takes the union of its sections'
    /// lists.
    pub subject: String,
    /// Department or group codes.
    pub parties: Vec<String>,
}

/// An explicit reporting duty (rulebook section 9): a department or group is expected to
/// report `metrics` for `regions`. Where duties exist for a metric they replace the default
/// expected reporters of that metric.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportingDuty {
    /// A stable id ("housing-credit-records").
    pub id: String,
    /// A department or group code.
    pub party: String,
    /// Metric keys.
    pub metrics: Vec<String>,
    /// Region codes it reports for (each region itself).
    pub regions: Vec<String>,
}

/// A department's responsibility for one subject, groups expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duty {
    pub subject: String,
    pub department: String,
    pub role: Role,
    /// The group it comes through, when not named directly.
    pub via_group: Option<String>,
}

/// A validated city.
#[derive(Clone, Debug)]
pub struct City {
    pub code: String,
    pub name: String,
    pub source: String,
    pub regions: Vec<Region>,
    pub departments: Vec<Department>,
    pub groups: Vec<Group>,
    pub responsibilities: Vec<Responsibility>,
    /// Explicit reporting duties (the Quzhou seed gives none).
    pub reporting_duties: Vec<ReportingDuty>,
    /// Evaluation cycles of the city file (`[[cycle]]`): the review service seeds them once;
    /// afterwards they live in its tables (a city loaded from the store has none here).
    pub cycles: Vec<Cycle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CityHeader {
    code: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CityFile {
    city: CityHeader,
    #[serde(rename = "region")]
    regions: Vec<Spanned<Region>>,
    #[serde(rename = "department")]
    departments: Vec<Spanned<Department>>,
    #[serde(rename = "group", default)]
    groups: Vec<Spanned<Group>>,
    responsibilities: BTreeMap<Spanned<String>, Spanned<Vec<String>>>,
    #[serde(rename = "reporting_duty", default)]
    reporting_duties: Vec<Spanned<ReportingDuty>>,
    #[serde(rename = "cycle", default)]
    cycles: Vec<Spanned<CycleFile>>,
}

impl City {
    /// The Quzhou city file compiled into the binary, checked against `catalog`.
    pub fn builtin(catalog: &Catalog) -> Result<City, LoadError> {
        City::from_toml(BUILTIN_CITY_TOML, BUILTIN_CITY_NAME, catalog)
    }

    /// Loads and validates a city file.
    pub fn from_path(path: &Path, catalog: &Catalog) -> Result<City, LoadError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError {
            file: name.clone(),
            problems: vec![Problem {
                line: None,
                key: "file".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        City::from_toml(&text, &name, catalog)
    }

    /// Parses and validates city text against `catalog`; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str, catalog: &Catalog) -> Result<City, LoadError> {
        let file: CityFile =
            toml::from_str(text).map_err(|e| Diagnostics::parse_error(source, text, &e))?;
        let mut d = Diagnostics::new(source, text);
        let city = validate(file, source, catalog, &mut d);
        d.finish()?;
        Ok(city)
    }

    pub fn region(&self, code: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.code == code)
    }

    /// `code` and every region above it, nearest first (`["330802", "330800"]`); just `code`
    /// for a region the city lacks. A cycle in the data ends the walk (the loader refuses one).
    pub fn ancestry<'a>(&'a self, code: &'a str) -> Vec<&'a str> {
        let mut out = vec![code];
        while let Some(parent) = out
            .last()
            .and_then(|r| self.region(r))
            .and_then(|r| r.parent.as_deref())
        {
            if out.contains(&parent) || out.len() > self.regions.len() {
                break;
            }
            out.push(parent);
        }
        out
    }

    /// Whether `region` is `ancestor` or lies below it.
    pub fn is_within(&self, region: &str, ancestor: &str) -> bool {
        self.ancestry(region).contains(&ancestor)
    }

    pub fn department(&self, code: &str) -> Option<&Department> {
        self.departments.iter().find(|r| r.code == code)
    }

    pub fn group(&self, code: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.code == code)
    }

    /// Orders responsibilities as the catalog orders subjects: indicators B01..G20, then items
    /// E01..E12, an item's sections in source order.
    pub fn sort_by_catalog(&mut self, catalog: &Catalog) {
        let subjects = catalog.responsibility_subjects();
        let order = |s: &str| subjects.iter().position(|x| x == s).unwrap_or(usize::MAX);
        self.responsibilities.sort_by_key(|r| order(&r.subject));
    }

    /// The parties responsible for a subject, lead first. An item with sections answers with
    /// the union of its sections' lists in source order (its lead is its first section's lead).
    pub fn parties(&self, subject: &str) -> Vec<String> {
        if let Some(r) = self.responsibilities.iter().find(|r| r.subject == subject) {
            return r.parties.clone();
        }
        let prefix = format!("{subject}/");
        let mut out: Vec<String> = Vec::new();
        for r in self
            .responsibilities
            .iter()
            .filter(|r| r.subject.starts_with(&prefix))
        {
            for p in &r.parties {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// The departments a party stands for: a group's members, or the department itself.
    pub fn members_of<'a>(&'a self, party: &'a str) -> Vec<&'a str> {
        match self.group(party) {
            Some(g) => g.members.iter().map(String::as_str).collect(),
            None => vec![party],
        }
    }

    /// Every responsible department of a subject, groups expanded, lead first; a department
    /// named more than once keeps its first (strongest) place.
    pub fn duties_for_subject(&self, subject: &str) -> Vec<Duty> {
        expand(subject, &self.parties(subject), &self.groups)
    }

    /// Every subject a department is responsible for (directly or through a group): indicators,
    /// items without sections and item sections.
    pub fn duties_of_department(&self, department: &str) -> Vec<Duty> {
        self.responsibilities
            .iter()
            .flat_map(|r| expand(&r.subject, &r.parties, &self.groups))
            .filter(|d| d.department == department)
            .collect()
    }
}

/// Expands groups in an ordered party list: the first party leads, the rest co-lead.
pub fn expand(subject: &str, parties: &[String], groups: &[Group]) -> Vec<Duty> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, party) in parties.iter().enumerate() {
        let role = if i == 0 { Role::Lead } else { Role::Co };
        let (members, via): (Vec<&String>, Option<&String>) =
            match groups.iter().find(|g| &g.code == party) {
                Some(g) => (g.members.iter().collect(), Some(&g.code)),
                None => (vec![party], None),
            };
        for m in members {
            if seen.insert(m.clone()) {
                out.push(Duty {
                    subject: subject.to_owned(),
                    department: m.clone(),
                    role,
                    via_group: via.cloned(),
                });
            }
        }
    }
    out
}

/// Every problem with a reporting duty: an id that is not a code, an unknown party, no metrics,
/// an unknown metric or one reported by assessors (SCORE, TASK_STATUS), no regions, an unknown
/// region. Used for the city file and for the registry's CreateReportingDuty.
pub fn check_reporting_duty(
    duty: &ReportingDuty,
    catalog: &Catalog,
    party_known: &dyn Fn(&str) -> bool,
    region_known: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let id_ok = !duty.id.is_empty()
        && duty.id.len() <= 64
        && duty
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && duty
            .id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if !id_ok {
        out.push(format!(
            "id `{}` is not a code (1-64 lowercase letters, digits and '-')",
            duty.id
        ));
    }
    if !party_known(&duty.party) {
        out.push(format!("unknown department or group `{}`", duty.party));
    }
    if duty.metrics.is_empty() {
        out.push("needs at least one metric".to_owned());
    }
    let mut seen = BTreeSet::new();
    for m in &duty.metrics {
        match catalog.metric(m) {
            None => out.push(format!("unknown metric `{m}`")),
            Some(x) if matches!(x.kind, MetricKind::Score | MetricKind::TaskStatus) => {
                out.push(format!(
                    "`{m}` is a {} metric, reported by assessors, not departments",
                    x.kind.as_str()
                ));
            }
            Some(_) => {}
        }
        if !seen.insert(m) {
            out.push(format!("metric `{m}` is named twice"));
        }
    }
    if duty.regions.is_empty() {
        out.push("needs at least one region".to_owned());
    }
    for r in &duty.regions {
        if !region_known(r) {
            out.push(format!("unknown region `{r}`"));
        }
    }
    out
}

fn validate(file: CityFile, source: &str, catalog: &Catalog, d: &mut Diagnostics<'_>) -> City {
    // Regions: unique codes, one root (the city), parents that exist, no cycles.
    let mut parents: HashMap<&str, Option<&str>> = HashMap::new();
    for r in &file.regions {
        let span = r.span();
        let r = r.get_ref();
        let key = format!("region {}", r.code);
        if r.code.is_empty() || !r.code.bytes().all(|b| b.is_ascii_digit()) {
            d.at(&span, &key, "region codes are digits (GB/T 2260)");
        }
        if parents.insert(&r.code, r.parent.as_deref()).is_some() {
            d.at(&span, &key, "duplicate region code");
        }
    }
    for r in &file.regions {
        let span = r.span();
        let r = r.get_ref();
        let key = format!("region {}", r.code);
        match r.parent.as_deref() {
            None if r.code != file.city.code => {
                d.at(
                    &span,
                    &key,
                    format!("only the city ({}) has no parent", file.city.code),
                );
            }
            Some(p) if !parents.contains_key(p) => {
                d.at(&span, &key, format!("parent region `{p}` is missing"));
            }
            _ => {
                // Walk up: a cycle never reaches the root.
                let mut at = r.code.as_str();
                for _ in 0..=parents.len() {
                    match parents.get(at).copied().flatten() {
                        Some(p) => at = p,
                        None => break,
                    }
                }
                if parents.get(at).copied().flatten().is_some() {
                    d.at(&span, &key, "its parents form a cycle");
                }
            }
        }
    }
    if !parents.contains_key(file.city.code.as_str()) {
        d.nowhere(
            "city.code",
            format!("no region has the city's code {}", file.city.code),
        );
    }

    let mut dept_codes = BTreeSet::new();
    for dep in &file.departments {
        let span = dep.span();
        let dep = dep.get_ref();
        let key = format!("department {}", dep.code);
        if !dept_codes.insert(dep.code.as_str()) {
            d.at(&span, &key, "duplicate department code");
        }
        if let Some(region) = &dep.governs
            && !parents.contains_key(region.as_str())
        {
            d.at(&span, &key, format!("governs unknown region `{region}`"));
        }
    }
    let mut group_codes = BTreeSet::new();
    for g in &file.groups {
        let span = g.span();
        let g = g.get_ref();
        let key = format!("group {}", g.code);
        if !group_codes.insert(g.code.as_str()) || dept_codes.contains(g.code.as_str()) {
            d.at(
                &span,
                &key,
                "duplicate code (groups and departments share one namespace)",
            );
        }
        for m in &g.members {
            if !dept_codes.contains(m.as_str()) {
                d.at(&span, &key, format!("member `{m}` is not a department"));
            }
        }
    }
    for (subject, parties) in &file.responsibilities {
        let span = subject.span();
        let key = format!("responsibilities.{}", subject.get_ref());
        if !catalog.is_responsibility_subject(subject.get_ref()) {
            let message = match catalog.item(subject.get_ref()) {
                Some(item) => format!(
                    "item {} has sections: give each section its list ({})",
                    item.code,
                    item.subjects().join(", ")
                ),
                None => "no indicator, evaluation item or item section (`E07/rule-of-law`) has this code".to_owned(),
            };
            d.at(&span, &key, message);
        }
        if parties.get_ref().is_empty() {
            d.at(&span, &key, "needs at least one responsible party");
        }
        let mut seen = BTreeSet::new();
        for p in parties.get_ref() {
            if !dept_codes.contains(p.as_str()) && !group_codes.contains(p.as_str()) {
                d.at(
                    &parties.span(),
                    &key,
                    format!("unknown department or group `{p}`"),
                );
            }
            if !seen.insert(p) {
                d.at(&parties.span(), &key, format!("`{p}` is named twice"));
            }
        }
    }
    let named: BTreeSet<&str> = file
        .responsibilities
        .keys()
        .map(|k| k.get_ref().as_str())
        .collect();
    for code in catalog.responsibility_subjects() {
        if !named.contains(code.as_str()) {
            d.nowhere(
                format!("responsibilities.{code}"),
                "missing: every indicator, item and item section needs responsible parties",
            );
        }
    }

    let mut duty_ids = BTreeSet::new();
    for duty in &file.reporting_duties {
        let span = duty.span();
        let duty = duty.get_ref();
        let key = format!("reporting_duty {}", duty.id);
        if !duty_ids.insert(duty.id.as_str()) {
            d.at(&span, &key, "duplicate reporting duty id");
        }
        let known = |r: &str| parents.contains_key(r);
        for problem in check_reporting_duty(
            duty,
            catalog,
            &|p| dept_codes.contains(p) || group_codes.contains(p),
            &known,
        ) {
            d.at(&span, &key, problem);
        }
    }

    // Cycles: checked as CreateCycle checks them, against the catalog's one rule version.
    let versions = vec![catalog.version.clone()];
    let department_known = |c: &str| dept_codes.contains(c);
    let ctx = CycleContext {
        versions: &versions,
        catalog,
        department_known: &department_known,
    };
    let mut cycles = Vec::with_capacity(file.cycles.len());
    let mut cycle_ids = BTreeSet::new();
    for c in file.cycles {
        let span = c.span();
        let mut problems = Vec::new();
        let cycle = c.into_inner().into_cycle(&mut problems);
        let key = format!("cycle {}", cycle.id);
        if !cycle_ids.insert(cycle.id.clone()) {
            d.at(&span, &key, "duplicate cycle id");
        }
        problems.extend(check_cycle_header(&cycle, &ctx));
        problems.extend(check_deadlines(&cycle, &cycle.deadlines, "deadline", &ctx));
        for (field, message) in problems {
            d.at(&span, &key, format!("{field}: {message}"));
        }
        cycles.push(cycle);
    }

    let responsibilities: Vec<Responsibility> = file
        .responsibilities
        .into_iter()
        .map(|(s, p)| Responsibility {
            subject: s.into_inner(),
            parties: p.into_inner(),
        })
        .collect();
    let mut city = City {
        code: file.city.code,
        name: file.city.name,
        source: source.to_owned(),
        regions: file.regions.into_iter().map(Spanned::into_inner).collect(),
        departments: file
            .departments
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        groups: file.groups.into_iter().map(Spanned::into_inner).collect(),
        responsibilities,
        reporting_duties: file
            .reporting_duties
            .into_iter()
            .map(Spanned::into_inner)
            .collect(),
        cycles,
    };
    city.sort_by_catalog(catalog);
    city
}

#[cfg(test)]
mod tests;
