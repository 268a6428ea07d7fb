//! The bodies the gateway wraps around a call.
//!
//! - [`ReadTimeoutBody`]: a request stream that sends nothing for the read timeout ends (the
//!   gateway answers DEADLINE_EXCEEDED), so an idle stream cannot hold its slot until the
//!   caller's own deadline.
//! - [`CallBody`]: the response. It holds the call's places in the budgets until the response
//!   is fully sent (or dropped: the caller went away or its connection was closed), reads the
//!   gRPC status where it is (the headers of a trailers-only answer, else the trailers at the end
//!   of the stream, as tower-http's `GrpcErrorsAsFailures` does) and reports it once, at the end,
//!   to the metrics and the access log. It also keeps the call's deadline for the whole stream,
//!   turns a service answer that breaks off (the service process died mid-answer) into
//!   UNAVAILABLE with RetryInfo instead of a reset stream that clients read as INTERNAL, and
//!   tells the connection's watch when the peer owes it a read. An error status in the trailers
//!   (the service's or its own) gets a `LocalizedMessage` in the caller's language.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

use citycredit::localize::{Locale, localize};
use citycredit::status::{Reason, retry_after_reason, with_reason};

use crate::transport::Owed;
use crate::upstream::Body;

/// The gRPC status code carried by `headers`, if any.
pub fn code_in(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(crate::headers::GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// Trailers carrying `status`.
fn trailers_of(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that cannot be a header value fails; the code alone still says it.
        trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    trailers
}

/// Whether a request stream stalled, and a wake-up for whoever waits for it.
#[derive(Debug, Default)]
pub struct Stall {
    fired: AtomicBool,
    notify: Notify,
}

impl Stall {
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes when the stream stalls (never, if it does not).
    pub async fn wait(&self) {
        while !self.fired() {
            self.notify.notified().await;
        }
    }

    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        // A permit is stored when nobody waits yet.
        self.notify.notify_one();
    }
}

/// A request stream with an idle timeout. When it passes, the stream ends with an error and
/// `stall` fires (the gateway then answers the call itself, whatever the service made of the
/// error).
pub struct ReadTimeoutBody {
    inner: Body,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    stall: Arc<Stall>,
    failed: bool,
}

impl ReadTimeoutBody {
    pub fn new(inner: Body, timeout: Duration, stall: Arc<Stall>) -> ReadTimeoutBody {
        ReadTimeoutBody {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
            stall,
            failed: false,
        }
    }
}

impl http_body::Body for ReadTimeoutBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let me = self.get_mut();
        if me.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                me.armed = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !me.armed {
                    me.timer.as_mut().reset(Instant::now() + me.timeout);
                    me.armed = true;
                }
                if me.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                me.failed = true;
                me.stall.fire();
                Poll::Ready(Some(Err(stalled_status(me.timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a caller whose request stream stalled is told.
pub fn stalled_status(timeout: Duration) -> Status {
    with_reason(
        Code::DeadlineExceeded,
        Reason::RequestReadTimeout,
        format!(
            "the request stream sent nothing for {} ms (request_read_timeout_ms)",
            timeout.as_millis()
        ),
        &[],
    )
}

/// Called once, with the call's final code, when its response ends or is dropped.
pub type OnEnd = Box<dyn FnOnce(Code) + Send>;

/// See the module documentation.
pub struct CallBody {
    inner: Option<Body>,
    deadline: Option<(Instant, Duration)>,
    timer: Option<Pin<Box<Sleep>>>,
    owed: Option<Arc<Owed>>,
    header_code: Option<Code>,
    on_end: Option<OnEnd>,
    /// The caller's language: an error status in the trailers gets a LocalizedMessage.
    locale: Option<Locale>,
}

impl CallBody {
    /// Wraps `inner`, whose response headers carried `header_code`; `deadline` is when the call
    /// must end (and the duration it was given, for the message).
    pub fn new(
        inner: Body,
        header_code: Option<Code>,
        deadline: Option<(Instant, Duration)>,
        owed: Option<Arc<Owed>>,
        on_end: OnEnd,
    ) -> CallBody {
        if let Some(o) = &owed {
            // Until hyper asks for the first frame, the response waits on the connection.
            o.waiting_for_peer();
        }
        CallBody {
            inner: Some(inner),
            deadline,
            timer: None,
            owed,
            header_code,
            on_end: Some(on_end),
            locale: None,
        }
    }

    /// Localizes an error status at the end of the answer into `locale`
    /// (`citycredit::localize`).
    pub fn localized(mut self, locale: Locale) -> CallBody {
        self.locale = Some(locale);
        self
    }

    fn end(&mut self, code: Code) {
        self.inner = None;
        self.owed = None;
        self.timer = None;
        if let Some(f) = self.on_end.take() {
            f(code);
        }
    }

    /// Ends the response with `status` in its trailers.
    fn end_with(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.end(status.code());
        let mut trailers = trailers_of(status);
        if let Some(locale) = self.locale {
            localize(&mut trailers, locale);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let me = self.get_mut();
        let Some(inner) = me.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(o) = &me.owed {
            o.peer_read();
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    let code = code_in(trailers)
                        .or(me.header_code)
                        .unwrap_or(Code::Unknown);
                    if let Some(locale) = me.locale
                        && code != Code::Ok
                    {
                        localize(trailers, locale);
                    }
                    me.end(code);
                } else if let Some(o) = &me.owed {
                    o.waiting_for_peer();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "the service's answer broke off; the caller is told UNAVAILABLE");
                me.end_with(&retry_after_reason(
                    Code::Unavailable,
                    Reason::ServiceUnavailable,
                    "the service's answer was cut off; retry shortly",
                    Duration::from_millis(500),
                    &[],
                ))
            }
            Poll::Ready(None) => {
                let code = me.header_code.unwrap_or(Code::Unknown);
                me.end(code);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some((at, given)) = me.deadline else {
                    return Poll::Pending;
                };
                let timer = me
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                me.end_with(&with_reason(
                    Code::DeadlineExceeded,
                    Reason::TimedOut,
                    format!("deadline of {} ms exceeded", given.as_millis()),
                    &[],
                ))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for CallBody {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            // Never polled to its end: either it had nothing to send (a trailers-only answer,
            // whose code is in the headers) or the caller went away before it was sent.
            let code = match &self.inner {
                Some(b) if http_body::Body::is_end_stream(b) => {
                    self.header_code.unwrap_or(Code::Unknown)
                }
                _ => Code::Cancelled,
            };
            f(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Mutex;

    fn recorder() -> (Arc<Mutex<Vec<Code>>>, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        (
            seen,
            Box::new(move |c| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(c);
            }),
        )
    }

    fn codes(seen: &Arc<Mutex<Vec<Code>>>) -> Vec<Code> {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A body of one data frame, then trailers with `code`.
    fn answer(code: Code) -> Body {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from(code as i32));
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn the_code_comes_from_the_trailers_at_the_end() {
        let (seen, on_end) = recorder();
        let body = CallBody::new(answer(Code::Ok), None, None, None, on_end);
        let collected = body.collect().await.map(|c| c.trailers().cloned());
        assert!(matches!(collected, Ok(Some(_))));
        assert_eq!(
            codes(&seen),
            vec![Code::Ok],
            "once, with the trailers' code"
        );
    }

    #[tokio::test]
    async fn an_error_in_the_trailers_gets_a_localized_message() {
        use tonic_types::StatusExt;
        let mut trailers = HeaderMap::new();
        let status = citycredit::status::not_found("indicators/B99");
        status
            .add_header(&mut trailers)
            .unwrap_or_else(|e| panic!("{e}"));
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let answer = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let (_, on_end) = recorder();
        let body = CallBody::new(answer, None, None, None, on_end).localized(Locale::En);
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default();
        let back = Status::from_header_map(&trailers).unwrap_or_else(|| Status::unknown(""));
        let details = back.get_error_details();
        let message = details
            .localized_message()
            .unwrap_or_else(|| panic!("no localized message"));
        assert_eq!(message.locale, "en");
        assert_eq!(
            message.message,
            "Not found: check the name or code (resource: indicators/B99)"
        );
        assert_eq!(back.message(), "indicators/B99 not found");
        // The gateway's own end of an answer (a deadline) is localized too.
        let never = Body::new(http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, Status>,
        >()));
        let given = Duration::from_millis(20);
        let (_, on_end) = recorder();
        let body = CallBody::new(
            never,
            None,
            Some((Instant::now() + given, given)),
            None,
            on_end,
        )
        .localized(Locale::ZhCn);
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default();
        let back = Status::from_header_map(&trailers).unwrap_or_else(|| Status::unknown(""));
        assert_eq!(
            back.get_error_details()
                .localized_message()
                .map(|m| m.message.as_str()),
            Some("请求超时，请稍后重试")
        );
    }

    #[tokio::test]
    async fn a_trailers_only_answer_reports_its_header_code_when_dropped() {
        let (seen, on_end) = recorder();
        let body = CallBody::new(Body::empty(), Some(Code::NotFound), None, None, on_end);
        assert!(http_body::Body::is_end_stream(&body));
        drop(body);
        assert_eq!(codes(&seen), vec![Code::NotFound]);
    }

    #[tokio::test]
    async fn an_answer_dropped_midway_is_cancelled() {
        let (seen, on_end) = recorder();
        let mut body = CallBody::new(answer(Code::Ok), None, None, None, on_end);
        let first = body.frame().await;
        assert!(matches!(first, Some(Ok(ref f)) if f.is_data()));
        drop(body);
        assert_eq!(codes(&seen), vec![Code::Cancelled]);
    }

    #[tokio::test]
    async fn a_broken_answer_becomes_unavailable_with_retry_info() {
        let (seen, on_end) = recorder();
        let frames: Vec<Result<Frame<Bytes>, Status>> = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Err(Status::internal("h2 protocol error: connection reset")),
        ];
        let broken = Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )));
        let body = CallBody::new(broken, None, None, None, on_end);
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default();
        assert_eq!(code_in(&trailers), Some(Code::Unavailable));
        let status = Status::from_header_map(&trailers).unwrap_or_else(|| Status::unknown(""));
        use tonic_types::StatusExt;
        assert!(status.get_error_details().retry_info().is_some());
        assert_eq!(codes(&seen), vec![Code::Unavailable]);
    }

    #[tokio::test]
    async fn the_deadline_ends_a_stream_that_outlives_it() {
        let (seen, on_end) = recorder();
        let never = Body::new(http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, Status>,
        >()));
        let given = Duration::from_millis(50);
        let body = CallBody::new(
            never,
            None,
            Some((Instant::now() + given, given)),
            None,
            on_end,
        );
        let trailers = body
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned())
            .unwrap_or_default();
        assert_eq!(code_in(&trailers), Some(Code::DeadlineExceeded));
        assert_eq!(codes(&seen), vec![Code::DeadlineExceeded]);
    }

    #[tokio::test]
    async fn a_request_stream_that_stalls_ends_and_says_so() {
        let stall = Arc::new(Stall::default());
        let never = Body::new(http_body_util::StreamBody::new(futures::stream::pending::<
            Result<Frame<Bytes>, Status>,
        >()));
        let mut body = ReadTimeoutBody::new(never, Duration::from_millis(50), Arc::clone(&stall));
        let started = Instant::now();
        let err = body.frame().await.and_then(Result::err);
        assert_eq!(err.map(|s| s.code()), Some(Code::DeadlineExceeded));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert!(stall.fired(), "the gateway is told");
        stall.wait().await;
        assert!(body.frame().await.is_none());
    }
}
