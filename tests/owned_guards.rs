//! Guards crossing threads: `OwnedGuard` moved to and dropped on another
//! thread, borrowed guards dropped on scoped threads, `lock_owned_async`
//! spawned on tokio.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{watchdog, MODES};
use hierlock::{Error, Guard, LockTree, Mode, OwnedGuard};

const LONG: Duration = Duration::from_secs(30);

fn assert_send_sync_static<T: Send + Sync + 'static>() {}

#[test]
fn guard_types_are_send_and_sync() {
    assert_send_sync_static::<OwnedGuard>();
    assert_send_sync_static::<LockTree>();
    fn borrowed<T: Send + Sync>() {}
    borrowed::<Guard<'_>>();
}

#[test]
fn owned_guard_moved_to_and_dropped_on_another_thread() {
    let tree = Arc::new(LockTree::new());
    let g = tree.lock_owned("/jobs/7", Mode::X).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let h = thread::spawn(move || {
        assert_eq!(g.mode(), Mode::X);
        assert_eq!(g.path().to_string(), "/jobs/7");
        held_tx.send(()).unwrap();
        rx.recv().unwrap();
        drop(g);
    });
    held_rx.recv().unwrap();
    // Still held while the other thread owns it.
    assert_eq!(
        tree.try_lock("/jobs", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    tx.send(()).unwrap();
    h.join().unwrap();
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn owned_guards_of_every_kind_dropped_on_other_threads() {
    let tree = Arc::new(LockTree::new());
    let mut guards: Vec<OwnedGuard> = Vec::new();
    for (i, m) in MODES.into_iter().enumerate() {
        guards.push(tree.lock_owned(format!("/k/{i}/lock"), m).unwrap());
        guards.push(tree.try_lock_owned(format!("/k/{i}/try"), m).unwrap());
        guards.push(
            tree.lock_owned_timeout(format!("/k/{i}/timeout"), m, LONG)
                .unwrap(),
        );
        guards.push(
            futures::executor::block_on(tree.lock_owned_async(format!("/k/{i}/async"), m)).unwrap(),
        );
    }
    // A root guard too.
    guards.push(tree.lock_owned("/r", Mode::SIX).unwrap());
    let n = guards.len();
    assert!(tree.node_count() > n);
    let hs: Vec<_> = guards
        .into_iter()
        .map(|g| thread::spawn(move || drop(g)))
        .collect();
    assert_eq!(hs.len(), n);
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn borrowed_guards_dropped_on_scoped_threads() {
    let tree = LockTree::new();
    let mut guards: Vec<Guard<'_>> = Vec::new();
    for (i, m) in MODES.into_iter().enumerate() {
        guards.push(tree.lock(format!("/s/{i}/lock"), m).unwrap());
        guards.push(tree.try_lock(format!("/s/{i}/try"), m).unwrap());
        guards.push(tree.lock_timeout(format!("/s/{i}/t"), m, LONG).unwrap());
        guards.push(futures::executor::block_on(tree.lock_async(format!("/s/{i}/a"), m)).unwrap());
    }
    guards.push(tree.read(["s", "read"]).unwrap());
    guards.push(tree.write(vec!["s", "write"]).unwrap());
    thread::scope(|s| {
        for g in guards {
            s.spawn(move || drop(g));
        }
    });
    assert_eq!(tree.node_count(), 0);
    drop(tree.try_lock("/", Mode::X).unwrap());
}

#[test]
fn owned_guard_converted_on_another_thread() {
    let tree = Arc::new(LockTree::new());
    let mut g = tree.lock_owned("/a/b", Mode::S).unwrap();
    let g = thread::spawn(move || {
        g.upgrade(Mode::X).unwrap();
        g
    })
    .join()
    .unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    let g = thread::spawn(move || {
        let mut g = g;
        g.downgrade(Mode::IS).unwrap();
        g
    })
    .join()
    .unwrap();
    assert_eq!(g.mode(), Mode::IS);
    drop(tree.try_lock("/a/b/c", Mode::X).unwrap());
    thread::spawn(move || g.unlock()).join().unwrap();
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn owned_guard_keeps_the_tree_alive() {
    let tree = Arc::new(LockTree::new());
    let g = tree.lock_owned("/a", Mode::X).unwrap();
    assert!(Arc::ptr_eq(g.tree(), &tree));
    let weak = Arc::downgrade(&tree);
    drop(tree);
    // The guard's Arc is the last one.
    assert!(weak.upgrade().is_some());
    let t = weak.upgrade().unwrap();
    assert_eq!(t.try_lock("/a", Mode::IS).unwrap_err(), Error::WouldBlock);
    drop(t);
    thread::spawn(move || drop(g)).join().unwrap();
    assert!(weak.upgrade().is_none(), "tree freed with its last guard");
}

#[test]
fn blocked_waiter_is_woken_by_a_drop_on_a_third_thread() {
    let tree = Arc::new(LockTree::new());
    let g = tree.lock_owned("/a", Mode::S).unwrap();
    let t = tree.clone();
    let waiter = thread::spawn(move || t.lock("/a", Mode::X).map(|g| g.mode()));
    common::wait_until_queued(&tree, "/a", Mode::IS);
    thread::spawn(move || drop(g)).join().unwrap();
    let m = watchdog(LONG, "waiter after a remote drop", move || {
        waiter.join().unwrap()
    });
    assert_eq!(m.unwrap(), Mode::X);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_owned_async_spawned_on_tokio() {
    let tree = Arc::new(LockTree::new());
    let blocker = tree.lock_owned("/a", Mode::S).unwrap();
    // The future itself is 'static + Send: spawn it directly.
    let fut = tree.lock_owned_async("/a/b", Mode::X);
    let task = tokio::spawn(fut);
    let t = tree.clone();
    tokio::task::spawn_blocking(move || common::wait_until_queued(&t, "/a", Mode::S))
        .await
        .unwrap();
    // Release on a blocking-pool thread.
    tokio::task::spawn_blocking(move || drop(blocker))
        .await
        .unwrap();
    let g = tokio::time::timeout(LONG, task)
        .await
        .expect("spawned lock_owned_async never completed")
        .unwrap()
        .unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert_eq!(g.path().to_string(), "/a/b");
    // The guard travels to another task and is dropped there.
    tokio::spawn(async move { drop(g) }).await.unwrap();
    assert_eq!(tree.node_count(), 0);

    // Many spawned owned futures on sibling and shared nodes; each guard
    // is dropped on a blocking-pool thread.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let fut = tree.lock_owned_async(format!("/p/{}", i % 4), Mode::X);
            tokio::spawn(async move {
                let g = fut.await.unwrap();
                tokio::task::yield_now().await;
                tokio::task::spawn_blocking(move || drop(g)).await.unwrap();
            })
        })
        .collect();
    tokio::time::timeout(LONG, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("spawned owned futures never completed");
    assert_eq!(tree.node_count(), 0);
}
