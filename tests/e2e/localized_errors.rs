//! Error messages in the caller's language through the real gRPC API (issue 14, Chinese
//! first): every error leaves the gateway with a `google.rpc.LocalizedMessage` in zh-CN (the
//! default) or en by `accept-language`, beside the unchanged English `grpc-message`, ErrorInfo
//! reason and BadRequest; and gaps written in Chinese with the metric's title unless the caller
//! asks for English. Covers a service's error (NOT_FOUND, INVALID_FIELDS) and the gateway's
//! own refusal (CREDENTIAL_REFUSED).

use citycredit::proto::v1 as pb;
use citycredit::proto::v1::indicator_service_client::IndicatorServiceClient;
use citycredit::proto::v1::scoring_service_client::ScoringServiceClient;
use citycredit_tests::ingestion::{IngestionServer, number_input, platform};
use citycredit_tests::{Backend, both_databases};
use tonic_types::StatusExt;

fn with_language<T>(message: T, language: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(l) = language {
        r.metadata_mut().insert(
            "accept-language",
            l.parse().unwrap_or_else(|e| panic!("{e}")),
        );
    }
    r
}

fn localized(status: &tonic::Status) -> (String, String) {
    let details = status.get_error_details();
    let m = details
        .localized_message()
        .unwrap_or_else(|| panic!("no LocalizedMessage in {status:?}"));
    (m.locale.clone(), m.message.clone())
}

async fn errors_come_in_the_callers_language(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut catalog = IndicatorServiceClient::new(s.channel(Some(&platform())).await);
    let ask = |language: Option<&'static str>| {
        with_language(
            pb::GetIndicatorRequest {
                name: "indicators/B99".into(),
            },
            language,
        )
    };
    let mut seen = Vec::new();
    for language in [
        None,
        Some("zh-CN"),
        Some("en-US,en;q=0.9"),
        Some("fr, zh;q=0.5"),
    ] {
        let status = catalog
            .get_indicator(ask(language))
            .await
            .err()
            .unwrap_or_else(|| panic!("B99 must not exist"));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(
            status.message(),
            "indicators/B99 not found",
            "stays English"
        );
        assert_eq!(
            status
                .get_error_details()
                .error_info()
                .map(|i| i.reason.clone()),
            Some("NOT_FOUND".to_owned())
        );
        seen.push(localized(&status));
    }
    let zh = (
        "zh-CN".to_owned(),
        "所请求的对象不存在，请核对名称或编码（对象：indicators/B99）".to_owned(),
    );
    let en = (
        "en".to_owned(),
        "Not found: check the name or code (resource: indicators/B99)".to_owned(),
    );
    assert_eq!(seen, [zh.clone(), zh.clone(), en, zh], "{}", s.name());

    // Bad input: the fields are named in both languages, the BadRequest is unchanged.
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    for (language, expected) in [
        (
            "zh-CN",
            "请求内容有误，请按下列字段逐项更正后重新提交（字段：region_code, period）",
        ),
        (
            "en",
            "The request has errors: correct the fields below and submit again (fields: region_code, period)",
        ),
    ] {
        let status = scoring
            .get_scorecard(with_language(
                pb::GetScorecardRequest {
                    region_code: "999999".into(),
                    period: "26".into(),
                    as_of: None,
                    rule_version: String::new(),
                    approved_only: false,
                },
                Some(language),
            ))
            .await
            .err()
            .unwrap_or_else(|| panic!("a bad request"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(localized(&status).1, expected);
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .map(|b| b.field_violations.len()),
            Some(2)
        );
    }

    // The gateway's own refusal: no key.
    let mut anonymous = IndicatorServiceClient::new(s.channel(None).await);
    let status = anonymous
        .get_catalog(with_language(pb::GetCatalogRequest::default(), Some("en")))
        .await
        .err()
        .unwrap_or_else(|| panic!("no key, no catalog"));
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let (locale, message) = localized(&status);
    assert_eq!(locale, "en");
    assert!(message.starts_with("Authentication failed"), "{message}");
    let status = anonymous
        .get_catalog(with_language(pb::GetCatalogRequest::default(), None))
        .await
        .err()
        .unwrap_or_else(|| panic!("no key, no catalog"));
    assert!(localized(&status).1.starts_with("身份验证失败"));
}

both_databases!(errors_come_in_the_callers_language);

async fn gaps_come_in_the_callers_language(backend: Backend) {
    let s = IngestionServer::start(backend).await;
    let mut client = s.client(Some(&platform())).await;
    let req = pb::SubmitBatchRequest {
        idempotency_key: String::new(),
        validate_only: false,
        values: vec![
            number_input("uscc.stock_codes_total", "330800", "2025", "samr", "43089"),
            number_input(
                "uscc.stock_codes_converted",
                "330800",
                "2025",
                "samr",
                "42000",
            ),
        ],
    };
    client
        .submit_batch(tokio_stream::iter([req]))
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut scoring = ScoringServiceClient::new(s.channel(Some(&platform())).await);
    let mut gap_of = async |language: Option<&'static str>| {
        let card = scoring
            .get_scorecard(with_language(
                pb::GetScorecardRequest {
                    region_code: "330800".into(),
                    period: "2025".into(),
                    as_of: None,
                    rule_version: String::new(),
                    approved_only: false,
                },
                language,
            ))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"))
            .into_inner()
            .scorecard
            .unwrap_or_default();
        card.indicators
            .iter()
            .flat_map(|i| i.gaps.iter())
            .find(|g| g.metric_key == "uscc.stock_codes_converted")
            .map(|g| g.description.clone())
            .unwrap_or_else(|| panic!("no gap on stock_codes_converted"))
    };
    let zh = gap_of(None).await;
    assert!(
        zh.contains("（uscc.stock_codes_converted）：需增加 1089（42000 → 43089）"),
        "{}: {zh}",
        s.name()
    );
    assert!(zh.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)));
    assert_eq!(
        gap_of(Some("zh-CN")).await,
        zh,
        "the cached card, in Chinese again"
    );
    let en = gap_of(Some("en")).await;
    assert_eq!(
        en,
        "Legacy codes converted to unified social credit codes (uscc.stock_codes_converted): +1089 (42000 -> 43089)"
    );
}

both_databases!(gaps_come_in_the_callers_language);
