//! HTML building blocks: escaping, the page frame, labels in Chinese (with English), and small
//! server-side SVG charts. Every value that reaches a page goes through [`esc`]: values come
//! from departments and the registry and are never trusted as markup.

use std::fmt::Write as _;

use citycredit::proto::v1 as pb;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
pub fn q(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Who is signed in, for the page header.
pub struct Banner<'a> {
    pub principal: &'a str,
    pub role: &'a str,
    pub department: Option<&'a str>,
}

/// The navigation entries: path, Chinese, English.
const NAV: [(&str, &str, &str); 6] = [
    ("/scorecard", "全市评分卡", "Scorecard"),
    ("/counties", "县（市、区）对比", "Counties"),
    ("/worklist", "部门工作清单", "Worklist"),
    ("/completeness", "报送完整性", "Completeness"),
    ("/explain", "指标解读", "Explain"),
    ("/assessment", "督考办考核", "Assessment"),
];

/// A whole page: `body` is markup built from escaped values.
pub fn page(title: &str, active: &str, banner: Option<&Banner<'_>>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"zh-CN\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · 信用城市 citycredit</title>\n\
         <link rel=\"stylesheet\" href=\"/assets/style.css\">\n\
         <script src=\"/assets/app.js\" defer></script>\n</head>\n<body>\n<header class=\"top\">\n\
         <div class=\"brand\">社会信用体系建设示范城市 <span class=\"en\">citycredit</span></div>\n",
        esc(title)
    );
    if let Some(b) = banner {
        out.push_str("<nav>");
        for (path, zh, en) in NAV {
            // The assessment is the credit office's, operators' and administrators'.
            if path == "/assessment" && !matches!(b.role, "credit_office" | "operator" | "admin") {
                continue;
            }
            let class = if path == active { " class=\"on\"" } else { "" };
            let _ = write!(
                out,
                "<a href=\"{path}\"{class}>{zh} <span class=\"en\">{en}</span></a>"
            );
        }
        out.push_str("</nav>");
        let _ = write!(
            out,
            "<div class=\"who\"><span id=\"principal\">{}</span> · {}{}\
             <form method=\"post\" action=\"/signout\" class=\"inline\">\
             <button type=\"submit\" id=\"signout\">退出 <span class=\"en\">Sign out</span></button></form></div>",
            esc(b.principal),
            esc(b.role),
            b.department
                .map(|d| format!(" · {}", esc(d)))
                .unwrap_or_default()
        );
    }
    out.push_str("</header>\n<main>\n");
    out.push_str(body);
    out.push_str("\n</main>\n</body>\n</html>\n");
    out
}

/// The outcome badge: text and CSS class.
pub fn outcome(o: i32) -> (&'static str, &'static str) {
    match pb::Outcome::try_from(o).unwrap_or_default() {
        pb::Outcome::Passed => ("通过 Passed", "ok"),
        pb::Outcome::Vetoed => ("一票否决 Vetoed", "fail"),
        pb::Outcome::Incomplete => ("数据不全 Incomplete", "nodata"),
        pb::Outcome::Unspecified => ("未知 Unknown", "nodata"),
    }
}

/// An indicator status: Chinese text, English, CSS class (traffic-light colour).
pub fn status(s: i32) -> (&'static str, &'static str, &'static str) {
    match pb::IndicatorStatus::try_from(s).unwrap_or_default() {
        pb::IndicatorStatus::Pass => ("通过", "pass", "ok"),
        pb::IndicatorStatus::Fail => ("不通过", "fail", "fail"),
        pb::IndicatorStatus::MissingData => ("无数据", "no data", "nodata"),
        pb::IndicatorStatus::InvalidData => ("数据有误", "invalid data", "invalid"),
        pb::IndicatorStatus::Scored => ("已评分", "scored", "ok"),
        pb::IndicatorStatus::Partial => ("部分无数据", "partial", "partial"),
        pb::IndicatorStatus::Unspecified => ("—", "", "none"),
    }
}

/// A condition's or part's outcome.
pub fn term(t: i32) -> (&'static str, &'static str) {
    match pb::TermOutcome::try_from(t).unwrap_or_default() {
        pb::TermOutcome::Met => ("满足 met", "ok"),
        pb::TermOutcome::Vacuous => ("满足（分母为0）met (nothing to do)", "ok"),
        pb::TermOutcome::Unmet => ("未满足 unmet", "fail"),
        pb::TermOutcome::Missing => ("无数据 no data", "nodata"),
        pb::TermOutcome::Scored => ("已计分 scored", "ok"),
        pb::TermOutcome::Invalid => ("数据有误 invalid", "invalid"),
        pb::TermOutcome::Unspecified => ("—", "none"),
    }
}

/// An item check's status.
pub fn check(s: i32) -> (&'static str, &'static str) {
    match pb::CheckStatus::try_from(s).unwrap_or_default() {
        pb::CheckStatus::Pass => ("✔", "ok"),
        pb::CheckStatus::Fail => ("✘", "fail"),
        pb::CheckStatus::Missing => ("无数据", "nodata"),
        pb::CheckStatus::InvalidData => ("数据有误", "invalid"),
        pb::CheckStatus::Unspecified => ("—", "none"),
    }
}

