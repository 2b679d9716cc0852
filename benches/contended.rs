//! Two threads at once, against one thread doing the same: does the work
//! scale? Each scenario is measured with 1 and 2 threads (this is a
//! 2-core machine); criterion reports elements/s = lock+unlock operations
//! per second of all threads together, and at the end this bench prints
//! each scenario's 2-thread throughput relative to 1 thread.
//!
//! Scenarios (every thread holds at most one lock at a time):
//! - `disjoint_trees`: each thread its own `LockTree` (sharing no node):
//!   X on a random one of 1024 rows of `/db/t`, the table held IS.
//! - `share_root`: one tree, thread i on rows of `/t{i}/db/t` (held IS):
//!   the subtrees share only the root.
//! - `hot_s`: every thread S on `/db/hot` (held IS by the harness).
//! - `hot_siblings`: thread i X on `/db/hot/{i}`, the parent held IS.
//! - `db_mix`: rows of `/db/t` (held IS): 99% X on a random row, 1% S on
//!   the table.
//!
//! ```text
//! cargo bench --bench contended
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use hierlock::{LockTree, Mode};

const ROWS: usize = 1024;

#[derive(Clone, Copy)]
enum Scenario {
    DisjointTrees,
    ShareRoot,
    HotS,
    HotSiblings,
    DbMix,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::DisjointTrees,
        Scenario::ShareRoot,
        Scenario::HotS,
        Scenario::HotSiblings,
        Scenario::DbMix,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::DisjointTrees => "disjoint_trees",
            Scenario::ShareRoot => "share_root",
            Scenario::HotS => "hot_s",
            Scenario::HotSiblings => "hot_siblings",
            Scenario::DbMix => "db_mix",
        }
    }

    /// The issue's target for 2 threads relative to 1, if any.
    fn target(self) -> Option<f64> {
        match self {
            Scenario::DisjointTrees => Some(1.8),
            Scenario::ShareRoot => Some(1.6),
            Scenario::HotS | Scenario::HotSiblings => Some(1.5),
            Scenario::DbMix => None,
        }
    }

    /// What thread `i` of `threads` locks; the paths the harness holds IS on.
    fn program(self, i: usize) -> (Vec<String>, Mode, Option<(String, Mode)>, String) {
        let rows = |t: &str| (0..ROWS).map(|r| format!("{t}/{r}")).collect::<Vec<_>>();
        match self {
            Scenario::DisjointTrees => (rows("/db/t"), Mode::X, None, "/db/t".into()),
            Scenario::ShareRoot => {
                let t = format!("/t{i}/db/t");
                (rows(&t), Mode::X, None, t)
            }
            Scenario::HotS => (vec!["/db/hot".into()], Mode::S, None, "/db/hot".into()),
            Scenario::HotSiblings => (
                vec![format!("/db/hot/{i}")],
                Mode::X,
                None,
                "/db/hot".into(),
            ),
            Scenario::DbMix => (
                rows("/db/t"),
                Mode::X,
                Some(("/db/t".into(), Mode::S)),
                "/db/t".into(),
            ),
        }
    }
}

/// Per (scenario, threads): total nanoseconds measured and iterations
/// (one op per thread each).
type Results = BTreeMap<(&'static str, usize), (u128, u64)>;

static RESULTS: Mutex<Results> = Mutex::new(BTreeMap::new());

fn bench_scenario(c: &mut Criterion, sc: Scenario) {
    let mut g = c.benchmark_group(format!("contended/{}", sc.name()));
    for threads in [1usize, 2] {
        let trees: Vec<LockTree> = match sc {
            Scenario::DisjointTrees => (0..threads).map(|_| LockTree::new()).collect(),
            _ => vec![LockTree::new()],
        };
        let programs: Vec<_> = (0..threads).map(|i| sc.program(i)).collect();
        let warm: Vec<_> = programs
            .iter()
            .enumerate()
            .map(|(i, p)| trees[i % trees.len()].lock(p.3.as_str(), Mode::IS).unwrap())
            .collect();
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(threads);
                let elapsed = std::thread::scope(|s| {
                    let handles: Vec<_> = programs
                        .iter()
                        .enumerate()
                        .map(|(i, (paths, mode, rare, _))| {
                            let tree = &trees[i % trees.len()];
                            let barrier = &barrier;
                            s.spawn(move || {
                                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1);
                                let n = paths.len() as u64;
                                barrier.wait();
                                let t0 = Instant::now();
                                for _ in 0..iters {
                                    x ^= x << 13;
                                    x ^= x >> 7;
                                    x ^= x << 17;
                                    let g = match rare {
                                        Some((p, m)) if x % 100 == 0 => tree.lock(p.as_str(), *m),
                                        _ => tree
                                            .lock(paths[((x >> 8) % n) as usize].as_str(), *mode),
                                    };
                                    drop(black_box(g.unwrap()));
                                }
                                t0.elapsed()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap())
                        .max()
                        .unwrap()
                });
                let mut r = RESULTS.lock().unwrap();
                let e = r.entry((sc.name(), threads)).or_default();
                e.0 += elapsed.as_nanos();
                e.1 += iters;
                elapsed
            })
        });
        drop(warm);
    }
    g.finish();
}

fn print_scaling() {
    let r = RESULTS.lock().unwrap();
    println!("\nThroughput, all threads together (mean over every sample):\n");
    println!("| scenario | 1 thread | 2 threads | 2t / 1t | target |");
    println!("|---|---:|---:|---:|---:|");
    for sc in Scenario::ALL {
        let ops = |t: usize| {
            r.get(&(sc.name(), t))
                .filter(|(ns, _)| *ns > 0)
                .map(|&(ns, it)| t as f64 * it as f64 / (ns as f64 / 1e9))
        };
        let (Some(one), Some(two)) = (ops(1), ops(2)) else {
            continue;
        };
        let ratio = two / one;
        let target = sc.target().map_or("-".to_string(), |t| {
            format!(">= {t:.1}x: {}", if ratio >= t { "met" } else { "missed" })
        });
        println!(
            "| {} | {:.2} M/s | {:.2} M/s | {ratio:.2}x | {target} |",
            sc.name(),
            one / 1e6,
            two / 1e6
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .without_plots()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for sc in Scenario::ALL {
        bench_scenario(&mut c, sc);
    }
    c.final_summary();
    // `cargo bench -- --test` runs each bench once: no figures to show.
    if !std::env::args().any(|a| a == "--test") {
        print_scaling();
    }
}
