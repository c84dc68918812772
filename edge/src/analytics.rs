//! One Workers Analytics Engine data point per decision on a protected path, for
//! operators: outcomes, failed-auth reasons, verified-cache hit ratio, store latency.
//! Written only when the `ANALYTICS` binding is configured. Nothing identifying goes
//! in: no token, user, session or address, only classes and timings.

use shared::Error;

/// What the edge decided for one request on a protected path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded: the store said active (`Store`) or, with the store silent, the
    /// origin's fallback check did (`Fallback`).
    Valid(Via),
    /// 400/401 before the session was looked at.
    Invalid(Reason),
    /// 401: the session is revoked or expired (tombstone, absent record, not-before).
    Revoked(Via),
    /// 503: the edge could not decide.
    Unavailable(Missing),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Store,
    Fallback,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// No usable signing keys (origin unreachable).
    Keys,
    /// Neither the store nor the fallback answered.
    Session,
}

/// Why a token was refused, by class (the exact reason stays in the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Ambiguous,
    Malformed,
    Header,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    IssuerOrAudience,
    Claims,
}

impl Reason {
    /// The class of a validation error.
    pub fn of(error: &Error) -> Reason {
        match error {
            Error::TooLong | Error::Malformed | Error::Base64 | Error::Json => Reason::Malformed,
            Error::Algorithm
            | Error::Type
            | Error::Critical
            | Error::KeyReference
            | Error::KeyId => Reason::Header,
            Error::UnknownKey => Reason::UnknownKey,
            Error::Signature => Reason::Signature,
            Error::Expired => Reason::Expired,
            Error::NotYetValid => Reason::NotYetValid,
            Error::Issuer | Error::Audience => Reason::IssuerOrAudience,
            _ => Reason::Claims,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Ambiguous => "ambiguous",
            Reason::Malformed => "malformed",
            Reason::Header => "header",
            Reason::UnknownKey => "unknown_key",
            Reason::Signature => "signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuerOrAudience => "issuer_or_audience",
            Reason::Claims => "claims",
        }
    }
}

/// Whether the token's verification came from the per-isolate cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    Hit,
    Miss,
    /// Not reached (no or ambiguous credentials, or no keys).
    NotUsed,
}

/// A data point, in the Analytics Engine's shape: one index (the sampling key), blobs
/// and doubles, read back as `index1`, `blob1…`, `double1…` in SQL.
#[derive(Clone, Debug, PartialEq)]
pub struct DataPoint {
    pub index: &'static str,
    /// outcome, detail (reason or how decided), verified cache.
    pub blobs: [&'static str; 3],
    /// store read ms (0 when not read), fallback check ms (0 when not asked), the
    /// decision's total ms in the worker.
    pub doubles: [f64; 3],
}

pub fn data_point(
    outcome: Outcome,
    cache: Cache,
    store_ms: f64,
    fallback_ms: f64,
    total_ms: f64,
) -> DataPoint {
    let (name, detail) = match outcome {
        Outcome::Valid(via) => ("valid", via_name(via)),
        Outcome::Invalid(reason) => ("invalid", reason.name()),
        Outcome::Revoked(via) => ("revoked", via_name(via)),
        Outcome::Unavailable(Missing::Keys) => ("unavailable", "keys"),
        Outcome::Unavailable(Missing::Session) => ("unavailable", "session"),
    };
    let cache = match cache {
        Cache::Hit => "hit",
        Cache::Miss => "miss",
        Cache::NotUsed => "none",
    };
    DataPoint {
        index: name,
        blobs: [name, detail, cache],
        doubles: [store_ms, fallback_ms, total_ms],
    }
}

fn via_name(via: Via) -> &'static str {
    match via {
        Via::Store => "store",
        Via::Fallback => "fallback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decision_writes_its_class_cache_and_timings() {
        assert_eq!(
            data_point(Outcome::Valid(Via::Store), Cache::Hit, 1.5, 0.0, 2.0),
            DataPoint {
                index: "valid",
                blobs: ["valid", "store", "hit"],
                doubles: [1.5, 0.0, 2.0],
            }
        );
        assert_eq!(
            data_point(
                Outcome::Invalid(Reason::of(&Error::Expired)),
                Cache::Miss,
                0.0,
                0.0,
                0.3
            )
            .blobs,
            ["invalid", "expired", "miss"]
        );
        assert_eq!(
            data_point(
                Outcome::Revoked(Via::Fallback),
                Cache::Hit,
                1000.0,
                4.0,
                1005.0
            )
            .blobs,
            ["revoked", "fallback", "hit"]
        );
        assert_eq!(
            data_point(
                Outcome::Unavailable(Missing::Keys),
                Cache::NotUsed,
                0.0,
                0.0,
                1.0
            )
            .blobs,
            ["unavailable", "keys", "none"]
        );
        assert_eq!(
            data_point(
                Outcome::Unavailable(Missing::Session),
                Cache::Miss,
                1000.0,
                1000.0,
                2001.0
            )
            .index,
            "unavailable"
        );
    }

    #[test]
    fn validation_errors_fall_into_classes() {
        assert_eq!(Reason::of(&Error::Base64), Reason::Malformed);
        assert_eq!(Reason::of(&Error::Algorithm), Reason::Header);
        assert_eq!(Reason::of(&Error::UnknownKey), Reason::UnknownKey);
        assert_eq!(Reason::of(&Error::Signature), Reason::Signature);
        assert_eq!(Reason::of(&Error::Audience), Reason::IssuerOrAudience);
        assert_eq!(
            Reason::of(&Error::Claim(shared::Claim::Sub)),
            Reason::Claims
        );
        assert_eq!(Reason::of(&Error::NotYetValid), Reason::NotYetValid);
    }
}
