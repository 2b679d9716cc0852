//! Owners: lock-holding identities (transactions) with reentrancy,
//! several paths at once, and deadlock detection.
//!
//! # Implementation details
//!
//! An owner holds **one** hold per node in the node's state word — the join
//! of every mode its guards need there — and counts, per node and mode, how
//! many of its guards need each mode (`NodeHold`). A new request on a node
//! the owner already holds converts that hold to the join (conversions queue
//! ahead of new requests), so an owner never conflicts with itself. Dropping
//! a guard decrements its counts and *reconciles* each node: the hold is
//! downgraded to the join of what is still needed, or released when nothing
//! is.
//!
//! An owner's requests run one at a time (an async mutex per owner), so the
//! counts cannot race with a second request of the same owner; guard drops
//! may happen on any thread at any time, so every change of a `NodeHold` and
//! the node operation it implies happen under the owner's state mutex. A node
//! with a request of the owner in flight is `busy`: drops only adjust its
//! counts, and the request reconciles when it is granted or gives up.
//!
//! Requests are written once, as async code (`request`), and the blocking
//! API runs them on a minimal executor that parks the thread with the
//! caller's deadline; a timeout is the future being dropped, which is
//! cancel-safe (everything taken is given back).
//!
//! Lock order: the tree's deadlock detector, then an owner's state, then a
//! node's queue.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc as StdArc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex as PlMutex;
use smallvec::SmallVec;

use crate::block::{deadline, wait_for};
use crate::node::Acquire;
use crate::park::Waiter;
use crate::path::{IntoPath, ParsedPath, Path};
use crate::sync::Arc;
use crate::table::{NodeRef, Pin};
use crate::tree::LockTree;
use crate::{Error, Mode};

/// Identifies an [`Owner`] in introspection output (`owner#7`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct OwnerId(pub(crate) u64);

impl OwnerId {
    /// The numeric id, unique within its tree.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "owner#{}", self.0)
    }
}

/// What an owner may request again on a node it already holds, after
/// hilok's flags. Intention modes taken on ancestors never count as "held"
/// here: only nodes the owner locked explicitly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Reentrancy {
    /// Every mode, counted; the hold converts to the join (escalation
    /// read -> write -> release read leaves write; de-escalation write ->
    /// read -> release write leaves read). Release order is free.
    #[default]
    Recursive,
    /// Only X is re-entrant: X again on a node held in X is counted; any
    /// other second request on a held node is [`Error::AlreadyHeld`].
    RecursiveWrite,
    /// Weaker-or-equal requests under a held mode are counted (S or IS under
    /// its own X), stronger ones (X under its own S) are
    /// [`Error::AlreadyHeld`].
    OneWay,
    /// Any second request on a node the owner holds is
    /// [`Error::AlreadyHeld`].
    Strict,
}

/// What one owner holds on one node.
#[derive(Debug, Default)]
pub(crate) struct NodeHold {
    /// The mode the owner holds in the node's state word.
    pub(crate) held: Option<Mode>,
    /// How many of the owner's guards need each mode here.
    counts: [u32; 5],
    /// Of those, how many locked this node explicitly (not as an ancestor).
    leaf: [u32; 5],
    /// A request of the owner is being granted on this node.
    busy: bool,
}

impl NodeHold {
    fn needed(&self) -> Option<Mode> {
        Mode::ALL
            .into_iter()
            .filter(|m| self.counts[*m as usize] > 0)
            .reduce(Mode::join)
    }

    /// How many of the owner's locks need this node.
    pub(crate) fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    fn explicit(&self) -> Option<Mode> {
        Mode::ALL
            .into_iter()
            .filter(|m| self.leaf[*m as usize] > 0)
            .reduce(Mode::join)
    }
}

/// One guard's levels: node, mode, explicit (the guard's own node).
type Levels = SmallVec<[(NodeRef, Mode, bool); 8]>;

#[derive(Default)]
pub(crate) struct OwnerState {
    pub(crate) nodes: HashMap<NodeRef, NodeHold>,
    guards: HashMap<u64, Levels>,
    next_guard: u64,
}

/// The request an owner is waiting on, for deadlock detection.
#[derive(Clone)]
pub(crate) struct WaitEdge {
    pub(crate) node: NodeRef,
    pub(crate) waiter: Arc<Waiter>,
}

