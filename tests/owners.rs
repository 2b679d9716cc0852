//! Owners: reentrancy policies, no self-conflict, deadlock detection,
//! lock_all, introspection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use hierlock::{Error, LockTree, Mode, Reentrancy};

/// Waits until `n` requests are queued on `path` (a deterministic signal
/// that the other threads are blocked), failing after a generous bound.
fn wait_queued(tree: &LockTree, path: &str, n: usize) {
    for _ in 0..20_000 {
        if tree.inspect(path).unwrap().waiting.len() >= n {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("nobody queued on {path}: {}", tree.snapshot());
}

#[test]
fn owner_never_conflicts_with_itself() {
    let tree = LockTree::new();
    let txn = tree.owner();
    let _t = txn.lock("/db/users", Mode::IX).unwrap();
    let _r = txn.lock("/db/users/42", Mode::X).unwrap();
    let _s = txn.lock("/db/users", Mode::S).unwrap(); // IX + S = SIX
    assert_eq!(
        tree.try_lock("/db/users/7", Mode::X).unwrap_err(),
        Error::WouldBlock
    );
    assert!(tree.try_lock("/db/users/7", Mode::S).is_ok()); // IS under SIX is fine
    let info = tree.inspect("/db/users").unwrap();
    assert_eq!(info.granted.len(), 1);
    assert_eq!(info.granted[0].mode, Mode::SIX);
    assert_eq!(info.granted[0].owner, Some(txn.id()));
}

#[test]
fn recursive_escalation_and_de_escalation() {
    let tree = LockTree::new();
    let txn = tree.owner();
    // read -> write -> release read: still write
    let r = txn.lock("/a", Mode::S).unwrap();
    let w = txn.lock("/a", Mode::X).unwrap();
    drop(r);
    assert_eq!(tree.try_lock("/a", Mode::S).unwrap_err(), Error::WouldBlock);
    // write -> read -> release write: read
    let r = txn.lock("/a", Mode::S).unwrap();
    drop(w);
    assert!(tree.try_lock("/a", Mode::S).is_ok());
    assert_eq!(tree.try_lock("/a", Mode::X).unwrap_err(), Error::WouldBlock);
    drop(r);
    assert!(tree.try_lock("/a", Mode::X).is_ok());
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn reentrancy_policies_follow_hilok() {
    let tree = LockTree::new();
    // RecursiveWrite: only write locks are re-entrant.
    let rw = tree.owner_with(Reentrancy::RecursiveWrite);
    let a = rw.lock("/rw", Mode::X).unwrap();
    let b = rw.lock("/rw", Mode::X).unwrap();
    assert_eq!(rw.lock("/rw", Mode::S).unwrap_err(), Error::AlreadyHeld);
    drop(a);
    assert_eq!(
        tree.try_lock("/rw", Mode::S).unwrap_err(),
        Error::WouldBlock
    );
    drop(b);
    let s = rw.lock("/rw", Mode::S).unwrap();
    assert_eq!(rw.lock("/rw", Mode::S).unwrap_err(), Error::AlreadyHeld);
    assert_eq!(rw.lock("/rw", Mode::X).unwrap_err(), Error::AlreadyHeld);
    drop(s);

    // OneWay: read under own write, not write under own read.
    let ow = tree.owner_with(Reentrancy::OneWay);
    let w = ow.lock("/ow", Mode::X).unwrap();
    let r = ow.lock("/ow", Mode::S).unwrap();
    drop(w);
    assert!(tree.try_lock("/ow", Mode::S).is_ok());
    assert_eq!(ow.lock("/ow", Mode::X).unwrap_err(), Error::AlreadyHeld);
    drop(r);

    // Strict: never twice.
    let st = tree.owner_with(Reentrancy::Strict);
    let g = st.lock("/st", Mode::S).unwrap();
    assert_eq!(st.lock("/st", Mode::S).unwrap_err(), Error::AlreadyHeld);
    assert_eq!(st.lock("/st", Mode::IS).unwrap_err(), Error::AlreadyHeld);
    // Intention holds on ancestors are not "held": a child is fine.
    let _c = st.lock("/st/child", Mode::S).unwrap();
    drop(g);
    // A refused request leaves nothing behind.
    assert_eq!(st.holds().len(), 1);
}

#[test]
fn release_all_and_drop_release_everything() {
    let tree = LockTree::new();
    let txn = tree.owner();
    let g = txn.lock("/a/b", Mode::X).unwrap();
    let _h = txn.lock("/c", Mode::S).unwrap();
    txn.release_all();
    assert_eq!(tree.node_count(), 0);
    drop(g); // inert now
    assert!(tree.try_lock("/", Mode::X).is_ok());
    {
        let t2 = tree.owner();
        let _g = t2.lock("/z", Mode::X).unwrap();
        std::mem::forget(_g);
    }
    assert_eq!(
        tree.node_count(),
        0,
        "dropping the owner released a forgotten guard"
    );
}

#[test]
fn failed_request_keeps_what_was_held_before() {
    let tree = LockTree::new();
    let txn = tree.owner();
    let _s = txn.lock("/a", Mode::S).unwrap();
    let other = tree.lock("/a", Mode::S).unwrap();
    assert_eq!(txn.try_lock("/a", Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(
        txn.lock_timeout("/a", Mode::X, Duration::from_millis(5))
            .unwrap_err(),
        Error::Timeout
    );
    drop(other);
    // Still S, not X: another reader gets in, a writer does not.
    assert!(tree.try_lock("/a", Mode::S).is_ok());
    assert!(tree.try_lock("/a", Mode::IX).is_err());
    assert_eq!(
        txn.holds(),
        vec![(hierlock::Path::parse("/a", '/').unwrap(), Mode::S)]
    );
}

#[test]
fn two_owner_cycle_has_exactly_one_victim() {
    for _ in 0..20 {
        let tree = Arc::new(LockTree::new());
        let barrier = Arc::new(Barrier::new(2));
        let victims = Arc::new(AtomicUsize::new(0));
        let run = |first: &'static str, second: &'static str| {
            let (tree, barrier, victims) = (tree.clone(), barrier.clone(), victims.clone());
            thread::spawn(move || {
                let txn = tree.owner();
                let _a = txn.lock(first, Mode::X).unwrap();
                barrier.wait();
                match txn.lock(second, Mode::X) {
                    Ok(_g) => {}
                    Err(Error::Deadlock) => {
                        victims.fetch_add(1, Ordering::SeqCst);
                        // The victim keeps what it held before.
                        assert_eq!(txn.holds().len(), 1);
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        };
        let a = run("/x", "/y");
        let b = run("/y", "/x");
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(victims.load(Ordering::SeqCst), 1);
        assert_eq!(tree.node_count(), 0);
    }
}

#[test]
fn three_owner_cycle_through_several_nodes() {
    let tree = Arc::new(LockTree::new());
    let barrier = Arc::new(Barrier::new(3));
    let victims = Arc::new(AtomicUsize::new(0));
    let paths = [("/p/1", "/p/2"), ("/p/2", "/q/3"), ("/q/3", "/p/1")];
    let handles: Vec<_> = paths
        .into_iter()
        .map(|(hold, want)| {
            let (tree, barrier, victims) = (tree.clone(), barrier.clone(), victims.clone());
            thread::spawn(move || {
                let txn = tree.owner();
                let _h = txn.lock(hold, Mode::X).unwrap();
                barrier.wait();
                match txn.lock(want, Mode::S) {
                    Ok(_g) => {}
                    Err(Error::Deadlock) => {
                        victims.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(victims.load(Ordering::SeqCst), 1);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn conversion_deadlock_between_owners() {
    let tree = Arc::new(LockTree::new());
    let barrier = Arc::new(Barrier::new(2));
    let victims = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (tree, barrier, victims) = (tree.clone(), barrier.clone(), victims.clone());
            thread::spawn(move || {
                let txn = tree.owner();
                let s = txn.lock("/doc", Mode::S).unwrap();
                barrier.wait();
                match txn.lock("/doc", Mode::X) {
                    Ok(_x) => {}
                    Err(Error::Deadlock) => {
                        victims.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(txn.holds()[0].1, Mode::S);
                    }
                    Err(e) => panic!("{e}"),
                }
                drop(s);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(victims.load(Ordering::SeqCst), 1);
}

#[test]
fn waiting_without_cycle_is_not_a_deadlock() {
    let tree = Arc::new(LockTree::new());
    let a = tree.owner();
    let held = a.lock("/r", Mode::X).unwrap();
    let t = {
        let tree = tree.clone();
        thread::spawn(move || {
            let b = tree.owner();
            let _g = b.lock("/r/child", Mode::S).unwrap();
        })
    };
    wait_queued(&tree, "/r", 1);
    let info = tree.inspect("/r").unwrap();
    assert_eq!(info.waiting[0].mode, Mode::IS);
    assert!(info.waiting[0].owner.is_some());
    assert!(tree.snapshot().to_string().contains("waiting"));
    drop(held);
    t.join().unwrap();
}

#[test]
fn lock_all_is_all_or_nothing() {
    let tree = LockTree::new();
    let blocker = tree.lock("/db/b", Mode::S).unwrap();
    let txn = tree.owner();
    assert_eq!(
        txn.try_lock_all([("/db/a", Mode::X), ("/db/b", Mode::X)])
            .unwrap_err(),
        Error::WouldBlock
    );
    assert!(txn.holds().is_empty());
    assert!(
        tree.try_lock("/db/a", Mode::X).is_ok(),
        "no partial grant left"
    );
    drop(blocker);
    let gs = txn
        .lock_all([("/db/a", Mode::X), ("/db", Mode::S), ("/db/a", Mode::S)])
        .unwrap();
    assert_eq!(gs.len(), 2);
    assert_eq!(gs[0].mode(), Mode::X);
    // /db is held in SIX (S plus the intention for /db/a's X).
    assert_eq!(tree.inspect("/db").unwrap().granted[0].mode, Mode::SIX);
    drop(gs);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn lock_all_under_contention_never_deadlocks() {
    use rand::{Rng, SeedableRng};
    let tree = Arc::new(LockTree::new());
    let paths = ["/t/a", "/t/b", "/t/c", "/t/a/1", "/t/b/2", "/u", "/t"];
    let handles: Vec<_> = (0..4u64)
        .map(|seed| {
            let tree = tree.clone();
            thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let txn = tree.owner();
                for _ in 0..200 {
                    let n = rng.gen_range(1..4);
                    let set: Vec<(&str, Mode)> = (0..n)
                        .map(|_| {
                            let p = paths[rng.gen_range(0..paths.len())];
                            let m = Mode::ALL[rng.gen_range(0..5)];
                            (p, m)
                        })
                        .collect();
                    let gs = txn.lock_all(set.iter().copied()).unwrap();
                    for (g, _) in gs.iter().zip(&set) {
                        // Every guard's node really is held in a covering mode.
                        let info = tree.inspect(g.path()).unwrap();
                        let mine = info.granted.iter().find(|x| x.owner == Some(txn.id()));
                        assert!(mine.is_some_and(|x| x.mode.covers(g.mode())));
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn async_owner_requests_are_cancel_safe() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tree = Arc::new(LockTree::new());
    rt.block_on(async {
        for _ in 0..100 {
            let blocker = tree.lock("/q", Mode::S).unwrap();
            let txn = tree.owner();
            let _mine = txn.lock_async("/q/x", Mode::IS).await.unwrap();
            let r =
                tokio::time::timeout(Duration::from_millis(1), txn.lock_async("/q", Mode::X)).await;
            assert!(r.is_err(), "X must wait for the anonymous S");
            drop(blocker);
            // The timed-out request left nothing: another owner gets X once we go.
            assert_eq!(txn.holds().len(), 1);
            drop(_mine);
            drop(txn);
            assert!(tree.try_lock("/q", Mode::X).is_ok());
        }
    });
    assert_eq!(tree.node_count(), 0);
}
