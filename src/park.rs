//! Blocking: one waiter record per blocked request, woken by the release
//! that grants it — futex-style parking for threads, wakers for tasks.
//!
//! A waiter is granted *by the releaser* ("direct hand-off"): the thread
//! that unblocks it updates the node's state word on the waiter's behalf,
//! stores [`GRANTED`] in the record, and then wakes the thread or task. A
//! woken waiter therefore never re-competes for the node; it checks its
//! status and goes on. Spurious wake-ups are harmless (the status is
//! re-checked), and a wake-up can never be lost:
//!
//! - threads: the granter stores `GRANTED` before `unpark`; the waiter
//!   checks the status after every `park` returns, and `park` returns at
//!   once if `unpark` came first;
//! - tasks: the waker slot is a mutex; the poller stores its waker, then
//!   re-reads the status; the granter stores the status, then takes the
//!   waker. Either the poller sees `GRANTED` or the granter sees the waker.

use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::owner::OwnerId;
use crate::sync::{thread, AtomicU8, Mutex, Ordering};
use crate::Mode;

/// Still queued.
const WAITING: u8 = 0;
/// Granted by a releaser: the request now holds the node.
pub(crate) const GRANTED: u8 = 1;

/// Rounds of spinning before a waiting thread parks: 2^0 + ... + 2^7 =
/// 255 pauses, a few microseconds. Measured on the database mix (IX on a
/// table, X on rows, 1% S on the table; `docs/bench/benches.md`): with
/// four threads on two cores 2-2.5 M/s without the spin, 3-5 M/s with 63
/// pauses, 9-11 M/s with 255; with two threads 2-10% below no spin.
const SPIN_ROUNDS: u32 = 8;

/// How to wake the waiter.
#[derive(Debug)]
pub(crate) enum Wake {
    /// A parked thread.
    Thread(thread::Thread),
    /// An async task; `None` until first polled.
    Task(Mutex<Option<Waker>>),
}

/// One request waiting in a node's queue.
///
/// `target` and `from` never change. `status` goes `WAITING -> GRANTED`
/// once, only under the node's queue lock.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// The mode asked for.
    pub(crate) target: Mode,
    /// For a conversion, the mode the request already holds on the node.
    pub(crate) from: Option<Mode>,
    /// The owner making the request (`None` for a plain `LockTree::lock`).
    pub(crate) owner: Option<OwnerId>,
    /// When the request started waiting, for introspection.
    pub(crate) since: Instant,
    /// A watcher (`acquirable`): never granted, never blocks anyone; woken
    /// (marked granted and removed) by every hand-off on its node.
    pub(crate) watch: bool,
    status: AtomicU8,
    wake: Wake,
}

impl Waiter {
    pub(crate) fn new(
        from: Option<Mode>,
        target: Mode,
        owner: Option<OwnerId>,
        wake: Wake,
    ) -> Self {
        Waiter {
            target,
            from,
            owner,
            since: Instant::now(),
            watch: false,
            status: AtomicU8::new(WAITING),
            wake,
        }
    }

    /// A waiter for the current thread.
    pub(crate) fn for_thread(from: Option<Mode>, target: Mode) -> Self {
        Waiter::new(from, target, None, Wake::Thread(thread::current()))
    }

    /// A waiter for an async task (the waker is stored when polled).
    pub(crate) fn for_task(from: Option<Mode>, target: Mode) -> Self {
        Waiter::new(from, target, None, Wake::Task(Mutex::new(None)))
    }

    /// A watcher for an async task: woken when the node changes.
    pub(crate) fn watcher_task(target: Mode) -> Self {
        Waiter {
            watch: true,
            ..Waiter::for_task(None, target)
        }
    }

    /// A waiter for an owner's async request.
    pub(crate) fn for_owner_task(from: Option<Mode>, target: Mode, owner: OwnerId) -> Self {
        Waiter::new(from, target, Some(owner), Wake::Task(Mutex::new(None)))
    }

    pub(crate) fn is_conversion(&self) -> bool {
        self.from.is_some()
    }

    #[inline]
    pub(crate) fn is_granted(&self) -> bool {
        self.status.load(Ordering::Acquire) == GRANTED
    }

    /// Marks the waiter granted. Called under the queue lock by the thread
    /// that already updated the state word on its behalf; [`Waiter::wake`]
    /// must follow once the queue lock is released.
    pub(crate) fn set_granted(&self) {
        self.status.store(GRANTED, Ordering::Release);
    }

    /// Wakes the thread or task (after `set_granted`).
    pub(crate) fn wake(&self) {
        match &self.wake {
            Wake::Thread(t) => t.unpark(),
            Wake::Task(slot) => {
                let waker = slot.lock().take();
                if let Some(w) = waker {
                    w.wake();
                }
            }
        }
    }

    /// Parks the calling thread until granted or `deadline` passes.
    /// Returns whether it was granted. The caller must cancel on `false`.
    pub(crate) fn park_until(&self, deadline: Option<Instant>) -> bool {
        // Spin first: the grant usually comes within a few microseconds (a
        // holder of a row or a table lets go, and the releaser hands the
        // node over), far sooner than a park and an unpark, each a futex
        // call and a context switch. Not under loom, whose models check
        // the parking path.
        let rounds = if cfg!(loom) { 0 } else { SPIN_ROUNDS };
        for round in 0..rounds {
            if self.is_granted() {
                return true;
            }
            for _ in 0..1u32 << round {
                std::hint::spin_loop();
            }
        }
        loop {
            if self.is_granted() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return self.is_granted();
                    }
                    thread::park_timeout(d - now);
                }
            }
        }
    }

    /// Polls for the grant, registering the task's waker if not yet granted.
    pub(crate) fn poll_granted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_granted() {
            return Poll::Ready(());
        }
        if let Wake::Task(slot) = &self.wake {
            let mut w = slot.lock();
            match &*w {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        if self.is_granted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
