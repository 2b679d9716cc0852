//! Reader bias for hot nodes (`Builder::bias`), through the public API only.
//!
//! A biased node takes one class of compatible modes ({IS, IX} or {IS, S})
//! through per-core slots and carries one phantom holder of the class in its
//! state word; a conflicting request revokes (folds the slots into the word)
//! first. What users rely on, checked here with `Bias::Always` (a node is
//! biased at its first compatible acquisition, so the next compatible hold
//! lives in a slot, deterministically) and with `Bias::Adaptive` under real
//! contention:
//!
//! - Gray's matrix stays exact on, above and below a biased node whose
//!   holders live in slots; the phantom never refuses a compatible request.
//! - Writers blocked by slot holders are woken by their releases (threads and
//!   async), and a refused `try_lock` or a dropped future leaves no slot hold
//!   behind on the ancestors.
//! - Guards whose levels are in slots released on other threads, converted
//!   (upgrade, downgrade) and renamed: modes and conflicts right afterwards,
//!   nothing left at the end.
//! - `inspect`/`snapshot` count slot holders and never the phantom;
//!   `NodeInfo.prepared` counts only real handles.
//! - At most `MAX_BIASED` nodes stay biased; `node_count()` ignores nodes
//!   only the bias list keeps; `purge_idle()` revokes them all; revoked
//!   nodes go to the idle cache or are freed.
//! - `TooManyHolders` stays exact at `MAX_SHARED_HOLDERS` on a biased node.
//! - Randomised stress with a shadow oracle, `Bias::Always` and
//!   `Bias::Adaptive`.
//!
//! Whether a node is biased is not public; these tests observe it through
//! the idle cache: a node nobody holds goes to the idle cache unless the
//! bias list keeps it (checked by
//! `always_biases_at_the_first_acquisition_and_keeps_the_node_off_the_idle_cache`).

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use common::{compatible, covers, granted, intention, wait_until_queued, watchdog, MODES};
use hierlock::{Bias, Error, Guard, LockTree, Mode, NodeInfo, MAX_BIASED, MAX_SHARED_HOLDERS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A hang guard, far beyond anything a correct engine needs.
const LONG: Duration = Duration::from_secs(30);

fn always() -> LockTree {
    LockTree::builder().bias(Bias::Always).build()
}

/// The anonymous holders of a node, as (mode, count), sorted.
fn holders(info: &NodeInfo) -> Vec<(Mode, u64)> {
    let mut v: Vec<(Mode, u64)> = info
        .granted
        .iter()
        .map(|g| {
            assert_eq!(g.owner, None, "no owner in these tests");
            (g.mode, g.count)
        })
        .collect();
    v.sort();
    v
}

fn holders_of(tree: &LockTree, path: &str) -> Vec<(Mode, u64)> {
    holders(&tree.inspect(path).unwrap())
}

/// Everything released: no live node, nothing in any report, and X on the
/// root (which conflicts with every holder anywhere, phantom or slot hold
/// left behind included) is granted.
fn assert_all_released(tree: &LockTree, what: &str) {
    assert_eq!(tree.node_count(), 0, "{what}: live nodes left");
    let snap = tree.snapshot();
    assert!(snap.nodes.is_empty(), "{what}: snapshot not empty:\n{snap}");
    assert!(granted(tree, "/", Mode::X), "{what}: X on the root refused");
    assert_eq!(tree.node_count(), 0, "{what}: live nodes after the probe");
}

// ---- the witness: biased nodes stay listed, not cached ----

#[test]
fn always_biases_at_the_first_acquisition_and_keeps_the_node_off_the_idle_cache() {
    // Unbiased: a released node goes to the idle cache.
    let never = LockTree::builder().bias(Bias::Never).build();
    drop(never.lock("/a/n", Mode::S).unwrap());
    assert_eq!(never.node_count(), 0);
    assert_eq!(never.idle_node_count(), 2);

    // Biased: the bias list keeps /a and /a/n (not idle, not counted).
    let tree = always();
    drop(tree.lock("/a/n", Mode::S).unwrap());
    assert_eq!(tree.node_count(), 0, "nodes kept only by the bias list");
    assert_eq!(tree.idle_node_count(), 0, "biased nodes are not idle");
    // purge_idle revokes them: they become idle, then are freed.
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    assert_eq!(tree.node_count(), 0);
    // Unlisted: /a/n locked only in X now (which never biases) goes to the
    // idle cache once released. (/a, which took IX, is biased again.)
    drop(tree.lock("/a/n", Mode::X).unwrap());
    assert_eq!(
        tree.idle_node_count(),
        1,
        "purge_idle left /a/n on the bias list"
    );
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    // Locking again works and biases again.
    drop(tree.lock("/a/n", Mode::S).unwrap());
    assert_eq!(tree.idle_node_count(), 0);
    assert_all_released(&tree, "after re-bias");

    // An X request is never a compatible acquisition: nothing is biased.
    let tree = always();
    drop(tree.lock("/a", Mode::X).unwrap());
    // /a was only ever X-locked: cached, not listed.
    assert_eq!(tree.idle_node_count(), 1);
}

// ---- 1. Gray's matrix on a biased node ----

#[derive(Clone, Copy, Debug)]
enum Where {
    Same,
    Child,
    Parent,
    Root,
}

#[test]
fn gray_matrix_is_exact_on_below_and_above_a_biased_node() {
    // Sanity: the public matrix is Gray's.
    for a in MODES {
        for b in MODES {
            assert_eq!(a.compatible(b), compatible(a, b), "{a} vs {b}");
        }
    }
    // The warm-up decides the bias class: IS or IX give {IS, IX} on the
    // node, S gives {IS, S}; every ancestor gets {IS, IX}.
    for warm in [Mode::IS, Mode::IX, Mode::S] {
        for held in MODES {
            for req in MODES {
                for at in [Where::Same, Where::Child, Where::Parent, Where::Root] {
                    let tree = always();
                    drop(tree.lock("/a/n", warm).unwrap());
                    // Through slots wherever the class admits it.
                    let g = tree.lock("/a/n", held).unwrap();
                    let (path, expect) = match at {
                        Where::Same => ("/a/n", held.compatible(req)),
                        Where::Child => ("/a/n/c", held.compatible(req.intention())),
                        Where::Parent => ("/a", held.intention().compatible(req)),
                        Where::Root => ("/", held.intention().compatible(req)),
                    };
                    let what = format!("warm {warm}, held {held}, requested {req} at {at:?}");
                    assert_eq!(granted(&tree, path, req), expect, "{what}");
                    // Again: the first probe may have revoked the bias.
                    assert_eq!(granted(&tree, path, req), expect, "{what} (second probe)");
                    // The holder still excludes what it must.
                    assert!(
                        !granted(&tree, "/a/n", Mode::X),
                        "{what}: X granted beside the holder"
                    );
                    drop(g);
                    assert_all_released(&tree, &what);
                }
            }
        }
    }
}

#[test]
fn phantom_holder_never_refuses_a_compatible_request() {
    let tree = always();

    // {IS, IX}: the word carries a phantom IX.
    drop(tree.lock("/t", Mode::IX).unwrap());
    let is = tree.lock("/t", Mode::IS).unwrap(); // through a slot
    assert!(granted(&tree, "/t", Mode::S), "S refused beside IS alone");
    assert!(
        granted(&tree, "/t", Mode::SIX),
        "SIX refused beside IS alone"
    );
    assert!(!granted(&tree, "/t", Mode::X));
    drop(is);
    // Nothing held at all on a biased node: everything goes.
    drop(tree.lock("/t", Mode::IX).unwrap()); // biased again
    for m in MODES {
        assert!(granted(&tree, "/t", m), "{m} refused on an unheld node");
    }
    drop(tree.lock("/t", Mode::IX).unwrap());
    let ix = tree.lock("/t", Mode::IX).unwrap(); // through a slot
    assert!(!granted(&tree, "/t", Mode::S), "S granted beside IX");
    assert!(!granted(&tree, "/t", Mode::SIX), "SIX granted beside IX");
    assert!(!granted(&tree, "/t", Mode::X), "X granted beside IX");
    assert!(granted(&tree, "/t", Mode::IS));
    assert!(granted(&tree, "/t", Mode::IX));
    drop(ix);

    // {IS, S}: the word carries a phantom S.
    drop(tree.lock("/r", Mode::S).unwrap());
    let is = tree.lock("/r", Mode::IS).unwrap(); // through a slot
    assert!(granted(&tree, "/r", Mode::IX), "IX refused beside IS alone");
    assert!(
        granted(&tree, "/r", Mode::SIX),
        "SIX refused beside IS alone"
    );
    assert!(
        granted(&tree, "/r/row", Mode::X),
        "X below refused beside IS"
    );
    drop(is);
    drop(tree.lock("/r", Mode::S).unwrap());
    let s = tree.lock("/r", Mode::S).unwrap(); // through a slot
    assert!(!granted(&tree, "/r", Mode::IX), "IX granted beside S");
    assert!(
        !granted(&tree, "/r/row", Mode::X),
        "X below granted beside S"
    );
    assert!(granted(&tree, "/r/row", Mode::S));
    drop(s);

    // The root ({IS, IX} from all the intentions above) with nothing held.
    assert_all_released(&tree, "phantoms");
}

#[test]
fn slot_holders_of_several_threads_all_count_against_a_writer() {
    // Readers on four threads (different slots), each released in turn:
    // X stays refused until the last one is gone.
    let tree = always();
    drop(tree.lock("/hot", Mode::S).unwrap());
    let mut guards: Vec<Guard<'_>> = thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| tree.lock("/hot", Mode::S).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    while let Some(g) = guards.pop() {
        assert!(
            !granted(&tree, "/hot", Mode::X),
            "X beside {} readers",
            guards.len() + 1
        );
        assert!(!granted(&tree, "/", Mode::X));
        assert!(granted(&tree, "/hot", Mode::S));
        drop(g);
        // Re-bias for the next round (the X probe revoked).
        drop(tree.lock("/hot", Mode::S).unwrap());
    }
    assert!(granted(&tree, "/hot", Mode::X));
    assert_all_released(&tree, "readers on several threads");
}

