//! Rule versions side by side: the catalogs loaded at start, by their `version`. The primary one
//! is what ingestion validates against, what the city file is checked against and what scoring
//! uses when no version is asked for; the others can only be scored against (a national revision
//! being prepared, or last cycle's rules kept for comparison).
//!
//! Metrics are shared: ingestion aggregates every value by the primary catalog's metric kinds,
//! so one set of figures feeds every version. An extra catalog therefore may not declare a
//! metric the primary has with another kind, time class or scope (it would read figures made
//! for a different meaning); a metric only it declares is never reported and reads as missing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Catalog, LoadError, Problem};

/// The most catalogs loaded side by side (the primary included): each is a few hundred KiB in
/// memory and multiplies what scorecard caches can hold.
pub const MAX_RULE_VERSIONS: usize = 8;

/// The loaded catalogs by version, with the primary one named.
#[derive(Debug, Clone)]
pub struct RuleVersions {
    primary: Arc<Catalog>,
    by_version: BTreeMap<String, Arc<Catalog>>,
}

impl RuleVersions {
    /// Only the primary catalog.
    pub fn single(primary: Arc<Catalog>) -> RuleVersions {
        let mut by_version = BTreeMap::new();
        by_version.insert(primary.version.clone(), Arc::clone(&primary));
        RuleVersions {
            primary,
            by_version,
        }
    }

    /// The primary catalog and extra ones, each already validated by the loader. Refused, with
    /// every problem, when two share a version, when there are more than
    /// [`MAX_RULE_VERSIONS`], or when an extra catalog declares a shared metric differently.
    pub fn new(primary: Arc<Catalog>, extra: Vec<Catalog>) -> Result<RuleVersions, LoadError> {
        let mut versions = RuleVersions::single(primary);
        let mut problems = Vec::new();
        let mut files = Vec::new();
        if extra.len() + 1 > MAX_RULE_VERSIONS {
            problems.push(problem(
                "rule_versions",
                format!(
                    "{} catalogs loaded side by side; at most {MAX_RULE_VERSIONS} (the primary included)",
                    extra.len() + 1
                ),
            ));
        }
        for catalog in extra {
            files.push(catalog.source.clone());
            if let Some(first) = versions.by_version.get(&catalog.version) {
                problems.push(problem(
                    "catalog.version",
                    format!(
                        "{}: version `{}` is loaded already from {}; every catalog needs a version of its own",
                        catalog.source, catalog.version, first.source
                    ),
                ));
                continue;
            }
            problems.extend(metric_conflicts(&versions.primary, &catalog));
            versions
                .by_version
                .insert(catalog.version.clone(), Arc::new(catalog));
        }
        if problems.is_empty() {
            Ok(versions)
        } else {
            Err(LoadError {
                file: files.join(", "),
                problems,
            })
        }
    }

    /// The catalog ingestion validates against and scoring uses by default.
    pub fn primary(&self) -> &Arc<Catalog> {
        &self.primary
    }

    /// The catalog of `version`; the primary for "".
    pub fn get(&self, version: &str) -> Option<&Arc<Catalog>> {
        if version.is_empty() {
            Some(&self.primary)
        } else {
            self.by_version.get(version)
        }
    }

    /// Every loaded version: the primary first, then the others in text order.
    pub fn versions(&self) -> Vec<&str> {
        std::iter::once(self.primary.version.as_str())
            .chain(
                self.by_version
                    .keys()
                    .map(String::as_str)
                    .filter(|v| *v != self.primary.version),
            )
            .collect()
    }

    /// Every loaded catalog, in the order of [`RuleVersions::versions`].
    pub fn catalogs(&self) -> Vec<&Arc<Catalog>> {
        self.versions()
            .into_iter()
            .filter_map(|v| self.by_version.get(v))
            .collect()
    }
}

fn problem(key: &str, message: String) -> Problem {
    Problem {
        line: None,
        key: key.to_owned(),
        message,
    }
}

