//! The pages. Each asks the services through the gateway with the session's key and renders
//! what comes back; every value is escaped ([`html::esc`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use citycredit::proto::v1 as pb;
use citycredit_core::auth::Role;
use citycredit_core::catalog::Catalog;
use citycredit_core::org::Org;

use super::html::{self, esc, q};
use super::session::Session;
use super::{Ask, PageError, Web, banner, call, timeliness};

/// Most submissions looked up for one explained indicator (who, when, evidence).
const MAX_SOURCES_SHOWN: usize = 60;
/// Periods in the counties' charts (the asked year and the ones before it).
const CHART_YEARS: i32 = 3;

/// The sign-in page.
pub fn sign_in(error: Option<&str>) -> String {
    let mut body = String::from(
        "<section class=\"signin\"><h1>登录 <span class=\"en\">Sign in</span></h1>\
         <p>使用 API 密钥登录（运营、管理员或部门）。<span class=\"en\">Sign in with an API key \
         (operator, admin or a department).</span></p>",
    );
    if let Some(e) = error {
        let _ = write!(body, "<p class=\"error\" id=\"error\">{}</p>", esc(e));
    }
    body.push_str(
        "<form method=\"post\" action=\"/signin\" id=\"signin\">\
         <label for=\"key\">API 密钥 <span class=\"en\">API key</span></label>\
         <input type=\"password\" id=\"key\" name=\"key\" autocomplete=\"off\" required maxlength=\"512\">\
         <button type=\"submit\" id=\"signin-button\">登录 <span class=\"en\">Sign in</span></button>\
         </form></section>",
    );
    html::page("登录 Sign in", "", None, &body)
}

pub(crate) fn region_name(org: &Org, code: &str) -> String {
    org.city
        .regions
        .iter()
        .find(|r| r.code == code)
        .map(|r| r.name.clone())
        .unwrap_or_else(|| code.to_owned())
}

pub(crate) fn department_name(org: &Org, code: &str) -> String {
    org.city
        .departments
        .iter()
        .find(|d| d.code == code)
        .map(|d| d.name.clone())
        .unwrap_or_else(|| code.to_owned())
}

pub(crate) fn metric_name(catalog: &Catalog, key: &str) -> String {
    catalog
        .metric(key)
        .map(|m| m.title.clone())
        .unwrap_or_default()
}

pub(crate) fn indicator_title(catalog: &Catalog, code: &str) -> String {
    catalog
        .indicator(code)
        .map(|i| i.title.clone())
        .or_else(|| catalog.item(code).map(|i| i.title.clone()))
        .unwrap_or_default()
}

/// "名称 (key)" for a metric, escaped.
fn metric_label(catalog: &Catalog, key: &str) -> String {
    let name = metric_name(catalog, key);
    if name.is_empty() {
        format!("<code>{}</code>", esc(key))
    } else {
        format!("{} <code>{}</code>", esc(&name), esc(key))
    }
}

/// The region and period chooser.
fn chooser(org: &Org, action: &str, ask: &Ask, extra: &str) -> String {
    let mut out = format!("<form method=\"get\" action=\"{action}\" class=\"chooser\">{extra}");
    out.push_str(
        "<label>地区 <span class=\"en\">Region</span> <select name=\"region\" id=\"region\">",
    );
    let city = &org.city.code;
    let mut regions: Vec<&citycredit_core::city::Region> = org
        .city
        .regions
        .iter()
        .filter(|r| &r.code == city || r.parent.as_deref() == Some(city.as_str()))
        .collect();
    regions.sort_by_key(|r| (&r.code != city, r.code.clone()));
    for r in regions {
        let sel = if r.code == ask.region {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{}\"{sel}>{} {}</option>",
            esc(&r.code),
            esc(&r.name),
            esc(&r.code)
        );
    }
    let _ = write!(
        out,
        "</select></label> <label>期间 <span class=\"en\">Period</span> \
         <input name=\"period\" id=\"period\" value=\"{}\" size=\"8\" maxlength=\"10\"></label> \
         <button type=\"submit\">查看 <span class=\"en\">Show</span></button></form>",
        esc(&ask.period)
    );
    out
}

/// The link to the page's table as an `.xlsx` workbook (`export.rs`), for what the page shows.
fn download_link(path: &str, ask: &Ask, department: Option<&str>) -> String {
    let mut href = format!("{path}?region={}&period={}", q(&ask.region), q(&ask.period));
    if let Some(d) = department {
        let _ = write!(href, "&department={}", q(d));
    }
    format!(
        "<p class=\"noprint download\"><a href=\"{}\" id=\"download\" download>下载 Excel \
         <span class=\"en\">Download .xlsx</span></a></p>",
        esc(&href)
    )
}

