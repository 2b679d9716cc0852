//! loom models of hierlock's protocols, through the public API.
//!
//! Run with
//!
//! ```text
//! cd loom-tests && RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release
//! ```
//!
//! Under `--cfg loom` the engine's atomics, queue mutexes, parking and
//! `Arc`s come from `loom` (`src/sync.rs`) and its node table is a
//! mutex-protected map, so every model below runs the real state-word,
//! queue, hand-off, cancellation and reclamation code under the model
//! checker. Each model says which bug it would catch; `mutants/` holds one
//! engine mutant per model and `run-mutants.sh` checks that each is caught.
//!
//! Critical sections are checked twice: a loom `UnsafeCell` (loom reports
//! two accesses not ordered by happens-before, i.e. a grant that did not
//! synchronize with the previous holder's release) and an occupancy counter
//! (two holders inside at once). There is no clock under loom, so no model
//! uses a timeout.
#![cfg(loom)]

use std::future::Future;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use hierlock::{Bias, Error, LockTree, Mode};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;

/// A resource guarded by the locks: writers need exclusion, readers only
/// exclusion from writers.
struct Resource {
    data: UnsafeCell<u64>,
    /// Writers in the low 16 bits, readers above.
    inside: AtomicUsize,
}

// SAFETY: `data` is only touched by holders of the lock under test, as its
// readers or writers; that the lock really orders those accesses is what
// the models check (loom's cell reports any access it did not order).
unsafe impl Sync for Resource {}

const WRITER: usize = 1;
const READER: usize = 1 << 16;

impl Resource {
    fn new() -> Self {
        Resource {
            data: UnsafeCell::new(0),
            inside: AtomicUsize::new(0),
        }
    }

    fn write(&self) {
        let before = self.inside.fetch_add(WRITER, SeqCst);
        assert_eq!(before, 0, "a writer entered while others were inside");
        self.data.with_mut(|p| unsafe { *p += 1 });
        self.inside.fetch_sub(WRITER, SeqCst);
    }

    fn read(&self) {
        let before = self.inside.fetch_add(READER, SeqCst);
        assert_eq!(
            before % READER,
            0,
            "a reader entered while a writer was inside"
        );
        self.data.with(|p| unsafe { *p });
        self.inside.fetch_sub(READER, SeqCst);
    }
}

/// The tree every model uses: the idle-node cache off, so a node that goes
/// idle is marked DEAD and unlinked at once (the race most models are
/// about). `idle_cache_eviction_racing_with_reuse` turns it on.
fn tree() -> LockTree {
    LockTree::builder().idle_nodes(0).build()
}

/// Runs `f` under loom (preemption bound `LOOM_MAX_PREEMPTIONS`, 2 if
/// unset) and prints how many interleavings were explored.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    let runs = Arc::new(StdAtomicUsize::new(0));
    let counted = runs.clone();
    b.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    eprintln!(
        "{name}: {} interleavings",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// Two requests of conflicting modes on one node (IX and S: both are
/// counted modes, so only the CONFLICTS masks keep them apart) are never
/// granted together, in either arrival order, and the waiter is handed the
/// node when the other leaves.
///
/// Catches: a wrong CONFLICTS entry (mutant `conflicts-s-ignores-ix`), a
/// grant written without acquire/release ordering.
#[test]
fn conflicting_modes_on_one_node_never_both_granted() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let g = tree.lock("/a", Mode::IX).unwrap();
                res.write();
                drop(g);
            })
        };
        let g = tree.lock("/a", Mode::S).unwrap();
        res.read();
        drop(g);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// `first` is held in X when a second thread asks for X on `second` (one is
/// the other's ancestor): the second request must wait (through the
/// intention mode on the ancestor) until the first is released.
fn ancestor_descendant(first: &'static str, second: &'static str) {
    model(move || {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let g = tree.lock(first, Mode::X).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let g = tree.lock(second, Mode::X).unwrap();
                res.write();
                drop(g);
            })
        };
        res.write();
        drop(g);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// X on `/a` held, X on `/a/b` requested: the IX the request takes on `/a`
/// must wait for the X.
///
/// Catches: IX not conflicting with a held X (mutant `conflicts-ix-ignores-x`).
#[test]
fn x_on_ancestor_excludes_x_on_descendant() {
    ancestor_descendant("/a", "/a/b");
}

