//! The path parser never panics, agrees with a reference parser written
//! from the design notes, and parse/print round-trips:
//! `Path::parse(p.to_string()) == p` for every accepted `p`.
#![no_main]

use arbitrary::Arbitrary;
use hierlock::{Path, DEFAULT_MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The separator: '/' most of the time, any char otherwise.
    sep: Option<char>,
    text: String,
    components: Vec<String>,
}

/// The design notes' rules: at most one separator at each end is ignored,
/// "" and the separator alone are the root, every component non-empty, at
/// most `DEFAULT_MAX_DEPTH` components.
fn reference(text: &str, sep: char) -> Option<Vec<&str>> {
    let t = text.strip_prefix(sep).unwrap_or(text);
    if t.is_empty() {
        return Some(Vec::new());
    }
    let t = t.strip_suffix(sep).unwrap_or(t);
    let parts: Vec<&str> = t.split(sep).collect();
    if parts.iter().any(|c| c.is_empty()) || parts.len() > DEFAULT_MAX_DEPTH {
        return None;
    }
    Some(parts)
}

fn check(p: &Path, sep: char) {
    let shown = p.to_string();
    let again = Path::parse(shown.as_str(), sep)
        .unwrap_or_else(|e| panic!("{shown:?} (printed from {p:?}) does not parse: {e}"));
    assert_eq!(&again, p, "print/parse round trip via {shown:?}");
    let parts: Vec<&str> = p.components().collect();
    assert_eq!(parts.len(), p.depth());
    assert!(parts.iter().all(|c| !c.is_empty() && !c.contains(sep)));
    let from_parts = Path::parse(parts.clone(), sep).expect("components of a path");
    assert_eq!(&from_parts, p);
    assert_eq!(p.is_root(), parts.is_empty());
    if let Some(parent) = p.parent() {
        assert!(parent.is_prefix_of(p));
        assert_eq!(parent.depth() + 1, p.depth());
        assert!(!p.is_prefix_of(&parent));
    }
}

fuzz_target!(|input: Input| {
    let sep = input.sep.unwrap_or('/');
    match (
        Path::parse(input.text.as_str(), sep),
        reference(&input.text, sep),
    ) {
        (Ok(p), Some(parts)) => {
            assert_eq!(
                p.components().collect::<Vec<_>>(),
                parts,
                "{:?}",
                input.text
            );
            check(&p, sep);
        }
        (Err(hierlock::Error::InvalidPath { .. }), None) => {}
        (got, want) => panic!(
            "{:?} with {sep:?}: parser {got:?}, reference {want:?}",
            input.text
        ),
    }
    let comps: Vec<&str> = input.components.iter().map(String::as_str).collect();
    let valid =
        comps.len() <= DEFAULT_MAX_DEPTH && comps.iter().all(|c| !c.is_empty() && !c.contains(sep));
    match Path::parse(comps.clone(), sep) {
        Ok(p) => {
            assert!(valid, "{comps:?} accepted");
            assert_eq!(p.components().collect::<Vec<_>>(), comps);
            check(&p, sep);
        }
        Err(hierlock::Error::InvalidPath { .. }) => assert!(!valid, "{comps:?} refused"),
        Err(e) => panic!("{comps:?}: unexpected {e:?}"),
    }
});
