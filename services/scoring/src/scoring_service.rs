//! `citycredit.v1.ScoringService`: scorecards computed by the rule engine from ingestion's
//! aggregates (never from history), cached per (region, period) and invalidated by the change
//! feed; explanations, what-ifs, watches, county rankings, department worklists and
//! completeness reports.
//!
//! Scorecards name the evaluation cycle covering their period and score by the rule version it
//! pins when the caller names none ([`ScoringApi::with_cycles`]). The review state (cycles and
//! a sign-off fingerprint) is read every [`REVIEW_REFRESH`]; when it changed, every cached
//! scorecard is dropped and watches recompute, so a new cycle, an approval or an unapproval
//! reaches scorecards within that interval plus one read. Approved-only scorecards are computed
//! afresh for every call and never cached.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use citycredit::aggregates::{AggregateSource, Aggregates, Change, Selection};
use citycredit::auth::authorize;
use citycredit::cycles::{CycleSource, ReviewSnapshot};
use citycredit::localize::Locale;
use citycredit::org::OrgView;
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::scoring_service_server::ScoringService;
use citycredit::status::Violation;
use citycredit_core::auth::{Action, CredentialCheck, Principal};
use citycredit_core::catalog::{Catalog, IndicatorKind, MetricKind, RuleVersions};
use citycredit_core::numbers::{Num, Precision};
use citycredit_core::org::Org;
use citycredit_core::period::Period;
use citycredit_core::rules::{self, Figure, Scorecard};
use citycredit_core::text::{self, TextKind};

use crate::convert;
use crate::error::ScoringError;
use crate::indicator_service::responsible_parties;
use crate::wording;

/// What the review cycle says of a scorecard's period.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CycleMark {
    /// The covering cycle ("" when none).
    pub cycle_id: String,
    /// The rule version it pins ("" when none).
    pub cycle_rule_version: String,
    /// Its review date, YYYY-MM-DD ("" when none).
    pub review_date: String,
    /// The sign-off period that covers the scorecard's inputs: the smallest period of the cycle
    /// containing the scorecard's, else the scorecard's own.
    pub part_period: String,
}

impl CycleMark {
    /// The mark of `period` in `snapshot`.
    pub fn of(snapshot: &ReviewSnapshot, period: &str) -> CycleMark {
        let Some(cycle) = snapshot.covering(period) else {
            return CycleMark {
                part_period: period.to_owned(),
                ..CycleMark::default()
            };
        };
        let part_period = period
            .parse::<Period>()
            .ok()
            .and_then(|p| cycle.containing_period(&p))
            .map_or_else(|| period.to_owned(), |p| p.to_string());
        CycleMark {
            cycle_id: cycle.id.clone(),
            cycle_rule_version: cycle.rule_version.clone(),
            review_date: cycle.review_date.clone(),
            part_period,
        }
    }
}

/// A computed scorecard with the figures it came from.
#[derive(Debug)]
pub struct Scored {
    pub card: Scorecard,
    pub aggregates: Aggregates,
    /// The cycle covering its period.
    pub mark: CycleMark,
    /// The wire form, built once per language on first use (a cached scorecard is then a
    /// clone), its rules, gaps and steps in that language (`wording`).
    wire: std::sync::OnceLock<pb::Scorecard>,
    wire_zh: std::sync::OnceLock<pb::Scorecard>,
}

impl Scored {
    pub fn new(card: Scorecard, aggregates: Aggregates) -> Scored {
        let mark = CycleMark {
            part_period: aggregates.period.clone(),
            ..CycleMark::default()
        };
        Scored::marked(card, aggregates, mark)
    }

    /// With the cycle covering its period.
    pub fn marked(card: Scorecard, aggregates: Aggregates, mark: CycleMark) -> Scored {
        Scored {
            card,
            aggregates,
            mark,
            wire: std::sync::OnceLock::new(),
            wire_zh: std::sync::OnceLock::new(),
        }
    }

    /// The scorecard as sent, with the submissions behind every figure, its gaps and steps
    /// in `locale`.
    pub fn wire(&self, catalog: &Catalog, locale: Locale) -> pb::Scorecard {
        let worded = || {
            let mut card =
                convert::scorecard_in(&self.card, &self.aggregates, &self.mark.part_period);
            card.cycle_id = self.mark.cycle_id.clone();
            card.cycle_rule_version = self.mark.cycle_rule_version.clone();
            wording::scorecard(catalog, &mut card, locale);
            card
        };
        match locale {
            Locale::En => self.wire.get_or_init(worded).clone(),
            Locale::ZhCn => self.wire_zh.get_or_init(worded).clone(),
        }
    }
}

/// Current scorecards by (region, period, rule version). A change bumps the (region, period)
/// generation and drops the entries of every version; a computation stores its result only if
/// no change arrived while it ran.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<(String, String, String), Arc<Scored>>,
    generations: HashMap<(String, String), u64>,
}

impl Cache {
    /// Drops every entry; computations in flight do not store theirs.
    fn invalidate_all(&mut self) {
        for g in self.generations.values_mut() {
            *g += 1;
        }
        self.entries.clear();
    }
}

