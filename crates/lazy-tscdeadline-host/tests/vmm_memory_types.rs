//! The memory types real VMMs hand the timer: Cloud Hypervisor's
//! `GuestMemoryAtomic<GuestMemoryMmap<AtomicBitmap>>`, shared by a vCPU
//! thread and a timer thread, and a memory hot-plug (a new snapshot of the
//! regions) between two operations.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lazy_tscdeadline_abi::{MSR_IA32_TSC_DEADLINE, MSR_KVM_LAZY_TSCDEADLINE};
use lazy_tscdeadline_host::vm_memory::bitmap::AtomicBitmap;
use lazy_tscdeadline_host::vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap,
};
use lazy_tscdeadline_host::{
    Config, GuestClock, HostTimer, InterruptSink, KickOutcome, LvtTimer, TscDeadlineTimer,
};

type Memory = GuestMemoryAtomic<GuestMemoryMmap<AtomicBitmap>>;

#[derive(Clone, Default)]
struct Clock(Arc<AtomicU64>);
impl GuestClock for Clock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
#[derive(Default)]
struct Timer(Option<u64>);
impl HostTimer for Timer {
    type Error = Infallible;
    fn arm(&mut self, d: u64) -> Result<(), Infallible> {
        self.0 = Some(d);
        Ok(())
    }
    fn disarm(&mut self) -> Result<(), Infallible> {
        self.0 = None;
        Ok(())
    }
}
#[derive(Default)]
struct Irq(Vec<u8>);
impl InterruptSink for Irq {
    type Error = Infallible;
    fn inject(&mut self, v: u8) -> Result<(), Infallible> {
        self.0.push(v);
        Ok(())
    }
}

fn mmap(size: usize) -> GuestMemoryMmap<AtomicBitmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
}

#[test]
fn cloud_hypervisors_memory_type_across_threads_and_a_hotplug() {
    let mem: Memory = GuestMemoryAtomic::new(mmap(0x10000));
    let clock = Clock::default();
    let timer = TscDeadlineTimer::new(
        mem.clone(),
        Timer::default(),
        clock.clone(),
        Irq::default(),
        LvtTimer::tsc_deadline(0xec),
        Config::new().with_lazy_advertised(true),
    );
    let timer = Arc::new(Mutex::new(timer));
    // vCPU thread: registers, traps a deadline, pushes it later lazily.
    let vcpu = {
        let (timer, mem) = (timer.clone(), mem.clone());
        std::thread::spawn(move || {
            let mut t = timer.lock().unwrap();
            t.write_msr(MSR_KVM_LAZY_TSCDEADLINE, 0x1000 | 1).unwrap();
            mem.memory()
                .write_obj(100u64, GuestAddress(0x1008))
                .unwrap();
            t.write_msr(MSR_IA32_TSC_DEADLINE, 100).unwrap();
            drop(t);
            mem.memory()
                .write_obj(300u64, GuestAddress(0x1008))
                .unwrap();
        })
    };
    vcpu.join().unwrap();
    // Memory hot-plug: a larger map replaces the regions; the registered
    // struct's bytes are carried over, as a VMM's hot-plug does.
    let mut old = [0u8; 64];
    mem.memory()
        .read_slice(&mut old, GuestAddress(0x1000))
        .unwrap();
    let bigger = mmap(0x20000);
    bigger.write_slice(&old, GuestAddress(0x1000)).unwrap();
    mem.lock().unwrap().replace(bigger);
    // Timer thread: the expiry at 100 finds pending 300 in the new map.
    let kick = {
        let (timer, clock) = (timer.clone(), clock.clone());
        std::thread::spawn(move || {
            clock.0.store(100, Ordering::SeqCst);
            timer.lock().unwrap().kick().unwrap()
        })
    };
    assert_eq!(kick.join().unwrap(), KickOutcome::Rearmed(300));
    assert_eq!(
        mem.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
        300,
        "armed not published into the current memory"
    );
    clock.0.store(300, Ordering::SeqCst);
    let mut t = timer.lock().unwrap();
    assert_eq!(t.kick().unwrap(), KickOutcome::Injected);
    assert_eq!(t.interrupts().0, [0xec]);
}
