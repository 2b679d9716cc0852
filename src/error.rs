//! The crate's one error type.

use crate::Mode;

/// Everything that can go wrong when taking, converting or releasing a lock.
///
/// `#[non_exhaustive]`: later versions may add variants, so match with a
/// wildcard arm. Messages are lowercase and name the offending path or mode.
///
/// ```
/// use hierlock::{Error, LockTree, Mode};
///
/// let tree = LockTree::new();
/// let _x = tree.lock("/db", Mode::X).unwrap();
/// assert_eq!(tree.try_lock("/db/users", Mode::S).unwrap_err(), Error::WouldBlock);
/// let bad = tree.try_lock("/db//users", Mode::S).unwrap_err();
/// assert!(matches!(bad, Error::InvalidPath { .. }));
/// assert!(bad.to_string().contains("/db//users"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `try_` operation found a conflicting holder or an earlier waiter
    /// it must queue behind.
    #[error("the lock is held in a conflicting mode (or an earlier conflicting request waits)")]
    WouldBlock,

    /// The deadline of a `_timeout` operation passed before the whole path
    /// was granted; everything taken so far was released.
    #[error("timed out before the lock was granted")]
    Timeout,

    /// Granting this request would close a cycle of holders waiting for each
    /// other (two conversions on one node, or a cycle between owners). This
    /// request was chosen as the victim; what it held before is kept.
    #[error("deadlock: this request would wait for a holder that waits for it")]
    Deadlock,

    /// The path is malformed: an empty inner component, a component that
    /// contains the separator, more separators at an end than one, or more
    /// components than the tree's `max_depth`.
    #[error("invalid path `{path}`: {reason}")]
    InvalidPath {
        /// The path as given (components joined with the separator).
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A conversion that makes no sense: a downgrade to a mode that is not
    /// weaker than the mode held (for example IX to S).
    #[error("invalid conversion from {from} to {to}: {reason}")]
    InvalidConversion {
        /// The mode held.
        from: Mode,
        /// The mode asked for.
        to: Mode,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A node already has as many holders of one mode as its state word can
    /// count; the request was refused rather than let the counter wrap.
    #[error("too many holders of one mode on one node")]
    TooManyHolders,

    /// The owner already holds this node and its reentrancy policy refuses a
    /// second request on it.
    #[error("the owner already holds this node and its reentrancy policy refuses another request")]
    AlreadyHeld,

    /// The lock backend (Redis) failed: unreachable, timed out, or answered
    /// something unexpected.
    #[error("lock backend error: {message}")]
    Backend {
        /// What the backend said or why it could not be reached.
        message: String,
    },

    /// The lease of a distributed lock ran out (or was force-released) while
    /// the guard still claimed to hold it.
    #[error("the lock's lease was lost")]
    LeaseLost,
}

impl Error {
    pub(crate) fn invalid_path(path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidPath {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static_std_error() {
        fn check<E: std::error::Error + Send + Sync + 'static>() {}
        check::<Error>();
    }

    #[test]
    fn messages_name_what_was_wrong() {
        let e = Error::invalid_path("a//b", "empty component at position 2");
        assert_eq!(
            e.to_string(),
            "invalid path `a//b`: empty component at position 2"
        );
        let e = Error::InvalidConversion {
            from: Mode::IX,
            to: Mode::S,
            reason: "S is not weaker than IX",
        };
        assert!(e.to_string().contains("from IX to S"));
    }
}
