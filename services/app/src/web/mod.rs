//! Read-only web pages on the gRPC port (issue 14, point 1).
//!
//! `citycredit serve` (modes `all` and `gateway`) answers every request whose `content-type` is
//! `application/grpc*` with the gRPC stack as before, and everything else (a browser's
//! HTTP/1.1 `GET`s and its two form `POST`s) with these pages, on the same listener.
//!
//! A person signs in once with an API key (operator, admin, a department...). The key stays on
//! the server in a bounded session store ([`session`]); the browser holds only a random 256-bit
//! session id in an HttpOnly, SameSite=Strict cookie. Every page asks the services through the
//! gateway, in process, with that key: the same authentication, revocation, limits and
//! authorization as any gRPC caller. On top of that, a department principal sees only its own
//! worklist and its own row of the completeness grid.
//!
//! The pages are server-rendered HTML (every value escaped), charts are server-side SVG, the
//! only script is `/assets/app.js` (sorting tables, live updates by server-sent events over
//! `WatchScorecard`), and a strict Content-Security-Policy allows nothing from elsewhere: the
//! pages work without the internet.

mod export;
mod html;
mod pages;
pub mod session;
mod timeliness;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use citycredit::org::OrgView;
use citycredit::proto::v1 as pb;
use citycredit_core::auth::Principal;
use citycredit_core::catalog::Catalog;
use citycredit_gateway::transport::ConnInfo;
use citycredit_registry::KeyView;

use session::{Session, SessionLimits, Sessions};

/// The session cookie's name.
pub const COOKIE: &str = "cc_session";

/// The pages' settings (`[web]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Serve the pages (modes `all` and `gateway`).
    pub enabled: bool,
    /// Most sessions held at once; a sign-in beyond it ends the least recently used session.
    pub max_sessions: usize,
    /// A session unused this long ends.
    pub session_idle_secs: u64,
    /// A session ends this long after sign-in.
    pub session_absolute_secs: u64,
    /// Most live scorecard streams (server-sent events) open at once.
    pub max_live_streams: usize,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            enabled: true,
            max_sessions: 1000,
            session_idle_secs: 30 * 60,
            session_absolute_secs: 8 * 60 * 60,
            max_live_streams: 64,
        }
    }
}

