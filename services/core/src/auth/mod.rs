//! Who may do what: principals, roles and the one authorization decision every service makes
//! (rulebook section 8), and who is expected to report what (section 9). The decision reads a
//! snapshot (`Access`) derived from the catalog and the city's responsibility table and
//! reporting duties, so it needs no I/O on the hot path; the registry replaces the snapshot
//! when the organisation changes. How a decision reaches a caller (a gRPC status)
//! and how a principal travels between processes (the signed identity header) are the
//! contracts' business: `citycredit::auth`.

pub mod secrets;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    /// The credit office (信用办): reads everything, runs the review cycle (creates cycles and
    /// deadlines, approves, returns and unapproves figures); submits no values and does not
    /// administer the registry.
    CreditOffice,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Department => "department",
            Role::Platform => "platform",
            Role::Assessor => "assessor",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::CreditOffice => "credit_office",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "department" => Role::Department,
            "platform" => Role::Platform,
            "assessor" => Role::Assessor,
            "operator" => Role::Operator,
            "admin" => Role::Admin,
            "credit_office" => Role::CreditOffice,
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
    /// Create evaluation cycles and set their deadlines.
    ManageCycles,
    /// Submit `department`'s figures for `region` for approval (the review cycle).
    SubmitForApproval {
        department: &'a str,
        region: &'a str,
    },
    /// Approve, return or unapprove submitted figures.
    Review,
    /// Grant a lock exception (writes to an approved or closed period).
    GrantLockException,
}

impl Action<'_> {
    fn name(&self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Submit { .. } => "submit",
            Action::Retract { .. } => "retract",
            Action::Administer => "administer",
            Action::ManageCycles => "manage cycles",
            Action::SubmitForApproval { .. } => "submit for approval",
            Action::Review => "review",
            Action::GrantLockException => "grant a lock exception",
        }
    }
}

