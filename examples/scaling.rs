//! Scaling on hot nodes: hierlock alone, one thread against two, in
//! alternating pairs so both see the same machine.
//!
//! ```text
//! cargo run --release --example scaling                 # 5 pairs of 1 s per workload
//! cargo run --release --example scaling -- --pairs 3 --millis 500 --bias never
//! ```
//!
//! Workloads (each thread, over and over):
//! - `hot S`: S on `/db/hot` (IS held on it by the harness);
//! - `hot S, prepared`: the same through a `Prepared` handle;
//! - `siblings`: X on `/db/hot/{thread}`;
//! - `disjoint`: X on a random one of 1024 rows of `/u{thread}/db/t`
//!   (the threads share only the root).
//! - `separate trees`: the same, each thread in a `LockTree` of its own
//!   (the threads share no node).
//!
//! The comparison harness (`examples/compare.rs`) runs every baseline in the
//! same run; this one only hierlock, in longer cells, which on a shared VM
//! gives steadier 2-over-1 ratios.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hierlock::{Bias, LockTree, Mode};

#[derive(Parser)]
#[command(about = "2 threads over 1 on hot nodes, hierlock alone")]
struct Args {
    /// Alternating (1 thread, 2 threads) pairs per workload.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// Milliseconds per cell.
    #[arg(long, default_value_t = 1000)]
    millis: u64,
    /// Reader bias: never, adaptive (the default) or always.
    #[arg(long, default_value = "adaptive")]
    bias: String,
    /// Only workloads whose name contains this.
    #[arg(long)]
    filter: Option<String>,
}

#[derive(Clone, Copy)]
enum Work {
    HotS,
    HotSPrepared,
    Siblings,
    Disjoint,
    Separate,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::HotS => "hot S",
            Work::HotSPrepared => "hot S, prepared",
            Work::Siblings => "siblings",
            Work::Disjoint => "disjoint",
            Work::Separate => "separate trees",
        }
    }
}

/// Lock+unlock operations per second, all threads together.
fn run(work: Work, threads: usize, bias: Bias, cell: Duration) -> f64 {
    let tree = LockTree::builder().bias(bias).build();
    let _warm = tree.lock("/db/hot", Mode::IS).unwrap();
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..threads {
            let (tree, stop, total) = (&tree, &stop, &total);
            s.spawn(move || {
                let own = LockTree::builder().bias(bias).build();
                let tree = match work {
                    Work::Separate => &own,
                    _ => tree,
                };
                let hot = tree.prepare("/db/hot").unwrap();
                let sibling = format!("/db/hot/{i}");
                let _table = tree.lock(format!("/u{i}/db/t").as_str(), Mode::IS).unwrap();
                let rows: Vec<String> = (0..1024).map(|r| format!("/u{i}/db/t/{r}")).collect();
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ i as u64;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1000 {
                        let g = match work {
                            Work::HotS => tree.lock("/db/hot", Mode::S),
                            Work::HotSPrepared => hot.lock(Mode::S),
                            Work::Siblings => tree.lock(sibling.as_str(), Mode::X),
                            Work::Disjoint | Work::Separate => {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                tree.lock(rows[(x >> 20) as usize % rows.len()].as_str(), Mode::X)
                            }
                        };
                        drop(g.unwrap());
                    }
                    n += 1000;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(cell);
        stop.store(true, Ordering::Relaxed);
    });
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let bias = match args.bias.as_str() {
        "never" => Bias::Never,
        "always" => Bias::Always,
        _ => Bias::Adaptive,
    };
    let cell = Duration::from_millis(args.millis);
    println!("| workload | 1 thread | 2 threads | 2 over 1 (each pair) |");
    println!("|---|---:|---:|---|");
    for work in [
        Work::HotS,
        Work::HotSPrepared,
        Work::Siblings,
        Work::Disjoint,
        Work::Separate,
    ] {
        if let Some(f) = &args.filter {
            if !work.name().contains(f.as_str()) {
                continue;
            }
        }
        let mut ratios = Vec::new();
        let (mut one, mut two) = (0.0, 0.0);
        for _ in 0..args.pairs {
            let a = run(work, 1, bias, cell);
            let b = run(work, 2, bias, cell);
            ratios.push(format!("{:.2}x", b / a));
            one += a;
            two += b;
        }
        let n = args.pairs.max(1) as f64;
        println!(
            "| {} | {:.2} M/s | {:.2} M/s | {} |",
            work.name(),
            one / n / 1e6,
            two / n / 1e6,
            ratios.join(", ")
        );
    }
}
