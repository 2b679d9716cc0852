//! Differential test: random single-threaded operation sequences on the real
//! `LockTree` against a sequential reference model of Gray's rules.
//!
//! The model and the harness live in `tests/differential/model.rs`, shared
//! with the `differential` fuzz target (`fuzz/`), which decodes the same
//! five-byte operations from libFuzzer's input. Minimized fuzz crashes are
//! replayed below as ordinary tests.

#[path = "differential/model.rs"]
mod model;

use model::{Op, MODES};
use proptest::prelude::*;

fn op() -> impl Strategy<Value = Op> {
    any::<[u8; 5]>().prop_map(Op::from_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any sequence of try_lock / lock_timeout(0) / async-poll-once-and-drop /
    /// try_upgrade / upgrade_timeout(0) / downgrade / unlock gives the same
    /// outcomes, modes and node counts on the engine as on the model, and
    /// leaves the tree empty.
    #[test]
    fn engine_matches_grays_rules(ops in prop::collection::vec(op(), 1..48)) {
        if let Err(e) = model::run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn model_algebra_is_grays() {
    model::check_model();
}

/// Every pair of (path, mode) requests, in both orders: the whole
/// matrix through the hierarchy, exhaustively.
#[test]
fn every_pair_of_requests() {
    for p in 0..model::PATHS.len() as u8 {
        for q in 0..model::PATHS.len() as u8 {
            for m in 0..MODES.len() as u8 {
                for n in 0..MODES.len() as u8 {
                    for how in 0..4 {
                        let ops = [
                            Op::from_bytes([0, p, m, 0, 0]),
                            Op::from_bytes([0, q, n, 3, how]),
                            Op::from_bytes([4, 0, n, 0, 0]),
                            Op::from_bytes([4, 1, m, 1, 0]),
                            Op::from_bytes([6, 0, 0, 0, 0]),
                        ];
                        if let Err(e) = model::run(&ops) {
                            panic!("{e}");
                        }
                    }
                }
            }
        }
    }
}
