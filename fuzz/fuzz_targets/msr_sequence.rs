//! Any sequence of reads and writes of 0x6e0 and 0x4b564d09 (and other
//! MSRs) with any values, LVT values, time passing and host expiries: no
//! panic; guest faults only for the two MSRs and `UnknownMsr` only for the
//! others; consistent state; and nothing but `armed` written (the
//! simulator compares the watched structs byte by byte around each host
//! operation, `check_invariants` reports any other change; `flags` may
//! change only at a successful enabling registration, to the offered
//! value); under a fuzzed policy combination.
#![no_main]

use arbitrary::Arbitrary;
use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_fuzz::FuzzPolicy;
use lazy_tscdeadline_host::{handles_msr, ReadMsrError, WriteMsrError};
use lazy_tscdeadline_sim::{Scenario, SimVcpu};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Access {
    Write(u8, u64),
    Read(u8),
    Lvt(u32),
    Advance(u32),
    Expire,
}

fn msr(sel: u8) -> u32 {
    match sel % 4 {
        0 => MSR_IA32_TSC_DEADLINE,
        1 | 2 => MSR_KVM_LAZY_TSCDEADLINE,
        _ => 0x4b56_4d00 + u32::from(sel),
    }
}

fuzz_target!(|input: (bool, FuzzPolicy, Vec<Access>)| {
    let (advertised, policy, accesses) = input;
    let mem = Scenario::memory();
    let mut vcpu = SimVcpu::with_policy(mem, 0x1000, advertised, policy.to_policy());
    for a in accesses {
        match a {
            Access::Write(sel, value) => match vcpu.raw_msr_write(msr(sel), value) {
                Ok(()) => assert!(handles_msr(msr(sel))),
                Err(WriteMsrError::GuestFault(_)) => assert!(handles_msr(msr(sel))),
                Err(WriteMsrError::UnknownMsr(i)) => assert!(i == msr(sel) && !handles_msr(i)),
                Err(e) => panic!("unexpected error {e:?}"),
            },
            Access::Read(sel) => match vcpu.raw_msr_read(msr(sel)) {
                Ok(_) => assert!(handles_msr(msr(sel))),
                Err(ReadMsrError::GuestFault(_)) => assert!(handles_msr(msr(sel))),
                Err(ReadMsrError::UnknownMsr(i)) => assert!(i == msr(sel) && !handles_msr(i)),
                Err(e) => panic!("unexpected error {e:?}"),
            },
            Access::Lvt(raw) => vcpu.set_lvt(raw),
            Access::Advance(d) => {
                vcpu.advance(u64::from(d));
            }
            Access::Expire => {
                vcpu.expire_due();
            }
        }
        vcpu.check_invariants(false).expect("consistent host state");
        if !advertised {
            assert!(!vcpu.host().registration().is_enabled());
        }
    }
});
