//! The host's policies beyond the RFC: grace re-arm and exitless cancel.

/// Grace length of [`GracePolicy::DEFAULT`] to start from, in guest TSC
/// cycles (about 30 to 50 us at 2 to 3 GHz).
///
/// The length must be longer than the time a guest takes from its timer
/// interrupt (or its cancellation) to programming its next deadline,
/// typically a few microseconds in a request/response loop, so that the
/// next deadline finds `armed` still set; and shorter than the nearest
/// deadline it then programs (`t >= now + G` does not trap, `t < now + G`
/// does), which for the timeouts worth deferring is 100 us or more. The
/// final default is chosen by measurement (BENCHMARKS.md); change it here.
pub const DEFAULT_GRACE_CYCLES: u64 = 100_000;

/// Lower bound of the adaptive grace length in [`GracePolicy::DEFAULT`].
pub const DEFAULT_GRACE_MIN_CYCLES: u64 = 10_000;

/// Upper bound of the adaptive grace length in [`GracePolicy::DEFAULT`]
/// (a few milliseconds): at most one host wake-up per fired or cancelled
/// deadline, never more often than the guest's own timer.
pub const DEFAULT_GRACE_MAX_CYCLES: u64 = 10_000_000;

/// Whether, and for how long, the host keeps a timer armed and published
/// after it delivered a deadline or the guest cancelled one with a trapped
/// write of 0 (a *grace period*), so that the guest's next deadline needs
/// no exit.
///
/// With the RFC (`Off`), `armed` becomes 0 when a deadline fires or is
/// cancelled, and the guest's next deadline always traps. With a grace
/// length `G`, the host arms its timer for `now + G` and publishes
/// `armed = now + G`: a next deadline `t >= now + G` is only stored in
/// `pending`, and the host picks it up when the grace timer expires; a
/// `t < now + G` traps as any deadline earlier than `armed` does. The cost
/// moves from guest exits to host timer wake-ups, counted in
/// [`Counters::grace_expiries`](crate::Counters::grace_expiries).
///
/// Only a registered guest has grace periods; the length never affects
/// correctness (see `docs/PROTOCOL.md`, section 9), only which writes trap
/// and how often the host wakes up. Lengths are in guest TSC cycles; a
/// length of 0 counts as 1.
///
/// Policies may be added (`#[non_exhaustive]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum GracePolicy {
    /// No grace period: the RFC's behaviour.
    Off,
    /// A grace period of this many cycles.
    Fixed(u64),
    /// A grace period adapted to what the host observes, starting at
    /// `initial` and kept within `min..=max`:
    /// - a grace period that expired with nothing new, followed by a
    ///   trapped deadline `gap` cycles after the period began, sets the
    ///   length to `2 * gap` (the guest's think time was longer than `G`);
    /// - a trapped deadline `t` earlier than the grace deadline (so, the
    ///   grace period made it trap) sets it to half of `t - start` (the
    ///   guest's deadlines are nearer than `G`);
    /// - a grace period that found a new deadline leaves it.
    Adaptive {
        /// Length of the first grace period.
        initial: u64,
        /// Lower bound (at least 1).
        min: u64,
        /// Upper bound (at least `min`).
        max: u64,
    },
}

impl GracePolicy {
    /// The policy of [`Config::new`](crate::Config::new): adaptive, from
    /// [`DEFAULT_GRACE_CYCLES`] within
    /// [`DEFAULT_GRACE_MIN_CYCLES`]`..=`[`DEFAULT_GRACE_MAX_CYCLES`].
    ///
    /// Adaptive because guests differ by orders of magnitude in the time
    /// between a timer interrupt and their next deadline, and in how far
    /// ahead that deadline is: a fixed length either ends before the guest
    /// programs its next deadline (the grace wake-up is wasted and the
    /// deadline traps anyway) or is longer than the deadline (it traps
    /// because it is earlier than `armed`). Bounded, the adaptive policy
    /// costs at most one host wake-up per fired or cancelled deadline, as
    /// a fixed one does.
    pub const DEFAULT: GracePolicy = GracePolicy::Adaptive {
        initial: DEFAULT_GRACE_CYCLES,
        min: DEFAULT_GRACE_MIN_CYCLES,
        max: DEFAULT_GRACE_MAX_CYCLES,
    };

    /// Whether grace periods are used at all.
    pub const fn is_on(self) -> bool {
        !matches!(self, GracePolicy::Off)
    }

    /// The bounds `(min, max)` of the grace length, normalised: lengths
    /// are at least 1, and `max >= min`. `None` when off.
    pub(crate) const fn bounds(self) -> Option<(u64, u64)> {
        match self {
            GracePolicy::Off => None,
            GracePolicy::Fixed(c) => {
                let c = if c == 0 { 1 } else { c };
                Some((c, c))
            }
            GracePolicy::Adaptive { min, max, .. } => {
                let lo = if min == 0 { 1 } else { min };
                let hi = if max < lo { lo } else { max };
                Some((lo, hi))
            }
        }
    }

    /// The grace length to use given the adapted length `current` (0: not
    /// adapted yet), or `None` when off.
    pub(crate) fn length(self, current: u64) -> Option<u64> {
        let (lo, hi) = self.bounds()?;
        let c = match self {
            GracePolicy::Adaptive { initial, .. } if current == 0 => initial,
            _ => current,
        };
        Some(c.clamp(lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_normalised() {
        assert_eq!(GracePolicy::Off.length(5), None);
        assert_eq!(GracePolicy::Fixed(0).length(0), Some(1));
        assert_eq!(GracePolicy::Fixed(7).length(1000), Some(7));
        let a = GracePolicy::Adaptive {
            initial: 50,
            min: 10,
            max: 100,
        };
        assert_eq!(a.length(0), Some(50));
        assert_eq!(a.length(3), Some(10));
        assert_eq!(a.length(300), Some(100));
        let upside_down = GracePolicy::Adaptive {
            initial: 0,
            min: 0,
            max: 0,
        };
        assert_eq!(upside_down.length(0), Some(1));
        assert_eq!(upside_down.bounds(), Some((1, 1)));
        assert!(GracePolicy::DEFAULT.is_on() && !GracePolicy::Off.is_on());
    }
}
