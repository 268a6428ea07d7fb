//! The city's organisation: regions, departments, groups and who is responsible for which
//! indicator and evaluation item. Loaded from a city file (Quzhou compiled in) and validated
//! against the catalog. The registry seeds its store from it on first start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{Catalog, Diagnostics, LoadError, Problem};

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

/// Who is responsible for one indicator or item: the parties in source order, the first leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responsibility {
    /// An indicator or item code ("B01", "E07").
    pub subject: String,
    /// Department or group codes.
    pub parties: Vec<String>,
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

    pub fn department(&self, code: &str) -> Option<&Department> {
        self.departments.iter().find(|r| r.code == code)
    }

    pub fn group(&self, code: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.code == code)
    }

    /// Orders responsibilities as the catalog orders subjects: indicators B01..G20, then items
    /// E01..E12.
    pub fn sort_by_catalog(&mut self, catalog: &Catalog) {
        let order = |s: &str| {
            catalog
                .indicators
                .iter()
                .position(|i| i.code == s)
                .or_else(|| {
                    catalog
                        .items
                        .iter()
                        .position(|i| i.code == s)
                        .map(|p| p + catalog.indicators.len())
                })
                .unwrap_or(usize::MAX)
        };
        self.responsibilities.sort_by_key(|r| order(&r.subject));
    }

    /// The parties responsible for a subject, lead first.
    pub fn parties(&self, subject: &str) -> &[String] {
        self.responsibilities
            .iter()
            .find(|r| r.subject == subject)
            .map_or(&[], |r| r.parties.as_slice())
    }

    /// Every responsible department of a subject, groups expanded, lead first; a department
    /// named more than once keeps its first (strongest) place.
    pub fn duties_for_subject(&self, subject: &str) -> Vec<Duty> {
        expand(subject, self.parties(subject), &self.groups)
    }

    /// Every subject a department is responsible for (directly or through a group).
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
        if catalog.indicator(subject.get_ref()).is_none()
            && catalog.item(subject.get_ref()).is_none()
        {
            d.at(&span, &key, "no indicator or evaluation item has this code");
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
    for code in catalog
        .indicators
        .iter()
        .map(|i| &i.code)
        .chain(catalog.items.iter().map(|i| &i.code))
    {
        if !named.contains(code.as_str()) {
            d.nowhere(
                format!("responsibilities.{code}"),
                "missing: every indicator and item needs responsible parties",
            );
        }
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
    };
    city.sort_by_catalog(catalog);
    city
}

#[cfg(test)]
mod tests;
