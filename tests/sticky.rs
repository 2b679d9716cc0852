//! Sticky holds (`Builder::sticky`): a prepared handle keeps its holds
//! after its guard goes, and nobody ever waits for an idle handle: every
//! request those holds are in the way of calls them back first, blocking
//! or not, thread or task, plain, prepared or owner; introspection shows
//! only guards that exist.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{compatible, granted, intention, wait_until_queued, watchdog, MODES};
use futures::FutureExt;
use hierlock::{Error, LockTree, Mode, MAX_SHARED_HOLDERS};

const LIMIT: Duration = Duration::from_secs(30);

/// Locks `h` twice in `mode`, dropping the guards: the first lock makes
/// the sticky, the second reuses it, so the holds are now kept idle.
fn lock_twice(h: &hierlock::Prepared<'_>, mode: Mode) {
    drop(h.lock(mode).unwrap());
    drop(h.lock(mode).unwrap());
}

#[test]
fn an_idle_handle_is_in_nobodys_way() {
    let paths = ["/", "/a", "/a/b", "/a/b/c", "/a/x", "/y"];
    for kept in MODES {
        for path in paths {
            for req in MODES {
                let tree = LockTree::new();
                let h = tree.prepare("/a/b").unwrap();
                lock_twice(&h, kept);
                assert!(
                    granted(&tree, path, req),
                    "{req} on {path} refused after a handle on /a/b let go of {kept}"
                );
                // And the handle itself is refused exactly as Gray says
                // while that request holds.
                let g = tree.lock(path, req).unwrap();
                let conflict_on_b = path == "/a/b" && !compatible(req, kept);
                let conflict_above =
                    matches!(path, "/" | "/a") && !compatible(req, intention(kept));
                let conflict_below = path == "/a/b/c" && !compatible(intention(req), kept);
                let expect = !(conflict_on_b || conflict_above || conflict_below);
                assert_eq!(
                    h.try_lock(kept).is_ok(),
                    expect,
                    "handle {kept} on /a/b while {req} on {path} is held"
                );
                drop(g);
            }
        }
    }
}

#[test]
fn blocking_timed_and_async_requests_call_an_idle_handle_back() {
    let tree = Arc::new(LockTree::new());
    let h = tree.prepare_owned("/db/t").unwrap();
    drop(h.lock(Mode::X).unwrap());
    drop(h.lock(Mode::X).unwrap());
    let t = tree.clone();
    watchdog(LIMIT, "blocking S on the table", move || {
        drop(t.lock("/db/t", Mode::S).unwrap());
    });
    drop(h.lock(Mode::X).unwrap());
    drop(
        tree.lock_timeout("/db", Mode::X, Duration::from_secs(20))
            .unwrap(),
    );
    drop(h.lock(Mode::X).unwrap());
    let g = tree
        .lock_async("/", Mode::S)
        .now_or_never()
        .expect("an idle handle makes no task wait")
        .unwrap();
    drop(g);
    drop(h.lock(Mode::X).unwrap());
    let owner = tree.owner();
    drop(owner.lock("/db/t/row", Mode::IS).unwrap());
    drop(h.lock(Mode::X).unwrap());
    let other = tree.prepare("/db/t").unwrap();
    assert_eq!(other.try_lock(Mode::IS).unwrap().mode(), Mode::IS);
    drop(h.lock(Mode::X).unwrap());
    assert!(tree
        .acquirable("/db/t", Mode::S)
        .now_or_never()
        .expect("acquirable at once")
        .is_ok());
    tree.wait_acquirable("/db", Mode::X, Duration::from_secs(20))
        .unwrap();
}

#[test]
fn a_request_queued_behind_a_handles_guard_gets_the_node_when_it_goes() {
    let tree = Arc::new(LockTree::new());
    let h = Arc::new(tree.prepare_owned("/db/t").unwrap());
    drop(h.lock(Mode::X).unwrap());
    let g = h.lock(Mode::X).unwrap(); // through the sticky
    let t = tree.clone();
    let scan = thread::spawn(move || {
        let s = t.lock("/db", Mode::S).unwrap();
        thread::sleep(Duration::from_millis(20));
        drop(s);
    });
    // IS on /db is compatible with the guard's IX, not with the queued S.
    wait_until_queued(&tree, "/db", Mode::IX);
    drop(g);
    // The scan holds /db in S now or soon: the handle's X waits for it,
    // then is granted (the sticky is gone, the handle queues like anyone).
    let h2 = h.clone();
    watchdog(LIMIT, "handle after the scan", move || {
        drop(h2.lock(Mode::X).unwrap());
    });
    scan.join().unwrap();
    assert!(tree.try_lock("/db", Mode::X).is_ok());
}

