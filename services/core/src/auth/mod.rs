//! Who may do what: principals, roles and the one authorization decision every service makes
//! (rulebook section 8). The decision reads a snapshot (`Access`) derived from the catalog and
//! the city's responsibility table, so it needs no I/O on the hot path; the registry replaces
//! the snapshot when the organisation changes. How a decision reaches a caller (a gRPC status)
//! and how a principal travels between processes (the signed identity header) are the
//! contracts' business: `citycredit::auth`.

pub mod secrets;

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::catalog::{Catalog, MetricKind};
use crate::city::City;

/// A principal's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A department system, bound to one department.
    Department,
    /// The credit information sharing platform.
    Platform,
    /// Assesses SCORE metrics and reports task statuses.
    Assessor,
    /// Reads everything, writes nothing.
    Operator,
    /// Manages the registry; may do everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Department => "department",
            Role::Platform => "platform",
            Role::Assessor => "assessor",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "department" => Role::Department,
            "platform" => Role::Platform,
            "assessor" => Role::Assessor,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// An authenticated caller. Services find it in the request's extensions, put there by the
/// authentication layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    pub id: String,
    pub role: Role,
    /// The department of a `department` principal.
    pub department: Option<String>,
    /// The API key the call was authenticated with (its public prefix, `cc_xxxxxxxx`), when it
    /// came from one; None for the platform's own service identities.
    pub credential: Option<String>,
}

/// Whether a principal's credential still stands: not revoked or expired since the call that
/// carries it began. Long calls (a batch stream, a watch) ask again before they commit or
/// deliver, so revoking a key also stops the calls already under way.
pub trait CredentialCheck: Send + Sync + fmt::Debug {
    /// False when `principal.credential` names a key that is no longer active at `now_micros`
    /// (revoked, expired, unknown) or that belongs to another principal, role or department.
    /// A principal without a credential (a service identity) always stands.
    fn still_valid(&self, principal: &Principal, now_micros: i64) -> bool;
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.department {
            Some(d) => write!(f, "principal `{}` (department {d})", self.id),
            None => write!(f, "principal `{}` ({})", self.id, self.role.as_str()),
        }
    }
}

/// What a principal wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Any read: catalog, registry reads, submissions, scorecards.
    Read,
    /// Submit (or retract) a value of `metric` for `region`.
    Submit { metric: &'a str, region: &'a str },
    /// Retract a stored value of `metric` for `region`, reported for `department`: allowed to
    /// whoever may submit it, and for department principals only their own department's values.
    Retract {
        metric: &'a str,
        region: &'a str,
        department: &'a str,
    },
    /// Change the registry, manage principals and keys, verify the audit chain.
    Administer,
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Submit { .. } => "submit",
            Action::Retract { .. } => "retract",
            Action::Administer => "administer",
        }
    }
}

/// Everything the decision needs, derived once per organisation change.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Metric key -> kind.
    kinds: HashMap<String, MetricKind>,
    /// Department -> the metrics of every subject it is responsible for (groups expanded).
    department_metrics: HashMap<String, HashSet<String>>,
    /// County government -> the region it governs.
    governs: HashMap<String, String>,
    /// Region -> parent.
    parents: HashMap<String, Option<String>>,
}

impl Access {
    pub fn new(catalog: &Catalog, city: &City) -> Access {
        let mut department_metrics: HashMap<String, HashSet<String>> = HashMap::new();
        for r in &city.responsibilities {
            let metrics: Vec<&str> = catalog.subject_metrics(&r.subject);
            for duty in city.duties_for_subject(&r.subject) {
                department_metrics
                    .entry(duty.department)
                    .or_default()
                    .extend(metrics.iter().map(|m| (*m).to_owned()));
            }
        }
        Access {
            kinds: catalog
                .metrics
                .iter()
                .map(|m| (m.key.clone(), m.kind))
                .collect(),
            department_metrics,
            governs: city
                .departments
                .iter()
                .filter_map(|d| d.governs.clone().map(|g| (d.code.clone(), g)))
                .collect(),
            parents: city
                .regions
                .iter()
                .map(|r| (r.code.clone(), r.parent.clone()))
                .collect(),
        }
    }

