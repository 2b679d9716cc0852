//! Prepared handles (`LockTree::prepare`): the same requests as plain locks
//! on their path — Gray's rule, fairness, timeouts, async cancellation —
//! with the nodes kept alive by the handle and let go when it drops.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use futures::FutureExt;
use hierlock::{Error, LockTree, Mode};

const MODES: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];

#[test]
fn a_prepared_lock_conflicts_exactly_like_a_plain_one() {
    // Every (held, requested) pair on the node itself, on an ancestor and on
    // a descendant: a handle's lock and the plain lock of the same path must
    // give the same answer.
    let paths = ["/a", "/a/b", "/a/b/c"];
    for held_path in paths {
        for req_path in paths {
            for held in MODES {
                for req in MODES {
                    let tree = LockTree::new();
                    let h = tree.prepare(held_path).unwrap();
                    let g = h.lock(held).unwrap();
                    let plain = tree.try_lock(req_path, req).map(drop);
                    let r = tree.prepare(req_path).unwrap();
                    let prepared = r.try_lock(req).map(drop);
                    assert_eq!(
                        plain, prepared,
                        "{held} on {held_path} held, {req} on {req_path} requested"
                    );
                    drop(g);
                }
            }
        }
    }
}

#[test]
fn a_waiting_writer_is_not_overtaken_through_a_handle() {
    let tree = Arc::new(LockTree::new());
    let table = tree.prepare_owned("/db/t").unwrap();
    let reader = table.lock(Mode::S).unwrap();
    let t = tree.clone();
    let writer = thread::spawn(move || t.lock_owned("/db/t", Mode::X).map(drop));
    // Wait until the writer is queued.
    while tree.inspect("/db/t").unwrap().waiting.is_empty() {
        thread::yield_now();
    }
    // Compatible with the reader, but a writer waits: no barging.
    assert_eq!(table.try_lock(Mode::S).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        table.try_lock_child("row", Mode::IS).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        table
            .lock_timeout(Mode::S, Duration::from_millis(20))
            .unwrap_err(),
        Error::Timeout
    );
    drop(reader);
    writer.join().unwrap().unwrap();
    assert!(table.try_lock(Mode::S).is_ok());
}

#[test]
fn a_timeout_releases_the_levels_taken() {
    let tree = LockTree::new();
    let users = tree.prepare("/db/users").unwrap();
    let x = tree.lock("/db/users/42", Mode::X).unwrap();
    assert_eq!(
        users
            .lock_child_timeout("42", Mode::S, Duration::from_millis(10))
            .unwrap_err(),
        Error::Timeout
    );
    // Nothing of the failed request is left: X on /db is grantable once
    // the row goes, and the row's node goes with its holder.
    let info = tree.inspect("/db/users").unwrap();
    assert_eq!(info.granted.iter().map(|g| g.count).sum::<u64>(), 1);
    assert!(info.waiting.is_empty());
    drop(x);
    assert!(tree.try_lock("/db", Mode::X).is_ok());
    assert_eq!(tree.node_count(), 2, "only the handle's nodes remain");
}

