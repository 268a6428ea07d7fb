//! Error messages in the caller's language. Every error status leaves the gateway with a
//! `google.rpc.LocalizedMessage` in zh-CN (this city's default) or en, chosen by the caller's
//! `accept-language` and the gateway's `default_locale`. The `ErrorInfo` reason stays the stable
//! English identifier clients match on, and `grpc-message` stays English for logs and tools;
//! the localized message says in the caller's language what happened and what to do, with the
//! specifics the status carries (the fields of a `BadRequest`, the resource, the limit).
//!
//! One place does it for every answer, the services' and the gateway's own: the gateway's edge
//! calls [`localize`] on the headers of a trailers-only answer and on the trailers of a
//! streamed one.

use std::fmt::Write as _;

use http::HeaderMap;
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::status::Reason;

/// A language the platform writes in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Locale {
    /// Simplified Chinese, the default for this city.
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

/// At most this many characters of a localized message (it travels in the trailers).
pub const MAX_LOCALIZED_CHARS: usize = 400;
/// At most this many `accept-language` entries are looked at.
const MAX_LANGUAGE_RANGES: usize = 16;

impl Locale {
    /// The BCP 47 tag, as `LocalizedMessage.locale` carries it.
    pub fn tag(self) -> &'static str {
        match self {
            Locale::ZhCn => "zh-CN",
            Locale::En => "en",
        }
    }

    /// A language range of `accept-language` (`zh`, `zh-CN`, `zh-Hans-CN`, `en-GB`, ...), or
    /// None for one the platform does not write.
    pub fn parse(range: &str) -> Option<Locale> {
        let primary = range.trim().split(['-', '_']).next().unwrap_or("");
        if primary.eq_ignore_ascii_case("zh") {
            Some(Locale::ZhCn)
        } else if primary.eq_ignore_ascii_case("en") {
            Some(Locale::En)
        } else {
            None
        }
    }

    /// The caller's choice by `accept-language` (RFC 9110: the highest quality wins, the first
    /// of equals; `q=0` means "not this"), else `default`.
    pub fn negotiate(accept_language: Option<&str>, default: Locale) -> Locale {
        let Some(header) = accept_language else {
            return default;
        };
        let mut best: Option<(u16, Locale)> = None;
        for entry in header.split(',').take(MAX_LANGUAGE_RANGES) {
            let mut parts = entry.split(';');
            let range = parts.next().unwrap_or("").trim();
            let quality = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1000, quality_milli);
            if quality == 0 {
                continue;
            }
            let locale = if range == "*" {
                Some(default)
            } else {
                Locale::parse(range)
            };
            if let Some(l) = locale
                && best.is_none_or(|(q, _)| quality > q)
            {
                best = Some((quality, l));
            }
        }
        best.map_or(default, |(_, l)| l)
    }
}

