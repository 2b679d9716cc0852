//! `acquirable`: waiting until a mode *would* be granted, without taking it
//! (asyncio-multilock's `notify`), for schedulers that wait on a resource.
//!
//! The check walks the path top-down asking each node whether it admits the
//! level's mode (holders compatible, no conflicting request queued). At the
//! first node that does not, the future queues a *watcher*: a queue entry
//! that is never granted and never blocks anyone, and that every hand-off on
//! that node wakes. Woken, it checks the whole path again. Nodes that do not
//! exist admit everything and are not created.
//!
//! "Would be granted" is a moment's truth: by the time the caller acts,
//! another request may have taken the node. Use `try_lock` to act on it.
//!
//! # Cancel safety
//!
//! Dropping the future removes its watcher; it holds nothing else.

use std::future::Future;
use std::pin::Pin as StdPin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::block::{deadline, wait_for};
use crate::park::Waiter;
use crate::path::{IntoPath, ParsedPath};
use crate::sync::Arc;
use crate::table::NodeRef;
use crate::tree::LockTree;
use crate::{Error, Mode};

/// The future returned by [`LockTree::acquirable`].
#[must_use = "futures do nothing unless polled"]
pub struct Acquirable<'a> {
    tree: &'a LockTree,
    path: Result<ParsedPath<'static>, Error>,
    mode: Mode,
    watching: Option<(NodeRef, Arc<Waiter>)>,
}

impl std::fmt::Debug for Acquirable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acquirable")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl LockTree {
    /// Resolves when `mode` on `path` would be granted at once — without
    /// taking it.
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// use hierlock::{LockTree, Mode};
    /// let tree = LockTree::new();
    /// let reader = tree.read("/jobs").unwrap();
    /// let free = tree.acquirable("/jobs", Mode::X);
    /// drop(reader);
    /// free.await.unwrap();
    /// assert!(tree.try_lock("/jobs", Mode::X).is_ok());
    /// # });
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the future removes its watcher; it holds no lock.
    pub fn acquirable<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Acquirable<'_> {
        Acquirable {
            tree: self,
            path: self.parse(path).map(ParsedPath::into_owned),
            mode,
            watching: None,
        }
    }

    /// Blocks until `mode` on `path` would be granted at once, without
    /// taking it; [`Error::Timeout`] after `timeout`.
    pub fn wait_acquirable<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
        timeout: Duration,
    ) -> Result<(), Error> {
        wait_for(self.acquirable(path, mode), deadline(timeout))
    }
}

impl Acquirable<'_> {
    fn stop_watching(&mut self) {
        if let Some((node, w)) = self.watching.take() {
            let table = self.tree.table();
            let pin = table.pin();
            if w.is_granted() {
                // Woken: the hand-off already removed it from the queue, and
                // the node may be gone since. Nothing to undo.
                return;
            }
            // SAFETY: pinned before seeing the watcher not yet woken, so it
            // was still queued (and the node alive, WAITING set) when the
            // pin began; a hand-off that removes it now can only unlink the
            // node after that, which the pin holds back.
            unsafe { node.get() }.unwatch(&w, table, &pin);
        }
    }
}

impl Future for Acquirable<'_> {
    type Output = Result<(), Error>;

    fn poll(self: StdPin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some((_, w)) = &this.watching {
                if w.poll_granted(cx).is_pending() {
                    return Poll::Pending;
                }
                this.stop_watching();
            }
            let path = match &this.path {
                Ok(p) => p,
                Err(e) => return Poll::Ready(Err(e.clone())),
            };
            let tree = this.tree;
            let pin = tree.table().pin();
            let mut blocked = None;
            let mut names = path.prefixes();
            for level in 0..=path.depth {
                let m = if level == path.depth {
                    this.mode
                } else {
                    this.mode.intention()
                };
                let node = if level == 0 {
                    Some(tree.root())
                } else {
                    let name = names.next().expect("one prefix per level");
                    tree.table().get(&pin, name)
                };
                let Some(node) = node else {
                    break; // this node and everything below are free
                };
                // SAFETY: pinned since the lookup.
                if !unsafe { node.get() }.admits(m) {
                    blocked = Some((node, m));
                    break;
                }
            }
            let Some((node, m)) = blocked else {
                return Poll::Ready(Ok(()));
            };
            let watcher = Arc::new(Waiter::watcher_task(m));
            // SAFETY: pinned since the lookup; once queued, the watcher keeps
            // the node alive.
            if unsafe { node.get() }.watch(&watcher) {
                this.watching = Some((node, watcher));
            }
            // Either queued (poll it, registering the waker) or the node
            // changed meanwhile (check again).
        }
    }
}

impl Drop for Acquirable<'_> {
    fn drop(&mut self) {
        self.stop_watching();
    }
}
