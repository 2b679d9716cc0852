//! A small integration set sized for Miri (`cargo +nightly miri test --test
//! miri_smoke`): the unsafe parts — node pointers kept by guards, the
//! dashmap keys that point into nodes, epoch reclamation, the idle cache's
//! node pointers, prepared handles' pinned nodes and the stickies that keep their holds
//! (revoked, dropped and freed from other threads), biased nodes' slot arrays
//! and the list that keeps them, parking and wakers across threads —
//! exercised on a few operations each. Also runs in
//! the ordinary `cargo test`.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread;

use hierlock::{Bias, Error, LockTree, Mode, MAX_BIASED};

#[test]
fn lock_unlock_and_conversions() {
    let tree = LockTree::new();
    let mut g = tree.lock("/db/users", Mode::S).unwrap();
    assert_eq!(g.path().to_string(), "/db/users");
    let other = tree.lock("/db/orders/1", Mode::X).unwrap();
    assert_eq!(tree.node_count(), 4);
    g.upgrade(Mode::IX).unwrap();
    assert_eq!(g.mode(), Mode::SIX);
    assert_eq!(
        tree.try_lock("/db/users/1", Mode::IX).unwrap_err(),
        Error::WouldBlock
    );
    g.downgrade(Mode::IS).unwrap();
    drop(tree.try_lock("/db/users/1", Mode::X).unwrap());
    drop((g, other));
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn blocking_wake_up_across_threads() {
    let tree = Arc::new(LockTree::new());
    let g = tree.lock("/a/b", Mode::X).unwrap();
    let t = {
        let tree = tree.clone();
        thread::spawn(move || {
            let g = tree.lock("/a", Mode::S).unwrap();
            assert_eq!(g.mode(), Mode::S);
        })
    };
    // Let the waiter queue (or not: both orders must work).
    thread::yield_now();
    drop(g);
    t.join().unwrap();
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn nodes_are_reclaimed_under_churn() {
    churn(LockTree::builder().idle_nodes(0).build());
}

/// The same through a one-slot idle cache: nodes evicted (killed or
/// uncached) while the other thread reuses them.
#[test]
fn nodes_are_cached_evicted_and_reused_under_churn() {
    churn(LockTree::builder().idle_nodes(1).build());
}

fn churn(tree: LockTree) {
    let tree = Arc::new(tree);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let tree = tree.clone();
            thread::spawn(move || {
                for j in 0..10 {
                    let mode = if (i + j) % 3 == 0 { Mode::X } else { Mode::S };
                    let path = ["/hot/node", "/hot/other"][j % 2];
                    let g = tree.lock(path, mode).unwrap();
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(tree.node_count(), 0);
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
}

/// A node another thread found (and so has in its lookup cache) is freed
/// while that thread is idle; its next lookup of the path must not follow
/// the stale pointer (under Miri, a use after free if it did).
#[test]
fn lookups_after_another_thread_freed_the_node() {
    lookups_after_another_thread_freed("/t/a");
}

/// As above, for the cached chain of a path's ancestors (`/t`, `/t/a`).
#[test]
fn chain_lookups_after_another_thread_freed_the_nodes() {
    lookups_after_another_thread_freed("/t/a/b");
}

fn lookups_after_another_thread_freed(path: &'static str) {
    let tree = Arc::new(LockTree::builder().idle_nodes(0).build());
    let held = tree.lock(path, Mode::S).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let other = {
        let (tree, barrier) = (tree.clone(), barrier.clone());
        thread::spawn(move || {
            // Finds (and caches) the nodes of the path.
            drop(tree.lock(path, Mode::S).unwrap());
            barrier.wait();
            barrier.wait();
            // The cached nodes are gone; this must find new ones.
            let g = tree.lock(path, Mode::X).unwrap();
            assert_eq!(tree.try_lock("/t", Mode::S).unwrap_err(), Error::WouldBlock);
            drop(g);
        })
    };
    barrier.wait();
    drop(held); // the last holder: the path's nodes are killed and evicted
    assert_eq!(tree.node_count(), 0);
    // Enough pins and frees for the epoch to run the deferred frees.
    for i in 0..200 {
        drop(tree.lock(format!("/c{i}").as_str(), Mode::X).unwrap());
    }
    barrier.wait();
    other.join().unwrap();
    assert_eq!(tree.node_count(), 0);
}

/// A thread parks on an upper level of its cached chain (unpinned while it
/// waits); meanwhile a lower level's node is killed, evicted and freed.
/// Once granted, the thread must look that level up again rather than
/// follow the chain's pointer (under Miri, a use after free if it did).
#[test]
fn chain_node_freed_while_parked_on_an_upper_level() {
    let tree = Arc::new(LockTree::builder().idle_nodes(0).build());
    let keep_b = tree.lock("/a/b", Mode::S).unwrap();
    let keep_c = tree.lock("/a/b/c", Mode::S).unwrap();
    let block_a = tree.lock("/a", Mode::S).unwrap();
    let waiter = {
        let tree = tree.clone();
        thread::spawn(move || {
            // Caches the chain of /a and /a/b (IS on /a is compatible).
            drop(tree.lock("/a/b/c", Mode::S).unwrap());
            // A chain hit; IX on /a waits for `block_a`.
            drop(tree.lock("/a/b/c", Mode::X).unwrap());
        })
    };
    while tree.inspect("/a").unwrap().waiting.is_empty() {
        thread::yield_now();
    }
    drop(keep_c);
    drop(keep_b); // /a/b and /a/b/c are killed and evicted
                  // Enough pins and frees for the epoch to run the deferred frees.
    for i in 0..200 {
        drop(tree.lock(format!("/c{i}").as_str(), Mode::X).unwrap());
    }
    drop(block_a);
    waiter.join().unwrap();
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn prepared_handles_across_threads() {
    let tree = Arc::new(LockTree::builder().idle_nodes(0).build());
    let table = Arc::new(tree.prepare_owned("/db/t").unwrap());
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let (tree, table) = (tree.clone(), table.clone());
            thread::spawn(move || {
                for j in 0..5 {
                    drop(
                        table
                            .lock_child(format!("{}", (i + j) % 2), Mode::X)
                            .unwrap(),
                    );
                    drop(table.lock(Mode::IS).unwrap());
                    // A short-lived handle racing with the other thread's
                    // releases of the same row.
                    let row = tree.prepare(format!("/db/t/{}", j % 2)).unwrap();
                    let g = row.lock(Mode::S).unwrap();
                    drop(row);
                    drop(g);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(tree.node_count(), 2);
    drop(table);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn owned_guard_dropped_on_another_thread() {
    let tree = Arc::new(LockTree::new());
    let g = tree.lock_owned("/jobs/7", Mode::X).unwrap();
    thread::spawn(move || drop(g)).join().unwrap();
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/jobs/7", Mode::X).unwrap());
}

#[test]
fn async_lock_dropped_while_released_elsewhere() {
    let tree = Arc::new(LockTree::new());
    let held = tree.lock_owned("/a", Mode::X).unwrap();
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = Box::pin(tree.lock_async("/a", Mode::S));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let t = thread::spawn(move || drop(held));
    drop(fut);
    t.join().unwrap();
    assert_eq!(tree.node_count(), 0);
    // And one that is granted and completes.
    let held = tree.lock_owned("/a", Mode::X).unwrap();
    let mut fut = Box::pin(tree.lock_async("/a/b", Mode::S));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    thread::spawn(move || drop(held)).join().unwrap();
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(g) => assert_eq!(g.unwrap().mode(), Mode::S),
        Poll::Pending => panic!("granted by the release"),
    }
    drop(fut);
    assert_eq!(tree.node_count(), 0);
}

/// Slot holds on biased nodes taken and released on several threads, a
/// writer revoking them, a conversion of a slot hold, more biased nodes
/// than the list keeps (the oldest are revoked and, idle, reclaimed), and
/// `purge_idle` revoking the rest.
#[test]
fn biased_nodes_slots_revokes_and_reclamation() {
    let tree = Arc::new(LockTree::builder().bias(Bias::Always).idle_nodes(0).build());
    drop(tree.lock("/hot/a", Mode::S).unwrap()); // biases /, /hot, /hot/a
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let tree = tree.clone();
            thread::spawn(move || {
                for _ in 0..3 {
                    drop(tree.lock("/hot/a", Mode::S).unwrap());
                }
            })
        })
        .collect();
    drop(tree.lock("/hot/a", Mode::X).unwrap());
    for r in readers {
        r.join().unwrap();
    }
    let mut g = tree.lock("/hot/a", Mode::S).unwrap();
    g.upgrade(Mode::X).unwrap();
    drop(g);
    for i in 0..MAX_BIASED + 2 {
        drop(tree.lock(format!("/many/{i}").as_str(), Mode::S).unwrap());
    }
    assert_eq!(tree.node_count(), 0);
    tree.purge_idle();
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

/// Prepared handles' stickies across threads: revoked by another thread's
/// request, reused, a guard dropped on another thread while its handle
/// goes (the guard then frees the sticky).
#[test]
fn sticky_holds_across_threads() {
    let tree = Arc::new(LockTree::new());
    let h = tree.prepare_owned("/db/t").unwrap();
    drop(h.lock(Mode::X).unwrap());
    drop(h.lock(Mode::X).unwrap());
    let t = tree.clone();
    thread::spawn(move || drop(t.lock("/db", Mode::S).unwrap()))
        .join()
        .unwrap();
    for _ in 0..3 {
        drop(h.lock(Mode::X).unwrap());
    }
    let g = h.lock_owned(Mode::X).unwrap();
    let dropper = thread::spawn(move || drop(g));
    let t = tree.clone();
    let scanner = thread::spawn(move || drop(t.try_lock("/", Mode::S)));
    drop(h);
    dropper.join().unwrap();
    scanner.join().unwrap();
    assert_eq!(tree.node_count(), 0);
    assert!(tree.try_lock("/", Mode::X).is_ok());
}