    /// True when `region` is `ancestor` or lies below it.
    pub fn region_within(&self, region: &str, ancestor: &str) -> bool {
        let mut at = Some(region.to_owned());
        for _ in 0..=self.parents.len() {
            match at {
                Some(ref r) if r == ancestor => return true,
                Some(r) => at = self.parents.get(&r).cloned().flatten(),
                None => return false,
            }
        }
        false
    }

    /// Metrics a department may report (SCORE and TASK_STATUS excluded: assessors' alone).
    pub fn department_metrics(&self, department: &str) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .department_metrics
            .get(department)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .filter(|m| !self.is_assessed(m))
            .collect();
        out.sort_unstable();
        out
    }

    fn is_assessed(&self, metric: &str) -> bool {
        matches!(
            self.kinds.get(metric),
            Some(MetricKind::Score | MetricKind::TaskStatus)
        )
    }

    /// The decision: Ok, or why not.
    pub fn decide(&self, p: &Principal, action: Action<'_>) -> Result<(), Denied> {
        let deny = |reason: String| {
            Err(Denied {
                principal: p.to_string(),
                action: action.name(),
                metric: match action {
                    Action::Submit { metric, .. } | Action::Retract { metric, .. } => {
                        metric.to_owned()
                    }
                    _ => String::new(),
                },
                region: match action {
                    Action::Submit { region, .. } | Action::Retract { region, .. } => {
                        region.to_owned()
                    }
                    _ => String::new(),
                },
                reason,
            })
        };
        if let Action::Retract {
            metric,
            region,
            department,
        } = action
        {
            if p.role == Role::Department && p.department.as_deref() != Some(department) {
                return deny(format!(
                    "it was reported for department `{department}`; a department retracts only its own values"
                ));
            }
            return self
                .decide(p, Action::Submit { metric, region })
                .map_err(|mut d| {
                    d.action = "retract";
                    d
                });
        }
        match (p.role, action) {
            (Role::Admin, _) | (_, Action::Read) => Ok(()),
            (_, Action::Administer) => deny("only administrators manage the registry".into()),
            (_, Action::Retract { .. }) => Ok(()),
            (Role::Operator, Action::Submit { .. }) => {
                deny("operators read and do not submit".into())
            }
            (Role::Platform, Action::Submit { metric, .. }) => {
                if self.is_assessed(metric) {
                    deny("SCORE and TASK_STATUS metrics are reported by assessors".into())
                } else {
                    Ok(())
                }
            }
            (Role::Assessor, Action::Submit { metric, .. }) => {
                if self.is_assessed(metric) {
                    Ok(())
                } else {
                    deny("assessors report SCORE metrics and task statuses only".into())
                }
            }
            (Role::Department, Action::Submit { metric, region }) => {
                let Some(dept) = p.department.as_deref() else {
                    return deny("a department principal without a department".into());
                };
                if self.is_assessed(metric) {
                    return deny("SCORE and TASK_STATUS metrics are reported by assessors".into());
                }
                let responsible = self
                    .department_metrics
                    .get(dept)
                    .is_some_and(|m| m.contains(metric));
                if !responsible {
                    return deny(format!(
                        "department {dept} is not responsible for an indicator or item that uses it"
                    ));
                }
                if let Some(own) = self.governs.get(dept)
                    && !self.region_within(region, own)
                {
                    return deny(format!(
                        "department {dept} reports only for region {own} and the regions below it"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A refused action, naming who, what, which metric and which region.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {action}{}{}: {reason}",
    if metric.is_empty() { String::new() } else { format!(" `{metric}`") },
    if region.is_empty() { String::new() } else { format!(" for region {region}") })]
pub struct Denied {
    pub principal: String,
    pub action: &'static str,
    pub metric: String,
    pub region: String,
    pub reason: String,
}

#[cfg(test)]
mod tests;
