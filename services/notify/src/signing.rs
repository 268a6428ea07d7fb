//! Webhook signatures: how a receiver knows a message came from this platform and is fresh.
//!
//! - JSON webhooks: headers `X-Citycredit-Timestamp: <unix seconds>` and
//!   `X-Citycredit-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`. A
//!   receiver recomputes the HMAC over the raw body, compares in constant time, and rejects a
//!   timestamp more than a few minutes from its clock ([`verify_json`]).
//! - DingTalk / 政务钉钉 custom robots: query parameters `timestamp=<unix milliseconds>` and
//!   `sign=urlencode(base64(HMAC-SHA256(secret, timestamp + "\n" + secret)))`, the robot's
//!   "加签" security setting.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn hmac(secret: &str, message: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// The `X-Citycredit-Signature` value of a JSON webhook body sent at `timestamp` (seconds).
pub fn json_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!("sha256={}", hex::encode(hmac(secret, &message)))
}

/// Why a JSON webhook message is refused by [`verify_json`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now: too old or too new")]
    Stale(i64),
    #[error("the signature does not match")]
    BadSignature,
}

/// What a receiver does: the signature must match the body and timestamp, and the timestamp
/// must be within `tolerance_secs` of `now_secs` (a replayed old message is refused).
pub fn verify_json(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now_secs.saturating_sub(ts);
    if skew.abs() > tolerance_secs {
        return Err(VerifyError::Stale(skew));
    }
    let expected = json_signature(secret, ts, body);
    let same = subtle_eq(expected.as_bytes(), signature.as_bytes());
    if same {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The DingTalk `sign` for `timestamp_ms`, before URL encoding.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    base64::engine::general_purpose::STANDARD.encode(hmac(secret, message.as_bytes()))
}

/// `url` with DingTalk's `timestamp` and `sign` query parameters appended.
pub fn dingtalk_url(url: &url::Url, secret: &str, timestamp_ms: i64) -> url::Url {
    let mut signed = url.clone();
    signed
        .query_pairs_mut()
        .append_pair("timestamp", &timestamp_ms.to_string())
        .append_pair("sign", &dingtalk_sign(secret, timestamp_ms));
    signed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let sig = json_signature("s3cret-s3cret-s3cret", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let ok = verify_json(
            "s3cret-s3cret-s3cret",
            "1700000000",
            &sig,
            b"{\"a\":1}",
            1_700_000_100,
            300,
        );
        assert_eq!(ok, Ok(()));
        let changed = verify_json(
            "s3cret-s3cret-s3cret",
            "1700000000",
            &sig,
            b"{\"a\":2}",
            1_700_000_100,
            300,
        );
        assert_eq!(changed, Err(VerifyError::BadSignature));
        let old = verify_json(
            "s3cret-s3cret-s3cret",
            "1700000000",
            &sig,
            b"{\"a\":1}",
            1_700_001_000,
            300,
        );
        assert_eq!(old, Err(VerifyError::Stale(1000)));
    }

    /// DingTalk's documented example: the sign is base64 of the HMAC, then URL encoded.
    #[test]
    fn the_dingtalk_sign_is_base64_of_the_hmac_and_url_encoded_in_the_query() {
        let secret = "SEC0123456789abcdef";
        let sign = dingtalk_sign(secret, 1_577_262_236_757);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&sign)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raw, hmac(secret, b"1577262236757\nSEC0123456789abcdef"));
        let base = url::Url::parse("https://oapi.dingtalk.com/robot/send?access_token=abc")
            .unwrap_or_else(|e| panic!("{e}"));
        let signed = dingtalk_url(&base, secret, 1_577_262_236_757);
        let pairs: Vec<(String, String)> = signed.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("access_token".into(), "abc".into()));
        assert_eq!(pairs[1], ("timestamp".into(), "1577262236757".into()));
        assert_eq!(pairs[2], ("sign".into(), sign.clone()));
        // '+', '/' and '=' of base64 travel percent-encoded.
        assert!(!signed.query().unwrap_or_default().contains('+'));
    }
}