/// The review cycle as scoring reads it.
struct ReviewView {
    source: Option<Arc<dyn CycleSource>>,
    /// The last snapshot read (None before the first read).
    snapshot: Mutex<Option<Arc<ReviewSnapshot>>>,
    /// Told when a new snapshot differs from the last (watches recompute).
    changed: broadcast::Sender<()>,
}

impl Default for ReviewView {
    fn default() -> Self {
        ReviewView {
            source: None,
            snapshot: Mutex::new(None),
            changed: broadcast::channel(4).0,
        }
    }
}

/// The catalog a request scores by, with the cycle covering its period.
pub(crate) struct Resolved {
    pub catalog: Arc<Catalog>,
    pub mark: CycleMark,
    /// The request named no version and the cycle's is not loaded: the primary scored it.
    pub not_loaded: bool,
}

/// Serves scorecards.
#[derive(Clone)]
pub struct ScoringApi {
    /// The primary catalog and any others loaded side by side.
    versions: Arc<RuleVersions>,
    org: OrgView,
    source: Arc<dyn AggregateSource>,
    cache: Arc<Mutex<Cache>>,
    /// Whether a watcher's API key still stands (None: every key stands).
    credentials: Option<Arc<dyn CredentialCheck>>,
    /// The review cycle's state.
    review: Arc<ReviewView>,
    /// Each change of the feed, told after the cache has dropped what it reaches: a watch that
    /// recomputes on it never reads a scorecard cached before the change.
    invalidated: broadcast::Sender<Change>,
}

impl std::fmt::Debug for ScoringApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoringApi").finish_non_exhaustive()
    }
}

/// The most regions one BatchGetScorecards call may ask for.
const MAX_BATCH_REGIONS: usize = 100;
/// The shortest time between two updates of one watch: the first change after a quiet spell
/// is delivered at once, the changes of a burst within this time after an update wait for its
/// end and go out together in one update.
const WATCH_COALESCE: Duration = Duration::from_millis(100);
/// Changes told to watches and not yet taken; a watch that falls further behind recomputes
/// as for any change (it lost nothing: it always reads the current figures).
const INVALIDATED_CAPACITY: usize = 1024;
/// How often an open watch asks whether its caller's key still stands: a revoked key's watch
/// ends within this interval after the revocation reaches this process.
const CREDENTIAL_RECHECK: Duration = Duration::from_millis(250);
/// How often the review state (cycles, sign-off fingerprint) is read again: a cycle change, an
/// approval or an unapproval reaches scorecards within this interval plus one read.
pub const REVIEW_REFRESH: Duration = Duration::from_secs(1);

/// Installs `new` as the review snapshot; when it differs from the last one, drops the cache
/// and tells the watches.
fn install_snapshot(review: &ReviewView, cache: &Mutex<Cache>, new: ReviewSnapshot) {
    let differs = {
        let mut slot = review
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let differs = slot.as_deref() != Some(&new);
        if differs {
            *slot = Some(Arc::new(new));
        }
        differs
    };
    if differs {
        cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .invalidate_all();
        let _ = review.changed.send(());
    }
}