#[test]
fn a_queued_request_is_not_overtaken_by_the_handle() {
    let tree = Arc::new(LockTree::new());
    let h = tree.prepare_owned("/db/t").unwrap();
    drop(h.lock(Mode::IX).unwrap());
    let g = h.lock(Mode::IX).unwrap();
    let t = tree.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = thread::spawn(move || {
        let w = t.lock("/db/t", Mode::X).unwrap();
        rx.recv().unwrap();
        drop(w);
    });
    wait_until_queued(&tree, "/db/t", Mode::IS);
    drop(g);
    // The writer got /db/t: the handle's IX is refused, not let past it.
    assert_eq!(h.try_lock(Mode::IX).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        h.lock_timeout(Mode::IX, Duration::from_millis(1))
            .unwrap_err(),
        Error::Timeout
    );
    tx.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(h.lock(Mode::IX).unwrap().mode(), Mode::IX);
}

#[test]
fn introspection_shows_only_guards_that_exist() {
    let tree = LockTree::new();
    let h = tree.prepare("/db/t").unwrap();
    lock_twice(&h, Mode::X);
    for path in ["/", "/db", "/db/t"] {
        let info = tree.inspect(path).unwrap();
        assert!(info.granted.is_empty(), "{path}: {:?}", info.granted);
    }
    assert!(tree.snapshot().nodes.is_empty());
    let g = h.lock(Mode::X).unwrap();
    let info = tree.inspect("/db/t").unwrap();
    assert_eq!(info.granted.len(), 1);
    assert_eq!(info.granted[0].mode, Mode::X);
    assert_eq!(tree.inspect("/db").unwrap().granted[0].mode, Mode::IX);
    drop(g);
    assert!(tree.snapshot().nodes.is_empty());
}

