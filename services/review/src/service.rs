//! `ReviewService`: cycles, deadlines, sign-off transitions, review events and lock
//! exceptions. Every handler authorizes through `citycredit::auth::authorize` (the one decision,
//! `Access::decide`), validates, then calls the store.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use citycredit::auth::{authorize, caller};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::review_service_server::ReviewService;
use citycredit::status::{Violation, next_page_token, page};
use citycredit::wire::{bare, checked_micros, timestamp};
use citycredit_core::auth::Action;
use citycredit_core::clock::now_micros;
use citycredit_core::org::Org;
use citycredit_core::period::Period;
use citycredit_core::review::{
    Cycle, CycleContext, DAY_MICROS, Deadline, MAX_TEXT_CHARS, SignOffState, Transition,
    check_cycle_header, check_deadlines,
};
use citycredit_core::text::{self, TextKind};

use crate::Review;
use crate::error::ReviewError;
use crate::store::{self, LockExceptionRow, Part, SignOff, StoredCycle, TransitionCheck};

/// Page sizes: cycles 50 by default, at most 500; events 100, at most 1000.
const CYCLES_PAGE: (usize, usize) = (50, 500);
const EVENTS_PAGE: (usize, usize) = (100, 1_000);
/// At most this many deadlines in one SetDeadlines.
const MAX_SET_DEADLINES: usize = 1_000;
/// A lock exception expires at most this long after it is granted.
const MAX_EXCEPTION_MICROS: i64 = 30 * DAY_MICROS;

type Result<T> = std::result::Result<T, ReviewError>;

/// The service over a shared [`Review`].
#[derive(Clone, Debug)]
pub struct ReviewApi {
    review: Arc<Review>,
}

impl ReviewApi {
    pub fn new(review: Arc<Review>) -> Self {
        ReviewApi { review }
    }

    pub(crate) fn org(&self) -> Arc<Org> {
        self.review.org.borrow().clone()
    }

    pub(crate) fn review(&self) -> &Review {
        &self.review
    }
}

pub(crate) fn invalid_if_any(v: Vec<Violation>) -> Result<()> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(ReviewError::Invalid(v))
    }
}

fn problems(p: Vec<(String, String)>, prefix: &str) -> Vec<Violation> {
    p.into_iter()
        .map(|(f, m)| Violation::new(format!("{prefix}{f}"), m))
        .collect()
}

pub(crate) fn check_id(field: &str, value: &str, out: &mut Vec<Violation>) {
    if let Err(e) = text::check(value, TextKind::Identifier) {
        out.push(Violation::new(field, e.to_string()));
    }
}

fn check_comment(field: &str, value: &str, required: bool, out: &mut Vec<Violation>) {
    if let Err(e) = text::check(value, TextKind::FreeText) {
        out.push(Violation::new(field, e.to_string()));
    } else if required && value.trim().is_empty() {
        out.push(Violation::new(field, "required"));
    } else if value.chars().count() > MAX_TEXT_CHARS {
        out.push(Violation::new(
            field,
            format!("at most {MAX_TEXT_CHARS} characters"),
        ));
    }
}

fn deadline_from_pb(d: &pb::CycleDeadline, field: &str, v: &mut Vec<Violation>) -> Deadline {
    for (name, value) in [
        ("department_code", &d.department_code),
        ("subject", &d.subject),
        ("period", &d.period),
    ] {
        check_id(&format!("{field}.{name}"), value, v);
    }
    let due_micros = match &d.due_time {
        None => 0,
        Some(ts) => checked_micros(ts).unwrap_or_else(|e| {
            v.push(Violation::new(format!("{field}.due_time"), e));
            0
        }),
    };
    Deadline {
        department: bare(&d.department_code, "departments/").to_owned(),
        subject: d.subject.clone(),
        period: d.period.clone(),
        due_micros,
        milestone: d.milestone.clone(),
    }
}

fn deadline_pb(d: &Deadline) -> pb::CycleDeadline {
    pb::CycleDeadline {
        department_code: d.department.clone(),
        subject: d.subject.clone(),
        period: d.period.clone(),
        due_time: Some(timestamp(d.due_micros)),
        milestone: d.milestone.clone(),
    }
}