impl ScoringApi {
    /// Creates the service and starts the task that invalidates the cache from the change feed.
    pub fn new(catalog: Arc<Catalog>, org: OrgView, source: Arc<dyn AggregateSource>) -> Self {
        let api = ScoringApi {
            versions: Arc::new(RuleVersions::single(catalog)),
            org,
            source,
            cache: Arc::new(Mutex::new(Cache::default())),
            credentials: None,
            review: Arc::new(ReviewView::default()),
            invalidated: broadcast::channel(INVALIDATED_CAPACITY).0,
        };
        let mut changes = api.source.changes();
        let cache = Arc::downgrade(&api.cache);
        let invalidated = api.invalidated.clone();
        tokio::spawn(async move {
            loop {
                let event = changes.recv().await;
                let Some(cache) = cache.upgrade() else { break };
                let mut cache = cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let told = match &event {
                    Ok(change) => change.clone(),
                    Err(_) => Change::everything(),
                };
                match event {
                    Ok(change) if change.is_everything() => {
                        cache.invalidate_all();
                    }
                    Ok(change) => {
                        // A value for a month changes its quarter and year too, and a LEVEL
                        // value the periods it carries forward to: every cached period at the
                        // region that the changed one reaches (computations in flight have
                        // registered their key, see `generation`).
                        let key = (change.region.clone(), change.period.clone());
                        *cache.generations.entry(key).or_default() += 1;
                        for ((region, period), g) in cache.generations.iter_mut() {
                            if *region == change.region
                                && *period != change.period
                                && change.reaches(period)
                            {
                                *g += 1;
                            }
                        }
                        cache.entries.retain(|(region, period, _), _| {
                            *region != change.region || !change.reaches(period)
                        });
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Missed events: nothing cached can be trusted.
                        cache.invalidate_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
                drop(cache);
                // No watch listening is no error.
                let _ = invalidated.send(told);
            }
        });
        api
    }

    /// Reads the review cycle from `source`: scorecards name the cycle covering their period
    /// and, when the caller names no rule version, score by the one it pins. Starts the task
    /// that reads it again every [`REVIEW_REFRESH`] (it ends with the service).
    pub fn with_cycles(mut self, source: Arc<dyn CycleSource>) -> Self {
        let review = Arc::new(ReviewView {
            source: Some(Arc::clone(&source)),
            ..ReviewView::default()
        });
        self.review = Arc::clone(&review);
        let (review, cache) = (Arc::downgrade(&review), Arc::downgrade(&self.cache));
        tokio::spawn(async move {
            loop {
                let read = source.snapshot().await;
                let (Some(review), Some(cache)) = (review.upgrade(), cache.upgrade()) else {
                    break;
                };
                match read {
                    Ok(snapshot) => install_snapshot(&review, &cache, snapshot),
                    // The last snapshot stands until a read succeeds.
                    Err(e) => tracing::warn!(error = %e, "reading the review cycles failed"),
                }
                drop((review, cache));
                tokio::time::sleep(REVIEW_REFRESH).await;
            }
        });
        self
    }

    /// The review snapshot: the last one read, or read now before the first (empty without a
    /// cycle source, or when that first read fails).
    async fn review_snapshot(&self) -> Arc<ReviewSnapshot> {
        if let Some(s) = self
            .review
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return s;
        }
        let Some(source) = &self.review.source else {
            return Arc::default();
        };
        match source.snapshot().await {
            Ok(snapshot) => {
                install_snapshot(&self.review, &self.cache, snapshot);
                self.review
                    .snapshot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .unwrap_or_default()
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the review cycles failed");
                Arc::default()
            }
        }
    }

    /// The catalog a request scores by: the rule version it names (`field`), else the one the
    /// cycle covering `period` pins when it is loaded, else the primary.
    pub(crate) async fn resolve(
        &self,
        field: &str,
        asked: &str,
        period: &str,
    ) -> Result<Resolved, Status> {
        let mark = CycleMark::of(&*self.review_snapshot().await, period);
        if !asked.is_empty() {
            return Ok(Resolved {
                catalog: self.rule_version(field, asked)?,
                mark,
                not_loaded: false,
            });
        }
        check_identifier(field, asked)?;
        let pinned = (!mark.cycle_rule_version.is_empty())
            .then(|| self.versions.get(&mark.cycle_rule_version).cloned())
            .flatten();
        let not_loaded = !mark.cycle_rule_version.is_empty() && pinned.is_none();
        Ok(Resolved {
            catalog: pinned.unwrap_or_else(|| Arc::clone(self.catalog())),
            mark,
            not_loaded,
        })
    }

    /// A scorecard as sent for a resolved request.
    fn card(&self, s: &Scored, r: &Resolved, locale: Locale) -> pb::Scorecard {
        let mut card = s.wire(&r.catalog, locale);
        card.cycle_rule_version_not_loaded = r.not_loaded;
        card
    }

    /// The scorecard for (region, period) by a resolved catalog, from the values `selection`
    /// names: all of them from the cache when current; approved ones computed afresh.
    pub(crate) async fn scored_selected(
        &self,
        r: &Resolved,
        region: &str,
        period: &str,
        as_of: Option<i64>,
        selection: Selection,
    ) -> Result<Arc<Scored>, Status> {
        if selection == Selection::All {
            return self.scored_by(&r.catalog, region, period, as_of).await;
        }
        let aggregates = self
            .source
            .aggregates(region, period, as_of, selection)
            .await
            .map_err(convert::source_error)?;
        let card = rules::score(&r.catalog, &aggregates.values);
        Ok(Arc::new(Scored::marked(card, aggregates, r.mark.clone())))
    }

    /// Scores by these rule versions (their primary replaces the catalog given to `new`).
    pub fn with_rule_versions(mut self, versions: Arc<RuleVersions>) -> Self {
        self.versions = versions;
        self
    }

    /// The primary catalog.
    pub(crate) fn catalog(&self) -> &Arc<Catalog> {
        self.versions.primary()
    }

    /// The catalog of a requested rule version ("" is the primary); NOT_FOUND
    /// `UNKNOWN_RULE_VERSION` naming the loaded ones otherwise.
    pub(crate) fn rule_version(&self, field: &str, asked: &str) -> Result<Arc<Catalog>, Status> {
        check_identifier(field, asked)?;
        self.versions.get(asked).cloned().ok_or_else(|| {
            ScoringError::UnknownRuleVersion {
                asked: asked.to_owned(),
                loaded: self
                    .versions
                    .versions()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            }
            .into()
        })
    }

    /// Ends watches whose caller's API key is revoked or expires (asked every
    /// `CREDENTIAL_RECHECK` and before every update).
    pub fn with_credentials(mut self, credentials: Arc<dyn CredentialCheck>) -> Self {
        self.credentials = Some(credentials);
        self
    }

    fn credential_stands(&self, p: &Principal) -> bool {
        self.credentials
            .as_ref()
            .is_none_or(|c| c.still_valid(p, citycredit_core::clock::now_micros()))
    }

    pub(crate) fn org(&self) -> Arc<Org> {
        self.org.borrow().clone()
    }

    pub(crate) fn check_region_period(&self, region: &str, period: &str) -> Result<(), Status> {
        self.check_region_period_at("region_code", region, period)
    }

    /// Checks a region (its violation on `region_field`) and a period.
    fn check_region_period_at(
        &self,
        region_field: &str,
        region: &str,
        period: &str,
    ) -> Result<(), Status> {
        let mut v = Vec::new();
        let region_clean = identifier(region_field, region, &mut v);
        let period_clean = identifier("period", period, &mut v);
        if !region_clean {
        } else if region.is_empty() {
            v.push(Violation::new(region_field, "required"));
        } else if self.org().city.region(region).is_none() {
            v.push(Violation::new(
                region_field,
                format!("unknown region `{region}`"),
            ));
        }
        if period_clean && let Err(e) = period.parse::<Period>() {
            v.push(Violation::new("period", e.to_string()));
        }
        if v.is_empty() {
            Ok(())
        } else {
            Err(ScoringError::Invalid(v).into())
        }
    }

    /// The scorecard for (region, period) by the primary catalog, from the cache when current.
    pub async fn scored(
        &self,
        region: &str,
        period: &str,
        as_of: Option<i64>,
    ) -> Result<Arc<Scored>, Status> {
        let catalog = Arc::clone(self.catalog());
        self.scored_by(&catalog, region, period, as_of).await
    }

    /// The scorecard for (region, period) by `catalog` (one of the loaded rule versions), from
    /// the cache when current.
    pub async fn scored_by(
        &self,
        catalog: &Catalog,
        region: &str,
        period: &str,
        as_of: Option<i64>,
    ) -> Result<Arc<Scored>, Status> {
        let key = (region.to_owned(), period.to_owned());
        let entry = (key.0.clone(), key.1.clone(), catalog.version.clone());
        if as_of.is_none() {
            let cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(hit) = cache.entries.get(&entry) {
                return Ok(Arc::clone(hit));
            }
        }
        let generation = self.generation(&key);
        // Read after the generation: a new snapshot installed later bumps it.
        let mark = CycleMark::of(&*self.review_snapshot().await, period);
        let aggregates = self.aggregates(region, period, as_of).await?;
        let card = rules::score(catalog, &aggregates.values);
        let scored = Arc::new(Scored::marked(card, aggregates, mark));
        if as_of.is_none() {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.generations.get(&key).copied().unwrap_or(0) == generation {
                cache.entries.insert(entry, Arc::clone(&scored));
            }
        }
        Ok(scored)
    }

    /// The aggregated figures for (region, period), uncached.
    pub(crate) async fn aggregates(
        &self,
        region: &str,
        period: &str,
        as_of: Option<i64>,
    ) -> Result<Aggregates, Status> {
        self.source
            .aggregates(region, period, as_of, Selection::All)
            .await
            .map_err(convert::source_error)
    }

    fn generation(&self, key: &(String, String)) -> u64 {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Registered, so that a change to a period reaching this one bumps it while the
        // computation runs.
        *cache.generations.entry(key.clone()).or_default()
    }

    /// The city and its counties (regions one level below the root), city first.
    fn city_and_counties(&self) -> Vec<String> {
        let org = self.org();
        let root = org.city.code.clone();
        let mut out = vec![root.clone()];
        out.extend(
            org.city
                .regions
                .iter()
                .filter(|r| r.parent.as_deref() == Some(root.as_str()))
                .map(|r| r.code.clone()),
        );
        out
    }

    fn overridden(
        &self,
        catalog: &Catalog,
        base: &Aggregates,
        overrides: &[pb::ValueOverride],
    ) -> Result<rules::Values, Status> {
        let mut values = base.values.clone();
        let mut v = Vec::new();
        for (i, o) in overrides.iter().enumerate() {
            let field = |f: &str| format!("overrides[{i}].{f}");
            if !identifier(&field("metric_key"), &o.metric_key, &mut v) {
                continue;
            }
            let mut domains_clean = true;
            for (j, d) in o.domains.iter().enumerate() {
                domains_clean &= identifier(&field(&format!("domains[{j}]")), d, &mut v);
            }
            if !domains_clean {
                continue;
            }
            let Some(metric) = catalog.metric(&o.metric_key) else {
                v.push(Violation::new(
                    field("metric_key"),
                    format!("unknown metric `{}`", o.metric_key),
                ));
                continue;
            };
            if o.clear {
                values.remove(&metric.key);
                continue;
            }
            match figure(metric, o) {
                Ok(f) => {
                    values.set(metric.key.clone(), f);
                }
                Err(why) => v.push(Violation::new(field("value"), why)),
            }
        }
        if v.is_empty() {
            Ok(values)
        } else {
            Err(ScoringError::Invalid(v).into())
        }
    }
}

/// An override's value as an aggregated figure of the metric's kind (numbers checked by the same
/// rules as submissions).
fn figure(
    metric: &citycredit_core::catalog::Metric,
    o: &pb::ValueOverride,
) -> Result<Figure, String> {
    use pb::metric_value::Value;
    match (metric.kind, o.value.as_ref().and_then(|v| v.value.as_ref())) {
        (MetricKind::DomainFlag, _) => Ok(Figure::Domains(o.domains.iter().cloned().collect())),
        (MetricKind::TaskStatus, _) => Err("task statuses cannot be overridden".into()),
        (MetricKind::Bool, Some(Value::Flag(b))) => Ok(Figure::Flag(*b)),
        (kind, Some(Value::Number(text))) if kind.is_numeric() => metric
            .parse_number(text)
            .map(Figure::Number)
            .map_err(|problems| problems.join("; ")),
        (kind, _) => Err(format!(
            "a {} metric needs a {} value",
            kind.as_str(),
            if kind == MetricKind::Bool {
                "flag"
            } else {
                "number"
            }
        )),
    }
}

/// `as_of` as a store instant; INVALID_ARGUMENT (never quoting it) outside years 1-9999 or
/// with nanos out of range.
pub(crate) fn as_of(ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    ts.map(citycredit::wire::checked_micros)
        .transpose()
        .map_err(|why| ScoringError::invalid("as_of", why).into())
}

/// Checks an identifier field against the text rules (`citycredit_core::text`); pushes a violation
/// naming the code point and returns false when it breaks them.
pub(crate) fn identifier(field: &str, value: &str, out: &mut Vec<Violation>) -> bool {
    match text::check(value, TextKind::Identifier) {
        Ok(()) => true,
        Err(refused) => {
            out.push(Violation::new(field, refused.to_string()));
            false
        }
    }
}

/// INVALID_ARGUMENT when `value` breaks the identifier text rules.
pub(crate) fn check_identifier(field: &str, value: &str) -> Result<(), Status> {
    let mut v = Vec::new();
    if identifier(field, value, &mut v) {
        Ok(())
    } else {
        Err(ScoringError::Invalid(v).into())
    }
}

fn outcome_rank(o: pb::Outcome) -> u8 {
    match o {
        pb::Outcome::Passed => 0,
        pb::Outcome::Incomplete => 1,
        _ => 2,
    }
}

/// Metrics a department has a current value for in these figures.
fn reported_by(aggregates: &Aggregates, department: &str) -> BTreeSet<String> {
    aggregates
        .sources
        .iter()
        .filter(|(_, sources)| sources.iter().any(|s| s.department == department))
        .map(|(m, _)| m.clone())
        .collect()
}

/// The values a request's `approved_only` names.
fn selection(approved_only: bool) -> Selection {
    if approved_only {
        Selection::Approved
    } else {
        Selection::All
    }
}

impl ScoringApi {
    /// A watched scorecard as it stands now: by the rule version of the cycle covering the
    /// period (resolved each time: the cycle may change while the watch is open).
    async fn watched(
        &self,
        region: &str,
        period: &str,
        locale: Locale,
    ) -> Result<pb::Scorecard, Status> {
        let r = self.resolve("rule_version", "", period).await?;
        let s = self.scored_by(&r.catalog, region, period, None).await?;
        Ok(self.card(&s, &r, locale))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchScorecardResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn get_scorecard(
        &self,
        request: Request<pb::GetScorecardRequest>,
    ) -> Result<Response<pb::GetScorecardResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        let at = as_of(req.as_of.as_ref())?;
        self.check_region_period(&req.region_code, &req.period)?;
        let r = self
            .resolve("rule_version", &req.rule_version, &req.period)
            .await?;
        let s = self
            .scored_selected(
                &r,
                &req.region_code,
                &req.period,
                at,
                selection(req.approved_only),
            )
            .await?;
        Ok(Response::new(pb::GetScorecardResponse {
            scorecard: Some(self.card(&s, &r, locale)),
        }))
    }