/// The part of an owner its guards share.
pub(crate) struct OwnerShared {
    pub(crate) id: OwnerId,
    policy: Reentrancy,
    serial: async_lock::Mutex<()>,
    pub(crate) state: PlMutex<OwnerState>,
    /// Read by deadlock detection under the tree's detector lock.
    pub(crate) waiting: PlMutex<Option<WaitEdge>>,
}

/// A lock-holding identity — a transaction, a request, a task — that holds
/// many locks at once and never conflicts with itself.
///
/// ```
/// use hierlock::{LockTree, Mode, Reentrancy, Error};
///
/// let tree = LockTree::new();
/// let txn = tree.owner();
/// let table = txn.lock("/db/users", Mode::IX)?;
/// let row = txn.lock("/db/users/42", Mode::X)?;    // IX on /db/users is already ours
/// let again = txn.lock("/db/users/42", Mode::S)?;  // Recursive: counted
/// assert!(tree.try_lock("/db/users/42", Mode::S).is_err());
/// txn.release_all();
/// assert_eq!(tree.node_count(), 0);
///
/// let strict = tree.owner_with(Reentrancy::Strict);
/// let _a = strict.lock("/a", Mode::S)?;
/// assert_eq!(strict.lock("/a", Mode::S).unwrap_err(), Error::AlreadyHeld);
/// # drop((table, row, again));
/// # Ok::<(), Error>(())
/// ```
pub struct Owner<'t> {
    tree: &'t LockTree,
    shared: StdArc<OwnerShared>,
    /// False for the short-lived handles guards make to request on their
    /// owner's behalf: dropping those releases nothing.
    primary: bool,
}

/// A lock held by an [`Owner`]; released on drop (or by
/// [`Owner::release_all`], after which dropping it does nothing).
#[must_use = "if unused the lock is released at once"]
pub struct OwnerGuard<'t> {
    tree: &'t LockTree,
    owner: StdArc<OwnerShared>,
    id: u64,
    mode: Mode,
    path: Path,
}

impl LockTree {
    /// A new owner with the default [`Reentrancy::Recursive`] policy.
    pub fn owner(&self) -> Owner<'_> {
        self.owner_with(Reentrancy::Recursive)
    }

    /// A new owner with the given reentrancy policy.
    pub fn owner_with(&self, policy: Reentrancy) -> Owner<'_> {
        let id = OwnerId(self.owners().next_id());
        let shared = StdArc::new(OwnerShared {
            id,
            policy,
            serial: async_lock::Mutex::new(()),
            state: PlMutex::new(OwnerState::default()),
            waiting: PlMutex::new(None),
        });
        self.owners().register(shared.clone());
        Owner {
            tree: self,
            shared,
            primary: true,
        }
    }
}

impl fmt::Debug for Owner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner")
            .field("id", &self.shared.id)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl fmt::Debug for OwnerGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnerGuard")
            .field("owner", &self.owner.id)
            .field("path", &format_args!("{}", self.path))
            .field("mode", &self.mode)
            .finish()
    }
}

/// How long a request may wait.
#[derive(Clone, Copy)]
enum Patience {
    Never,
    Wait,
}

impl<'t> Owner<'t> {
    /// This owner's id, as shown by introspection.
    pub fn id(&self) -> OwnerId {
        self.shared.id
    }

    /// This owner's reentrancy policy.
    pub fn reentrancy(&self) -> Reentrancy {
        self.shared.policy
    }