/// Everything the decision needs, derived once per organisation change.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Metric key -> kind.
    kinds: HashMap<String, MetricKind>,
    /// Department -> the metrics it may report: those of every subject (indicator, item
    /// without sections, item section) it is responsible for, groups expanded, and those of
    /// its explicit reporting duties.
    department_metrics: HashMap<String, HashSet<String>>,
    /// Department -> metric -> the regions it is expected to report the metric for
    /// (rulebook section 9).
    expected: HashMap<String, BTreeMap<String, BTreeSet<String>>>,
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
        let expected = expected_reporters(catalog, city);
        // An explicit reporting duty also permits what it expects.
        for duty in &city.reporting_duties {
            for member in city.members_of(&duty.party) {
                department_metrics
                    .entry(member.to_owned())
                    .or_default()
                    .extend(duty.metrics.iter().cloned());
            }
        }
        Access {
            expected,
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

    /// Metrics a department is expected to report (rulebook section 9), for any region.
    pub fn expected_metrics(&self, department: &str) -> Vec<&str> {
        self.expected
            .get(department)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .map(String::as_str)
            .collect()
    }

    /// The metrics a department is expected to report, each with the regions it reports it
    /// for, in metric order.
    pub fn expected_reports(&self, department: &str) -> Vec<(&str, Vec<&str>)> {
        self.expected
            .get(department)
            .into_iter()
            .flatten()
            .map(|(m, regions)| (m.as_str(), regions.iter().map(String::as_str).collect()))
            .collect()
    }

    /// Metrics a department is expected to report for some region at or below `region`.
    pub fn expected_within(&self, department: &str, region: &str) -> Vec<&str> {
        self.expected
            .get(department)
            .into_iter()
            .flatten()
            .filter(|(_, regions)| regions.iter().any(|r| self.region_within(r, region)))
            .map(|(m, _)| m.as_str())
            .collect()
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
                    Action::Submit { region, .. }
                    | Action::Retract { region, .. }
                    | Action::SubmitForApproval { region, .. } => region.to_owned(),
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
            (_, Action::GrantLockException) => {
                deny("only administrators grant lock exceptions".into())
            }
            (Role::CreditOffice, Action::ManageCycles | Action::Review) => Ok(()),
            (_, Action::ManageCycles) => {
                deny("the credit office and administrators manage cycles and deadlines".into())
            }
            (_, Action::Review) => {
                deny("the credit office and administrators approve, return and unapprove".into())
            }
            (Role::Department, Action::SubmitForApproval { department, region }) => {
                if p.department.as_deref() != Some(department) {
                    return deny(format!(
                        "a department submits only its own figures, not department `{department}`'s"
                    ));
                }
                if let Some(own) = self.governs.get(department)
                    && !self.region_within(region, own)
                {
                    return deny(format!(
                        "department {department} reports only for region {own} and the regions below it"
                    ));
                }
                Ok(())
            }
            (_, Action::SubmitForApproval { .. }) => {
                deny("a department submits its own figures for approval".into())
            }
            (_, Action::Retract { .. }) => Ok(()),
            (Role::CreditOffice, Action::Submit { .. }) => {
                deny("the credit office reviews figures and does not submit them".into())
            }
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

/// Who is expected to report which metric for which region (rulebook section 9).
///
/// For a metric with explicit reporting duties: the duties' departments (a group's members)
/// for the duties' regions, a county government only within its own county. Otherwise the
/// defaults: the departments named individually in the responsibility list of each item
/// section (or item without sections) whose task checks read the metric directly, or, when no
/// section's checks read it, of each indicator that reads it; a department expected this way
/// reports for the city, a county government for its own county, and a county government
/// reached through a group (各县（市、区）政府) for its own county too. Other groups' members
/// (city-departments, leading-group-members, utilities) are expected only through duties.
/// SCORE and TASK_STATUS metrics are expected from the assessor role, from no department.
fn expected_reporters(
    catalog: &Catalog,
    city: &City,
) -> HashMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: HashMap<String, BTreeMap<String, BTreeSet<String>>> = HashMap::new();
    let governs = |d: &str| city.department(d).and_then(|x| x.governs.as_deref());
    let mut add = |dept: &str, metric: &str, region: &str| {
        out.entry(dept.to_owned())
            .or_default()
            .entry(metric.to_owned())
            .or_default()
            .insert(region.to_owned());
    };
    let with_duties: BTreeSet<&str> = city
        .reporting_duties
        .iter()
        .flat_map(|d| d.metrics.iter().map(String::as_str))
        .collect();
    for duty in &city.reporting_duties {
        for member in city.members_of(&duty.party) {
            for metric in &duty.metrics {
                for region in &duty.regions {
                    if governs(member).is_none_or(|own| city.is_within(region, own)) {
                        add(member, metric, region);
                    }
                }
            }
        }
    }
    let item_subjects: Vec<String> = catalog
        .items
        .iter()
        .flat_map(crate::catalog::Item::subjects)
        .collect();
    for metric in &catalog.metrics {
        let key = metric.key.as_str();
        if matches!(metric.kind, MetricKind::Score | MetricKind::TaskStatus)
            || with_duties.contains(key)
        {
            continue;
        }
        let mut subjects: Vec<&str> = item_subjects
            .iter()
            .map(String::as_str)
            .filter(|s| catalog.subject_direct_metrics(s).contains(&key))
            .collect();
        if subjects.is_empty() {
            subjects = catalog
                .indicators
                .iter()
                .filter(|i| i.metrics().contains(&key))
                .map(|i| i.code.as_str())
                .collect();
        }
        for subject in subjects {
            for party in city.parties(subject) {
                if city.group(&party).is_some() {
                    for member in city.members_of(&party) {
                        if let Some(own) = governs(member) {
                            add(member, key, own);
                        }
                    }
                } else {
                    add(&party, key, governs(&party).unwrap_or(&city.code));
                }
            }
        }
    }
    out
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
