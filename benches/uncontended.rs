//! Uncontended costs of one thread: lock+unlock per mode and depth, a
//! `try_lock` that fails, an upgrade round trip, and how the cost grows
//! with the number of live nodes.
//!
//! Nodes are reclaimed when nobody holds them, so "warm" and "cold" differ:
//! - `warm`: the harness holds IS on the parent path for the whole bench,
//!   so every ancestor node exists; the leaf itself is created and reclaimed
//!   by each lock+unlock (for X nothing else can hold it).
//! - `cold`: nothing else is held; every node of the path is created and
//!   reclaimed by each lock+unlock.
//! - `leaf_held`: the harness holds IS on the leaf itself, so every node of
//!   the path exists (not possible for X, which IS excludes); this is the
//!   "path whose nodes exist" case of the allocation-free target.
//!
//! ```text
//! cargo bench --bench uncontended
//! cargo bench --bench uncontended -- 'lock_unlock/warm'
//! cargo bench --bench uncontended -- prepared
//! ```

// criterion_group! generates an undocumented pub fn.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hierlock::{LockTree, Mode};

const MODES: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];
const DEPTHS: [usize; 3] = [1, 4, 16];

/// `/c1/c2/.../c{depth}`.
fn path(depth: usize) -> String {
    (1..=depth).map(|i| format!("/c{i}")).collect()
}

/// The parent of `path(depth)` ("" for depth 1: the root, always present).
fn parent(depth: usize) -> String {
    path(depth - 1)
}

fn lock_unlock(c: &mut Criterion) {
    for (kind, hold) in [("warm", Hold::Parent), ("cold", Hold::Nothing)] {
        let mut g = c.benchmark_group(format!("lock_unlock/{kind}"));
        for depth in DEPTHS {
            for mode in MODES {
                bench_one(&mut g, depth, mode, hold);
            }
        }
        g.finish();
    }
    let mut g = c.benchmark_group("lock_unlock/leaf_held");
    for depth in DEPTHS {
        for mode in [Mode::IS, Mode::IX, Mode::S, Mode::SIX] {
            bench_one(&mut g, depth, mode, Hold::Leaf);
        }
    }
    g.finish();
}

#[derive(Clone, Copy)]
enum Hold {
    Nothing,
    Parent,
    Leaf,
}

fn bench_one(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    depth: usize,
    mode: Mode,
    hold: Hold,
) {
    let tree = LockTree::new();
    let p = path(depth);
    let held = match hold {
        Hold::Nothing => None,
        Hold::Parent if depth == 1 => None,
        Hold::Parent => Some(tree.lock(parent(depth).as_str(), Mode::IS).unwrap()),
        Hold::Leaf => Some(tree.lock(p.as_str(), Mode::IS).unwrap()),
    };
    g.bench_function(
        BenchmarkId::new(format!("{mode}"), format!("d{depth}")),
        |b| b.iter(|| drop(black_box(tree.lock(black_box(p.as_str()), mode).unwrap()))),
    );
    drop(held);
    assert_eq!(tree.node_count(), 0);
}

