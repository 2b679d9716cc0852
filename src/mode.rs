//! Gray's multi-granularity lock modes and their algebra.
//!
//! The five modes of Gray, Lorie, Putzolu and Traiger (1976), ordered by
//! strength as a lattice:
//!
//! ```text
//!          X
//!          |
//!         SIX
//!        /   \
//!       S     IX
//!        \   /
//!         IS
//! ```
//!
//! [`Mode::join`] is the least upper bound in this lattice (S ∨ IX = SIX),
//! [`Mode::covers`] is the lattice order, and [`Mode::compatible`] is Gray's
//! compatibility matrix, reproduced exactly:
//!
//! | held \ requested | IS  | IX  | S   | SIX | X  |
//! |------------------|-----|-----|-----|-----|----|
//! | IS               | yes | yes | yes | yes | no |
//! | IX               | yes | yes | no  | no  | no |
//! | S                | yes | no  | yes | no  | no |
//! | SIX              | yes | no  | no  | no  | no |
//! | X                | no  | no  | no  | no  | no |

use std::fmt;
use std::str::FromStr;

/// A lock mode: one of Gray's five multi-granularity modes.
///
/// Locking a node in mode `M` takes [`M.intention()`](Mode::intention) on
/// every proper ancestor of the node, then `M` on the node itself.
///
/// ```
/// use hierlock::Mode;
///
/// assert!(Mode::IS.compatible(Mode::IX));
/// assert!(!Mode::S.compatible(Mode::IX));
/// assert_eq!(Mode::S.join(Mode::IX), Mode::SIX);
/// assert_eq!(Mode::X.intention(), Mode::IX);
/// assert!(Mode::SIX.covers(Mode::S));
/// assert_eq!("SIX".parse::<Mode>().unwrap(), Mode::SIX);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[repr(u8)]
pub enum Mode {
    /// Intention shared: the holder will take S (or IS) somewhere below.
    IS = 0,
    /// Intention exclusive: the holder will take X, SIX or IX somewhere below.
    IX = 1,
    /// Shared: read the node and everything under it.
    S = 2,
    /// Shared with intention exclusive: read the whole subtree, write parts of it.
    SIX = 3,
    /// Exclusive: the node and everything under it belong to the holder alone.
    X = 4,
}

/// `COMPATIBLE[held][requested]`: Gray's matrix.
const COMPATIBLE: [[bool; 5]; 5] = [
    //  IS     IX     S      SIX    X
    [true, true, true, true, false],     // IS
    [true, true, false, false, false],   // IX
    [true, false, true, false, false],   // S
    [true, false, false, false, false],  // SIX
    [false, false, false, false, false], // X
];

/// `JOIN[a][b]`: the least mode covering both.
const JOIN: [[Mode; 5]; 5] = {
    use Mode::*;
    [
        //  IS   IX   S    SIX  X
        [IS, IX, S, SIX, X],     // IS
        [IX, IX, SIX, SIX, X],   // IX
        [S, SIX, S, SIX, X],     // S
        [SIX, SIX, SIX, SIX, X], // SIX
        [X, X, X, X, X],         // X
    ]
};

impl Mode {
    /// All five modes, weakest first.
    pub const ALL: [Mode; 5] = [Mode::IS, Mode::IX, Mode::S, Mode::SIX, Mode::X];

    /// Whether a lock in `self` and a lock in `other` may be held on the same
    /// node at the same time by different holders. Symmetric.
    #[inline]
    pub const fn compatible(self, other: Mode) -> bool {
        COMPATIBLE[self as usize][other as usize]
    }

    /// The intention mode this mode takes on every proper ancestor:
    /// IS for IS and S, IX for IX, SIX and X.
    #[inline]
    pub const fn intention(self) -> Mode {
        match self {
            Mode::IS | Mode::S => Mode::IS,
            Mode::IX | Mode::SIX | Mode::X => Mode::IX,
        }
    }

    /// The least mode that grants everything both `self` and `other` grant
    /// (for example `S.join(IX) == SIX`). This is what a conversion
    /// ([`Guard::upgrade`](crate::Guard::upgrade)) moves to.
    #[inline]
    pub const fn join(self, other: Mode) -> Mode {
        JOIN[self as usize][other as usize]
    }

