//! The modes, as data: one [`ModeSpec`] per mode in [`MODES`] says what
//! the VMM sets up (whether the feature is advertised, how
//! `IA32_TSC_DEADLINE` is routed) and what the guest does. Adding a mode
//! touches this file, a variant and its entry (and the guest, if it needs
//! new behaviour); `compare`, `--mode`, the report and the JSON follow.

use std::fmt;

use lazy_tscdeadline_kvm::lazy_tscdeadline_host::Config;
use lazy_tscdeadline_kvm::RoutingPolicy;

use crate::layout::{REGISTER_AT_BOOT, REGISTER_MID_RUN, REGISTER_NEVER};

/// A mode of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// KVM's in-kernel LAPIC timer, no MSR routing at all.
    Kernel,
    /// Every 0x6e0 write exits to the VMM, the feature is not advertised.
    Eager,
    /// As lazy, with the host behaving as the RFC (no grace re-arm, no
    /// exitless cancel offered).
    LazyRfc,
    /// As eager, the feature advertised and the guest registered from boot;
    /// the host's policies (grace re-arm, exitless cancel).
    Lazy,
    /// The feature advertised with opt-in routing; the guest never
    /// registers.
    Stock,
    /// Opt-in routing; the guest registers in the middle of its workload.
    Optin,
}

/// When the guest registers its shared struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// Never: plain `IA32_TSC_DEADLINE` writes throughout.
    Never,
    /// At boot, before the workload.
    AtBoot,
    /// During request `requests / 3`, with that request's deadline armed
    /// in KVM by a plain write.
    MidRun,
}

impl Registration {
    /// The guest's `Params::register` value.
    pub fn guest_value(self) -> u64 {
        match self {
            Registration::Never => REGISTER_NEVER,
            Registration::AtBoot => REGISTER_AT_BOOT,
            Registration::MidRun => REGISTER_MID_RUN,
        }
    }

    /// The guest's `Params::register_after` for a workload of `requests`.
    pub fn register_after(self, requests: u64) -> u64 {
        match self {
            Registration::MidRun => requests / 3,
            Registration::Never | Registration::AtBoot => 0,
        }
    }
}

/// Which 0x6e0 write exits the VMM must see during the workload, checked
/// against the guest's own counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedExits {
    /// No routing: the VMM cannot see any (reported as not measurable).
    NotRouted,
    /// One per necessary trap the guest made.
    EveryTrap,
    /// None: the writes stay in KVM.
    None,
    /// Per vCPU, after its registration: one per necessary trap it made
    /// since then.
    TrapsAfterRegistration,
}

/// What one mode is.
#[derive(Clone, Copy, Debug)]
pub struct ModeSpec {
    /// The mode.
    pub mode: Mode,
    /// Its name (`--mode`, table column, JSON).
    pub name: &'static str,
    /// Whether CPUID advertises the lazy TSC deadline feature.
    pub advertised: bool,
    /// The routing of 0x6e0 by `lazy-tscdeadline-kvm`, or none (KVM only,
    /// no MSR filter).
    pub routing: Option<RoutingPolicy>,
    /// What the guest does.
    pub registration: Registration,
    /// The host timer's policies (`lazy_advertised` is set from
    /// `advertised`).
    pub host: Config,
    /// The VMM-side 0x6e0 exits the run must show.
    pub exits: ExpectedExits,
    /// Its colour in the sweep's plot (RGB).
    pub colour: (u8, u8, u8),
}

/// Every mode, in table order.
pub const MODES: [ModeSpec; 6] = [
    ModeSpec {
        mode: Mode::Kernel,
        name: "kernel",
        advertised: false,
        routing: None,
        registration: Registration::Never,
        host: Config::new(),
        exits: ExpectedExits::NotRouted,
        colour: (0x55, 0x55, 0x55),
    },
    ModeSpec {
        mode: Mode::Eager,
        name: "eager",
        advertised: false,
        routing: Some(RoutingPolicy::Always),
        registration: Registration::Never,
        host: Config::new(),
        exits: ExpectedExits::EveryTrap,
        colour: (0xd6, 0x27, 0x28),
    },
    // The lazy modes keep `Always` routing, so that they are the RFC's
    // model: 0x6e0 exits to the VMM from boot, whether or not the guest
    // registered. lazy-rfc is the RFC's host; lazy adds this project's
    // policies (docs/PROTOCOL.md section 9). The guest is the same: it uses
    // exitless cancel only when the host offers it.
    ModeSpec {
        mode: Mode::LazyRfc,
        name: "lazy-rfc",
        advertised: true,
        routing: Some(RoutingPolicy::Always),
        registration: Registration::AtBoot,
        host: Config::rfc(),
        exits: ExpectedExits::EveryTrap,
        colour: (0xff, 0x7f, 0x0e),
    },
    ModeSpec {
        mode: Mode::Lazy,
        name: "lazy",
        advertised: true,
        routing: Some(RoutingPolicy::Always),
        registration: Registration::AtBoot,
        host: Config::new(),
        exits: ExpectedExits::EveryTrap,
        colour: (0x1f, 0x77, 0xb4),
    },
    ModeSpec {
        mode: Mode::Stock,
        name: "stock",
        advertised: true,
        routing: Some(RoutingPolicy::OptIn),
        registration: Registration::Never,
        host: Config::new(),
        exits: ExpectedExits::None,
        colour: (0x2c, 0xa0, 0x2c),
    },
    ModeSpec {
        mode: Mode::Optin,
        name: "optin",
        advertised: true,
        routing: Some(RoutingPolicy::OptIn),
        registration: Registration::MidRun,
        host: Config::new(),
        exits: ExpectedExits::TrapsAfterRegistration,
        colour: (0x94, 0x67, 0xbd),
    },
];

impl Mode {
    /// All modes, in table order (`compare`).
    pub fn all() -> impl Iterator<Item = Mode> {
        MODES.iter().map(|s| s.mode)
    }

    /// The three modes of `lvt-mask`.
    pub const CLASSIC: [Mode; 3] = [Mode::Kernel, Mode::Eager, Mode::Lazy];

    /// The modes of `sweep`: the three of [`CLASSIC`](Self::CLASSIC) and the
    /// RFC's host, side by side with this project's.
    pub const SWEEP: [Mode; 4] = [Mode::Kernel, Mode::Eager, Mode::LazyRfc, Mode::Lazy];

    /// This mode's entry of [`MODES`].
    pub fn spec(self) -> &'static ModeSpec {
        MODES
            .iter()
            .find(|s| s.mode == self)
            .expect("every mode is in MODES")
    }

    /// Parses a `--mode` value.
    pub fn parse(s: &str) -> Option<Mode> {
        MODES.iter().find(|m| m.name == s).map(|m| m.mode)
    }

    /// Whether 0x6e0 can reach the VMM (a routing is installed).
    pub fn routed(self) -> bool {
        self.spec().routing.is_some()
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_mode_once_in_order() {
        assert_eq!(
            Mode::all().collect::<Vec<_>>(),
            [
                Mode::Kernel,
                Mode::Eager,
                Mode::LazyRfc,
                Mode::Lazy,
                Mode::Stock,
                Mode::Optin
            ]
        );
        for m in Mode::all() {
            assert_eq!(Mode::parse(&m.to_string()), Some(m));
            // Registering needs the feature advertised.
            assert!(m.spec().registration == Registration::Never || m.spec().advertised);
        }
        assert_eq!(Mode::parse("stock"), Some(Mode::Stock));
        assert_eq!(Mode::parse("nope"), None);
    }
}
