//! The async acquisition: the same top-down walk as `LockTree::lock`, as a
//! future that waits on wakers instead of parking.
//!
//! # Cancel safety
//!
//! A `LockFuture` owns what it has taken so far: the levels already granted
//! and, while suspended, one queue entry. Dropping it (a `select!` that
//! chose another branch, a timeout, an aborted task) withdraws the queue
//! entry under the node's queue lock; if a releaser granted the entry just
//! before, the drop releases that grant, which hands the node on to the
//! next waiter, so the wake-up is never lost. Then the levels above are
//! released bottom-up. Nothing is left in any queue or state word.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc as StdArc;
use std::task::{ready, Context, Poll};

use smallvec::SmallVec;

use crate::bias::Hold;
use crate::guard::{Guard, Held, OwnedGuard};
use crate::node::Acquire;
use crate::park::Waiter;
use crate::path::ParsedPath;
use crate::prepared::OwnedPrepared;
use crate::sync::Arc;
use crate::table::NodeRef;
use crate::tree::LockTree;
use crate::{Error, Mode};

/// What a future locks.
enum Target {
    /// A path, looked up level by level.
    Path(ParsedPath<'static>),
    /// A prepared handle's pinned nodes, root first, and, for a child of
    /// the handle, the full path whose levels below them are looked up.
    /// `_keep` owns pins of its own (a `'static` future); otherwise the
    /// future borrows the handle, whose pins keep the nodes alive.
    Nodes {
        nodes: SmallVec<[NodeRef; 8]>,
        below: Option<ParsedPath<'static>>,
        /// Only kept for its pins, dropped after the future's own `Drop`
        /// has released everything.
        _keep: Option<OwnedPrepared>,
    },
}

impl Target {
    fn depth(&self) -> usize {
        match self {
            Target::Path(p) => p.depth,
            Target::Nodes { below: Some(p), .. } => p.depth,
            Target::Nodes { nodes, .. } => nodes.len() - 1,
        }
    }
}

struct RawLockFuture<T: Deref<Target = LockTree>> {
    tree: T,
    /// What to lock, or the error parsing its path gave (reported on first
    /// poll).
    target: Result<Target, Error>,
    mode: Mode,
    held: Held,
    /// The next level to take (0 = root).
    level: usize,
    /// The queue entry this future is suspended on, with its node and mode.
    waiting: Option<(NodeRef, Mode, Arc<Waiter>)>,
    done: bool,
}

impl<T: Deref<Target = LockTree>> RawLockFuture<T> {
    fn new(tree: T, target: Result<Target, Error>, mode: Mode) -> Self {
        RawLockFuture {
            tree,
            target,
            mode,
            held: Held::new(),
            level: 0,
            waiting: None,
            done: false,
        }
    }

    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<Result<Held, Error>> {
        assert!(!self.done, "LockFuture polled after it resolved");
        let target = match &self.target {
            Ok(t) => t,
            Err(e) => {
                self.done = true;
                return Poll::Ready(Err(e.clone()));
            }
        };
        loop {
            if let Some((node, m, waiter)) = &self.waiting {
                ready!(waiter.poll_granted(cx));
                self.held.push(*node, *m, Hold::WORD);
                self.waiting = None;
                self.level += 1;
            }
            if self.level > target.depth() {
                self.done = true;
                return Poll::Ready(Ok(std::mem::replace(&mut self.held, Held::new())));
            }
            let m = if self.level == target.depth() {
                self.mode
            } else {
                self.mode.intention()
            };
            let pin = self.tree.table().pin();
            loop {
                let node = match target {
                    Target::Path(path) => {
                        let name = (self.level > 0).then(|| path.prefix(self.level));
                        self.tree.node(&pin, name)
                    }
                    Target::Nodes { nodes, .. } if self.level < nodes.len() => nodes[self.level],
                    Target::Nodes { below, .. } => {
                        let path = below.as_ref().expect("levels below the handle have a path");
                        self.tree.node(&pin, Some(path.prefix(self.level)))
                    }
                };
                // SAFETY: pinned since the lookup (or by the prepared
                // handle this future borrows).
                let n = unsafe { node.get() };
                match n.acquire(
                    None,
                    m,
                    true,
                    false,
                    Some((self.tree.table(), &mut self.held.slot)),
                    Waiter::for_task,
                ) {
                    Ok(Acquire::Granted(hold)) => {
                        self.held.push(node, m, hold);
                        self.level += 1;
                        break;
                    }
                    Ok(Acquire::Dead) => self.tree.table().evict(&pin, n),
                    Ok(Acquire::Wait(waiter)) => {
                        self.waiting = Some((node, m, waiter));
                        break;
                    }
                    Err(e) => {
                        drop(pin);
                        self.held.release(&self.tree);
                        self.done = true;
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<T: Deref<Target = LockTree>> Drop for RawLockFuture<T> {
    fn drop(&mut self) {
        if let Some((node, m, waiter)) = self.waiting.take() {
            let table = self.tree.table();
            let pin = table.pin();
            // SAFETY: queued, so the node's state word is non-zero and the
            // node is alive; pinned from here on.
            let n = unsafe { node.get() };
            if n.cancel(&waiter, table, &pin) {
                // Granted just before the drop: pass it on.
                n.release(m, table, &pin);
            }
        }
        self.held.release(&self.tree);
    }
}

/// The future returned by [`LockTree::lock_async`]; resolves to a [`Guard`].
///
/// Runtime-agnostic (it only uses the waker it is polled with) and
/// cancel-safe: see [`LockTree::lock_async`].
#[must_use = "futures do nothing unless polled"]
pub struct LockFuture<'a>(RawLockFuture<&'a LockTree>);

/// The future returned by [`LockTree::lock_owned_async`]; resolves to an
/// [`OwnedGuard`]. `'static + Send`, so it can be spawned.
#[must_use = "futures do nothing unless polled"]
pub struct OwnedLockFuture(RawLockFuture<StdArc<LockTree>>);

impl<'a> LockFuture<'a> {
    pub(crate) fn new(
        tree: &'a LockTree,
        path: Result<ParsedPath<'static>, Error>,
        mode: Mode,
    ) -> Self {
        LockFuture(RawLockFuture::new(tree, path.map(Target::Path), mode))
    }

    /// A future over a prepared handle's nodes (and, for a child of the
    /// handle, the levels of `below` under them); `'a` must not outlive
    /// the handle (its pins keep the nodes alive).
    pub(crate) fn for_nodes(
        tree: &'a LockTree,
        nodes: SmallVec<[NodeRef; 8]>,
        below: Result<Option<ParsedPath<'static>>, Error>,
        mode: Mode,
    ) -> Self {
        let target = below.map(|below| Target::Nodes {
            nodes,
            below,
            _keep: None,
        });
        LockFuture(RawLockFuture::new(tree, target, mode))
    }
}

impl OwnedLockFuture {
    pub(crate) fn new(
        tree: StdArc<LockTree>,
        path: Result<ParsedPath<'static>, Error>,
        mode: Mode,
    ) -> Self {
        OwnedLockFuture(RawLockFuture::new(tree, path.map(Target::Path), mode))
    }

    /// A future that owns `keep`, a handle of its own on a prepared path's
    /// nodes, and locks that path or, with `below`, a path under it.
    pub(crate) fn for_prepared(
        tree: StdArc<LockTree>,
        keep: Result<OwnedPrepared, Error>,
        below: Result<Option<ParsedPath<'static>>, Error>,
        mode: Mode,
    ) -> Self {
        let target = keep.and_then(|keep| {
            Ok(Target::Nodes {
                nodes: keep.nodes().clone(),
                below: below?,
                _keep: Some(keep),
            })
        });
        OwnedLockFuture(RawLockFuture::new(tree, target, mode))
    }
}

impl<'a> Future for LockFuture<'a> {
    type Output = Result<Guard<'a>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut self.get_mut().0;
        let held = ready!(this.poll_held(cx))?;
        Poll::Ready(Ok(Guard::new(this.tree, held)))
    }
}

impl Future for OwnedLockFuture {
    type Output = Result<OwnedGuard, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut self.get_mut().0;
        let held = ready!(this.poll_held(cx))?;
        Poll::Ready(Ok(OwnedGuard::new(this.tree.clone(), held)))
    }
}

impl std::fmt::Debug for LockFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockFuture")
            .field("mode", &self.0.mode)
            .field("level", &self.0.level)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OwnedLockFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedLockFuture")
            .field("mode", &self.0.mode)
            .field("level", &self.0.level)
            .finish_non_exhaustive()
    }
}
