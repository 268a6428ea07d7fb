//! The organisation snapshot services hold: the city (regions, departments, groups,
//! responsibilities), the domains administrators registered in open domain sets, and the access
//! index derived from them. The registry publishes a new snapshot on every change; readers take
//! the current one without locking or I/O (through `citycredit::org::OrgView`, a watch channel).

use crate::BoxFuture;
use crate::auth::Access;
use crate::catalog::Catalog;
use crate::city::City;
use std::collections::{BTreeMap, BTreeSet};

/// One consistent view of the organisation.
#[derive(Clone, Debug)]
pub struct Org {
    pub city: City,
    /// Domain set code -> domains registered by administrators (open sets only; the catalog's
    /// own domains are not repeated here).
    pub registered_domains: BTreeMap<String, BTreeSet<String>>,
    pub access: Access,
}

impl Org {
    pub fn new(catalog: &Catalog, city: City) -> Org {
        Org::with_domains(catalog, city, BTreeMap::new())
    }

    pub fn with_domains(
        catalog: &Catalog,
        city: City,
        registered_domains: BTreeMap<String, BTreeSet<String>>,
    ) -> Org {
        let access = Access::new(catalog, &city);
        Org {
            city,
            registered_domains,
            access,
        }
    }

    /// True when `domain` belongs to the domain set of the DOMAIN_FLAG metric `metric`: defined
    /// by the catalog, or registered by an administrator in an open set.
    pub fn domain_known(&self, catalog: &Catalog, metric: &str, domain: &str) -> bool {
        let Some(set) = catalog.domain_set_of(metric) else {
            return false;
        };
        set.domains.iter().any(|d| d.code == domain)
            || (set.open
                && self
                    .registered_domains
                    .get(&set.code)
                    .is_some_and(|d| d.contains(domain)))
    }

    /// Every region at or below `region`, `region` first.
    pub fn subtree(&self, region: &str) -> Vec<String> {
        let mut out = vec![region.to_owned()];
        let mut i = 0;
        while i < out.len() {
            let parent = out[i].clone();
            out.extend(
                self.city
                    .regions
                    .iter()
                    .filter(|r| r.parent.as_deref() == Some(parent.as_str()))
                    .map(|r| r.code.clone()),
            );
            i += 1;
        }
        out
    }

    /// `region` and every region above it, `region` first.
    pub fn ancestry(&self, region: &str) -> Vec<String> {
        let mut out = vec![region.to_owned()];
        while let Some(parent) = self
            .city
            .region(out.last().map_or("", String::as_str))
            .and_then(|r| r.parent.clone())
        {
            if out.contains(&parent) || out.len() > self.city.regions.len() {
                break;
            }
            out.push(parent);
        }
        out
    }
}

/// Something that can bring the snapshot up to date at once (the registry), for a reader that
/// meets a name the snapshot lacks: it may have been added a moment ago by another process.
pub trait OrgRefresh: Send + Sync + std::fmt::Debug {
    /// Reloads if the organisation changed since the snapshot was taken; true when it did.
    fn refresh(&self) -> BoxFuture<'_, bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> (Catalog, Org) {
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let city = City::builtin(&catalog).unwrap_or_else(|e| panic!("{e}"));
        let org = Org::with_domains(
            &catalog,
            city,
            BTreeMap::from([(
                "joint_reward_punishment".to_owned(),
                BTreeSet::from(["jrp-00".to_owned()]),
            )]),
        );
        (catalog, org)
    }

    #[test]
    fn domains_come_from_the_catalog_or_registration() {
        let (c, o) = org();
        assert!(o.domain_known(&c, "integrity.credit_records", "production"));
        assert!(!o.domain_known(&c, "integrity.credit_records", "jrp-00"));
        assert!(o.domain_known(&c, "joint_rp.domain_implemented", "jrp-00"));
        assert!(!o.domain_known(&c, "joint_rp.domain_implemented", "jrp-01"));
        assert!(!o.domain_known(&c, "uscc.codes_total", "production"));
    }

    #[test]
    fn region_tree_walks() {
        let (_, o) = org();
        assert_eq!(o.subtree("330800").len(), 7);
        assert_eq!(o.subtree("330802"), ["330802"]);
        assert_eq!(o.ancestry("330881"), ["330881", "330800"]);
        assert_eq!(o.ancestry("330800"), ["330800"]);
    }
}