#[test]
fn refused_try_lock_releases_the_slot_holds_it_took_above() {
    let tree = always();
    drop(tree.lock("/a/n/c", Mode::S).unwrap()); // /, /a, /a/n biased
    let x = tree.lock("/a/m", Mode::X).unwrap(); // /a revoked, now in the word
    drop(tree.lock("/a/n/c", Mode::S).unwrap()); // biased again
    let w = tree.lock("/a/n", Mode::X).unwrap();
    // IS on / and /a through slots, then refused on /a/n.
    for _ in 0..3 {
        assert_eq!(
            tree.try_lock("/a/n/c", Mode::S).unwrap_err(),
            Error::WouldBlock
        );
        assert_eq!(
            tree.lock_timeout("/a/n/c", Mode::S, Duration::from_millis(1))
                .unwrap_err(),
            Error::Timeout
        );
    }
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::IX, 2)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IX, 2)]);
    drop((x, w));
    assert_all_released(&tree, "refused requests");
}

#[test]
fn acquirable_sees_slot_holders_and_not_the_phantom() {
    let tree = always();
    drop(tree.lock("/t", Mode::IX).unwrap());
    let is = tree.lock("/t", Mode::IS).unwrap(); // through a slot
                                                 // S would be granted now: the phantom IX must not say otherwise.
    tree.wait_acquirable("/t", Mode::S, LONG).unwrap();
    // X would not, whatever the wait: the IS holder is real.
    assert_eq!(
        tree.wait_acquirable("/t", Mode::X, Duration::from_millis(1))
            .unwrap_err(),
        Error::Timeout
    );
    drop(is);

    // The future: pending while an IX slot holder holds, ready after.
    drop(tree.lock("/t", Mode::IX).unwrap()); // biased again
    let ix = tree.lock("/t", Mode::IX).unwrap();
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(tree.acquirable("/t", Mode::S));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    drop(ix);
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    assert_all_released(&tree, "acquirable");
}

#[test]
fn owner_holds_beside_slot_holders_are_reported_apart() {
    let tree = always();
    drop(tree.lock("/o", Mode::S).unwrap());
    let anon: Vec<_> = (0..3).map(|_| tree.lock("/o", Mode::S).unwrap()).collect();
    let owner = tree.owner();
    let og = owner.lock("/o", Mode::S).unwrap();
    let info = tree.inspect("/o").unwrap();
    let mut seen: Vec<(Option<_>, Mode, u64)> = info
        .granted
        .iter()
        .map(|g| (g.owner, g.mode, g.count))
        .collect();
    seen.sort();
    let mut want = vec![(None, Mode::S, 3), (Some(owner.id()), Mode::S, 1)];
    want.sort();
    assert_eq!(seen, want, "{info}");
    assert!(!granted(&tree, "/o", Mode::X));
    drop(anon);
    assert!(!granted(&tree, "/o", Mode::X), "the owner still holds S");
    drop(og);
    assert_all_released(&tree, "owner");
}

// ---- 2. writers blocked by slot holders are woken ----

