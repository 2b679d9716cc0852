//! Hierarchical intention locks: Gray's IS, IX, S, SIX and X modes on nodes
//! named by paths, for threads and async tasks.
//!
//! Locking `/db/users/42` in X takes IX on `/`, `/db` and `/db/users`, then
//! X on the row, so "X on `/a` excludes everyone under `/a`" holds exactly,
//! while siblings and disjoint subtrees never contend on anything but
//! compatible intention counts.
//!
//! # Quick start
//!
//! ```
//! use hierlock::{Error, LockTree, Mode};
//! use std::time::Duration;
//!
//! let tree = LockTree::new();
//!
//! // Writers of different rows proceed in parallel.
//! let row42 = tree.lock("/db/users/42", Mode::X)?;
//! let row43 = tree.lock("/db/users/43", Mode::X)?;
//!
//! // A table scan (S on the table) must wait for them.
//! assert_eq!(tree.try_lock("/db/users", Mode::S).unwrap_err(), Error::WouldBlock);
//! assert_eq!(
//!     tree.lock_timeout("/db", Mode::X, Duration::from_millis(1)).unwrap_err(),
//!     Error::Timeout
//! );
//! drop((row42, row43));
//!
//! // Read the whole table, then upgrade to write it.
//! let mut table = tree.read("/db/users")?;
//! table.upgrade(Mode::X)?;
//! assert_eq!(table.mode(), Mode::X);
//! drop(table);
//! assert_eq!(tree.node_count(), 0);
//! # Ok::<(), Error>(())
//! ```
//!
//! # Semantics
//!
//! - [`Mode`]: Gray's compatibility matrix, exactly; `intention`, `join`,
//!   `covers`.
//! - Paths ([`IntoPath`]): strings split on the separator (`/` unless the
//!   [`Builder`] says otherwise) or lists of components. `""` and `"/"` are
//!   the root, which can be locked.
//! - Fairness: once a conflicting request waits at a node, later requests
//!   that conflict with it queue behind it.
//! - Timeouts bound the whole acquisition; on timeout, error or a dropped
//!   future, everything taken is released.
//! - Conversions ([`Guard::upgrade`], [`Guard::downgrade`]); two holders
//!   converting into each other get exactly one [`Error::Deadlock`].
//!
//! # Cargo features
//!
//! - `redis`: `redis::RedisLockTree`, the same modes across processes
//!   through one Redis (or Redis Cluster), with leases and fencing tokens.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod barrier;
mod bias;
mod block;
mod deadlock;
mod error;
mod future;
mod guard;
mod idle;
// Under loom only its own models use it (see `table.rs`).
#[cfg(any(not(loom), test))]
mod index;
mod inspect;
#[cfg(not(loom))]
mod lookup;
mod mode;
mod node;
mod owner;
mod park;
mod path;
mod prepared;
mod state;
mod sticky;
mod sync;
mod table;
mod tree;
mod watch;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use bias::{Bias, MAX_BIASED};
pub use error::Error;
pub use future::{LockFuture, OwnedLockFuture};
pub use guard::{Guard, OwnedGuard};
pub use inspect::{Granted, NodeInfo, Snapshot, Waiting};
pub use mode::{Mode, ParseModeError};
pub use owner::{Owner, OwnerGuard, OwnerId, Reentrancy};
pub use path::{IntoPath, Path, DEFAULT_MAX_DEPTH, DEFAULT_SEPARATOR};
pub use prepared::{OwnedPrepared, Prepared};
pub use state::{MAX_INTENTION_HOLDERS, MAX_SHARED_HOLDERS};
pub use tree::{Builder, LockTree, DEFAULT_IDLE_NODES};
pub use watch::Acquirable;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
