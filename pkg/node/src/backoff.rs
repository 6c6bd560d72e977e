use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Exponential backoff with up to +25 % jitter, so the pods of a DaemonSet that all
/// lost the API server at once do not come back at it in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos().into())
            ^ u64::from(std::process::id()).rotate_left(32)
            | 1;
        Backoff {
            base,
            max,
            next: base,
            seed,
        }
    }

    /// The wait before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift: spread, not secrecy.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let jitter_percent = u32::try_from(self.seed % 26).unwrap_or(0);
        delay + delay * jitter_percent / 100
    }

    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let s = Duration::from_secs;
        let mut b = Backoff::new(s(1), s(8));
        for nominal in [1, 2, 4, 8, 8, 8] {
            let d = b.next_delay();
            assert!(d >= s(nominal), "{d:?} under {nominal}s");
            assert!(d <= s(nominal) * 125 / 100, "{d:?} over {nominal}s + 25%");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }
}