/// The city scorecard.
pub async fn scorecard(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let card = fetch_scorecard(web, s, ask).await?;
    let org = web.org.borrow().clone();
    let mut body = chooser(&org, "/scorecard", ask, "");
    body.push_str(&download_link("/scorecard.xlsx", ask, None));
    let live = format!(
        "/events/scorecard?region={}&period={}",
        q(&ask.region),
        q(&ask.period)
    );
    let _ = write!(
        body,
        "<div id=\"scorecard\" data-live=\"{}\">{}</div>\
         <p class=\"live-note noprint\" id=\"live-state\">实时更新 <span class=\"en\">Live: updates when the values behind it change</span></p>",
        esc(&live),
        scorecard_fragment(&web.catalog, &org, &card, &ask.region, &ask.period)
    );
    Ok(html::page(
        "评分卡 Scorecard",
        "/scorecard",
        Some(&banner(s)),
        &body,
    ))
}

/// The scorecard asked for, through the gateway with the session's key.
pub async fn fetch_scorecard(
    web: &Web,
    s: &Session,
    ask: &Ask,
) -> Result<pb::Scorecard, PageError> {
    Ok(web
        .scoring()
        .get_scorecard(call(
            &s.key,
            pb::GetScorecardRequest {
                region_code: ask.region.clone(),
                period: ask.period.clone(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            },
        ))
        .await?
        .into_inner()
        .scorecard
        .unwrap_or_default())
}

/// The scorecard's content, also sent whole on every live update.
pub fn scorecard_fragment(
    catalog: &Catalog,
    org: &Org,
    card: &pb::Scorecard,
    region: &str,
    period: &str,
) -> String {
    let mut out = String::new();
    let (outcome, class) = html::outcome(card.outcome);
    let link = |code: &str| {
        format!(
            "/explain?code={}&region={}&period={}",
            q(code),
            q(region),
            q(period)
        )
    };
    let _ = write!(
        out,
        "<section class=\"summary\"><h1>{} <span class=\"muted\">{}</span> · {}</h1>\
         <div class=\"badges\"><span class=\"badge {class}\" id=\"outcome\">{}</span>\
         <span class=\"total\" id=\"guiding-total\">引导性指标得分 <span class=\"en\">Guiding total</span> \
         <strong>{}</strong> / {}</span></div>",
        esc(&region_name(org, region)),
        esc(region),
        esc(period),
        esc(outcome),
        esc(&card.guiding_total),
        esc(if card.guiding_max.is_empty() {
            "54.00"
        } else {
            &card.guiding_max
        }),
    );
    if !card.failing_basic.is_empty() {
        let _ = write!(
            out,
            "<p class=\"veto\" id=\"veto\">一票否决原因 <span class=\"en\">Vetoed by</span>: {}</p>",
            card.failing_basic
                .iter()
                .map(|c| format!("<a href=\"{}\">{}</a>", esc(&link(c)), esc(c)))
                .collect::<Vec<_>>()
                .join("、")
        );
    }
    if !card.incomplete_basic.is_empty() {
        let _ = write!(
            out,
            "<p class=\"muted\">缺少数据 <span class=\"en\">Lacking data</span>: {}</p>",
            esc(&card.incomplete_basic.join("、"))
        );
    }
    out.push_str("</section>");

    out.push_str(
        "<section><h2>基础性指标 <span class=\"en\">Basic indicators (veto)</span></h2>\
         <ul class=\"lights\" id=\"basic\">",
    );
    for i in card
        .indicators
        .iter()
        .filter(|i| i.kind == pb::IndicatorKind::Basic as i32)
    {
        let (zh, en, class) = html::status(i.status);
        let _ = write!(
            out,
            "<li class=\"light {class}\" data-code=\"{code}\"><a href=\"{href}\">\
             <span class=\"lamp\" aria-hidden=\"true\"></span><span class=\"code\">{code}</span>\
             <span class=\"title\">{title}</span><span class=\"state\">{zh} <span class=\"en\">{en}</span></span></a></li>",
            code = esc(&i.code),
            href = esc(&link(&i.code)),
            title = esc(&indicator_title(catalog, &i.code)),
        );
    }
    out.push_str("</ul></section>");

    out.push_str(
        "<section><h2>引导性指标 <span class=\"en\">Guiding indicators</span></h2>\
         <table class=\"guiding\" id=\"guiding\"><thead><tr><th>指标</th><th>名称 <span class=\"en\">Title</span></th>\
         <th>得分 <span class=\"en\">Score</span></th><th></th><th>状态 <span class=\"en\">Status</span></th></tr></thead><tbody>",
    );
    for i in card
        .indicators
        .iter()
        .filter(|i| i.kind == pb::IndicatorKind::Guiding as i32)
    {
        let (zh, en, class) = html::status(i.status);
        let score = html::hundredths(&i.score).unwrap_or(0);
        let max = html::hundredths(&i.max_score).unwrap_or(0);
        let _ = write!(
            out,
            "<tr data-code=\"{code}\"><td><a href=\"{href}\">{code}</a></td><td>{title}</td>\
             <td class=\"num\">{score} / {max}</td><td>{bar}</td><td><span class=\"tag {class}\">{zh} <span class=\"en\">{en}</span></span></td></tr>",
            code = esc(&i.code),
            href = esc(&link(&i.code)),
            title = esc(&indicator_title(catalog, &i.code)),
            score = esc(if i.score.is_empty() { "0" } else { &i.score }),
            max = esc(&i.max_score),
            bar = html::bar(score, max),
        );
    }
    out.push_str("</tbody></table></section>");

    out.push_str(
        "<section><h2>评估指标 <span class=\"en\">Evaluation items</span></h2><div class=\"items\" id=\"items\">",
    );
    for item in &card.items {
        let title = catalog
            .item(&item.code)
            .map(|i| i.title.clone())
            .unwrap_or_default();
        let _ = write!(
            out,
            "<article class=\"item\" data-code=\"{code}\"><h3><span class=\"tag {cls}\">{done}</span> \
             {code} {title}</h3><ul class=\"checklist\">",
            code = esc(&item.code),
            title = esc(&title),
            cls = if item.done { "ok" } else { "nodata" },
            done = if item.done {
                "✔ 已完成"
            } else {
                "未完成"
            },
        );
        for t in &item.tasks {
            let ttitle = catalog
                .task(&t.id)
                .map(|t| t.title.clone())
                .unwrap_or_default();
            let _ = write!(
                out,
                "<li><span class=\"task-id\">{}</span> {} <span class=\"muted\">({})</span><ul>",
                esc(&t.id),
                esc(&ttitle),
                esc(html::task(t.status))
            );
            for c in &t.checks {
                let (mark, cls) = html::check(c.status);
                let _ = write!(
                    out,
                    "<li><span class=\"tag {cls}\">{}</span> {}</li>",
                    esc(mark),
                    esc(&c.summary)
                );
            }
            out.push_str("</ul></li>");
        }
        out.push_str("</ul></article>");
    }
    out.push_str("</div></section>");
    if !card.violations.is_empty() {
        out.push_str(
            "<section><h2>数据校验问题 <span class=\"en\">Data checks violated</span></h2><ul>",
        );
        for v in &card.violations {
            let _ = write!(
                out,
                "<li>{} = {} &gt; {} {}（影响 affects: {}）</li>",
                metric_label(catalog, &v.numerator),
                esc(&v.numerator_value),
                metric_label(catalog, &v.denominator),
                esc(&v.bound),
                esc(&v.affects.join(", "))
            );
        }
        out.push_str("</ul></section>");
    }
    out
}

/// The counties side by side and a chart per indicator over periods.
pub async fn counties(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let mut scoring = web.scoring();
    let rankings = scoring
        .compare_counties(call(
            &s.key,
            pb::CompareCountiesRequest {
                period: ask.period.clone(),
            },
        ))
        .await?
        .into_inner()
        .rankings;
    let org = web.org.borrow().clone();
    let mut body = format!(
        "<form method=\"get\" action=\"/counties\" class=\"chooser\"><label>期间 <span class=\"en\">Period</span> \
         <input name=\"period\" id=\"period\" value=\"{}\" size=\"8\" maxlength=\"10\"></label> \
         <button type=\"submit\">查看 <span class=\"en\">Show</span></button></form>\
         <h1>县（市、区）对比 <span class=\"en\">Counties side by side</span> · {}</h1>\
         <table class=\"sortable league\" id=\"league\"><thead><tr>\
         <th data-type=\"num\">排名 <span class=\"en\">Rank</span></th>\
         <th>地区 <span class=\"en\">County</span></th>\
         <th>结果 <span class=\"en\">Outcome</span></th>\
         <th data-type=\"num\">引导性得分 <span class=\"en\">Guiding total</span></th>\
         <th>否决指标 <span class=\"en\">Failing basic</span></th></tr></thead><tbody>",
        esc(&ask.period),
        esc(&ask.period)
    );
    for r in &rankings {
        let (outcome, class) = html::outcome(r.outcome);
        let _ = write!(
            body,
            "<tr data-region=\"{code}\"><td class=\"num\">{rank}</td>\
             <td><a href=\"/scorecard?region={qcode}&amp;period={qperiod}\">{name}</a> <span class=\"muted\">{code}</span></td>\
             <td><span class=\"tag {class}\">{outcome}</span></td><td class=\"num\">{total}</td><td>{failing}</td></tr>",
            rank = r.rank,
            code = esc(&r.region_code),
            qcode = esc(&q(&r.region_code)),
            qperiod = esc(&q(&ask.period)),
            name = esc(&r.region_name),
            total = esc(&r.guiding_total),
            failing = esc(&r.failing_basic.join("、")),
        );
    }
    body.push_str("</tbody></table>");

    // The charts: the asked year and the years before it.
    let year: Option<i32> = ask.period.get(..4).and_then(|y| y.parse().ok());
    if let Some(year) = year {
        let years: Vec<String> = (0..CHART_YEARS)
            .rev()
            .map(|k| (year - k).to_string())
            .collect();
        let mut cards: Vec<Vec<pb::Scorecard>> = Vec::new();
        for y in &years {
            let batch = scoring
                .batch_get_scorecards(call(
                    &s.key,
                    pb::BatchGetScorecardsRequest {
                        region_codes: Vec::new(),
                        period: y.clone(),
                        as_of: None,
                        rule_version: String::new(),
                        approved_only: false,
                    },
                ))
                .await?
                .into_inner()
                .scorecards;
            cards.push(batch);
        }
        let counties: Vec<String> = rankings.iter().map(|r| r.region_code.clone()).collect();
        body.push_str(
            "<h2>各指标历年走势 <span class=\"en\">Each indicator over the years</span></h2><div class=\"charts\" id=\"charts\">",
        );
        for ind in &web.catalog.indicators {
            let code = &ind.code;
            let guiding = ind.kind == citycredit_core::catalog::IndicatorKind::Guiding;
            if guiding {
                let mut series = Vec::new();
                let mut regions = vec![org.city.code.clone()];
                regions.extend(counties.iter().cloned());
                for region in &regions {
                    let values: Vec<Option<i64>> = cards
                        .iter()
                        .map(|batch| {
                            batch
                                .iter()
                                .find(|c| &c.region_code == region)
                                .and_then(|c| c.indicators.iter().find(|i| &i.code == code))
                                .and_then(|i| html::hundredths(&i.score))
                        })
                        .collect();
                    series.push((region_name(&org, region), values));
                }
                let max = ind
                    .max_score
                    .as_ref()
                    .and_then(|m| html::hundredths(&m.to_string()))
                    .unwrap_or(100);
                body.push_str(&html::line_chart(
                    &format!("{code} {}（得分 score）", ind.title),
                    &years,
                    &series,
                    max,
                ));
            } else {
                let passing: Vec<Option<i64>> = cards
                    .iter()
                    .map(|batch| {
                        let n = batch
                            .iter()
                            .filter(|c| counties.contains(&c.region_code))
                            .filter(|c| {
                                c.indicators.iter().any(|i| {
                                    &i.code == code && i.status == pb::IndicatorStatus::Pass as i32
                                })
                            })
                            .count();
                        i64::try_from(n).ok().map(|n| n * 100)
                    })
                    .collect();
                let max = i64::try_from(counties.len()).unwrap_or(1).max(1) * 100;
                body.push_str(&html::line_chart(
                    &format!("{code} {}（通过的县数 counties passing）", ind.title),
                    &years,
                    &[("通过 passing".to_owned(), passing)],
                    max,
                ));
            }
        }
        body.push_str("</div>");
    }
    Ok(html::page(
        "县（市、区）对比 Counties",
        "/counties",
        Some(&banner(s)),
        &body,
    ))
}

/// One indicator explained (or the list of indicators to choose from).
pub async fn explain(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let org = web.org.borrow().clone();
    let Some(code) = ask.params.get("code").filter(|c| !c.is_empty()) else {
        let mut body = chooser(&org, "/explain", ask, "");
        body.push_str(
            "<h1>指标解读 <span class=\"en\">Explain an indicator</span></h1><ul class=\"index\">",
        );
        for i in &web.catalog.indicators {
            let _ = write!(
                body,
                "<li><a href=\"/explain?code={}&amp;region={}&amp;period={}\">{} {}</a></li>",
                esc(&q(&i.code)),
                esc(&q(&ask.region)),
                esc(&q(&ask.period)),
                esc(&i.code),
                esc(&i.title)
            );
        }
        body.push_str("</ul>");
        return Ok(html::page(
            "指标解读 Explain",
            "/explain",
            Some(&banner(s)),
            &body,
        ));
    };
    let answer = web
        .scoring()
        .explain_indicator(call(
            &s.key,
            pb::ExplainIndicatorRequest {
                region_code: ask.region.clone(),
                period: ask.period.clone(),
                indicator: code.clone(),
                as_of: None,
                rule_version: String::new(),
                approved_only: false,
            },
        ))
        .await?
        .into_inner();
    let result = answer.result.unwrap_or_default();
    let (zh, en, class) = html::status(result.status);
    let extra = format!(
        "<input type=\"hidden\" name=\"code\" value=\"{}\">",
        esc(code)
    );
    let mut body = chooser(&org, "/explain", ask, &extra);
    let _ = write!(
        body,
        "<h1 id=\"indicator\">{} {} <span class=\"tag {class}\" id=\"status\">{zh} <span class=\"en\">{en}</span></span></h1>\
         <p class=\"muted\">{} {} · {}</p>\
         <section><h2>规则 <span class=\"en\">The rule</span></h2><p id=\"rule\">{}</p>",
        esc(&result.code),
        esc(&answer.title),
        esc(&region_name(&org, &ask.region)),
        esc(&ask.region),
        esc(&ask.period),
        esc(&answer.rule_summary),
    );
    if !result.score.is_empty() {
        let _ = write!(
            body,
            "<p>得分 <span class=\"en\">Score</span> <strong>{}</strong> / {} {}</p>",
            esc(&result.score),
            esc(&result.max_score),
            html::bar(
                html::hundredths(&result.score).unwrap_or(0),
                html::hundredths(&result.max_score).unwrap_or(0)
            )
        );
    }
    body.push_str(
        "</section><section><h2>条件 <span class=\"en\">Conditions and parts</span></h2>\
         <table id=\"terms\"><thead><tr><th></th><th>规则 <span class=\"en\">Rule</span></th><th>结果 <span class=\"en\">Result</span></th>\
         <th>计算值 <span class=\"en\">Computed</span></th><th>阈值 <span class=\"en\">Threshold</span></th>\
         <th>得分 <span class=\"en\">Score</span></th><th>缺少 <span class=\"en\">Missing</span></th></tr></thead><tbody>",
    );
    for t in &result.terms {
        let (outcome, cls) = html::term(t.outcome);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><span class=\"tag {cls}\">{}</span></td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&t.label),
            esc(&t.summary),
            esc(outcome),
            esc(&t.computed),
            esc(&t.threshold),
            esc(&if t.max_score.is_empty() {
                t.score.clone()
            } else {
                format!("{} / {}", t.score, t.max_score)
            }),
            t.missing_metrics
                .iter()
                .map(|m| metric_label(&web.catalog, m))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    body.push_str("</tbody></table></section>");

    // The inputs and the submissions behind them.
    body.push_str(
        "<section><h2>数据来源 <span class=\"en\">Inputs and the submissions behind them</span></h2>\
         <table id=\"inputs\"><thead><tr><th>指标项 <span class=\"en\">Metric</span></th><th>数值 <span class=\"en\">Value</span></th>\
         <th>报送 <span class=\"en\">Submissions: who, when, evidence</span></th></tr></thead><tbody>",
    );
    let mut looked_up = 0usize;
    let mut submissions = web.submissions();
    for input in &result.inputs {
        let mut sources = String::new();
        for src in &input.sources {
            let when = src
                .accept_time
                .as_ref()
                .map(|t| format_time(t.seconds))
                .unwrap_or_default();
            let mut who = department_name(&org, &src.department_code);
            let mut evidence = String::new();
            let mut note = String::new();
            if looked_up < MAX_SOURCES_SHOWN {
                looked_up += 1;
                match submissions
                    .get_submission(call(
                        &s.key,
                        pb::GetSubmissionRequest {
                            name: src.submission.clone(),
                        },
                    ))
                    .await
                {
                    Ok(r) => {
                        if let Some(sub) = r.into_inner().submission {
                            who = format!("{} · {}", who, sub.principal);
                            if let Some(input) = sub.input {
                                evidence = evidence_link(&input.evidence_uri);
                                note = input.note;
                            }
                        }
                    }
                    Err(e) if e.code() == tonic::Code::Unauthenticated => {
                        return Err(PageError::SignedOut);
                    }
                    Err(e) => {
                        evidence = format!("<span class=\"muted\">{}</span>", esc(e.message()));
                    }
                }
            }
            let value = src.value.as_ref().map(value_text).unwrap_or_default();
            let _ = write!(
                sources,
                "<li class=\"source\"><code>{}</code> {} · {} · {} · <span class=\"muted\">{}</span> {}{}</li>",
                esc(&src.submission),
                esc(&who),
                esc(&region_name(&org, &src.region_code)),
                esc(&value),
                esc(&when),
                evidence,
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" <q class=\"note\">{}</q>", esc(&note))
                }
            );
        }
        let _ = write!(
            body,
            "<tr><td>{}</td><td class=\"num\">{}{}</td><td><ul class=\"sources\">{}</ul></td></tr>",
            metric_label(&web.catalog, &input.metric_key),
            esc(&input.value),
            if input.domains.is_empty() {
                String::new()
            } else {
                format!(
                    " <span class=\"muted\">({})</span>",
                    esc(&input.domains.join(", "))
                )
            },
            if sources.is_empty() {
                "<li class=\"muted\">无报送 no submissions</li>".to_owned()
            } else {
                sources
            }
        );
    }
    body.push_str("</tbody></table></section>");

    body.push_str("<section><h2>差距 <span class=\"en\">The gap</span></h2><ul id=\"gaps\">");
    let mut any_gap = false;
    for g in &result.gaps {
        any_gap = true;
        let _ = write!(
            body,
            "<li>条件 {}：{} <span class=\"muted\">({})</span></li>",
            esc(&g.condition),
            esc(&g.description),
            esc(&g.change)
        );
    }
    for step in [&result.next_step, &result.to_max].into_iter().flatten() {
        if step.description.is_empty() {
            continue;
        }
        any_gap = true;
        let _ = write!(
            body,
            "<li>→ {}：{}</li>",
            esc(&step.score),
            esc(&step.description)
        );
    }
    if !any_gap {
        body.push_str("<li>无差距 <span class=\"en\">Nothing missing</span></li>");
    }
    body.push_str("</ul></section>");

    body.push_str(
        "<section><h2>责任单位 <span class=\"en\">Who must act</span></h2><ul id=\"responsible\">",
    );
    for p in &answer.responsible {
        let _ = write!(
            body,
            "<li>{} <span class=\"muted\">{} · {}</span></li>",
            esc(&p.display_name),
            esc(&p.party),
            esc(html::role(p.role))
        );
    }
    body.push_str("</ul></section>");
    Ok(html::page(
        "指标解读 Explain",
        "/explain",
        Some(&banner(s)),
        &body,
    ))
}