    async fn batch_get_scorecards(
        &self,
        request: Request<pb::BatchGetScorecardsRequest>,
    ) -> Result<Response<pb::BatchGetScorecardsResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        if req.region_codes.len() > MAX_BATCH_REGIONS {
            return Err(ScoringError::TooManyRegions(MAX_BATCH_REGIONS).into());
        }
        let regions = if req.region_codes.is_empty() {
            self.city_and_counties()
        } else {
            // A region asked twice is scored and sent once (in the order first asked): a
            // caller repeating one region cannot multiply the work and the answer.
            let mut seen = std::collections::HashSet::new();
            req.region_codes
                .iter()
                .filter(|r| seen.insert(r.as_str()))
                .cloned()
                .collect()
        };
        // A city with more counties than the cap is refused the same way.
        if regions.len() > MAX_BATCH_REGIONS {
            return Err(ScoringError::TooManyRegions(MAX_BATCH_REGIONS).into());
        }
        let at = as_of(req.as_of.as_ref())?;
        if !req.rule_version.is_empty() {
            self.rule_version("rule_version", &req.rule_version)?;
        }
        for (i, r) in regions.iter().enumerate() {
            let field = if req.region_codes.is_empty() {
                "region_code".to_owned()
            } else {
                format!("region_codes[{i}]")
            };
            self.check_region_period_at(&field, r, &req.period)?;
        }
        // After the regions and period are checked: the period names the cycle.
        let resolved = self
            .resolve("rule_version", &req.rule_version, &req.period)
            .await?;
        let chosen = selection(req.approved_only);
        let cards = futures::future::try_join_all(
            regions
                .iter()
                .map(|r| self.scored_selected(&resolved, r, &req.period, at, chosen)),
        )
        .await?;
        Ok(Response::new(pb::BatchGetScorecardsResponse {
            scorecards: cards
                .iter()
                .map(|s| self.card(s, &resolved, locale))
                .collect(),
        }))
    }

