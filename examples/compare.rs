//! The side-by-side comparison: the same workloads for hierlock and the
//! lock designs a user would otherwise pick, measured in one run.
//!
//! ```text
//! cargo run --release --example compare                 # ~1 minute; writes docs/bench/
//! cargo run --release --example compare -- --quick      # a smoke run (CI)
//! cargo run --release --example compare -- --threads 1,2 --duration 500ms
//! ```
//!
//! hierlock runs twice: plain `LockTree::lock` on every path, and with the
//! workload's tables prepared once (`LockTree::prepare`, rows through
//! `lock_child`), as an engine holding a handle per open table would.
//!
//! Baselines (see `compare/baselines.rs`, each checked against its claimed
//! semantics before it is measured):
//! - one global `parking_lot::RwLock<()>`: shared for IS/S, exclusive for
//!   IX/SIX/X — correct, and it serializes every writer;
//! - a textbook lock manager: `Mutex<HashMap<path, [u32; 5]>>` + `Condvar`,
//!   Gray's matrix on every ancestor prefix under the one mutex;
//! - hilok's design: per-node RwLocks in a map under one mutex, shared locks
//!   on ancestors (its read does not protect descendants);
//! - per-path RwLocks in a `DashMap`, no hierarchy: an upper bound with
//!   WRONG semantics.
//!
//! Each cell runs every implementation `--rounds` times, interleaved, for
//! `--duration / rounds` each, and reports the median; ratios are computed
//! within this one run.

#[path = "compare/baselines.rs"]
mod baselines;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use baselines::{
    FlatDashMap, GlobalRwLock, Hierlock, HierlockPrepared, HilokDesign, Locker, Semantics, Textbook,
};
use clap::Parser;
use hierlock::Mode;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "hierlock vs the baselines, same workloads, one run")]
struct Opts {
    /// Time per cell (workload x threads x implementation), e.g. 300ms, 1s.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    duration: Duration,
    /// Thread counts to run the multi-thread workloads with.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    threads: Vec<usize>,
    /// Interleaved rounds per cell; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A smoke run for CI: a few ms per cell, one round, writes nothing
    /// unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Where to write compare.md and compare.svg (default docs/bench, not
    /// with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write no files.
    #[arg(long)]
    no_write: bool,
    /// Only workloads whose name contains this.
    #[arg(long)]
    filter: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|e| format!("{s}: {e}"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        _ => return Err(format!("{s}: unit must be s, ms or us")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A workload: what every thread does, over and over.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// One thread: X on `/t/a/b/c` at the given depth (1 or 4), the parent
    /// held in IS by the harness (ancestors warm; the leaf is created and
    /// reclaimed by every op, as X excludes keeping it).
    UncontendedX { depth: usize },
    /// One thread: S on a depth-4 path whose nodes all exist (the harness
    /// holds IS on the leaf itself).
    UncontendedSWarm,
    /// Thread i: X on a random one of 1024 rows of its own table
    /// `/u{i}/db/t`; the subtrees share only the root.
    Disjoint,
    /// All threads: S on the same node `/db/hot`.
    HotS,
    /// Thread i: X on `/db/hot/{i}`, siblings under one hot parent.
    Siblings,
    /// All threads on table `/db/t`: 99% X on a random one of 1024 rows
    /// (IX on the table), 1% S on the table.
    DbMix,
}

const ROWS: usize = 1024;

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::UncontendedX { depth: 1 } => "uncontended X, depth 1",
            Work::UncontendedX { .. } => "uncontended X, depth 4",
            Work::UncontendedSWarm => "uncontended S, depth 4, nodes exist",
            Work::Disjoint => "disjoint subtrees (X on rows)",
            Work::HotS => "S on one hot node",
            Work::Siblings => "X on siblings, hot parent",
            Work::DbMix => "db mix: 99% X row, 1% S table",
        }
    }

    fn single_threaded(self) -> bool {
        matches!(self, Work::UncontendedX { .. } | Work::UncontendedSWarm)
    }

    /// Paths the harness holds in IS for the run (to keep them warm).
    fn warm(self, threads: usize) -> Vec<String> {
        match self {
            Work::UncontendedX { depth: 1 } => vec![],
            Work::UncontendedX { .. } => vec!["/t/a/b".into()],
            Work::UncontendedSWarm => vec!["/t/a/b/c".into()],
            Work::Disjoint => (0..threads).map(|i| format!("/u{i}/db/t")).collect(),
            Work::HotS | Work::Siblings => vec!["/db/hot".into()],
            Work::DbMix => vec!["/db/t".into()],
        }
    }

    /// The paths a user would prepare once for this workload (its tables;
    /// the fixed path of the uncontended ones).
    fn prepared(self, threads: usize) -> Vec<String> {
        match self {
            Work::UncontendedX { depth: 1 } => vec!["/t".into()],
            Work::UncontendedX { .. } | Work::UncontendedSWarm => vec!["/t/a/b/c".into()],
            _ => self.warm(threads),
        }
    }

    /// Thread `i`'s program: the paths it picks from and how it picks.
    fn program(self, i: usize) -> Program {
        let rows = |prefix: &str| (0..ROWS).map(|r| format!("{prefix}/{r}")).collect();
        match self {
            Work::UncontendedX { depth: 1 } => Program::fixed("/t", Mode::X),
            Work::UncontendedX { .. } => Program::fixed("/t/a/b/c", Mode::X),
            Work::UncontendedSWarm => Program::fixed("/t/a/b/c", Mode::S),
            Work::Disjoint => Program {
                paths: rows(&format!("/u{i}/db/t")),
                mode: Mode::X,
                rare: None,
            },
            Work::HotS => Program::fixed("/db/hot", Mode::S),
            Work::Siblings => Program::fixed(&format!("/db/hot/{i}"), Mode::X),
            Work::DbMix => Program {
                paths: rows("/db/t"),
                mode: Mode::X,
                rare: Some(("/db/t".into(), Mode::S)),
            },
        }
    }
}