/// A task's reported progress.
pub fn task(s: i32) -> &'static str {
    match pb::TaskStatus::try_from(s).unwrap_or_default() {
        pb::TaskStatus::Done => "已完成 done",
        pb::TaskStatus::InProgress => "进行中 in progress",
        pb::TaskStatus::NotStarted | pb::TaskStatus::Unspecified => "未开始 not started",
    }
}

/// Lead or co-responsible.
pub fn role(r: i32) -> &'static str {
    match pb::ResponsibilityRole::try_from(r).unwrap_or_default() {
        pb::ResponsibilityRole::Lead => "牵头 lead",
        pb::ResponsibilityRole::Co => "配合 co",
        pb::ResponsibilityRole::Unspecified => "—",
    }
}

/// Parses a decimal string ("12.50") into hundredths, exactly (no floating point); None for
/// anything else.
pub fn hundredths(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let w: i64 = whole.parse().ok()?;
    let mut f = frac.bytes().take(2).map(|b| i64::from(b - b'0'));
    let f = f.next().unwrap_or(0) * 10 + f.next().unwrap_or(0);
    let v = w.checked_mul(100)?.checked_add(f)?;
    Some(if neg { -v } else { v })
}

/// A horizontal bar of `value` against `max` (both in hundredths), as inline SVG (no style
/// attributes: the Content-Security-Policy allows none).
pub fn bar(value: i64, max: i64) -> String {
    const W: i64 = 200;
    let filled = if max > 0 {
        (value.clamp(0, max) * W) / max
    } else {
        0
    };
    format!(
        "<svg class=\"bar\" viewBox=\"0 0 {W} 14\" width=\"{W}\" height=\"14\" role=\"img\">\
         <rect x=\"0\" y=\"0\" width=\"{W}\" height=\"14\" class=\"bar-bg\"/>\
         <rect x=\"0\" y=\"0\" width=\"{filled}\" height=\"14\" class=\"bar-fg\"/></svg>"
    )
}

/// A line chart: one series per name, values in hundredths (None: no value), over `labels`.
pub fn line_chart(
    title: &str,
    labels: &[String],
    series: &[(String, Vec<Option<i64>>)],
    max: i64,
) -> String {
    const W: i64 = 320;
    const H: i64 = 150;
    const L: i64 = 34;
    const B: i64 = 22;
    let n = i64::try_from(labels.len()).unwrap_or(1).max(1);
    let step = if n > 1 { (W - L - 26) / (n - 1) } else { 0 };
    let max = max.max(1);
    let y = |v: i64| H - B - (v.clamp(0, max) * (H - B - 10)) / max;
    let mut out = String::new();
    let _ = write!(
        out,
        "<figure class=\"chart\"><figcaption>{}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\">\
         <line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"axis\"/>\
         <line x1=\"{L}\" y1=\"10\" x2=\"{L}\" y2=\"{}\" class=\"axis\"/>\
         <text x=\"{}\" y=\"14\" class=\"tick\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">0</text>",
        esc(title),
        H - B,
        W - 6,
        H - B,
        H - B,
        L - 4,
        max / 100,
        L - 4,
        H - B
    );
    for (i, label) in labels.iter().enumerate() {
        let x = L + step * i64::try_from(i).unwrap_or(0);
        let _ = write!(
            out,
            "<text x=\"{x}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
            H - 6,
            esc(label)
        );
    }
    for (k, (name, values)) in series.iter().enumerate() {
        let class = format!("s{}", k % 8);
        let mut points = String::new();
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let x = L + step * i64::try_from(i).unwrap_or(0);
                let _ = write!(points, "{x},{} ", y(*v));
                let _ = write!(
                    out,
                    "<circle cx=\"{x}\" cy=\"{}\" r=\"2.5\" class=\"{class}\"><title>{} {}: {}.{:02}</title></circle>",
                    y(*v),
                    esc(name),
                    esc(&labels[i]),
                    v / 100,
                    v % 100
                );
            }
        }
        let _ = write!(
            out,
            "<polyline points=\"{}\" class=\"{class} line\"/>",
            points.trim_end()
        );
    }
    out.push_str("</svg><ul class=\"legend\">");
    for (k, (name, _)) in series.iter().enumerate() {
        let _ = write!(out, "<li class=\"s{}\">{}</li>", k % 8, esc(name));
    }
    out.push_str("</ul></figure>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn decimals_to_hundredths_exactly() {
        assert_eq!(hundredths("54.00"), Some(5400));
        assert_eq!(hundredths("2.5"), Some(250));
        assert_eq!(hundredths("7"), Some(700));
        assert_eq!(hundredths("-1.25"), Some(-125));
        assert_eq!(hundredths("x"), None);
        assert_eq!(hundredths(""), None);
    }

    #[test]
    fn bars_are_clamped() {
        assert!(bar(50, 100).contains("width=\"100\" height=\"14\" class=\"bar-fg\""));
        assert!(bar(500, 100).contains("width=\"200\" height=\"14\" class=\"bar-fg\""));
        assert!(bar(5, 0).contains("width=\"0\" height=\"14\" class=\"bar-fg\""));
    }
}
