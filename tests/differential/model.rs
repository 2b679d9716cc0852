//! The differential harness shared by `tests/differential.rs` (proptest) and
//! `fuzz/fuzz_targets/differential.rs` (cargo-fuzz): a sequence of
//! single-threaded operations run both on a real [`LockTree`] and on a
//! sequential reference model of Gray's rules, written here from the paper
//! and independently of the engine.
//!
//! # The reference model
//!
//! The model is a list of holders `(path, mode)`. A holder of mode `M` on
//! path `P` holds, on every node of `P`: `M` on `P` itself and
//! `M.intention()` on each proper ancestor (IS for IS and S, IX for the
//! rest). Two holders conflict iff on some node on *both* their paths (a
//! common ancestor-or-self) the modes they hold there are incompatible in
//! Gray's matrix. A request is grantable iff it conflicts with no other
//! holder. A conversion of a holder to `join(current, m)` is grantable iff
//! the converted holder would conflict with no *other* holder. The matrix,
//! the intention and the join are written out here again, not taken from
//! `hierlock::Mode`, so a wrong entry in the engine cannot hide.
//!
//! Single-threaded, nobody ever waits when an operation returns, so the
//! engine's "a try_ also refuses when a conflicting request is queued" rule
//! never applies; requests that would wait are exercised through
//! `lock_timeout(0)`/`upgrade_timeout(0)` (queue, time out, cancel) and
//! through an async lock polled once and dropped (queue, cancel).
//!
//! Every difference — outcome (`Ok`, `WouldBlock`, `Timeout`,
//! `InvalidConversion { from, to }`), the resulting mode, the guard's path,
//! `node_count()` after each step, and a clean tree at the end — is reported
//! with a Rust reproduction of the operations.

#![allow(dead_code)]

use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hierlock::{Error, Guard, LockTree, Mode, OwnedGuard};

/// The small tree the operations run on, as components.
pub const PATHS: [&[&str]; 6] = [&[], &["a"], &["b"], &["a", "x"], &["a", "y"], &["b", "x"]];

/// The modes, by index.
pub const MODES: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];

/// How a lock request is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `try_lock`: `WouldBlock` if not grantable.
    Try,
    /// `lock_timeout(.., Duration::ZERO)`: queues, times out, cancels.
    TimeoutZero,
    /// `lock_async` polled once with a no-op waker; dropped if pending.
    AsyncOnce,
    /// `try_lock_owned` on the `Arc<LockTree>`.
    TryOwned,
}

/// How a conversion is made.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HowUp {
    /// `try_upgrade`.
    Try,
    /// `upgrade_timeout(.., Duration::ZERO)`.
    TimeoutZero,
}

/// One operation. Indices are reduced modulo the number of paths, modes or
/// live guards, so any bytes decode into a valid sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Lock `PATHS[path]` in `MODES[mode]`, written as path text form `form`.
    Lock {
        path: u8,
        mode: u8,
        form: u8,
        how: How,
    },
    /// Upgrade the `guard`-th live guard towards `MODES[mode]`.
    Upgrade { guard: u8, mode: u8, how: HowUp },
    /// Downgrade the `guard`-th live guard to `MODES[mode]`.
    Downgrade { guard: u8, mode: u8 },
    /// Release the `guard`-th live guard.
    Unlock { guard: u8 },
}

impl Op {
    /// Decodes one operation from five bytes (used by both front ends, so a
    /// fuzz input and a proptest case mean the same thing).
    pub fn from_bytes(b: [u8; 5]) -> Op {
        match b[0] % 8 {
            0..=3 => Op::Lock {
                path: b[1],
                mode: b[2],
                form: b[3],
                how: match b[4] % 4 {
                    0 => How::Try,
                    1 => How::TimeoutZero,
                    2 => How::AsyncOnce,
                    _ => How::TryOwned,
                },
            },
            4 | 5 => Op::Upgrade {
                guard: b[1],
                mode: b[2],
                how: if b[3] & 1 == 0 {
                    HowUp::Try
                } else {
                    HowUp::TimeoutZero
                },
            },
            6 => Op::Downgrade {
                guard: b[1],
                mode: b[2],
            },
            _ => Op::Unlock { guard: b[1] },
        }
    }
}

fn mode_of(i: u8) -> Mode {
    MODES[i as usize % MODES.len()]
}

fn path_of(i: u8) -> usize {
    i as usize % PATHS.len()
}

/// `path` shown as the engine's `Display` shows it.
fn display(path: &[&str]) -> String {
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.iter().map(|c| format!("/{c}")).collect()
    }
}

