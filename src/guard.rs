//! `Guard` / `OwnedGuard`: what a granted lock holds, its release,
//! upgrade and downgrade.
//!
//! A guard keeps the node pointer and the mode of every level of its path
//! (root first), so releasing needs no lookups: one `fetch_sub` per level,
//! bottom-up. Conversions walk the same levels top-down, converting each
//! ancestor's intention (IS to IX) before the node itself; a conversion that
//! fails part-way converts the levels it changed back, so the guard keeps
//! exactly its old mode.

use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc as StdArc;
use std::time::Duration;

use smallvec::SmallVec;

use crate::bias::{slot_index, window_slot, Hold, NO_SLOT, WINDOWS};
use crate::node::Node;
use crate::path::{IntoPath, ParsedPath, Path};
use crate::sticky::Sticky;
use crate::table::NodeRef;
use crate::tree::{LockTree, Wait};
use crate::{Error, Mode};

/// One level of a hold: a node pointer with the mode held there packed into
/// its low bits, and whether the hold lives in the node's state word or in
/// the guard's bias slot (see `bias.rs`) in the bit above (nodes are
/// 16-byte aligned, so the low 4 bits of the address are always zero;
/// checked below). Keeps a guard small: it is moved by value on every lock.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Level(NonNull<Node>);

const MODE_BITS: usize = 0b111;
const SLOT_BIT: usize = 0b1000;
const _: () = assert!(std::mem::align_of::<Node>() > (MODE_BITS | SLOT_BIT));

/// The mode of each value of the tag bits (`Mode as usize`; the last three
/// never occur), indexed without a bounds check.
const MODE_OF_TAG: [Mode; MODE_BITS + 1] = [
    Mode::IS,
    Mode::IX,
    Mode::S,
    Mode::SIX,
    Mode::X,
    Mode::X,
    Mode::X,
    Mode::X,
];

impl Level {
    /// A hold in the state word.
    #[inline]
    fn new(node: NodeRef, mode: Mode) -> Self {
        Level::with_hold(node, mode, Hold::WORD)
    }

    #[inline]
    fn with_hold(node: NodeRef, mode: Mode, hold: Hold) -> Self {
        let slot = if hold.is_slot() { SLOT_BIT } else { 0 };
        Level(node.as_non_null().map_addr(|a| a | mode as usize | slot))
    }

    #[inline]
    fn node(self) -> NodeRef {
        // A node address is never below 64, so clearing the tag bits
        // never gives zero; `unwrap_or` only satisfies the type.
        NodeRef::from_non_null(
            self.0
                .map_addr(|a| NonZeroUsize::new(a.get() & !(MODE_BITS | SLOT_BIT)).unwrap_or(a)),
        )
    }

    #[inline]
    fn mode(self) -> Mode {
        MODE_OF_TAG[self.0.addr().get() & MODE_BITS]
    }

    #[inline]
    fn in_slot(self) -> bool {
        self.0.addr().get() & SLOT_BIT != 0
    }

    #[inline]
    fn get(self) -> (NodeRef, Mode) {
        (self.node(), self.mode())
    }
}

/// The levels a request holds: node and mode, root first.
#[derive(Debug)]
pub(crate) struct Held {
    levels: SmallVec<[Level; 8]>,
    /// The bias slot every slot hold of this request goes through
    /// (`NO_SLOT` until the first).
    pub(crate) slot: u8,
    /// A prepared handle's active sticky that keeps the whole path for
    /// this guard (`sticky.rs`); `levels` is then empty.
    sticky: Option<NonNull<Sticky>>,
}

// SAFETY: a `Level` is a `NodeRef` with a mode in its low bits; `NodeRef`
// is `Send + Sync` (see its docs), and so is a list of them.
unsafe impl Send for Held {}
// SAFETY: as above.
unsafe impl Sync for Held {}

impl Held {
    #[inline]
    pub(crate) fn new() -> Self {
        Held {
            levels: SmallVec::new(),
            slot: NO_SLOT,
            sticky: None,
        }
    }

    /// A hold of a whole path through `sticky`, which the caller turned
    /// active.
    #[inline]
    pub(crate) fn stuck(sticky: NonNull<Sticky>) -> Self {
        Held {
            levels: SmallVec::new(),
            slot: NO_SLOT,
            sticky: Some(sticky),
        }
    }

