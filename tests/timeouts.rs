//! `lock_timeout` / `upgrade_timeout`: a deadline for the whole acquisition,
//! and nothing left behind when it passes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{wait_until_queued, watchdog};
use hierlock::{Error, LockTree, Mode};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(30);

#[test]
fn timeout_at_the_leaf_releases_the_ancestors_taken() {
    let tree = LockTree::new();
    let h = tree.read("/a/b").unwrap();
    assert_eq!(tree.node_count(), 2);
    // X on /a/b/c takes IX on / and /a, then waits on /a/b behind S.
    assert_eq!(
        tree.lock_timeout("/a/b/c", Mode::X, SHORT).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(tree.node_count(), 2, "no node left behind");
    // No IX left on /a or the root: S there is compatible with h's IS.
    drop(tree.try_lock("/a", Mode::S).unwrap());
    drop(tree.try_lock("/", Mode::S).unwrap());
    // And no queue entry left on /a/b: readers still get in.
    drop(tree.try_lock("/a/b", Mode::S).unwrap());
    drop(h);
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
    drop(tree.try_lock("/a", Mode::X).unwrap());
}

#[test]
fn timeout_on_an_ancestor_releases_the_levels_above_it() {
    let tree = Arc::new(LockTree::new());
    let h = tree.write("/a").unwrap();
    for mode in common::MODES {
        assert_eq!(
            tree.lock_timeout("/a/b/c/d", mode, SHORT).unwrap_err(),
            Error::Timeout,
            "{mode}"
        );
        assert_eq!(
            tree.lock_owned_timeout("/a/b", mode, SHORT).unwrap_err(),
            Error::Timeout,
            "{mode} owned"
        );
        assert_eq!(tree.node_count(), 1, "{mode}");
    }
    drop(h);
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
    drop(tree.try_lock("/a", Mode::X).unwrap());
}

#[test]
fn zero_timeout_on_a_busy_node_is_timeout_not_wouldblock() {
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    assert_eq!(
        tree.lock_timeout("/a", Mode::X, Duration::ZERO)
            .unwrap_err(),
        Error::Timeout
    );
    // A compatible request needs no waiting at all.
    let g = tree.lock_timeout("/a", Mode::S, Duration::ZERO).unwrap();
    drop((g, h));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn timed_out_waiter_leaves_no_queue_entry() {
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    assert_eq!(
        tree.lock_timeout("/a", Mode::X, SHORT).unwrap_err(),
        Error::Timeout
    );
    // A stale X waiter would make newcomers queue behind it.
    drop(tree.try_lock("/a", Mode::S).unwrap());
    drop(tree.try_lock("/a/b", Mode::IS).unwrap());
    drop(h);
    drop(tree.try_lock("/a", Mode::X).unwrap());
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn waiter_behind_a_timed_out_one_is_let_in() {
    // S held; X waits (with a timeout); a later S queues behind the X only
    // for fairness. When the X gives up, the S must be granted at once,
    // while the first S is still held.
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let writer = thread::spawn(move || {
        t.lock_timeout("/a", Mode::X, Duration::from_millis(300))
            .map(|_| ())
    });
    wait_until_queued(&tree, "/a", Mode::IS);
    let t = tree.clone();
    let reader = thread::spawn(move || {
        let g = t.lock("/a", Mode::S).unwrap();
        assert_eq!(g.mode(), Mode::S);
    });
    assert_eq!(writer.join().unwrap().unwrap_err(), Error::Timeout);
    watchdog(LONG, "reader queued behind a timed-out writer", move || {
        reader.join().unwrap()
    });
    drop(h);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn lock_timeout_succeeds_when_released_in_time() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        let g = t.lock_timeout("/a/b", Mode::X, LONG).unwrap();
        assert_eq!(g.mode(), Mode::X);
    });
    // The waiter wants IX on /a: S probes now queue behind it.
    wait_until_queued(&tree, "/a", Mode::S);
    drop(h);
    watchdog(LONG, "lock_timeout after release", move || {
        w.join().unwrap()
    });
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn huge_timeout_waits_until_granted() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        t.lock_timeout("/a", Mode::X, Duration::MAX)
            .map(|g| g.mode())
    });
    wait_until_queued(&tree, "/a", Mode::IS);
    drop(h);
    let r = watchdog(LONG, "Duration::MAX timeout", move || w.join().unwrap());
    assert_eq!(r.unwrap(), Mode::X);
}

/// `prefix(k)`: the first `k` components of the chain ("" for the root).
fn prefix(k: usize) -> String {
    common::deep_path(k)
}