/// What one thread does: lock a random path of `paths` in `mode`, or, one
/// time in a hundred, `rare`.
struct Program {
    paths: Vec<String>,
    mode: Mode,
    rare: Option<(String, Mode)>,
}

impl Program {
    fn fixed(path: &str, mode: Mode) -> Program {
        Program {
            paths: vec![path.into()],
            mode,
            rare: None,
        }
    }
}

/// xorshift64*: the same cheap generator for every implementation.
struct Rng(u64);

impl Rng {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Runs `work` on `threads` threads for `dur`; returns ops per second.
fn run<L: Locker + Default>(work: Work, threads: usize, dur: Duration) -> f64 {
    let mut locker = L::default();
    locker.prepare(&work.prepared(threads));
    let locker = locker;
    let warm_paths = work.warm(threads);
    let warm: Vec<_> = warm_paths.iter().map(|p| locker.hold_warm(p)).collect();
    let programs: Vec<Program> = (0..threads).map(|i| work.program(i)).collect();
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let start = Barrier::new(threads + 1);
    let elapsed = std::thread::scope(|s| {
        for (i, prog) in programs.iter().enumerate() {
            let (locker, stop, total, start) = (&locker, &stop, &total, &start);
            s.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1234_5678_9ABC_DEF1));
                let n = prog.paths.len() as u64;
                let mut ops = 0u64;
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        let r = rng.next();
                        let g = match &prog.rare {
                            Some((p, m)) if r % 100 == 0 => locker.lock(p, *m),
                            _ => {
                                let p = &prog.paths[((r >> 8) % n) as usize];
                                locker.lock(p, prog.mode)
                            }
                        };
                        drop(std::hint::black_box(g));
                    }
                    ops += 64;
                }
                total.fetch_add(ops, Ordering::Relaxed);
            });
        }
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        // Threads finish their batch of 64; count that time too.
        t0
    });
    let secs = elapsed.elapsed().as_secs_f64();
    drop(warm);
    total.load(Ordering::Relaxed) as f64 / secs
}

