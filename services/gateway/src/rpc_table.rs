//! What the gateway knows about each RPC path, read from the descriptor set the build embeds:
//! which service it belongs to and whether it streams (a long-lived server stream, such as a
//! scorecard watch, gets no default deadline).

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message;
use prost_types::FileDescriptorSet;

/// One RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcInfo {
    /// Its path, `/citycredit.v1.ScoringService/GetScorecard`: the `method` label of metrics.
    pub path: Arc<str>,
    /// Fully qualified service name, e.g. `citycredit.v1.ScoringService`.
    pub service: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

impl RpcInfo {
    /// Whether either side streams (such calls count against the streams budget and get the
    /// streaming deadline caps).
    pub fn streams(&self) -> bool {
        self.client_streaming || self.server_streaming
    }
}

/// RPC path (`/package.Service/Method`) -> what it is.
#[derive(Clone, Debug, Default)]
pub struct RpcTable {
    rpcs: HashMap<String, Arc<RpcInfo>>,
}

impl RpcTable {
    /// The table of every citycredit RPC.
    pub fn citycredit() -> RpcTable {
        RpcTable::from_descriptor_set(citycredit::proto::FILE_DESCRIPTOR_SET)
    }

    pub fn from_descriptor_set(bytes: &[u8]) -> RpcTable {
        let mut rpcs = HashMap::new();
        if let Ok(set) = FileDescriptorSet::decode(bytes) {
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let name = format!("{package}.{}", service.name.unwrap_or_default());
                    for m in service.method {
                        let path = format!("/{name}/{}", m.name.unwrap_or_default());
                        rpcs.insert(
                            path.clone(),
                            Arc::new(RpcInfo {
                                path: Arc::from(path),
                                service: name.clone(),
                                client_streaming: m.client_streaming.unwrap_or(false),
                                server_streaming: m.server_streaming.unwrap_or(false),
                            }),
                        );
                    }
                }
            }
        }
        RpcTable { rpcs }
    }

    pub fn get(&self, path: &str) -> Option<&RpcInfo> {
        self.rpcs.get(path).map(|r| &**r)
    }

    /// Like `get`, shared (no copy per call).
    pub fn get_shared(&self, path: &str) -> Option<Arc<RpcInfo>> {
        self.rpcs.get(path).cloned()
    }

    /// Every RPC path, sorted.
    pub fn paths(&self) -> Vec<String> {
        let mut p: Vec<String> = self.rpcs.keys().cloned().collect();
        p.sort();
        p
    }

    /// Service names, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut s: Vec<String> = self.rpcs.values().map(|r| r.service.clone()).collect();
        s.sort();
        s.dedup();
        s
    }
}

/// The service part of a gRPC path: `/citycredit.v1.X/Method` -> `citycredit.v1.X`.
pub fn service_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// Parses a `grpc-timeout` header value (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` header value for a duration (milliseconds, at least 1).
pub fn format_grpc_timeout(d: std::time::Duration) -> String {
    let ms = d.as_millis().clamp(1, 99_999_999);
    format!("{ms}m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn knows_every_citycredit_rpc_and_which_stream() {
        let t = RpcTable::citycredit();
        assert_eq!(t.services().len(), 7);
        let watch = t
            .get("/citycredit.v1.ScoringService/WatchScorecard")
            .cloned()
            .unwrap_or_else(|| panic!("watch"));
        assert!(watch.server_streaming && !watch.client_streaming);
        let batch = t
            .get("/citycredit.v1.MetricSubmissionService/SubmitBatch")
            .cloned()
            .unwrap_or_else(|| panic!("batch"));
        assert!(batch.client_streaming && !batch.server_streaming);
        assert!(t.get("/citycredit.v1.ScoringService/Nope").is_none());
    }

    #[test]
    fn the_descriptor_holds_exactly_the_generated_services() {
        use citycredit::proto::v1::{
            code_audit_service_server, department_registry_service_server,
            indicator_service_server, metric_submission_service_server,
            notification_service_server, review_service_server, scoring_service_server,
        };
        let mut generated = vec![
            notification_service_server::SERVICE_NAME,
            review_service_server::SERVICE_NAME,
            code_audit_service_server::SERVICE_NAME,
            department_registry_service_server::SERVICE_NAME,
            indicator_service_server::SERVICE_NAME,
            metric_submission_service_server::SERVICE_NAME,
            scoring_service_server::SERVICE_NAME,
        ];
        generated.sort_unstable();
        assert_eq!(RpcTable::citycredit().services(), generated);
    }

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("50m"), Some(Duration::from_millis(50)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "5", "5x", "123456789m", "-5m", "5 m"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(format_grpc_timeout(Duration::from_millis(30_000)), "30000m");
        assert_eq!(
            service_of("/citycredit.v1.ScoringService/GetScorecard"),
            Some("citycredit.v1.ScoringService")
        );
        assert_eq!(service_of("/x"), None);
    }
}