#[test]
fn timeout_bounds_the_whole_path_not_each_level() {
    // A chain of DEPTH readers: S on the root, on /c0, on /c0/c1, ... Each
    // blocks an X request on the deepest node at one level (its IX there).
    // A driver releases each level's reader only after the request has
    // waited at that level for 60% of the timeout. With a whole-path
    // deadline the request gives up at the second level; with a per-level
    // deadline it would be let through level after level and succeed after
    // DEPTH * 0.6 timeouts (beyond the watchdog).
    const DEPTH: usize = 30;
    let timeout = Duration::from_millis(100);
    let tree = Arc::new(LockTree::new());
    let holders: Vec<_> = (0..DEPTH)
        .map(|k| tree.lock_owned(prefix(k), Mode::S).unwrap())
        .collect();
    let done = Arc::new(AtomicBool::new(false));

    let (t, d) = (tree.clone(), done.clone());
    let driver = thread::spawn(move || {
        let mut holders = holders.into_iter().map(Some).collect::<Vec<_>>();
        for (k, slot) in holders.iter_mut().enumerate() {
            // Wait until the request is queued at level k (an S probe there
            // is compatible with the holder, not with the queued IX).
            loop {
                if d.load(Ordering::SeqCst) {
                    return holders;
                }
                match t.try_lock(prefix(k), Mode::S) {
                    Ok(g) => drop(g),
                    Err(Error::WouldBlock) => break,
                    Err(e) => panic!("probe at level {k}: {e:?}"),
                }
                thread::sleep(Duration::from_millis(1));
            }
            thread::sleep(timeout * 6 / 10);
            *slot = None;
        }
        holders
    });

    let (t, d) = (tree.clone(), done.clone());
    let result = watchdog(
        timeout * 20,
        "lock_timeout on a path blocked at level after level",
        move || {
            let r = t
                .lock_timeout(prefix(DEPTH), Mode::X, timeout)
                .map(|g| g.mode());
            d.store(true, Ordering::SeqCst);
            r
        },
    );
    assert_eq!(result.unwrap_err(), Error::Timeout);
    let rest = driver.join().unwrap();
    drop(rest);
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn upgrade_timeout_keeps_the_old_mode() {
    let tree = LockTree::new();
    let mut g1 = tree.read("/a/b").unwrap();
    let g2 = tree.read("/a/b").unwrap();
    assert_eq!(
        g1.upgrade_timeout(Mode::X, SHORT).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(g1.mode(), Mode::S);
    // Nothing converted above (IS, not IX, on / and /a) ...
    drop(tree.try_lock("/a", Mode::S).unwrap());
    drop(tree.try_lock("/", Mode::S).unwrap());
    // ... and no conversion left queued on /a/b.
    drop(tree.try_lock("/a/b", Mode::S).unwrap());
    // g1 still holds S: writers are kept out.
    assert_eq!(
        tree.try_lock("/a/b/c", Mode::X).unwrap_err(),
        Error::WouldBlock
    );
    drop(g2);
    assert_eq!(
        tree.try_lock("/a/b", Mode::X).unwrap_err(),
        Error::WouldBlock,
        "g1 still holds S"
    );
    g1.try_upgrade(Mode::X).unwrap();
    assert_eq!(g1.mode(), Mode::X);
    drop(g1);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn upgrade_timeout_blocked_at_an_ancestor_keeps_the_old_mode() {
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    let mut g = tree.read("/a/b").unwrap();
    // X on /a/b needs IX on /a, which h's S refuses; the root would have
    // been converted to IX first and must be converted back.
    assert_eq!(
        g.upgrade_timeout(Mode::X, SHORT).unwrap_err(),
        Error::Timeout
    );
    assert_eq!(g.mode(), Mode::S);
    drop(tree.try_lock("/", Mode::S).unwrap());
    drop(tree.try_lock("/a", Mode::S).unwrap());
    drop(tree.try_lock("/a/b", Mode::S).unwrap());
    drop(h);
    g.upgrade_timeout(Mode::X, SHORT).unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    drop(g);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn upgrade_timeout_succeeds_when_the_other_reader_leaves() {
    let tree = Arc::new(LockTree::new());
    let mut g1 = tree.lock_owned("/a", Mode::S).unwrap();
    let g2 = tree.lock_owned("/a", Mode::S).unwrap();
    let t = tree.clone();
    let other = thread::spawn(move || {
        // The conversion is queued once new readers must wait behind it.
        wait_until_queued(&t, "/a", Mode::S);
        drop(g2);
    });
    g1.upgrade_timeout(Mode::X, LONG).unwrap();
    assert_eq!(g1.mode(), Mode::X);
    other.join().unwrap();
    drop(g1);
    assert_eq!(tree.node_count(), 0);
}