fn cycle_pb(c: &StoredCycle) -> pb::Cycle {
    pb::Cycle {
        name: format!("cycles/{}", c.cycle.id),
        id: c.cycle.id.clone(),
        title: c.cycle.title.clone(),
        rule_version: c.cycle.rule_version.clone(),
        periods: c.cycle.periods.clone(),
        review_date: c.cycle.review_date.clone(),
        grace_days: i32::try_from(c.cycle.grace_days).unwrap_or(i32::MAX),
        on_time_days: i32::try_from(c.cycle.on_time_days).unwrap_or(i32::MAX),
        deadlines: c.cycle.deadlines.iter().map(deadline_pb).collect(),
        created_by: c.created_by.clone(),
        create_time: Some(timestamp(c.create_micros)),
    }
}

fn state_pb(s: SignOffState) -> pb::SignOffState {
    match s {
        SignOffState::Open => pb::SignOffState::Open,
        SignOffState::Submitted => pb::SignOffState::Submitted,
        SignOffState::Approved => pb::SignOffState::Approved,
        SignOffState::Returned => pb::SignOffState::Returned,
    }
}

fn part_pb(p: &Part) -> pb::SignOffPart {
    pb::SignOffPart {
        department_code: p.department.clone(),
        region_code: p.region.clone(),
        period: p.period.clone(),
    }
}

fn signoff_pb(s: &SignOff) -> pb::SignOff {
    pb::SignOff {
        department_code: s.part.department.clone(),
        region_code: s.part.region.clone(),
        period: s.part.period.clone(),
        state: state_pb(s.state) as i32,
        revision: s.revision,
        update_time: s.update_micros.map(timestamp),
    }
}

/// A part from the request: known department and region, a period.
fn part_of(org: &Org, p: Option<&pb::SignOffPart>) -> Result<Part> {
    let p = p.cloned().unwrap_or_default();
    let mut v = Vec::new();
    check_id("part.department_code", &p.department_code, &mut v);
    check_id("part.region_code", &p.region_code, &mut v);
    check_id("part.period", &p.period, &mut v);
    invalid_if_any(v)?;
    let department = bare(&p.department_code, "departments/").to_owned();
    let region = bare(&p.region_code, "regions/").to_owned();
    let mut v = Vec::new();
    if department.is_empty() {
        v.push(Violation::new("part.department_code", "required"));
    } else if org.city.department(&department).is_none() {
        v.push(Violation::new(
            "part.department_code",
            format!("unknown department `{department}`"),
        ));
    }
    if region.is_empty() {
        v.push(Violation::new("part.region_code", "required"));
    } else if org.city.region(&region).is_none() {
        v.push(Violation::new(
            "part.region_code",
            format!("unknown region `{region}`"),
        ));
    }
    let period = match p.period.parse::<Period>() {
        Ok(x) => x.to_string(),
        Err(e) => {
            v.push(Violation::new("part.period", e.to_string()));
            String::new()
        }
    };
    invalid_if_any(v)?;
    Ok(Part {
        department,
        region,
        period,
    })
}

impl ReviewApi {
    /// Every problem of a cycle to create: its fields, then its deadlines.
    fn create_problems(&self, cycle: &Cycle) -> Vec<Violation> {
        let org = self.org();
        let known = |d: &str| org.city.department(d).is_some();
        let ctx = CycleContext {
            versions: &self.review.versions,
            catalog: &self.review.catalog,
            department_known: &known,
        };
        let mut v = problems(check_cycle_header(cycle, &ctx), "cycle.");
        v.extend(problems(
            check_deadlines(cycle, &cycle.deadlines, "cycle.deadlines", &ctx),
            "",
        ));
        v
    }