/// Readers hold `read` on `read_path` through slots on as many threads; a
/// writer blocks on X at `write_path`; the readers release one by one and
/// the writer must get it after the last, not before.
fn writer_is_woken_by_slot_readers(read_path: &'static str, read: Mode, write_path: &'static str) {
    const READERS: usize = 3;
    let tree = Arc::new(always());
    drop(tree.lock(read_path, read).unwrap());
    let mut release = Vec::new();
    let mut readers = Vec::new();
    let (held_tx, held_rx) = mpsc::channel();
    let (gone_tx, gone_rx) = mpsc::channel();
    for _ in 0..READERS {
        let (tx, rx) = mpsc::channel::<()>();
        release.push(tx);
        let (t, held_tx, gone_tx) = (tree.clone(), held_tx.clone(), gone_tx.clone());
        readers.push(thread::spawn(move || {
            let g = t.lock(read_path, read).unwrap();
            held_tx.send(()).unwrap();
            rx.recv().unwrap();
            drop(g);
            gone_tx.send(()).unwrap();
        }));
    }
    for _ in 0..READERS {
        held_rx
            .recv_timeout(LONG)
            .expect("reader never got its lock");
    }
    let got = Arc::new(AtomicBool::new(false));
    let (got_tx, got_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let writer = {
        let (t, got) = (tree.clone(), got.clone());
        thread::spawn(move || {
            let g = t.lock(write_path, Mode::X).unwrap();
            got.store(true, Ordering::SeqCst);
            got_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            drop(g);
        })
    };
    // A reader-compatible probe is refused once the writer is queued.
    wait_until_queued(&tree, write_path, read.intention());
    let info = tree.inspect(write_path).unwrap();
    assert_eq!(info.waiting.len(), 1, "{info}");
    assert_eq!(info.waiting[0].mode, Mode::X);
    for (i, tx) in release.into_iter().enumerate() {
        assert!(
            !got.load(Ordering::SeqCst),
            "writer granted beside {} readers",
            READERS - i
        );
        let info = tree.inspect(read_path).unwrap();
        assert_eq!(holders(&info), vec![(read, (READERS - i) as u64)]);
        tx.send(()).unwrap();
        gone_rx.recv_timeout(LONG).expect("reader never released");
    }
    got_rx
        .recv_timeout(LONG)
        .expect("writer not woken by the last slot reader's release");
    assert_eq!(holders_of(&tree, write_path), vec![(Mode::X, 1)]);
    done_tx.send(()).unwrap();
    for h in readers {
        h.join().unwrap();
    }
    writer.join().unwrap();
    assert_all_released(&tree, "writer woken");
}

#[test]
fn writer_blocked_by_slot_readers_is_woken_on_the_same_node() {
    writer_is_woken_by_slot_readers("/hot", Mode::S, "/hot");
}

#[test]
fn writer_blocked_by_slot_intentions_is_woken_on_the_parent() {
    // The readers' IS on /db lives in slots; X on /db waits for them.
    writer_is_woken_by_slot_readers("/db/t", Mode::S, "/db");
    // IX holders in slots of an {IS, IX} node, and X on the root.
    writer_is_woken_by_slot_readers("/db/t", Mode::IX, "/");
}

/// A thread that takes S on `path` (through its slot, the node being
/// biased) and holds it until told to let go on the returned sender;
/// returns once the S is held.
fn reader_holding(
    tree: &Arc<LockTree>,
    path: &'static str,
) -> (thread::JoinHandle<()>, mpsc::Sender<()>) {
    let (held_tx, held_rx) = mpsc::channel();
    let (rel_tx, rel_rx) = mpsc::channel::<()>();
    let t = tree.clone();
    let reader = thread::spawn(move || {
        let g = t.lock(path, Mode::S).unwrap();
        held_tx.send(()).unwrap();
        rel_rx.recv().unwrap();
        drop(g);
    });
    held_rx.recv_timeout(LONG).unwrap();
    (reader, rel_tx)
}

#[test]
fn writer_blocked_by_a_single_slot_reader_is_woken() {
    let tree = Arc::new(always());
    drop(tree.lock("/hot", Mode::S).unwrap());
    let (reader, rel_tx) = reader_holding(&tree, "/hot");
    let t = tree.clone();
    let (got_tx, got_rx) = mpsc::channel();
    let writer = thread::spawn(move || {
        let g = t.lock("/hot", Mode::X).unwrap();
        got_tx.send(g.mode()).unwrap();
    });
    wait_until_queued(&tree, "/hot", Mode::S);
    assert!(
        got_rx.try_recv().is_err(),
        "writer granted beside the reader"
    );
    rel_tx.send(()).unwrap();
    assert_eq!(
        got_rx.recv_timeout(LONG).expect("writer never woken"),
        Mode::X
    );
    reader.join().unwrap();
    writer.join().unwrap();
    assert_all_released(&tree, "single reader");
}

// ---- 3. guards released on another thread ----

#[test]
fn slot_guards_dropped_on_another_thread_release_correctly() {
    let tree = Arc::new(always());
    // Bias everything first.
    drop(tree.lock("/d/r", Mode::S).unwrap());
    drop(tree.lock("/d/w", Mode::IX).unwrap());
    drop(tree.lock("/d/w/1", Mode::X).unwrap());

    // Taken on four threads (their own slots), dropped on a fifth.
    let (tx, rx) = mpsc::channel::<Vec<Guard<'_>>>();
    thread::scope(|s| {
        for i in 0..4 {
            let (t, tx) = (&*tree, tx.clone());
            s.spawn(move || {
                let mut gs = Vec::new();
                for k in 0..50 {
                    gs.push(t.lock("/d/r", Mode::S).unwrap());
                    gs.push(t.lock("/d/r", Mode::IS).unwrap());
                    gs.push(t.lock("/d/w", Mode::IX).unwrap());
                    gs.push(t.lock(format!("/d/w/{i}-{k}"), Mode::X).unwrap());
                }
                tx.send(gs).unwrap();
            });
        }
        drop(tx);
        let all: Vec<Vec<Guard<'_>>> = rx.iter().collect();
        assert_eq!(all.len(), 4);
        let total: usize = all.iter().map(Vec::len).sum();
        assert_eq!(
            holders_of(&tree, "/d/r"),
            vec![(Mode::IS, 200), (Mode::S, 200)]
        );
        assert_eq!(holders_of(&tree, "/d/w"), vec![(Mode::IX, 400)]);
        assert_eq!(
            holders_of(&tree, "/d"),
            vec![(Mode::IS, 400), (Mode::IX, 400)]
        );
        assert_eq!(total, 800);
        assert!(!granted(&tree, "/d/r", Mode::X));
        // Dropped on another thread, half before and half after a
        // conflicting request revoked the bias of /d/w.
        let tree = &*tree;
        s.spawn(move || {
            for (i, mut gs) in all.into_iter().enumerate() {
                if i == 2 {
                    assert!(!granted(tree, "/d/w", Mode::S));
                    assert!(!granted(tree, "/d", Mode::X));
                }
                gs.reverse();
                drop(gs);
            }
        });
    });
    assert_all_released(&tree, "guards dropped on another thread");
    assert!(granted(&tree, "/d/r", Mode::X));
    assert!(granted(&tree, "/d/w", Mode::X));
}

#[test]
fn owned_slot_guards_moved_across_threads_release_correctly() {
    let tree = Arc::new(always());
    drop(tree.lock_owned("/o/n", Mode::S).unwrap());
    let guards: Vec<_> = (0..10)
        .map(|_| tree.lock_owned("/o/n", Mode::S).unwrap())
        .collect();
    assert_eq!(holders_of(&tree, "/o/n"), vec![(Mode::S, 10)]);
    // Each dropped on its own thread, while another thread takes and
    // drops slot holds on the same node.
    let hs: Vec<_> = guards
        .into_iter()
        .map(|g| thread::spawn(move || drop(g)))
        .collect();
    let t = tree.clone();
    let churn = thread::spawn(move || {
        for _ in 0..200 {
            drop(t.lock("/o/n", Mode::S).unwrap());
        }
    });
    for h in hs {
        h.join().unwrap();
    }
    churn.join().unwrap();
    assert_all_released(&tree, "owned guards");
}

#[test]
fn a_handle_refused_below_its_window_levels_gives_them_back() {
    let tree = always();
    let h = tree.prepare("/a/n/c").unwrap();
    // Biases /, /a, /a/n and /a/n/c toward {IS, S} readers; the thread
    // claims its slot, so later locks through the handle take their
    // levels in windows.
    for _ in 0..3 {
        drop(h.lock(Mode::S).unwrap());
    }
    let w = tree.lock("/a/n", Mode::X).unwrap(); // revokes /a/n only
                                                 // IS on / and /a in windows, then refused on /a/n: the handle's quick
                                                 // path stops there and the general one refuses, giving back the two
                                                 // window holds.
    for _ in 0..3 {
        assert_eq!(h.try_lock(Mode::S).unwrap_err(), Error::WouldBlock);
        assert_eq!(
            h.lock_timeout(Mode::S, Duration::from_millis(1))
                .unwrap_err(),
            Error::Timeout
        );
    }
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::IX, 1)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IX, 1)]);
    assert!(!granted(&tree, "/a/n/c", Mode::IS));
    drop(w);
    let r = h.lock(Mode::S).unwrap();
    assert!(
        !granted(&tree, "/a", Mode::X),
        "the reader's IS on /a counts"
    );
    assert!(granted(&tree, "/a/m", Mode::X));
    drop(r);
    drop(h);
    assert_all_released(&tree, "refused handle locks");
}

#[test]
fn a_handles_window_guards_released_elsewhere_and_after_a_revoke() {
    let tree = Arc::new(always());
    let h = tree.prepare_owned("/db/t").unwrap();
    for _ in 0..3 {
        drop(h.lock_owned(Mode::S).unwrap());
    }
    let mut guards: Vec<_> = (0..12).map(|_| h.lock_owned(Mode::S).unwrap()).collect();
    assert_eq!(holders_of(&tree, "/db/t"), vec![(Mode::S, 12)]);
    assert_eq!(holders_of(&tree, "/db"), vec![(Mode::IS, 12)]);
    // A third dropped on other threads while the slots are active.
    for g in guards.drain(..4) {
        thread::spawn(move || drop(g)).join().unwrap();
    }
    assert_eq!(holders_of(&tree, "/db/t"), vec![(Mode::S, 8)]);
    // A writer on /db revokes /db's bias (and waits for the readers):
    // the remaining holds there are debts of the slot now.
    let t = tree.clone();
    let writer = thread::spawn(move || drop(t.lock("/db", Mode::X).unwrap()));
    wait_until_queued(&tree, "/db", Mode::IS);
    // Released on the owning thread after the revoke (the window finds
    // its gate closed and pays the debt) and on other threads.
    for g in guards.drain(..4) {
        drop(g);
    }
    for g in guards.drain(..) {
        thread::spawn(move || drop(g)).join().unwrap();
    }
    watchdog(LONG, "the writer on /db", move || writer.join().unwrap());
    drop(h);
    assert_all_released(&tree, "window guards");
}

// ---- 4. conversions and renames of slot holds ----