/// X on `/a/b` held (so IX on `/a`), X on `/a` requested: must wait for the
/// descendant's intention.
///
/// Catches: X not conflicting with a held IX (mutant `conflicts-x-ignores-ix`).
#[test]
fn x_on_descendant_excludes_x_on_ancestor() {
    ancestor_descendant("/a/b", "/a");
}

/// S against S on one node, plus S on a child: all granted by `try_lock`
/// whatever the interleaving (no false conflict, no spurious WouldBlock
/// from a CAS race).
///
/// Catches: S conflicting with S (mutant `conflicts-s-with-s`), a CAS loop
/// that gives up on contention instead of retrying.
#[test]
fn s_and_s_both_granted() {
    model(|| {
        let tree = Arc::new(tree());
        let t = {
            let tree = tree.clone();
            thread::spawn(move || {
                let g = tree.try_lock("/a", Mode::S).expect("S next to S");
                drop(g);
            })
        };
        let g = tree.try_lock("/a", Mode::S).expect("S next to S");
        let h = tree.try_lock("/a/b", Mode::S).expect("S under S");
        drop((g, h));
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// A release racing with a waiter that is queueing and going to sleep (a
/// blocking `lock` in a loom thread): the waiter always wakes, granted. A
/// lost wake-up leaves the waiter parked forever and loom reports a
/// deadlock at the `join`.
///
/// Catches: queueing without re-validating the conflict under the queue
/// lock (mutant `no-revalidate-waiting`), a release that does not hand the
/// node off (mutant `no-hand-off`).
#[test]
fn release_racing_with_sleeping_waiter_wakes_it() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let g = tree.lock("/a", Mode::X).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let g = tree.lock("/a", Mode::X).unwrap();
                res.write();
                drop(g);
            })
        };
        res.write();
        drop(g);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// The last release of `/a` (state word to 0: marked DEAD, unlinked) races
/// with an acquirer that already found the node in the table. The acquirer
/// must never be granted on the unlinked node — it would then hold a node
/// nobody else can see, and a later X on `/a` (a fresh node) would be
/// granted next to it — and `node_count` must end at 0.
///
/// Catches: granting on a DEAD node (mutant `grant-on-dead`), a release
/// that forgets to unlink an idle node (mutant `never-unlink`).
#[test]
fn release_to_zero_racing_with_acquirer() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let g = tree.lock("/a", Mode::S).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                if let Ok(g) = tree.try_lock("/a", Mode::S) {
                    res.read();
                    drop(g);
                }
            })
        };
        drop(g);
        if let Ok(x) = tree.try_lock("/a", Mode::X) {
            res.write();
            drop(x);
        }
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// A prepared handle pins `/a` while the last release of `/a` brings its
/// word to 0 (and marks it DEAD). The handle must end up pinning a live
/// node that the table maps (the dead one is refused and looked up again),
/// so its X excludes a plain X on `/a`; and when the handle and every guard
/// are gone, the node is unlinked.
///
/// Catches: pinning a dead node (mutant `pin-dead-node`), an unpin that
/// leaves an idle node in the table (mutant `unpin-never-unlinks`).
#[test]
fn prepare_racing_with_last_release() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let g = tree.lock("/a", Mode::S).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let p = tree.prepare("/a").unwrap();
                if let Ok(x) = p.try_lock(Mode::X) {
                    res.write();
                    drop(x);
                }
            })
        };
        drop(g);
        if let Ok(x) = tree.try_lock("/a", Mode::X) {
            res.write();
            drop(x);
        }
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// With a one-slot idle cache: `/a` is cached when released; a reader
/// reuses it while the main thread caches `/b`, which pushes `/a` out of
/// the cache. The eviction must kill `/a` only if nobody uses it (otherwise
/// just take it out of the cache), so the reader and a later writer of `/a`
/// never meet, and in the end no node is live and the cache empties.
///
/// Catches: an eviction that kills a node in use (mutant
/// `uncache-kills-in-use`).
#[test]
fn idle_cache_eviction_racing_with_reuse() {
    model(|| {
        let tree = Arc::new(LockTree::builder().idle_nodes(1).build());
        let res = Arc::new(Resource::new());
        drop(tree.lock("/a", Mode::X).unwrap());
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                if let Ok(g) = tree.try_lock("/a", Mode::S) {
                    res.read();
                    drop(g);
                }
            })
        };
        drop(tree.lock("/b", Mode::X).unwrap());
        if let Ok(x) = tree.try_lock("/a", Mode::X) {
            res.write();
            drop(x);
        }
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
        tree.purge_idle();
        assert_eq!(tree.idle_node_count(), 0);
    });
}

