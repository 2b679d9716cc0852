//! Randomised stress with an invariant oracle: 8 threads lock (plainly,
//! through per-operation and shared prepared handles, and as children of
//! them), try, time out, upgrade, downgrade and unlock on a small tree; every grant and
//! release is recorded in a shadow table, and no two holders whose modes
//! conflict (on the node or, through intentions, on a common ancestor) may
//! ever be recorded at once.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{compatible, covers, intention, MODES};
use hierlock::{Bias, Error, Guard, LockTree, Mode, Prepared};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const THREADS: usize = 8;

/// At most one thread at a time may be in a blocking `upgrade`: two of
/// them can close a cycle through a plain waiter's partly acquired path
/// that the engine does not detect (see tests/conversion_cycle.rs), which
/// would be a user-level deadlock, not what this test checks. With one
/// unbounded upgrader and plain `lock`s by threads holding nothing, every
/// wait chain goes strictly deeper and cannot close.
static BLOCKING_UPGRADER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const OPS_PER_THREAD: usize = 3000;

type Comps = Vec<&'static str>;

/// The mode a holder of `m` on `path` holds on the node `path[..level]`.
fn mode_at(path: &Comps, m: Mode, level: usize) -> Mode {
    if level == path.len() {
        m
    } else {
        intention(m)
    }
}

/// Whether holders (p, m) and (q, n) conflict anywhere: on every common
/// prefix (the root, shared ancestors, possibly the node itself) their
/// modes there must be compatible.
fn conflict(p: &Comps, m: Mode, q: &Comps, n: Mode) -> Option<usize> {
    let common_len = p.iter().zip(q).take_while(|(a, b)| a == b).count();
    (0..=common_len).find(|&level| !compatible(mode_at(p, m, level), mode_at(q, n, level)))
}

fn show(p: &Comps) -> String {
    format!("/{}", p.join("/"))
}

#[derive(Default)]
struct Shadow {
    /// guard id -> (thread, path, mode) of everything recorded as held.
    held: Mutex<HashMap<u64, (usize, Comps, Mode)>>,
}

impl Shadow {
    /// Records (or re-records, after a conversion) guard `id`, checking it
    /// against every other recorded holder.
    fn grant(&self, id: u64, tid: usize, path: &Comps, m: Mode, how: &str) {
        let mut held = self.held.lock().unwrap();
        for (&other, (otid, q, n)) in held.iter() {
            if other == id {
                continue;
            }
            if let Some(level) = conflict(path, m, q, *n) {
                panic!(
                    "oracle: thread {tid} was granted {m} on {} ({how}) while guard {other} of \
                     thread {otid} holds {n} on {} (they conflict at level {level})",
                    show(path),
                    show(q)
                );
            }
        }
        held.insert(id, (tid, path.clone(), m));
    }

    /// Records a weaker mode, right before the downgrade that makes it so.
    fn weaken(&self, id: u64, m: Mode) {
        self.held.lock().unwrap().get_mut(&id).unwrap().2 = m;
    }

    /// Forgets guard `id`, right before it is released.
    fn release(&self, id: u64) {
        assert!(self.held.lock().unwrap().remove(&id).is_some());
    }
}

/// What each thread is doing now, for the hang report.
fn status() -> &'static Vec<Mutex<String>> {
    static S: std::sync::OnceLock<Vec<Mutex<String>>> = std::sync::OnceLock::new();
    S.get_or_init(|| (0..THREADS).map(|_| Mutex::new(String::new())).collect())
}

fn set_status(tid: usize, held: &[Held<'_>], what: std::fmt::Arguments<'_>) {
    let hs: Vec<String> = held
        .iter()
        .map(|h| format!("#{} {} {}", h.id, h.guard.mode(), show(&h.path)))
        .collect();
    *status()[tid].lock().unwrap() = format!("{what} holding [{}]", hs.join(", "));
}

#[derive(Default)]
struct Stats {
    grants: AtomicUsize,
    refusals: AtomicUsize,
    upgrades: AtomicUsize,
    deadlocks: AtomicUsize,
    downgrades: AtomicUsize,
}

/// A random node of the tree: depth <= 3, branching 3, 2, 2 (the root
/// rarely, since it serialises everything).
fn random_path(rng: &mut StdRng) -> Comps {
    if rng.gen_bool(0.02) {
        return vec![];
    }
    let depth = rng.gen_range(1..=3);
    let mut p = vec![["a", "b", "c"][rng.gen_range(0..3)]];
    if depth >= 2 {
        p.push(["x", "y"][rng.gen_range(0..2)]);
    }
    if depth >= 3 {
        p.push(["1", "2"][rng.gen_range(0..2)]);
    }
    p
}

struct Held<'t> {
    id: u64,
    path: Comps,
    guard: Guard<'t>,
}

