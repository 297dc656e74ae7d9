//! The hostile guest program: everything a guest can do to the protocol
//! short of breaking its own kernel. It scribbles on the registered struct,
//! puts `pending` below `armed` without trapping, pushes `pending` without
//! checking `armed`, writes arbitrary deadlines, re-registers in a loop and
//! writes registration values the host must refuse with #GP. It counts the
//! #GPs the spec requires against the ones it takes.

use core::ptr::addr_of_mut;

use lazy_tscdeadline_abi::{LazyTscDeadline, MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_guest::x86::rdtsc;

use crate::layout::*;
use crate::{arch, report, XorShift};

struct Hostile {
    cpu: usize,
    area: *mut LazyTscDeadline,
    gpa: u64,
    /// The registration value the host should report (0: disabled).
    registered: u64,
    stores: u64,
    msr_writes: u64,
    gp_expected: u64,
    gp_taken: u64,
    mismatch: u64,
}

impl Hostile {
    /// WRMSR of a protocol MSR, checking #GP against `must_gp`.
    fn wrmsr(&mut self, index: u32, value: u64, must_gp: bool) {
        self.msr_writes += 1;
        let gp = arch::wrmsr_catch_gp(self.cpu, index, value);
        if must_gp {
            self.gp_expected += 1;
        }
        if gp {
            self.gp_taken += 1;
        }
        if gp != must_gp {
            self.mismatch += 1;
        }
    }

    fn store_armed(&mut self, v: u64) {
        self.stores += 1;
        // SAFETY: `area` is this vCPU's registered struct in identity-mapped
        // guest RAM; a guest may write anything to its own memory, which is
        // the point here.
        unsafe { addr_of_mut!((*self.area).armed).write_volatile(v) }
    }

    fn store_pending(&mut self, v: u64) {
        self.stores += 1;
        // SAFETY: as for `store_armed`.
        unsafe { addr_of_mut!((*self.area).pending).write_volatile(v) }
    }

    fn load_armed(&self) -> u64 {
        // SAFETY: as for `store_armed`.
        unsafe { addr_of_mut!((*self.area).armed).read_volatile() }
    }

    /// Registration values the spec says must fault.
    fn bad_registration(&self, pick: u64, mem_size: u64) -> u64 {
        match pick % 5 {
            0 => self.gpa | 0b11,    // reserved bit 1
            1 => (self.gpa + 8) | 1, // not 64-byte aligned (bit 3)
            2 => mem_size | 1,       // just past the end of RAM
            3 => (1 << 45) | 1,      // far outside RAM
            _ => u64::MAX,           // everything set
        }
    }
}

/// Runs `p.requests` hostile iterations on vCPU `cpu`, whose struct is
/// registered at `gpa` (lazy mode), and reports the counts.
pub fn run(cpu: usize, p: &Params, area: *mut LazyTscDeadline, gpa: u64) {
    let mut h = Hostile {
        cpu,
        area,
        gpa,
        registered: gpa | 1,
        stores: 0,
        msr_writes: 0,
        gp_expected: 0,
        gp_taken: 0,
        mismatch: 0,
    };
    let mut rng = XorShift::new(p.seed ^ 0x6e6f_7468_6f6e_6573, cpu);
    let timeout = p.timeout_tsc.max(2);
    for _ in 0..p.requests {
        let r = rng.next();
        match r % 10 {
            0 => h.store_armed(rng.next()),
            1 => h.store_pending(rng.next()),
            2 => {
                // `pending` below `armed`, without the trap the protocol
                // requires: the guest only hurts its own timer.
                let a = h.load_armed();
                h.store_pending(a / 2);
            }
            3 => {
                // Push later without looking at `armed`.
                let d = rdtsc() + rng.next() % timeout;
                h.store_pending(d);
            }
            4 => {
                // Arbitrary trapped deadlines: never a fault.
                let d = match rng.next() % 4 {
                    0 => 0,
                    1 => u64::MAX,
                    2 => rdtsc().wrapping_sub(rng.next() % timeout),
                    _ => rdtsc() + rng.next() % timeout,
                };
                h.wrmsr(MSR_IA32_TSC_DEADLINE, d, false);
            }
            5 => {
                // Re-register in a loop, sometimes through a disable.
                for i in 0..(1 + rng.next() % 8) {
                    let v = if i % 3 == 2 { 0 } else { gpa | 1 };
                    h.wrmsr(MSR_KVM_LAZY_TSCDEADLINE, v, false);
                    h.registered = v;
                }
            }
            6 | 7 => {
                let v = h.bad_registration(rng.next(), p.mem_size);
                h.wrmsr(MSR_KVM_LAZY_TSCDEADLINE, v, true);
            }
            8 => {
                // Reading the registration MSR returns what was accepted.
                match arch::rdmsr_catch_gp(cpu, MSR_KVM_LAZY_TSCDEADLINE) {
                    Some(v) if v == h.registered => {}
                    _ => h.mismatch += 1,
                }
            }
            _ => {
                // Garbage over the rest of the struct too.
                h.stores += 1;
                // SAFETY: as for `store_armed`.
                unsafe { addr_of_mut!((*area).flags).write_volatile(rng.next() as u32) };
            }
        }
        arch::interrupt_window(cpu);
    }
    report!(cpu, hostile_ops, p.requests);
    report!(cpu, hostile_stores, h.stores);
    report!(cpu, hostile_msr_writes, h.msr_writes);
    report!(cpu, gp_expected, h.gp_expected);
    report!(cpu, gp_taken, h.gp_taken);
    report!(cpu, gp_mismatch, h.mismatch);
    report!(cpu, done, 1);
}