/// The path written in one of several accepted forms, as Rust source.
fn form_src(path: &[&str], form: u8) -> String {
    let joined = path.join("/");
    match form % 5 {
        0 => format!("{:?}", display(path)),
        1 => format!("{joined:?}"),
        2 => format!("{:?}", format!("{joined}/")),
        3 => format!("vec!{path:?}"),
        _ => format!("String::from({joined:?})"),
    }
}

impl fmt::Debug for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Lock {
                path,
                mode,
                form,
                how,
            } => {
                let p = form_src(PATHS[path_of(path)], form);
                let m = mode_of(mode);
                match how {
                    How::Try => write!(f, "tree.try_lock({p}, Mode::{m})"),
                    How::TimeoutZero => {
                        write!(f, "tree.lock_timeout({p}, Mode::{m}, Duration::ZERO)")
                    }
                    How::AsyncOnce => write!(f, "poll_once(tree.lock_async({p}, Mode::{m}))"),
                    How::TryOwned => write!(f, "tree.try_lock_owned({p}, Mode::{m})"),
                }
            }
            Op::Upgrade { guard, mode, how } => {
                let m = mode_of(mode);
                match how {
                    HowUp::Try => write!(f, "live[{guard} % n].try_upgrade(Mode::{m})"),
                    HowUp::TimeoutZero => write!(
                        f,
                        "live[{guard} % n].upgrade_timeout(Mode::{m}, Duration::ZERO)"
                    ),
                }
            }
            Op::Downgrade { guard, mode } => {
                write!(f, "live[{guard} % n].downgrade(Mode::{})", mode_of(mode))
            }
            Op::Unlock { guard } => write!(f, "live.remove({guard} % n).unlock()"),
        }
    }
}

// ---------------------------------------------------------------------------
// The reference model, independent of the engine.

/// Gray's matrix, from the paper: the compatible pairs.
fn gray_compatible(a: Mode, b: Mode) -> bool {
    use Mode::*;
    matches!(
        (a, b),
        (IS, IS)
            | (IS, IX)
            | (IS, S)
            | (IS, SIX)
            | (IX, IS)
            | (IX, IX)
            | (S, IS)
            | (S, S)
            | (SIX, IS)
    )
}

/// The intention taken on proper ancestors.
fn gray_intention(m: Mode) -> Mode {
    use Mode::*;
    match m {
        IS | S => IS,
        IX | SIX | X => IX,
    }
}

/// The lattice order IS < {IX, S} < SIX < X.
fn gray_le(a: Mode, b: Mode) -> bool {
    use Mode::*;
    a == b
        || matches!(
            (a, b),
            (IS, _) | (IX, SIX) | (IX, X) | (S, SIX) | (S, X) | (SIX, X)
        )
}

/// The least upper bound in that order.
fn gray_join(a: Mode, b: Mode) -> Mode {
    MODES
        .into_iter()
        .filter(|&c| gray_le(a, c) && gray_le(b, c))
        .find(|&c| {
            MODES
                .iter()
                .all(|&d| !(gray_le(a, d) && gray_le(b, d)) || gray_le(c, d))
        })
        .expect("the order is a lattice")
}

/// The mode a holder of `mode` on `path` holds on `node` (a prefix of
/// `path`), or `None` if `node` is not on its path.
fn held_on(path: &[&str], mode: Mode, node: &[&str]) -> Option<Mode> {
    if !path.starts_with(node) {
        None
    } else if node.len() == path.len() {
        Some(mode)
    } else {
        Some(gray_intention(mode))
    }
}

/// Whether two holders may coexist: compatible on every node of both paths.
fn coexist(p: &[&str], m: Mode, q: &[&str], n: Mode) -> bool {
    let common = p.iter().zip(q).take_while(|(a, b)| a == b).count();
    (0..=common).all(|len| {
        let node = &p[..len];
        match (held_on(p, m, node), held_on(q, n, node)) {
            (Some(a), Some(b)) => gray_compatible(a, b),
            _ => true,
        }
    })
}

/// The model's state: live holders, in the order the harness lists guards.
#[derive(Default, Debug)]
pub struct Model {
    holders: Vec<(usize, Mode)>,
}

impl Model {
    /// Whether `(path, mode)` may be granted next to every holder except
    /// the one at `except`.
    fn grantable(&self, path: usize, mode: Mode, except: Option<usize>) -> bool {
        self.holders
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .all(|(_, &(q, n))| coexist(PATHS[path], mode, PATHS[q], n))
    }

    /// The live non-root nodes: the union of the holders' paths' prefixes.
    fn node_count(&self) -> usize {
        let mut nodes: Vec<&[&str]> = Vec::new();
        for &(p, _) in &self.holders {
            let path = PATHS[p];
            for len in 1..=path.len() {
                if !nodes.contains(&&path[..len]) {
                    nodes.push(&path[..len]);
                }
            }
        }
        nodes.len()
    }
}

