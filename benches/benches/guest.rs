//! The guest's lazy deadline write against the instructions it is made of.

use std::hint::black_box;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use lazy_tscdeadline_abi::{LazyTscDeadline, MSR_IA32_TSC_DEADLINE};
use lazy_tscdeadline_guest::{AtomicSharedFields, DeadlineSetter, MsrWriter, WriteOutcome};

/// Accepts the registration; a deadline write would mean the measured
/// path trapped.
struct NoMsr;
impl MsrWriter for NoMsr {
    fn write_msr(&mut self, index: u32, _: u64) {
        assert_ne!(index, MSR_IA32_TSC_DEADLINE, "the lazy path must not trap");
    }
}

fn guest(c: &mut Criterion) {
    let mut g = c.benchmark_group("guest_write");
    // Play the host: a timer is armed for TSC 1, so every later write defers.
    let mut area = Box::new(LazyTscDeadline {
        armed: 1,
        ..LazyTscDeadline::default()
    });
    // SAFETY: `area` outlives the setter and is only accessed through it.
    let shared = unsafe { AtomicSharedFields::new(&mut *area) };
    let mut setter = DeadlineSetter::new(NoMsr);
    setter.register(shared, 0x1000).unwrap();
    let mut t = 2u64;
    g.bench_function("lazy_set_next_deadline", |b| {
        b.iter(|| {
            t += 1;
            assert_eq!(
                setter.set_next_deadline(black_box(t)),
                WriteOutcome::Deferred
            );
        })
    });

    let pending = AtomicU64::new(0);
    let armed = AtomicU64::new(1);
    let mut t = 2u64;
    g.bench_function("floor_store_fence_load", |b| {
        b.iter(|| {
            t += 1;
            pending.store(black_box(t), Ordering::Relaxed);
            fence(Ordering::SeqCst);
            black_box(armed.load(Ordering::Relaxed))
        })
    });
    let mut t = 2u64;
    g.bench_function("plain_store", |b| {
        b.iter(|| {
            t += 1;
            pending.store(black_box(t), Ordering::Relaxed);
        })
    });
    g.finish();
}

criterion_group!(benches, guest);
criterion_main!(benches);