    /// Takes a sticky's holds into this guard, which then holds them
    /// itself (before a conversion). The sticky's levels are the ones above
    /// this guard's own (a child of the handle's path); both lists are
    /// first moved out of any bias slot, so the merged list needs no slot.
    fn unstick(&mut self) {
        if let Some(s) = self.sticky.take() {
            self.materialize();
            let mut kept = Sticky::unstick(s, false);
            kept.materialize();
            kept.levels.extend(self.levels.drain(..));
            kept.slot = NO_SLOT;
            *self = kept;
        }
    }

    /// The active sticky of this guard.
    fn sticky(&self) -> Option<&Sticky> {
        // SAFETY: an active sticky lives while its guard does (`sticky.rs`).
        self.sticky.map(|s| unsafe { s.as_ref() })
    }

    /// As [`new`](Self::new), for a request whose slot holds are taken and
    /// given back in owner windows (`bias::WINDOWS`): a prepared handle's.
    #[inline]
    pub(crate) fn with_windows() -> Self {
        Held {
            levels: SmallVec::new(),
            slot: NO_SLOT | WINDOWS,
            sticky: None,
        }
    }

    /// The number of levels held (a sticky's included: they are the ones
    /// above `levels`).
    pub(crate) fn len(&self) -> usize {
        self.levels.len() + self.sticky().map_or(0, Sticky::depth)
    }

    /// The nodes of levels `range` (0: the root).
    pub(crate) fn nodes(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl ExactSizeIterator<Item = NodeRef> + '_ {
        debug_assert!(self.sticky.is_none(), "only a plain walk's levels");
        self.levels[range].iter().map(|l| l.node())
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, node: NodeRef, mode: Mode, hold: Hold) {
        self.levels.push(Level::with_hold(node, mode, hold));
    }

    /// Moves every hold that lives in a bias slot into its node's state
    /// word (revoking the node's bias), so conversions work on the words
    /// alone.
    fn materialize(&mut self) {
        for level in &mut self.levels {
            if level.in_slot() {
                let (node, mode) = level.get();
                // SAFETY: held.
                unsafe { node.get() }.materialize(slot_index(self.slot), mode);
                *level = Level::new(node, mode);
            }
        }
    }