    /// Whether `self` grants at least everything `other` grants
    /// (`self.join(other) == self`). Every mode covers itself.
    #[inline]
    pub const fn covers(self, other: Mode) -> bool {
        JOIN[self as usize][other as usize] as u8 == self as u8
    }

    /// Whether this is an intention mode (IS or IX), which only announces
    /// locks further down the tree.
    #[inline]
    pub const fn is_intention(self) -> bool {
        matches!(self, Mode::IS | Mode::IX)
    }

    /// Whether a bias class admits this mode: IS, IX or S (see `bias.rs`).
    #[inline]
    pub(crate) const fn is_biasable(self) -> bool {
        matches!(self, Mode::IS | Mode::IX | Mode::S)
    }

    /// The mode's name as written by `Display`: "IS", "IX", "S", "SIX" or "X".
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::IS => "IS",
            Mode::IX => "IX",
            Mode::S => "S",
            Mode::SIX => "SIX",
            Mode::X => "X",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The error returned when a string is not one of "IS", "IX", "S", "SIX", "X".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock mode {input:?}: expected one of IS, IX, S, SIX, X")]
pub struct ParseModeError {
    input: String,
}

impl FromStr for Mode {
    type Err = ParseModeError;

    /// Parses "IS", "IX", "S", "SIX" or "X" (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseModeError {
                input: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::Mode::{self, *};

    /// Gray's matrix, written out by hand from the paper rather than from
    /// the table above, so a typo in one is caught by the other.
    #[test]
    fn matrix_is_grays() {
        let yes = [
            (IS, IS),
            (IS, IX),
            (IS, S),
            (IS, SIX),
            (IX, IS),
            (IX, IX),
            (S, IS),
            (S, S),
            (SIX, IS),
        ];
        for a in Mode::ALL {
            for b in Mode::ALL {
                assert_eq!(a.compatible(b), yes.contains(&(a, b)), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn join_is_least_upper_bound() {
        // The order, by hand: IS < IX, IS < S, IX < SIX, S < SIX, SIX < X.
        let le = |a: Mode, b: Mode| {
            a == b
                || matches!(
                    (a, b),
                    (IS, _) | (IX, SIX) | (IX, X) | (S, SIX) | (S, X) | (SIX, X)
                )
        };
        for a in Mode::ALL {
            for b in Mode::ALL {
                let j = a.join(b);
                assert_eq!(j, b.join(a));
                assert!(le(a, j) && le(b, j), "{a} v {b} = {j}");
                for c in Mode::ALL {
                    if le(a, c) && le(b, c) {
                        assert!(le(j, c), "{a} v {b} = {j} but {c} is smaller");
                    }
                }
                assert_eq!(a.covers(b), le(b, a), "{a} covers {b}");
            }
        }
        assert_eq!(S.join(IX), SIX);
    }

    #[test]
    fn stronger_modes_conflict_with_more() {
        // Monotonicity: if a covers b, whatever conflicts with b conflicts with a.
        for a in Mode::ALL {
            for b in Mode::ALL {
                if a.covers(b) {
                    for c in Mode::ALL {
                        if !b.compatible(c) {
                            assert!(!a.compatible(c));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn intentions() {
        assert_eq!(IS.intention(), IS);
        assert_eq!(S.intention(), IS);
        assert_eq!(IX.intention(), IX);
        assert_eq!(SIX.intention(), IX);
        assert_eq!(X.intention(), IX);
        assert!(IS.is_intention() && IX.is_intention());
        assert!(!S.is_intention() && !SIX.is_intention() && !X.is_intention());
    }

    #[test]
    fn display_and_parse_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string().to_lowercase().parse::<Mode>().unwrap(), m);
        }
        assert_eq!(format!("{:>4}", X), "   X");
        let err = "XS".parse::<Mode>().unwrap_err();
        assert!(err.to_string().contains("\"XS\""), "{err}");
        let _: &dyn std::error::Error = &err;
        assert!("".parse::<Mode>().is_err());
    }
}