/// The implementations, in table order.
const IMPLS: [&str; 6] = [
    Hierlock::NAME,
    HierlockPrepared::NAME,
    GlobalRwLock::NAME,
    Textbook::NAME,
    HilokDesign::NAME,
    FlatDashMap::NAME,
];

fn run_impl(idx: usize, work: Work, threads: usize, dur: Duration) -> f64 {
    match idx {
        0 => run::<Hierlock>(work, threads, dur),
        1 => run::<HierlockPrepared>(work, threads, dur),
        2 => run::<GlobalRwLock>(work, threads, dur),
        3 => run::<Textbook>(work, threads, dur),
        4 => run::<HilokDesign>(work, threads, dur),
        _ => run::<FlatDashMap>(work, threads, dur),
    }
}

/// One row of results.
struct Row {
    work: Work,
    threads: usize,
    /// Median ops/s per implementation, in `IMPLS` order.
    ops: [f64; 6],
}

/// The checked-out commit (with "+changes" if the work tree differs), where
/// `git` can tell.
fn git_commit() -> Option<String> {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty = run(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit} (+ uncommitted changes in src/)")
    } else {
        commit
    })
}

/// The first three fields of /proc/loadavg, where there is one.
fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fmt_ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn semantics_note(s: Semantics) -> &'static str {
    match s {
        Semantics::Gray => "Gray's protocol",
        Semantics::Global => "correct, serializes all writers",
        Semantics::HilokRead => "S does not protect descendants",
        Semantics::Flat => "WRONG: no hierarchy, upper bound",
    }
}

fn smoke() -> String {
    let results = [
        (
            Hierlock::NAME,
            Hierlock::SEMANTICS,
            baselines::smoke_check::<Hierlock>(),
        ),
        (
            HierlockPrepared::NAME,
            HierlockPrepared::SEMANTICS,
            baselines::smoke_check::<HierlockPrepared>(),
        ),
        (
            GlobalRwLock::NAME,
            GlobalRwLock::SEMANTICS,
            baselines::smoke_check::<GlobalRwLock>(),
        ),
        (
            Textbook::NAME,
            Textbook::SEMANTICS,
            baselines::smoke_check::<Textbook>(),
        ),
        (
            HilokDesign::NAME,
            HilokDesign::SEMANTICS,
            baselines::smoke_check::<HilokDesign>(),
        ),
        (
            FlatDashMap::NAME,
            FlatDashMap::SEMANTICS,
            baselines::smoke_check::<FlatDashMap>(),
        ),
    ];
    let mut md = String::new();
    let _ = write!(md, "| while held, is this granted? |");
    for (name, _, _) in &results {
        let _ = write!(md, " {name} |");
    }
    md.push('\n');
    md.push_str("|---|");
    md.push_str(&"---|".repeat(results.len()));
    md.push('\n');
    for (i, claim) in baselines::claim_names().enumerate() {
        let _ = write!(md, "| {claim} |");
        for (_, _, r) in &results {
            let _ = write!(md, " {} |", if r[i].1 { "yes" } else { "no" });
        }
        md.push('\n');
    }
    let _ = write!(md, "| semantics |");
    for (_, sem, _) in &results {
        let _ = write!(md, " {} |", semantics_note(*sem));
    }
    md.push('\n');
    md
}

fn table(rows: &[Row]) -> String {
    let mut md = String::new();
    md.push_str("| workload | threads |");
    for name in IMPLS {
        let _ = write!(md, " {name} |");
    }
    md.push_str(" prepared ÷ textbook |");
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(IMPLS.len() + 1));
    md.push('\n');
    for r in rows {
        let _ = write!(md, "| {} | {} |", r.work.name(), r.threads);
        let h = r.ops[0];
        let _ = write!(md, " {} |", fmt_ops(h));
        // The prepared column: its ops/s over plain hierlock's.
        let _ = write!(md, " {} (÷{:.2}) |", fmt_ops(r.ops[1]), r.ops[1] / h);
        for &o in &r.ops[2..] {
            let _ = write!(md, " {} (×{:.2}) |", fmt_ops(o), h / o);
        }
        let _ = write!(md, " {:.2}x |", r.ops[1] / r.ops[3]);
        md.push('\n');
    }
    md
}

