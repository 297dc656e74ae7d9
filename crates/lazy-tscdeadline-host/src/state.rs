//! Snapshot state, its versioned envelope, and counters.

use crate::error::StateError;
use crate::{GracePolicy, LvtTimer};

/// Format version of the [`TimerSnapshot`] this crate writes. It reads every
/// earlier version too.
///
/// - 1: a flat object with a `version` field (crate 0.1.0 before the
///   envelope).
/// - 2: `{ "version": 2, "state": TimerState }`; adds the counters
///   `masked_expiries` and `backend_errors` (0 when read from version 1).
/// - 3: the same envelope; the state adds the policies (`grace_policy`,
///   `exitless_cancel`), the grace period in progress (`grace`) and the
///   counters `grace_arms`, `grace_expiries` and `grace_hits`. Read from
///   versions 1 and 2 they take the RFC's values: no grace period, no
///   exitless cancel (those hosts wrote no `flags`), counters 0.
pub const STATE_VERSION: u32 = 3;

/// Per-vCPU counters. They add up (`+=`, `Sum`) for per-VM totals.
///
/// New counters may be added (hence `#[non_exhaustive]`); in a snapshot, a
/// counter the snapshot does not have reads as 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Counters {
    /// `IA32_TSC_DEADLINE` writes that reached the host (VM exits).
    pub trapped_writes: u64,
    /// Of those, writes ignored because the LVT timer was not in
    /// TSC-deadline mode (as the architecture ignores them). A VMM that
    /// sees this grow for a guest that uses TSC-deadline mode is not
    /// keeping the LVT current with
    /// [`set_lvt_timer`](crate::TscDeadlineTimer::set_lvt_timer).
    pub ignored_writes: u64,
    /// Kicks that re-armed for a later `pending` without an interrupt.
    pub rearms: u64,
    /// Timer interrupts injected.
    pub injections: u64,
    /// Deadlines that expired while the LVT timer was masked: nothing was
    /// delivered (the deadline is disarmed, as on hardware).
    pub masked_expiries: u64,
    /// Deadlines dropped by CLEAR (a change of the LVT timer mode).
    /// Registration changes keep the deadline and do not count here.
    pub clears: u64,
    /// Kicks that found the deadline cancelled by the guest.
    pub kick_cancels: u64,
    /// Kicks that hit the round limit and fell back to publishing 0.
    pub kick_fallbacks: u64,
    /// Host timer expiries with nothing armed.
    pub stale_expiries: u64,
    /// Host timer expiries before the guest TSC reached the deadline.
    pub early_expiries: u64,
    /// Successful enabling registrations.
    pub registrations: u64,
    /// Registration MSR writes answered with #GP.
    pub rejected_registrations: u64,
    /// Guest memory accesses to a registered struct that failed.
    pub memory_errors: u64,
    /// INIT/RESET.
    pub resets: u64,
    /// Calls of a collaborator ([`HostTimer`](crate::HostTimer),
    /// [`InterruptSink`](crate::InterruptSink)) that failed.
    pub backend_errors: u64,
    /// Grace periods begun: a timer armed and published after a delivered
    /// deadline or a trapped cancellation (see
    /// [`GracePolicy`](crate::GracePolicy)).
    pub grace_arms: u64,
    /// Host timer expiries of a grace period (also counted there when
    /// early): the host wake-ups the grace policy costs.
    pub grace_expiries: u64,
    /// Grace expiries that found a new deadline in `pending` (re-armed for
    /// it, or delivered it): each one is a trap the guest did not take.
    pub grace_hits: u64,
    /// Deadlines taken over from elsewhere (KVM's in-kernel LAPIC) with
    /// [`adopt_deadline`](crate::TscDeadlineTimer::adopt_deadline).
    pub adopted: u64,
}

