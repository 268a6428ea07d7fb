//! The names of the headers the gateway reads or writes on every call, made once: a header
//! named by a `&str` is parsed and checked again at each use. (The profile that prompted this
//! put 2 % of the gateway's samples on `HdrName::from_static` under `EdgeSigner::sign`; with
//! these constants most of that cost stayed, in `HeaderMap::try_insert2`: it was mostly the
//! insertion itself, the symbol misattributed by the inlining.)

use http::HeaderName;

/// The signed internal identity (`citycredit::auth::identity::HEADER`).
pub const IDENTITY: HeaderName = HeaderName::from_static(citycredit::auth::identity::HEADER);
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

#[cfg(test)]
mod tests {
    #[test]
    fn the_names_are_the_protocol_s() {
        assert_eq!(super::IDENTITY.as_str(), "x-citycredit-identity");
        assert_eq!(super::GRPC_TIMEOUT.as_str(), "grpc-timeout");
        assert_eq!(super::GRPC_STATUS.as_str(), "grpc-status");
        assert_eq!(super::TRACEPARENT.as_str(), "traceparent");
    }
}
