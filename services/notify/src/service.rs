//! `NotificationService`: subscriptions (administrators), notices and deliveries, the pass hook
//! and the live stream of notices.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use citycredit::auth::{authorize, denied};
use citycredit::proto::v1 as pb;
use citycredit::proto::v1::notification_service_server::NotificationService;
use citycredit::status::Violation;
use citycredit::wire::timestamp;
use citycredit_core::auth::{Action, Denied, Principal, Role};
use citycredit_core::clock::now_micros;

use crate::error::NotifyError;
use crate::store::{self, DeliveryRow, NoticeRow, SubscriptionRow};
use crate::{CREDIT_OFFICE, Notifier};

/// Default and maximum page size of every list.
const PAGE: usize = 100;
/// Notices read from the store per step of a watch.
const WATCH_READ: usize = 100;
/// Longest subscription URL.
const MAX_URL_CHARS: usize = 2_048;

/// Serves `NotificationService` over a [`Notifier`].
#[derive(Clone, Debug)]
pub struct NotificationApi {
    notifier: Notifier,
}

impl NotificationApi {
    pub fn new(notifier: Notifier) -> NotificationApi {
        NotificationApi { notifier }
    }

    fn access(&self) -> citycredit_core::auth::Access {
        self.notifier.org().access.clone()
    }
}

fn page(page_size: i32, token: &str) -> Result<(i64, usize), NotifyError> {
    if page_size < 0 {
        return Err(NotifyError::invalid("page_size", "must not be negative"));
    }
    let limit = match usize::try_from(page_size).unwrap_or(0) {
        0 => PAGE,
        n => n.min(PAGE),
    };
    let after = if token.is_empty() {
        0
    } else {
        token
            .strip_prefix('i')
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                NotifyError::invalid("page_token", "not a token from a previous response")
            })?
    };
    Ok((after, limit))
}

fn next_token(last: Option<i64>, got: usize, limit: usize) -> String {
    match last {
        Some(id) if got >= limit => format!("i{id}"),
        _ => String::new(),
    }
}

fn subscription_name(id: i64) -> String {
    format!("subscriptions/{id}")
}

fn subscription_wire(s: &SubscriptionRow) -> pb::Subscription {
    pb::Subscription {
        name: subscription_name(s.id),
        recipient: s.recipient.clone(),
        url: s.url.clone(),
        format: match s.format.as_str() {
            "DINGTALK" => pb::MessageFormat::Dingtalk,
            _ => pb::MessageFormat::Json,
        } as i32,
        // Write-only.
        secret: String::new(),
        mode: match s.mode.as_str() {
            "DAILY_DIGEST" => pb::DeliveryMode::DailyDigest,
            _ => pb::DeliveryMode::Each,
        } as i32,
        create_time: Some(timestamp(s.create_micros)),
    }
}

pub fn notice_wire(n: &NoticeRow) -> pb::Notice {
    pb::Notice {
        id: n.id,
        kind: n.kind.clone(),
        recipient: n.recipient.clone(),
        title_zh: n.title_zh.clone(),
        body_zh: n.body_zh.clone(),
        title_en: n.title_en.clone(),
        body_en: n.body_en.clone(),
        payload_json: n.payload.clone(),
        create_time: Some(timestamp(n.create_micros)),
    }
}

fn delivery_wire(d: &DeliveryRow) -> pb::Delivery {
    let state = if d.delivered_micros.is_some() {
        pb::DeliveryState::Delivered
    } else if d.dead_micros.is_some() {
        pb::DeliveryState::Dead
    } else {
        pb::DeliveryState::Pending
    };
    pb::Delivery {
        id: d.id,
        notice_id: d.notice_id,
        subscription: subscription_name(d.subscription_id),
        state: state as i32,
        attempts: i32::try_from(d.attempts).unwrap_or(i32::MAX),
        next_attempt_time: (state == pb::DeliveryState::Pending).then(|| timestamp(d.next_micros)),
        deliver_time: d.delivered_micros.map(timestamp),
        last_error: d.last_error.clone(),
    }
}

/// Whose notices `p` may read: Some(department) for a department principal, None (every
/// recipient) for operators and administrators (and, once the role exists, the credit office).
fn notice_scope(p: &Principal, asked: &str) -> Result<Option<String>, NotifyError> {
    let refuse = |reason: &str| {
        NotifyError::Denied(Denied {
            principal: p.to_string(),
            action: "read",
            metric: String::new(),
            region: String::new(),
            reason: reason.to_owned(),
        })
    };
    match p.role {
        Role::Department => {
            let own = p.department.clone().unwrap_or_default();
            if !asked.is_empty() && asked != own {
                return Err(refuse("a department reads only its own notices"));
            }
            Ok(Some(own))
        }
        Role::Operator | Role::Admin | Role::CreditOffice => {
            Ok((!asked.is_empty()).then(|| asked.to_owned()))
        }
        Role::Platform | Role::Assessor => Err(refuse(
            "notices are read by their department, operators, administrators and the credit office",
        )),
    }
}

