//! Sending: the webhook messages (signed JSON or a DingTalk robot's markdown), the HTTP client
//! (hyper-util over rustls, timeouts on connect and on the whole exchange, response bodies read
//! up to a bound) and the retry schedule (exponential backoff with jitter, from `backon`).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::settings::NotifySettings;
use crate::signing;
use crate::store::NoticeRow;

/// Most bytes of a receiver's response body read (the rest is not read).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Most characters of a failure kept as a delivery's last error.
const MAX_ERROR_CHARS: usize = 500;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The webhook client.
#[derive(Clone)]
pub struct WebhookClient {
    client: Client<Https, Full<Bytes>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient").finish_non_exhaustive()
    }
}

impl WebhookClient {
    pub fn new(settings: &NotifySettings) -> WebhookClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)));
        http.set_nodelay(true);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(http),
            Err(e) => {
                // No system root certificates: http:// receivers still work; https:// ones
                // fail each attempt with a certificate error that names the cause.
                tracing::warn!(error = %e, "no system root certificates: https webhooks will fail");
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    });
                match config {
                    Ok(config) => hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(config)
                        .https_or_http()
                        .enable_http1()
                        .wrap_connector(http),
                    Err(e) => unreachable!("ring supports the default protocol versions: {e}"),
                }
            }
        };
        WebhookClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(4)
                .build(https),
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
        }
    }

    /// POSTs one message; Ok on 2xx (and, for DingTalk, `errcode` 0), else why not.
    pub async fn send(&self, message: Message) -> Result<(), String> {
        let dingtalk = message.dingtalk;
        let exchange = async {
            let mut request = http::Request::post(message.url.as_str())
                .header(
                    http::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .header(http::header::USER_AGENT, "citycredit-notifier");
            for (name, value) in &message.headers {
                request = request.header(*name, value.as_str());
            }
            let request = request
                .body(Full::new(Bytes::from(message.body)))
                .map_err(|e| format!("request: {e}"))?;
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("connection: {}", error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if !status.is_success() {
                return Err(format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body)
                ));
            }
            if dingtalk
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                && let Some(code) = v.get("errcode").and_then(serde_json::Value::as_i64)
                && code != 0
            {
                return Err(format!(
                    "DingTalk errcode {code}: {}",
                    v.get("errmsg").unwrap_or(&serde_json::Value::Null)
                ));
            }
            Ok(())
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r.map_err(clip),
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.request_timeout.as_millis()
            )),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn clip(s: String) -> String {
    if s.chars().count() <= MAX_ERROR_CHARS {
        s
    } else {
        s.chars().take(MAX_ERROR_CHARS).collect::<String>() + "…"
    }
}

/// One HTTP message ready to send.
#[derive(Clone, Debug)]
pub struct Message {
    pub url: url::Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    pub dingtalk: bool,
}

/// The notice as the JSON body of a webhook.
pub fn notice_json(n: &NoticeRow) -> serde_json::Value {
    serde_json::json!({
        "id": n.id,
        "kind": n.kind,
        "recipient": n.recipient,
        "title_zh": n.title_zh,
        "body_zh": n.body_zh,
        "title_en": n.title_en,
        "body_en": n.body_en,
        "payload": serde_json::from_str::<serde_json::Value>(&n.payload).unwrap_or(serde_json::Value::Null),
        "create_micros": n.create_micros,
    })
}

/// The message for `notice` to a subscription of `format` ("JSON" or "DINGTALK"), signed at
/// `now_micros`. Every message carries `X-Citycredit-Delivery: <notice id>`, stable across
/// retries and restarts.
pub fn message(
    format: &str,
    url: &str,
    secret: &str,
    notice: &NoticeRow,
    now_micros: i64,
) -> Result<Message, String> {
    let url = url::Url::parse(url).map_err(|e| format!("url: {e}"))?;
    let mut headers = vec![("x-citycredit-delivery", notice.id.to_string())];
    if format == "DINGTALK" {
        let ms = now_micros / 1_000;
        let body = serde_json::json!({
            "msgtype": "markdown",
            "markdown": {
                "title": notice.title_zh,
                "text": format!("### {}\n\n{}", notice.title_zh, notice.body_zh),
            },
        });
        return Ok(Message {
            url: signing::dingtalk_url(&url, secret, ms),
            headers,
            body: body.to_string().into_bytes(),
            dingtalk: true,
        });
    }
    let body = notice_json(notice).to_string().into_bytes();
    let ts = now_micros / 1_000_000;
    headers.push(("x-citycredit-timestamp", ts.to_string()));
    headers.push((
        "x-citycredit-signature",
        signing::json_signature(secret, ts, &body),
    ));
    Ok(Message {
        url,
        headers,
        body,
        dingtalk: false,
    })
}

/// The delay before the attempt after `attempts` failed ones: `retry_min_ms` doubling up to
/// `retry_max_ms`, with jitter (backon's exponential schedule).
pub fn retry_delay(settings: &NotifySettings, attempts: u32) -> Duration {
    let mut schedule = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(settings.retry_min_ms))
        .with_max_delay(Duration::from_millis(settings.retry_max_ms))
        .with_jitter()
        .with_max_times(usize::try_from(attempts).unwrap_or(usize::MAX).max(1))
        .build();
    let n = usize::try_from(attempts.saturating_sub(1)).unwrap_or(0);
    schedule
        .nth(n)
        .unwrap_or(Duration::from_millis(settings.retry_max_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_within_the_bounds() {
        let s = NotifySettings {
            retry_min_ms: 100,
            retry_max_ms: 1_000,
            ..NotifySettings::default()
        };
        let first = retry_delay(&s, 1);
        assert!(
            first >= Duration::from_millis(100) && first <= Duration::from_millis(200),
            "{first:?}"
        );
        let third = retry_delay(&s, 3);
        assert!(third >= Duration::from_millis(400), "{third:?}");
        let late = retry_delay(&s, 30);
        assert!(late <= Duration::from_millis(2_000), "{late:?}");
    }

    #[test]
    fn a_dingtalk_message_is_markdown_with_a_signed_url() {
        let n = NoticeRow {
            id: 7,
            kind: "deadline_before".into(),
            recipient: "samr".into(),
            title_zh: "催报".into(),
            body_zh: "- 指标".into(),
            title_en: "Reminder".into(),
            body_en: "- metric".into(),
            payload: "{}".into(),
            create_micros: 0,
        };
        let m = message(
            "DINGTALK",
            "http://127.0.0.1:1/robot/send?access_token=t",
            "SECabcdefabcdefabcdef",
            &n,
            1_577_262_236_757_000,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let v: serde_json::Value =
            serde_json::from_slice(&m.body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["msgtype"], "markdown");
        assert_eq!(v["markdown"]["title"], "催报");
        assert!(m.url.as_str().contains("timestamp=1577262236757&sign="));
        assert_eq!(m.headers[0], ("x-citycredit-delivery", "7".to_owned()));
    }
}
