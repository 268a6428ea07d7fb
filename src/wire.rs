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

/// The earliest instant a request may name: 0001-01-01T00:00:00Z (as protobuf's `Timestamp`
/// and RFC 3339 define the range).
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// The latest whole second a request may name: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Why a timestamp in a request is refused. The description does not quote the value: an
/// out-of-range instant has no text form to echo.
pub const TIMESTAMP_RANGE: &str = "must lie between 0001-01-01T00:00:00Z and     9999-12-31T23:59:59.999999999Z, with nanos from 0 to 999,999,999";

/// A request's timestamp as a store instant, or [`TIMESTAMP_RANGE`] when it is outside the
/// range protobuf allows (a year beyond 9999, negative or too large nanos).
pub fn checked_micros(ts: &prost_types::Timestamp) -> Result<i64, &'static str> {
    let in_range = (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds)
        && (0..1_000_000_000).contains(&ts.nanos);
    if in_range {
        Ok(micros(ts))
    } else {
        Err(TIMESTAMP_RANGE)
    }
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

    #[test]
    fn request_timestamps_stay_within_years_1_to_9999() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(checked_micros(&ts(MIN_TIMESTAMP_SECONDS, 0)).is_ok());
        assert!(checked_micros(&ts(MAX_TIMESTAMP_SECONDS, 999_999_999)).is_ok());
        assert!(checked_micros(&ts(1_764_000_000, 5_000)) == Ok(1_764_000_000_000_005));
        for bad in [
            ts(MAX_TIMESTAMP_SECONDS + 1, 0),
            ts(MIN_TIMESTAMP_SECONDS - 1, 0),
            ts(i64::MAX, 0),
            ts(0, -1),
            ts(0, 1_000_000_000),
        ] {
            assert_eq!(checked_micros(&bad), Err(TIMESTAMP_RANGE), "{bad:?}");
        }
    }
}
