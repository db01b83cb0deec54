//! Docker Engine API versions, and which one to speak with an engine.
//!
//! Every request path starts with `/v<major>.<minor>`. An engine serves a range of versions
//! (Engine 29.0: 1.44 to 1.52; dockerd 20.10: 1.12 to 1.41) and answers anything outside it
//! with `400 client version X is too old/new`. As the Docker CLI does, the version is
//! negotiated ([`negotiate`]): the lower of the engine's highest and [`ApiVersion::HIGHEST`],
//! refused when the engine's minimum is above [`ApiVersion::HIGHEST`] or its highest below
//! [`ApiVersion::LOWEST`]. `DOCKER_API_VERSION` pins one instead ([`pinned_from_env`]).
//!
//! Everything this program reads of list, inspect, events and logs is the same from 1.24 to
//! 1.52 (COMPATIBILITY.md lists the fields), so the version only has to be one the engine
//! accepts.

use std::fmt;

/// `major.minor`, ordered numerically (1.9 < 1.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    major: u16,
    minor: u16,
}

impl ApiVersion {
    /// The highest version this program speaks: Engine 29's.
    pub const HIGHEST: ApiVersion = ApiVersion::new(1, 52);
    /// The lowest: the first with the container list's `State` and the events' `Actor`.
    pub const LOWEST: ApiVersion = ApiVersion::new(1, 24);
    /// Used before any negotiation (a reader on its own, in tests): what this program always
    /// sent before it negotiated, accepted by dockerd 20.10 to 28.
    pub const FALLBACK: ApiVersion = ApiVersion::new(1, 41);

    pub const fn new(major: u16, minor: u16) -> Self {
        ApiVersion { major, minor }
    }

    /// `1.41` or `v1.41`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let bad = || format!("API version {text:?}: expected MAJOR.MINOR, e.g. 1.44");
        let (major, minor) = t.split_once('.').ok_or_else(bad)?;
        Ok(ApiVersion {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }

    /// The request path prefix, `/v1.41`.
    pub fn prefix(self) -> String {
        format!("/v{self}")
    }

    /// For an atomic: never 0.
    pub(crate) fn to_bits(self) -> u32 {
        (u32::from(self.major) << 16) | u32::from(self.minor) | 0x8000_0000
    }

    pub(crate) fn from_bits(bits: u32) -> Option<Self> {
        (bits != 0).then_some(ApiVersion {
            major: ((bits >> 16) & 0x7fff) as u16,
            minor: (bits & 0xffff) as u16,
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What an engine said of its API versions (`GET /version`, or `/_ping`'s header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineVersions {
    /// `ApiVersion`, or the `API-Version` header.
    pub max: ApiVersion,
    /// `MinAPIVersion`; `None` when only `/_ping` answered.
    pub min: Option<ApiVersion>,
}

/// The version to speak with `engine`: the lower of its highest and ours, never below its
/// minimum. `Err` (naming both ranges) when the two ranges do not meet.
pub fn negotiate(engine: EngineVersions) -> Result<ApiVersion, String> {
    if let Some(min) = engine.min.filter(|m| *m > ApiVersion::HIGHEST) {
        return Err(format!(
            "the Docker engine's minimum API version {min} is above the highest this \
             log_capturer supports ({}): upgrade log_capturer, or lower the engine's minimum \
             (dockerd's DOCKER_MIN_API_VERSION)",
            ApiVersion::HIGHEST
        ));
    }
    let chosen = engine.max.min(ApiVersion::HIGHEST);
    if chosen < ApiVersion::LOWEST {
        return Err(format!(
            "the Docker engine's API version {} is below the lowest this log_capturer \
             supports ({}): upgrade the engine",
            engine.max,
            ApiVersion::LOWEST
        ));
    }
    Ok(engine.min.map_or(chosen, |min| chosen.max(min)))
}

/// `DOCKER_API_VERSION`, as the Docker CLI reads it: set and not empty pins the version, and
/// no negotiation happens. `Err` names the variable.
pub fn pinned_from_env() -> Result<Option<ApiVersion>, String> {
    match std::env::var("DOCKER_API_VERSION") {
        Ok(v) if !v.trim().is_empty() => pinned(&v).map(Some),
        _ => Ok(None),
    }
}

fn pinned(text: &str) -> Result<ApiVersion, String> {
    let v = ApiVersion::parse(text).map_err(|e| format!("DOCKER_API_VERSION: {e}"))?;
    if v < ApiVersion::LOWEST || v > ApiVersion::HIGHEST {
        return Err(format!(
            "DOCKER_API_VERSION={text}: this log_capturer speaks API {} to {}",
            ApiVersion::LOWEST,
            ApiVersion::HIGHEST
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ApiVersion {
        ApiVersion::parse(s).unwrap()
    }

    #[test]
    fn parses_orders_and_prints() {
        assert_eq!(v("1.41"), ApiVersion::new(1, 41));
        assert_eq!(v("v1.52"), ApiVersion::new(1, 52));
        assert!(v("1.9") < v("1.12"));
        assert_eq!(v("1.44").prefix(), "/v1.44");
        assert_eq!(ApiVersion::from_bits(v("1.44").to_bits()), Some(v("1.44")));
        assert_eq!(ApiVersion::from_bits(0), None);
        for bad in ["", "1", "1.x", "one.two", "1.2.3"] {
            assert!(
                ApiVersion::parse(bad).unwrap_err().contains("MAJOR.MINOR"),
                "{bad}"
            );
        }
    }

    #[test]
    fn negotiates_like_the_cli() {
        let engine = |max: &str, min: Option<&str>| EngineVersions {
            max: v(max),
            min: min.map(v),
        };
        // Engine 29.0, dockerd 20.10, an engine newer than this program.
        assert_eq!(negotiate(engine("1.52", Some("1.44"))), Ok(v("1.52")));
        assert_eq!(negotiate(engine("1.41", Some("1.12"))), Ok(v("1.41")));
        assert_eq!(negotiate(engine("1.60", Some("1.44"))), Ok(v("1.52")));
        assert_eq!(negotiate(engine("1.41", None)), Ok(v("1.41")));
        let too_new = negotiate(engine("1.60", Some("1.53"))).unwrap_err();
        assert!(
            too_new.contains("minimum API version 1.53 is above the highest")
                && too_new.contains("(1.52)"),
            "{too_new}"
        );
        let too_old = negotiate(engine("1.20", Some("1.12"))).unwrap_err();
        assert!(too_old.contains("1.20 is below the lowest"), "{too_old}");
    }

    #[test]
    fn pins_within_range_only() {
        assert_eq!(pinned("1.44"), Ok(v("1.44")));
        assert!(pinned("1.53")
            .unwrap_err()
            .contains("DOCKER_API_VERSION=1.53"));
        assert!(pinned("abc")
            .unwrap_err()
            .starts_with("DOCKER_API_VERSION:"));
    }
}