    /// Locks `path` in `mode` for this owner, blocking until granted.
    ///
    /// Where the owner already holds a node of the path, the hold converts
    /// to the join instead of conflicting. If waiting would close a cycle of
    /// owners waiting for each other, this request is refused with
    /// [`Error::Deadlock`] and the owner keeps what it held before.
    pub fn lock<'p>(&self, path: impl IntoPath<'p>, mode: Mode) -> Result<OwnerGuard<'t>, Error> {
        let path = self.tree.parse(path)?.into_owned();
        wait_for(self.request(path, mode, Patience::Wait), None)
    }

    /// Like [`lock`](Self::lock), but [`Error::WouldBlock`] instead of
    /// waiting (also while another request of this owner is in flight).
    pub fn try_lock<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> Result<OwnerGuard<'t>, Error> {
        let path = self.tree.parse(path)?.into_owned();
        wait_for(self.request(path, mode, Patience::Never), None)
    }

    /// Like [`lock`](Self::lock), waiting at most `timeout` for the whole
    /// acquisition; on [`Error::Timeout`] everything this request took is
    /// given back.
    pub fn lock_timeout<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
        timeout: Duration,
    ) -> Result<OwnerGuard<'t>, Error> {
        let path = self.tree.parse(path)?.into_owned();
        wait_for(self.request(path, mode, Patience::Wait), deadline(timeout))
    }

    /// Locks `path` in `mode` from async code, on any executor.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives back everything this request took (holds
    /// converted for it are converted back) and removes its queue entry; a
    /// grant that raced with the drop is handed on. Locks the owner held
    /// before are kept.
    pub fn lock_async<'p>(
        &self,
        path: impl IntoPath<'p>,
        mode: Mode,
    ) -> impl Future<Output = Result<OwnerGuard<'t>, Error>> + Send + '_ {
        let path = self.tree.parse(path).map(ParsedPath::into_owned);
        async move { self.request(path?, mode, Patience::Wait).await }
    }

    /// Locks several `(path, mode)` pairs as one request: all granted, or
    /// none (and the owner keeps what it held before).
    ///
    /// Pairs naming the same path are merged into one guard of the join of
    /// their modes; the result has one guard per distinct path, in order of
    /// first appearance. The nodes are taken in one canonical order
    /// (ancestors before descendants, then by name) with the merged mode
    /// each needs, so `lock_all`s never deadlock with each other or with
    /// single locks.
    ///
    /// ```
    /// use hierlock::{LockTree, Mode};
    /// let tree = LockTree::new();
    /// let txn = tree.owner();
    /// let gs = txn.lock_all([("/db/a", Mode::X), ("/db/b", Mode::S), ("/db/a", Mode::S)]).unwrap();
    /// assert_eq!(gs.len(), 2);
    /// assert_eq!(gs[0].mode(), Mode::X);
    /// ```
    pub fn lock_all<'p, P: IntoPath<'p>>(
        &self,
        pairs: impl IntoIterator<Item = (P, Mode)>,
    ) -> Result<Vec<OwnerGuard<'t>>, Error> {
        let pairs = self.parse_all(pairs)?;
        wait_for(self.request_all(pairs, Patience::Wait), None)
    }

    /// Like [`lock_all`](Self::lock_all), waiting at most `timeout` in all.
    pub fn lock_all_timeout<'p, P: IntoPath<'p>>(
        &self,
        pairs: impl IntoIterator<Item = (P, Mode)>,
        timeout: Duration,
    ) -> Result<Vec<OwnerGuard<'t>>, Error> {
        let pairs = self.parse_all(pairs)?;
        wait_for(self.request_all(pairs, Patience::Wait), deadline(timeout))
    }

    /// Like [`lock_all`](Self::lock_all), but [`Error::WouldBlock`] instead
    /// of waiting.
    pub fn try_lock_all<'p, P: IntoPath<'p>>(
        &self,
        pairs: impl IntoIterator<Item = (P, Mode)>,
    ) -> Result<Vec<OwnerGuard<'t>>, Error> {
        let pairs = self.parse_all(pairs)?;
        wait_for(self.request_all(pairs, Patience::Never), None)
    }

    /// Releases every lock of this owner. Guards still alive become inert.
    pub fn release_all(&self) {
        let pin = self.tree.table().pin();
        let mut state = self.shared.state.lock();
        let guards: Vec<Levels> = state.guards.drain().map(|(_, l)| l).collect();
        for levels in guards {
            unhold_levels(self.tree, &pin, &mut state, &levels);
        }
    }

    /// The locks this owner holds explicitly: (path, join of the modes held
    /// there), sorted by path.
    pub fn holds(&self) -> Vec<(Path, Mode)> {
        let state = self.shared.state.lock();
        let mut out: Vec<(Path, Mode)> = state
            .nodes
            .iter()
            .filter_map(|(node, h)| {
                // SAFETY: the owner holds every node in its map.
                h.explicit()
                    .map(|m| (unsafe { node.get() }.path.clone(), m))
            })
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    fn parse_all<'p, P: IntoPath<'p>>(
        &self,
        pairs: impl IntoIterator<Item = (P, Mode)>,
    ) -> Result<Vec<(ParsedPath<'static>, Mode)>, Error> {
        let mut out: Vec<(ParsedPath<'static>, Mode)> = Vec::new();
        for (p, m) in pairs {
            let p = self.tree.parse(p)?.into_owned();
            match out.iter_mut().find(|(q, _)| q.text == p.text) {
                Some((_, held)) => *held = held.join(m),
                None => out.push((p, m)),
            }
        }
        Ok(out)
    }

    /// One request: the path's levels top-down, recorded as one guard.
    async fn request(
        &self,
        path: ParsedPath<'static>,
        mode: Mode,
        patience: Patience,
    ) -> Result<OwnerGuard<'t>, Error> {
        let _serial = self.serialize(patience).await?;
        self.request_serialized(&path, mode, patience).await
    }

    async fn request_serialized(
        &self,
        path: &ParsedPath<'static>,
        mode: Mode,
        patience: Patience,
    ) -> Result<OwnerGuard<'t>, Error> {
        let mut taken = Taken::new(self);
        let mut names = path.prefixes();
        for level in 0..=path.depth {
            let name = if level == 0 { None } else { names.next() };
            let leaf = level == path.depth;
            let m = if leaf { mode } else { mode.intention() };
            self.take_level(&mut taken, name, m, leaf, patience).await?;
        }
        Ok(taken.into_guard(mode, Path::from_normalized(&path.text, path.sep)))
    }

    async fn request_all(
        &self,
        pairs: Vec<(ParsedPath<'static>, Mode)>,
        patience: Patience,
    ) -> Result<Vec<OwnerGuard<'t>>, Error> {
        let _serial = self.serialize(patience).await?;
        // Every node any pair needs, with the join of what each needs there.
        let mut needs: Vec<(String, Mode)> = Vec::new();
        let mut need = |name: &str, m: Mode| match needs.iter_mut().find(|(n, _)| n == name) {
            Some((_, held)) => *held = held.join(m),
            None => needs.push((name.to_owned(), m)),
        };
        for (p, m) in &pairs {
            need("", if p.depth == 0 { *m } else { m.intention() });
            for (i, prefix) in p.prefixes().enumerate() {
                need(prefix, if i + 1 == p.depth { *m } else { m.intention() });
            }
        }
        // A prefix sorts before its extensions: ancestors come first.
        needs.sort();
        let mut bundle = Taken::new(self);
        for (name, m) in &needs {
            let name = (!name.is_empty()).then_some(name.as_str());
            self.take_level(&mut bundle, name, *m, false, patience)
                .await?;
        }
        // Everything is held now: each pair is granted without waiting.
        let mut guards = Vec::with_capacity(pairs.len());
        for (p, m) in &pairs {
            guards.push(self.request_serialized(p, *m, Patience::Never).await?);
        }
        drop(bundle);
        Ok(guards)
    }

    async fn serialize(&self, patience: Patience) -> Result<async_lock::MutexGuard<'_, ()>, Error> {
        match patience {
            Patience::Wait => Ok(self.shared.serial.lock().await),
            Patience::Never => self.shared.serial.try_lock().ok_or(Error::WouldBlock),
        }
    }

    /// Takes `m` on one node for this owner (a conversion if it already
    /// holds the node), waiting if allowed, and records it in `taken`.
    async fn take_level(
        &self,
        taken: &mut Taken<'_, 't>,
        name: Option<&str>,
        m: Mode,
        leaf: bool,
        patience: Patience,
    ) -> Result<(), Error> {
        let tree = self.tree;
        let (node, waiter, target) = loop {
            let pin = tree.table().pin();
            let node = tree.node(&pin, name);
            // SAFETY: pinned since the lookup.
            let n = unsafe { node.get() };
            let mut state = self.shared.state.lock();
            let hold = state.nodes.entry(node).or_default();
            debug_assert!(!hold.busy, "an owner's requests are serialized");
            if leaf {
                check_policy(self.shared.policy, hold.explicit(), m)?;
            }
            if hold.counts[m as usize] == u32::MAX {
                return Err(Error::TooManyHolders);
            }
            let from = hold.held;
            let target = from.map_or(m, |h| h.join(m));
            if from == Some(target) {
                count(hold, m, leaf);
                taken.push(node, m, leaf);
                return Ok(());
            }
            let may_wait = matches!(patience, Patience::Wait);
            // Owners count their holds per node; they stay in the word.
            let outcome = n.acquire(from, target, may_wait, false, None, |f, t| {
                Waiter::for_owner_task(f, t, self.shared.id)
            });
            match outcome {
                Ok(Acquire::Granted(_)) => {
                    hold.held = Some(target);
                    count(hold, m, leaf);
                    taken.push(node, m, leaf);
                    return Ok(());
                }
                Ok(Acquire::Dead) => {
                    forget_if_empty(&mut state, node);
                    drop(state);
                    tree.table().evict(&pin, n);
                }
                Ok(Acquire::Wait(waiter)) => {
                    hold.busy = true;
                    break (node, waiter, target);
                }
                Err(e) => {
                    forget_if_empty(&mut state, node);
                    return Err(e);
                }
            }
        };
        let mut pending = PendingWait {
            owner: self,
            node,
            waiter,
            target,
            done: false,
        };
        if tree
            .owners()
            .closes_cycle(tree, &self.shared, node, &pending.waiter)
        {
            // This request closed a cycle: it is the victim, unless the
            // grant already came.
            if !pending.give_up() {
                return Err(Error::Deadlock);
            }
        } else {
            WaitFuture(&pending.waiter).await;
        }
        pending.granted(m, leaf);
        taken.push(node, m, leaf);
        Ok(())
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if !self.primary {
            return;
        }
        self.release_all();
        self.tree.owners().unregister(self.shared.id);
    }
}

