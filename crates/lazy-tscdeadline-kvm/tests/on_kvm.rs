//! The crate on real KVM, without running a guest: the vCPU thread's side
//! is driven with the MSR exits a guest would cause (kvm-ioctls' exit
//! structs are plain data), against a real in-kernel LAPIC whose state is
//! set and read with `KVM_SET_LAPIC` / `KVM_GET_LAPIC`. Skipped, with a
//! visible message, where /dev/kvm cannot be opened.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, MsrExitReason, ReadMsrExit, VcpuFd, VmFd, WriteMsrExit};
use lazy_tscdeadline_host::{Config, GuestClock, KickOutcome};
use lazy_tscdeadline_kvm::{
    setup, GuestTsc, MsrOutcome, MsrRouting, RoutingPolicy, VcpuKicker, VcpuTimer, VcpuTimerParts,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const TSC_DEADLINE: u32 = 0x6e0;
const REGISTRATION: u32 = 0x4b56_4d09;
const STRUCT_GPA: u64 = 0x1000;
const VECTOR: u32 = 0xec;
const LVT_TSC_DEADLINE: u32 = 0b10 << 17 | VECTOR;
const MASKED: u32 = 1 << 16;

fn kvm_or_skip(test: &str) -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            let msg = format!("SKIPPED: /dev/kvm cannot be opened ({e}); {test} did not run");
            println!("{msg}");
            eprintln!("{msg}");
            None
        }
    }
}

/// Counts kicks.
#[derive(Debug, Default)]
struct CountingKicker(AtomicU64);
impl VcpuKicker for CountingKicker {
    fn kick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

type Timer = VcpuTimer<Arc<GuestMemoryMmap>, Arc<VmFd>>;

struct Rig {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    vcpu: VcpuFd,
    mem: Arc<GuestMemoryMmap>,
    clock: GuestTsc,
    routing: Arc<MsrRouting<Arc<VmFd>>>,
    kicker: Arc<CountingKicker>,
    timer: Timer,
    /// vCPU 1, when asked for: its fd, timer and kicker.
    second: Option<(VcpuFd, Timer, Arc<CountingKicker>)>,
}

impl Rig {
    /// A VM with one vCPU whose LAPIC is software-enabled and whose LVT
    /// timer is in TSC-deadline mode (unmasked), and its timer.
    fn new(kvm: Kvm, policy: RoutingPolicy) -> Rig {
        Self::with_vcpus(kvm, policy, 1)
    }

    fn with_vcpus(kvm: Kvm, policy: RoutingPolicy, n: u32) -> Rig {
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: the mapping is owned by `mem`, which the rig keeps alive
        // as long as the VM.
        unsafe {
            vm.set_user_memory_region(kvm_userspace_memory_region {
                slot: 0,
                guest_phys_addr: 0,
                memory_size: 1 << 20,
                userspace_addr: host as u64,
                flags: 0,
            })
        }
        .unwrap();
        let routing = Arc::new(MsrRouting::new(&kvm, vm.clone(), policy).unwrap());
        let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        for e in cpuid.as_mut_slice() {
            if e.function == 1 {
                e.ecx |= 1 << 24; // TSC-deadline
            }
        }
        setup::advertise(&mut cpuid).unwrap();
        let make = |index: u32| {
            let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
            vcpu.set_cpuid2(&cpuid).unwrap();
            let mut lapic = vcpu.get_lapic().unwrap();
            set_reg(&mut lapic.regs, 0xf0, 0x1ff); // SVR: enabled, vector 0xff
            set_reg(&mut lapic.regs, 0x320, LVT_TSC_DEADLINE);
            vcpu.set_lapic(&lapic).unwrap();
            let clock = GuestTsc::from_vcpu(&vcpu).unwrap();
            let kicker = Arc::new(CountingKicker::default());
            let parts = VcpuTimerParts {
                index,
                apic_id: index,
                mem: mem.clone(),
                vm: vm.clone(),
                clock,
                config: Config::new().with_lazy_advertised(true),
            };
            let timer = VcpuTimer::new(&vcpu, parts, routing.clone(), kicker.clone()).unwrap();
            (vcpu, timer, kicker, clock)
        };
        let (vcpu, timer, kicker, clock) = make(0);
        let second = (n > 1).then(|| {
            let (v, t, k, _) = make(1);
            (v, t, k)
        });
        Rig {
            _kvm: kvm,
            vm,
            vcpu,
            mem,
            clock,
            routing,
            kicker,
            timer,
            second,
        }
    }