#[test]
fn upgrade_of_a_slot_guard_converts_every_level() {
    let tree = always();
    drop(tree.lock("/a/n", Mode::S).unwrap());
    let mut g = tree.lock("/a/n", Mode::S).unwrap(); // slots on /, /a, /a/n
    let other = tree.lock("/a/n", Mode::S).unwrap(); // a second slot holder
    assert_eq!(g.try_upgrade(Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(g.mode(), Mode::S, "a failed upgrade keeps the mode");
    assert_eq!(holders_of(&tree, "/a/n"), vec![(Mode::S, 2)]);
    drop(other);
    g.upgrade(Mode::X).unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert_eq!(holders_of(&tree, "/a/n"), vec![(Mode::X, 1)]);
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::IX, 1)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IX, 1)]);
    for m in MODES {
        assert!(!granted(&tree, "/a/n", m), "{m} beside X");
        assert!(!granted(&tree, "/a/n/c", m), "{m} below X");
    }
    assert!(!granted(&tree, "/a", Mode::S), "S above X");
    assert!(granted(&tree, "/a/m", Mode::X), "a sibling of X");

    g.downgrade(Mode::S).unwrap();
    assert_eq!(g.mode(), Mode::S);
    assert_eq!(holders_of(&tree, "/a/n"), vec![(Mode::S, 1)]);
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::IS, 1)]);
    assert!(granted(&tree, "/a/n", Mode::S));
    assert!(!granted(&tree, "/a/n", Mode::IX));
    assert!(granted(&tree, "/a", Mode::S), "S above S");
    drop(g);
    assert_all_released(&tree, "upgrade");
}

#[test]
fn conversions_of_slot_guards_in_both_classes() {
    // From every mode a class admits, held through a slot, to every mode it
    // can be upgraded or downgraded to.
    for held in [Mode::IS, Mode::IX, Mode::S] {
        for to in MODES {
            let tree = always();
            drop(tree.lock("/p/n", held).unwrap());
            let mut g = tree.lock("/p/n", held).unwrap();
            let what = format!("{held} -> {to}");
            let target = if covers(held, to) {
                g.downgrade(to).unwrap();
                to
            } else {
                g.upgrade(to).unwrap();
                held.join(to)
            };
            assert_eq!(g.mode(), target, "{what}");
            assert_eq!(holders_of(&tree, "/p/n"), vec![(target, 1)], "{what}");
            assert_eq!(
                holders_of(&tree, "/p"),
                vec![(intention(target), 1)],
                "{what}"
            );
            for req in MODES {
                assert_eq!(
                    granted(&tree, "/p/n", req),
                    compatible(target, req),
                    "{what}: {req} on the node"
                );
                assert_eq!(
                    granted(&tree, "/p", req),
                    compatible(intention(target), req),
                    "{what}: {req} on the parent"
                );
            }
            drop(g);
            assert_all_released(&tree, &what);
        }
    }
}

#[test]
fn conversions_of_the_word_hold_that_biased_the_node_beside_a_slot_holder() {
    // With `Bias::Always` the first hold is in the word and biases the node;
    // a second holder (IS, admitted by both classes) lives in a slot. The
    // first one then converts: it must see the slot holder, and the node
    // must see its new mode.
    for held in [Mode::IS, Mode::IX, Mode::S] {
        for to in MODES {
            let tree = always();
            let mut g = tree.lock("/p/n", held).unwrap();
            let other = tree.lock("/p/n", Mode::IS).unwrap();
            let what = format!("{held} -> {to} beside a slot IS");
            let target = if covers(held, to) {
                g.downgrade(to).unwrap();
                to
            } else {
                let joined = held.join(to);
                match g.try_upgrade(to) {
                    Ok(()) => assert!(compatible(Mode::IS, joined), "{what}: upgraded beside IS"),
                    Err(Error::WouldBlock) => {
                        assert!(!compatible(Mode::IS, joined), "{what}: refused");
                        assert_eq!(g.mode(), held, "{what}: mode kept");
                        assert_eq!(
                            holders_of(&tree, "/p/n"),
                            if held == Mode::IS {
                                vec![(Mode::IS, 2)]
                            } else {
                                vec![(Mode::IS, 1), (held, 1)]
                            },
                            "{what}"
                        );
                        drop(other);
                        drop(g);
                        assert_all_released(&tree, &what);
                        continue;
                    }
                    Err(e) => panic!("{what}: {e:?}"),
                }
                joined
            };
            assert_eq!(g.mode(), target, "{what}");
            let mut want = vec![(Mode::IS, 1), (target, 1)];
            if target == Mode::IS {
                want = vec![(Mode::IS, 2)];
            }
            want.sort();
            assert_eq!(holders_of(&tree, "/p/n"), want, "{what}");
            for req in MODES {
                assert_eq!(
                    granted(&tree, "/p/n", req),
                    compatible(target, req) && compatible(Mode::IS, req),
                    "{what}: {req} on the node"
                );
            }
            drop(other);
            for req in MODES {
                assert_eq!(
                    granted(&tree, "/p/n", req),
                    compatible(target, req),
                    "{what}: {req} on the node, the slot holder gone"
                );
            }
            drop(g);
            assert_all_released(&tree, &what);
        }
    }
}

#[test]
fn blocking_upgrade_of_a_slot_guard_waits_for_the_other_slot_readers() {
    let tree = Arc::new(always());
    drop(tree.lock("/u", Mode::S).unwrap());
    let (reader, rel_tx) = reader_holding(&tree, "/u");
    let t = tree.clone();
    let (got_tx, got_rx) = mpsc::channel();
    let upgrader = thread::spawn(move || {
        let mut g = t.lock("/u", Mode::S).unwrap();
        g.upgrade(Mode::X).unwrap();
        got_tx.send(g.mode()).unwrap();
        drop(g);
    });
    // The queued conversion turns new readers away.
    wait_until_queued(&tree, "/u", Mode::IS);
    assert!(got_rx.try_recv().is_err(), "upgraded beside a reader");
    rel_tx.send(()).unwrap();
    assert_eq!(
        got_rx.recv_timeout(LONG).expect("upgrade never woken"),
        Mode::X
    );
    reader.join().unwrap();
    upgrader.join().unwrap();
    assert_all_released(&tree, "blocking upgrade");
}

#[test]
fn two_slot_readers_upgrading_into_each_other_one_gets_deadlock() {
    let tree = Arc::new(always());
    drop(tree.lock("/dl", Mode::S).unwrap());
    let barrier = Arc::new(Barrier::new(2));
    let (t, b) = (tree.clone(), barrier.clone());
    let other = thread::spawn(move || {
        let mut g = t.lock("/dl", Mode::S).unwrap();
        b.wait();
        b.wait(); // main holds S too
        g.upgrade(Mode::X).map(|()| g.mode())
    });
    barrier.wait();
    let mut g = tree.lock("/dl", Mode::S).unwrap();
    barrier.wait();
    wait_until_queued(&tree, "/dl", Mode::IS);
    assert_eq!(g.upgrade(Mode::X).unwrap_err(), Error::Deadlock);
    assert_eq!(g.mode(), Mode::S);
    drop(g);
    let r = watchdog(LONG, "the other upgrader", move || other.join().unwrap());
    assert_eq!(r, Ok(Mode::X));
    assert_all_released(&tree, "conversion deadlock");
}

#[test]
fn rename_of_a_slot_guard_moves_the_hold() {
    let tree = always();
    drop(tree.lock("/tmp/a", Mode::S).unwrap());
    drop(tree.lock("/files/b", Mode::S).unwrap());
    let mut g = tree.lock("/tmp/a", Mode::S).unwrap(); // slots
    let other = tree.lock("/tmp/a", Mode::S).unwrap(); // another slot holder
    g.rename("/files/b").unwrap(); // new path through slots too
    assert_eq!(g.path().to_string(), "/files/b");
    assert_eq!(g.mode(), Mode::S);
    assert_eq!(holders_of(&tree, "/files/b"), vec![(Mode::S, 1)]);
    assert_eq!(holders_of(&tree, "/tmp/a"), vec![(Mode::S, 1)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IS, 2)]);
    assert!(!granted(&tree, "/files/b", Mode::X));
    assert!(!granted(&tree, "/tmp/a", Mode::X), "the other holder");
    drop(other);
    assert!(granted(&tree, "/tmp/a", Mode::X), "the old path released");

    // Within a shared prefix, and an IX hold of an {IS, IX} node.
    drop(tree.lock("/db/t1", Mode::IX).unwrap());
    let mut w = tree.lock("/db/t1", Mode::IX).unwrap();
    w.rename("/db/t2").unwrap();
    assert_eq!(holders_of(&tree, "/db"), vec![(Mode::IX, 1)]);
    assert_eq!(holders_of(&tree, "/db/t2"), vec![(Mode::IX, 1)]);
    assert!(holders_of(&tree, "/db/t1").is_empty());
    assert!(granted(&tree, "/db/t1", Mode::X));
    assert!(!granted(&tree, "/db/t2", Mode::S));

    // A refused try_rename keeps everything as it was.
    let blocker = tree.lock("/files/c", Mode::X).unwrap();
    assert_eq!(g.try_rename("/files/c").unwrap_err(), Error::WouldBlock);
    assert_eq!(g.path().to_string(), "/files/b");
    assert!(!granted(&tree, "/files/b", Mode::X));
    drop(blocker);
    // Then renamed up onto an ancestor: IS on /files becomes S.
    g.rename("/files").unwrap();
    assert_eq!(holders_of(&tree, "/files"), vec![(Mode::S, 1)]);
    assert!(!granted(&tree, "/files/b", Mode::X));
    drop((g, w));
    assert_all_released(&tree, "rename");
}