/// Each implementation's throughput at t threads over its own at 1 thread,
/// for the workloads run at several thread counts.
fn scaling(rows: &[Row]) -> String {
    let mut md = String::new();
    let multi: Vec<&Row> = rows.iter().filter(|r| r.threads > 1).collect();
    if multi.is_empty() {
        return md;
    }
    md.push_str("\nScaling: ops/s at t threads ÷ the same implementation's ops/s at 1 thread.\n\n");
    md.push_str("| workload | threads |");
    for name in IMPLS {
        let _ = write!(md, " {name} |");
    }
    md.push_str("\n|---|---:|");
    md.push_str(&"---:|".repeat(IMPLS.len()));
    md.push('\n');
    for r in multi {
        let Some(one) = rows
            .iter()
            .find(|o| o.threads == 1 && o.work.name() == r.work.name())
        else {
            continue;
        };
        let _ = write!(md, "| {} | {} |", r.work.name(), r.threads);
        for (o, base) in r.ops.iter().zip(one.ops) {
            let _ = write!(md, " {:.2}x |", o / base);
        }
        md.push('\n');
    }
    md
}

fn chart(rows: &[Row], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let colors = [
        RGBColor(200, 50, 50),
        RGBColor(150, 30, 120),
        RGBColor(120, 120, 120),
        RGBColor(50, 90, 200),
        RGBColor(50, 160, 80),
        RGBColor(220, 160, 40),
    ];
    let n = rows.len();
    // Row i is drawn in band n-1-i, so the first row is at the top.
    let labels: Vec<String> = rows
        .iter()
        .rev()
        .map(|r| format!("{} [{}t]", r.work.name(), r.threads))
        .collect();
    let max = rows.iter().flat_map(|r| r.ops).fold(1.0f64, f64::max);
    let min = rows
        .iter()
        .flat_map(|r| r.ops)
        .filter(|&x| x > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(max / 10.0)
        / 2.0;
    // Room on the right for the legend.
    let max = max * 12.0;
    let height = (140 + 60 * n) as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut ch = ChartBuilder::on(&root)
        .caption(
            "lock+unlock throughput, ops/s of all threads (log scale, longer is better)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(300)
        .build_cartesian_2d((min..max).log_scale(), 0f64..n as f64)?;
    ch.configure_mesh()
        .disable_y_mesh()
        .y_labels(n * 2 + 1)
        .y_label_formatter(&|y| {
            let i = y.floor() as usize;
            if (y - y.floor() - 0.5).abs() < 1e-6 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .y_label_style(("sans-serif", 13))
        .x_labels(12)
        .x_label_formatter(&|x| fmt_ops(*x))
        .x_desc("ops/s")
        .draw()?;
    let bar = 0.8 / IMPLS.len() as f64;
    for (k, name) in IMPLS.iter().enumerate() {
        let color = colors[k];
        ch.draw_series(rows.iter().enumerate().map(|(i, r)| {
            // Within a band, hierlock on top.
            let y1 = (n - 1 - i) as f64 + 0.9 - k as f64 * bar;
            Rectangle::new(
                [(min, y1 - bar * 0.9), (r.ops[k].max(min), y1)],
                color.filled(),
            )
        }))?
        .label(*name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let mut opts = Opts::parse();
    if opts.quick {
        opts.duration = Duration::from_millis(5);
        opts.rounds = 1;
    }
    let rounds = opts.rounds.max(1);
    let per_round = opts.duration / rounds as u32;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = loadavg();

    println!("## Semantics check (each baseline, before it is measured)\n");
    let smoke_md = smoke();
    println!("{smoke_md}");

    let all = [
        Work::UncontendedX { depth: 1 },
        Work::UncontendedX { depth: 4 },
        Work::UncontendedSWarm,
        Work::Disjoint,
        Work::HotS,
        Work::Siblings,
        Work::DbMix,
    ];
    let mut rows = Vec::new();
    for work in all {
        if let Some(f) = &opts.filter {
            if !work.name().contains(f.as_str()) {
                continue;
            }
        }
        let threads: Vec<usize> = if work.single_threaded() {
            vec![1]
        } else {
            opts.threads.clone()
        };
        for t in threads {
            let mut samples: [Vec<f64>; 6] = Default::default();
            for _ in 0..rounds {
                for (k, s) in samples.iter_mut().enumerate() {
                    s.push(run_impl(k, work, t, per_round));
                }
            }
            let ops = samples.map(median);
            eprintln!(
                "{:<40} {t}t  {}",
                work.name(),
                ops.iter()
                    .map(|&o| fmt_ops(o))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            rows.push(Row {
                work,
                threads: t,
                ops,
            });
        }
    }

    let load_after = loadavg();
    let mut md = String::new();
    md.push_str("# hierlock vs the baselines\n\n");
    let _ = writeln!(
        md,
        "Made by `cargo run --release --example compare{}` on a machine with {cores} \
         hardware threads ({}), {} per cell ({} interleaved rounds, median).\n",
        if opts.quick { " -- --quick" } else { "" },
        std::env::consts::ARCH,
        format_args!("{:?}", opts.duration),
        rounds,
    );
    if let Some(commit) = git_commit() {
        let _ = writeln!(md, "Engine at commit {commit}.\n");
    }
    if let (Some(before), Some(after)) = (&load_before, &load_after) {
        let _ = writeln!(
            md,
            "Load average (1, 5, 15 min) before the run: {before}; after: {after}. \
             Other work on the machine slows every column alike only roughly: \
             re-run on a quiet machine before reading small differences.\n"
        );
    }
    md.push_str(
        "Each cell is lock+unlock operations per second, all threads together. \
         `×N` is hierlock's ops/s divided by that baseline's, measured in this same run: \
         above 1, hierlock is faster. `hierlock prepared` is the same engine with the \
         workload's tables resolved once (`LockTree::prepare`, rows locked with \
         `lock_child`); its `÷N` is its ops/s over plain hierlock's, and the last column \
         its ops/s over the textbook manager's.\n\n",
    );
    if opts.threads.iter().any(|&t| t > cores) {
        let _ = writeln!(
            md,
            "Note: thread counts above {cores} oversubscribe this machine's {cores} hardware \
             threads; those rows measure behaviour under preemption, not scaling.\n"
        );
    }
    md.push_str(&table(&rows));
    md.push_str(&scaling(&rows));
    md.push_str(
        "\nWorkloads: `uncontended X` holds IS on the parent for the run, so the \
         ancestors exist; the leaf's node is kept between ops by hierlock's idle-node cache \
         (on by default) and by the textbook manager's map entry only while held; `nodes exist` \
         holds IS on the leaf; `disjoint subtrees`: thread i locks rows of its own \
         `/u{i}/db/t` (sharing only the root); `hot node`/`hot parent`: `/db/hot`, held \
         IS for the run; `db mix`: rows of `/db/t` (held IS for the run). The global RwLock \
         holds nothing for the run (it would block every writer).\n\n",
    );
    md.push_str("## What each implementation guarantees (checked before measuring)\n\n");
    md.push_str(&smoke_md);

    println!("{md}");

    let out = match (&opts.out, opts.quick || opts.no_write) {
        (Some(o), _) if !opts.no_write => Some(o.clone()),
        (None, false) => Some(PathBuf::from("docs/bench")),
        _ => None,
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir).expect("create output directory");
        let md_path = dir.join("compare.md");
        let svg_path = dir.join("compare.svg");
        let mut doc = md.clone();
        doc.push_str("\n![chart](compare.svg)\n");
        std::fs::write(&md_path, doc).expect("write compare.md");
        chart(&rows, &svg_path).expect("draw compare.svg");
        println!("wrote {} and {}", md_path.display(), svg_path.display());
    }
}