fn check_policy(policy: Reentrancy, explicit: Option<Mode>, m: Mode) -> Result<(), Error> {
    let Some(held) = explicit else {
        return Ok(());
    };
    let allowed = match policy {
        Reentrancy::Recursive => true,
        Reentrancy::RecursiveWrite => held == Mode::X && m == Mode::X,
        Reentrancy::OneWay => held.covers(m),
        Reentrancy::Strict => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::AlreadyHeld)
    }
}

fn count(hold: &mut NodeHold, m: Mode, leaf: bool) {
    hold.counts[m as usize] += 1;
    if leaf {
        hold.leaf[m as usize] += 1;
    }
}

fn forget_if_empty(state: &mut OwnerState, node: NodeRef) {
    if let Some(h) = state.nodes.get(&node) {
        if h.held.is_none() && h.needed().is_none() && !h.busy {
            state.nodes.remove(&node);
        }
    }
}

/// Brings the owner's hold on `node` down to what its guards still need.
/// Call with the owner's state locked; the node must not be busy.
fn reconcile(tree: &LockTree, pin: &Pin, state: &mut OwnerState, node: NodeRef) {
    let Some(hold) = state.nodes.get_mut(&node) else {
        return;
    };
    if hold.busy {
        return;
    }
    // SAFETY: the owner holds the node (or held it until this call).
    let n = unsafe { node.get() };
    match (hold.held, hold.needed()) {
        (Some(held), None) => {
            state.nodes.remove(&node);
            n.release(held, tree.table(), pin);
        }
        (Some(held), Some(need)) if held != need && held.covers(need) => {
            // A full counter keeps the stronger hold: still safe.
            let downgraded = n.downgrade(held, need, tree.table(), pin).is_ok();
            hold.held = Some(if downgraded { need } else { held });
        }
        (None, None) => {
            state.nodes.remove(&node);
        }
        _ => {}
    }
}