// ---- 5. introspection ----

#[test]
fn inspect_and_snapshot_count_slot_holders_and_never_the_phantom() {
    let tree = always();
    drop(tree.lock("/db/hot", Mode::S).unwrap());
    drop(tree.lock("/db/t", Mode::IX).unwrap());
    // Nothing held: nothing reported, though the nodes are biased.
    assert!(tree.snapshot().nodes.is_empty(), "{}", tree.snapshot());
    for p in ["/", "/db", "/db/hot", "/db/t"] {
        assert!(holders_of(&tree, p).is_empty(), "{p}");
    }

    let mut gs = Vec::new();
    // Three S readers on this thread (one slot) and two on others.
    for _ in 0..3 {
        gs.push(tree.lock("/db/hot", Mode::S).unwrap());
    }
    thread::scope(|s| {
        for _ in 0..2 {
            let g = s.spawn(|| tree.lock("/db/hot", Mode::S).unwrap());
            gs.push(g.join().unwrap());
        }
    });
    gs.push(tree.lock("/db/hot", Mode::IS).unwrap());
    // IX writers' intentions on an {IS, IX} node, plus one IS.
    for _ in 0..4 {
        gs.push(tree.lock("/db/t", Mode::IX).unwrap());
    }
    gs.push(tree.lock("/db/t", Mode::IS).unwrap());

    assert_eq!(
        holders_of(&tree, "/db/hot"),
        vec![(Mode::IS, 1), (Mode::S, 5)]
    );
    assert_eq!(
        holders_of(&tree, "/db/t"),
        vec![(Mode::IS, 1), (Mode::IX, 4)]
    );
    assert_eq!(holders_of(&tree, "/db"), vec![(Mode::IS, 7), (Mode::IX, 4)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IS, 7), (Mode::IX, 4)]);
    let snap = tree.snapshot();
    let paths: Vec<String> = snap.nodes.iter().map(|n| n.path.to_string()).collect();
    assert_eq!(paths, ["/", "/db", "/db/hot", "/db/t"]);
    for n in &snap.nodes {
        assert_eq!(holders(n), holders_of(&tree, n.path.as_str()), "{n}");
        assert!(n.waiting.is_empty(), "{n}");
        assert_eq!(n.prepared, 0, "the bias list is no prepared handle: {n}");
    }
    assert_eq!(tree.node_count(), 3);

    // After a revoke the same counts come from the word alone.
    assert!(!granted(&tree, "/db/hot", Mode::X));
    assert!(!granted(&tree, "/db/t", Mode::S));
    assert!(!granted(&tree, "/", Mode::X));
    assert_eq!(
        holders_of(&tree, "/db/hot"),
        vec![(Mode::IS, 1), (Mode::S, 5)]
    );
    assert_eq!(
        holders_of(&tree, "/db/t"),
        vec![(Mode::IS, 1), (Mode::IX, 4)]
    );
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IS, 7), (Mode::IX, 4)]);

    // Half released (some paying debts in the word), then biased again and
    // a few more through slots.
    gs.truncate(5);
    drop(tree.lock("/db/hot", Mode::S).unwrap());
    gs.push(tree.lock("/db/hot", Mode::S).unwrap());
    assert_eq!(holders_of(&tree, "/db/hot"), vec![(Mode::S, 6)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IS, 6)]);
    drop(gs);
    assert!(tree.snapshot().nodes.is_empty(), "{}", tree.snapshot());
    assert_all_released(&tree, "introspection");
}

#[test]
fn prepared_counts_only_real_handles_on_a_biased_node() {
    let tree = always();
    let p = tree.prepare("/db/users").unwrap();
    drop(p.lock(Mode::S).unwrap()); // biases the handle's nodes
    let g1 = p.lock(Mode::S).unwrap(); // through slots
    let g2 = tree.lock("/db/users", Mode::S).unwrap();
    let info = tree.inspect("/db/users").unwrap();
    assert_eq!(info.prepared, 1, "{info:?}");
    assert_eq!(holders(&info), vec![(Mode::S, 2)]);
    let q = tree.prepare("/db/users").unwrap();
    assert_eq!(tree.inspect("/db/users").unwrap().prepared, 2);
    assert_eq!(tree.inspect("/db").unwrap().prepared, 2);
    drop((p, q));
    assert_eq!(tree.inspect("/db/users").unwrap().prepared, 0);
    assert_eq!(tree.inspect("/db").unwrap().prepared, 0);
    assert_eq!(tree.node_count(), 2);
    drop((g1, g2));
    assert_eq!(tree.inspect("/db/users").unwrap().prepared, 0);
    assert_all_released(&tree, "prepared");

    // A prepared handle alone keeps a node counted; the bias list does not.
    let p = tree.prepare("/x").unwrap();
    drop(p.lock(Mode::S).unwrap());
    drop(p.lock(Mode::S).unwrap());
    assert_eq!(tree.node_count(), 1);
    assert_eq!(tree.inspect("/x").unwrap().prepared, 1);
    drop(p);
    assert_eq!(tree.node_count(), 0);
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    assert_all_released(&tree, "prepared alone");
}

// ---- 6. more than MAX_BIASED hot nodes ----

fn many_hot_nodes(tree: &LockTree, n: usize) {
    // Each row biased at its first S, then held once more through a slot.
    let mut gs = Vec::new();
    for i in 0..n {
        let p = format!("/h/{i}");
        drop(tree.lock(p.as_str(), Mode::S).unwrap());
        gs.push(tree.lock(p.as_str(), Mode::S).unwrap());
    }
    assert_eq!(tree.node_count(), n + 1);
    assert_eq!(holders_of(tree, "/h"), vec![(Mode::IS, n as u64)]);
    // Every row, biased or revoked by the list's bound, still excludes X.
    for i in (0..n).step_by(7) {
        assert!(!granted(tree, &format!("/h/{i}"), Mode::X), "row {i}");
    }
    drop(gs);
    assert_eq!(tree.node_count(), 0, "nodes kept only by the bias list");
}

#[test]
fn more_than_max_biased_nodes_are_bounded_and_reclaimed() {
    assert_eq!(MAX_BIASED, 64);
    let n = 3 * MAX_BIASED;
    let tree = always();
    many_hot_nodes(&tree, n);
    // n + 1 non-root nodes, at most MAX_BIASED of them listed: the rest
    // were revoked and, idle, went to the idle cache.
    let idle = tree.idle_node_count();
    assert!(
        idle >= n + 1 - MAX_BIASED && idle <= n + 1,
        "{idle} idle nodes of {}",
        n + 1
    );
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    assert_eq!(tree.node_count(), 0);
    // Locks still work. X never biases: every row, off the bias list since
    // the purge, goes to the idle cache once released (/h, under IX, is
    // biased again and stays off it).
    for i in 0..n {
        assert!(granted(&tree, &format!("/h/{i}"), Mode::X));
    }
    assert_eq!(tree.idle_node_count(), n, "rows purge_idle left biased");
    assert_eq!(tree.node_count(), 0);
    many_hot_nodes(&tree, n);
    assert_all_released(&tree, "many hot nodes");
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
}