impl core::ops::AddAssign for Counters {
    /// Adds every counter of `other` (e.g. to total the vCPUs of a VM).
    fn add_assign(&mut self, other: Counters) {
        let Counters {
            trapped_writes,
            ignored_writes,
            rearms,
            injections,
            masked_expiries,
            clears,
            kick_cancels,
            kick_fallbacks,
            stale_expiries,
            early_expiries,
            registrations,
            rejected_registrations,
            memory_errors,
            resets,
            backend_errors,
            grace_arms,
            grace_expiries,
            grace_hits,
            adopted,
        } = other;
        self.trapped_writes += trapped_writes;
        self.ignored_writes += ignored_writes;
        self.rearms += rearms;
        self.injections += injections;
        self.masked_expiries += masked_expiries;
        self.clears += clears;
        self.kick_cancels += kick_cancels;
        self.kick_fallbacks += kick_fallbacks;
        self.stale_expiries += stale_expiries;
        self.early_expiries += early_expiries;
        self.registrations += registrations;
        self.rejected_registrations += rejected_registrations;
        self.memory_errors += memory_errors;
        self.resets += resets;
        self.backend_errors += backend_errors;
        self.grace_arms += grace_arms;
        self.grace_expiries += grace_expiries;
        self.grace_hits += grace_hits;
        self.adopted += adopted;
    }
}

impl core::iter::Sum for Counters {
    fn sum<I: Iterator<Item = Counters>>(iter: I) -> Counters {
        iter.fold(Counters::default(), |mut acc, c| {
            acc += c;
            acc
        })
    }
}

/// The grace period in progress and the adaptive policy's observations
/// (part of [`TimerState`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct GraceState {
    /// Guest TSC the host timer is armed for as a grace period, published
    /// as `armed` (0: none). Non-zero only while no deadline is armed.
    pub deadline: u64,
    /// The value of `pending` that is nothing new to this grace period: the
    /// deadline just delivered, or 0 after a cancellation.
    pub stale: u64,
    /// Guest TSC at which the last grace period began.
    pub started: u64,
    /// Whether the last grace period expired with nothing new and no
    /// deadline has trapped since (the adaptive policy measures the guest's
    /// gap at that trap).
    pub missed: bool,
    /// The adaptive grace length (0: not adapted yet).
    pub cycles: u64,
}

/// The state of one vCPU's timer, as plain data (see
/// [`TscDeadlineTimer::state`](crate::TscDeadlineTimer::state)).
///
/// To store it, wrap it in a [`TimerSnapshot`], which carries the format
/// version. Fields may be added (`#[non_exhaustive]`): start from
/// [`TimerState::default`] (the state of a new timer) to build one by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct TimerState {
    /// LVT timer register.
    pub lvt_timer: u32,
    /// Deadline the host timer is armed for (0: none).
    pub deadline: u64,
    /// Whether `deadline` is published as `armed` in the registered struct.
    pub published: bool,
    /// Raw registration MSR value.
    pub registration: u64,
    /// Whether the feature is advertised to the guest.
    pub lazy_advertised: bool,
    /// Counters.
    #[cfg_attr(feature = "serde", serde(default))]
    pub counters: Counters,
    /// The grace policy ([`GracePolicy::Off`] when read from a snapshot
    /// older than version 3).
    #[cfg_attr(feature = "serde", serde(default = "grace_off"))]
    pub grace_policy: GracePolicy,
    /// Whether the host offers exitless cancel (it wrote
    /// [`LAZY_FLAG_EXITLESS_CANCEL`](lazy_tscdeadline_abi::LAZY_FLAG_EXITLESS_CANCEL)
    /// into `flags` at registration).
    #[cfg_attr(feature = "serde", serde(default))]
    pub exitless_cancel: bool,
    /// The grace period in progress.
    #[cfg_attr(feature = "serde", serde(default))]
    pub grace: GraceState,
}

#[cfg(feature = "serde")]
fn grace_off() -> GracePolicy {
    GracePolicy::Off
}

impl Default for TimerState {
    /// The state of a timer after INIT/RESET: LVT masked in one-shot mode,
    /// nothing armed or registered, the feature not advertised, the RFC's
    /// policies (no grace period, no exitless cancel).
    fn default() -> Self {
        TimerState {
            lvt_timer: LvtTimer::RESET.raw(),
            deadline: 0,
            published: false,
            registration: 0,
            lazy_advertised: false,
            counters: Counters::default(),
            grace_policy: GracePolicy::Off,
            exitless_cancel: false,
            grace: GraceState::default(),
        }
    }
}

