//! `citycredit.v1.IndicatorService`: the loaded catalog and the city's responsibility table,
//! read-only. Every RPC here is a read, authorized like every other (`citycredit::auth`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use citycredit::auth::authorize;
use citycredit::org::OrgView;
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_server::IndicatorService;
use citycredit::status::{next_page_token, page};
use citycredit::wire::bare as strip;
use citycredit_core::auth::Action;
use citycredit_core::catalog::{self, Catalog, IndicatorKind, MetricKind, RuleVersions};
use citycredit_core::city::City;
use citycredit_core::numbers::Precision;

use crate::error::ScoringError;
use crate::wording::{Rules, locale_of};

/// Serves the catalog. The organisation (for responsible parties) is a snapshot that the
/// registry replaces when an administrator changes it.
#[derive(Clone)]
pub struct IndicatorApi {
    catalog: Arc<Catalog>,
    org: OrgView,
    /// Every loaded catalog (ListRuleVersions); the others RPCs describe the primary.
    versions: Arc<RuleVersions>,
    /// The primary catalog's guiding maximum as written out, summed once (GetCatalog is the
    /// call made most often, and the sum is exact rational arithmetic).
    guiding_max_total: String,
}

impl IndicatorApi {
    pub fn new(catalog: Arc<Catalog>, org: OrgView) -> Self {
        let versions = Arc::new(RuleVersions::single(Arc::clone(&catalog)));
        IndicatorApi {
            guiding_max_total: catalog.guiding_max_total().rounded(Precision::Score),
            catalog,
            org,
            versions,
        }
    }

    /// Lists these rule versions; their primary becomes the catalog described.
    pub fn with_rule_versions(mut self, versions: Arc<RuleVersions>) -> Self {
        self.catalog = Arc::clone(versions.primary());
        self.guiding_max_total = self.catalog.guiding_max_total().rounded(Precision::Score);
        self.versions = versions;
        self
    }

    fn indicator(&self, ind: &catalog::Indicator, city: &City, words: Rules<'_>) -> pb::Indicator {
        let terms = match ind.kind {
            IndicatorKind::Basic => ind
                .conditions
                .iter()
                .map(|c| pb::RuleTerm {
                    label: c.label.clone(),
                    summary: words.predicate(&c.predicate),
                    metric_keys: c
                        .predicate
                        .metrics()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    max_score: String::new(),
                })
                .collect(),
            IndicatorKind::Guiding => ind
                .parts
                .iter()
                .map(|p| pb::RuleTerm {
                    label: p.label.clone(),
                    summary: words.formula(&p.formula),
                    metric_keys: p.formula.metrics().into_iter().map(str::to_owned).collect(),
                    max_score: self.catalog.part_max(&p.formula).rounded(Precision::Score),
                })
                .collect(),
        };
        pb::Indicator {
            name: format!("indicators/{}", ind.code),
            code: ind.code.clone(),
            source_number: ind.source_number,
            kind: indicator_kind(ind.kind) as i32,
            title: ind.title.clone(),
            title_en: ind.title_en.clone().unwrap_or_default(),
            max_score: ind
                .max_score
                .as_ref()
                .map(|m| m.rounded(Precision::Score))
                .unwrap_or_default(),
            rule_summary: words.rule(ind),
            terms,
            metric_keys: ind.metrics().into_iter().map(str::to_owned).collect(),
            responsible: responsible_parties(city, &ind.code),
        }
    }
}

