//! `acquirable` / `wait_acquirable`: wait until a mode would be granted,
//! without taking it.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use hierlock::{Error, LockTree, Mode};

#[test]
fn resolves_at_once_when_free_and_takes_nothing() {
    let tree = LockTree::new();
    tree.wait_acquirable("/a/b", Mode::X, Duration::from_secs(5))
        .unwrap();
    assert_eq!(tree.node_count(), 0);
    let _s = tree.lock("/a", Mode::S).unwrap();
    tree.wait_acquirable("/a/b", Mode::S, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        tree.wait_acquirable("/a/b", Mode::X, Duration::from_millis(5))
            .unwrap_err(),
        Error::Timeout
    );
}

#[test]
fn fires_on_release_and_does_not_block_others() {
    let tree = Arc::new(LockTree::new());
    let s = tree.lock("/res", Mode::S).unwrap();
    let t = {
        let tree = tree.clone();
        thread::spawn(move || {
            tree.wait_acquirable("/res", Mode::X, Duration::from_secs(30))
                .unwrap();
        })
    };
    // Give the watcher time to queue. Unlike a waiting X request, it blocks
    // nobody: later readers still get in, and it is not listed as a waiter.
    thread::sleep(Duration::from_millis(20));
    let s2 = tree.try_lock("/res", Mode::S).unwrap();
    assert!(tree.inspect("/res").unwrap().waiting.is_empty());
    drop(s);
    drop(s2);
    t.join().unwrap();
    // Nothing was taken, nothing is left queued.
    assert_eq!(tree.node_count(), 0);
    assert!(tree.try_lock("/res", Mode::X).is_ok());
}

#[test]
fn async_acquirable_under_tokio_and_cancellation() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tree = Arc::new(LockTree::new());
    rt.block_on(async {
        for _ in 0..200 {
            let g = tree.lock("/q/r", Mode::X).unwrap();
            // Dropped while watching: leaves no queue entry behind.
            let r = tokio::time::timeout(Duration::from_micros(50), tree.acquirable("/q", Mode::S))
                .await;
            assert!(r.is_err());
            let waiter = {
                let tree = tree.clone();
                tokio::spawn(async move { tree.acquirable("/q", Mode::S).await.unwrap() })
            };
            tokio::task::yield_now().await;
            drop(g);
            waiter.await.unwrap();
            assert_eq!(tree.node_count(), 0);
        }
    });
}

#[test]
fn ancestor_conflicts_count() {
    let tree = Arc::new(LockTree::new());
    let s = tree.lock("/db", Mode::S).unwrap();
    assert_eq!(
        tree.wait_acquirable("/db/t/row", Mode::X, Duration::from_millis(5))
            .unwrap_err(),
        Error::Timeout
    );
    let t = {
        let tree = tree.clone();
        thread::spawn(move || {
            tree.wait_acquirable("/db/t/row", Mode::X, Duration::from_secs(30))
                .unwrap()
        })
    };
    thread::sleep(Duration::from_millis(10));
    drop(s);
    t.join().unwrap();
    assert_eq!(tree.node_count(), 0);
}