fn worker(
    tree: &LockTree,
    tops: &[Prepared<'_>],
    shadow: &Shadow,
    stats: &Stats,
    tid: usize,
    ids: &AtomicUsize,
) {
    let mut rng = StdRng::seed_from_u64(0x5EED_0000 + tid as u64);
    let mut held: Vec<Held<'_>> = Vec::new();
    let short = |rng: &mut StdRng| Duration::from_micros(rng.gen_range(0..2000));
    for _ in 0..OPS_PER_THREAD {
        let op = rng.gen_range(0..10);
        if held.len() < 2 && (op < 5 || held.is_empty()) {
            // Acquire a new guard (at most two per thread).
            let path = random_path(&mut rng);
            let mode = MODES[rng.gen_range(0..5)];
            set_status(tid, &held, format_args!("acquire {mode} {}", show(&path)));
            let (how, r) = match rng.gen_range(0..6) {
                0 => ("try_lock", tree.try_lock(&path[..], mode)),
                4 => {
                    // A handle made for this request and dropped before
                    // its guard: pins racing with other threads' last
                    // releases and unpins.
                    let p = tree.prepare(&path[..]).unwrap();
                    let d = short(&mut rng);
                    ("prepared lock_timeout", p.lock_timeout(mode, d))
                }
                5 if !path.is_empty() => {
                    let top = &tops[["a", "b", "c"].iter().position(|&t| t == path[0]).unwrap()];
                    let d = short(&mut rng);
                    (
                        "lock_child_timeout",
                        top.lock_child_timeout(&path[1..], mode, d),
                    )
                }
                1 if held.is_empty() => ("lock", tree.lock(&path[..], mode)),
                2 if held.is_empty() => (
                    "lock_async",
                    futures::executor::block_on(tree.lock_async(&path[..], mode)),
                ),
                _ => {
                    let d = short(&mut rng);
                    ("lock_timeout", tree.lock_timeout(&path[..], mode, d))
                }
            };
            match r {
                Ok(guard) => {
                    assert_eq!(guard.mode(), mode);
                    let id = ids.fetch_add(1, Ordering::Relaxed) as u64;
                    shadow.grant(id, tid, &path, mode, how);
                    stats.grants.fetch_add(1, Ordering::Relaxed);
                    held.push(Held { id, path, guard });
                }
                Err(Error::WouldBlock) | Err(Error::Timeout) => {
                    stats.refusals.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("{how}: unexpected {e:?}"),
            }
        } else if op < 7 {
            // Upgrade one of the held guards.
            let only_one = held.len() == 1;
            let i = rng.gen_range(0..held.len());
            let req = MODES[rng.gen_range(0..5)];
            set_status(
                tid,
                &held,
                format_args!("upgrade #{} with {req}", held[i].id),
            );
            let h = &mut held[i];
            let before = h.guard.mode();
            let (how, r) = match rng.gen_range(0..3) {
                0 if only_one
                    && BLOCKING_UPGRADER
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok() =>
                {
                    let r = h.guard.upgrade(req);
                    BLOCKING_UPGRADER.store(false, Ordering::SeqCst);
                    ("upgrade", r)
                }
                1 => ("try_upgrade", h.guard.try_upgrade(req)),
                _ => {
                    let d = short(&mut rng);
                    ("upgrade_timeout", h.guard.upgrade_timeout(req, d))
                }
            };
            match r {
                Ok(()) => {
                    let after = h.guard.mode();
                    assert_eq!(after, before.join(req), "{how}");
                    if after != before {
                        shadow.grant(h.id, tid, &h.path, after, how);
                        stats.upgrades.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e @ (Error::WouldBlock | Error::Timeout | Error::Deadlock)) => {
                    assert_eq!(h.guard.mode(), before, "{how} failed with {e:?}");
                    if e == Error::Deadlock {
                        stats.deadlocks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => panic!("{how}: unexpected {e:?}"),
            }
        } else if op < 8 {
            // Downgrade (sometimes to a mode that is not weaker).
            let i = rng.gen_range(0..held.len());
            let h = &mut held[i];
            let before = h.guard.mode();
            let to = MODES[rng.gen_range(0..5)];
            if covers(before, to) {
                shadow.weaken(h.id, to);
                h.guard.downgrade(to).unwrap();
                assert_eq!(h.guard.mode(), to);
                stats.downgrades.fetch_add(1, Ordering::Relaxed);
            } else {
                assert!(matches!(
                    h.guard.downgrade(to),
                    Err(Error::InvalidConversion { .. })
                ));
                assert_eq!(h.guard.mode(), before);
            }
        } else {
            // Unlock one.
            let i = rng.gen_range(0..held.len());
            let h = held.swap_remove(i);
            shadow.release(h.id);
            if rng.gen_bool(0.5) {
                h.guard.unlock();
            } else {
                drop(h.guard);
            }
        }
        set_status(tid, &held, format_args!("between ops"));
        if rng.gen_bool(0.1) {
            thread::yield_now();
        }
    }
    set_status(tid, &held, format_args!("done"));
    for h in held {
        shadow.release(h.id);
        drop(h.guard);
    }
}

#[test]
fn no_incompatible_holders_ever_and_everything_released() {
    stress(Arc::new(LockTree::new()));
}

/// The same with an idle-node cache of 16 slots (one per shard): nodes are
/// evicted, killed and recreated while other threads reuse them.
#[test]
fn the_same_with_a_tiny_idle_cache() {
    stress(Arc::new(LockTree::builder().idle_nodes(16).build()));
}

/// The same with the cache off: every idle node is unlinked at once.
#[test]
fn the_same_with_no_idle_cache() {
    stress(Arc::new(LockTree::builder().idle_nodes(0).build()));
}

/// The same with every node biased at its first compatible acquisition:
/// IS/IX/S go through per-core slots, every conflicting request revokes.
#[test]
fn the_same_with_every_node_biased() {
    stress(Arc::new(LockTree::builder().bias(Bias::Always).build()));
}

/// Biased nodes with the idle cache off: revokes, unlisting and unlinking
/// race with slot holds and their releases.
#[test]
fn the_same_biased_with_no_idle_cache() {
    stress(Arc::new(
        LockTree::builder().bias(Bias::Always).idle_nodes(0).build(),
    ));
}

fn stress(tree: Arc<LockTree>) {
    let shadow = Arc::new(Shadow::default());
    let stats = Arc::new(Stats::default());
    let (t, sh, st) = (tree.clone(), shadow.clone(), stats.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = thread::spawn(move || {
        let ids = AtomicUsize::new(0);
        let tops: Vec<Prepared<'_>> = ["a", "b", "c"]
            .iter()
            .map(|p| t.prepare(*p).unwrap())
            .collect();
        thread::scope(|s| {
            for tid in 0..THREADS {
                let (t, tops, sh, st, ids) = (&*t, &tops[..], &*sh, &*st, &ids);
                s.spawn(move || worker(t, tops, sh, st, tid, ids));
            }
        });
        drop(tops);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => runner.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(p) = runner.join() {
                std::panic::resume_unwind(p)
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let threads: Vec<String> = status()
                .iter()
                .enumerate()
                .map(|(i, s)| format!("  thread {i}: {}", s.lock().unwrap()))
                .collect();
            panic!(
                "stress hung (lost wake-up or undetected deadlock) after 60 s:\n{}",
                threads.join("\n")
            );
        }
    }
    assert!(shadow.held.lock().unwrap().is_empty());
    assert_eq!(
        tree.node_count(),
        0,
        "nodes left after everything was released"
    );
    drop(tree.try_lock("/", Mode::X).unwrap());
    let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    eprintln!(
        "stress: {} grants, {} refusals, {} upgrades, {} deadlocks, {} downgrades",
        g(&stats.grants),
        g(&stats.refusals),
        g(&stats.upgrades),
        g(&stats.deadlocks),
        g(&stats.downgrades)
    );
    // The run exercised what it claims to.
    assert!(g(&stats.grants) > 1000);
    assert!(g(&stats.refusals) > 0);
    assert!(g(&stats.upgrades) > 0);
    assert!(g(&stats.downgrades) > 0);
}

#[test]
fn the_oracle_itself_knows_gray_and_the_hierarchy() {
    let p = |s: &[&'static str]| s.to_vec();
    // Same node.
    assert!(conflict(&p(&["a"]), Mode::S, &p(&["a"]), Mode::IX).is_some());
    assert!(conflict(&p(&["a"]), Mode::S, &p(&["a"]), Mode::S).is_none());
    // Ancestor / descendant.
    assert_eq!(
        conflict(&p(&["a"]), Mode::S, &p(&["a", "x"]), Mode::X),
        Some(1)
    );
    assert!(conflict(&p(&["a"]), Mode::S, &p(&["a", "x"]), Mode::S).is_none());
    assert_eq!(
        conflict(&p(&[]), Mode::X, &p(&["b", "y", "1"]), Mode::IS),
        Some(0)
    );
    // Siblings.
    assert!(conflict(&p(&["a", "x"]), Mode::X, &p(&["a", "y"]), Mode::X).is_none());
    assert!(conflict(&p(&["a"]), Mode::X, &p(&["b"]), Mode::X).is_none());
}