    /// A decision of the credit office (approve, return, unapprove): authorized as `Review`,
    /// its comment or reason checked (`field`, required or not), then one transition.
    async fn decide<T>(
        &self,
        request: &Request<T>,
        part: Option<&pb::SignOffPart>,
        t: Transition,
        (field, text, required): (&'static str, &str, bool),
        expected_revision: i64,
    ) -> std::result::Result<pb::SignOff, Status> {
        let org = self.org();
        let who = authorize(request, &org.access, Action::Review)?;
        let part = part_of(&org, part)?;
        let mut v = Vec::new();
        check_comment(field, text, required, &mut v);
        invalid_if_any(v)?;
        let s = self
            .transition(&who.id, part, t, text, expected_revision)
            .await?;
        Ok(signoff_pb(&s))
    }

    async fn transition(
        &self,
        who: &str,
        part: Part,
        t: Transition,
        comment: &str,
        expected_revision: i64,
    ) -> Result<SignOff> {
        let org = self.org();
        let mut below = org.subtree(&part.region);
        below.retain(|r| r != &part.region);
        let mut above = org.ancestry(&part.region);
        above.retain(|r| r != &part.region);
        let check = TransitionCheck { below, above };
        let out = store::transition(
            &self.review.db,
            &part,
            t,
            who,
            comment,
            expected_revision,
            &check,
            now_micros(),
        )
        .await?;
        tracing::info!(principal = who, department = %part.department, region = %part.region,
            period = %part.period, transition = t.as_str(), revision = out.revision, "review transition");
        Ok(out)
    }

    async fn load_cycle(&self, name: &str) -> Result<StoredCycle> {
        self.load_cycle_at("name", name).await
    }

    /// The cycle a request's `field` names ("cycles/{id}" or the id); NOT_FOUND when unknown.
    pub(crate) async fn load_cycle_at(&self, field: &str, name: &str) -> Result<StoredCycle> {
        let id = bare(name, "cycles/");
        let mut v = Vec::new();
        check_id(field, id, &mut v);
        if id.is_empty() {
            v.push(Violation::new(field, "required"));
        }
        invalid_if_any(v)?;
        store::get_cycle(&self.review.db, id)
            .await?
            .ok_or_else(|| ReviewError::NotFound(format!("cycles/{id}")))
    }
}

#[tonic::async_trait]
impl ReviewService for ReviewApi {
    async fn create_cycle(
        &self,
        request: Request<pb::CreateCycleRequest>,
    ) -> std::result::Result<Response<pb::CreateCycleResponse>, Status> {
        let who = authorize(&request, &self.org().access, Action::ManageCycles)?.clone();
        let c = request.into_inner().cycle.unwrap_or_default();
        let mut v = Vec::new();
        for (f, x) in [
            ("cycle.id", &c.id),
            ("cycle.rule_version", &c.rule_version),
            ("cycle.review_date", &c.review_date),
        ] {
            check_id(f, x, &mut v);
        }
        for (i, p) in c.periods.iter().enumerate() {
            check_id(&format!("cycle.periods[{i}]"), p, &mut v);
        }
        let mut deadlines = Vec::with_capacity(c.deadlines.len().min(MAX_SET_DEADLINES));
        for (i, d) in c.deadlines.iter().enumerate().take(MAX_SET_DEADLINES + 1) {
            deadlines.push(deadline_from_pb(
                d,
                &format!("cycle.deadlines[{i}]"),
                &mut v,
            ));
        }
        for (f, n) in [
            ("cycle.grace_days", c.grace_days),
            ("cycle.on_time_days", c.on_time_days),
        ] {
            if n < 0 {
                v.push(Violation::new(f, "must not be negative"));
            }
        }
        invalid_if_any(v)?;
        let cycle = Cycle {
            id: c.id.clone(),
            title: c.title.clone(),
            rule_version: c.rule_version.clone(),
            periods: c.periods.clone(),
            review_date: c.review_date.clone(),
            grace_days: u32::try_from(c.grace_days).unwrap_or(0),
            on_time_days: u32::try_from(c.on_time_days).unwrap_or(0),
            deadlines,
        };
        let mut v = self.create_problems(&cycle);
        if c.deadlines.len() > MAX_SET_DEADLINES {
            v.push(Violation::new(
                "cycle.deadlines",
                format!("at most {MAX_SET_DEADLINES} in one call; add more with SetDeadlines"),
            ));
        }
        invalid_if_any(v)?;
        let now = now_micros();
        store::create_cycle(&self.review.db, &cycle, &who.id, now).await?;
        tracing::info!(principal = %who.id, cycle = %cycle.id, "cycle created");
        let stored = self.load_cycle(&cycle.id).await?;
        Ok(Response::new(pb::CreateCycleResponse {
            cycle: Some(cycle_pb(&stored)),
        }))
    }

