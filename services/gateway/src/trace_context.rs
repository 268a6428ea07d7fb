//! Trace context across each hop: the gateway continues the caller's W3C `traceparent` and
//! passes it on to the service it routes to, which continues it in turn, so one trace runs from
//! the caller through the gateway into the service and its database spans.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderRead<'a>(&'a http::HeaderMap);

impl Extractor for HeaderRead<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderWrite<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderWrite<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` a child of the trace named by the request's `traceparent`, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key(crate::headers::TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&HeaderRead(headers));
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context as `traceparent` for the next hop.
pub fn pass_on_trace(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderWrite(headers));
}
