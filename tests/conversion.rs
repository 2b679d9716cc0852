//! Upgrades (to the join of the held and requested modes, ancestors'
//! intentions converted top-down), downgrades, and the conversion deadlock.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::{compatible, covers, intention, wait_until_queued, watchdog, MODES};
use hierlock::{Error, LockTree, Mode};

const LONG: Duration = Duration::from_secs(30);

fn granted(tree: &LockTree, path: &str, mode: Mode) -> bool {
    match tree.try_lock(path, mode) {
        Ok(_) => true,
        Err(Error::WouldBlock) => false,
        Err(e) => panic!("try_lock({path}, {mode}): {e:?}"),
    }
}

/// The least mode covering both, from the lattice drawn in the design.
fn join(a: Mode, b: Mode) -> Mode {
    MODES
        .into_iter()
        .find(|&m| covers(m, a) && covers(m, b))
        .unwrap()
}

/// Checks that what others can take on `/a/b` and `/a` is exactly what a
/// single holder of `held` on `/a/b` allows.
fn behaves_as_held(tree: &LockTree, held: Mode, what: &str) {
    for p in MODES {
        assert_eq!(
            granted(tree, "/a/b", p),
            compatible(held, p),
            "{what}: {p} on /a/b beside {held}"
        );
        assert_eq!(
            granted(tree, "/a", p),
            compatible(intention(held), p),
            "{what}: {p} on /a above {held}"
        );
    }
}

#[test]
fn join_table() {
    use Mode::*;
    assert_eq!(join(S, IX), SIX);
    assert_eq!(join(IS, IX), IX);
    assert_eq!(join(IS, S), S);
    assert_eq!(join(SIX, S), SIX);
    assert_eq!(join(IX, X), X);
    for a in MODES {
        for b in MODES {
            assert_eq!(a.join(b), join(a, b), "{a} join {b}");
            assert_eq!(a.covers(b), covers(a, b), "{a} covers {b}");
        }
    }
}

#[test]
fn upgrade_goes_to_the_join_for_every_pair() {
    let tree = LockTree::new();
    for held in MODES {
        for req in MODES {
            let mut g = tree.lock("/a/b", held).unwrap();
            g.upgrade(req).unwrap();
            let target = join(held, req);
            assert_eq!(g.mode(), target, "{held} upgraded with {req}");
            behaves_as_held(&tree, target, &format!("{held}+{req}"));
            drop(g);
            assert_eq!(tree.node_count(), 0);
        }
    }
}

