//! Which of the two MSRs exit to the VMM, VM-wide, and when.
//!
//! The registration MSR `0x4b564d09` always exits (KVM does not know it).
//! `IA32_TSC_DEADLINE` (0x6e0) exits only while the VMM emulates the
//! vCPUs' TSC-deadline timers:
//! - [`RoutingPolicy::Always`]: from the start, for the VM's whole life (the
//!   RFC's model: every guest pays an exit to the VMM per deadline write).
//! - [`RoutingPolicy::OptIn`] (the default): 0x6e0 stays in KVM's in-kernel
//!   LAPIC, so a guest that never registers behaves and costs exactly as
//!   without the feature. When the first vCPU registers, 0x6e0 is routed to
//!   the VMM for the whole VM (the MSR filter is VM-wide) and every vCPU's
//!   in-kernel deadline is taken over, each on its own thread at its next
//!   exit ([`VcpuTimer`](crate::VcpuTimer)). When no vCPU is registered any
//!   more, every vCPU hands its deadline back to KVM, and once all have, the
//!   filter lets 0x6e0 through to KVM again.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::kvm_enable_cap;
use kvm_ioctls::{
    Cap, Kvm, MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd,
};
use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};

use crate::error::{ExitError, KvmError, SetupError};
use crate::kick::VcpuKicker;
use crate::probe;

/// When `IA32_TSC_DEADLINE` exits to the VMM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum RoutingPolicy {
    /// Only while at least one vCPU is registered (and until every vCPU
    /// has handed its deadline back to KVM).
    #[default]
    OptIn,
    /// Always.
    Always,
}

/// What the VM's routing is, for a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct RoutingState {
    /// The policy.
    pub policy: RoutingPolicy,
    /// Whether 0x6e0 exits to the VMM.
    pub tsc_deadline_routed: bool,
}

#[derive(Debug)]
struct Inner {
    /// Whether the installed filter routes 0x6e0 to the VMM.
    routed: bool,
    /// vCPUs with a struct registered.
    registered: BTreeMap<u32, ()>,
    /// vCPUs whose TSC-deadline timer the VMM emulates now.
    owned: BTreeMap<u32, ()>,
    /// Every vCPU's kicker, to hand deadlines back promptly.
    kickers: BTreeMap<u32, Arc<dyn VcpuKicker>>,
}

impl std::fmt::Debug for dyn VcpuKicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VcpuKicker")
    }
}

/// The VM-wide MSR routing of the two MSRs.
///
/// `V` is how the VMM holds its VM (`Arc<VmFd>`, `&'static VmFd`, ...). The
/// routing installs the VM's MSR filter: a VMM with MSR filter ranges of
/// its own must merge them (see [`MsrRouting::filter_ranges`]).
#[derive(Debug)]
pub struct MsrRouting<V> {
    vm: V,
    policy: RoutingPolicy,
    /// Whether vCPUs should have their TSC-deadline timer in the VMM (read
    /// by every vCPU thread at every exit, without the lock).
    vmm_owns: AtomicBool,
    inner: Mutex<Inner>,
}

/// The probe result of this process: the kernel does not change under it.
static PROBED: OnceLock<Result<(), String>> = OnceLock::new();