/// A [`TimerState`] in its versioned envelope: what a VMM stores in a
/// snapshot.
///
/// With the `serde` feature (off by default) it serialises as
/// `{ "version": STATE_VERSION, "state": { .. } }`. Deserialising reads the
/// version before the state and accepts every version this crate has
/// written ([`STATE_VERSION`] lists them); a version from a newer crate
/// deserialises too, and [`into_state`](Self::into_state) then reports
/// [`StateError::UnsupportedVersion`]. Decoding needs a self-describing
/// format (JSON, CBOR, ...), as the version decides how the rest is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSnapshot {
    version: u32,
    state: Option<TimerState>,
}

impl TimerSnapshot {
    /// The format version the snapshot was written with.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The state, converted to the current format, or
    /// [`StateError::UnsupportedVersion`] for a snapshot from a newer crate.
    pub fn into_state(self) -> Result<TimerState, StateError> {
        self.state
            .ok_or(StateError::UnsupportedVersion(self.version))
    }
}

impl From<TimerState> for TimerSnapshot {
    fn from(state: TimerState) -> Self {
        TimerSnapshot {
            version: STATE_VERSION,
            state: Some(state),
        }
    }
}

#[cfg(feature = "serde")]
mod envelope {
    use serde::de::{Deserializer, Error as _};
    use serde::ser::{SerializeStruct, Serializer};
    use serde::{Deserialize, Serialize};

    use super::{Counters, TimerSnapshot, TimerState, STATE_VERSION};

    /// A version number that deserialises only from `N`.
    struct Tag<const N: u32>;

    impl<'de, const N: u32> Deserialize<'de> for Tag<N> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match u32::deserialize(d)? {
                v if v == N => Ok(Tag),
                v => Err(D::Error::custom(format_args!("version {v}, not {N}"))),
            }
        }
    }

    /// Version 1: the state itself carried the version.
    #[derive(Deserialize)]
    struct V1 {
        #[serde(rename = "version")]
        _version: Tag<1>,
        lvt_timer: u32,
        deadline: u64,
        published: bool,
        registration: u64,
        lazy_advertised: bool,
        counters: Counters,
    }

    /// Every layout this crate knows, tried in order; `Unknown` matches any
    /// object with a version number.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum AnyVersion {
        V3 {
            #[serde(rename = "version")]
            _version: Tag<3>,
            state: TimerState,
        },
        V2 {
            #[serde(rename = "version")]
            _version: Tag<2>,
            state: TimerState,
        },
        V1(V1),
        Unknown {
            version: u32,
        },
    }

    impl Serialize for TimerSnapshot {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Some(state) = &self.state else {
                return Err(serde::ser::Error::custom(format_args!(
                    "cannot re-serialise a version-{} snapshot this crate could not read",
                    self.version
                )));
            };
            let mut st = s.serialize_struct("TimerSnapshot", 2)?;
            st.serialize_field("version", &STATE_VERSION)?;
            st.serialize_field("state", state)?;
            st.end()
        }
    }

    impl<'de> Deserialize<'de> for TimerSnapshot {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let (version, state) = match AnyVersion::deserialize(d)? {
                AnyVersion::V3 { state, .. } => (3, state),
                // Version 2 has none of the fields version 3 added: they
                // take their defaults (the RFC's policies, no grace period).
                AnyVersion::V2 { state, .. } => (2, state),
                AnyVersion::V1(v1) => (
                    1,
                    TimerState {
                        lvt_timer: v1.lvt_timer,
                        deadline: v1.deadline,
                        published: v1.published,
                        registration: v1.registration,
                        lazy_advertised: v1.lazy_advertised,
                        counters: v1.counters,
                        ..TimerState::default()
                    },
                ),
                AnyVersion::Unknown { version } if version > STATE_VERSION => {
                    return Ok(TimerSnapshot {
                        version,
                        state: None,
                    })
                }
                AnyVersion::Unknown { version } => {
                    return Err(D::Error::custom(format_args!(
                        "malformed timer state of version {version}"
                    )))
                }
            };
            Ok(TimerSnapshot {
                version,
                state: Some(state),
            })
        }
    }
}