#[test]
fn more_than_max_biased_nodes_with_no_idle_cache() {
    let tree = LockTree::builder().bias(Bias::Always).idle_nodes(0).build();
    for round in 0..3 {
        many_hot_nodes(&tree, 2 * MAX_BIASED + 5);
        assert_eq!(tree.idle_node_count(), 0, "round {round}");
        // Distinct rows every round: a leak of unlisted nodes would show
        // as live nodes nobody holds.
        for i in 0..1000 {
            drop(tree.lock(format!("/r{round}/{i}"), Mode::S).unwrap());
        }
        assert_eq!(tree.node_count(), 0, "round {round}");
        tree.purge_idle();
        assert_eq!(tree.node_count(), 0, "round {round}");
        assert_eq!(tree.idle_node_count(), 0, "round {round}");
    }
    assert_all_released(&tree, "no idle cache");
}

#[test]
fn a_held_node_revoked_by_the_list_bound_keeps_its_holders() {
    let tree = always();
    drop(tree.lock("/keep", Mode::S).unwrap());
    let g = tree.lock("/keep", Mode::S).unwrap(); // in a slot
                                                  // Bias MAX_BIASED other nodes: /keep is the oldest and is revoked.
    for i in 0..MAX_BIASED + 2 {
        drop(tree.lock(format!("/other{i}"), Mode::S).unwrap());
    }
    assert_eq!(tree.node_count(), 1);
    assert_eq!(holders_of(&tree, "/keep"), vec![(Mode::S, 1)]);
    assert!(!granted(&tree, "/keep", Mode::X));
    assert!(granted(&tree, "/keep", Mode::S));
    drop(g);
    assert!(granted(&tree, "/keep", Mode::X));
    assert_all_released(&tree, "revoked by the list bound");
}

#[test]
fn purge_idle_while_slot_holds_are_outstanding() {
    let tree = always();
    drop(tree.lock("/a/b", Mode::S).unwrap());
    let gs: Vec<_> = (0..5)
        .map(|_| tree.lock("/a/b", Mode::S).unwrap())
        .collect();
    tree.purge_idle();
    assert_eq!(tree.node_count(), 2);
    assert_eq!(holders_of(&tree, "/a/b"), vec![(Mode::S, 5)]);
    assert!(!granted(&tree, "/a/b", Mode::X));
    assert!(!granted(&tree, "/a", Mode::X));
    assert!(granted(&tree, "/a", Mode::IX), "IX beside IS");
    drop(gs);
    assert_all_released(&tree, "purge while held");
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
}

// ---- 7. TooManyHolders ----

#[test]
fn too_many_holders_is_exact_on_a_biased_node() {
    let tree = always();
    let max = usize::try_from(MAX_SHARED_HOLDERS).unwrap();
    drop(tree.lock("/a", Mode::S).unwrap());
    // Four threads fill their slots, then the word up to the bias
    // headroom, then (revoked) up to the real maximum.
    const THREADS: usize = 4;
    let mut guards: Vec<Guard<'_>> = thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|i| {
                let tree = &tree;
                let n = max / THREADS + usize::from(i < max % THREADS);
                s.spawn(move || {
                    let mut gs = Vec::with_capacity(n);
                    for k in 0..n {
                        match tree.try_lock("/a", Mode::S) {
                            Ok(g) => gs.push(g),
                            Err(e) => panic!("thread {i}, reader {k} of {n}: {e:?}"),
                        }
                    }
                    gs
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(guards.len(), max);
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::S, MAX_SHARED_HOLDERS)]);

    // One more, through every entry point: refused, never wrapped.
    assert_eq!(
        tree.try_lock("/a", Mode::S).unwrap_err(),
        Error::TooManyHolders
    );
    assert_eq!(tree.lock("/a", Mode::S).unwrap_err(), Error::TooManyHolders);
    assert_eq!(
        futures::executor::block_on(tree.lock_async("/a", Mode::S)).unwrap_err(),
        Error::TooManyHolders
    );
    assert!(!granted(&tree, "/a", Mode::X));
    assert!(!granted(&tree, "/a", Mode::IX));
    assert!(!granted(&tree, "/a/b", Mode::X));
    assert!(granted(&tree, "/a", Mode::IS));
    assert_eq!(holders_of(&tree, "/a"), vec![(Mode::S, MAX_SHARED_HOLDERS)]);

    // Releasing one lets exactly one more in, on another thread too.
    guards.pop();
    guards.push(tree.try_lock("/a", Mode::S).unwrap());
    thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(
                tree.try_lock("/a", Mode::S).unwrap_err(),
                Error::TooManyHolders
            );
        });
    });
    drop(guards);
    assert_all_released(&tree, "too many holders");
    assert!(granted(&tree, "/a", Mode::X));
}

// ---- 8. stress with a shadow oracle ----

type Comps = Vec<&'static str>;

fn mode_at(path: &Comps, m: Mode, level: usize) -> Mode {
    if level == path.len() {
        m
    } else {
        intention(m)
    }
}

/// The first common level where holders (p, m) and (q, n) conflict.
fn conflict(p: &Comps, m: Mode, q: &Comps, n: Mode) -> Option<usize> {
    let common_len = p.iter().zip(q).take_while(|(a, b)| a == b).count();
    (0..=common_len).find(|&level| !compatible(mode_at(p, m, level), mode_at(q, n, level)))
}

#[derive(Default)]
struct Shadow {
    held: Mutex<HashMap<u64, (Comps, Mode)>>,
}

impl Shadow {
    fn grant(&self, id: u64, path: &Comps, m: Mode, how: &str) {
        let mut held = self.held.lock().unwrap();
        for (&other, (q, n)) in held.iter() {
            if other != id {
                if let Some(level) = conflict(path, m, q, *n) {
                    panic!(
                        "oracle: {m} on /{} ({how}) granted while #{other} holds {n} on /{} \
                         (conflict at level {level})",
                        path.join("/"),
                        q.join("/")
                    );
                }
            }
        }
        held.insert(id, (path.clone(), m));
    }

    fn weaken(&self, id: u64, m: Mode) {
        self.held.lock().unwrap().get_mut(&id).unwrap().1 = m;
    }

    fn release(&self, id: u64) {
        assert!(self.held.lock().unwrap().remove(&id).is_some());
    }
}

fn random_path(rng: &mut StdRng) -> Comps {
    match rng.gen_range(0..20) {
        0 => vec![],
        1..=6 => vec![["a", "b"][rng.gen_range(0..2)]],
        _ => vec![
            ["a", "b"][rng.gen_range(0..2)],
            ["x", "y"][rng.gen_range(0..2)],
        ],
    }
}

const STRESS_THREADS: usize = 4;
const STRESS_OPS: usize = 8_000;

#[derive(Default)]
struct Counts {
    grants: AtomicUsize,
    refusals: AtomicUsize,
    upgrades: AtomicUsize,
    downgrades: AtomicUsize,
    handed: AtomicUsize,
}