    fn wrmsr(&self, index: u32, data: u64) -> (MsrOutcome, u8) {
        wrmsr_on(&self.timer, index, data)
    }

    fn rdmsr(&self, index: u32) -> (MsrOutcome, u64) {
        let (mut error, mut data) = (0, 0);
        let mut exit = ReadMsrExit {
            error: &mut error,
            reason: MsrExitReason::Filter,
            index,
            data: &mut data,
        };
        let outcome = self.timer.handle_rdmsr(&mut exit).unwrap();
        (outcome, data)
    }

    /// KVM's own IA32_TSC_DEADLINE (host-initiated, not filtered).
    fn kvm_deadline(&self) -> u64 {
        kvm_deadline_of(&self.vcpu)
    }

    fn arm_in_kvm(&self, deadline: u64) {
        arm_in_kvm_of(&self.vcpu, deadline)
    }

    fn armed(&self) -> u64 {
        self.mem.read_obj(GuestAddress(STRUCT_GPA)).unwrap()
    }

    /// The guest stores `pending` (before its trapped write).
    fn store_pending(&self, deadline: u64) {
        self.mem
            .write_obj(deadline, GuestAddress(STRUCT_GPA + 8))
            .unwrap();
    }

    /// Whether the timer vector is pending in the LAPIC's IRR.
    fn irr_has_timer_vector(&self) -> bool {
        let lapic = self.vcpu.get_lapic().unwrap();
        let reg = get_reg(&lapic.regs, 0x200 + 0x10 * (VECTOR as usize / 32));
        reg & (1 << (VECTOR % 32)) != 0
    }

    fn set_lvt(&self, lvt: u32) {
        let mut lapic = self.vcpu.get_lapic().unwrap();
        set_reg(&mut lapic.regs, 0x320, lvt);
        self.vcpu.set_lapic(&lapic).unwrap();
    }

    fn ms(&self, ms: u64) -> u64 {
        u64::from(self.clock.khz()) * ms
    }

    /// Waits until the host timer's fd is readable, then hands the expiry
    /// over as the expiry thread would.
    fn wait_for_expiry(&self) {
        let fd: RawFd = self.timer.timer_fd();
        let start = Instant::now();
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one valid descriptor for at most 100 ms.
            unsafe { libc::poll(&mut p, 1, 100) };
            if self.timer.on_expiry().unwrap() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the host timer never expired"
            );
        }
    }
}

fn kvm_deadline_of(vcpu: &VcpuFd) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: TSC_DEADLINE,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 1);
    msrs.as_slice()[0].data
}

fn arm_in_kvm_of(vcpu: &VcpuFd, deadline: u64) {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: TSC_DEADLINE,
        data: deadline,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(vcpu.set_msrs(&msrs).unwrap(), 1);
}

/// A guest WRMSR exit on `timer`'s vCPU: its outcome and the exit's
/// `error` byte (1: #GP).
fn wrmsr_on(timer: &Timer, index: u32, data: u64) -> (MsrOutcome, u8) {
    let mut error = 0;
    let mut exit = WriteMsrExit {
        error: &mut error,
        reason: MsrExitReason::Filter,
        index,
        data,
    };
    let outcome = timer.handle_wrmsr(&mut exit).unwrap();
    (outcome, error)
}

fn set_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

fn get_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    u32::from_le_bytes([
        regs[offset] as u8,
        regs[offset + 1] as u8,
        regs[offset + 2] as u8,
        regs[offset + 3] as u8,
    ])
}