/// A quality value (`0.8`) in thousandths; anything unreadable counts as 0 (ignored).
fn quality_milli(q: &str) -> u16 {
    let q = q.trim();
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let whole: u16 = match int {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let digits = format!("{frac:0<3}");
    let milli = digits.parse::<u16>().unwrap_or(0);
    if whole == 1000 && milli > 0 {
        return 0; // "1.5": not a quality value
    }
    whole + milli
}

/// What a reason means and what to do, in `locale`.
pub fn reason_text(reason: Reason, locale: Locale) -> &'static str {
    use Reason as R;
    match locale {
        Locale::ZhCn => match reason {
            R::InvalidFields => "请求内容有误，请按下列字段逐项更正后重新提交",
            R::TooManyRegions => "一次请求的地区过多，请分批查询",
            R::NotFound => "所请求的对象不存在，请核对名称或编码",
            R::UnknownRuleVersion => "未加载该规则版本，请从已加载的版本中选择",
            R::ResourceExists => "要创建的对象已存在，无需重复创建",
            R::IdempotencyKeyReused => "该幂等键已用于另一份不同的请求，请为新请求使用新的幂等键",
            R::AlreadyRetracted => "该报送记录已被撤回，无需再次撤回",
            R::NotRetractable => "该记录本身是一次撤回，不能再撤回",
            R::DomainSetClosed => "该领域集的领域由指标目录确定，不能登记新领域",
            R::PeriodApproved => {
                "该单位该地区该期间的数据已审核通过并锁定，不能修改；如需更正，请联系市信用办撤销审核，或请管理员授予锁定例外"
            }
            R::AwaitingApproval => {
                "该单位该地区该期间的数据已提交审核，等待市信用办审核，暂不能修改；如需更正，请联系市信用办退回"
            }
            R::PeriodClosed => {
                "该期间的报送截止时间（含宽限期）已过，报送已关闭；如需补报或更正，请管理员授予锁定例外"
            }
            R::CountiesNotApproved => "下级地区已提交的数据尚未全部审核通过，请先审核下列地区",
            R::ReviewState => "该数据当前的审核状态不允许此操作，请刷新后按当前状态处理",
            R::StateConflict => "当前状态不允许此操作",
            R::CredentialRefused => {
                "身份验证失败：请在请求头 authorization 中提供有效的 API 密钥（Bearer）"
            }
            R::CredentialRevoked => "所用 API 密钥已被吊销或已过期，请向管理员申请新密钥",
            R::ActionNotAllowed => {
                "无权执行此操作：本单位不负责该指标或地区，如有疑问请联系市信用办"
            }
            R::BatchTooLarge => "批量报送超出上限，请拆分为较小的批次",
            R::AuditTooLarge => "代码核查的数量超出上限，请拆分后再核查",
            R::AuditCapacity => "同时进行的代码核查过多，请稍后重试",
            R::RequestBytes => "待处理的请求数据过多，请稍后重试",
            R::WatchLagged => "订阅跟不上变更，请重新读取后再订阅",
            R::Overloaded => "平台繁忙，请稍后重试",
            R::RateLimited => "调用过于频繁，已超出本账号的速率限制，请稍后重试",
            R::AuthFailuresLimited => "来自该地址的身份验证失败次数过多，请稍后重试并检查密钥",
            R::PrincipalBudget => "本账号同时进行的调用过多，请等待已有调用结束后重试",
            R::PrincipalShare => "本账号已占用平台一半的处理能力，请稍后重试",
            R::MessageTooLarge => "请求消息过大，请拆分后重新提交",
            R::RequestStreamBroken => "请求数据流中途中断，未保存任何数据，请重新提交",
            R::TimedOut => "请求超时，请稍后重试",
            R::RequestReadTimeout => "请求数据发送过慢或中途停止，已超时，请重新提交",
            R::ConcurrentChange => "数据已被同时修改，请重新执行整个操作",
            R::UnknownMethod => "平台不提供此接口，请核对服务和方法名称",
            R::ServiceUnavailable => "服务暂时不可用，请稍后重试",
            R::StorageUnavailable => "数据库暂时不可用或繁忙，请稍后重试",
            R::WriterStopped => "报送写入服务正在停止，请稍后重试",
            R::InternalFault => "平台内部错误，已记录，请联系运维人员",
            R::UnknownFailure => "发生未知错误，请稍后重试",
            R::DataCorrupted => "存储的数据已丢失或损坏，请联系运维人员",
        },
        Locale::En => match reason {
            R::InvalidFields => "The request has errors: correct the fields below and submit again",
            R::TooManyRegions => "Too many regions in one request: ask in smaller groups",
            R::NotFound => "Not found: check the name or code",
            R::UnknownRuleVersion => {
                "That rule version is not loaded: choose one of the loaded versions"
            }
            R::ResourceExists => "It exists already: no need to create it again",
            R::IdempotencyKeyReused => {
                "This idempotency key was used for a different request: use a new key for a new request"
            }
            R::AlreadyRetracted => "This submission was retracted already",
            R::NotRetractable => "This submission is itself a retraction and cannot be retracted",
            R::DomainSetClosed => "The catalog fixes the domains of this set: none can be added",
            R::PeriodApproved => {
                "These figures are approved and locked: ask the credit office to unapprove them, or an administrator for a lock exception, to correct them"
            }
            R::AwaitingApproval => {
                "These figures are submitted and await the credit office's approval: ask the credit office to return them to correct them"
            }
            R::PeriodClosed => {
                "The deadline and its grace days have passed and writes are closed: ask an administrator for a lock exception to report late"
            }
            R::CountiesNotApproved => {
                "Figures submitted for the regions below are not all approved: approve them first"
            }
            R::ReviewState => {
                "The figures' review state does not allow this: read it again and act on the current state"
            }
            R::StateConflict => "The current state does not allow this",
            R::CredentialRefused => {
                "Authentication failed: send a valid API key as `authorization: Bearer <key>`"
            }
            R::CredentialRevoked => {
                "The API key was revoked or has expired: ask an administrator for a new one"
            }
            R::ActionNotAllowed => {
                "Not allowed: your department is not responsible for this metric or region; ask the credit office if in doubt"
            }
            R::BatchTooLarge => "The batch is larger than allowed: split it into smaller batches",
            R::AuditTooLarge => "The code audit holds more codes than allowed: split it",
            R::AuditCapacity => "Too many code audits run at once: retry later",
            R::RequestBytes => "Too much request data is waiting: retry later",
            R::WatchLagged => "The watch fell behind: read again, then watch again",
            R::Overloaded => "The platform is at capacity: retry later",
            R::RateLimited => "Too many calls: your rate limit refused this one; retry later",
            R::AuthFailuresLimited => {
                "Too many failed authentications from your address: retry later and check the key"
            }
            R::PrincipalBudget => "You have as many calls open as you may: retry when one ends",
            R::PrincipalShare => "You hold half of what the platform serves at once: retry later",
            R::MessageTooLarge => "The request message is too large: split it",
            R::RequestStreamBroken => {
                "The request stream broke off: nothing was stored; submit again"
            }
            R::TimedOut => "The call's deadline passed: retry later",
            R::RequestReadTimeout => "The request was sent too slowly or stopped: submit again",
            R::ConcurrentChange => "A concurrent change won: retry the whole operation",
            R::UnknownMethod => "The platform does not serve this method: check its name",
            R::ServiceUnavailable => "A service is unavailable: retry later",
            R::StorageUnavailable => "The database is unavailable or busy: retry later",
            R::WriterStopped => "The submission writer is stopping: retry later",
            R::InternalFault => "An internal error, logged: tell the operators",
            R::UnknownFailure => "An unknown failure: retry later",
            R::DataCorrupted => "Stored data is lost or corrupt: tell the operators",
        },
    }
}