fn validate_subscription(
    s: &pb::Subscription,
    org: &citycredit_core::org::Org,
) -> Result<SubscriptionRow, NotifyError> {
    let mut v = Vec::new();
    let recipient = s.recipient.as_str();
    if recipient.is_empty() {
        v.push(Violation::new(
            "subscription.recipient",
            "required: a department code, \"credit_office\" or \"*\"",
        ));
    } else if recipient != "*"
        && recipient != CREDIT_OFFICE
        && org.city.department(recipient).is_none()
    {
        v.push(Violation::new(
            "subscription.recipient",
            format!(
                "unknown department `{}`: a department code, \"credit_office\" or \"*\"",
                clip(recipient)
            ),
        ));
    }
    if s.url.chars().count() > MAX_URL_CHARS {
        v.push(Violation::new(
            "subscription.url",
            format!("at most {MAX_URL_CHARS} characters"),
        ));
    } else {
        match url::Url::parse(&s.url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            Ok(_) => v.push(Violation::new(
                "subscription.url",
                "an http or https URL with a host",
            )),
            Err(e) => v.push(Violation::new(
                "subscription.url",
                format!("not a URL: {e}"),
            )),
        }
    }
    let secret_chars = s.secret.chars().count();
    if !(16..=256).contains(&secret_chars) {
        v.push(Violation::new(
            "subscription.secret",
            "16 to 256 characters",
        ));
    } else if s.secret.chars().any(char::is_control) {
        v.push(Violation::new(
            "subscription.secret",
            "no control characters",
        ));
    }
    let format = match pb::MessageFormat::try_from(s.format) {
        Ok(pb::MessageFormat::Json) => "JSON",
        Ok(pb::MessageFormat::Dingtalk) => "DINGTALK",
        _ => {
            v.push(Violation::new(
                "subscription.format",
                "MESSAGE_FORMAT_JSON or MESSAGE_FORMAT_DINGTALK",
            ));
            ""
        }
    };
    let mode = match pb::DeliveryMode::try_from(s.mode) {
        Ok(pb::DeliveryMode::Each) => "EACH",
        Ok(pb::DeliveryMode::DailyDigest) => "DAILY_DIGEST",
        _ => {
            v.push(Violation::new(
                "subscription.mode",
                "DELIVERY_MODE_EACH or DELIVERY_MODE_DAILY_DIGEST",
            ));
            ""
        }
    };
    if !v.is_empty() {
        return Err(NotifyError::Invalid(v));
    }
    Ok(SubscriptionRow {
        id: 0,
        recipient: recipient.to_owned(),
        url: s.url.clone(),
        format: format.to_owned(),
        secret: s.secret.clone(),
        mode: mode.to_owned(),
        create_micros: now_micros(),
    })
}