/// A waker that counts its wake-ups.
struct CountingWaker(StdAtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// An async lock is polled once (queued behind a held X), then dropped
/// while another thread releases the X — the grant may land just before
/// the drop. The grant must be released (or passed on), never leaked:
/// afterwards X on the path is free and no node is left.
///
/// Catches: a dropped future that keeps a grant it received after its
/// last poll (mutant `cancel-leaks-grant`).
#[test]
fn dropped_future_racing_with_grant() {
    model(|| {
        let tree = Arc::new(tree());
        let held = tree.lock_owned("/a", Mode::X).unwrap();
        let counter = Arc::new(CountingWaker(StdAtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        {
            // Boxed, not `pin!`: `drop(fut)` must drop the future itself.
            let mut fut = Box::pin(tree.lock_async("/a", Mode::X));
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            let t = thread::spawn(move || drop(held));
            drop(fut);
            t.join().unwrap();
        }
        let x = tree.try_lock("/a", Mode::X).expect("nothing leaked");
        drop(x);
        assert_eq!(tree.node_count(), 0);
        assert!(counter.0.load(std::sync::atomic::Ordering::SeqCst) <= 1);
    });
}

/// Two S holders of one node both upgrade to X: each would wait for the
/// other's S. Exactly one gets `Error::Deadlock` (and keeps its S, which it
/// then releases); the other is granted X.
///
/// Catches: a missing or wrong conversion-cycle check (mutant
/// `no-deadlock-check`: both wait forever, loom reports the deadlock).
#[test]
fn two_upgraders_exactly_one_deadlock() {
    model(|| {
        let tree = Arc::new(tree());
        let mut g1 = tree.lock_owned("/a", Mode::S).unwrap();
        let mut g2 = tree.lock_owned("/a", Mode::S).unwrap();
        let t = thread::spawn(move || {
            let r = g1.upgrade(Mode::X);
            if r.is_ok() {
                assert_eq!(g1.mode(), Mode::X);
            } else {
                assert_eq!(g1.mode(), Mode::S, "the victim keeps its mode");
            }
            drop(g1);
            r
        });
        let r2 = g2.upgrade(Mode::X);
        drop(g2);
        let r1 = t.join().unwrap();
        let deadlocks = [&r1, &r2]
            .iter()
            .filter(|r| matches!(r, Err(Error::Deadlock)))
            .count();
        assert_eq!(deadlocks, 1, "{r1:?} {r2:?}");
        assert!(r1.is_ok() || r2.is_ok(), "{r1:?} {r2:?}");
        assert_eq!(tree.node_count(), 0);
    });
}

/// Fairness: S is held on `/a` and an X waits for it; a later IS on `/a`
/// (compatible with the holder, not with the waiter) must queue behind the
/// X, so `try_lock` refuses it.
///
/// Catches: admission that ignores the queue (mutant
/// `admission-ignores-queue`), which lets a stream of readers starve a
/// writer.
#[test]
fn waiting_x_blocks_later_is() {
    model(|| {
        let tree = Arc::new(tree());
        let g = tree.lock("/a", Mode::S).unwrap();
        let t = {
            let tree = tree.clone();
            thread::spawn(move || drop(tree.lock("/a", Mode::X).unwrap()))
        };
        while tree.inspect("/a").unwrap().waiting.is_empty() {
            thread::yield_now();
        }
        assert_eq!(
            tree.try_lock("/a", Mode::IS).map(drop).unwrap_err(),
            Error::WouldBlock
        );
        drop(g);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// A future waiting for X behind a held S is dropped while a blocking S
/// request may be queued behind it (for fairness only: S is compatible
/// with the holder). Withdrawing the future must let that reader in at
/// once — the main thread still holds its S when it joins the reader, so a
/// reader left asleep is a loom deadlock.
///
/// Catches: a cancelled waiter that does not re-run the hand-off for the
/// requests queued behind it (mutant `cancel-no-hand-off`).
#[test]
fn dropped_future_lets_the_queue_behind_it_go() {
    model(|| {
        let tree = Arc::new(tree());
        let held = tree.lock("/a", Mode::S).unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut fut = Box::pin(tree.lock_async("/a", Mode::X));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let reader = {
            let tree = tree.clone();
            thread::spawn(move || drop(tree.lock("/a", Mode::S).unwrap()))
        };
        drop(fut);
        reader.join().unwrap();
        drop(held);
        assert_eq!(tree.node_count(), 0);
    });
}

/// Two S requests wait behind an X; the X's release must grant both at
/// once (the hand-off grants every compatible waiter at the head of the
/// queue): each reader, once in, waits for the other to be in too before
/// it leaves.
///
/// Catches: a hand-off that grants only the first waiter (mutant
/// `hand-off-first-only`: the first reader waits for the second forever,
/// which loom reports as a spin that exceeds its branch limit).
#[test]
fn release_wakes_every_compatible_waiter() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let both_in = Arc::new(AtomicUsize::new(0));
        let g = tree.lock("/a", Mode::X).unwrap();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (tree, res, both_in) = (tree.clone(), res.clone(), both_in.clone());
                thread::spawn(move || {
                    let g = tree.lock("/a", Mode::S).unwrap();
                    res.read();
                    both_in.fetch_add(1, SeqCst);
                    while both_in.load(SeqCst) < 2 {
                        thread::yield_now();
                    }
                    drop(g);
                })
            })
            .collect();
        res.write();
        drop(g);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(tree.node_count(), 0);
    });
}

/// A tree whose nodes are biased at their first compatible acquisition
/// (`Bias::Always`), with the idle cache off.
fn biased_tree() -> LockTree {
    LockTree::builder().idle_nodes(0).bias(Bias::Always).build()
}

/// `/a` is biased toward {IS, S} (a first S biases it); a reader takes S
/// through its slot while a writer asks for X, which must revoke the bias,
/// fold the reader's slot hold into the word and wait for it. The two never
/// overlap, the writer is woken, and when both are done nothing is held.
///
/// Catches: a fold that loses slot holds (mutant `fold-drops-slot-counts`),
/// a slot activated while the word is not biased.
#[test]
fn slot_reader_racing_with_revoking_writer() {
    reader_against_revoking_writer(
        Biaser::Plain,
        |_| (),
        |tree, res, ()| {
            let g = tree.lock("/a", Mode::S).unwrap();
            res.read();
            drop(g);
        },
    );
}

/// How the revoke models bias `/a` (and the root) before the race.
#[derive(Clone, Copy)]
enum Biaser {
    /// A plain `lock`: the slots take holds with CAS only, and a revoke
    /// folds them without the heavy barrier.
    Plain,
    /// A prepared handle's `lock`: the slots are open to owner windows, and
    /// a revoke passes the barrier and waits for open windows.
    Handle,
}

/// The revoke models: `/a` is biased toward {IS, S} (a first S, taken as
/// `biaser` says, biases it); `setup` runs on the main thread, then
/// `reader` on a second thread with what `setup` returned, while the main
/// thread takes X on `/a` (revoking the bias) and writes. The reader and
/// the writer never overlap, the writer is woken, and when both are done
/// nothing is held.
fn reader_against_revoking_writer<T: Send + 'static>(
    biaser: Biaser,
    setup: fn(&Arc<LockTree>) -> T,
    reader: fn(Arc<LockTree>, Arc<Resource>, T),
) {
    model(move || {
        let tree = Arc::new(biased_tree());
        let res = Arc::new(Resource::new());
        match biaser {
            Biaser::Plain => drop(tree.lock("/a", Mode::S).unwrap()),
            Biaser::Handle => drop(tree.prepare("/a").unwrap().lock(Mode::S).unwrap()),
        }
        let given = setup(&tree);
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || reader(tree, res, given))
        };
        let x = tree.lock("/a", Mode::X).unwrap();
        res.write();
        drop(x);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
        tree.purge_idle();
        assert!(tree.try_lock("/", Mode::X).is_ok());
    });
}