/// The ErrorInfo metadata shown after the sentence, with their names in each language.
const SHOWN_METADATA: [(&str, &str, &str); 12] = [
    ("resource", "对象", "resource"),
    ("limit", "上限", "limit"),
    ("what", "项目", "what"),
    ("principal", "账号", "principal"),
    ("action", "操作", "action"),
    ("metric", "指标", "metric"),
    ("region", "地区", "region"),
    ("department", "单位", "department"),
    ("period", "期间", "period"),
    ("locked_period", "锁定期间", "locked period"),
    ("state", "状态", "state"),
    ("regions", "待审地区", "regions"),
];

/// The localized message for `status`: the reason's sentence, then its specifics.
pub fn message_for(status: &Status, locale: Locale) -> String {
    let details = status.get_error_details();
    let reason = details
        .error_info()
        .and_then(|i| Reason::ALL.into_iter().find(|r| r.as_str() == i.reason))
        .unwrap_or_else(|| Reason::of_code(status.code()).unwrap_or(Reason::UnknownFailure));
    let mut text = reason_text(reason, locale).to_owned();
    let (open, sep, colon, close) = match locale {
        Locale::ZhCn => ("（", "；", "：", "）"),
        Locale::En => (" (", "; ", ": ", ")"),
    };
    let mut specifics: Vec<String> = Vec::new();
    if let Some(bad) = details.bad_request() {
        let fields: Vec<&str> = bad
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        if !fields.is_empty() {
            let label = match locale {
                Locale::ZhCn => "字段",
                Locale::En => "fields",
            };
            specifics.push(format!("{label}{colon}{}", fields.join(", ")));
        }
    }
    if let Some(info) = details.error_info() {
        for (key, zh, en) in SHOWN_METADATA {
            if let Some(v) = info.metadata.get(key) {
                let label = match locale {
                    Locale::ZhCn => zh,
                    Locale::En => en,
                };
                specifics.push(format!("{label}{colon}{v}"));
            }
        }
    }
    if let Some(retry) = details.retry_info().and_then(|r| r.retry_delay) {
        let ms = retry.as_millis();
        specifics.push(match locale {
            Locale::ZhCn => format!("建议 {ms} 毫秒后重试"),
            Locale::En => format!("retry after {ms} ms"),
        });
    }
    if !specifics.is_empty() {
        let _ = write!(text, "{open}{}{close}", specifics.join(sep));
    }
    if text.chars().count() > MAX_LOCALIZED_CHARS {
        text = text.chars().take(MAX_LOCALIZED_CHARS - 1).collect();
        text.push('…');
    }
    text
}

