//! Introspection, like PostgreSQL's `pg_locks`: who holds a node in which
//! mode, and who waits for it since when.
//!
//! A report is a snapshot taken without stopping the tree: each node's state
//! word and queue are read consistently with themselves, but holders may
//! come and go between nodes of one snapshot. Plain `LockTree::lock` guards
//! have no owner and appear grouped per mode as anonymous holders.

use std::fmt;
use std::time::{Duration, Instant};

use crate::path::{IntoPath, Path};
use crate::table::NodeRef;
use crate::tree::LockTree;
use crate::{Error, Mode, OwnerId};

/// A granted lock on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Granted {
    /// The owner, or `None` for anonymous holders (plain `LockTree::lock`).
    pub owner: Option<OwnerId>,
    /// The mode held.
    pub mode: Mode,
    /// For an owner, how many of its locks need this node; for anonymous
    /// holders, how many hold this mode.
    pub count: u64,
}

/// A request waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiting {
    /// The owner, or `None` for an anonymous request.
    pub owner: Option<OwnerId>,
    /// The mode requested.
    pub mode: Mode,
    /// For a conversion, the mode the requester holds now.
    pub converting_from: Option<Mode>,
    /// When the request started waiting.
    pub since: Instant,
}

/// One node's holders and waiters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The node.
    pub path: Path,
    /// Granted locks.
    pub granted: Vec<Granted>,
    /// Queued requests, in the order they will be considered.
    pub waiting: Vec<Waiting>,
    /// Prepared handles ([`Prepared`](crate::Prepared)) keeping the node.
    pub prepared: u32,
}

/// Every live node's [`NodeInfo`], sorted by path.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// The nodes somebody holds or waits on.
    pub nodes: Vec<NodeInfo>,
}

impl LockTree {
    /// The holders and waiters of one node (both empty if nobody holds or
    /// waits on it).
    ///
    /// ```
    /// use hierlock::{LockTree, Mode};
    /// let tree = LockTree::new();
    /// let txn = tree.owner();
    /// let _g = txn.lock("/db/users", Mode::X).unwrap();
    /// let _r = tree.lock("/db/orders", Mode::S).unwrap();
    /// let info = tree.inspect("/db").unwrap();
    /// assert_eq!(info.granted.len(), 2); // the owner's IX, an anonymous IS
    /// println!("{info}");
    /// ```
    pub fn inspect<'p>(&self, path: impl IntoPath<'p>) -> Result<NodeInfo, Error> {
        let path = self.parse(path)?;
        let pin = self.table().pin();
        let node = if path.depth == 0 {
            Some(self.root())
        } else {
            self.table().get(&pin, &path.text)
        };
        Ok(match node {
            Some(node) => self.describe(node),
            None => NodeInfo {
                path: Path::from_normalized(&path.text, path.sep),
                granted: Vec::new(),
                waiting: Vec::new(),
                prepared: 0,
            },
        })
    }

    /// Every node somebody holds or waits on, with its holders and waiters.
    pub fn snapshot(&self) -> Snapshot {
        let pin = self.table().pin();
        let mut nodes: Vec<NodeInfo> = std::iter::once(self.root())
            .chain(self.table().nodes(&pin))
            .map(|n| self.describe(n))
            .filter(|info| !info.granted.is_empty() || !info.waiting.is_empty())
            .collect();
        nodes.sort_by(|a, b| a.path.as_str().cmp(b.path.as_str()));
        Snapshot { nodes }
    }

    /// The caller must be pinned since it found `node`.
    fn describe(&self, node: NodeRef) -> NodeInfo {
        // SAFETY: the callers are pinned since they looked the node up.
        let n = unsafe { node.get() };
        // Holds kept by idle prepared handles are nobody's: call them back.
        n.revoke_sticky(None);
        let mut granted = Vec::new();
        // Holds in the state word and in bias slots alike.
        let mut anonymous: [u64; 5] = n.counts();
        let mut owners = self.owners().all();
        owners.sort_by_key(|o| o.id);
        for owner in owners {
            let st = owner.state.lock();
            if let Some(hold) = st.nodes.get(&node) {
                if let Some(mode) = hold.held {
                    anonymous[mode as usize] = anonymous[mode as usize].saturating_sub(1);
                    granted.push(Granted {
                        owner: Some(owner.id),
                        mode,
                        count: hold.total(),
                    });
                }
            }
        }
        for m in Mode::ALL {
            if anonymous[m as usize] > 0 {
                granted.push(Granted {
                    owner: None,
                    mode: m,
                    count: anonymous[m as usize],
                });
            }
        }
        let waiting = n
            .waiters()
            .iter()
            .filter(|w| !w.is_granted())
            .map(|w| Waiting {
                owner: w.owner,
                mode: w.target,
                converting_from: w.from,
                since: w.since,
            })
            .collect();
        NodeInfo {
            path: n.path.clone(),
            granted,
            waiting,
            prepared: n.handles(),
        }
    }
}

fn who(owner: Option<OwnerId>) -> String {
    owner.map_or_else(|| "(anonymous)".to_owned(), |o| o.to_string())
}

fn waited(since: Instant) -> Duration {
    Instant::now().saturating_duration_since(since)
}

impl fmt::Display for NodeInfo {
    /// One line per holder or waiter:
    ///
    /// ```text
    /// path        owner        mode  granted  count/waited
    /// /db         owner#1      IX    yes      1
    /// /db         (anonymous)  IS    yes      1
    /// /db         owner#2      X     no       12.5ms
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for g in &self.granted {
            writeln!(
                f,
                "{:<24} {:<12} {:<4} granted  count {}",
                self.path.to_string(),
                who(g.owner),
                g.mode,
                g.count
            )?;
        }
        for w in &self.waiting {
            let conv = w
                .converting_from
                .map(|m| format!(" (converting from {m})"))
                .unwrap_or_default();
            writeln!(
                f,
                "{:<24} {:<12} {:<4} waiting  for {:?}{conv}",
                self.path.to_string(),
                who(w.owner),
                w.mode,
                waited(w.since)
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:<12} {:<4} state    count/waited",
            "path", "owner", "mode"
        )?;
        for n in &self.nodes {
            write!(f, "{n}")?;
        }
        Ok(())
    }
}