    async fn get_cycle(
        &self,
        request: Request<pb::GetCycleRequest>,
    ) -> std::result::Result<Response<pb::GetCycleResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let c = self.load_cycle(&request.get_ref().name).await?;
        Ok(Response::new(pb::GetCycleResponse {
            cycle: Some(cycle_pb(&c)),
        }))
    }

    async fn list_cycles(
        &self,
        request: Request<pb::ListCyclesRequest>,
    ) -> std::result::Result<Response<pb::ListCyclesResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let r = request.get_ref();
        let (offset, limit) = page(r.page_size, &r.page_token, CYCLES_PAGE.0, CYCLES_PAGE.1)?;
        let (cycles, total) = store::list_cycles(&self.review.db, offset, limit)
            .await
            .map_err(ReviewError::from)?;
        Ok(Response::new(pb::ListCyclesResponse {
            cycles: cycles.iter().map(cycle_pb).collect(),
            next_page_token: next_page_token(offset, limit, total),
        }))
    }

    async fn set_deadlines(
        &self,
        request: Request<pb::SetDeadlinesRequest>,
    ) -> std::result::Result<Response<pb::SetDeadlinesResponse>, Status> {
        let who = authorize(&request, &self.org().access, Action::ManageCycles)?.clone();
        let r = request.into_inner();
        let stored = self.load_cycle(&r.name).await?;
        let mut v = Vec::new();
        if r.deadlines.is_empty() {
            v.push(Violation::new("deadlines", "at least one deadline"));
        }
        if r.deadlines.len() > MAX_SET_DEADLINES {
            v.push(Violation::new(
                "deadlines",
                format!("at most {MAX_SET_DEADLINES} in one call"),
            ));
        }
        invalid_if_any(v)?;
        let mut v = Vec::new();
        let deadlines: Vec<Deadline> = r
            .deadlines
            .iter()
            .enumerate()
            .map(|(i, d)| deadline_from_pb(d, &format!("deadlines[{i}]"), &mut v))
            .collect();
        invalid_if_any(v)?;
        let found = {
            let org = self.org();
            let known = |d: &str| org.city.department(d).is_some();
            let ctx = CycleContext {
                versions: &self.review.versions,
                catalog: &self.review.catalog,
                department_known: &known,
            };
            problems(
                check_deadlines(&stored.cycle, &deadlines, "deadlines", &ctx),
                "",
            )
        };
        invalid_if_any(found)?;
        // The cycle's deadlines after the change stay within the bound.
        let mut after: Vec<&Deadline> = stored.cycle.deadlines.iter().collect();
        after.retain(|d| {
            !deadlines.iter().any(|n| {
                n.department == d.department && n.subject == d.subject && n.period == d.period
            })
        });
        if after.len() + deadlines.len() > citycredit_core::review::MAX_CYCLE_DEADLINES {
            return Err(ReviewError::invalid(
                "deadlines",
                format!(
                    "a cycle holds at most {} deadlines",
                    citycredit_core::review::MAX_CYCLE_DEADLINES
                ),
            )
            .into());
        }
        store::set_deadlines(
            &self.review.db,
            &stored.cycle.id,
            &deadlines,
            &who.id,
            now_micros(),
        )
        .await?;
        let stored = self.load_cycle(&stored.cycle.id).await?;
        Ok(Response::new(pb::SetDeadlinesResponse {
            cycle: Some(cycle_pb(&stored)),
        }))
    }

    async fn submit_for_approval(
        &self,
        request: Request<pb::SubmitForApprovalRequest>,
    ) -> std::result::Result<Response<pb::SubmitForApprovalResponse>, Status> {
        let org = self.org();
        // The caller first (the action names the part, known once the body is read).
        caller(&request)?;
        let r = request.get_ref();
        let part = part_of(&org, r.part.as_ref())?;
        let mut v = Vec::new();
        check_comment("comment", &r.comment, false, &mut v);
        invalid_if_any(v)?;
        let who = authorize(
            &request,
            &org.access,
            Action::SubmitForApproval {
                department: &part.department,
                region: &part.region,
            },
        )?;
        let r = request.get_ref();
        let s = self
            .transition(
                &who.id,
                part,
                Transition::Submit,
                &r.comment,
                r.expected_revision,
            )
            .await?;
        Ok(Response::new(pb::SubmitForApprovalResponse {
            sign_off: Some(signoff_pb(&s)),
        }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> std::result::Result<Response<pb::ApproveResponse>, Status> {
        let r = request.get_ref();
        let sign_off = self
            .decide(
                &request,
                r.part.as_ref(),
                Transition::Approve,
                ("comment", &r.comment, false),
                r.expected_revision,
            )
            .await?;
        Ok(Response::new(pb::ApproveResponse {
            sign_off: Some(sign_off),
        }))
    }

    async fn r#return(
        &self,
        request: Request<pb::ReturnRequest>,
    ) -> std::result::Result<Response<pb::ReturnResponse>, Status> {
        let r = request.get_ref();
        let sign_off = self
            .decide(
                &request,
                r.part.as_ref(),
                Transition::Return,
                ("comment", &r.comment, true),
                r.expected_revision,
            )
            .await?;
        Ok(Response::new(pb::ReturnResponse {
            sign_off: Some(sign_off),
        }))
    }

    async fn unapprove(
        &self,
        request: Request<pb::UnapproveRequest>,
    ) -> std::result::Result<Response<pb::UnapproveResponse>, Status> {
        let r = request.get_ref();
        let sign_off = self
            .decide(
                &request,
                r.part.as_ref(),
                Transition::Unapprove,
                ("reason", &r.reason, true),
                r.expected_revision,
            )
            .await?;
        Ok(Response::new(pb::UnapproveResponse {
            sign_off: Some(sign_off),
        }))
    }

    async fn get_sign_off(
        &self,
        request: Request<pb::GetSignOffRequest>,
    ) -> std::result::Result<Response<pb::GetSignOffResponse>, Status> {
        let org = self.org();
        authorize(&request, &org.access, Action::Read)?;
        let part = part_of(&org, request.get_ref().part.as_ref())?;
        let s = store::signoff(&self.review.db, &part)
            .await
            .map_err(ReviewError::from)?;
        Ok(Response::new(pb::GetSignOffResponse {
            sign_off: Some(signoff_pb(&s)),
        }))
    }

    async fn list_review_events(
        &self,
        request: Request<pb::ListReviewEventsRequest>,
    ) -> std::result::Result<Response<pb::ListReviewEventsResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let r = request.get_ref();
        let mut v = Vec::new();
        for (f, x) in [
            ("department_code", &r.department_code),
            ("region_code", &r.region_code),
            ("period", &r.period),
        ] {
            check_id(f, x, &mut v);
        }
        invalid_if_any(v)?;
        let (offset, limit) = page(r.page_size, &r.page_token, EVENTS_PAGE.0, EVENTS_PAGE.1)?;
        let (rows, total) = store::list_events(
            &self.review.db,
            bare(&r.department_code, "departments/"),
            bare(&r.region_code, "regions/"),
            &r.period,
            offset,
            limit,
        )
        .await
        .map_err(ReviewError::from)?;
        let state = |s: &str| state_pb(SignOffState::parse(s).unwrap_or(SignOffState::Open)) as i32;
        Ok(Response::new(pb::ListReviewEventsResponse {
            events: rows
                .iter()
                .map(|e| pb::ReviewEvent {
                    part: Some(pb::SignOffPart {
                        department_code: e.department_code.clone(),
                        region_code: e.region.clone(),
                        period: e.period.clone(),
                    }),
                    revision: e.revision,
                    transition: e.transition.clone(),
                    from_state: state(&e.from_state),
                    to_state: state(&e.to_state),
                    principal: e.principal.clone(),
                    event_time: Some(timestamp(e.event_micros)),
                    comment: e.comment.clone(),
                })
                .collect(),
            next_page_token: next_page_token(offset, limit, total),
        }))
    }

    async fn grant_lock_exception(
        &self,
        request: Request<pb::GrantLockExceptionRequest>,
    ) -> std::result::Result<Response<pb::GrantLockExceptionResponse>, Status> {
        let org = self.org();
        let who = authorize(&request, &org.access, Action::GrantLockException)?.clone();
        let x = request.into_inner().exception.unwrap_or_default();
        let part = part_of(&org, x.part.as_ref()).map_err(|e| match e {
            ReviewError::Invalid(v) => ReviewError::Invalid(
                v.into_iter()
                    .map(|x| Violation::new(format!("exception.{}", x.field), x.description))
                    .collect(),
            ),
            e => e,
        })?;
        let now = now_micros();
        let mut v = Vec::new();
        check_comment("exception.reason", &x.reason, true, &mut v);
        let expire_micros = match &x.expire_time {
            None => {
                v.push(Violation::new("exception.expire_time", "required"));
                0
            }
            Some(ts) => match checked_micros(ts) {
                Err(e) => {
                    v.push(Violation::new("exception.expire_time", e));
                    0
                }
                Ok(m) if m <= now => {
                    v.push(Violation::new(
                        "exception.expire_time",
                        "must be in the future",
                    ));
                    0
                }
                Ok(m) if m > now + MAX_EXCEPTION_MICROS => {
                    v.push(Violation::new(
                        "exception.expire_time",
                        "at most 30 days ahead",
                    ));
                    0
                }
                Ok(m) => m,
            },
        };
        invalid_if_any(v)?;
        let mut id_bytes = [0u8; 8];
        rand::Rng::fill(&mut rand::rng(), &mut id_bytes);
        let row = LockExceptionRow {
            id: format!("lx-{}", hex::encode(id_bytes)),
            part,
            reason: x.reason.clone(),
            granted_by: who.id.clone(),
            grant_micros: now,
            expire_micros,
        };
        store::grant_exception(&self.review.db, &row)
            .await
            .map_err(ReviewError::from)?;
        tracing::info!(principal = %who.id, id = %row.id, department = %row.part.department,
            region = %row.part.region, period = %row.part.period, "lock exception granted");
        Ok(Response::new(pb::GrantLockExceptionResponse {
            exception: Some(pb::LockException {
                id: row.id.clone(),
                part: Some(part_pb(&row.part)),
                reason: row.reason,
                expire_time: Some(timestamp(row.expire_micros)),
                granted_by: row.granted_by,
                grant_time: Some(timestamp(row.grant_micros)),
            }),
        }))
    }

    async fn get_timeliness(
        &self,
        request: Request<pb::GetTimelinessRequest>,
    ) -> std::result::Result<Response<pb::GetTimelinessResponse>, Status> {
        let who = authorize(&request, &self.org().access, Action::Read)?.clone();
        let out = self.get_timeliness(&who, request.get_ref()).await?;
        Ok(Response::new(out))
    }

    async fn get_department_assessment(
        &self,
        request: Request<pb::GetDepartmentAssessmentRequest>,
    ) -> std::result::Result<Response<pb::GetDepartmentAssessmentResponse>, Status> {
        let who = authorize(&request, &self.org().access, Action::Read)?.clone();
        let out = self
            .get_department_assessment(&who, request.get_ref())
            .await?;
        Ok(Response::new(out))
    }

    async fn list_cycle_events(
        &self,
        request: Request<pb::ListCycleEventsRequest>,
    ) -> std::result::Result<Response<pb::ListCycleEventsResponse>, Status> {
        authorize(&request, &self.org().access, Action::Read)?;
        let out = self.list_cycle_events(request.get_ref()).await?;
        Ok(Response::new(out))
    }
}