// ---------------------------------------------------------------------------
// The harness.

/// A guard of either kind.
enum AnyGuard<'a> {
    Borrowed(Guard<'a>),
    Owned(OwnedGuard),
}

impl AnyGuard<'_> {
    fn mode(&self) -> Mode {
        match self {
            AnyGuard::Borrowed(g) => g.mode(),
            AnyGuard::Owned(g) => g.mode(),
        }
    }

    fn path(&self) -> String {
        match self {
            AnyGuard::Borrowed(g) => g.path().to_string(),
            AnyGuard::Owned(g) => g.path().to_string(),
        }
    }

    fn upgrade(&mut self, m: Mode, how: HowUp) -> Result<(), Error> {
        match (self, how) {
            (AnyGuard::Borrowed(g), HowUp::Try) => g.try_upgrade(m),
            (AnyGuard::Borrowed(g), HowUp::TimeoutZero) => g.upgrade_timeout(m, Duration::ZERO),
            (AnyGuard::Owned(g), HowUp::Try) => g.try_upgrade(m),
            (AnyGuard::Owned(g), HowUp::TimeoutZero) => g.upgrade_timeout(m, Duration::ZERO),
        }
    }

    fn downgrade(&mut self, m: Mode) -> Result<(), Error> {
        match self {
            AnyGuard::Borrowed(g) => g.downgrade(m),
            AnyGuard::Owned(g) => g.downgrade(m),
        }
    }
}

/// The outcome of one operation, compared between engine and model.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Ok,
    WouldBlock,
    Timeout,
    Pending,
    InvalidConversion { from: Mode, to: Mode },
    Nothing,
    Other,
}

fn outcome<T>(r: &Result<T, Error>) -> Outcome {
    match r {
        Ok(_) => Outcome::Ok,
        Err(Error::WouldBlock) => Outcome::WouldBlock,
        Err(Error::Timeout) => Outcome::Timeout,
        Err(Error::InvalidConversion { from, to, .. }) => Outcome::InvalidConversion {
            from: *from,
            to: *to,
        },
        Err(_) => Outcome::Other,
    }
}

fn lock_with<'t>(
    tree: &'t Arc<LockTree>,
    path: &[&str],
    form: u8,
    m: Mode,
    how: How,
) -> (Outcome, Option<AnyGuard<'t>>) {
    let joined = path.join("/");
    macro_rules! with_path {
        ($call:ident $(, $extra:expr)*) => {
            match form % 5 {
                0 => tree.$call(display(path).as_str(), m $(, $extra)*),
                1 => tree.$call(joined.as_str(), m $(, $extra)*),
                2 => tree.$call(format!("{joined}/").as_str(), m $(, $extra)*),
                3 => tree.$call(path.to_vec(), m $(, $extra)*),
                _ => tree.$call(joined.clone(), m $(, $extra)*),
            }
        };
    }
    match how {
        How::Try => {
            let r = with_path!(try_lock);
            (outcome(&r), r.ok().map(AnyGuard::Borrowed))
        }
        How::TimeoutZero => {
            let r = with_path!(lock_timeout, Duration::ZERO);
            (outcome(&r), r.ok().map(AnyGuard::Borrowed))
        }
        How::TryOwned => {
            let r = with_path!(try_lock_owned);
            (outcome(&r), r.ok().map(AnyGuard::Owned))
        }
        How::AsyncOnce => {
            let fut = with_path!(lock_async);
            let mut fut = pin!(fut);
            let mut cx = Context::from_waker(Waker::noop());
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(r) => (outcome(&r), r.ok().map(AnyGuard::Borrowed)),
                // Dropped here: the cancellation path.
                Poll::Pending => (Outcome::Pending, None),
            }
        }
    }
}

/// A Rust reproduction of `ops`, for failure messages.
pub fn reproduction(ops: &[Op]) -> String {
    let mut s = String::from("let tree = Arc::new(LockTree::new());\n");
    for op in ops {
        let _ = writeln!(s, "{op:?};");
    }
    s
}