#[test]
fn guards_from_a_handle_convert_like_any_guard() {
    let tree = LockTree::new();
    let users = tree.prepare("/db/users").unwrap();
    let mut g = users.lock(Mode::S).unwrap();
    g.upgrade(Mode::IX).unwrap();
    assert_eq!(g.mode(), Mode::SIX);
    assert_eq!(
        tree.try_lock("/db", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    g.downgrade(Mode::IS).unwrap();
    assert!(tree.try_lock("/db", Mode::S).is_ok());
    g.rename("/db/orders").unwrap();
    assert!(users.try_lock(Mode::X).is_ok());
}

#[test]
fn a_dropped_async_lock_leaves_nothing_behind() {
    let tree = LockTree::new();
    let users = tree.prepare("/db/users").unwrap();
    let x = users.lock(Mode::X).unwrap();
    {
        let mut fut = Box::pin(users.lock_async(Mode::S));
        assert!((&mut fut).now_or_never().is_none(), "must wait for the X");
        assert_eq!(tree.inspect("/db/users").unwrap().waiting.len(), 1);
    }
    assert!(tree.inspect("/db/users").unwrap().waiting.is_empty());
    drop(x);
    let g = futures::executor::block_on(users.lock_async(Mode::S)).unwrap();
    assert_eq!(g.mode(), Mode::S);
    drop(g);
    assert!(tree.try_lock("/", Mode::X).is_ok());
}

#[test]
fn handles_keep_nodes_until_the_last_goes() {
    let tree = LockTree::new();
    let a = tree.prepare("/x/y").unwrap();
    let b = tree.prepare("/x/y").unwrap();
    assert_eq!(tree.inspect("/x/y").unwrap().prepared, 2);
    assert_eq!(tree.inspect("/x").unwrap().prepared, 2);
    drop(tree.lock("/x/y", Mode::X).unwrap());
    assert_eq!(tree.node_count(), 2);
    drop(a);
    assert_eq!(tree.inspect("/x/y").unwrap().prepared, 1);
    let g = b.lock(Mode::S).unwrap();
    drop(b);
    // The held node outlives the handle; the last release reclaims it.
    assert_eq!(tree.node_count(), 2);
    drop(g);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn handles_made_and_dropped_while_others_lock_and_release() {
    // Pins racing with last releases (the node being marked dead) and
    // unpins racing with new holders, from four threads.
    let tree = LockTree::new();
    thread::scope(|s| {
        for t in 0..4 {
            let tree = &tree;
            s.spawn(move || {
                for i in 0..2000 {
                    let path = format!("/r/{}", i % 3);
                    if (i + t) % 2 == 0 {
                        let p = tree.prepare(path.as_str()).unwrap();
                        let g = p.lock(MODES[(i + t) % 5]).unwrap();
                        drop(p);
                        drop(g);
                    } else {
                        drop(tree.lock(path.as_str(), MODES[i % 5]).unwrap());
                    }
                }
            });
        }
    });
    assert_eq!(tree.node_count(), 0);
    assert!(tree.try_lock("/", Mode::X).is_ok());
}

#[test]
fn lock_child_async_locks_below_the_handle_and_cancels_cleanly() {
    let tree = LockTree::new();
    let t = tree.prepare("/db/t").unwrap();
    let g = futures::executor::block_on(t.lock_child_async("7/cell", Mode::X)).unwrap();
    assert_eq!(g.path().to_string(), "/db/t/7/cell");
    assert_eq!(g.mode(), Mode::X);
    // The intentions are on the handle's levels and the row.
    assert_eq!(
        tree.try_lock("/db/t", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    assert_eq!(
        tree.try_lock("/db/t/7", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    assert!(tree.try_lock("/db/t/8", Mode::X).is_ok());
    {
        // Queued behind the X: dropped while waiting, nothing stays queued.
        let mut fut = Box::pin(t.lock_child_async("7/cell", Mode::S));
        assert!((&mut fut).now_or_never().is_none(), "must wait for the X");
        assert_eq!(tree.inspect("/db/t/7/cell").unwrap().waiting.len(), 1);
    }
    assert!(tree.inspect("/db/t/7/cell").unwrap().waiting.is_empty());
    drop(g);
    // An empty child is the handle's own path; bad input is an error.
    let own = futures::executor::block_on(t.lock_child_async("", Mode::S)).unwrap();
    assert_eq!(own.path().to_string(), "/db/t");
    drop(own);
    assert!(matches!(
        futures::executor::block_on(t.lock_child_async("a//b", Mode::S)),
        Err(Error::InvalidPath { .. })
    ));
    drop(t);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn owned_async_locks_outlive_the_handle_and_keep_its_nodes() {
    let tree = Arc::new(LockTree::new());
    let t = tree.prepare_owned("/db/t").unwrap();
    let x = tree.lock("/db/t", Mode::X).unwrap();
    let table = t.lock_owned_async(Mode::IX);
    let row = t.lock_child_owned_async("9", Mode::X);
    drop(t); // the futures keep the nodes pinned
    assert_eq!(tree.inspect("/db/t").unwrap().prepared, 2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let (table, row) = rt.block_on(async move {
        let table = tokio::spawn(table);
        let row = tokio::spawn(row);
        tokio::task::yield_now().await;
        drop(x);
        (table.await.unwrap(), row.await.unwrap())
    });
    let (table, row) = (table.unwrap(), row.unwrap());
    assert_eq!(table.mode(), Mode::IX);
    assert_eq!(row.path().to_string(), "/db/t/9");
    assert!(tree.inspect("/db/t").unwrap().prepared == 0);
    drop((table, row));
    assert_eq!(tree.node_count(), 0);

    // Dropped before being polled: the pins go with it.
    let t = tree.prepare_owned("/db/u").unwrap();
    let fut = t.lock_child_owned_async("1", Mode::S);
    assert_eq!(tree.inspect("/db/u").unwrap().prepared, 2);
    drop(fut);
    assert_eq!(tree.inspect("/db/u").unwrap().prepared, 1);
    drop(t);
    assert_eq!(tree.node_count(), 0);
}
