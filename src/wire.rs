//! Small conversions between wire forms and the platform's own: instants (the store keeps
//! microseconds since the Unix epoch; the API sends `google.protobuf.Timestamp`) and AIP
//! resource names (`indicators/B01` or the bare `B01`).

/// A store instant as a protobuf timestamp.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// A protobuf timestamp as a store instant (sub-microsecond digits dropped).
pub fn micros(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos / 1000))
}

/// The id in a resource name: `bare("indicators/B01", "indicators/")` and `bare("B01", ..)`
/// are both `B01`.
pub fn bare<'a>(name: &'a str, collection: &str) -> &'a str {
    name.strip_prefix(collection).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        for m in [0, 1, 999_999, 1_764_000_000_123_456, -1] {
            assert_eq!(micros(&timestamp(m)), m);
        }
        assert_eq!(bare("departments/samr", "departments/"), "samr");
        assert_eq!(bare("samr", "departments/"), "samr");
    }
}