#[test]
fn upgrade_s_to_x_converts_the_ancestors() {
    let tree = LockTree::new();
    let mut g = tree.read("/a/b").unwrap();
    assert!(granted(&tree, "/a", Mode::S));
    g.upgrade(Mode::X).unwrap();
    assert_eq!(g.mode(), Mode::X);
    assert!(!granted(&tree, "/a/b", Mode::IS));
    assert!(!granted(&tree, "/a/b/c", Mode::IS));
    // /a and the root now carry IX.
    assert!(!granted(&tree, "/a", Mode::S));
    assert!(!granted(&tree, "/", Mode::S));
    assert!(granted(&tree, "/a", Mode::IX));
    g.downgrade(Mode::S).unwrap();
    assert_eq!(g.mode(), Mode::S);
    // Back to IS above.
    assert!(granted(&tree, "/a", Mode::S));
    assert!(granted(&tree, "/", Mode::S));
    assert!(granted(&tree, "/a/b", Mode::S));
    assert!(!granted(&tree, "/a/b", Mode::IX));
    drop(g);
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn s_with_ix_is_six() {
    let tree = LockTree::new();
    let mut g = tree.read("/a/b").unwrap();
    g.upgrade(Mode::IX).unwrap();
    assert_eq!(g.mode(), Mode::SIX);
    assert!(granted(&tree, "/a/b", Mode::IS));
    assert!(
        granted(&tree, "/a/b/c", Mode::S),
        "others may still read below"
    );
    assert!(!granted(&tree, "/a/b", Mode::S));
    assert!(!granted(&tree, "/a/b", Mode::IX));
    assert!(!granted(&tree, "/a/b/c", Mode::X));
    assert!(!granted(&tree, "/a", Mode::S), "IX above");
}

#[test]
fn is_to_s() {
    let tree = LockTree::new();
    let mut g = tree.lock("/a/b", Mode::IS).unwrap();
    assert!(granted(&tree, "/a/b/c", Mode::X));
    g.upgrade(Mode::S).unwrap();
    assert_eq!(g.mode(), Mode::S);
    assert!(!granted(&tree, "/a/b/c", Mode::IX));
    assert!(!granted(&tree, "/a/b", Mode::IX));
    assert!(granted(&tree, "/a", Mode::S), "ancestors stay IS");
}

#[test]
fn upgrade_to_a_covered_mode_changes_nothing() {
    let tree = LockTree::new();
    let mut g = tree.write("/a").unwrap();
    g.upgrade(Mode::S).unwrap();
    g.upgrade(Mode::IS).unwrap();
    g.try_upgrade(Mode::SIX).unwrap();
    assert_eq!(g.mode(), Mode::X);
    drop(g);
    let mut g = tree.read("/a").unwrap();
    g.upgrade(Mode::IS).unwrap();
    assert_eq!(g.mode(), Mode::S);
}

#[test]
fn root_upgrade_and_downgrade() {
    let tree = LockTree::new();
    let mut g = tree.read("/").unwrap();
    g.upgrade(Mode::X).unwrap();
    assert!(!granted(&tree, "/a", Mode::IS));
    g.downgrade(Mode::IS).unwrap();
    assert!(granted(&tree, "/a", Mode::X));
}

#[test]
fn downgrade_rules_for_every_pair() {
    let tree = LockTree::new();
    for held in MODES {
        for to in MODES {
            let mut g = tree.lock("/a/b", held).unwrap();
            let r = g.downgrade(to);
            if covers(held, to) {
                r.unwrap();
                assert_eq!(g.mode(), to, "{held} -> {to}");
                behaves_as_held(&tree, to, &format!("downgraded {held} -> {to}"));
            } else {
                let e = r.unwrap_err();
                match &e {
                    Error::InvalidConversion {
                        from, to: asked, ..
                    } => {
                        assert_eq!((*from, *asked), (held, to));
                    }
                    other => panic!("{held} -> {to}: {other:?}"),
                }
                let msg = e.to_string();
                assert!(msg.contains(&held.to_string()) && msg.contains(&to.to_string()));
                assert_eq!(g.mode(), held, "kept after a refused downgrade");
                behaves_as_held(&tree, held, &format!("refused {held} -> {to}"));
            }
            drop(g);
            assert_eq!(tree.node_count(), 0);
        }
    }
}

#[test]
fn downgrade_to_the_same_mode_is_a_no_op() {
    let tree = LockTree::new();
    for m in MODES {
        let mut g = tree.lock("/a/b", m).unwrap();
        g.downgrade(m).unwrap();
        assert_eq!(g.mode(), m);
        behaves_as_held(&tree, m, "same-mode downgrade");
    }
}

#[test]
fn downgrade_wakes_the_waiters_it_unblocks() {
    let tree = Arc::new(LockTree::new());
    let mut g = tree.lock_owned("/a", Mode::X).unwrap();
    let t = tree.clone();
    let r = thread::spawn(move || t.lock("/a", Mode::S).map(|g| g.mode()));
    thread::sleep(Duration::from_millis(30));
    g.downgrade(Mode::S).unwrap();
    // The reader gets in while g still holds S.
    let m = watchdog(LONG, "reader after a downgrade", move || r.join().unwrap());
    assert_eq!(m.unwrap(), Mode::S);
    assert_eq!(g.mode(), Mode::S);
}

#[test]
fn blocking_upgrade_waits_for_the_other_reader() {
    let tree = Arc::new(LockTree::new());
    let mut g1 = tree.lock_owned("/a/b", Mode::S).unwrap();
    let g2 = tree.lock_owned("/a/b", Mode::S).unwrap();
    let u = thread::spawn(move || {
        g1.upgrade(Mode::X).unwrap();
        g1
    });
    // Once the conversion is queued, new readers queue behind it.
    wait_until_queued(&tree, "/a/b", Mode::S);
    drop(g2);
    let g1 = watchdog(LONG, "upgrade after the reader left", move || {
        u.join().unwrap()
    });
    assert_eq!(g1.mode(), Mode::X);
    assert!(!granted(&tree, "/a", Mode::S));
}

#[test]
fn conversion_goes_ahead_of_queued_requests() {
    // h and g read /a; a writer queues; g's upgrade queues too, but is
    // served first once h leaves.
    let tree = Arc::new(LockTree::new());
    let h = tree.lock_owned("/a", Mode::S).unwrap();
    let mut g = tree.lock_owned("/a", Mode::S).unwrap();
    let writer_in = Arc::new(AtomicBool::new(false));
    let (t, w_in) = (tree.clone(), writer_in.clone());
    let w = thread::spawn(move || {
        let _x = t.lock("/a", Mode::X).unwrap();
        w_in.store(true, Ordering::SeqCst);
    });
    wait_until_queued(&tree, "/a", Mode::IS);
    let leaver = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        drop(h);
    });
    g.upgrade(Mode::X).unwrap();
    assert!(
        !writer_in.load(Ordering::SeqCst),
        "the queued writer got in before the converter"
    );
    leaver.join().unwrap();
    drop(g);
    watchdog(LONG, "writer after the converter", move || {
        w.join().unwrap()
    });
    assert!(writer_in.load(Ordering::SeqCst));
}