#[test]
fn opt_in_routes_0x6e0_only_while_registered_and_hands_deadlines_over() {
    let Some(kvm) = kvm_or_skip("the opt-in routing test") else {
        return;
    };
    let r = Rig::new(kvm, RoutingPolicy::OptIn);
    // Until a registration, 0x6e0 stays in KVM; the timer is KVM's.
    r.timer.service().unwrap();
    assert!(!r.routing.tsc_deadline_routed());
    assert!(!r.timer.vmm_owned());
    let deadline = r.clock.now() + r.ms(10_000);
    r.arm_in_kvm(deadline);
    assert_eq!(r.kvm_deadline(), deadline);

    // Registration: routed, and the timer taken over from KVM. The
    // registration leaves the timer alone (docs/PROTOCOL.md §4.1) and the
    // take-over adopts KVM's deadline unpublished: it is armed in the VMM,
    // RDMSR reads it, and `armed` stays 0 (§2) so that the next write traps.
    assert_eq!(
        r.wrmsr(REGISTRATION, STRUCT_GPA | 1),
        (MsrOutcome::Handled, 0)
    );
    assert!(r.routing.tsc_deadline_routed());
    assert!(r.timer.vmm_owned());
    assert_eq!(r.kvm_deadline(), 0, "still armed in KVM");
    assert_eq!(r.timer.with_timer(|t| t.deadline()), deadline);
    assert!(!r.timer.with_timer(|t| t.is_published()));
    assert_eq!(r.armed(), 0, "armed published after a registration");
    assert_eq!(r.rdmsr(TSC_DEADLINE), (MsrOutcome::Handled, deadline));
    assert_eq!(r.rdmsr(REGISTRATION), (MsrOutcome::Handled, STRUCT_GPA | 1));
    assert_eq!(r.timer.counters().takeovers, 1);
    assert_eq!(r.timer.timer_counters().adopted, 1);

    // The guest's next write traps (armed is 0), replaces it and publishes.
    // (The guest stores `pending` first, as section 3 says.)
    let later = deadline + r.ms(1000);
    r.store_pending(later);
    assert_eq!(r.wrmsr(TSC_DEADLINE, later).0, MsrOutcome::Handled);
    assert_eq!(r.armed(), later);
    // A trapped earlier write supersedes it.
    let earlier = deadline + r.ms(500);
    r.store_pending(earlier);
    assert_eq!(r.wrmsr(TSC_DEADLINE, earlier).0, MsrOutcome::Handled);
    assert_eq!(r.armed(), earlier);

    // Disable: the registration change keeps the armed deadline
    // (unpublished), which is handed back to KVM with 0x6e0.
    assert_eq!(r.wrmsr(REGISTRATION, 0), (MsrOutcome::Handled, 0));
    assert!(!r.timer.vmm_owned());
    assert!(!r.routing.tsc_deadline_routed());
    assert_eq!(r.kvm_deadline(), earlier, "the kept deadline handed back");
    assert_eq!(r.timer.with_timer(|t| t.deadline()), 0);
    assert_eq!(r.armed(), 0);
    assert_eq!(r.timer.counters().handbacks, 1);
    assert!(
        !r.irr_has_timer_vector(),
        "an interrupt crossed the hand-over"
    );
    // Not routed any more: were a 0x6e0 exit still to arrive (one already
    // under way), it would be passed on to KVM.
    assert_eq!(r.wrmsr(TSC_DEADLINE, later).0, MsrOutcome::Handled);
    assert_eq!(r.kvm_deadline(), later);
    assert_eq!(r.timer.counters().forwarded, 1);

    // Other MSRs are the VMM's; a bad registration is a guest fault.
    assert_eq!(r.wrmsr(0x10, 5).0, MsrOutcome::NotOurs);
    let (outcome, error) = r.wrmsr(REGISTRATION, STRUCT_GPA | 0b11);
    assert!(matches!(outcome, MsrOutcome::GuestFault(_)), "{outcome:?}");
    assert_eq!(error, 1);
    assert!(!r.routing.tsc_deadline_routed());
}

#[test]
fn every_vcpu_takes_over_at_its_next_exit_and_hands_back_its_armed_deadline() {
    let Some(kvm) = kvm_or_skip("the two-vCPU hand-over test") else {
        return;
    };
    let r = Rig::with_vcpus(kvm, RoutingPolicy::OptIn, 2);
    let (vcpu1, timer1, kicker1) = r.second.as_ref().unwrap();
    let d1 = r.clock.now() + r.ms(10_000);
    arm_in_kvm_of(vcpu1, d1);
    // vCPU 0 registers: the filter routes 0x6e0 for both, vCPU 1 keeps its
    // deadline in KVM until its own thread looks (its next exit).
    r.wrmsr(REGISTRATION, STRUCT_GPA | 1);
    assert!(r.routing.tsc_deadline_routed());
    assert!(!timer1.vmm_owned());
    assert_eq!(kvm_deadline_of(vcpu1), d1);
    timer1.service().unwrap();
    assert!(timer1.vmm_owned());
    assert_eq!(kvm_deadline_of(vcpu1), 0);
    assert_eq!(timer1.with_timer(|t| t.deadline()), d1);
    // vCPU 1 (unregistered, eager) moves its deadline: a routed exit.
    let d2 = d1 + r.ms(500);
    assert_eq!(wrmsr_on(timer1, TSC_DEADLINE, d2).0, MsrOutcome::Handled);
    // vCPU 0 disables: hand-back starts, vCPU 1 is kicked; the filter stays
    // until vCPU 1 has handed its deadline back.
    let kicks = kicker1.0.load(Ordering::SeqCst);
    r.wrmsr(REGISTRATION, 0);
    assert!(
        kicker1.0.load(Ordering::SeqCst) > kicks,
        "vCPU 1 not kicked"
    );
    assert!(
        r.routing.tsc_deadline_routed(),
        "un-routed with a deadline still in the VMM"
    );
    timer1.service().unwrap();
    assert!(!timer1.vmm_owned());
    assert_eq!(
        kvm_deadline_of(vcpu1),
        d2,
        "vCPU 1's deadline not handed back"
    );
    assert_eq!(timer1.with_timer(|t| t.deadline()), 0);
    assert!(!r.routing.tsc_deadline_routed());
    assert_eq!(timer1.counters().takeovers, 1);
    assert_eq!(timer1.counters().handbacks, 1);
}

