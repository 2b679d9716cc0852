//! Node reclamation: `node_count()` is back to 0 once nothing is held or
//! awaited — after churn from several threads on overlapping paths, and
//! after waiters that kept nodes alive have given up. The churn runs with
//! the idle-node cache off (every idle node freed at once), tiny (16 slots:
//! evictions race with reuse all the time) and at its default size.

mod common;

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{watchdog, MODES};
use hierlock::{Error, LockTree, Mode};
use rand::{Rng, SeedableRng};

fn random_path(rng: &mut impl Rng) -> String {
    let depth = rng.gen_range(0..=4);
    (0..depth)
        .map(|_| ["a", "b", "c"][rng.gen_range(0..3)])
        .collect::<Vec<_>>()
        .join("/")
}

/// A tree with an idle cache of `idle` nodes (`None`: the default).
fn tree_with_cache(idle: Option<usize>) -> Arc<LockTree> {
    Arc::new(match idle {
        Some(n) => LockTree::builder().idle_nodes(n).build(),
        None => LockTree::new(),
    })
}

/// After the churn: nothing live, every cached node idle, and the cache
/// empties on demand.
fn check_after_churn(tree: &LockTree) {
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
    assert_eq!(tree.node_count(), 0);
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    assert_eq!(tree.node_count(), 0);
    assert!(format!("{tree:?}").contains("idle_node_count: 0"));
}

#[test]
fn churn_on_overlapping_random_paths_reclaims_every_node() {
    churn(tree_with_cache(Some(0)));
}

#[test]
fn churn_with_a_tiny_idle_cache() {
    churn(tree_with_cache(Some(16)));
}

#[test]
fn churn_with_the_default_idle_cache() {
    churn(tree_with_cache(None));
}

fn churn(tree: Arc<LockTree>) {
    const THREADS: usize = 4;
    const OPS: usize = 5000;
    let t = tree.clone();
    watchdog(Duration::from_secs(60), "churn", move || {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let t = t.clone();
                thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE + i as u64);
                    let mut kept = Vec::new();
                    for n in 0..OPS {
                        // Rarely the root: it would serialise everything.
                        let path = random_path(&mut rng);
                        if path.is_empty() && rng.gen_bool(0.8) {
                            continue;
                        }
                        let mode = MODES[rng.gen_range(0..5)];
                        let r = match n % 3 {
                            0 => t.try_lock(path.as_str(), mode),
                            1 => t.lock_timeout(path.as_str(), mode, Duration::from_micros(200)),
                            _ => {
                                if kept.is_empty() {
                                    t.lock(path.as_str(), mode)
                                } else {
                                    t.try_lock(path.as_str(), mode)
                                }
                            }
                        };
                        match r {
                            Ok(g) => {
                                // Sometimes keep a second guard a while.
                                if kept.is_empty() && rng.gen_bool(0.2) {
                                    kept.push(g);
                                }
                            }
                            Err(Error::WouldBlock) | Err(Error::Timeout) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                        if !kept.is_empty() && rng.gen_bool(0.3) {
                            kept.clear();
                        }
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    check_after_churn(&tree);
}

#[test]
fn churn_with_async_cancellation_reclaims_every_node() {
    async_churn(tree_with_cache(Some(0)));
}

#[test]
fn churn_with_async_cancellation_and_a_tiny_idle_cache() {
    async_churn(tree_with_cache(Some(16)));
}

fn async_churn(tree: Arc<LockTree>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let t = tree.clone();
    rt.block_on(async move {
        let tasks: Vec<_> = (0..8u64)
            .map(|i| {
                let t = t.clone();
                tokio::spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i);
                    for _ in 0..300 {
                        let path = random_path(&mut rng);
                        let mode = MODES[rng.gen_range(0..5)];
                        let limit = Duration::from_micros(rng.gen_range(0..800));
                        if let Ok(r) =
                            tokio::time::timeout(limit, t.lock_owned_async(path, mode)).await
                        {
                            let g = r.unwrap();
                            tokio::task::yield_now().await;
                            drop(g);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("task hung")
                .unwrap();
        }
    });
    check_after_churn(&tree);
}

#[test]
fn nodes_kept_alive_by_a_waiter_are_reclaimed_after_it_times_out() {
    // Two readers of /a/b; X on /a/b/c waits there (holding IX on / and
    // /a). The first reader leaves; the waiter still waits for the second.
    // Then the waiter times out and the last reader leaves: nothing may
    // remain, on /a/b nor on /a.
    let tree = Arc::new(LockTree::new());
    let r1 = tree.read("/a/b").unwrap();
    let r2 = tree.lock_owned("/a/b", Mode::S).unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        t.lock_timeout("/a/b/c", Mode::X, Duration::from_millis(100))
            .map(|_| ())
    });
    common::wait_until_queued(&tree, "/a/b", Mode::S);
    drop(r1);
    assert_eq!(w.join().unwrap().unwrap_err(), Error::Timeout);
    assert_eq!(tree.node_count(), 2);
    drop(r2);
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn nodes_are_reclaimed_when_the_holder_leaves_before_the_waiter_times_out() {
    // The holder of /a leaves while a waiter for /a is still blocked by a
    // second holder below; the waiter gives up; no node may be left.
    let tree = Arc::new(LockTree::new());
    let below = tree.read("/a/x/y").unwrap();
    let on_a = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        t.lock_timeout("/a", Mode::X, Duration::from_millis(100))
            .map(|_| ())
    });
    common::wait_until_queued(&tree, "/a", Mode::IS);
    drop(on_a);
    assert_eq!(w.join().unwrap().unwrap_err(), Error::Timeout);
    drop(below);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn many_timed_out_waiters_on_fresh_paths_leave_nothing() {
    // Waiters on paths that exist nowhere else take IX on / and /a, wait
    // on a node held in S, and time out: the count comes back to what the
    // holders alone need.
    let tree = Arc::new(LockTree::new());
    let holders: Vec<_> = (0..4)
        .map(|i| tree.lock_owned(format!("/a/{i}"), Mode::S).unwrap())
        .collect();
    let base = tree.node_count();
    let hs: Vec<_> = (0..8)
        .map(|k| {
            let t = tree.clone();
            thread::spawn(move || {
                for n in 0..20 {
                    let p = format!("/a/{}/w{k}/{n}", n % 4);
                    assert_eq!(
                        t.lock_timeout(p, Mode::X, Duration::from_millis(1))
                            .unwrap_err(),
                        Error::Timeout
                    );
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(tree.node_count(), base);
    drop(holders);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn a_reclaimed_node_is_recreated_on_demand() {
    let tree = LockTree::new();
    for _ in 0..1000 {
        let g = tree.write("/a/b").unwrap();
        assert_eq!(tree.node_count(), 2);
        drop(g);
        assert_eq!(tree.node_count(), 0);
    }
}