fn unhold_levels(tree: &LockTree, pin: &Pin, state: &mut OwnerState, levels: &Levels) {
    for &(node, m, leaf) in levels.iter().rev() {
        if let Some(hold) = state.nodes.get_mut(&node) {
            hold.counts[m as usize] -= 1;
            if leaf {
                hold.leaf[m as usize] -= 1;
            }
            reconcile(tree, pin, state, node);
        }
    }
}

/// The levels a request has taken so far; given back on drop unless they
/// became a guard.
struct Taken<'o, 't> {
    owner: &'o Owner<'t>,
    levels: Levels,
}

impl<'o, 't> Taken<'o, 't> {
    fn new(owner: &'o Owner<'t>) -> Self {
        Taken {
            owner,
            levels: Levels::new(),
        }
    }

    fn push(&mut self, node: NodeRef, m: Mode, leaf: bool) {
        self.levels.push((node, m, leaf));
    }

    fn into_guard(mut self, mode: Mode, path: Path) -> OwnerGuard<'t> {
        let levels = std::mem::take(&mut self.levels);
        let shared = &self.owner.shared;
        let mut state = shared.state.lock();
        let id = state.next_guard;
        state.next_guard += 1;
        state.guards.insert(id, levels);
        OwnerGuard {
            tree: self.owner.tree,
            owner: shared.clone(),
            id,
            mode,
            path,
        }
    }
}

impl Drop for Taken<'_, '_> {
    fn drop(&mut self) {
        if self.levels.is_empty() {
            return;
        }
        let tree = self.owner.tree;
        let pin = tree.table().pin();
        let mut state = self.owner.shared.state.lock();
        unhold_levels(tree, &pin, &mut state, &self.levels);
    }
}