/// The parties responsible for a subject, lead first, with display names.
pub fn responsible_parties(city: &City, subject: &str) -> Vec<pb::ResponsibleParty> {
    city.parties(subject)
        .iter()
        .enumerate()
        .map(|(i, code)| {
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
                role: if i == 0 {
                    pb::ResponsibilityRole::Lead
                } else {
                    pb::ResponsibilityRole::Co
                } as i32,
                position: u32::try_from(i).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

pub fn indicator_kind(kind: IndicatorKind) -> pb::IndicatorKind {
    match kind {
        IndicatorKind::Basic => pb::IndicatorKind::Basic,
        IndicatorKind::Guiding => pb::IndicatorKind::Guiding,
    }
}

pub fn metric_kind(kind: MetricKind) -> pb::MetricKind {
    match kind {
        MetricKind::Count => pb::MetricKind::Count,
        MetricKind::Amount => pb::MetricKind::Amount,
        MetricKind::Bool => pb::MetricKind::Bool,
        MetricKind::Rank => pb::MetricKind::Rank,
        MetricKind::Score => pb::MetricKind::Score,
        MetricKind::DomainFlag => pb::MetricKind::DomainFlag,
        MetricKind::TaskStatus => pb::MetricKind::TaskStatus,
    }
}

fn aggregation(a: catalog::Aggregation) -> pb::Aggregation {
    match a {
        catalog::Aggregation::Sum => pb::Aggregation::Sum,
        catalog::Aggregation::AnyTrue => pb::Aggregation::AnyTrue,
        catalog::Aggregation::AtRegion => pb::Aggregation::AtRegion,
        catalog::Aggregation::LatestAtRegion => pb::Aggregation::LatestAtRegion,
        catalog::Aggregation::DomainUnion => pb::Aggregation::DomainUnion,
    }
}

fn metric(m: &catalog::Metric) -> pb::Metric {
    pb::Metric {
        name: format!("metrics/{}", m.key),
        key: m.key.clone(),
        kind: metric_kind(m.kind) as i32,
        aggregation: aggregation(m.kind.aggregation()) as i32,
        scope: match m.scope() {
            catalog::AggregationScope::Subtree => pb::AggregationScope::Subtree,
            catalog::AggregationScope::Region => pb::AggregationScope::Region,
        } as i32,
        time_class: match m.time {
            catalog::TimeClass::Flow => pb::TimeClass::Flow,
            catalog::TimeClass::Level => pb::TimeClass::Level,
        } as i32,
        title: m.title.clone(),
        title_en: m.title_en.clone().unwrap_or_default(),
        domain_set: m.domain_set.clone().unwrap_or_default(),
        max_value: m.max.as_ref().map(|v| v.to_plain()).unwrap_or_default(),
        used_by: m.used_by.clone(),
    }
}

fn task_check(c: &Catalog, check: &catalog::ItemCheck, words: Rules<'_>) -> pb::TaskCheck {
    pb::TaskCheck {
        summary: words.check(check),
        check_type: check.type_name().to_owned(),
        indicator_code: check.indicator().unwrap_or_default().to_owned(),
        condition_labels: match check {
            catalog::ItemCheck::IndicatorPasses { conditions, .. } => conditions.clone(),
            _ => Vec::new(),
        },
        metric_keys: c
            .check_metrics(check)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

fn item(c: &Catalog, it: &catalog::Item, city: &City, words: Rules<'_>) -> pb::EvaluationItem {
    // A task answers to its section's list, or to the item's when the item has no sections.
    let subject = |t: &catalog::Task| match &t.section {
        Some(s) => catalog::section_subject(&it.code, &s.code),
        None => it.code.clone(),
    };
    let section_name = |code: &str| format!("items/{}/sections/{code}", it.code);
    pb::EvaluationItem {
        name: format!("items/{}", it.code),
        code: it.code.clone(),
        title: it.title.clone(),
        title_en: it.title_en.clone().unwrap_or_default(),
        tasks: it
            .tasks
            .iter()
            .map(|t| pb::EvaluationTask {
                id: t.id.clone(),
                title: t.title.clone(),
                title_en: t.title_en.clone().unwrap_or_default(),
                section: t
                    .section
                    .as_ref()
                    .map(|s| s.title.clone())
                    .unwrap_or_default(),
                section_en: t
                    .section
                    .as_ref()
                    .and_then(|s| s.title_en.clone())
                    .unwrap_or_default(),
                checks: t.checks.iter().map(|k| words.check(k)).collect(),
                description: t.description.clone().unwrap_or_default(),
                description_en: t.description_en.clone().unwrap_or_default(),
                check_details: t.checks.iter().map(|k| task_check(c, k, words)).collect(),
                section_name: t
                    .section
                    .as_ref()
                    .map(|s| section_name(&s.code))
                    .unwrap_or_default(),
                responsible: responsible_parties(city, &subject(t)),
            })
            .collect(),
        responsible: responsible_parties(city, &it.code),
        sections: it
            .sections()
            .into_iter()
            .map(|s| pb::EvaluationSection {
                name: section_name(&s.code),
                code: s.code.clone(),
                title: s.title.clone(),
                title_en: s.title_en.clone().unwrap_or_default(),
                responsible: responsible_parties(
                    city,
                    &catalog::section_subject(&it.code, &s.code),
                ),
                task_ids: it
                    .tasks_in(Some(&s.code))
                    .into_iter()
                    .map(|t| t.id.clone())
                    .collect(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl IndicatorService for IndicatorApi {
    async fn get_catalog(
        &self,
        request: Request<pb::GetCatalogRequest>,
    ) -> Result<Response<pb::GetCatalogResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let org = self.org.borrow().clone();
        let city = &org.city;
        let c = &self.catalog;
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::GetCatalogResponse {
            version: c.version.clone(),
            title: c.title.clone(),
            title_en: c.title_en.clone().unwrap_or_default(),
            source: c.source.clone(),
            city_name: city.name.clone(),
            city_source: city.source.clone(),
            metric_count: count(c.metrics.len()),
            indicator_count: count(c.indicators.len()),
            evaluation_item_count: count(c.items.len()),
            guiding_max_total: self.guiding_max_total.clone(),
            rulebook_version: c.rulebook_version,
        }))
    }

    async fn list_indicators(
        &self,
        request: Request<pb::ListIndicatorsRequest>,
    ) -> Result<Response<pb::ListIndicatorsResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let words = Rules::new(&self.catalog, locale_of(request.metadata()));
        let req = request.into_inner();
        let (offset, limit) = page(req.page_size, &req.page_token, usize::MAX, usize::MAX)?;
        let want = pb::IndicatorKind::try_from(req.kind).unwrap_or(pb::IndicatorKind::Unspecified);
        let org = self.org.borrow().clone();
        let city = &org.city;
        let matching: Vec<&catalog::Indicator> = self
            .catalog
            .indicators
            .iter()
            .filter(|i| want == pb::IndicatorKind::Unspecified || indicator_kind(i.kind) == want)
            .collect();
        let indicators = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|i| self.indicator(i, city, words))
            .collect();
        Ok(Response::new(pb::ListIndicatorsResponse {
            indicators,
            next_page_token: next_page_token(offset, limit, matching.len()),
        }))
    }

    async fn get_indicator(
        &self,
        request: Request<pb::GetIndicatorRequest>,
    ) -> Result<Response<pb::GetIndicatorResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let words = Rules::new(&self.catalog, locale_of(request.metadata()));
        let name = request.into_inner().name;
        let code = strip(&name, "indicators/");
        let ind = self
            .catalog
            .indicator(code)
            .ok_or_else(|| Status::from(ScoringError::NotFound(format!("indicators/{code}"))))?;
        let org = self.org.borrow().clone();
        let city = &org.city;
        Ok(Response::new(pb::GetIndicatorResponse {
            indicator: Some(self.indicator(ind, city, words)),
        }))
    }

    async fn list_metrics(
        &self,
        request: Request<pb::ListMetricsRequest>,
    ) -> Result<Response<pb::ListMetricsResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let req = request.into_inner();
        let (offset, limit) = page(req.page_size, &req.page_token, usize::MAX, usize::MAX)?;
        let all = &self.catalog.metrics;
        Ok(Response::new(pb::ListMetricsResponse {
            metrics: all.iter().skip(offset).take(limit).map(metric).collect(),
            next_page_token: next_page_token(offset, limit, all.len()),
        }))
    }

    async fn get_metric(
        &self,
        request: Request<pb::GetMetricRequest>,
    ) -> Result<Response<pb::GetMetricResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let name = request.into_inner().name;
        let key = strip(&name, "metrics/");
        let m = self
            .catalog
            .metric(key)
            .ok_or_else(|| Status::from(ScoringError::NotFound(format!("metrics/{key}"))))?;
        Ok(Response::new(pb::GetMetricResponse {
            metric: Some(metric(m)),
        }))
    }

    async fn list_domain_sets(
        &self,
        request: Request<pb::ListDomainSetsRequest>,
    ) -> Result<Response<pb::ListDomainSetsResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let domain_sets = self
            .catalog
            .domain_sets
            .iter()
            .map(|s| pb::DomainSet {
                code: s.code.clone(),
                open: s.open,
                domains: s
                    .domains
                    .iter()
                    .map(|d| pb::Domain {
                        code: d.code.clone(),
                        title: d.title.clone(),
                        title_en: d.title_en.clone().unwrap_or_default(),
                        group: d.group.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListDomainSetsResponse { domain_sets }))
    }

    async fn list_evaluation_items(
        &self,
        request: Request<pb::ListEvaluationItemsRequest>,
    ) -> Result<Response<pb::ListEvaluationItemsResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let words = Rules::new(&self.catalog, locale_of(request.metadata()));
        let org = self.org.borrow().clone();
        let city = &org.city;
        Ok(Response::new(pb::ListEvaluationItemsResponse {
            items: self
                .catalog
                .items
                .iter()
                .map(|i| item(&self.catalog, i, city, words))
                .collect(),
        }))
    }

    async fn get_evaluation_item(
        &self,
        request: Request<pb::GetEvaluationItemRequest>,
    ) -> Result<Response<pb::GetEvaluationItemResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let words = Rules::new(&self.catalog, locale_of(request.metadata()));
        let name = request.into_inner().name;
        let code = strip(&name, "items/");
        let it = self
            .catalog
            .item(code)
            .ok_or_else(|| Status::from(ScoringError::NotFound(format!("items/{code}"))))?;
        let org = self.org.borrow().clone();
        let city = &org.city;
        Ok(Response::new(pb::GetEvaluationItemResponse {
            item: Some(item(&self.catalog, it, city, words)),
        }))
    }

    async fn list_rule_versions(
        &self,
        request: Request<pb::ListRuleVersionsRequest>,
    ) -> Result<Response<pb::ListRuleVersionsResponse>, Status> {
        authorize(&request, &self.org.borrow().access, Action::Read)?;
        let primary = self.versions.primary().version.clone();
        Ok(Response::new(pb::ListRuleVersionsResponse {
            rule_versions: self
                .versions
                .catalogs()
                .into_iter()
                .map(|c| pb::RuleVersion {
                    version: c.version.clone(),
                    title: c.title.clone(),
                    source: c.source.clone(),
                    primary: c.version == primary,
                    indicator_count: u32::try_from(c.indicators.len()).unwrap_or(u32::MAX),
                    guiding_max_total: c.guiding_max_total().rounded(Precision::Score),
                })
                .collect(),
        }))
    }
}
