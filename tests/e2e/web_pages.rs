//! Issue 14, point 1: the read-only web pages on the gRPC port. A plain HTTP/1.1 client (as a
//! browser speaks to a plaintext address) against a real server on a loopback port, on SQLite
//! and PostgreSQL: sign-in and the session cookie's flags, every page with its content, a
//! department kept to its own worklist, a hostile value escaped, the bounded session store,
//! failed sign-ins limited per source, a revoked key ending its session,
//! sign-out, a cross-site form refused, the live scorecard over server-sent events, and gRPC
//! still answered on the same port. The review cycle's timeliness on the pages: the late state
//! in the completeness grid and its workbook, and the supervision office's assessment page and
//! its `.xlsx` (credit office, operators and administrators only).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use citycredit::proto::v1 as pb;
use citycredit_tests::ingestion::number_input;
use citycredit_tests::{ADMIN_KEY, Backend, TestServer, both_databases, fresh_schema, use_backend};

/// One HTTP/1.1 answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body of a text answer (checked to be UTF-8); empty for a file.
    body: String,
    /// The body as sent.
    bytes: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The session cookie this answer sets (its value).
    fn session(&self) -> Option<String> {
        let c = self.header("set-cookie")?;
        let v = c.strip_prefix("cc_session=")?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_owned())
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < end + 2 + size {
            return out;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[(end + 4 + size).min(raw.len())..];
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    extra: &[(&str, &str)],
    form: Option<&str>,
) -> Answer {
    let mut s = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: cc_session={c}\r\n"));
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(f) = form {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            f.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(f) = form {
        req.push_str(f);
    }
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no header end"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    let text = headers
        .iter()
        .all(|(k, v)| !k.eq_ignore_ascii_case("content-type") || v.starts_with("text/"));
    Answer {
        status,
        body: if text {
            String::from_utf8(body.clone()).unwrap_or_else(|e| panic!("{path}: not UTF-8: {e}"))
        } else {
            String::new()
        },
        headers,
        bytes: body,
    }
}

async fn sign_in(addr: SocketAddr, key: &str) -> Answer {
    let form = format!("key={}", key.replace('+', "%2B"));
    http(addr, "POST", "/signin", None, &[], Some(&form)).await
}

async fn get(addr: SocketAddr, path: &str, cookie: &str) -> Answer {
    http(addr, "GET", path, Some(cookie), &[], None).await
}

/// A downloaded workbook's sheets, each as rows of cell text.
fn workbook(a: &Answer, path: &str, file: &str) -> Vec<(String, Vec<Vec<String>>)> {
    use calamine::Reader as _;
    assert_eq!(
        a.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&a.bytes)
    );
    assert_eq!(
        a.header("content-type"),
        Some("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        "{path}"
    );
    assert_eq!(
        a.header("content-disposition"),
        Some(format!("attachment; filename=\"{file}\"").as_str()),
        "{path}"
    );
    let mut book = calamine::Xlsx::new(std::io::Cursor::new(a.bytes.clone()))
        .unwrap_or_else(|e| panic!("{path}: not an .xlsx file: {e}"));
    let names = book.sheet_names();
    names
        .into_iter()
        .map(|name| {
            let range = book
                .worksheet_range(&name)
                .unwrap_or_else(|e| panic!("{path}: sheet {name}: {e}"));
            let rows = range
                .rows()
                .map(|r| r.iter().map(ToString::to_string).collect())
                .collect();
            (name, rows)
        })
        .collect()
}

/// The first row of `rows` whose first cell is `first`.
fn row_starting<'a>(rows: &'a [Vec<String>], first: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row starting with {first:?} in {rows:?}"))
}

/// The department codes of a completeness workbook's grid (the rows under its header).
fn grid_departments(rows: &[Vec<String>]) -> Vec<&str> {
    let header = rows
        .iter()
        .position(|r| r[0] == "部门 Department")
        .unwrap_or_else(|| panic!("no grid header in {rows:?}"));
    rows[header + 1..].iter().map(|r| r[1].as_str()).collect()
}

fn page_ok(a: &Answer, path: &str, expected: &[&str]) {
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{path}"
    );
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
    assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
    for e in expected {
        assert!(a.body.contains(e), "{path}: no {e:?} in\n{}", a.body);
    }
}