/// An evidence link, only for http and https.
fn evidence_link(uri: &str) -> String {
    if uri.is_empty() {
        return String::new();
    }
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        format!(
            "<a class=\"evidence\" href=\"{}\" rel=\"noopener noreferrer nofollow\" target=\"_blank\">佐证 evidence</a>",
            esc(uri)
        )
    } else {
        format!("<span class=\"muted\">{}</span>", esc(uri))
    }
}

fn value_text(v: &pb::MetricValue) -> String {
    match &v.value {
        Some(pb::metric_value::Value::Number(n)) => n.clone(),
        Some(pb::metric_value::Value::Flag(f)) => (if *f { "是 true" } else { "否 false" }).into(),
        Some(pb::metric_value::Value::TaskStatus(t)) => html::task(*t).into(),
        None => String::new(),
    }
}

fn format_time(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_default()
}

/// The departments a principal may pick: a department principal only its own.
fn department_asked(org: &Org, s: &Session, ask: &Ask) -> Result<Option<String>, PageError> {
    let asked = ask
        .params
        .get("department")
        .filter(|d| !d.is_empty())
        .map(|d| d.strip_prefix("departments/").unwrap_or(d).to_owned());
    match (&s.principal.role, &s.principal.department) {
        (Role::Department, Some(own)) => match asked {
            Some(d) if &d != own => Err(PageError::Forbidden(format!(
                "部门账号只能查看本部门的工作清单 A department sees only its own worklist ({own}), not {d}"
            ))),
            _ => Ok(Some(own.clone())),
        },
        _ => Ok(asked.or_else(|| org.city.departments.first().map(|d| d.code.clone()))),
    }
}

