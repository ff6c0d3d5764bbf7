//! Time as the domain sees it: milliseconds since the Unix epoch, from a clock that tests can
//! move forward, so TTLs (5-minute signals, 24-hour pairings) are tested without sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A wall-clock instant in milliseconds since the Unix epoch; what is stored next to every
/// record that expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This instant plus `d` (saturating, so a huge TTL cannot wrap into the past).
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// The same instant as a `SystemTime`, for formatting at the edge.
    #[must_use]
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Where "now" comes from. Shared by every actor and store of one server.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The operating system's clock: production.
    System,
    /// A clock that only moves when told to: deterministic TTL tests.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at the real current time: stores whose TTLs run on the real
    /// clock (the TTL indexes of `MongoDB`) then agree with it until a test moves it forward.
    #[must_use]
    pub fn manual() -> Self {
        Self::Manual(Arc::new(AtomicU64::new(Self::System.now().0)))
    }

    /// The current instant.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        match self {
            Self::System => Timestamp(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            ),
            Self::Manual(ms) => Timestamp(ms.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock, which nobody may move.
    pub fn advance(&self, d: Duration) {
        if let Self::Manual(ms) = self {
            ms.fetch_add(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = Clock::manual();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_mins(5));
        assert_eq!(c.now(), t0.plus(Duration::from_mins(5)));
    }

    #[test]
    fn plus_saturates() {
        assert_eq!(
            Timestamp(u64::MAX - 1).plus(Duration::from_secs(10)),
            Timestamp(u64::MAX)
        );
    }
}