/// A reader holds S on a biased `/a` through its slot; a writer's X
/// revokes the bias (the reader's hold becomes a debt of its slot, counted
/// in the word) and queues. The reader's release must pay the debt and
/// release in the word, handing `/a` to the writer.
///
/// Catches: a slot release that ignores debts (mutant
/// `slot-release-ignores-debt`: the writer is never woken, or the slot
/// count wraps).
#[test]
fn folded_slot_hold_released_through_the_word() {
    model(|| {
        let tree = Arc::new(biased_tree());
        let res = Arc::new(Resource::new());
        drop(tree.lock("/a", Mode::S).unwrap());
        let r = tree.lock("/a", Mode::S).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let x = tree.lock("/a", Mode::X).unwrap();
                res.write();
                drop(x);
            })
        };
        res.read();
        drop(r);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// A holder of S on a biased `/a` (through its slot) upgrades to X while
/// another reader arrives. The upgrade must first move its hold from the
/// slot into the word (revoking the bias), so the newcomer, through a slot
/// or the word, never reads while the upgraded holder writes.
///
/// Catches: a conversion that works on the word while the hold is still in
/// a slot (mutant `convert-without-revoke`).
#[test]
fn upgrade_of_slot_hold_racing_with_reader() {
    model(|| {
        let tree = Arc::new(biased_tree());
        let res = Arc::new(Resource::new());
        drop(tree.lock("/a", Mode::S).unwrap());
        let mut g = tree.lock("/a", Mode::S).unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                if let Ok(r) = tree.try_lock("/a", Mode::S) {
                    res.read();
                    drop(r);
                }
            })
        };
        if g.try_upgrade(Mode::X).is_ok() {
            res.write();
        }
        drop(g);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
    });
}

