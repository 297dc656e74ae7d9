//! Simulator throughput: cost per protocol event as the number of simulated
//! vCPUs grows (each vCPU has its own struct in one shared guest memory).

use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lazy_tscdeadline_host::LvtTimer;
use lazy_tscdeadline_sim::{SimVcpu, TIMER_VECTOR};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Events per vCPU per iteration: one trap, `DEPTH` lazy pushes, one
/// expiry that re-arms and one that fires.
const DEPTH: u64 = 16;

fn vcpus(n: usize) -> Vec<SimVcpu> {
    let mem = Rc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
    (0..n)
        .map(|i| {
            let mut v = SimVcpu::new(mem.clone(), 0x1000 + 64 * i as u64, true);
            v.set_lvt(LvtTimer::tsc_deadline(TIMER_VECTOR).raw());
            v.register().unwrap();
            v
        })
        .collect()
}

fn sim(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim_per_event");
    for n in [1usize, 8, 64] {
        let mut cpus = vcpus(n);
        g.throughput(Throughput::Elements(n as u64 * (DEPTH + 3)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for v in cpus.iter_mut() {
                    let now = v.now();
                    v.write_deadline(now + 100);
                    for k in 1..=DEPTH {
                        v.write_deadline(now + 100 + k);
                    }
                    v.advance(100);
                    v.advance(DEPTH);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sim);
criterion_main!(benches);