const HOSTILE: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";

async fn the_pages_on_the_grpc_port(backend: Backend) {
    let schema = fresh_schema();
    let s = schema.to_string();
    let server = TestServer::start_with(move |c| {
        use_backend(c, backend, &s);
        c.web.max_sessions = 3;
        c.gateway.failed_auth_per_source_burst = 4;
        c.gateway.failed_auth_per_source_rate = 1;
    })
    .await;
    let addr = server.addr;
    let operator = server
        .create_principal("web-operator", pb::Role::Operator, None)
        .await;
    let samr = server
        .create_principal("web-samr", pb::Role::Department, Some("samr"))
        .await;

    // Signed out: the sign-in form; pages send you there.
    let a = http(addr, "GET", "/", None, &[], None).await;
    page_ok(&a, "/", &["action=\"/signin\"", "name=\"key\""]);
    let a = http(addr, "GET", "/scorecard", None, &[], None).await;
    assert_eq!(a.status, 303);
    assert_eq!(a.header("location"), Some("/signin"));
    let a = sign_in(addr, "cc_nobody_not-a-key").await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.session().is_none());
    assert!(a.body.contains("id=\"error\""));

    // A form from another site is refused whatever it carries.
    let a = http(
        addr,
        "POST",
        "/signin",
        None,
        &[("Origin", "http://evil.example")],
        Some(&format!("key={operator}")),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(a.session().is_none());

    // Sign in: a 256-bit random id in an HttpOnly, SameSite=Strict cookie for the whole site.
    let a = sign_in(addr, &operator).await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/scorecard"));
    let cookie = a.header("set-cookie").unwrap_or_default().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(
        !cookie.contains(&operator),
        "the key never goes to the browser"
    );
    let op = a
        .session()
        .unwrap_or_else(|| panic!("no session: {cookie}"));
    assert_eq!(op.len(), 64);
    assert!(op.bytes().all(|b| b.is_ascii_hexdigit()));

    // A department reports a value with a hostile note and evidence link.
    let dept = server.with_key(&samr);
    let mut submit =
        pb::metric_submission_service_client::MetricSubmissionServiceClient::new(dept.clone());
    let mut input = number_input("uscc.stock_codes_total", "330800", "2026", "samr", "100");
    input.note = HOSTILE.into();
    input.evidence_uri = "https://evidence.example/report?id=1&x=<b>".into();
    submit
        .submit_value(pb::SubmitValueRequest {
            value: Some(input),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("submit: {e}"));

    // Every page, with its content.
    let a = get(addr, "/scorecard?region=330800&period=2026", &op).await;
    page_ok(
        &a,
        "/scorecard",
        &[
            "id=\"outcome\"",
            "数据不全 Incomplete",
            "id=\"guiding-total\"",
            "/ 54.00",
            "无数据",
            "id=\"items\"",
            "E01",
            "data-live=\"/events/scorecard?region=330800&amp;period=2026\"",
        ],
    );
    assert_eq!(
        a.body.matches("<li class=\"light ").count(),
        10,
        "ten basic lights"
    );
    assert_eq!(
        a.body.matches("<svg class=\"bar\"").count(),
        10,
        "ten guiding bars"
    );
    // "No data" is not "fail": nothing fails yet.
    assert!(!a.body.contains("light fail"), "{}", a.body);

    let a = get(addr, "/counties?period=2026", &op).await;
    page_ok(
        &a,
        "/counties",
        &[
            "id=\"league\"",
            "class=\"sortable league\"",
            "id=\"charts\"",
            "<polyline",
        ],
    );
    assert!(
        a.body.matches("<tr data-region=").count() >= 2,
        "{}",
        a.body
    );
    assert!(a.body.matches("<figure class=\"chart\">").count() >= 20);

    let a = get(addr, "/explain?code=B01&region=330800&period=2026", &op).await;
    page_ok(
        &a,
        "/explain",
        &[
            "id=\"rule\"",
            "id=\"terms\"",
            "uscc.stock_codes_total",
            "存量代码总数",
            "class=\"source\"",
            "principals/web-samr",
            "href=\"https://evidence.example/report?id=1&amp;x=%3Cb%3E\"",
            "id=\"gaps\"",
            "id=\"responsible\"",
            "市场监管",
        ],
    );
    // The hostile note is shown as text, never as markup.
    assert!(!a.body.contains("<script>alert"), "{}", a.body);
    assert!(!a.body.contains("<img src=x"), "{}", a.body);
    assert!(
        a.body
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;img src=x"),
        "{}",
        a.body
    );

    let a = get(addr, "/worklist?department=samr&period=2026", &op).await;
    page_ok(
        &a,
        "/worklist",
        &["id=\"worklist\"", "B01", "id=\"department\""],
    );
    let a = get(addr, "/completeness?period=2026", &op).await;
    page_ok(
        &a,
        "/completeness",
        &["id=\"completeness\"", "data-department=\"samr\"", "✔", "✘"],
    );
    let others = a.body.matches("<tr data-department=").count();
    assert!(others > 1, "an operator sees every department");

    // Each table downloads as an .xlsx workbook of what the page shows.
    assert!(
        a.body
            .contains("href=\"/completeness.xlsx?region=330800&amp;period=2026\"")
    );
    let path = "/scorecard.xlsx?region=330800&period=2026";
    let sheets = workbook(
        &get(addr, path, &op).await,
        path,
        "scorecard-330800-2026.xlsx",
    );
    let names: Vec<&str> = sheets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..2], ["评分卡", "评估指标"], "{names:?}");
    let card_rows = &sheets[0].1;
    assert_eq!(row_starting(card_rows, "期间 Period")[1], "2026");
    let b01 = row_starting(card_rows, "B01");
    assert_eq!(b01[2], "基础性 basic", "{b01:?}");
    assert!(!b01[1].is_empty(), "the indicator's Chinese title: {b01:?}");
    let g11 = row_starting(card_rows, "G11");
    assert_eq!(g11[2], "引导性 guiding", "{g11:?}");
    assert!(
        card_rows
            .iter()
            .filter(|r| r[0].len() == 3 && (r[0].starts_with('B') || r[0].starts_with('G')))
            .count()
            == 20,
        "twenty indicators: {card_rows:?}"
    );
    assert!(row_starting(&sheets[1].1, "E01").len() >= 5);
    let path = "/completeness.xlsx?region=330800&period=2026";
    let sheets = workbook(
        &get(addr, path, &op).await,
        path,
        "completeness-330800-2026.xlsx",
    );
    let grid = &sheets[0].1;
    assert!(
        grid.iter().any(|r| r.get(1).is_some_and(|c| c == "samr")
            && r.iter().any(|c| c.starts_with('✔'))
            && r.iter().any(|c| c.starts_with('✘'))),
        "{grid:?}"
    );
    assert_eq!(grid_departments(grid).len(), others, "{grid:?}");

    // Live: the scorecard page's event stream sends the card, and again when a value changes.
    let mut live = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    live.write_all(
        format!(
            "GET /events/scorecard?region=330800&period=2026 HTTP/1.1\r\nHost: {addr}\r\nCookie: cc_session={op}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = String::new();
    read_until(&mut live, &mut seen, "event: scorecard").await;
    assert!(seen.contains("text/event-stream"), "{seen}");
    let before = seen.matches("event: scorecard").count();
    let mut input = number_input(
        "uscc.stock_codes_converted",
        "330800",
        "2026",
        "samr",
        "100",
    );
    input.note = "live".into();
    submit
        .submit_value(pb::SubmitValueRequest {
            value: Some(input),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("submit: {e}"));
    let target = before + 1;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let mut buf = [0u8; 8192];
            let n = live.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0, "the event stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.matches("event: scorecard").count() > target - 1
                && seen.rsplit("event: scorecard").next().is_some_and(|last| {
                    last.contains("data-code=\"B01\"")
                        && last.contains("light ok\" data-code=\"B01\"")
                })
            {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no live update showing B01 passing: {seen}"));
    drop(live);

    // gRPC still works on the same port.
    let mut scoring =
        pb::scoring_service_client::ScoringServiceClient::new(server.with_key(&operator));
    let card = scoring
        .get_scorecard(pb::GetScorecardRequest {
            region_code: "330800".into(),
            period: "2026".into(),
            as_of: None,
            rule_version: String::new(),
            approved_only: false,
        })
        .await
        .unwrap_or_else(|e| panic!("gRPC on the pages' port: {e}"))
        .into_inner()
        .scorecard
        .unwrap_or_default();
    assert_eq!(card.indicators.len(), 20);

    // A department sees its own worklist and its own completeness row, not another's.
    let a = sign_in(addr, &samr).await;
    let dept_session = a.session().unwrap_or_else(|| panic!("{}", a.body));
    let a = get(addr, "/worklist?period=2026", &dept_session).await;
    page_ok(
        &a,
        "/worklist",
        &["id=\"worklist\"", "id=\"worklist-department\""],
    );
    assert!(
        !a.body.contains("id=\"department\""),
        "no department picker"
    );
    let a = get(
        addr,
        "/worklist?department=cpc-staffing&period=2026",
        &dept_session,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(!a.body.contains("id=\"worklist\""));
    let a = get(addr, "/completeness?period=2026", &dept_session).await;
    page_ok(&a, "/completeness", &["data-department=\"samr\""]);
    assert_eq!(a.body.matches("<tr data-department=").count(), 1);
    // Its downloads are its own too.
    let path = "/worklist.xlsx?region=330800&period=2026";
    let sheets = workbook(
        &get(addr, path, &dept_session).await,
        path,
        "worklist-samr-330800-2026.xlsx",
    );
    let rows = &sheets[0].1;
    assert!(
        row_starting(rows, "部门 Department")[1].ends_with("samr"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r[0] == "B01"), "{rows:?}");
    let a = get(
        addr,
        "/worklist.xlsx?department=cpc-staffing&period=2026",
        &dept_session,
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(
        a.bytes.starts_with(b"<!DOCTYPE") || a.body.contains("cpc-staffing"),
        "{}",
        a.body
    );
    let path = "/completeness.xlsx?region=330800&period=2026";
    let sheets = workbook(
        &get(addr, path, &dept_session).await,
        path,
        "completeness-330800-2026.xlsx",
    );
    assert_eq!(
        grid_departments(&sheets[0].1),
        ["samr"],
        "{:?}",
        sheets[0].1
    );

    // Sign out: the session is gone server-side, the cookie cleared.
    let a = http(addr, "POST", "/signout", Some(&dept_session), &[], Some("")).await;
    assert_eq!(a.status, 303);
    assert!(
        a.header("set-cookie")
            .is_some_and(|c| c.contains("Max-Age=0")),
        "{:?}",
        a.headers
    );
    let a = get(addr, "/scorecard", &dept_session).await;
    assert_eq!(a.status, 303, "a signed-out session no longer works");

    // The store is bounded (max_sessions = 3 here): the least recently used session ends.
    let _ = get(addr, "/scorecard", &op).await;
    let mut newer = Vec::new();
    for _ in 0..3 {
        let a = sign_in(addr, ADMIN_KEY).await;
        newer.push(a.session().unwrap_or_else(|| panic!("{}", a.body)));
    }
    let a = get(addr, "/scorecard", &op).await;
    assert_eq!(a.status, 303, "the oldest session was ended");
    for id in &newer {
        let a = get(addr, "/completeness?period=2026", id).await;
        assert_eq!(a.status, 200);
    }
    // Guessing keys through the form is limited per source address, as over gRPC.
    let mut limited = false;
    for _ in 0..8 {
        let a = sign_in(addr, "cc_guess0000_not-the-secret").await;
        assert!(a.session().is_none());
        if a.body.contains("请稍后再试") {
            limited = true;
            break;
        }
        assert!(a.body.contains("API 密钥无效"), "{}", a.body);
    }
    assert!(limited, "eight failed sign-ins in a row were never limited");

    // A key revoked while signed in ends its session at the next page.
    let a = sign_in(addr, &samr).await;
    let revoked = a.session().unwrap_or_else(|| panic!("{}", a.body));
    let a = get(addr, "/worklist?period=2026", &revoked).await;
    assert_eq!(a.status, 200);
    server
        .registry()
        .revoke_api_key(pb::RevokeApiKeyRequest {
            name: citycredit_registry::keys::prefix_of(&samr).to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("revoke: {e}"));
    let a = get(addr, "/worklist?period=2026", &revoked).await;
    assert_eq!(
        a.status, 303,
        "a revoked key's session still works: {}",
        a.body
    );
    assert_eq!(a.header("location"), Some("/signin"));
    let a = get(addr, "/scorecard", &revoked).await;
    assert_eq!(a.status, 303);

    // A forged cookie is not a session.
    let a = get(addr, "/scorecard", &"ab".repeat(32)).await;
    assert_eq!(a.status, 303);

    server.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
}

async fn read_until(s: &mut TcpStream, seen: &mut String, needle: &str) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.contains(needle) {
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0, "stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within 20 s: {seen}"));
}

both_databases!(
    the_pages_on_the_grpc_port,
    flavor = "multi_thread",
    worker_threads = 2
);

/// A review cycle whose deadline has passed: a value written after it (within the grace days)
/// shows as late in the completeness grid and its workbook; the assessment page and workbook
/// count it, with a return from review; a department is kept from the assessment.
async fn timeliness_on_the_pages(backend: Backend) {
    let schema = fresh_schema();
    let s = schema.to_string();
    let server = TestServer::start_with(move |c| use_backend(c, backend, &s)).await;
    let addr = server.addr;
    let operator = server
        .create_principal("web-operator", pb::Role::Operator, None)
        .await;
    let samr = server
        .create_principal("web-samr", pb::Role::Department, Some("samr"))
        .await;
    let mut admin = pb::review_service_client::ReviewServiceClient::new(server.admin());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    admin
        .create_cycle(pb::CreateCycleRequest {
            cycle: Some(pb::Cycle {
                id: "web-2025q4".into(),
                title: "2025 四季度报送考核".into(),
                rule_version: "2019.2".into(),
                periods: vec!["2025-Q4".into()],
                review_date: "2026-03-31".into(),
                grace_days: 7,
                on_time_days: 15,
                deadlines: vec![pb::CycleDeadline {
                    department_code: "samr".into(),
                    subject: String::new(),
                    period: "2025-Q4".into(),
                    due_time: Some(prost_types::Timestamp {
                        seconds: now - 86_400,
                        nanos: 0,
                    }),
                    milestone: "四季度数据".into(),
                }],
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("cycle: {e:?}"));
    let dept = server.with_key(&samr);
    pb::metric_submission_service_client::MetricSubmissionServiceClient::new(dept.clone())
        .submit_value(pb::SubmitValueRequest {
            value: Some(number_input(
                "approval_items.total",
                "330800",
                "2025-Q4",
                "samr",
                "40",
            )),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("a write after the deadline, within the grace days: {e:?}"));
    let part = pb::SignOffPart {
        department_code: "samr".into(),
        region_code: "330800".into(),
        period: "2025-Q4".into(),
    };
    pb::review_service_client::ReviewServiceClient::new(dept)
        .submit_for_approval(pb::SubmitForApprovalRequest {
            part: Some(part.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    admin
        .r#return(pb::ReturnRequest {
            part: Some(part),
            comment: "请补报其余指标".into(),
            expected_revision: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));

    let op = sign_in(addr, &operator)
        .await
        .session()
        .unwrap_or_else(|| panic!("operator session"));
    // The grid: samr's figure is late, the legend names the cycle.
    let a = get(addr, "/completeness?region=330800&period=2025-Q4", &op).await;
    page_ok(
        &a,
        "/completeness",
        &[
            "id=\"timeliness-legend\"",
            "web-2025q4",
            "逾期未报",
            "<td class=\"cell late\" data-metric=\"approval_items.total\" data-timeliness=\"LATE\"",
            "data-timeliness=\"MISSING_OVERDUE\"",
            "href=\"/assessment\"",
        ],
    );
    // A period no cycle covers: no timeliness, said so.
    let a = get(addr, "/completeness?region=330800&period=2024-Q1", &op).await;
    page_ok(&a, "/completeness", &["id=\"timeliness-legend\""]);
    assert!(!a.body.contains("data-timeliness="), "{}", a.body);

    let path = "/completeness.xlsx?region=330800&period=2025-Q4";
    let sheets = workbook(
        &get(addr, path, &op).await,
        path,
        "completeness-330800-2025_Q4.xlsx",
    );
    let grid = &sheets[0].1;
    let header = grid
        .iter()
        .find(|r| r[0] == "部门 Department")
        .unwrap_or_else(|| panic!("{grid:?}"));
    let samr_row = grid
        .iter()
        .find(|r| r.get(1).is_some_and(|c| c == "samr"))
        .unwrap_or_else(|| panic!("{grid:?}"));
    let late_col = header
        .iter()
        .position(|c| c == "迟报 Late")
        .unwrap_or_else(|| panic!("{header:?}"));
    assert_eq!(samr_row[late_col], "1", "{samr_row:?}");
    assert!(samr_row.iter().any(|c| c == "✔ 迟报"), "{samr_row:?}");
    assert!(samr_row.iter().any(|c| c == "✘ 逾期未报"), "{samr_row:?}");

    // The assessment: samr's one task overdue, one figure late, one return.
    let a = get(addr, "/assessment?cycle=web-2025q4", &op).await;
    page_ok(
        &a,
        "/assessment",
        &[
            "督考办考核",
            "id=\"assessment\"",
            "data-department=\"samr\"",
            "href=\"/assessment.xlsx?cycle=web-2025q4\"",
        ],
    );
    let row_at = a
        .body
        .find("data-department=\"samr\"")
        .unwrap_or_else(|| panic!("{}", a.body));
    let samr_html = &a.body[row_at..row_at + a.body[row_at..].find("</tr>").unwrap_or(0)];
    // Tasks 1, done 0, overdue 1, on time 0, late 1.
    assert!(
        samr_html.contains(
            "<td>samr</td><td class=\"num\">1</td><td class=\"num\">0</td><td class=\"num\">1</td>\
             <td class=\"num\">0</td><td class=\"num\">1</td>"
        ),
        "{samr_html}"
    );
    // Without a cycle named: the one covering the period asked.
    let a = get(addr, "/assessment?period=2025-Q4", &op).await;
    page_ok(
        &a,
        "/assessment",
        &["data-department=\"samr\"", "web-2025q4"],
    );

    let path = "/assessment.xlsx?cycle=web-2025q4";
    let sheets = workbook(
        &get(addr, path, &op).await,
        path,
        "assessment-web_2025q4.xlsx",
    );
    let rows = &sheets[0].1;
    assert_eq!(sheets[0].0, "督考办考核");
    let header = rows
        .iter()
        .find(|r| r[0] == "部门 Department")
        .unwrap_or_else(|| panic!("{rows:?}"));
    let col = |name: &str| {
        header
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no {name} in {header:?}"))
    };
    let samr_row = rows
        .iter()
        .find(|r| r.get(1).is_some_and(|c| c == "samr"))
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(samr_row[col("任务数 Tasks")], "1");
    assert_eq!(samr_row[col("逾期任务 Overdue tasks")], "1");
    assert_eq!(samr_row[col("迟报 Late")], "1");
    assert_eq!(samr_row[col("审核退回 Returns")], "1");
    assert_eq!(samr_row[col("按时率 On-time rate")], "0.0000");

    // A department: no assessment (page or workbook), and no link to it.
    let dept_session = sign_in(addr, &samr)
        .await
        .session()
        .unwrap_or_else(|| panic!("department session"));
    let a = get(addr, "/assessment?cycle=web-2025q4", &dept_session).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = get(addr, "/assessment.xlsx?cycle=web-2025q4", &dept_session).await;
    assert_eq!(a.status, 403);
    let a = get(
        addr,
        "/completeness?region=330800&period=2025-Q4",
        &dept_session,
    )
    .await;
    page_ok(&a, "/completeness", &["data-timeliness=\"LATE\""]);
    assert!(!a.body.contains("href=\"/assessment\""), "{}", a.body);
    assert!(!a.body.contains("data-department=\"cbirc\""));

    server.stop().await.unwrap_or_else(|e| panic!("stop: {e}"));
}

both_databases!(
    timeliness_on_the_pages,
    flavor = "multi_thread",
    worker_threads = 2
);