#[test]
fn a_deadline_that_passed_in_kvm_before_the_take_over_fires_once_at_once() {
    let Some(kvm) = kvm_or_skip("the take-over test") else {
        return;
    };
    let r = Rig::new(kvm, RoutingPolicy::OptIn);
    let deadline = r.clock.now() + r.ms(1);
    r.arm_in_kvm(deadline);
    // It expires in KVM while the vCPU is in userspace (never runs here):
    // KVM holds the expiry for its next run.
    std::thread::sleep(Duration::from_millis(20));
    assert!(!r.irr_has_timer_vector());
    r.wrmsr(REGISTRATION, STRUCT_GPA | 1);
    // KVM's pending expiry was discarded with its deadline; the host fired.
    assert_eq!(r.kvm_deadline(), 0);
    assert!(r.irr_has_timer_vector(), "the passed deadline was lost");
    assert_eq!(r.timer.timer_counters().injections, 1);
    assert_eq!(r.timer.with_timer(|t| t.deadline()), 0);
}

#[test]
fn expiries_reach_the_vcpu_thread_and_read_the_lvt_there() {
    let Some(kvm) = kvm_or_skip("the expiry test") else {
        return;
    };
    let r = Rig::new(kvm, RoutingPolicy::Always);
    assert!(r.routing.tsc_deadline_routed());
    r.timer.service().unwrap(); // takes over at once under Always
    assert!(r.timer.vmm_owned());

    // Masked (without an exit, as an x2APIC write would) before the
    // expiry: nothing delivered, disarmed.
    r.wrmsr(TSC_DEADLINE, r.clock.now() + r.ms(2));
    r.set_lvt(LVT_TSC_DEADLINE | MASKED);
    let kicks = r.kicker.0.load(Ordering::SeqCst);
    r.wait_for_expiry();
    assert_eq!(r.kicker.0.load(Ordering::SeqCst), kicks + 1);
    assert_eq!(r.timer.service().unwrap(), Some(KickOutcome::Masked));
    assert!(!r.irr_has_timer_vector());
    assert_eq!(r.rdmsr(TSC_DEADLINE).1, 0);

    // Written while masked, unmasked before the expiry: delivered.
    r.wrmsr(TSC_DEADLINE, r.clock.now() + r.ms(2));
    r.set_lvt(LVT_TSC_DEADLINE);
    r.wait_for_expiry();
    assert_eq!(r.timer.service().unwrap(), Some(KickOutcome::Injected));
    assert!(r.irr_has_timer_vector());
    assert_eq!(r.timer.service().unwrap(), None, "one expiry, one kick");
    assert_eq!(r.timer.counters().expiries, 2);
    let _ = &r.vm;
}