/// The worklist asked for (a department principal's own), through the gateway.
pub async fn fetch_worklist(
    web: &Web,
    s: &Session,
    ask: &Ask,
) -> Result<pb::GetDepartmentWorklistResponse, PageError> {
    let org = web.org.borrow().clone();
    let department = department_asked(&org, s, ask)?
        .ok_or_else(|| PageError::BadRequest("没有部门 No department is registered".into()))?;
    Ok(web
        .scoring()
        .get_department_worklist(call(
            &s.key,
            pb::GetDepartmentWorklistRequest {
                department,
                period: ask.period.clone(),
                region_code: ask.region.clone(),
            },
        ))
        .await?
        .into_inner())
}

/// A department's worklist.
pub async fn worklist(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let org = web.org.borrow().clone();
    let list = fetch_worklist(web, s, ask).await?;
    let department = list.department_code.clone();
    let mut extra = String::new();
    if s.principal.role != Role::Department {
        extra.push_str("<label>部门 <span class=\"en\">Department</span> <select name=\"department\" id=\"department\">");
        for d in &org.city.departments {
            let sel = if d.code == department {
                " selected"
            } else {
                ""
            };
            let _ = write!(
                extra,
                "<option value=\"{}\"{sel}>{}</option>",
                esc(&d.code),
                esc(&d.name)
            );
        }
        extra.push_str("</select></label> ");
    }
    let mut body = chooser(&org, "/worklist", ask, &extra);
    body.push_str(&download_link("/worklist.xlsx", ask, Some(&department)));
    let _ = write!(
        body,
        "<h1>工作清单 <span class=\"en\">Worklist</span> · <span id=\"worklist-department\">{}</span> \
         <span class=\"muted\">{}</span> · {}</h1>\
         <div class=\"scroll\"><table id=\"worklist\" class=\"sortable\"><thead><tr><th>事项 <span class=\"en\">Subject</span></th>\
         <th>名称 <span class=\"en\">Title</span></th><th>职责 <span class=\"en\">Role</span></th>\
         <th>状态 <span class=\"en\">Status</span></th><th>未报送 <span class=\"en\">Not reported</span></th>\
         <th>待评估 <span class=\"en\">Awaiting assessment</span></th><th>差距 <span class=\"en\">Gaps</span></th></tr></thead><tbody>",
        esc(&department_name(&org, &list.department_code)),
        esc(&list.department_code),
        esc(&ask.period)
    );
    for e in &list.entries {
        let (subject, _) = Catalog::split_subject(&e.code);
        let status = if e.status != pb::IndicatorStatus::Unspecified as i32 {
            let (zh, en, cls) = html::status(e.status);
            format!("<span class=\"tag {cls}\">{zh} <span class=\"en\">{en}</span></span>")
        } else if e.item_done {
            "<span class=\"tag ok\">已完成 done</span>".into()
        } else {
            "<span class=\"tag nodata\">未完成 not done</span>".into()
        };
        let code_cell = if web.catalog.indicator(subject).is_some() {
            format!(
                "<a href=\"/explain?code={}&amp;region={}&amp;period={}\">{}</a>",
                esc(&q(subject)),
                esc(&q(&ask.region)),
                esc(&q(&ask.period)),
                esc(&e.code)
            )
        } else {
            esc(&e.code)
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            code_cell,
            esc(&indicator_title(&web.catalog, subject)),
            esc(html::role(e.role)),
            if e.via_group.is_empty() {
                String::new()
            } else {
                format!(" <span class=\"muted\">{}</span>", esc(&e.via_group))
            },
            status,
            e.missing_metrics
                .iter()
                .map(|m| metric_label(&web.catalog, m))
                .collect::<Vec<_>>()
                .join("<br>"),
            e.awaiting_assessment
                .iter()
                .map(|m| metric_label(&web.catalog, m))
                .collect::<Vec<_>>()
                .join("<br>"),
            e.gaps
                .iter()
                .map(|g| esc(&g.description))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    body.push_str("</tbody></table></div>");
    Ok(html::page(
        "工作清单 Worklist",
        "/worklist",
        Some(&banner(s)),
        &body,
    ))
}

/// The completeness report asked for (a department principal's own row only), through the
/// gateway.
pub async fn fetch_completeness(
    web: &Web,
    s: &Session,
    ask: &Ask,
) -> Result<Vec<pb::DepartmentCompleteness>, PageError> {
    let mut rows = web
        .scoring()
        .get_completeness_report(call(
            &s.key,
            pb::GetCompletenessReportRequest {
                period: ask.period.clone(),
                region_code: ask.region.clone(),
            },
        ))
        .await?
        .into_inner()
        .departments;
    if s.principal.role == Role::Department {
        let own = s.principal.department.clone().unwrap_or_default();
        rows.retain(|r| r.department_code == own);
    }
    Ok(rows)
}

/// The grid's columns: every metric some row reports or misses, in key order.
pub fn grid_metrics(rows: &[pb::DepartmentCompleteness]) -> BTreeSet<&str> {
    rows.iter()
        .flat_map(|r| r.reported.iter().chain(r.missing.iter()))
        .map(String::as_str)
        .collect()
}

/// The completeness grid: department × metric, with each figure's timeliness for the review
/// cycle covering the period (on time, late, missing overdue, not yet due).
pub async fn completeness(web: &Web, s: &Session, ask: &Ask) -> Result<String, PageError> {
    let org = web.org.borrow().clone();
    let rows = fetch_completeness(web, s, ask).await?;
    let timely = timeliness::fetch_grid(web, s, ask).await?;
    let metrics = grid_metrics(&rows);
    let mut body = chooser(&org, "/completeness", ask, "");
    body.push_str(&download_link("/completeness.xlsx", ask, None));
    let _ = write!(
        body,
        "<h1>报送完整性 <span class=\"en\">Reporting completeness</span> · {}</h1>\
         <p class=\"legend-line\"><span class=\"tag ok\">✔ 已报送 reported</span> \
         <span class=\"tag fail\">✘ 未报送 missing</span> <span class=\"tag none\">· 无需报送 not expected</span></p>",
        esc(&ask.period)
    );
    match &timely {
        Some(t) => {
            let _ = write!(
                body,
                "<p class=\"legend-line\" id=\"timeliness-legend\">考核周期 <span class=\"en\">Cycle</span>：{}（{}）· \
                 <span class=\"tag ok\">按时</span> <span class=\"tag late\">迟报</span> \
                 <span class=\"tag fail\">逾期未报</span> <span class=\"tag pending\">未到期</span><br>{}</p>",
                esc(&t.cycle.title),
                esc(&t.cycle.id),
                esc(timeliness::LEGEND)
            );
        }
        None => body.push_str(
            "<p class=\"legend-line muted\" id=\"timeliness-legend\">该期间不属于任何考核周期，不显示是否按时。\
             <span class=\"en\">No review cycle covers this period: timeliness is not shown.</span></p>",
        ),
    }
    body.push_str(
        "<div class=\"scroll\"><table class=\"grid\" id=\"completeness\"><thead><tr><th>部门 <span class=\"en\">Department</span></th>\
         <th>报送率 <span class=\"en\">Rate</span></th>",
    );
    if timely.is_some() {
        body.push_str(
            "<th>按时 <span class=\"en\">On time</span></th><th>迟报 <span class=\"en\">Late</span></th>\
             <th>逾期未报 <span class=\"en\">Overdue</span></th><th>未到期 <span class=\"en\">Not yet due</span></th>",
        );
    }
    for m in &metrics {
        let _ = write!(
            body,
            "<th class=\"metric\" title=\"{}\"><span>{}</span></th>",
            esc(m),
            esc(&{
                let n = metric_name(&web.catalog, m);
                if n.is_empty() { (*m).to_owned() } else { n }
            })
        );
    }
    body.push_str("</tr></thead><tbody>");
    for r in &rows {
        let reported: BTreeSet<&str> = r.reported.iter().map(String::as_str).collect();
        let missing: BTreeSet<&str> = r.missing.iter().map(String::as_str).collect();
        let _ = write!(
            body,
            "<tr data-department=\"{}\"><th>{} <span class=\"muted\">{}</span></th><td class=\"num\">{}</td>",
            esc(&r.department_code),
            esc(&department_name(&org, &r.department_code)),
            esc(&r.department_code),
            esc(&r.reporting_rate)
        );
        if let Some(t) = &timely {
            let c = t
                .counts
                .get(&r.department_code)
                .cloned()
                .unwrap_or_default();
            let _ = write!(
                body,
                "<td class=\"num\">{}</td><td class=\"num late-count\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                c.on_time, c.late, c.missing_overdue, c.not_yet_due
            );
        }
        for m in &metrics {
            let state = timely.as_ref().and_then(|t| t.state(&r.department_code, m));
            let (class, mark, label) =
                timeliness::grid_cell(reported.contains(m), missing.contains(m), state);
            match label {
                Some((zh, en, code)) => {
                    let _ = write!(
                        body,
                        "<td class=\"cell {class}\" data-metric=\"{}\" data-timeliness=\"{code}\" title=\"{zh} {en}\">{mark}<small>{zh}</small></td>",
                        esc(m)
                    );
                }
                None => {
                    let _ = write!(
                        body,
                        "<td class=\"cell {class}\" data-metric=\"{}\">{mark}</td>",
                        esc(m)
                    );
                }
            }
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(html::page(
        "报送完整性 Completeness",
        "/completeness",
        Some(&banner(s)),
        &body,
    ))
}