/// Most bytes of a sign-in or sign-out form.
const MAX_FORM_BYTES: usize = 4096;
/// Longest query value the pages accept (region, period, department, indicator codes).
const MAX_PARAM_CHARS: usize = 64;
/// How long a page waits for one call to the services.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The pages' shared state.
pub struct Web {
    /// The gRPC stack (the gateway) the pages call in process.
    grpc: axum::Router,
    keys: KeyView,
    catalog: Arc<Catalog>,
    org: OrgView,
    sessions: Sessions,
    /// The cookie gets `Secure` when the listener speaks TLS.
    secure: bool,
    live: Arc<Semaphore>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// The pages, calling the services through `grpc` (the gateway, in process). The listener
/// sends them every request that is not gRPC (`is_grpc`); gRPC requests go to the gateway
/// without passing through here.
pub fn mount(
    grpc: axum::Router,
    settings: &WebSettings,
    keys: KeyView,
    catalog: Arc<Catalog>,
    org: OrgView,
    secure: bool,
) -> axum::Router {
    let web = Arc::new(Web {
        grpc,
        keys,
        catalog,
        org,
        sessions: Sessions::new(SessionLimits {
            max_sessions: settings.max_sessions,
            idle: Duration::from_secs(settings.session_idle_secs),
            absolute: Duration::from_secs(settings.session_absolute_secs),
        }),
        secure,
        live: Arc::new(Semaphore::new(settings.max_live_streams)),
    });
    let pages = tower::service_fn(move |req: http::Request<Body>| {
        let web = Arc::clone(&web);
        async move { Ok::<_, Infallible>(web.handle(req).await) }
    });
    axum::Router::new().fallback_service(pages)
}

/// True for gRPC (and gRPC-Web) requests.
pub(crate) fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The query string's parameters (first of each name).
fn params(req: &http::Request<Body>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(query) = req.uri().query() {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    out
}

/// Adds the headers every answer carries.
fn secured(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it a browser sends `Origin: null` on the pages' own form POSTs,
    // which the origin check then cannot tell from another site's. Evidence links carry
    // `rel="noreferrer"` themselves.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    secured(resp)
}

/// A file to save (`name` is plain ASCII: `export::file_name`).
fn attachment(name: &str, bytes: Vec<u8>) -> Response {
    let mut resp = respond(StatusCode::OK, export::XLSX, bytes);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

fn html_page(status: StatusCode, body: String) -> Response {
    respond(status, "text/html; charset=utf-8", body)
}

fn redirect(to: &str) -> Response {
    let mut resp = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The session id the request's cookie names, if any.
fn cookie_id(req: &http::Request<Body>) -> Option<String> {
    for value in req.headers().get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=')
                && k == COOKIE
                && v.len() == 64
                && v.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Some(v.to_owned());
            }
        }
    }
    None
}

/// A POST must come from these pages: a browser sends `Origin` with every form POST, and it
/// must name this host; `Sec-Fetch-Site`, when sent, must not say another site. (The
/// SameSite=Strict cookie already keeps other sites' forms from carrying the session.)
fn same_origin(req: &http::Request<Body>) -> bool {
    if let Some(site) = req.headers().get("sec-fetch-site")
        && site.as_bytes() == b"cross-site"
    {
        return false;
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let same = match (origin.to_str().ok(), host.as_deref()) {
        (Some(o), Some(h)) => {
            let rest = o
                .strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"));
            rest == Some(h)
        }
        _ => false,
    };
    if !same {
        tracing::info!(origin = ?origin, host = ?host, "web: form from another origin refused");
    }
    same
}

/// What a page was asked with, checked.
pub(crate) struct Ask {
    pub region: String,
    pub period: String,
    pub params: HashMap<String, String>,
}

/// A page's failure, shown to the person.
pub(crate) enum PageError {
    /// The key no longer works (revoked or expired): the session ends.
    SignedOut,
    Status(tonic::Status),
    Forbidden(String),
    BadRequest(String),
}

impl From<tonic::Status> for PageError {
    fn from(s: tonic::Status) -> Self {
        if s.code() == tonic::Code::Unauthenticated {
            PageError::SignedOut
        } else {
            PageError::Status(s)
        }
    }
}

/// A call's request carrying the session's key.
pub(crate) fn call<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {key}").parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req.set_timeout(CALL_TIMEOUT);
    req
}

impl Web {
    pub(crate) fn scoring(&self) -> pb::scoring_service_client::ScoringServiceClient<axum::Router> {
        pb::scoring_service_client::ScoringServiceClient::new(self.grpc.clone())
    }

    pub(crate) fn submissions(
        &self,
    ) -> pb::metric_submission_service_client::MetricSubmissionServiceClient<axum::Router> {
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(self.grpc.clone())
    }

    pub(crate) fn reviews(&self) -> pb::review_service_client::ReviewServiceClient<axum::Router> {
        pb::review_service_client::ReviewServiceClient::new(self.grpc.clone())
    }

    fn indicators(&self) -> pb::indicator_service_client::IndicatorServiceClient<axum::Router> {
        pb::indicator_service_client::IndicatorServiceClient::new(self.grpc.clone())
    }

    async fn handle(self: Arc<Self>, req: http::Request<Body>) -> Response {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET | Method::HEAD, "/assets/style.css") => asset(
                "text/css; charset=utf-8",
                include_str!("../../web-assets/style.css"),
            ),
            (Method::GET | Method::HEAD, "/assets/app.js") => asset(
                "text/javascript; charset=utf-8",
                include_str!("../../web-assets/app.js"),
            ),
            // No icon: an empty answer rather than an error in the browser's console.
            (Method::GET | Method::HEAD, "/favicon.ico") => {
                respond(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", "")
            }
            (Method::GET | Method::HEAD, "/" | "/signin") => match self.session(&req) {
                Some(_) => redirect("/scorecard"),
                None => html_page(StatusCode::OK, pages::sign_in(None)),
            },
            (Method::POST, "/signin") => self.sign_in(req).await,
            (Method::POST, "/signout") => self.sign_out(req).await,
            (Method::GET | Method::HEAD, _) => {
                let Some((id, session)) = self.session(&req) else {
                    return redirect("/signin");
                };
                let ask = match self.ask(&req) {
                    Ok(a) => a,
                    Err(e) => return self.failed(&id, &session, e),
                };
                if export::PATHS.contains(&path.as_str()) {
                    return match export::download(&self, &session, &ask, &path).await {
                        Ok((name, bytes)) => attachment(&name, bytes),
                        Err(e) => self.failed(&id, &session, e),
                    };
                }
                let result = match path.as_str() {
                    "/scorecard" => pages::scorecard(&self, &session, &ask).await,
                    "/counties" => pages::counties(&self, &session, &ask).await,
                    "/explain" => pages::explain(&self, &session, &ask).await,
                    "/worklist" => pages::worklist(&self, &session, &ask).await,
                    "/completeness" => pages::completeness(&self, &session, &ask).await,
                    "/assessment" => timeliness::assessment(&self, &session, &ask).await,
                    "/events/scorecard" => return self.live(&id, &session, &ask).await,
                    _ => {
                        return html_page(
                            StatusCode::NOT_FOUND,
                            html::page(
                                "未找到 Not found",
                                "",
                                Some(&banner(&session)),
                                "<h1>未找到该页面 <span class=\"en\">Page not found</span></h1>",
                            ),
                        );
                    }
                };
                match result {
                    Ok(body) => html_page(StatusCode::OK, body),
                    Err(e) => self.failed(&id, &session, e),
                }
            }
            _ => {
                let mut resp = respond(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain; charset=utf-8",
                    "method not allowed",
                );
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
                resp
            }
        }
    }

