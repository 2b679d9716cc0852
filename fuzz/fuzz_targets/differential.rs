//! Differential fuzzing: operations decoded from the input run on the real
//! `LockTree` and on the sequential reference model of Gray's rules in
//! `tests/differential/model.rs` (shared with the proptest in
//! `tests/differential.rs`); any difference panics, with a Rust
//! reproduction of the operations in the message.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/differential/model.rs"]
mod model;

/// The operations, five input bytes each (the same decoding as the
/// proptest's). `Debug` prints the Rust reproduction.
struct Input(Vec<model::Op>);

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < 64 {
            ops.push(model::Op::from_bytes(u.arbitrary::<[u8; 5]>()?));
        }
        Ok(Input(ops))
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&model::reproduction(&self.0))
    }
}

fuzz_target!(|input: Input| {
    if let Err(e) = model::run(&input.0) {
        panic!("{e}");
    }
});