/// `/a` is biased toward {IS, S} by a prepared handle, so its slots are
/// open to owner windows; a reader takes S through a prepared handle, so
/// in a window (plain stores to its own slot), while a writer's X revokes
/// the bias: the fold closes the gate, passes the barrier (here a
/// read-modify-write of one location), waits for the reader's window to
/// close, and only then folds the slot. The two never overlap, and nothing
/// is left held.
///
/// Catches: a fold that does not wait for open windows (mutant
/// `fold-ignores-windows`: the reader's hold, stored after the fold read
/// the slot, is lost and the writer is granted over it), a window that
/// reads the gate before announcing itself.
#[test]
fn window_reader_racing_with_revoking_writer() {
    reader_against_revoking_writer(Biaser::Handle, |_| (), handle_reader);
}

/// Takes S on `/a` through a prepared handle and reads.
fn handle_reader(tree: Arc<LockTree>, res: Arc<Resource>, (): ()) {
    let p = tree.prepare("/a").unwrap();
    let g = p.lock(Mode::S).unwrap();
    res.read();
    drop(g);
}

/// `/a` (and the root) are biased by a plain `lock`, so their slots take
/// holds with CAS only and a revoke folds them without the barrier and
/// without waiting for windows; a reader takes S through a prepared
/// handle (which would use windows) while a writer's X revokes the bias.
/// The reader's holds must go through CAS, so the fold sees them; the two
/// never overlap, and nothing is left held.
///
/// Catches: a window through a gate open to CAS only (mutant
/// `window-through-cas-only-gate`: the reader's plain store lands on a slot
/// the fold has already taken, and the writer is granted over it).
#[test]
fn handle_reader_on_a_cas_only_node_racing_with_revoking_writer() {
    reader_against_revoking_writer(Biaser::Plain, |_| (), handle_reader);
}

/// A hold taken through the main thread's slot is given back by another
/// thread (an owned guard sent there), counting the release on the side of
/// the owner's slot, while the main thread's X revokes the bias and folds
/// that slot. Whether the release lands before the fold (the fold subtracts
/// it) or after (it pays a debt in the word), the writer waits for the
/// reader and nothing is left held.
///
/// Catches: a fold that ignores releases counted on the side (mutant
/// `fold-ignores-remote`: the writer waits forever for a hold already
/// given back).
#[test]
fn slot_hold_released_elsewhere_racing_with_revoke() {
    reader_against_revoking_writer(
        Biaser::Plain,
        |tree| tree.lock_owned("/a", Mode::S).unwrap(),
        |_, res, g| {
            res.read();
            drop(g);
        },
    );
}