/// Runs `ops` on a fresh tree and on the model; `Err` describes the first
/// difference.
pub fn run(ops: &[Op]) -> Result<(), String> {
    let tree = Arc::new(LockTree::new());
    let mut model = Model::default();
    let mut live: Vec<AnyGuard<'_>> = Vec::new();
    let fail = |step: usize, what: String| {
        Err(format!(
            "step {step} ({:?}): {what}\nreproduction:\n{}",
            ops[step],
            reproduction(&ops[..=step])
        ))
    };
    for (step, &op) in ops.iter().enumerate() {
        let (got, want) = match op {
            Op::Lock {
                path,
                mode,
                form,
                how,
            } => {
                let p = path_of(path);
                let m = mode_of(mode);
                let ok = model.grantable(p, m, None);
                let want = match (ok, how) {
                    (true, _) => Outcome::Ok,
                    (false, How::Try | How::TryOwned) => Outcome::WouldBlock,
                    (false, How::TimeoutZero) => Outcome::Timeout,
                    (false, How::AsyncOnce) => Outcome::Pending,
                };
                let (got, guard) = lock_with(&tree, PATHS[p], form, m, how);
                if let Some(g) = guard {
                    live.push(g);
                    model.holders.push((p, m));
                }
                (got, want)
            }
            Op::Upgrade { guard, mode, how } => {
                if live.is_empty() {
                    (Outcome::Nothing, Outcome::Nothing)
                } else {
                    let i = guard as usize % live.len();
                    let (p, cur) = model.holders[i];
                    let target = gray_join(cur, mode_of(mode));
                    let want = if target == cur || model.grantable(p, target, Some(i)) {
                        Outcome::Ok
                    } else if how == HowUp::Try {
                        Outcome::WouldBlock
                    } else {
                        Outcome::Timeout
                    };
                    let got = outcome(&live[i].upgrade(mode_of(mode), how));
                    if got == Outcome::Ok {
                        model.holders[i].1 = target;
                    }
                    (got, want)
                }
            }
            Op::Downgrade { guard, mode } => {
                if live.is_empty() {
                    (Outcome::Nothing, Outcome::Nothing)
                } else {
                    let i = guard as usize % live.len();
                    let cur = model.holders[i].1;
                    let m = mode_of(mode);
                    let want = if gray_le(m, cur) {
                        Outcome::Ok
                    } else {
                        Outcome::InvalidConversion { from: cur, to: m }
                    };
                    let got = outcome(&live[i].downgrade(m));
                    if got == Outcome::Ok {
                        model.holders[i].1 = m;
                    }
                    (got, want)
                }
            }
            Op::Unlock { guard } => {
                if live.is_empty() {
                    (Outcome::Nothing, Outcome::Nothing)
                } else {
                    let i = guard as usize % live.len();
                    match live.remove(i) {
                        AnyGuard::Borrowed(g) => g.unlock(),
                        AnyGuard::Owned(g) => g.unlock(),
                    }
                    model.holders.remove(i);
                    (Outcome::Ok, Outcome::Ok)
                }
            }
        };
        if got != want {
            return fail(step, format!("engine gave {got:?}, the model {want:?}"));
        }
        for (i, (g, &(p, m))) in live.iter().zip(&model.holders).enumerate() {
            if g.mode() != m || g.path() != display(PATHS[p]) {
                return fail(
                    step,
                    format!(
                        "guard {i} is {} in {}, the model says {} in {m}",
                        g.path(),
                        g.mode(),
                        display(PATHS[p])
                    ),
                );
            }
        }
        if tree.node_count() != model.node_count() {
            return fail(
                step,
                format!(
                    "node_count() is {}, the model has {} live nodes",
                    tree.node_count(),
                    model.node_count()
                ),
            );
        }
    }
    let n = ops.len();
    drop(live);
    if tree.node_count() != 0 {
        return Err(format!(
            "node_count() is {} after releasing everything\nreproduction:\n{}",
            tree.node_count(),
            reproduction(ops)
        ));
    }
    // Nothing leaked into any state word: X on every node is free again.
    for path in PATHS {
        if let Err(e) = tree.try_lock(path, Mode::X) {
            return Err(format!(
                "X on {} refused with {e:?} after {n} operations released everything\nreproduction:\n{}",
                display(path),
                reproduction(ops)
            ));
        }
    }
    Ok(())
}

/// Self-checks of the model's own algebra against facts from the paper.
pub fn check_model() {
    use Mode::*;
    assert_eq!(gray_join(S, IX), SIX);
    assert_eq!(gray_join(IS, X), X);
    assert_eq!(gray_join(IX, IX), IX);
    // X on /a excludes everything below it and S on the root.
    assert!(!coexist(&["a"], X, &["a", "x"], IS));
    assert!(!coexist(&[], S, &["a"], X));
    assert!(coexist(&["a"], X, &["b"], X));
    assert!(coexist(&["a", "x"], X, &["a", "y"], X));
    assert!(!coexist(&["a"], S, &["a", "x"], IX));
    assert!(coexist(&["a"], S, &["a", "x"], S));
    assert!(coexist(&[], SIX, &["a", "x"], IS));
    assert!(coexist(&[], SIX, &["a", "x"], S));
    assert!(!coexist(&[], SIX, &["a", "x"], X));
    assert!(!coexist(&["a"], IX, &["a"], S));
}
