//! The LVT-mask check: what the SDM (vol. 3A, "TSC-Deadline Mode") and
//! KVM's in-kernel LAPIC say of a masked LVT timer in TSC-deadline mode,
//! tried in every mode. The mask only suppresses delivery:
//! - A: a deadline written while masked is armed (RDMSR reads it back) and,
//!   unmasked before it passes, fires on time.
//! - B: masking and unmasking before an armed deadline keeps it; it fires.
//! - C: a deadline that passes while masked is delivered nowhere and
//!   disarms (RDMSR reads 0, lazy `armed` reads 0); unmasking afterwards
//!   delivers nothing.
//!
//! The guest changes the LVT with x2APIC WRMSRs that the in-kernel LAPIC
//! takes without an exit, so in eager and lazy mode the VMM only learns of
//! the mask by reading the LAPIC.

use core::sync::atomic::Ordering::Relaxed;

use lazy_tscdeadline_abi::{LazyTscDeadline, MSR_IA32_TSC_DEADLINE};
use lazy_tscdeadline_guest::x86::rdtsc;

use crate::layout::*;
use crate::{arch, report, Counts, Workload};

/// Spins with interrupts disabled until the TSC reaches `until`.
fn spin_until(until: u64) {
    while rdtsc() < until {
        core::hint::spin_loop();
    }
}

/// Spins until the TSC reaches `until`, letting interrupts in between.
fn spin_open_until(cpu: usize, until: u64) {
    while rdtsc() < until {
        arch::interrupt_window(cpu);
    }
}

/// A round of case A or B whose deadline passed before the guest unmasked
/// (a host or scheduling delay longer than the case's margin): the deadline
/// expired while masked, which the SDM answers with no interrupt, but a
/// VMM that handles the expiry after the unmask delivers it, as KVM does
/// (delivery decided at injection). Either is accepted: waited for, an
/// interrupt completes it, none cancels it.
fn void_round(w: &mut Workload<'_>, c: &mut Counts, d: u64, p: &Params) {
    if w.wait(d, p.miss_bound_tsc) {
        c.waits += 1;
    } else {
        c.cancels += 1;
        w.set(0);
    }
}

/// Runs `p.requests` rounds of the three cases; `area` is the registered
/// struct in lazy mode.
pub fn run(w: &mut Workload<'_>, p: &Params, area: Option<*mut LazyTscDeadline>) -> Counts {
    let cpu = w.cpu;
    let t = p.timeout_tsc.max(1000);
    let mut c = Counts {
        waits: 0,
        cancels: 0,
        missed: 0,
    };
    let (mut a_readback, mut a_fired, mut b_fired) = (0, 0, 0);
    let (mut c_irqs, mut c_readback, mut c_armed) = (0, 0, 0);
    let (mut void_a, mut void_b) = (0, 0);
    for _ in 0..p.requests {
        // A: written while masked, unmasked before the deadline.
        w.state.fired.store(false, Relaxed);
        arch::set_lvt_timer(TIMER_VECTOR, true);
        let d = rdtsc() + t;
        w.set(d);
        let readback = arch::rdmsr(MSR_IA32_TSC_DEADLINE) == d;
        // Passed before the unmask (the host was late to handle the write,
        // or this vCPU was descheduled): expired while masked, the case
        // has no SDM answer (see `void_round`).
        let void = rdtsc() >= d;
        arch::set_lvt_timer(TIMER_VECTOR, false);
        if void {
            void_a += 1;
            void_round(w, &mut c, d, p);
        } else {
            a_readback += u64::from(readback);
            c.waits += 1;
            if w.wait(d, p.miss_bound_tsc) {
                a_fired += 1;
            } else {
                c.missed += 1;
                w.set(0);
            }
        }

        // B: masked and unmasked around an armed deadline.
        w.state.fired.store(false, Relaxed);
        let d = rdtsc() + t;
        w.set(d);
        arch::set_lvt_timer(TIMER_VECTOR, true);
        spin_until(rdtsc() + t / 4);
        let void = rdtsc() >= d;
        arch::set_lvt_timer(TIMER_VECTOR, false);
        if void {
            void_b += 1;
            void_round(w, &mut c, d, p);
        } else {
            c.waits += 1;
            if w.wait(d, p.miss_bound_tsc) {
                b_fired += 1;
            } else {
                c.missed += 1;
                w.set(0);
            }
        }

        // C: expires while masked; nothing may arrive, before or after
        // unmasking.
        let before = w.state.all_timer_irqs.load(Relaxed);
        let d = rdtsc() + t / 2;
        arch::set_lvt_timer(TIMER_VECTOR, true);
        w.set(d);
        // Past the deadline, with interrupts let in: the host timer fires in
        // this span and must deliver nothing. Then the MSR must read 0: polled
        // (each read is an exit, which also lets a VMM whose timer thread
        // waits for a CPU catch up) up to a quarter of the miss bound.
        spin_open_until(cpu, d + t);
        let bound = d + p.miss_bound_tsc / 4;
        loop {
            if arch::rdmsr(MSR_IA32_TSC_DEADLINE) == 0 {
                c_readback += 1;
                break;
            }
            if rdtsc() > bound {
                break;
            }
            arch::interrupt_window(cpu);
        }
        let armed = match area {
            // SAFETY: the registered struct is this vCPU's static in
            // identity-mapped RAM; `armed` is read, never written, here.
            Some(a) => unsafe { core::ptr::addr_of!((*a).armed).read_volatile() },
            None => 0,
        };
        if armed == 0 {
            c_armed += 1;
        }
        arch::set_lvt_timer(TIMER_VECTOR, false);
        spin_open_until(cpu, rdtsc() + t);
        c_irqs += w.state.all_timer_irqs.load(Relaxed) - before;
        // The deadline the workload wanted passed undelivered, as the SDM
        // says: forget it (the setter's own view included: a cancel).
        w.set(0);
        c.cancels += 1;
    }
    report!(cpu, mask_rounds, p.requests);
    report!(cpu, mask_void_a, void_a);
    report!(cpu, mask_void_b, void_b);
    report!(cpu, mask_a_readback, a_readback);
    report!(cpu, mask_a_fired, a_fired);
    report!(cpu, mask_b_fired, b_fired);
    report!(cpu, mask_c_irqs, c_irqs);
    report!(cpu, mask_c_readback_zero, c_readback);
    report!(cpu, mask_c_armed_zero, c_armed);
    c
}