/// The shared metrics `extra` declares otherwise than `primary` (kind, time class, scope,
/// domain set).
fn metric_conflicts(primary: &Catalog, extra: &Catalog) -> Vec<Problem> {
    extra
        .metrics
        .iter()
        .filter_map(|m| {
            let p = primary.metric(&m.key)?;
            let same = p.kind == m.kind
                && p.time == m.time
                && p.scope() == m.scope()
                && p.domain_set == m.domain_set;
            (!same).then(|| {
                problem(
                    &format!("metric {}", m.key),
                    format!(
                        "{}: declared otherwise than in the primary catalog {} (kind, time, scope or domain set); \
                         figures are aggregated by the primary's declaration, so a shared metric must keep it",
                        extra.source, primary.source
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Arc<Catalog> {
        Arc::new(Catalog::builtin().unwrap())
    }

    fn with_version(version: &str) -> Catalog {
        let text = super::super::BUILTIN_CATALOG_TOML.replacen(
            "version = \"2019.2\"",
            &format!("version = \"{version}\""),
            1,
        );
        Catalog::from_toml(&text, "test").unwrap()
    }

    #[test]
    fn versions_are_listed_primary_first() {
        let v = RuleVersions::new(
            builtin(),
            vec![with_version("2026.1"), with_version("2018.1")],
        )
        .unwrap();
        assert_eq!(v.versions(), ["2019.2", "2018.1", "2026.1"]);
        assert_eq!(v.get("").unwrap().version, "2019.2");
        assert_eq!(v.get("2026.1").unwrap().version, "2026.1");
        assert!(v.get("2027").is_none());
        assert_eq!(v.catalogs().len(), 3);
    }

    #[test]
    fn a_version_loaded_twice_is_refused() {
        let e = RuleVersions::new(builtin(), vec![with_version("2019.2")]).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert!(e.problems[0].message.contains("loaded already"), "{e}");
        let e =
            RuleVersions::new(builtin(), vec![with_version("x"), with_version("x")]).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
    }

    #[test]
    fn a_shared_metric_declared_otherwise_is_refused() {
        let text = super::super::BUILTIN_CATALOG_TOML
            .replacen("version = \"2019.2\"", "version = \"other\"", 1)
            .replacen(
                "key = \"double_publicity.licenses_total\"\nkind = \"COUNT\"\ntime = \"flow\"",
                "key = \"double_publicity.licenses_total\"\nkind = \"COUNT\"",
                1,
            );
        let other = Catalog::from_toml(&text, "other.toml").unwrap();
        let e = RuleVersions::new(builtin(), vec![other]).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "metric double_publicity.licenses_total");
    }

    #[test]
    fn at_most_the_bound_of_catalogs() {
        let extra = (0..MAX_RULE_VERSIONS)
            .map(|i| with_version(&format!("v{i}")))
            .collect();
        assert!(RuleVersions::new(builtin(), extra).is_err());
        let extra = (1..MAX_RULE_VERSIONS)
            .map(|i| with_version(&format!("v{i}")))
            .collect();
        assert!(RuleVersions::new(builtin(), extra).is_ok());
    }

    #[test]
    fn the_draft_fixture_loads_beside_the_builtin_catalog() {
        let draft = Catalog::from_toml(
            include_str!("../../../../tests/fixtures/catalogs/national-2026-draft.toml"),
            "national-2026-draft.toml",
        )
        .unwrap();
        assert_eq!(draft.version, "2026.1-draft");
        // Point totals come from the catalog: G14 (4 points) is gone.
        assert_eq!(draft.guiding_max_total(), crate::numbers::Num::from_int(50));
        assert!(draft.indicator("B11").is_some() && draft.indicator("G14").is_none());
        let v = RuleVersions::new(builtin(), vec![draft]).unwrap();
        assert_eq!(v.versions(), ["2019.2", "2026.1-draft"]);
    }
}