/// Echoed input, cut short.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchNoticesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotificationService for NotificationApi {
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::CreateSubscriptionResponse>, Status> {
        let who = authorize(&request, &self.access(), Action::Administer)?
            .id
            .clone();
        let Some(s) = request.into_inner().subscription else {
            return Err(NotifyError::invalid("subscription", "required").into());
        };
        let mut row = validate_subscription(&s, &self.notifier.org())?;
        let max = self.notifier.settings().max_subscriptions;
        row.id = store::create_subscription(self.notifier.db(), &row, &who, max).await?;
        tracing::info!(subscription = row.id, recipient = %row.recipient, by = %who, "subscription created");
        Ok(Response::new(pb::CreateSubscriptionResponse {
            subscription: Some(subscription_wire(&row)),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        authorize(&request, &self.access(), Action::Administer)?;
        let req = request.into_inner();
        let (after, limit) = page(req.page_size, &req.page_token)?;
        let rows = store::list_subscriptions(self.notifier.db(), after, limit).await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            next_page_token: next_token(rows.last().map(|r| r.id), rows.len(), limit),
            subscriptions: rows.iter().map(subscription_wire).collect(),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let who = authorize(&request, &self.access(), Action::Administer)?
            .id
            .clone();
        let name = request.into_inner().name;
        let id = name
            .strip_prefix("subscriptions/")
            .and_then(|n| n.parse::<i64>().ok())
            .ok_or_else(|| NotifyError::invalid("name", "subscriptions/{id}"))?;
        if !store::delete_subscription(self.notifier.db(), id, now_micros()).await? {
            return Err(NotifyError::NotFound(subscription_name(id)).into());
        }
        tracing::info!(subscription = id, by = %who, "subscription deleted");
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn list_notices(
        &self,
        request: Request<pb::ListNoticesRequest>,
    ) -> Result<Response<pb::ListNoticesResponse>, Status> {
        let p = authorize(&request, &self.access(), Action::Read)?;
        let scope = notice_scope(p, &request.get_ref().recipient)?;
        let req = request.into_inner();
        let (after, limit) = page(req.page_size, &req.page_token)?;
        let rows = store::notices_after(self.notifier.db(), after, scope.as_deref(), limit).await?;
        Ok(Response::new(pb::ListNoticesResponse {
            next_page_token: next_token(rows.last().map(|r| r.id), rows.len(), limit),
            notices: rows.iter().map(notice_wire).collect(),
        }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let p = authorize(&request, &self.access(), Action::Read)?;
        if !matches!(p.role, Role::Operator | Role::Admin) {
            return Err(denied(Denied {
                principal: p.to_string(),
                action: "read",
                metric: String::new(),
                region: String::new(),
                reason: "deliveries are read by operators and administrators".into(),
            }));
        }
        let req = request.into_inner();
        let (after, limit) = page(req.page_size, &req.page_token)?;
        let state = match pb::DeliveryState::try_from(req.state) {
            Ok(pb::DeliveryState::Unspecified) => None,
            Ok(pb::DeliveryState::Pending) => Some("PENDING"),
            Ok(pb::DeliveryState::Delivered) => Some("DELIVERED"),
            Ok(pb::DeliveryState::Dead) => Some("DEAD"),
            Err(_) => return Err(NotifyError::invalid("state", "unknown state").into()),
        };
        let rows = store::list_deliveries(self.notifier.db(), state, after, limit).await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            next_page_token: next_token(rows.last().map(|r| r.id), rows.len(), limit),
            deliveries: rows.iter().map(delivery_wire).collect(),
        }))
    }

    async fn run_notifier_pass(
        &self,
        request: Request<pb::RunNotifierPassRequest>,
    ) -> Result<Response<pb::RunNotifierPassResponse>, Status> {
        authorize(&request, &self.access(), Action::Administer)?;
        let enqueued = self.notifier.run_producers().await?;
        let counts = self.notifier.deliver_due().await?;
        Ok(Response::new(pb::RunNotifierPassResponse {
            notices_enqueued: i64::try_from(enqueued).unwrap_or(i64::MAX),
            deliveries_attempted: i64::try_from(counts.attempted).unwrap_or(i64::MAX),
            deliveries_delivered: i64::try_from(counts.delivered).unwrap_or(i64::MAX),
        }))
    }

    type WatchNoticesStream = WatchStream;

    async fn watch_notices(
        &self,
        request: Request<pb::WatchNoticesRequest>,
    ) -> Result<Response<Self::WatchNoticesStream>, Status> {
        let p = authorize(&request, &self.access(), Action::Read)?.clone();
        let scope = notice_scope(&p, "")?;
        let after = request.into_inner().after_notice_id;
        if after < 0 {
            return Err(NotifyError::invalid("after_notice_id", "must not be negative").into());
        }
        let n = self.notifier.clone();
        let slot = n.watch_slot(&p.id).ok_or(NotifyError::TooManyWatchers(
            n.settings().max_watchers_per_principal,
        ))?;
        let mut last = after;
        let buffer = n.settings().watch_buffer;
        let stall = Duration::from_millis(n.settings().watch_stall_ms);
        let poll = Duration::from_millis(n.settings().poll_ms);
        // Notices are read from the store only when the listener has room for them, so a
        // backlog never piles up in memory: at most `buffer` notices wait per listener. One slot
        // more is kept free for the status that ends a listener that stopped reading: a notice
        // is sent only when two slots are free, so one always is.
        let (tx, rx) = mpsc::channel(buffer + 1);
        let mut woken = n.subscribe_notices();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                if !n.credential_stands(&p) {
                    let _ = tx.try_send(Err(NotifyError::Revoked.into()));
                    return;
                }
                let rows =
                    match store::notices_after(n.db(), last, scope.as_deref(), WATCH_READ).await {
                        Ok(rows) => rows,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                let full_read = rows.len() >= WATCH_READ;
                for r in rows {
                    if !n.credential_stands(&p) {
                        let _ = tx.try_send(Err(NotifyError::Revoked.into()));
                        return;
                    }
                    let permits = match tokio::time::timeout(stall, tx.reserve_many(2)).await {
                        Ok(Ok(permits)) => permits,
                        Ok(Err(_)) => return,
                        Err(_) => {
                            tracing::info!(after = last, "WatchNotices listener not reading: cut");
                            let _ = tx.try_send(Err(NotifyError::Lagged(buffer).into()));
                            return;
                        }
                    };
                    last = r.id;
                    if let Some(permit) = permits.into_iter().next() {
                        permit.send(Ok(pb::WatchNoticesResponse {
                            notice: Some(notice_wire(&r)),
                        }));
                    }
                }
                if full_read {
                    continue;
                }
                tokio::select! {
                    _ = woken.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