fn stress_worker<'t>(
    tree: &'t LockTree,
    shadow: &Shadow,
    counts: &Counts,
    ids: &AtomicUsize,
    dropper: mpsc::Sender<(u64, Guard<'t>)>,
    tid: usize,
) {
    let mut rng = StdRng::seed_from_u64(0xB1A5_0000 + tid as u64);
    let mut held: Vec<(u64, Comps, Guard<'t>)> = Vec::new();
    // A prepared handle for every path `random_path` makes: their slot
    // holds are taken and given back in owner windows, the plain walk's
    // with CAS.
    let mut prepared = std::collections::HashMap::new();
    for first in ["", "a", "b"] {
        for second in ["", "x", "y"] {
            let path: Comps = [first, second]
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect();
            if first.is_empty() && !second.is_empty() {
                continue;
            }
            prepared.insert(path.clone(), tree.prepare(&path[..]).unwrap());
        }
    }
    let short = |rng: &mut StdRng| Duration::from_micros(rng.gen_range(0..500));
    for _ in 0..STRESS_OPS {
        let op = rng.gen_range(0..10);
        if held.len() < 2 && (op < 5 || held.is_empty()) {
            let path = random_path(&mut rng);
            // Mostly the modes a bias class admits; X and SIX revoke.
            let mode = [
                Mode::IS,
                Mode::IS,
                Mode::IX,
                Mode::S,
                Mode::S,
                Mode::X,
                Mode::SIX,
            ][rng.gen_range(0..7)];
            let (how, r) = match rng.gen_range(0..6) {
                0 if held.is_empty() => ("lock", tree.lock(&path[..], mode)),
                1 if held.is_empty() => (
                    "lock_async",
                    futures::executor::block_on(tree.lock_async(&path[..], mode)),
                ),
                2 => ("try_lock", tree.try_lock(&path[..], mode)),
                3 => ("prepared try_lock", prepared[&path].try_lock(mode)),
                4 => {
                    let d = short(&mut rng);
                    (
                        "prepared lock_timeout",
                        prepared[&path].lock_timeout(mode, d),
                    )
                }
                _ => {
                    let d = short(&mut rng);
                    ("lock_timeout", tree.lock_timeout(&path[..], mode, d))
                }
            };
            match r {
                Ok(g) => {
                    assert_eq!(g.mode(), mode);
                    let id = ids.fetch_add(1, Ordering::Relaxed) as u64;
                    shadow.grant(id, &path, mode, how);
                    counts.grants.fetch_add(1, Ordering::Relaxed);
                    held.push((id, path, g));
                }
                Err(Error::WouldBlock | Error::Timeout) => {
                    counts.refusals.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => panic!("{how}: unexpected {e:?}"),
            }
        } else if op < 6 {
            let i = rng.gen_range(0..held.len());
            let (id, path, g) = &mut held[i];
            let before = g.mode();
            let req = MODES[rng.gen_range(0..5)];
            let r = if rng.gen_bool(0.5) {
                g.try_upgrade(req)
            } else {
                let d = short(&mut rng);
                g.upgrade_timeout(req, d)
            };
            match r {
                Ok(()) => {
                    assert_eq!(g.mode(), before.join(req));
                    if g.mode() != before {
                        shadow.grant(*id, path, g.mode(), "upgrade");
                        counts.upgrades.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(Error::WouldBlock | Error::Timeout | Error::Deadlock) => {
                    assert_eq!(g.mode(), before);
                }
                Err(e) => panic!("upgrade: unexpected {e:?}"),
            }
        } else if op < 7 {
            let i = rng.gen_range(0..held.len());
            let (id, _, g) = &mut held[i];
            let to = MODES[rng.gen_range(0..5)];
            if covers(g.mode(), to) {
                shadow.weaken(*id, to);
                g.downgrade(to).unwrap();
                assert_eq!(g.mode(), to);
                counts.downgrades.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            let i = rng.gen_range(0..held.len());
            let (id, _, g) = held.swap_remove(i);
            if rng.gen_bool(0.3) {
                // Released by another thread than the one that took it.
                counts.handed.fetch_add(1, Ordering::Relaxed);
                dropper.send((id, g)).unwrap();
            } else {
                shadow.release(id);
                drop(g);
            }
        }
        if rng.gen_bool(0.05) {
            thread::yield_now();
        }
    }
    for (id, _, g) in held {
        shadow.release(id);
        drop(g);
    }
}

fn stress(tree: LockTree) {
    let tree = Arc::new(tree);
    let shadow = Arc::new(Shadow::default());
    let counts = Arc::new(Counts::default());
    let (t, sh, c) = (tree.clone(), shadow.clone(), counts.clone());
    watchdog(Duration::from_secs(60), "bias stress", move || {
        let ids = AtomicUsize::new(0);
        thread::scope(|s| {
            let (tx, rx) = mpsc::channel::<(u64, Guard<'_>)>();
            let sh2 = &*sh;
            s.spawn(move || {
                for (id, g) in rx {
                    sh2.release(id);
                    drop(g);
                }
            });
            for tid in 0..STRESS_THREADS {
                let (t, sh, c, ids, tx) = (&*t, &*sh, &*c, &ids, tx.clone());
                s.spawn(move || stress_worker(t, sh, c, ids, tx, tid));
            }
        });
    });
    assert!(shadow.held.lock().unwrap().is_empty());
    assert_all_released(&tree, "stress");
    tree.purge_idle();
    assert_eq!(tree.idle_node_count(), 0);
    assert_eq!(tree.node_count(), 0);
    let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    eprintln!(
        "bias stress: {} grants, {} refusals, {} upgrades, {} downgrades, {} released elsewhere",
        g(&counts.grants),
        g(&counts.refusals),
        g(&counts.upgrades),
        g(&counts.downgrades),
        g(&counts.handed)
    );
    assert!(g(&counts.grants) > 3000);
    assert!(g(&counts.refusals) > 0);
    assert!(g(&counts.upgrades) > 0);
    assert!(g(&counts.downgrades) > 0);
    assert!(g(&counts.handed) > 0);
}

#[test]
fn stress_oracle_with_every_node_biased() {
    stress(always());
}

#[test]
fn stress_oracle_biased_with_no_idle_cache() {
    stress(LockTree::builder().bias(Bias::Always).idle_nodes(0).build());
}

#[test]
fn stress_oracle_with_adaptive_bias() {
    stress(LockTree::builder().bias(Bias::Adaptive).build());
}

#[test]
fn stress_oracle_shadow_knows_gray_and_the_hierarchy() {
    let p = |s: &[&'static str]| s.to_vec();
    assert!(conflict(&p(&["a"]), Mode::S, &p(&["a"]), Mode::IX).is_some());
    assert!(conflict(&p(&["a"]), Mode::S, &p(&["a"]), Mode::IS).is_none());
    assert_eq!(
        conflict(&p(&["a"]), Mode::S, &p(&["a", "x"]), Mode::X),
        Some(1)
    );
    assert_eq!(
        conflict(&p(&[]), Mode::X, &p(&["b", "y"]), Mode::IS),
        Some(0)
    );
    assert!(conflict(&p(&["a", "x"]), Mode::X, &p(&["a", "y"]), Mode::X).is_none());
}

/// Slot acquisitions and releases racing with revokes: three threads take
/// X (IX on `/hot`, through its slots) or S (IS there) on rows under `/hot`,
/// while a fourth keeps taking S and X on `/hot` itself, each of which
/// revokes the bias that the next row lock (with `Bias::Always`) sets again.
/// Counters kept inside the critical sections check exclusion.
fn rows_against_a_table_writer(tree: LockTree) {
    const ROWS: usize = 3;
    const ROW_OPS: usize = 5000;
    const TABLE_OPS: usize = 400;
    let tree = Arc::new(tree);
    let t = tree.clone();
    watchdog(
        Duration::from_secs(60),
        "rows against a table writer",
        move || {
            let row_ix = AtomicI64::new(0); // row writers: IX on /hot
            let row_is = AtomicI64::new(0); // row readers: IS on /hot
            let table_s = AtomicBool::new(false);
            let table_x = AtomicBool::new(false);
            let tree = &*t;
            thread::scope(|s| {
                for r in 0..ROWS {
                    let (row_ix, row_is, table_s, table_x) = (&row_ix, &row_is, &table_s, &table_x);
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(0x0B0E + r as u64);
                        for _ in 0..ROW_OPS {
                            let row = format!("/hot/{}", rng.gen_range(0..8));
                            if rng.gen_bool(0.5) {
                                let g = tree.lock(row.as_str(), Mode::X).unwrap();
                                row_ix.fetch_add(1, Ordering::SeqCst);
                                assert!(!table_s.load(Ordering::SeqCst), "row X beside table S");
                                assert!(!table_x.load(Ordering::SeqCst), "row X beside table X");
                                row_ix.fetch_sub(1, Ordering::SeqCst);
                                drop(g);
                            } else {
                                let g = tree.lock(row.as_str(), Mode::S).unwrap();
                                row_is.fetch_add(1, Ordering::SeqCst);
                                assert!(!table_x.load(Ordering::SeqCst), "row S beside table X");
                                row_is.fetch_sub(1, Ordering::SeqCst);
                                drop(g);
                            }
                        }
                    });
                }
                s.spawn(|| {
                    for k in 0..TABLE_OPS {
                        if k % 2 == 0 {
                            let g = tree.lock("/hot", Mode::S).unwrap();
                            table_s.store(true, Ordering::SeqCst);
                            assert_eq!(row_ix.load(Ordering::SeqCst), 0, "table S beside row X");
                            thread::yield_now();
                            table_s.store(false, Ordering::SeqCst);
                            drop(g);
                        } else {
                            let g = tree.lock("/hot", Mode::X).unwrap();
                            table_x.store(true, Ordering::SeqCst);
                            assert_eq!(row_ix.load(Ordering::SeqCst), 0, "table X beside row X");
                            assert_eq!(row_is.load(Ordering::SeqCst), 0, "table X beside row S");
                            thread::yield_now();
                            table_x.store(false, Ordering::SeqCst);
                            drop(g);
                        }
                    }
                });
            });
        },
    );
    assert_all_released(&tree, "rows against a table writer");
}

#[test]
fn slot_holds_racing_with_revokes_never_meet_a_conflicting_holder() {
    rows_against_a_table_writer(always());
}

#[test]
fn slot_holds_racing_with_revokes_and_unlinks_with_no_idle_cache() {
    rows_against_a_table_writer(LockTree::builder().bias(Bias::Always).idle_nodes(0).build());
}

/// `Bias::Adaptive` under real contention: readers hammer one hot node
/// until it is observed biased (the bias list keeps it out of the idle
/// cache), while a writer keeps checking exclusion through a counter.
#[test]
fn adaptive_bias_under_contention_keeps_writers_exclusive() {
    const READERS: usize = 3;
    let tree = Arc::new(LockTree::builder().bias(Bias::Adaptive).build());
    let readers_in = Arc::new(AtomicI64::new(0));
    let writer_in = Arc::new(AtomicBool::new(false));
    let biased_seen = watchdog(Duration::from_secs(60), "adaptive contention", {
        let (tree, readers_in, writer_in) = (tree.clone(), readers_in.clone(), writer_in.clone());
        move || {
            let mut biased_seen = false;
            for round in 0..200 {
                let stop = AtomicBool::new(false);
                let start = Barrier::new(READERS + 1);
                thread::scope(|s| {
                    for r in 0..READERS {
                        let (tree, readers_in, writer_in, stop, start) =
                            (&*tree, &*readers_in, &*writer_in, &stop, &start);
                        s.spawn(move || {
                            start.wait();
                            let mode = if r == 0 { Mode::IS } else { Mode::S };
                            let mut n = 0u32;
                            while !stop.load(Ordering::Relaxed) || n < 2000 {
                                let g = tree.lock("/hot", mode).unwrap();
                                if mode == Mode::S {
                                    readers_in.fetch_add(1, Ordering::SeqCst);
                                    assert!(
                                        !writer_in.load(Ordering::SeqCst),
                                        "reader beside the writer (round {round})"
                                    );
                                    readers_in.fetch_sub(1, Ordering::SeqCst);
                                }
                                drop(g);
                                n += 1;
                            }
                        });
                    }
                    start.wait();
                    // The writer: a few X holds in the middle of the storm.
                    for _ in 0..3 {
                        let g = tree.lock("/hot", Mode::X).unwrap();
                        writer_in.store(true, Ordering::SeqCst);
                        assert_eq!(
                            readers_in.load(Ordering::SeqCst),
                            0,
                            "writer beside readers (round {round})"
                        );
                        thread::yield_now();
                        writer_in.store(false, Ordering::SeqCst);
                        drop(g);
                    }
                    stop.store(true, Ordering::Relaxed);
                });
                assert_eq!(tree.node_count(), 0);
                // Biased at the end of the round: kept by the bias list,
                // not idle.
                if tree.idle_node_count() == 0 {
                    biased_seen = true;
                    // The biased node still admits a writer.
                    drop(tree.try_lock("/hot", Mode::X).unwrap());
                    break;
                }
            }
            biased_seen
        }
    });
    assert!(
        biased_seen,
        "Bias::Adaptive never biased a node hammered by {READERS} threads"
    );
    tree.purge_idle();
    assert_all_released(&tree, "adaptive");
}

// ---- 9. async ----

#[test]
fn lock_async_through_slots_and_a_dropped_future_leave_nothing_behind() {
    let tree = always();
    futures::executor::block_on(async {
        drop(tree.lock_async("/q/n", Mode::S).await.unwrap());
        let a = tree.lock_async("/q/n", Mode::S).await.unwrap(); // slots
        let b = tree.lock_async("/q/n", Mode::IS).await.unwrap();
        assert_eq!(holders_of(&tree, "/q/n"), vec![(Mode::IS, 1), (Mode::S, 1)]);
        assert_eq!(holders_of(&tree, "/q"), vec![(Mode::IS, 2)]);
        drop((a, b));
    });
    assert_all_released(&tree, "lock_async through slots");

    // A future queued behind a slot reader, then dropped.
    drop(tree.lock("/q/n", Mode::S).unwrap());
    let reader = tree.lock("/q/n", Mode::S).unwrap(); // slots
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    {
        let mut fut = pin!(tree.lock_async("/q/n", Mode::X));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(tree.inspect("/q/n").unwrap().waiting.len(), 1);
        // Queued: new readers wait behind it.
        assert!(!granted(&tree, "/q/n", Mode::S));
    }
    // Dropped: no queue entry left, readers go again.
    assert!(tree.inspect("/q/n").unwrap().waiting.is_empty());
    assert!(granted(&tree, "/q/n", Mode::S));
    drop(reader);

    // A future that took the ancestors through slots, dropped while
    // waiting below them.
    drop(tree.lock("/q/n/c", Mode::S).unwrap());
    let x = tree.lock("/q/n", Mode::X).unwrap();
    {
        let mut fut = pin!(tree.lock_async("/q/n/c", Mode::S));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(holders_of(&tree, "/q"), vec![(Mode::IS, 1), (Mode::IX, 1)]);
    }
    assert_eq!(holders_of(&tree, "/q"), vec![(Mode::IX, 1)]);
    assert_eq!(holders_of(&tree, "/"), vec![(Mode::IX, 1)]);
    drop(x);
    assert_all_released(&tree, "dropped futures");
}

#[test]
fn pending_future_behind_slot_readers_is_woken_by_their_release() {
    let tree = always();
    drop(tree.lock("/w", Mode::S).unwrap());
    let readers: Vec<_> = (0..3).map(|_| tree.lock("/w", Mode::S).unwrap()).collect();
    let woken = Arc::new(AtomicUsize::new(0));
    struct Count(Arc<AtomicUsize>);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let waker = std::task::Waker::from(Arc::new(Count(woken.clone())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(tree.lock_async("/w", Mode::X));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    let mut readers = readers;
    while readers.len() > 1 {
        readers.pop();
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "X beside readers");
    }
    let before = woken.load(Ordering::SeqCst);
    readers.pop();
    assert!(
        woken.load(Ordering::SeqCst) > before,
        "last release did not wake"
    );
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(g)) => assert_eq!(g.mode(), Mode::X),
        other => panic!("not granted after the wake: {other:?}"),
    }
    drop(fut);
    assert_all_released(&tree, "async writer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_tasks_through_slots_across_worker_threads() {
    let tree = Arc::new(always());
    drop(tree.lock("/t/hot", Mode::S).unwrap());
    let readers_in = Arc::new(AtomicI64::new(0));
    let writer_in = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (t, r, w) = (tree.clone(), readers_in.clone(), writer_in.clone());
        tasks.push(tokio::spawn(async move {
            for k in 0..200 {
                if i == 0 && k % 20 == 0 {
                    let g = t.lock_owned_async("/t", Mode::X).await.unwrap();
                    w.store(true, Ordering::SeqCst);
                    assert_eq!(r.load(Ordering::SeqCst), 0, "writer beside readers");
                    tokio::task::yield_now().await;
                    w.store(false, Ordering::SeqCst);
                    drop(g);
                } else {
                    // Taken on one worker, maybe released on another.
                    let g = t.lock_owned_async("/t/hot", Mode::S).await.unwrap();
                    r.fetch_add(1, Ordering::SeqCst);
                    assert!(!w.load(Ordering::SeqCst), "reader beside the writer");
                    tokio::task::yield_now().await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(LONG, t)
            .await
            .expect("tokio tasks hung")
            .unwrap();
    }
    assert_all_released(&tree, "tokio");
}
