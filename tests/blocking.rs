//! Blocking `lock`: a waiter wakes when what blocks it goes away, a release
//! wakes every compatible waiter at the head of the queue, and a release
//! that does not unblock a waiter leaves it waiting.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{wait_until_queued, watchdog};
use hierlock::{Error, LockTree, Mode};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn blocked_lock_wakes_on_release() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || t.lock("/a", Mode::X).map(|g| g.mode()));
    wait_until_queued(&tree, "/a", Mode::IS);
    drop(h);
    let r = watchdog(LONG, "X waiting on S", move || w.join().unwrap());
    assert_eq!(r.unwrap(), Mode::X);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn lock_blocked_at_an_ancestor_wakes_on_release() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let t = tree.clone();
    let w = thread::spawn(move || {
        let g = t.lock("/a/b/c", Mode::X).unwrap();
        assert_eq!(g.path().to_string(), "/a/b/c");
    });
    // It waits for IX on /a: S probes on /a now queue behind it.
    wait_until_queued(&tree, "/a", Mode::S);
    assert_eq!(tree.node_count(), 1, "nothing below /a taken yet");
    drop(h);
    watchdog(LONG, "X below a read lock", move || w.join().unwrap());
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn lock_blocked_by_x_wakes_on_release() {
    let tree = Arc::new(LockTree::new());
    let h = tree.write("/a").unwrap();
    let got = Arc::new(AtomicBool::new(false));
    let (t, g2) = (tree.clone(), got.clone());
    let w = thread::spawn(move || {
        let g = t.lock("/a/b", Mode::S).unwrap();
        g2.store(true, Ordering::SeqCst);
        drop(g);
    });
    // No probe can see a waiter behind X; give it time to park.
    thread::sleep(Duration::from_millis(30));
    assert!(!got.load(Ordering::SeqCst), "granted under an X on /a");
    drop(h);
    watchdog(LONG, "S waiting on X", move || w.join().unwrap());
    assert!(got.load(Ordering::SeqCst));
}

