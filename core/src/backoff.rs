//! The one retry pause of the hub: reconnecting to the broker, reopening the
//! database, retrying a commit. Doubles from a minimum up to a maximum and
//! starts over after a success.

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;

/// Exponential pauses between `min` and `max` (no jitter: one hub per broker session).
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    pauses: ExponentialBackoff,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(min_ms))
            .with_max_delay(Duration::from_millis(max_ms.max(min_ms)))
            .with_factor(2.0)
            .without_max_times();
        Self {
            pauses: builder.build(),
            builder,
        }
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        self.pauses
            .next()
            .expect("an unbounded backoff always has a next pause")
    }

    /// After a success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.pauses = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(100, 1000);
        let ms: Vec<u128> = (0..6).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_pause().as_millis(), 100);
    }
}