impl<V: Borrow<VmFd>> MsrRouting<V> {
    /// Sets up the routing of `vm` under `policy`: proves once per process,
    /// on a scratch VM, that a filtered guest write of 0x6e0 reaches
    /// userspace ([`SetupError::FilterBypassed`] otherwise), enables
    /// `KVM_CAP_X86_USER_SPACE_MSR` for filtered MSRs, and installs the
    /// initial filter. Call before the vCPUs run.
    pub fn new(kvm: &Kvm, vm: V, policy: RoutingPolicy) -> Result<Self, SetupError> {
        crate::setup::check_capabilities(kvm)?;
        match PROBED.get_or_init(|| probe::filter_reaches_userspace(kvm).map_err(|e| e.to_string()))
        {
            Ok(()) => {}
            Err(seen) => {
                return Err(SetupError::FilterBypassed { seen: seen.clone() });
            }
        }
        enable_filter_exits(vm.borrow())?;
        let routing = MsrRouting {
            vm,
            policy,
            vmm_owns: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                routed: false,
                registered: BTreeMap::new(),
                owned: BTreeMap::new(),
                kickers: BTreeMap::new(),
            }),
        };
        let routed = policy == RoutingPolicy::Always;
        routing
            .install(routed)
            .map_err(SetupError::kvm("KVM_X86_SET_MSR_FILTER"))?;
        routing.inner.lock().unwrap().routed = routed;
        routing.vmm_owns.store(routed, Ordering::SeqCst);
        Ok(routing)
    }

    /// The policy.
    pub fn policy(&self) -> RoutingPolicy {
        self.policy
    }

    /// Whether 0x6e0 exits to the VMM now.
    pub fn tsc_deadline_routed(&self) -> bool {
        self.inner.lock().unwrap().routed
    }

    /// For a snapshot.
    pub fn state(&self) -> RoutingState {
        RoutingState {
            policy: self.policy,
            tsc_deadline_routed: self.tsc_deadline_routed(),
        }
    }

    /// Restores a saved routing into a fresh VM (which must have been set up
    /// with [`new`](Self::new) under the same policy): installs the filter
    /// the snapshot had. The vCPU timers' ownership comes from their own
    /// state.
    pub fn restore(&self, state: &RoutingState) -> Result<(), KvmError> {
        let mut inner = self.inner.lock().unwrap();
        self.install(state.tsc_deadline_routed)?;
        inner.routed = state.tsc_deadline_routed;
        self.vmm_owns
            .store(state.tsc_deadline_routed, Ordering::SeqCst);
        Ok(())
    }

    /// The filter ranges for the current routing (to merge with a VMM's
    /// own ranges): reads and writes of the listed MSRs exit.
    pub fn filter_ranges(routed: bool) -> Vec<u32> {
        if routed {
            vec![MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE]
        } else {
            vec![MSR_KVM_LAZY_TSCDEADLINE]
        }
    }

    fn install(&self, routed: bool) -> Result<(), KvmError> {
        let deny = [0u8];
        let ranges: Vec<MsrFilterRange<'_>> = Self::filter_ranges(routed)
            .into_iter()
            .map(|base| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: 1,
                bitmap: &deny,
            })
            .collect();
        self.vm
            .borrow()
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
    }

    /// Registers vCPU `index`'s kicker (by [`VcpuTimer::new`](crate::VcpuTimer::new)).
    pub(crate) fn add_vcpu(&self, index: u32, kicker: Arc<dyn VcpuKicker>) {
        self.inner.lock().unwrap().kickers.insert(index, kicker);
    }

    /// Whether vCPUs should have their timer in the VMM now.
    pub(crate) fn vmm_owns(&self) -> bool {
        self.vmm_owns.load(Ordering::SeqCst)
    }

    /// vCPU `index` registered (or disabled) its struct. Under
    /// [`RoutingPolicy::OptIn`] the first registration routes 0x6e0 to the
    /// VMM; when none is left, the hand-back starts: every vCPU is kicked to
    /// hand its deadline back.
    pub(crate) fn set_registered(&self, index: u32, registered: bool) -> Result<(), ExitError> {
        let mut inner = self.inner.lock().unwrap();
        if registered {
            inner.registered.insert(index, ());
        } else {
            inner.registered.remove(&index);
        }
        if self.policy != RoutingPolicy::OptIn {
            return Ok(());
        }
        if !inner.registered.is_empty() && !self.vmm_owns() {
            if !inner.routed {
                self.install(true)
                    .map_err(ExitError::kvm("KVM_X86_SET_MSR_FILTER"))?;
                inner.routed = true;
            }
            // From now on every vCPU takes its deadline over at its next exit.
            self.vmm_owns.store(true, Ordering::SeqCst);
        } else if inner.registered.is_empty() && self.vmm_owns() {
            self.vmm_owns.store(false, Ordering::SeqCst);
            for kicker in inner.kickers.values() {
                kicker.kick();
            }
            self.maybe_unroute(&mut inner)?;
        }
        Ok(())
    }

    /// A restored vCPU `index` had its struct registered (no routing change:
    /// [`restore`](Self::restore) installed the saved filter).
    pub(crate) fn note_registered(&self, index: u32) {
        self.inner.lock().unwrap().registered.insert(index, ());
    }

    /// vCPU `index` took its deadline over from KVM.
    pub(crate) fn took_over(&self, index: u32) {
        self.inner.lock().unwrap().owned.insert(index, ());
    }

    /// vCPU `index` handed its deadline back to KVM.
    pub(crate) fn handed_back(&self, index: u32) -> Result<(), ExitError> {
        let mut inner = self.inner.lock().unwrap();
        inner.owned.remove(&index);
        self.maybe_unroute(&mut inner)
    }

    /// Lets 0x6e0 through to KVM again once no vCPU's timer is in the VMM
    /// and none should be.
    fn maybe_unroute(&self, inner: &mut Inner) -> Result<(), ExitError> {
        if inner.routed && !self.vmm_owns() && inner.owned.is_empty() {
            self.install(false)
                .map_err(ExitError::kvm("KVM_X86_SET_MSR_FILTER"))?;
            inner.routed = false;
        }
        Ok(())
    }
}

/// Enables `KVM_CAP_X86_USER_SPACE_MSR` for accesses the filter denies.
/// (With only `UNKNOWN` in the mask, a filtered write would give the guest
/// #GP instead of exiting.)
pub(crate) fn enable_filter_exits(vm: &VmFd) -> Result<(), SetupError> {
    let cap = kvm_enable_cap {
        cap: Cap::X86UserSpaceMsr as u32,
        args: [u64::from(MsrExitReason::Filter.bits()), 0, 0, 0],
        ..Default::default()
    };
    vm.enable_cap(&cap).map_err(SetupError::kvm(
        "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)",
    ))
}