/// Prepared handles (`LockTree::prepare`): lock+unlock with the nodes
/// resolved and pinned once, against one bare `parking_lot::RwLock` write
/// lock+unlock (the target: within 5x of it at depth 4), and the floor that
/// the atomics alone of such a lock set.
fn prepared(c: &mut Criterion) {
    let mut g = c.benchmark_group("prepared");
    let bare = parking_lot::RwLock::new(0u64);
    g.bench_function("bare_rwlock_write", |b| {
        b.iter(|| *black_box(&bare).write() += 1)
    });
    // The floor of any engine with one state word per level: a depth-d
    // lock+unlock is at least d+1 CASes to acquire (root included) and d+1
    // to release, each on its own cache line. Against `bare_rwlock_write`
    // (two atomic RMWs) this says how close to it a Gray lock can get.
    for depth in [1usize, 4] {
        #[repr(align(128))]
        struct Line(AtomicU64);
        let words: Vec<Line> = (0..=depth).map(|_| Line(AtomicU64::new(0))).collect();
        g.bench_function(
            BenchmarkId::new("atomics_floor", format!("d{depth}")),
            |b| {
                b.iter(|| {
                    for w in black_box(&words) {
                        let v = w.0.load(Ordering::Relaxed);
                        let _ =
                            w.0.compare_exchange(v, v + 1, Ordering::Acquire, Ordering::Relaxed);
                    }
                    for w in black_box(&words).iter().rev() {
                        let v = w.0.load(Ordering::Relaxed);
                        let _ =
                            w.0.compare_exchange(v, v - 1, Ordering::Release, Ordering::Relaxed);
                    }
                })
            },
        );
    }
    for depth in DEPTHS {
        let tree = LockTree::new();
        let p = tree.prepare(path(depth).as_str()).unwrap();
        for mode in [Mode::IS, Mode::S, Mode::X] {
            g.bench_function(
                BenchmarkId::new(format!("{mode}"), format!("d{depth}")),
                |b| b.iter(|| drop(black_box(p.lock(mode).unwrap()))),
            );
        }
    }
    // Without stickies (`Builder::sticky(false)`): every level taken and
    // given back each time, as a handle shared by threads or called back
    // often does.
    for depth in DEPTHS {
        let tree = LockTree::builder().sticky(false).build();
        let p = tree.prepare(path(depth).as_str()).unwrap();
        g.bench_function(BenchmarkId::new("unkept/X", format!("d{depth}")), |b| {
            b.iter(|| drop(black_box(p.lock(Mode::X).unwrap())))
        });
    }
    // The price of a call-back: the handle's X on /c1/../c4, then an S on
    // /c1/c2 that the kept holds are in the way of (so it revokes them and
    // the handle's next lock takes every level again), against the same
    // two locks with stickies off.
    for sticky in [true, false] {
        let tree = LockTree::builder().sticky(sticky).build();
        let p = tree.prepare(path(4).as_str()).unwrap();
        let name = if sticky { "kept" } else { "unkept" };
        g.bench_function(BenchmarkId::new("called_back", name), |b| {
            b.iter(|| {
                drop(black_box(p.lock(Mode::X).unwrap()));
                drop(black_box(tree.try_lock("/c1/c2", Mode::S).unwrap()));
            })
        });
    }
    g.finish();
}

/// A `try_lock` that fails: at the leaf (after taking every ancestor's
/// intention, which it must give back) and at the first level.
fn try_lock_fails(c: &mut Criterion) {
    let mut g = c.benchmark_group("try_lock_fails");
    let tree = LockTree::new();
    let p = path(4);
    {
        let _x = tree.lock(p.as_str(), Mode::X).unwrap();
        g.bench_function("at_leaf/d4", |b| {
            b.iter(|| {
                assert!(tree.try_lock(black_box(p.as_str()), Mode::S).is_err());
            })
        });
    }
    {
        let _x = tree.lock("/c1", Mode::X).unwrap();
        g.bench_function("at_level_1/d4", |b| {
            b.iter(|| {
                assert!(tree.try_lock(black_box(p.as_str()), Mode::S).is_err());
            })
        });
    }
    g.finish();
}

/// One guard converted S -> X and back to S (ancestors IS -> IX -> IS).
fn upgrade(c: &mut Criterion) {
    let mut g = c.benchmark_group("upgrade");
    for depth in [1, 4] {
        let tree = LockTree::new();
        let mut guard = tree.lock(path(depth).as_str(), Mode::S).unwrap();
        g.bench_function(
            BenchmarkId::new("S_to_X_and_back", format!("d{depth}")),
            |b| {
                b.iter(|| {
                    guard.upgrade(Mode::X).unwrap();
                    guard.downgrade(Mode::S).unwrap();
                })
            },
        );
    }
    g.finish();
}

/// Lock+unlock S on a random one of `n` held nodes (`/n/{i}`, each held IS
/// by the harness, so all exist): the lookup cost as the table grows.
/// Sizes 10^3 .. 10^6; 10^6 takes about a second to set up.
fn live_nodes(c: &mut Criterion) {
    let mut g = c.benchmark_group("live_nodes");
    for n in [1_000usize, 10_000, 100_000, 1_000_000] {
        let tree = LockTree::new();
        let paths: Vec<String> = (0..n).map(|i| format!("/n/{i}")).collect();
        let held: Vec<_> = paths
            .iter()
            .map(|p| tree.lock(p.as_str(), Mode::IS).unwrap())
            .collect();
        assert_eq!(tree.node_count(), n + 1);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        g.bench_function(BenchmarkId::new("S_random_held_node", n), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let p = &paths[(x % n as u64) as usize];
                drop(black_box(tree.lock(p.as_str(), Mode::S).unwrap()));
            })
        });
        drop(held);
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .without_plots()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(800))
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = lock_unlock, prepared, try_lock_fails, upgrade, live_nodes
}
criterion_main!(benches);