    /// The mode held on the node itself.
    pub(crate) fn mode(&self) -> Mode {
        match (self.levels.last(), self.sticky()) {
            (Some(l), _) => l.mode(),
            (None, Some(s)) => s.mode(),
            (None, None) => unreachable!("a guard holds its node"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        let leaf = match (self.levels.last(), self.sticky()) {
            (Some(l), _) => l.node(),
            (None, Some(s)) => s.leaf(),
            (None, None) => unreachable!("a guard holds its node"),
        };
        // SAFETY: the node is held for as long as `self` is borrowed.
        &unsafe { leaf.get() }.path
    }

    /// Releases every level, bottom-up. Idempotent.
    #[inline]
    pub(crate) fn release(&mut self, tree: &LockTree) {
        if let Some(s) = self.sticky.take() {
            // The sticky keeps the levels above this guard's own (all of
            // them for a handle's own path): those first, bottom-up.
            if !self.levels.is_empty() {
                self.release_levels(tree);
            }
            Sticky::unlock(s, tree);
            return;
        }
        self.release_levels(tree);
    }

    fn release_levels(&mut self, tree: &LockTree) {
        let mut pin = None;
        // Whether this thread may give the slot holds back in windows:
        // looked up once, not per level.
        let window = window_slot(self.slot);
        for level in self.levels.iter().rev() {
            let (node, mode) = level.get();
            if level.in_slot() {
                // SAFETY: held (in the slot, or folded into the word) until
                // this CAS; no `&Node` is made.
                let slots = unsafe { node.slots() }.expect("a slot hold has slots");
                if window.is_some_and(|idx| slots.window_release(idx, mode))
                    || slots.try_release(slot_index(self.slot), mode)
                {
                    continue;
                }
                // Folded: the hold is in the word.
            }
            // One of several holds (or any hold of the root, which is never
            // reclaimed), nobody waiting: a single CAS and done, with no
            // epoch pin and no `&Node` that another thread's last release
            // could free under us.
            // SAFETY: held until this CAS.
            if unsafe { node.state() }.try_release_shared(mode, node == tree.root()) {
                continue;
            }
            let pin = pin.get_or_insert_with(|| tree.table().pin());
            // SAFETY: still held (the CAS above changed nothing), and pinned
            // from now on, so the node stays allocated through the release.
            unsafe { node.get() }.release(mode, tree.table(), pin);
        }
        self.levels.clear();
    }

    /// Converts to `self.mode().join(m)`, top-down.
    pub(crate) fn upgrade(&mut self, tree: &LockTree, m: Mode, wait: Wait) -> Result<(), Error> {
        let current = self.mode();
        let target = current.join(m);
        if target == current {
            return Ok(());
        }
        self.unstick();
        self.materialize();
        let mut pin = tree.table().pin();
        let last = self.levels.len() - 1;
        let mut undo: SmallVec<[(usize, Mode); 8]> = SmallVec::new();
        for i in 0..=last {
            let (node, from) = self.levels[i].get();
            let to = if i == last {
                target
            } else {
                from.join(target.intention())
            };
            if to == from {
                continue;
            }
            match tree.step(&mut pin, node, Some(from), to, wait, None) {
                Ok(granted) => {
                    debug_assert!(granted.is_some(), "a held node cannot be dead");
                    self.levels[i] = Level::new(self.levels[i].node(), to);
                    undo.push((i, from));
                }
                Err(e) => {
                    for (j, old) in undo.into_iter().rev() {
                        let (node, now) = self.levels[j].get();
                        // SAFETY: held.
                        let n = unsafe { node.get() };
                        // A full counter keeps the stronger mode: still safe.
                        if n.downgrade(now, old, tree.table(), &pin).is_ok() {
                            self.levels[j] = Level::new(self.levels[j].node(), old);
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Moves the hold to `to` in the same mode. The new path is locked (the
    /// levels both paths share converted as needed) before anything of the
    /// old path is released; on error nothing changed.
    pub(crate) fn rename(
        &mut self,
        tree: &LockTree,
        to: &ParsedPath<'_>,
        wait: Wait,
    ) -> Result<(), Error> {
        self.unstick();
        self.materialize();
        let mode = self.mode();
        let need = |level: usize| {
            if level == to.depth {
                mode
            } else {
                mode.intention()
            }
        };
        // The root and the leading components both paths share are the
        // same nodes, held by us.
        let common = 1 + self
            .path()
            .components()
            .zip(to.components())
            .take_while(|(a, b)| a == b)
            .count();
        let mut pin = tree.table().pin();
        let mut converted: SmallVec<[(usize, Mode); 8]> = SmallVec::new();
        let mut fresh = Held::new();
        let mut result = Ok(());
        for level in 0..common {
            let (node, held) = self.levels[level].get();
            let target = held.join(need(level));
            if target != held {
                match tree.step(&mut pin, node, Some(held), target, wait, None) {
                    Ok(_) => {
                        self.levels[level] = Level::new(self.levels[level].node(), target);
                        converted.push((level, held));
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
        }
        let mut names = to.prefixes().skip(common - 1);
        if result.is_ok() {
            'levels: for level in common..=to.depth {
                let name = names.next();
                loop {
                    let node = tree.node(&pin, name);
                    match tree.step(
                        &mut pin,
                        node,
                        None,
                        need(level),
                        wait,
                        Some(&mut fresh.slot),
                    ) {
                        Ok(Some(hold)) => {
                            fresh.push(node, need(level), hold);
                            break;
                        }
                        // SAFETY: pinned since the lookup.
                        Ok(None) => tree.table().evict(&pin, unsafe { node.get() }),
                        Err(e) => {
                            result = Err(e);
                            break 'levels;
                        }
                    }
                }
            }
        }
        if let Err(e) = result {
            fresh.release(tree);
            for (level, before) in converted.into_iter().rev() {
                let (node, now) = self.levels[level].get();
                // SAFETY: held.
                if unsafe { node.get() }
                    .downgrade(now, before, tree.table(), &pin)
                    .is_ok()
                {
                    self.levels[level] = Level::new(self.levels[level].node(), before);
                }
            }
            return Err(e);
        }
        // The new path is held: let go of the old one.
        while self.levels.len() > common {
            let (node, m) = self.levels.pop().expect("len > common").get();
            // SAFETY: held until this release; pinned.
            unsafe { node.get() }.release(m, tree.table(), &pin);
        }
        for level in (0..common).rev() {
            let (node, now) = self.levels[level].get();
            let want = need(level);
            // SAFETY: held.
            if now != want
                && unsafe { node.get() }
                    .downgrade(now, want, tree.table(), &pin)
                    .is_ok()
            {
                self.levels[level] = Level::new(self.levels[level].node(), want);
            }
        }
        // Every old slot hold was materialized above: only the new levels
        // may be in a slot, fresh's.
        self.slot = fresh.slot;
        self.levels.extend(fresh.levels.drain(..));
        Ok(())
    }

    /// Converts to the weaker `m`, the node first, then the ancestors'
    /// intentions. Never waits.
    pub(crate) fn downgrade(&mut self, tree: &LockTree, m: Mode) -> Result<(), Error> {
        let current = self.mode();
        if !current.covers(m) {
            return Err(Error::InvalidConversion {
                from: current,
                to: m,
                reason:
                    "a downgrade must go to a mode the held one covers; use upgrade to strengthen",
            });
        }
        if m == current {
            return Ok(());
        }
        self.unstick();
        self.materialize();
        let pin = tree.table().pin();
        let last = self.levels.len() - 1;
        let (leaf, _) = self.levels[last].get();
        // SAFETY: held.
        unsafe { leaf.get() }.downgrade(current, m, tree.table(), &pin)?;
        self.levels[last] = Level::new(self.levels[last].node(), m);
        let to = m.intention();
        for i in (0..last).rev() {
            let (node, from) = self.levels[i].get();
            if from != to && from.covers(to) {
                // SAFETY: held.
                let n = unsafe { node.get() };
                // A full IS counter keeps IX on this ancestor: still safe.
                if n.downgrade(from, to, tree.table(), &pin).is_ok() {
                    self.levels[i] = Level::new(self.levels[i].node(), to);
                }
            }
        }
        Ok(())
    }
}

/// A granted lock plus the tree it must be released to.
struct RawGuard<T: Deref<Target = LockTree>> {
    tree: T,
    held: Held,
}

impl<T: Deref<Target = LockTree>> Drop for RawGuard<T> {
    fn drop(&mut self) {
        self.held.release(&self.tree);
    }
}

impl<T: Deref<Target = LockTree>> fmt::Debug for RawGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("path", &format_args!("{}", self.held.path()))
            .field("mode", &self.held.mode())
            .finish()
    }
}

/// A lock held on one path of a [`LockTree`]; released on drop.
///
/// `Send + Sync`: it may be dropped (released) on another thread.
///
/// ```
/// use hierlock::{LockTree, Mode, Error};
///
/// let tree = LockTree::new();
/// let mut g = tree.read("/db/users")?;
/// assert_eq!(g.mode(), Mode::S);
/// g.upgrade(Mode::IX)?;                 // S ∨ IX = SIX
/// assert_eq!(g.mode(), Mode::SIX);
/// g.downgrade(Mode::S)?;
/// assert!(g.downgrade(Mode::IX).is_err()); // IX is not weaker than S
/// g.unlock();
/// assert_eq!(tree.node_count(), 0);
/// # Ok::<(), Error>(())
/// ```
#[must_use = "if unused the lock is released at once"]
#[derive(Debug)]
pub struct Guard<'a>(RawGuard<&'a LockTree>);

/// A lock held on one path of an `Arc<LockTree>`, which it keeps alive:
/// `'static + Send + Sync`, for storing in structs or moving into tasks.
///
/// ```
/// use std::sync::Arc;
/// use hierlock::{LockTree, Mode};
///
/// let tree = Arc::new(LockTree::new());
/// let g = tree.lock_owned("/jobs/7", Mode::X).unwrap();
/// std::thread::spawn(move || drop(g)).join().unwrap();
/// assert_eq!(tree.node_count(), 0);
/// ```
#[must_use = "if unused the lock is released at once"]
#[derive(Debug)]
pub struct OwnedGuard(RawGuard<StdArc<LockTree>>);

impl<'a> Guard<'a> {
    #[inline]
    pub(crate) fn new(tree: &'a LockTree, held: Held) -> Self {
        Guard(RawGuard { tree, held })
    }
}

impl OwnedGuard {
    #[inline]
    pub(crate) fn new(tree: StdArc<LockTree>, held: Held) -> Self {
        OwnedGuard(RawGuard { tree, held })
    }

    /// The tree this guard locks.
    pub fn tree(&self) -> &StdArc<LockTree> {
        &self.0.tree
    }
}

macro_rules! guard_methods {
    ($ty:ty) => {
        impl $ty {
            /// The mode held on the node.
            pub fn mode(&self) -> Mode {
                self.0.held.mode()
            }

            /// The path of the node. `Display` gives "/db/users" (root: "/").
            pub fn path(&self) -> &Path {
                self.0.held.path()
            }

            /// Converts to `self.mode().join(mode)` (S with IX gives SIX),
            /// converting the ancestors' intentions to match, blocking until
            /// granted. Converting to a mode already covered does nothing.
            ///
            /// Conversions are queued ahead of new requests. If another
            /// holder of this node waits to convert and each of you would
            /// wait for the other, this call returns [`Error::Deadlock`] at
            /// once. On any error the guard keeps its old mode.
            pub fn upgrade(&mut self, mode: Mode) -> Result<(), Error> {
                self.0.held.upgrade(&self.0.tree, mode, Wait::Until(None))
            }

            /// Like [`upgrade`](Self::upgrade), but [`Error::WouldBlock`]
            /// instead of waiting.
            pub fn try_upgrade(&mut self, mode: Mode) -> Result<(), Error> {
                self.0.held.upgrade(&self.0.tree, mode, Wait::Never)
            }

            /// Like [`upgrade`](Self::upgrade), waiting at most `timeout`
            /// ([`Error::Timeout`]; the guard keeps its old mode).
            pub fn upgrade_timeout(&mut self, mode: Mode, timeout: Duration) -> Result<(), Error> {
                self.0
                    .held
                    .upgrade(&self.0.tree, mode, Wait::timeout(timeout))
            }

            /// Converts to a weaker `mode` (one the held mode covers: X to
            /// S, SIX to IX, S to IS...), turning the ancestors' IX back to
            /// IS where the new mode allows. Never waits; wakes the waiters
            /// it unblocks. [`Error::InvalidConversion`] if `mode` is not
            /// weaker (IX to S); downgrading to the held mode does nothing.
            pub fn downgrade(&mut self, mode: Mode) -> Result<(), Error> {
                self.0.held.downgrade(&self.0.tree, mode)
            }

            /// Moves this lock to `path`, in the same mode, blocking until
            /// granted. The new path is locked before the old one is
            /// released, so the holder is never unprotected; levels both
            /// paths share stay held throughout. On error the guard keeps
            /// its old path and nothing is leaked.
            ///
            /// ```
            /// use hierlock::{LockTree, Mode};
            /// let tree = LockTree::new();
            /// let mut g = tree.lock("/tmp/upload-7", Mode::X).unwrap();
            /// g.rename("/files/report.pdf").unwrap();
            /// assert_eq!(g.path().to_string(), "/files/report.pdf");
            /// assert!(tree.try_lock("/tmp/upload-7", Mode::X).is_ok());
            /// ```
            pub fn rename<'p>(&mut self, path: impl IntoPath<'p>) -> Result<(), Error> {
                let to = self.0.tree.parse(path)?;
                self.0.held.rename(&self.0.tree, &to, Wait::Until(None))
            }

            /// Like [`rename`](Self::rename), but [`Error::WouldBlock`]
            /// instead of waiting.
            pub fn try_rename<'p>(&mut self, path: impl IntoPath<'p>) -> Result<(), Error> {
                let to = self.0.tree.parse(path)?;
                self.0.held.rename(&self.0.tree, &to, Wait::Never)
            }

            /// Like [`rename`](Self::rename), waiting at most `timeout`.
            pub fn rename_timeout<'p>(
                &mut self,
                path: impl IntoPath<'p>,
                timeout: Duration,
            ) -> Result<(), Error> {
                let to = self.0.tree.parse(path)?;
                self.0
                    .held
                    .rename(&self.0.tree, &to, Wait::timeout(timeout))
            }

            /// Releases the lock now (the same as dropping the guard).
            pub fn unlock(self) {
                drop(self)
            }
        }
    };
}

guard_methods!(Guard<'_>);
guard_methods!(OwnedGuard);
