//! The collaborators of the host timer on KVM: the guest TSC, a timerfd host
//! timer, and MSI injection into the in-kernel LAPIC.

use std::borrow::Borrow;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use kvm_bindings::{kvm_msi, kvm_msr_entry, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};
use lazy_tscdeadline_host::{GuestClock, HostTimer, InterruptSink};
use vmm_sys_util::timerfd::TimerFd;

use crate::error::{KvmError, SetupError};

/// `IA32_TSC`.
const MSR_IA32_TSC: u32 = 0x10;

/// The largest difference between the guest and the host TSC rate that
/// [`GuestTsc::from_vcpu`] accepts as "no scaling" (the measurement's own
/// error is a few 0.01%; real scaling between TSC frequencies is larger).
pub const MAX_RATE_ERROR: f64 = 0.005;

/// One (host TSC, guest TSC) pair: the guest's `IA32_TSC` read with
/// `KVM_GET_MSRS` between two host TSC reads, the narrowest bracket of
/// five, at its middle.
fn tsc_sample(vcpu: &VcpuFd) -> Result<(u64, u64), SetupError> {
    let err = |errno| SetupError::Kvm {
        op: "KVM_GET_MSRS(IA32_TSC)",
        source: KvmError::new(errno),
    };
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| err(libc::ENOMEM))?;
    let mut best: Option<(u64, u64, u64)> = None;
    for _ in 0..5 {
        let before = rdtsc();
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(SetupError::kvm("KVM_GET_MSRS(IA32_TSC)"))?;
        let after = rdtsc();
        if n != 1 {
            return Err(err(libc::EINVAL));
        }
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, before + width / 2, msrs.as_slice()[0].data));
        }
    }
    let (_, host, guest) = best.ok_or_else(|| err(libc::EINVAL))?;
    Ok((host, guest))
}

/// The host TSC.
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no side effects and is usable in user mode on every
    // x86-64 host KVM runs on.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The guest TSC, read from the host TSC: `guest = host + offset` (modulo
/// 2^64). KVM's TSC offset is per vCPU; VMMs keep it equal across vCPUs.
///
/// TSC scaling is not supported: [`from_vcpu`](Self::from_vcpu) refuses a
/// guest TSC that runs at another rate than the host's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestTsc {
    offset: u64,
    khz: u32,
}

impl GuestTsc {
    /// A guest TSC `offset` ticks ahead of the host TSC (wrapping), running
    /// at `khz` (the guest's TSC frequency, as `KVM_GET_TSC_KHZ` gives it).
    pub const fn new(offset: u64, khz: u32) -> Self {
        GuestTsc { offset, khz }
    }

    /// Measures `vcpu`'s guest TSC against the host TSC: its offset, from a
    /// `KVM_GET_MSRS` of `IA32_TSC` bracketed by two host TSC reads (the
    /// narrowest of a few), and its rate, from two such samples 10 ms apart,
    /// which must agree to [`MAX_RATE_ERROR`] (no TSC scaling).
    pub fn from_vcpu(vcpu: &VcpuFd) -> Result<Self, SetupError> {
        let khz = vcpu
            .get_tsc_khz()
            .map_err(SetupError::kvm("KVM_GET_TSC_KHZ"))?;
        let (h0, g0) = tsc_sample(vcpu)?;
        std::thread::sleep(Duration::from_millis(10));
        let (h1, g1) = tsc_sample(vcpu)?;
        let ratio = g1.wrapping_sub(g0) as f64 / h1.wrapping_sub(h0).max(1) as f64;
        if (ratio - 1.0).abs() > MAX_RATE_ERROR {
            return Err(SetupError::TscScaling { ratio });
        }
        Ok(GuestTsc {
            offset: g1.wrapping_sub(h1),
            khz,
        })
    }

    /// Guest TSC ticks ahead of the host TSC.
    pub const fn offset(&self) -> u64 {
        self.offset
    }

    /// The guest TSC frequency in kHz.
    pub const fn khz(&self) -> u32 {
        self.khz
    }

    /// CLOCK_MONOTONIC time from now until guest TSC `deadline`, rounded up
    /// so that a timer never expires before the deadline on account of the
    /// conversion; zero for a deadline already reached.
    pub fn until(&self, deadline: u64) -> Duration {
        cycles_to_duration(deadline.saturating_sub(self.now()), self.khz)
    }
}