/// Two holders of `held` on `path` both upgrade with `req` at once.
fn conversion_deadlock_round(held: Mode, req: Mode, path: &'static str) {
    let tree = Arc::new(LockTree::new());
    let barrier = Arc::new(Barrier::new(2));
    let winner_in = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (t, b, w_in) = (tree.clone(), barrier.clone(), winner_in.clone());
            thread::spawn(move || {
                let mut g = t.lock(path, held).unwrap();
                b.wait();
                match g.upgrade(req) {
                    Ok(()) => {
                        assert_eq!(g.mode(), held.join(req));
                        w_in.store(true, Ordering::SeqCst);
                        true
                    }
                    Err(Error::Deadlock) => {
                        assert_eq!(g.mode(), held, "the victim keeps its mode");
                        // The victim really still holds it: the winner
                        // cannot be in yet.
                        thread::sleep(Duration::from_millis(20));
                        assert!(!w_in.load(Ordering::SeqCst), "winner in beside the victim");
                        drop(g);
                        false
                    }
                    Err(e) => panic!("unexpected {e:?}"),
                }
            })
        })
        .collect();
    let results = watchdog(LONG, "conversion deadlock", move || {
        threads
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(
        results.iter().filter(|&&won| won).count(),
        1,
        "exactly one Deadlock: {results:?}"
    );
    assert_eq!(tree.node_count(), 0);
    assert!(granted(&tree, "/", Mode::X));
}

#[test]
fn two_readers_upgrading_to_x_exactly_one_deadlock() {
    for _ in 0..20 {
        conversion_deadlock_round(Mode::S, Mode::X, "/a");
    }
}

#[test]
fn two_readers_upgrading_below_the_root_exactly_one_deadlock() {
    // The ancestors are converted IS -> IX by both before they meet on the
    // node itself; the victim's ancestors must be converted back.
    for _ in 0..20 {
        conversion_deadlock_round(Mode::S, Mode::X, "/a/b/c");
    }
}

#[test]
fn two_ix_holders_upgrading_to_six_exactly_one_deadlock() {
    for _ in 0..10 {
        conversion_deadlock_round(Mode::IX, Mode::S, "/a/b");
    }
}

#[test]
fn deadlock_victim_can_keep_working() {
    // After the Deadlock the victim still holds S; once the winner is done
    // it can upgrade itself.
    let tree = Arc::new(LockTree::new());
    let mut victim = tree.lock_owned("/a", Mode::S).unwrap();
    let mut winner = tree.lock_owned("/a", Mode::S).unwrap();
    let w = thread::spawn(move || {
        winner.upgrade(Mode::X).unwrap();
        drop(winner);
    });
    wait_until_queued(&tree, "/a", Mode::S);
    assert_eq!(victim.upgrade(Mode::X).unwrap_err(), Error::Deadlock);
    assert_eq!(victim.mode(), Mode::S);
    // Readers below /a are still kept out of writing.
    assert!(!granted(&tree, "/a/b", Mode::X));
    victim.downgrade(Mode::IS).unwrap();
    // IS is still incompatible with X: the winner waits on.
    thread::sleep(Duration::from_millis(20));
    assert!(!w.is_finished(), "X granted beside IS");
    drop(victim);
    watchdog(LONG, "winner after the victim left", move || {
        w.join().unwrap()
    });
    assert_eq!(tree.node_count(), 0);
}

#[test]
fn try_upgrade_wouldblock_keeps_the_old_mode_and_converts_nothing_above() {
    let tree = LockTree::new();
    let mut g1 = tree.read("/a/b").unwrap();
    let g2 = tree.read("/a/b").unwrap();
    assert_eq!(g1.try_upgrade(Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(g1.mode(), Mode::S);
    assert_eq!(g1.try_upgrade(Mode::IX).unwrap_err(), Error::WouldBlock);
    assert_eq!(g1.mode(), Mode::S);
    // / and /a carry only IS: S there is fine.
    assert!(granted(&tree, "/a", Mode::S));
    assert!(granted(&tree, "/", Mode::S));
    // Nothing queued on /a/b.
    assert!(granted(&tree, "/a/b", Mode::S));
    drop(g2);
    g1.try_upgrade(Mode::X).unwrap();
    assert_eq!(g1.mode(), Mode::X);
}

#[test]
fn try_upgrade_blocked_at_an_ancestor_undoes_the_levels_above() {
    let tree = LockTree::new();
    let h = tree.read("/a").unwrap();
    let mut g = tree.read("/a/b/c").unwrap();
    assert_eq!(g.try_upgrade(Mode::X).unwrap_err(), Error::WouldBlock);
    assert_eq!(g.mode(), Mode::S);
    assert!(granted(&tree, "/", Mode::S), "root converted back to IS");
    assert!(granted(&tree, "/a", Mode::S));
    assert!(granted(&tree, "/a/b", Mode::S));
    drop(h);
    drop(g);
    assert_eq!(tree.node_count(), 0);
    assert!(granted(&tree, "/", Mode::X));
}