/// `/a` is biased by the main thread's first S (`Bias::Always`) while a
/// second thread takes S through its own slot with CAS (the walk does not
/// wait for the gate, so it may take a hold as soon as activation made its
/// slot active) and hands the guard to a third thread, which gives it back
/// through the slot's side counter. However that interleaves with the
/// activation, the main thread's X afterwards is granted and nothing is
/// left held.
///
/// Catches: activation reopening a slot's side counter after making the
/// slot active (mutant `activate-reopens-remote-late`: the release is
/// wiped, the fold turns the hold into a debt nobody pays, and the writer
/// waits forever).
#[test]
fn activation_racing_with_a_slot_hold_released_elsewhere() {
    model(|| {
        let tree = Arc::new(biased_tree());
        let handoff = Arc::new(loom::sync::Mutex::new(None));
        let t1 = {
            let (tree, handoff) = (tree.clone(), handoff.clone());
            thread::spawn(move || {
                if let Ok(g) = tree.try_lock_owned("/a", Mode::S) {
                    *handoff.lock().unwrap() = Some(g);
                }
            })
        };
        let t2 = {
            let handoff = handoff.clone();
            thread::spawn(move || drop(handoff.lock().unwrap().take()))
        };
        let g = tree.lock("/a", Mode::S).unwrap();
        t1.join().unwrap();
        t2.join().unwrap();
        drop(handoff.lock().unwrap().take());
        drop(g);
        drop(tree.lock("/a", Mode::X).unwrap());
        assert_eq!(tree.node_count(), 0);
    });
}

/// A prepared handle on `/a` keeps its X after its first guard (sticky,
/// idle) and takes it back with one CAS, while another thread's `try_lock`
/// of S on the root finds the handle's IX in its way and calls the sticky
/// back. The two never overlap, and once both are done nothing is held:
/// an X on the root is granted at once.
///
/// Catches: a revoke that does not give the kept holds back (mutant
/// `sticky-revoke-keeps-holds`: the root stays held, the final `try_lock`
/// fails), a `try_lock` that fails for an idle handle.
#[test]
fn sticky_reuse_racing_with_a_conflicting_try_lock() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let h = tree.prepare_owned("/a").unwrap();
        drop(h.lock(Mode::X).unwrap());
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                if let Ok(g) = tree.try_lock("/", Mode::S) {
                    res.read();
                    drop(g);
                }
            })
        };
        let g = h.lock(Mode::X).unwrap();
        res.write();
        drop(g);
        t.join().unwrap();
        assert!(tree.try_lock("/", Mode::X).is_ok(), "an idle handle kept the root");
        drop(h);
        assert_eq!(tree.node_count(), 0);
    });
}

/// The race the registry's locks settle (`sticky.rs`): the handle's first
/// lock makes its sticky while another thread queues S on `/a` behind it.
/// Either the queued request sees the sticky and calls it back, or the
/// maker sees `WAITING` and does not keep the holds; either way the
/// request is granted while the handle lives on idle (the main thread
/// joins it before dropping the handle, so a request left waiting for an
/// idle handle is a deadlock loom reports).
///
/// Catches: a maker that does not look for waiters after registering
/// (mutant `sticky-make-ignores-waiters`), a queued request that does not
/// revoke (mutant `sticky-queued-request-skips-revoke`).
#[test]
fn sticky_made_while_a_request_queues() {
    model(|| {
        let tree = Arc::new(tree());
        let res = Arc::new(Resource::new());
        let h = tree.prepare_owned("/a/b").unwrap();
        let t = {
            let (tree, res) = (tree.clone(), res.clone());
            thread::spawn(move || {
                let g = tree.lock("/a", Mode::S).unwrap();
                res.read();
                drop(g);
            })
        };
        let g = h.lock(Mode::X).unwrap();
        res.write();
        drop(g);
        t.join().unwrap();
        drop(h);
        assert_eq!(tree.node_count(), 0);
    });
}

/// A handle's guard (through its sticky) is dropped on another thread
/// while the handle itself is dropped: if the guard goes first the handle
/// releases the idle holds; if the handle goes first it leaves the guard a
/// reference, and the guard releases everything and frees the sticky.
/// Either way nothing is held and no node is live at the end (checked
/// before any other request could call anything back), and no `Arc` of
/// the sticky leaks or is dropped twice (loom tracks them).
///
/// Catches: a handle drop that leaves idle holds (mutant
/// `sticky-drop-keeps-idle-holds`), one that leaves the guard no
/// reference to free the sticky with (mutant
/// `sticky-drop-leaves-no-reference`).
#[test]
fn sticky_guard_dropped_elsewhere_while_its_handle_drops() {
    model(|| {
        let tree = Arc::new(tree());
        let h = tree.prepare_owned("/a").unwrap();
        drop(h.lock(Mode::S).unwrap());
        let g = h.lock_owned(Mode::S).unwrap();
        let t = thread::spawn(move || drop(g));
        drop(h);
        t.join().unwrap();
        assert_eq!(tree.node_count(), 0);
        assert!(tree.try_lock("/", Mode::X).is_ok());
    });
}