/// `cycles` TSC ticks at `khz`, rounded up to the nanosecond.
fn cycles_to_duration(cycles: u64, khz: u32) -> Duration {
    let ns = (u128::from(cycles) * 1_000_000).div_ceil(u128::from(khz.max(1)));
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

impl GuestClock for GuestTsc {
    fn now(&self) -> u64 {
        rdtsc().wrapping_add(self.offset)
    }
}

/// A [`HostTimer`] over a non-blocking CLOCK_MONOTONIC timerfd.
///
/// The fd becomes readable when the timer expires: register it with the
/// VMM's epoll loop or a timer thread and call
/// [`VcpuTimer::on_expiry`](crate::VcpuTimer::on_expiry) then.
#[derive(Debug)]
pub struct TimerFdTimer {
    fd: TimerFd,
    clock: GuestTsc,
}

impl TimerFdTimer {
    /// A disarmed timer whose deadlines are on `clock`.
    pub fn new(clock: GuestTsc) -> Result<Self, SetupError> {
        let fd = TimerFd::new().map_err(|e| SetupError::TimerFd(e.into()))?;
        // SAFETY: F_GETFL/F_SETFL on a file descriptor this function owns.
        let ok = unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        if !ok {
            return Err(SetupError::TimerFd(std::io::Error::last_os_error()));
        }
        Ok(TimerFdTimer { fd, clock })
    }

    /// Consumes an expiry: true if the timer expired since the last call
    /// (false if a re-arm or a disarm came first).
    pub fn take_expiry(&self) -> std::io::Result<bool> {
        let mut expirations = 0u64;
        // SAFETY: reads at most 8 bytes into `expirations` from the timerfd
        // this timer owns.
        let r = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut expirations as *mut u64).cast(),
                8,
            )
        };
        match r {
            8 => Ok(true),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}

impl AsRawFd for TimerFdTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl HostTimer for TimerFdTimer {
    type Error = std::io::Error;

    fn arm(&mut self, deadline: u64) -> Result<(), Self::Error> {
        // A zero duration would disarm the timerfd: expire "now" instead.
        let dur = self.clock.until(deadline).max(Duration::from_nanos(1));
        self.fd.reset(dur, None).map_err(Into::into)
    }

    fn disarm(&mut self) -> Result<(), Self::Error> {
        self.fd.clear().map_err(Into::into)
    }
}

/// Raises a vCPU's LAPIC timer interrupt with `KVM_SIGNAL_MSI`: a fixed,
/// edge-triggered MSI to its x2APIC ID. IDs above 255 need
/// [`enable_32bit_apic_ids`](crate::setup::enable_32bit_apic_ids): KVM
/// then reads bits 31:8 of the ID from `address_hi`.
///
/// `V` is how the VMM holds its VM: `Arc<VmFd>`, `&VmFd` or `VmFd`.
#[derive(Debug)]
pub struct MsiInjector<V> {
    vm: V,
    apic_id: u32,
    dropped: u64,
}

/// The fixed, edge-triggered MSI of `vector` to x2APIC ID `apic_id`: ID
/// bits 7:0 in `address_lo`, bits 31:8 in `address_hi`.
pub fn msi_to(apic_id: u32, vector: u8) -> kvm_msi {
    kvm_msi {
        address_lo: 0xfee0_0000 | ((apic_id & 0xff) << 12),
        address_hi: apic_id & 0xffff_ff00,
        data: u32::from(vector),
        ..Default::default()
    }
}

impl<V: Borrow<VmFd>> MsiInjector<V> {
    /// Interrupts for the vCPU with x2APIC ID `apic_id`.
    pub fn new(vm: V, apic_id: u32) -> Self {
        MsiInjector {
            vm,
            apic_id,
            dropped: 0,
        }
    }

    /// The destination x2APIC ID.
    pub fn apic_id(&self) -> u32 {
        self.apic_id
    }

    /// Injections KVM did not deliver (`KVM_SIGNAL_MSI` returned 0: the
    /// destination LAPIC is disabled), as hardware drops them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<V: Borrow<VmFd>> InterruptSink for MsiInjector<V> {
    type Error = KvmError;

    fn inject(&mut self, vector: u8) -> Result<(), Self::Error> {
        if self.vm.borrow().signal_msi(msi_to(self.apic_id, vector))? == 0 {
            self.dropped += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_rounds_up_and_saturates() {
        // One tick at 3 kHz is 333333.3 ns.
        assert_eq!(cycles_to_duration(1, 3), Duration::from_nanos(333_334));
        assert_eq!(cycles_to_duration(3, 3), Duration::from_millis(1));
        assert_eq!(
            cycles_to_duration(2_600_000, 2_600_000),
            Duration::from_millis(1)
        );
        assert_eq!(
            cycles_to_duration(u64::MAX, 1),
            Duration::from_nanos(u64::MAX)
        );
        let clock = GuestTsc::new(0, 1_000_000);
        assert_eq!(clock.until(0), Duration::ZERO);
        let d = clock.until(clock.now() + 1_000_000);
        assert!(
            d <= Duration::from_millis(1) && d > Duration::from_micros(100),
            "{d:?}"
        );
    }

    #[test]
    fn msi_carries_the_whole_x2apic_id() {
        let m = msi_to(3, 0xec);
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_3000, 0, 0xec));
        let m = msi_to(0x1_2345, 0x30);
        assert_eq!((m.address_lo, m.address_hi), (0xfee4_5000, 0x1_2300));
    }

    #[test]
    fn offset_moves_the_guest_clock() {
        let a = GuestTsc::new(0, 1000);
        let b = GuestTsc::new(1 << 40, 1000);
        let (ta, tb) = (a.now(), b.now());
        assert!(tb.wrapping_sub(ta) >= 1 << 40);
        assert!(tb.wrapping_sub(ta) < (1 << 40) + (1 << 32));
    }
}