    async fn explain_indicator(
        &self,
        request: Request<pb::ExplainIndicatorRequest>,
    ) -> Result<Response<pb::ExplainIndicatorResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        let at = as_of(req.as_of.as_ref())?;
        self.check_region_period(&req.region_code, &req.period)?;
        check_identifier("indicator", &req.indicator)?;
        let r = self
            .resolve("rule_version", &req.rule_version, &req.period)
            .await?;
        let catalog = Arc::clone(&r.catalog);
        let code = req
            .indicator
            .strip_prefix("indicators/")
            .unwrap_or(&req.indicator)
            .to_owned();
        let ind = catalog
            .indicator(&code)
            .ok_or_else(|| Status::from(ScoringError::NotFound(format!("indicators/{code}"))))?;
        let s = self
            .scored_selected(
                &r,
                &req.region_code,
                &req.period,
                at,
                selection(req.approved_only),
            )
            .await?;
        let result = s
            .card
            .indicator(&code)
            .ok_or_else(|| Status::from(ScoringError::NotFound(format!("indicators/{code}"))))?;
        let org = self.org();
        let mut result = convert::indicator_in(result, &s.aggregates, &s.mark.part_period);
        wording::indicator(&catalog, &mut result, locale);
        Ok(Response::new(pb::ExplainIndicatorResponse {
            rule_summary: wording::Rules::new(&catalog, locale).rule(ind),
            result: Some(result),
            responsible: responsible_parties(&org.city, &code),
            title: ind.title.clone(),
            title_en: ind.title_en.clone().unwrap_or_default(),
        }))
    }

    async fn what_if(
        &self,
        request: Request<pb::WhatIfRequest>,
    ) -> Result<Response<pb::WhatIfResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        self.check_region_period(&req.region_code, &req.period)?;
        let r = self
            .resolve("rule_version", &req.rule_version, &req.period)
            .await?;
        let catalog = Arc::clone(&r.catalog);
        let base = self
            .scored_by(&catalog, &req.region_code, &req.period, None)
            .await?;
        let values = self.overridden(&catalog, &base.aggregates, &req.overrides)?;
        let card = rules::score(&catalog, &values);
        let mut assumed = base.aggregates.clone();
        assumed.values = values;
        let differences = card
            .indicators
            .iter()
            .zip(&base.card.indicators)
            .filter(|(a, b)| a.status != b.status || a.score != b.score)
            .map(|(after, before)| pb::IndicatorDifference {
                code: after.code.clone(),
                before_status: convert::status(before.status) as i32,
                after_status: convert::status(after.status) as i32,
                before_score: before
                    .score
                    .as_ref()
                    .map(|s| s.rounded(Precision::Score))
                    .unwrap_or_default(),
                after_score: after
                    .score
                    .as_ref()
                    .map(|s| s.rounded(Precision::Score))
                    .unwrap_or_default(),
            })
            .collect();
        let change = &card.guiding_total - &base.card.guiding_total;
        let mut scorecard = convert::scorecard_in(&card, &assumed, &base.mark.part_period);
        wording::scorecard(&catalog, &mut scorecard, locale);
        scorecard.cycle_id = base.mark.cycle_id.clone();
        scorecard.cycle_rule_version = base.mark.cycle_rule_version.clone();
        scorecard.cycle_rule_version_not_loaded = r.not_loaded;
        Ok(Response::new(pb::WhatIfResponse {
            scorecard: Some(scorecard),
            baseline: Some(self.card(&base, &r, locale)),
            differences,
            guiding_total_change: convert::signed_score(&change),
        }))
    }

    type WatchScorecardStream = WatchStream;

    async fn watch_scorecard(
        &self,
        request: Request<pb::WatchScorecardRequest>,
    ) -> Result<Response<Self::WatchScorecardStream>, Status> {
        let p = authorize(&request, &self.org().access, Action::Read)?.clone();
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        self.check_region_period(&req.region_code, &req.period)?;
        // Subscribe before the first read so no change between the two is missed.
        let mut changes = self.invalidated.subscribe();
        let mut reviewed = self.review.changed.subscribe();
        let first = self.watched(&req.region_code, &req.period, locale).await?;
        let (tx, rx) = mpsc::channel(4);
        let api = self.clone();
        let revoked = || Status::from(ScoringError::Revoked);
        tokio::spawn(async move {
            let send = |card: pb::Scorecard| pb::WatchScorecardResponse {
                scorecard: Some(card),
            };
            if tx.send(Ok(send(first))).await.is_err() {
                return;
            }
            let mut last_update = Instant::now();
            // A change to a month reaches its quarter and year; a LEVEL value the periods it
            // carries forward to.
            let relevant = |c: &Change| c.region == req.region_code && c.reaches(&req.period);
            loop {
                let wake = tokio::select! {
                    () = tx.closed() => return,
                    event = changes.recv() => Some(event),
                    // The cycles or a sign-off changed: recompute as for any change.
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) = reviewed.recv() => {
                        Some(Ok(Change::everything()))
                    }
                    () = tokio::time::sleep(CREDENTIAL_RECHECK) => None,
                };
                if !api.credential_stands(&p) {
                    let _ = tx.send(Err(revoked())).await;
                    return;
                }
                match wake {
                    None => continue,
                    Some(Ok(c)) if !relevant(&c) && !c.is_everything() => continue,
                    Some(Ok(_) | Err(broadcast::error::RecvError::Lagged(_))) => {}
                    Some(Err(broadcast::error::RecvError::Closed)) => return,
                }
                // At once after a quiet spell; within a burst, one update per WATCH_COALESCE.
                tokio::time::sleep_until(last_update + WATCH_COALESCE).await;
                while let Ok(c) = changes.try_recv() {
                    let _ = c;
                }
                last_update = Instant::now();
                let message = api
                    .watched(&req.region_code, &req.period, locale)
                    .await
                    .map(send);
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn compare_counties(
        &self,
        request: Request<pb::CompareCountiesRequest>,
    ) -> Result<Response<pb::CompareCountiesResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let period = request.into_inner().period;
        let org = self.org();
        let counties: Vec<String> = self.city_and_counties().into_iter().skip(1).collect();
        for c in &counties {
            self.check_region_period(c, &period)?;
        }
        if counties.is_empty() {
            self.check_region_period(&org.city.code, &period)?;
        }
        let cards =
            futures::future::try_join_all(counties.iter().map(|c| self.scored(c, &period, None)))
                .await?;
        let mut rankings: Vec<(pb::CountyRanking, Num)> = counties
            .iter()
            .zip(&cards)
            .map(|(code, s)| {
                (
                    pb::CountyRanking {
                        rank: 0,
                        region_code: code.clone(),
                        region_name: org
                            .city
                            .region(code)
                            .map(|r| r.name.clone())
                            .unwrap_or_default(),
                        outcome: convert::outcome(s.card.outcome) as i32,
                        guiding_total: s.card.guiding_total.rounded(Precision::Score),
                        failing_basic: s.card.failing_basic.clone(),
                    },
                    s.card.guiding_total.clone(),
                )
            })
            .collect();
        rankings.sort_by(|(a, ta), (b, tb)| {
            outcome_rank(a.outcome())
                .cmp(&outcome_rank(b.outcome()))
                .then_with(|| tb.cmp(ta))
                .then_with(|| a.region_code.cmp(&b.region_code))
        });
        let rankings = rankings
            .into_iter()
            .enumerate()
            .map(|(i, (mut r, _))| {
                r.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
                r
            })
            .collect();
        Ok(Response::new(pb::CompareCountiesResponse { rankings }))
    }

    async fn get_department_worklist(
        &self,
        request: Request<pb::GetDepartmentWorklistRequest>,
    ) -> Result<Response<pb::GetDepartmentWorklistResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        check_identifier("department", &req.department)?;
        let org = self.org();
        let dept = req
            .department
            .strip_prefix("departments/")
            .unwrap_or(&req.department)
            .to_owned();
        if org.city.department(&dept).is_none() {
            return Err(Status::from(ScoringError::NotFound(format!(
                "departments/{dept}"
            ))));
        }
        let region = if req.region_code.is_empty() {
            org.city.code.clone()
        } else {
            req.region_code.clone()
        };
        self.check_region_period(&region, &req.period)?;
        let s = self.scored(&region, &req.period, None).await?;
        let mine = reported_by(&s.aggregates, &dept);
        // Only what the department is expected to report (rulebook section 9) for this region or
        // one below it is chased; what it merely may report is not.
        let expected: BTreeSet<&str> = org
            .access
            .expected_within(&dept, &region)
            .into_iter()
            .collect();
        let entries = org
            .city
            .duties_of_department(&dept)
            .into_iter()
            .map(|duty| {
                let metrics = self.catalog().subject_metrics(&duty.subject);
                let assessed = |m: &str| {
                    self.catalog().metric(m).is_some_and(|x| {
                        matches!(x.kind, MetricKind::Score | MetricKind::TaskStatus)
                    })
                };
                // Its own metrics it has not reported yet.
                let missing_metrics = metrics
                    .iter()
                    .filter(|m| expected.contains(**m) && !mine.contains(**m))
                    .map(|m| (*m).to_owned())
                    .collect();
                // Assessed values nobody has reported yet: the department must get them assessed.
                let awaiting_assessment = metrics
                    .iter()
                    .filter(|m| assessed(m) && !s.aggregates.values.is_reported(m))
                    .map(|m| (*m).to_owned())
                    .collect();
                let indicator = s.card.indicator(&duty.subject);
                let gaps = match indicator {
                    Some(r) if r.kind == IndicatorKind::Basic => {
                        r.gaps.iter().map(convert::gap).collect()
                    }
                    Some(r) => r
                        .next_step
                        .iter()
                        .flat_map(|st| st.changes.iter())
                        .map(convert::gap)
                        .collect(),
                    None => Vec::new(),
                };
                let mut entry = pb::WorklistEntry {
                    code: duty.subject.clone(),
                    role: match duty.role {
                        citycredit_core::city::Role::Lead => pb::ResponsibilityRole::Lead,
                        citycredit_core::city::Role::Co => pb::ResponsibilityRole::Co,
                    } as i32,
                    via_group: duty
                        .via_group
                        .map(|g| format!("groups/{g}"))
                        .unwrap_or_default(),
                    status: indicator.map_or(pb::IndicatorStatus::Unspecified, |r| {
                        convert::status(r.status)
                    }) as i32,
                    item_done: s
                        .card
                        .item(Catalog::split_subject(&duty.subject).0)
                        .is_some_and(|i| i.done),
                    missing_metrics,
                    gaps,
                    awaiting_assessment,
                };
                wording::entry(self.catalog(), &mut entry, locale);
                entry
            })
            .collect();
        Ok(Response::new(pb::GetDepartmentWorklistResponse {
            department_code: dept,
            entries,
        }))
    }

    async fn get_completeness_report(
        &self,
        request: Request<pb::GetCompletenessReportRequest>,
    ) -> Result<Response<pb::GetCompletenessReportResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let req = request.into_inner();
        let org = self.org();
        let region = if req.region_code.is_empty() {
            org.city.code.clone()
        } else {
            req.region_code.clone()
        };
        self.check_region_period(&region, &req.period)?;
        let s = self.scored(&region, &req.period, None).await?;
        let departments = org
            .city
            .departments
            .iter()
            .filter_map(|d| {
                // Expected reporters only (rulebook section 9), for this region or below it.
                let expected = org.access.expected_within(&d.code, &region);
                if expected.is_empty() {
                    return None;
                }
                let mine = reported_by(&s.aggregates, &d.code);
                let (reported, missing): (Vec<&str>, Vec<&str>) =
                    expected.iter().partition(|m| mine.contains(**m));
                let rate = Num::ratio(
                    i64::try_from(reported.len()).unwrap_or(0),
                    i64::try_from(expected.len()).unwrap_or(1),
                );
                Some(pb::DepartmentCompleteness {
                    department_code: d.code.clone(),
                    reported: reported.into_iter().map(str::to_owned).collect(),
                    missing: missing.into_iter().map(str::to_owned).collect(),
                    reporting_rate: rate.rounded(Precision::Rate),
                })
            })
            .collect();
        Ok(Response::new(pb::GetCompletenessReportResponse {
            departments,
        }))
    }

    async fn compare_rule_versions(
        &self,
        request: Request<pb::CompareRuleVersionsRequest>,
    ) -> Result<Response<pb::CompareRuleVersionsResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        let at = as_of(req.as_of.as_ref())?;
        self.check_region_period(&req.region_code, &req.period)?;
        let mut v = Vec::new();
        for (field, value) in [("version_a", &req.version_a), ("version_b", &req.version_b)] {
            if identifier(field, value, &mut v) && value.is_empty() {
                v.push(Violation::new(
                    field,
                    "required: a loaded rule version (IndicatorService.ListRuleVersions)",
                ));
            }
        }
        if !v.is_empty() {
            return Err(ScoringError::Invalid(v).into());
        }
        let a = self.rule_version("version_a", &req.version_a)?;
        let b = self.rule_version("version_b", &req.version_b)?;
        // One read of the figures feeds both versions.
        let aggregates = self.aggregates(&req.region_code, &req.period, at).await?;
        let (card_a, card_b, differences) =
            crate::rule_versions::compare(&a, &b, &aggregates.values, locale);
        Ok(Response::new(pb::CompareRuleVersionsResponse {
            region_code: req.region_code,
            period: req.period,
            a: Some(crate::rule_versions::outcome(&a, &card_a)),
            b: Some(crate::rule_versions::outcome(&b, &card_b)),
            differences,
            as_of: Some(citycredit::wire::timestamp(aggregates.as_of_micros)),
        }))
    }

    async fn get_veto_risk_warnings(
        &self,
        request: Request<pb::GetVetoRiskWarningsRequest>,
    ) -> Result<Response<pb::GetVetoRiskWarningsResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let locale = wording::locale_of(request.metadata());
        let req = request.into_inner();
        Ok(Response::new(
            crate::early_warning::warnings(self, req, locale).await?,
        ))
    }
}

#[cfg(test)]
mod tests;