    fn session(&self, req: &http::Request<Body>) -> Option<(String, Session)> {
        let id = cookie_id(req)?;
        let s = self.sessions.get(&id)?;
        Some((id, s))
    }

    /// Region and period (defaults: the city, the current year), checked for size.
    fn ask(&self, req: &http::Request<Body>) -> Result<Ask, PageError> {
        let params = params(req);
        for (k, v) in &params {
            if v.chars().count() > MAX_PARAM_CHARS {
                return Err(PageError::BadRequest(format!(
                    "参数 {k} 过长 (parameter {k} is longer than {MAX_PARAM_CHARS} characters)"
                )));
            }
        }
        let city = self.org.borrow().city.code.clone();
        let region = params
            .get("region")
            .filter(|r| !r.is_empty())
            .cloned()
            .unwrap_or(city);
        let period = params
            .get("period")
            .filter(|p| !p.is_empty())
            .cloned()
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().year().to_string());
        Ok(Ask {
            region,
            period,
            params,
        })
    }

    fn failed(&self, id: &str, session: &Session, e: PageError) -> Response {
        let (status, title, text) = match e {
            PageError::SignedOut => {
                self.sessions.remove(id);
                return clear_cookie(redirect("/signin"), self.secure);
            }
            PageError::Forbidden(why) => (StatusCode::FORBIDDEN, "无权查看 Not permitted", why),
            PageError::BadRequest(why) => (StatusCode::BAD_REQUEST, "请求有误 Bad request", why),
            PageError::Status(s) => {
                let status = match s.code() {
                    tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    tonic::Code::NotFound => StatusCode::NOT_FOUND,
                    tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (
                    status,
                    "出错了 Something went wrong",
                    format!("{:?}: {}", s.code(), s.message()),
                )
            }
        };
        let body = format!(
            "<h1>{}</h1><p class=\"error\" id=\"error\">{}</p><p><a href=\"/scorecard\">返回评分卡 Back to the scorecard</a></p>",
            html::esc(title),
            html::esc(&text)
        );
        html_page(status, html::page(title, "", Some(&banner(session)), &body))
    }

    async fn read_form(req: http::Request<Body>) -> Option<HashMap<String, String>> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FORM_BYTES)
            .await
            .ok()?;
        Some(
            url::form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    async fn sign_in(&self, req: http::Request<Body>) -> Response {
        if !same_origin(&req) {
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "cross-origin form refused",
            );
        }
        // The gateway limits failed authentications per source address: the probe carries the
        // browser's connection, so guessing keys through this form is limited the same way.
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let Some(form) = Self::read_form(req).await else {
            return html_page(
                StatusCode::BAD_REQUEST,
                pages::sign_in(Some("表单过大或无效 The form is too large or not valid")),
            );
        };
        let key = form
            .get("key")
            .map(|k| k.trim().to_owned())
            .unwrap_or_default();
        if key.is_empty() || key.len() > 512 {
            return html_page(
                StatusCode::UNAUTHORIZED,
                pages::sign_in(Some("请输入 API 密钥 Enter an API key")),
            );
        }
        match self.authenticate(&key, conn).await {
            Ok(principal) => {
                tracing::info!(principal = %principal.id, "web sign-in");
                let id = self.sessions.create(key, principal);
                let mut resp = redirect("/scorecard");
                let cookie = format!(
                    "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
                    self.sessions.limits().absolute.as_secs(),
                    if self.secure { "; Secure" } else { "" }
                );
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
                resp
            }
            Err(message) => html_page(StatusCode::UNAUTHORIZED, pages::sign_in(Some(&message))),
        }
    }

    /// The key's principal, as the gateway authenticates it: one call through the gateway
    /// (which counts failures per source and reloads keys made in another process), then the
    /// same key table it used.
    async fn authenticate(&self, key: &str, conn: Option<ConnInfo>) -> Result<Principal, String> {
        let mut request = call(key, pb::ListIndicatorsRequest::default());
        if let Some(conn) = conn {
            request.extensions_mut().insert(conn);
        }
        let probe = self.indicators().list_indicators(request).await;
        if let Err(s) = probe {
            return Err(match s.code() {
                tonic::Code::Unauthenticated => {
                    "API 密钥无效、已吊销或已过期 The API key is unknown, revoked or expired".into()
                }
                tonic::Code::ResourceExhausted => {
                    format!("请稍后再试 Try again later: {}", s.message())
                }
                _ => format!("登录失败 Sign-in failed: {}", s.message()),
            });
        }
        let mut probe = http::Request::new(());
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}")) {
            probe.headers_mut().insert(header::AUTHORIZATION, v);
        }
        citycredit_registry::authn::authenticate(&self.keys, &probe)
            .map_err(|_| "API 密钥无效 The API key is not valid".to_owned())
    }

    async fn sign_out(&self, req: http::Request<Body>) -> Response {
        if !same_origin(&req) {
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "cross-origin form refused",
            );
        }
        if let Some(id) = cookie_id(&req) {
            self.sessions.remove(&id);
        }
        clear_cookie(redirect("/signin"), self.secure)
    }

    /// `GET /events/scorecard`: the scorecard fragment again whenever `WatchScorecard` sends
    /// one (server-sent events), at most `max_live_streams` at once.
    async fn live(&self, id: &str, session: &Session, ask: &Ask) -> Response {
        let Ok(permit) = Arc::clone(&self.live).try_acquire_owned() else {
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                "too many live pages open; reload later",
            );
        };
        let watch = self
            .scoring()
            .watch_scorecard(call(
                &session.key,
                pb::WatchScorecardRequest {
                    region_code: ask.region.clone(),
                    period: ask.period.clone(),
                },
            ))
            .await;
        let stream = match watch {
            Ok(s) => s.into_inner(),
            Err(e) => return self.failed(id, session, e.into()),
        };
        let catalog = Arc::clone(&self.catalog);
        let org = self.org.clone();
        let region = ask.region.clone();
        let period = ask.period.clone();
        let head =
            futures::stream::once(async { Ok::<_, Infallible>("retry: 5000\n\n".to_owned()) });
        let updates =
            futures::stream::unfold((stream, Some(permit)), move |(mut stream, permit)| {
                let catalog = Arc::clone(&catalog);
                let org = org.clone();
                let region = region.clone();
                let period = period.clone();
                async move {
                    permit.as_ref()?;
                    match stream.message().await {
                        Ok(Some(m)) => {
                            let card = m.scorecard.unwrap_or_default();
                            let fragment = pages::scorecard_fragment(
                                &catalog,
                                &org.borrow(),
                                &card,
                                &region,
                                &period,
                            );
                            Some((Ok(sse("scorecard", &fragment)), (stream, permit)))
                        }
                        Ok(None) => None,
                        Err(s) if s.code() == tonic::Code::Unauthenticated => {
                            Some((Ok(sse("signedout", "")), (stream, None)))
                        }
                        Err(_) => None,
                    }
                }
            });
        let body = Body::from_stream(futures::StreamExt::chain(head, updates));
        let mut resp = respond(StatusCode::OK, "text/event-stream; charset=utf-8", body);
        resp.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
    }
}

/// One server-sent event; `data` may span lines.
fn sse(event: &str, data: &str) -> String {
    let mut out = format!("event: {event}\n");
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    if data.is_empty() {
        out.push_str("data: \n");
    }
    out.push('\n');
    out
}

fn asset(content_type: &'static str, text: &'static str) -> Response {
    let mut resp = respond(StatusCode::OK, content_type, text);
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    resp
}

fn clear_cookie(mut resp: Response, secure: bool) -> Response {
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub(crate) fn banner(session: &Session) -> html::Banner<'_> {
    html::Banner {
        principal: &session.principal.id,
        role: session.principal.role.as_str(),
        department: session.principal.department.as_deref(),
    }
}