#[test]
fn release_wakes_all_compatible_waiters_at_the_head() {
    // IX held on /a; READERS S requests wait; then an X request queues
    // behind them. Releasing the IX must let every reader in together
    // (they meet at a barrier while holding S), and the X only after.
    const READERS: usize = 4;
    let tree = Arc::new(LockTree::new());
    let ix = tree.lock("/a", Mode::IX).unwrap();
    let seq = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(READERS));
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (t, seq, active, barrier, arrived) = (
            tree.clone(),
            seq.clone(),
            active.clone(),
            barrier.clone(),
            arrived.clone(),
        );
        readers.push(thread::spawn(move || {
            arrived.fetch_add(1, Ordering::SeqCst);
            let g = t.lock("/a", Mode::S).unwrap();
            active.fetch_add(1, Ordering::SeqCst);
            let order = seq.fetch_add(1, Ordering::SeqCst);
            // Every reader holds S here at the same time.
            barrier.wait();
            active.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            order
        }));
    }
    // One reader queued makes IX probes wait; the others arrived and had
    // time to park.
    wait_until_queued(&tree, "/a", Mode::IX);
    while arrived.load(Ordering::SeqCst) < READERS {
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(30));
    let (t, seq2, active2) = (tree.clone(), seq.clone(), active.clone());
    let writer = thread::spawn(move || {
        let g = t.lock("/a", Mode::X).unwrap();
        assert_eq!(active2.load(Ordering::SeqCst), 0, "X granted beside S");
        let order = seq2.fetch_add(1, Ordering::SeqCst);
        drop(g);
        order
    });
    thread::sleep(Duration::from_millis(30));
    drop(ix);
    let orders = watchdog(LONG, "readers woken together", move || {
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    let w = watchdog(LONG, "writer after readers", move || writer.join().unwrap());
    assert!(
        orders.iter().all(|&o| o < w),
        "readers {orders:?}, writer {w}"
    );
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn release_of_x_wakes_several_readers_of_different_nodes() {
    // X on /a; readers of /a/0 ... /a/3 all wait for IS on /a; one release
    // must let all of them in at once.
    const READERS: usize = 4;
    let tree = Arc::new(LockTree::new());
    let x = tree.write("/a").unwrap();
    let barrier = Arc::new(Barrier::new(READERS));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let (t, b) = (tree.clone(), barrier.clone());
            thread::spawn(move || {
                let g = t.lock(format!("/a/{i}"), Mode::S).unwrap();
                b.wait();
                drop(g);
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(30));
    drop(x);
    watchdog(LONG, "readers under a released X", move || {
        readers.into_iter().for_each(|r| r.join().unwrap())
    });
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn release_that_does_not_unblock_a_waiter_leaves_it_waiting() {
    // Two readers below /a (IS on /a each); X on /a waits for both.
    let tree = Arc::new(LockTree::new());
    let first = tree.read("/a/b").unwrap();
    let second = tree.read("/a/c").unwrap();
    let got = Arc::new(AtomicBool::new(false));
    let (t, g2) = (tree.clone(), got.clone());
    let w = thread::spawn(move || {
        let g = t.lock("/a", Mode::X).unwrap();
        g2.store(true, Ordering::SeqCst);
        drop(g);
    });
    wait_until_queued(&tree, "/a", Mode::IS);
    // Releasing one descendant: the waiter is still blocked by the other.
    drop(first);
    thread::sleep(Duration::from_millis(50));
    assert!(
        !got.load(Ordering::SeqCst),
        "X on /a granted while /a/c is still read"
    );
    // The remaining reader is really still protected.
    assert_eq!(
        tree.try_lock("/a/c", Mode::X).unwrap_err(),
        Error::WouldBlock
    );
    drop(second);
    watchdog(LONG, "X after both readers", move || w.join().unwrap());
    assert!(got.load(Ordering::SeqCst));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn release_of_an_unrelated_node_leaves_the_waiter_waiting() {
    let tree = Arc::new(LockTree::new());
    let h = tree.read("/a").unwrap();
    let unrelated = tree.write("/b").unwrap();
    let got = Arc::new(AtomicBool::new(false));
    let (t, g2) = (tree.clone(), got.clone());
    let w = thread::spawn(move || {
        let _g = t.lock("/a", Mode::X).unwrap();
        g2.store(true, Ordering::SeqCst);
    });
    wait_until_queued(&tree, "/a", Mode::IS);
    drop(unrelated);
    thread::sleep(Duration::from_millis(30));
    assert!(!got.load(Ordering::SeqCst));
    drop(h);
    watchdog(LONG, "X after the reader", move || w.join().unwrap());
    assert!(got.load(Ordering::SeqCst));
}

#[test]
fn no_lost_wakeup_under_contention() {
    // Threads take X on /a, S on /a, X on /a/b ... in a loop; a lost
    // wake-up would hang (the watchdog), a wrong grant would show up in the
    // exclusion counters.
    const THREADS: usize = 4;
    const ROUNDS: usize = 1500;
    let tree = Arc::new(LockTree::new());
    let writers_in = Arc::new(AtomicUsize::new(0));
    let readers_in = Arc::new(AtomicUsize::new(0));
    let t = tree.clone();
    watchdog(Duration::from_secs(60), "contended ping-pong", move || {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let (t, w, r) = (t.clone(), writers_in.clone(), readers_in.clone());
                thread::spawn(move || {
                    for n in 0..ROUNDS {
                        match (i + n) % 3 {
                            0 => {
                                let _g = t.lock("/a", Mode::X).unwrap();
                                assert_eq!(w.fetch_add(1, Ordering::SeqCst), 0);
                                assert_eq!(r.load(Ordering::SeqCst), 0);
                                thread::yield_now();
                                w.fetch_sub(1, Ordering::SeqCst);
                            }
                            1 => {
                                let _g = t.lock("/a", Mode::S).unwrap();
                                r.fetch_add(1, Ordering::SeqCst);
                                assert_eq!(w.load(Ordering::SeqCst), 0);
                                thread::yield_now();
                                r.fetch_sub(1, Ordering::SeqCst);
                            }
                            _ => {
                                // Below /a: IX on /a conflicts with both.
                                let _g = t.lock("/a/b", Mode::X).unwrap();
                                assert_eq!(w.load(Ordering::SeqCst), 0);
                                assert_eq!(r.load(Ordering::SeqCst), 0);
                            }
                        }
                    }
                })
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
    });
    assert_eq!(tree.node_count(), 0);
}