/// A queued request of an owner. Dropping it unqueues it (or, if it was
/// granted in the meantime, gives the grant back) and reconciles the node.
struct PendingWait<'o, 't> {
    owner: &'o Owner<'t>,
    node: NodeRef,
    waiter: Arc<Waiter>,
    target: Mode,
    done: bool,
}

impl PendingWait<'_, '_> {
    /// Withdraws the request; `true` if it had been granted (and is kept).
    fn give_up(&mut self) -> bool {
        let tree = self.owner.tree;
        let pin = tree.table().pin();
        *self.owner.shared.waiting.lock() = None;
        // SAFETY: queued or granted: the node's state word is non-zero.
        let n = unsafe { self.node.get() };
        let mut state = self.owner.shared.state.lock();
        let granted = n.cancel(&self.waiter, tree.table(), &pin);
        if !granted {
            self.done = true;
            if let Some(hold) = state.nodes.get_mut(&self.node) {
                hold.busy = false;
            }
            reconcile(tree, &pin, &mut state, self.node);
            forget_if_empty(&mut state, self.node);
        }
        granted
    }

    /// Records the grant for `m`.
    fn granted(mut self, m: Mode, leaf: bool) {
        *self.owner.shared.waiting.lock() = None;
        let tree = self.owner.tree;
        let pin = tree.table().pin();
        let mut state = self.owner.shared.state.lock();
        let hold = state.nodes.entry(self.node).or_default();
        hold.busy = false;
        hold.held = Some(self.target);
        count(hold, m, leaf);
        // Guards dropped while we waited may need less than the target.
        reconcile(tree, &pin, &mut state, self.node);
        self.done = true;
    }
}

impl Drop for PendingWait<'_, '_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.give_up() {
            // Granted just before the drop: the grant is not needed.
            let tree = self.owner.tree;
            let pin = tree.table().pin();
            let mut state = self.owner.shared.state.lock();
            let hold = state.nodes.entry(self.node).or_default();
            hold.busy = false;
            hold.held = Some(self.target);
            reconcile(tree, &pin, &mut state, self.node);
            forget_if_empty(&mut state, self.node);
        }
    }
}

/// Resolves once the waiter is granted.
struct WaitFuture<'w>(&'w Arc<Waiter>);

impl Future for WaitFuture<'_> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.poll_granted(cx)
    }
}

impl<'t> OwnerGuard<'t> {
    /// The mode this guard asked for on its node (the owner's hold there is
    /// the join of all its guards' modes).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The path of the node.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The owner this guard belongs to.
    pub fn owner_id(&self) -> OwnerId {
        self.owner.id
    }

    /// Moves this lock to `path` in the same mode, for the same owner: the
    /// new path is locked before the old one is released; on error the
    /// guard keeps its old path.
    pub fn rename<'p>(&mut self, path: impl IntoPath<'p>) -> Result<(), Error> {
        let new = self.as_owner().lock(path, self.mode)?;
        drop(std::mem::replace(self, new));
        Ok(())
    }

    /// Like [`rename`](Self::rename), but [`Error::WouldBlock`] instead of
    /// waiting.
    pub fn try_rename<'p>(&mut self, path: impl IntoPath<'p>) -> Result<(), Error> {
        let new = self.as_owner().try_lock(path, self.mode)?;
        drop(std::mem::replace(self, new));
        Ok(())
    }

    /// Like [`rename`](Self::rename), waiting at most `timeout`.
    pub fn rename_timeout<'p>(
        &mut self,
        path: impl IntoPath<'p>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let new = self.as_owner().lock_timeout(path, self.mode, timeout)?;
        drop(std::mem::replace(self, new));
        Ok(())
    }

    /// A handle on the guard's owner whose drop releases nothing.
    fn as_owner(&self) -> Owner<'t> {
        Owner {
            tree: self.tree,
            shared: self.owner.clone(),
            primary: false,
        }
    }

    /// Releases this guard's share of the owner's locks now.
    pub fn unlock(self) {
        drop(self)
    }
}

impl Drop for OwnerGuard<'_> {
    fn drop(&mut self) {
        let pin = self.tree.table().pin();
        let mut state = self.owner.state.lock();
        if let Some(levels) = state.guards.remove(&self.id) {
            unhold_levels(self.tree, &pin, &mut state, &levels);
        }
    }
}