#[test]
fn save_and_restore_into_a_fresh_vm_keeps_the_deadline_paused_until_resumed() {
    let Some(kvm) = kvm_or_skip("the save/restore test") else {
        return;
    };
    let r = Rig::new(kvm, RoutingPolicy::OptIn);
    r.wrmsr(REGISTRATION, STRUCT_GPA | 1);
    let deadline = r.clock.now() + r.ms(30);
    // As the guest's setter does: `pending` first, then the trap.
    r.mem
        .write_obj(deadline, GuestAddress(STRUCT_GPA + 8))
        .unwrap();
    r.wrmsr(TSC_DEADLINE, deadline);
    let saved = r.timer.save();
    let routing = r.routing.state();
    assert!(saved.vmm_owned && routing.tsc_deadline_routed);
    let mut bytes = [0u8; 64];
    r.mem
        .read_slice(&mut bytes, GuestAddress(STRUCT_GPA))
        .unwrap();

    // A fresh VM: memory, vCPU state (here the LAPIC), routing, timer.
    let fresh = Rig::new(Kvm::new().unwrap(), RoutingPolicy::OptIn);
    fresh
        .mem
        .write_slice(&bytes, GuestAddress(STRUCT_GPA))
        .unwrap();
    fresh.routing.restore(&routing).unwrap();
    let parts = VcpuTimerParts {
        index: 0,
        apic_id: 0,
        mem: fresh.mem.clone(),
        vm: fresh.vm.clone(),
        clock: fresh.clock,
        config: Config::new().with_lazy_advertised(true),
    };
    let restored = VcpuTimer::restore(
        &fresh.vcpu,
        parts,
        fresh.routing.clone(),
        fresh.kicker.clone(),
        &saved,
    )
    .unwrap();
    assert!(restored.vmm_owned());
    assert!(fresh.routing.tsc_deadline_routed());
    assert!(restored.with_timer(|t| t.is_paused()));
    // Paused: no host timer until resume, even past the deadline.
    std::thread::sleep(Duration::from_millis(40));
    assert!(!restored.on_expiry().unwrap(), "expired while paused");
    restored.resume().unwrap();
    let start = Instant::now();
    while !restored.on_expiry().unwrap() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never expired after resume"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(restored.service().unwrap(), Some(KickOutcome::Injected));
    assert!(fresh.irr_has_timer_vector());
    // Disabling in the restored VM hands back and un-routes: the registered
    // set came back with the state.
    assert_eq!(wrmsr_on(&restored, REGISTRATION, 0).0, MsrOutcome::Handled);
    assert!(!fresh.routing.tsc_deadline_routed());
}

#[test]
fn a_registration_keeps_the_deadline_armed_in_kvm_as_under_always_routing() {
    let Some(kvm) = kvm_or_skip("the registration-while-armed test") else {
        return;
    };
    for policy in [RoutingPolicy::OptIn, RoutingPolicy::Always] {
        let r = Rig::new(Kvm::new().unwrap(), policy);
        r.timer.service().unwrap();
        let deadline = r.clock.now() + r.ms(20);
        // Armed where the policy keeps an unregistered vCPU's timer.
        if policy == RoutingPolicy::OptIn {
            r.arm_in_kvm(deadline);
        } else {
            r.wrmsr(TSC_DEADLINE, deadline);
        }
        // `pending` holds what the guest left there (the protocol does not
        // initialise it): here 0, which a read at the expiry would take for
        // a cancel. The kept deadline must not read it.
        r.mem.write_obj(0u64, GuestAddress(STRUCT_GPA + 8)).unwrap();
        r.wrmsr(REGISTRATION, STRUCT_GPA | 1);
        assert!(r.timer.vmm_owned(), "{policy:?}");
        assert_eq!(r.kvm_deadline(), 0, "{policy:?}");
        // The same guest-visible state under both policies: the deadline
        // survives the registration, unpublished (`armed = 0`, so that the
        // guest's next write traps), as on hardware and in the RFC's KVM.
        // (Opt-in used to publish the taken-over deadline with `pending`
        // 0, losing the interrupt; then to clear it at the registration.)
        assert_eq!(r.timer.with_timer(|t| t.deadline()), deadline, "{policy:?}");
        assert_eq!(r.armed(), 0, "{policy:?}");
        assert_eq!(r.rdmsr(TSC_DEADLINE).1, deadline, "{policy:?}");
        // It fires once, at its time, without a guest write.
        r.wait_for_expiry();
        assert!(r.clock.now() >= deadline, "{policy:?}: early");
        assert_eq!(
            r.timer.service().unwrap(),
            Some(KickOutcome::Injected),
            "{policy:?}"
        );
        assert!(r.irr_has_timer_vector(), "{policy:?}");
        assert_eq!(r.timer.timer_counters().injections, 1, "{policy:?}");
        assert_eq!(r.timer.with_timer(|t| t.deadline()), 0, "{policy:?}");
        assert_eq!(r.rdmsr(TSC_DEADLINE).1, 0, "{policy:?}");
        assert_eq!(r.armed(), 0, "{policy:?}");
        // Nothing more: no second interrupt.
        assert_eq!(r.timer.service().unwrap(), None, "{policy:?}");
        assert_eq!(r.timer.timer_counters().injections, 1, "{policy:?}");
    }
    drop(kvm);
}