#[test]
fn a_handles_guard_converts_like_any_other() {
    let tree = LockTree::new();
    let h = tree.prepare("/db/t").unwrap();
    drop(h.lock(Mode::S).unwrap());
    let mut g = h.lock(Mode::S).unwrap(); // through the sticky
    assert_eq!(g.mode(), Mode::S);
    assert_eq!(g.path().to_string(), "/db/t");
    assert!(granted(&tree, "/db", Mode::IS));
    g.upgrade(Mode::X).unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert!(
        !granted(&tree, "/db", Mode::S),
        "IX on /db after the upgrade"
    );
    assert!(!granted(&tree, "/db/t", Mode::IS));
    g.downgrade(Mode::IS).unwrap();
    assert!(granted(&tree, "/db/t", Mode::IX));
    assert!(granted(&tree, "/db", Mode::S));
    g.rename("/db/u").unwrap();
    assert_eq!(g.path().to_string(), "/db/u");
    assert!(granted(&tree, "/db/t", Mode::X));
    assert!(!granted(&tree, "/db/u", Mode::X));
    drop(g);
    assert!(granted(&tree, "/", Mode::X));
    drop(h);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn a_handle_dropped_before_its_guard_and_after() {
    let tree = LockTree::new();
    let h = tree.prepare("/db/t").unwrap();
    drop(h.lock(Mode::X).unwrap());
    let g = h.lock(Mode::X).unwrap();
    drop(h);
    assert!(!granted(&tree, "/db", Mode::S), "the guard still holds");
    assert_eq!(g.mode(), Mode::X);
    drop(g);
    assert!(granted(&tree, "/", Mode::X));
    assert_eq!(tree.node_count(), 0);

    let h = tree.prepare("/db/t").unwrap();
    lock_twice(&h, Mode::S);
    drop(h);
    assert_eq!(tree.node_count(), 0, "an idle handle's holds go with it");
    assert!(granted(&tree, "/", Mode::X));
}

#[test]
fn a_handles_guard_dropped_on_another_thread() {
    let tree = Arc::new(LockTree::new());
    let h = tree.prepare_owned("/db/t").unwrap();
    drop(h.lock(Mode::X).unwrap());
    let g = h.lock_owned(Mode::X).unwrap();
    thread::spawn(move || drop(g)).join().unwrap();
    assert!(granted(&tree, "/db/t", Mode::X));
    let g = h.lock(Mode::X).unwrap();
    assert!(!granted(&tree, "/db/t", Mode::IS));
    drop(g);
}

#[test]
fn one_handle_in_every_mode_in_turn() {
    let tree = LockTree::new();
    let h = tree.prepare("/a/b").unwrap();
    for round in 0..3 {
        for mode in MODES {
            let g = h.lock(mode).unwrap();
            assert_eq!(g.mode(), mode, "round {round}");
            for req in MODES {
                assert_eq!(
                    granted(&tree, "/a/b", req),
                    compatible(mode, req),
                    "round {round}: {req} against the handle's {mode}"
                );
            }
            drop(g);
        }
    }
    assert!(granted(&tree, "/", Mode::X));
}

#[test]
fn with_sticky_off_the_same_answers() {
    let tree = LockTree::builder().sticky(false).build();
    let h = tree.prepare("/a/b").unwrap();
    lock_twice(&h, Mode::X);
    assert!(granted(&tree, "/a", Mode::X));
    let g = h.lock(Mode::X).unwrap();
    assert!(!granted(&tree, "/a", Mode::S));
    drop(g);
}

/// Threads sharing one X handle, a thread locking the table through its
/// own handle and a scanner taking S on the parent: never two in the
/// critical section, and nobody hangs.
#[test]
fn exclusion_holds_with_handles_shared_and_called_back() {
    watchdog(Duration::from_secs(120), "exclusion stress", || {
        let tree = Arc::new(LockTree::new());
        let shared = Arc::new(tree.prepare_owned("/db/t").unwrap());
        let inside = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let enter = |inside: &AtomicBool| {
            assert!(!inside.swap(true, Ordering::SeqCst), "two in /db/t at once");
            std::hint::spin_loop();
            inside.store(false, Ordering::SeqCst);
        };
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (shared, inside, done) = (shared.clone(), inside.clone(), done.clone());
            threads.push(thread::spawn(move || {
                for i in 0..20_000 {
                    let g = if i % 7 == 0 {
                        shared
                            .lock_timeout(Mode::X, Duration::from_secs(20))
                            .unwrap()
                    } else {
                        shared.lock(Mode::X).unwrap()
                    };
                    enter(&inside);
                    drop(g);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        {
            let (tree, inside, done) = (tree.clone(), inside.clone(), done.clone());
            threads.push(thread::spawn(move || {
                let own = tree.prepare_owned("/db/t").unwrap();
                for i in 0..20_000 {
                    let g = if i % 3 == 0 {
                        match own.try_lock(Mode::X) {
                            Ok(g) => g,
                            Err(Error::WouldBlock) => continue,
                            Err(e) => panic!("{e:?}"),
                        }
                    } else {
                        own.lock(Mode::X).unwrap()
                    };
                    enter(&inside);
                    drop(g);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        {
            let (tree, inside) = (tree.clone(), inside.clone());
            threads.push(thread::spawn(move || {
                while done.load(Ordering::SeqCst) < 3 {
                    let g = tree.lock("/db", Mode::S).unwrap();
                    enter(&inside);
                    drop(g);
                    thread::yield_now();
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        drop(shared);
        assert_eq!(tree.node_count(), 0);
    });
}

#[test]
fn rows_through_a_handle_keep_its_intentions_out_of_nobodys_way() {
    let tree = LockTree::new();
    let t = tree.prepare("/db/t").unwrap();
    drop(t.lock_child("1", Mode::X).unwrap());
    drop(t.lock_child("2", Mode::X).unwrap());
    for (path, mode) in [("/db/t", Mode::S), ("/db", Mode::X), ("/", Mode::S)] {
        assert!(granted(&tree, path, mode), "{mode} on {path}");
        drop(t.lock_child("2", Mode::X).unwrap());
    }
    let mut row = t.lock_child("3", Mode::S).unwrap();
    assert!(!granted(&tree, "/db/t", Mode::X));
    assert!(granted(&tree, "/db/t", Mode::S));
    assert!(!granted(&tree, "/db/t/3", Mode::IX));
    row.upgrade(Mode::X).unwrap();
    assert_eq!(row.mode(), Mode::X);
    assert!(!granted(&tree, "/db/t", Mode::S), "IX on the table now");
    assert!(!granted(&tree, "/db/t/3", Mode::IS));
    row.rename("/db/t/4").unwrap();
    assert!(granted(&tree, "/db/t/3", Mode::X));
    assert!(!granted(&tree, "/db/t/4", Mode::IS));
    row.downgrade(Mode::IS).unwrap();
    assert!(granted(&tree, "/db/t", Mode::S));
    drop(row);
    assert!(granted(&tree, "/", Mode::X));
    drop(t);
    assert_eq!(tree.node_count(), 0);
}

/// An idle handle's S is not a place taken: with every other place of a
/// node's S count in use, one more reader still gets in (the handle's
/// hold is called back), and only then is the count full.
#[test]
fn an_idle_handle_does_not_use_up_the_last_place() {
    let tree = LockTree::new();
    let h = tree.prepare("/a").unwrap();
    lock_twice(&h, Mode::S);
    let max = usize::try_from(MAX_SHARED_HOLDERS).unwrap();
    let mut guards = Vec::with_capacity(max);
    for i in 0..max {
        match tree.try_lock("/a", Mode::S) {
            Ok(g) => guards.push(g),
            Err(e) => panic!("reader {i} of {max}: {e:?}"),
        }
    }
    assert_eq!(
        tree.try_lock("/a", Mode::S).unwrap_err(),
        Error::TooManyHolders
    );
    assert_eq!(h.try_lock(Mode::S).unwrap_err(), Error::TooManyHolders);
    guards.pop();
    assert_eq!(h.lock(Mode::S).unwrap().mode(), Mode::S);
}