/// Adds a `LocalizedMessage` in `locale` to the error status in `headers` (the headers of a
/// trailers-only answer, or trailers), keeping every other detail and `grpc-message`. Nothing
/// changes for OK, for a status without details, or for one that has a localized message.
pub fn localize(headers: &mut HeaderMap, locale: Locale) {
    if headers
        .get("grpc-status")
        .is_none_or(|v| v.as_bytes() == b"0")
    {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let mut details: ErrorDetails = status.get_error_details();
    if details.error_info().is_none() || details.localized_message().is_some() {
        return;
    }
    details.set_localized_message(locale.tag(), message_for(&status, locale));
    let localized = Status::with_error_details(status.code(), status.message(), details);
    let mut encoded = HeaderMap::new();
    if localized.add_header(&mut encoded).is_ok()
        && let Some(bin) = encoded.remove("grpc-status-details-bin")
    {
        headers.insert("grpc-status-details-bin", bin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Violation, invalid_argument, not_found, retry_after_reason};
    use std::time::Duration;
    use tonic::Code;

    #[test]
    fn accept_language_picks_the_best_supported_language() {
        let zh = Locale::ZhCn;
        assert_eq!(Locale::negotiate(None, zh), zh);
        assert_eq!(Locale::negotiate(Some("en"), zh), Locale::En);
        assert_eq!(Locale::negotiate(Some("en-GB,en;q=0.9"), zh), Locale::En);
        assert_eq!(Locale::negotiate(Some("zh-CN"), Locale::En), zh);
        assert_eq!(Locale::negotiate(Some("zh-Hans-CN"), Locale::En), zh);
        assert_eq!(
            Locale::negotiate(Some("fr, en;q=0.5, zh;q=0.8"), Locale::En),
            zh
        );
        assert_eq!(Locale::negotiate(Some("zh;q=0, en;q=0.1"), zh), Locale::En);
        assert_eq!(Locale::negotiate(Some("fr, de"), Locale::En), Locale::En);
        assert_eq!(Locale::negotiate(Some("*"), zh), zh);
        assert_eq!(
            Locale::negotiate(Some("en;q=1.5"), zh),
            zh,
            "a bad quality is ignored"
        );
        assert_eq!(Locale::negotiate(Some(""), zh), zh);
    }

    #[test]
    fn every_reason_has_a_text_in_both_languages() {
        for r in Reason::ALL {
            let zh = reason_text(r, Locale::ZhCn);
            let en = reason_text(r, Locale::En);
            assert!(
                zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)),
                "{r:?}"
            );
            assert!(en.is_ascii() && !en.is_empty(), "{r:?}");
            assert_ne!(zh, en);
        }
    }

    fn localized(status: &Status, locale: Locale) -> (String, String, Status) {
        let mut headers = HeaderMap::new();
        status
            .add_header(&mut headers)
            .unwrap_or_else(|e| panic!("{e}"));
        localize(&mut headers, locale);
        let back = Status::from_header_map(&headers).unwrap_or_else(|| panic!("status"));
        let details = back.get_error_details();
        let m = details
            .localized_message()
            .unwrap_or_else(|| panic!("no localized message"));
        (m.locale.clone(), m.message.clone(), back)
    }

    #[test]
    fn a_status_gets_a_localized_message_and_keeps_everything_else() {
        let status = invalid_argument(&[
            Violation::new("values[0].region_code", "unknown region `999999`"),
            Violation::new("values[0].period", "`26` is not a period"),
        ]);
        let (locale, zh, back) = localized(&status, Locale::ZhCn);
        assert_eq!(locale, "zh-CN");
        assert_eq!(
            zh,
            "请求内容有误，请按下列字段逐项更正后重新提交（字段：values[0].region_code, values[0].period）"
        );
        assert_eq!(
            back.message(),
            status.message(),
            "grpc-message stays English"
        );
        let details = back.get_error_details();
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("INVALID_FIELDS")
        );
        assert_eq!(
            details.bad_request().map(|b| b.field_violations.len()),
            Some(2)
        );
        let (locale, en, _) = localized(&status, Locale::En);
        assert_eq!(locale, "en");
        assert!(en.starts_with("The request has errors"), "{en}");

        let (_, zh, _) = localized(&not_found("indicators/B99"), Locale::ZhCn);
        assert_eq!(
            zh,
            "所请求的对象不存在，请核对名称或编码（对象：indicators/B99）"
        );
        let busy = retry_after_reason(
            Code::ResourceExhausted,
            Reason::RateLimited,
            "rate limited",
            Duration::from_millis(250),
            &[],
        );
        let (_, en, back) = localized(&busy, Locale::En);
        assert_eq!(
            en,
            "Too many calls: your rate limit refused this one; retry later (retry after 250 ms)"
        );
        assert!(back.get_error_details().retry_info().is_some());
    }

    #[test]
    fn ok_and_already_localized_answers_are_left_alone() {
        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", http::HeaderValue::from_static("0"));
        let before = ok.clone();
        localize(&mut ok, Locale::ZhCn);
        assert_eq!(ok, before);
        let status = not_found("regions/1");
        let mut headers = HeaderMap::new();
        status
            .add_header(&mut headers)
            .unwrap_or_else(|e| panic!("{e}"));
        localize(&mut headers, Locale::En);
        let once = headers.clone();
        localize(&mut headers, Locale::ZhCn);
        assert_eq!(headers, once, "the first language stays");
    }
}
