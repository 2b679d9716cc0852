//! Paths: parsing, validation and the component representation.
//!
//! A path names a node of the tree as a sequence of non-empty components.
//! The empty sequence is the root.
//!
//! A path is given either as a string split on the tree's separator (`/` by
//! default) or as a list of components. Internally every path is kept in one
//! *normalized* form: its components joined with the separator, with no
//! separator at either end (the root is the empty string). Because a
//! component can never contain the separator, this form is unambiguous, and
//! the node of every ancestor is named by a prefix of it — so a string path
//! is validated in one pass and never copied, and walking from the root to
//! the node is slicing, not allocating.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;

use crate::Error;

/// The default limit on the number of components of a path.
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// The default separator of a string path.
pub const DEFAULT_SEPARATOR: char = '/';

/// A validated path naming one node of a [`LockTree`](crate::LockTree),
/// as returned by [`Guard::path`](crate::Guard::path).
///
/// `Display` writes the separator before every component ("/db/users";
/// the root is "/"); [`components`](Path::components) gives the parts.
///
/// ```
/// use hierlock::{LockTree, Mode};
///
/// let tree = LockTree::new();
/// let g = tree.lock("db/users/", Mode::S).unwrap();
/// assert_eq!(g.path().to_string(), "/db/users");
/// assert_eq!(g.path().components().collect::<Vec<_>>(), ["db", "users"]);
/// assert_eq!(g.path().depth(), 2);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// Normalized: components joined by `sep`, no separator at the ends.
    /// Inline (no allocation) up to 24 bytes, which most node names are.
    text: CompactString,
    sep: char,
}

impl Path {
    /// The root path of a tree using separator `sep`.
    pub fn root(sep: char) -> Path {
        Path {
            text: CompactString::const_new(""),
            sep,
        }
    }

    /// Parses `path` with separator `sep` and the default depth limit.
    ///
    /// ```
    /// use hierlock::Path;
    /// let p = Path::parse("/a/b", '/').unwrap();
    /// assert_eq!(p.to_string(), "/a/b");
    /// assert!(Path::parse("/a//b", '/').is_err());
    /// ```
    pub fn parse<'a>(path: impl IntoPath<'a>, sep: char) -> Result<Path, Error> {
        let parsed = path.into_parsed(sep, DEFAULT_MAX_DEPTH)?;
        Ok(Path::from_normalized(&parsed.text, sep))
    }

    pub(crate) fn from_normalized(text: &str, sep: char) -> Path {
        Path {
            text: CompactString::new(text),
            sep,
        }
    }

    /// The components, root first. Empty for the root.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + '_ {
        // `split` on "" would yield one empty item; the root has none.
        let text: &str = &self.text;
        text.split(self.sep).filter(move |_| !text.is_empty())
    }

    /// The number of components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.text.is_empty() {
            0
        } else {
            self.text.matches(self.sep).count() + 1
        }
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.text.is_empty()
    }

    /// The separator this path was parsed with.
    pub fn separator(&self) -> char {
        self.sep
    }

    /// The normalized text: components joined by the separator, with no
    /// separator at either end ("db/users"; "" for the root).
    #[inline]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The parent path, or `None` for the root.
    pub fn parent(&self) -> Option<Path> {
        if self.text.is_empty() {
            return None;
        }
        let cut = self.text.rfind(self.sep).unwrap_or(0);
        Some(Path::from_normalized(&self.text[..cut], self.sep))
    }

    /// Whether `self` is `other` or one of its ancestors.
    pub fn is_prefix_of(&self, other: &Path) -> bool {
        self.sep == other.sep
            && (self.text.is_empty()
                || other.text == self.text
                || (other.text.starts_with(&*self.text)
                    && other.text[self.text.len()..].starts_with(self.sep)))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            return write!(f, "{}", self.sep);
        }
        write!(f, "{}{}", self.sep, self.text)
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Path({:?})", self.to_string())
    }
}

/// A validated path in normalized form, borrowed from the caller's string
/// where it can be.
#[derive(Debug, Clone)]
pub struct ParsedPath<'a> {
    pub(crate) text: Cow<'a, str>,
    pub(crate) depth: usize,
    pub(crate) sep: char,
}

impl<'a> ParsedPath<'a> {
    /// A path already in normalized form (`text` valid for `sep`, with
    /// `depth` components).
    pub(crate) fn from_normalized(text: &'a str, depth: usize, sep: char) -> Self {
        ParsedPath {
            text: Cow::Borrowed(text),
            depth,
            sep,
        }
    }

    /// An owned copy, for futures that outlive the caller's string.
    pub(crate) fn into_owned(self) -> ParsedPath<'static> {
        ParsedPath {
            text: Cow::Owned(self.text.into_owned()),
            depth: self.depth,
            sep: self.sep,
        }
    }

    /// The normalized text of the node at `level` (0 = root, `depth` = the
    /// node itself): the first `level` components.
    pub(crate) fn prefix(&self, level: usize) -> &str {
        debug_assert!(level <= self.depth);
        if level == self.depth {
            return &self.text;
        }
        if level == 0 {
            return "";
        }
        // Cheap for the shallow paths locks are taken on; the acquisition
        // walk uses `Prefixes` instead to stay linear.
        let end = self
            .text
            .match_indices(self.sep)
            .nth(level - 1)
            .map(|(i, _)| i)
            .unwrap_or(self.text.len());
        &self.text[..end]
    }

    /// [`prefix`](Self::prefix) of `level`, cheaper for the parent
    /// (`depth - 1`) with an ASCII separator: one backward scan.
    #[inline]
    pub(crate) fn ancestor(&self, level: usize) -> &str {
        if level + 1 == self.depth && self.sep.is_ascii() {
            let sep = self.sep as u8;
            if let Some(end) = self.text.as_bytes().iter().rposition(|&b| b == sep) {
                return &self.text[..end];
            }
        }
        self.prefix(level)
    }

    /// The components, root first.
    pub(crate) fn components(&self) -> impl Iterator<Item = &str> + '_ {
        let text: &str = &self.text;
        text.split(self.sep).filter(move |_| !text.is_empty())
    }

    /// The normalized texts of every proper ancestor except the root,
    /// shallowest first, then the node itself (unless it is the root).
    pub(crate) fn prefixes(&self) -> Prefixes<'_> {
        self.prefixes_after(0)
    }

    /// Like [`prefixes`](Self::prefixes), starting below the ancestor
    /// whose normalized text is the first `len` bytes of this path's (0:
    /// the root).
    pub(crate) fn prefixes_after(&self, len: usize) -> Prefixes<'_> {
        debug_assert!(len == 0 || self.text.len() == len || self.text[len..].starts_with(self.sep));
        Prefixes {
            text: &self.text,
            sep: self.sep,
            pos: len,
        }
    }
}

/// Iterator over the non-root prefixes of a normalized path.
pub(crate) struct Prefixes<'p> {
    text: &'p str,
    sep: char,
    pos: usize,
}

impl<'p> Iterator for Prefixes<'p> {
    type Item = &'p str;

    #[inline]
    fn next(&mut self) -> Option<&'p str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = if self.pos == 0 {
            0
        } else {
            self.pos + self.sep.len_utf8()
        };
        let found = if self.sep.is_ascii() {
            let sep = self.sep as u8;
            self.text.as_bytes()[start..].iter().position(|&b| b == sep)
        } else {
            self.text[start..].find(self.sep)
        };
        let end = found.map_or(self.text.len(), |i| start + i);
        self.pos = end;
        Some(&self.text[..end])
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Anything that names a path: `&str`, `String`, `&String`, `&Path`,
/// `[&str; N]`, `&[&str]`, `Vec<&str>`, `Vec<String>`, `&[String]`.
///
/// A string is split on the tree's separator; at most one separator at each
/// end is ignored, and `""` or the separator alone is the root. A list gives
/// the components themselves (empty: the root). Either way an empty
/// component, a component containing the separator, or more components than
/// the tree's `max_depth` is [`Error::InvalidPath`].
///
/// This trait is sealed: the accepted types are the ones listed.
pub trait IntoPath<'a>: sealed::Sealed {
    /// Validates and normalizes the path for a tree with separator `sep`
    /// and depth limit `max_depth`.
    #[doc(hidden)]
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'a>, Error>;
}

pub(crate) fn too_deep(shown: impl FnOnce() -> String, depth: usize, max_depth: usize) -> Error {
    Error::invalid_path(
        shown(),
        format!("{depth} components, more than the tree's max_depth of {max_depth}"),
    )
}

/// Validates a string path and returns its normalized slice.
#[inline(always)]
pub(crate) fn parse_str(input: &str, sep: char, max_depth: usize) -> Result<ParsedPath<'_>, Error> {
    match ascii_parse(input, sep, max_depth) {
        Some((text, depth)) => Ok(ParsedPath {
            text: Cow::Borrowed(text),
            depth,
            sep,
        }),
        None => parse_str_slow(input, sep, max_depth),
    }
}

/// `parse_str` for a non-ASCII separator, and the error of an invalid path.
#[cold]
#[inline(never)]
fn parse_str_slow(input: &str, sep: char, max_depth: usize) -> Result<ParsedPath<'_>, Error> {
    let mut text = input.strip_prefix(sep).unwrap_or(input);
    if text.is_empty() {
        return Ok(ParsedPath {
            text: Cow::Borrowed(""),
            depth: 0,
            sep,
        });
    }
    text = text.strip_suffix(sep).unwrap_or(text);
    let mut depth = 0usize;
    for (i, component) in text.split(sep).enumerate() {
        if component.is_empty() {
            return Err(Error::invalid_path(
                input,
                format!(
                    "component {} is empty (at most one separator {sep:?} is ignored at each end)",
                    i + 1
                ),
            ));
        }
        depth += 1;
        if depth > max_depth {
            let total = text.split(sep).count();
            return Err(too_deep(|| input.to_owned(), total, max_depth));
        }
    }
    Ok(ParsedPath {
        text: Cow::Borrowed(text),
        depth,
        sep,
    })
}

/// The fast path of `parse_str` for an ASCII separator: one pass over the
/// bytes, returning the normalized slice and the depth. `None` if the path
/// is invalid (or the separator is not ASCII); the slow path then says why.
#[inline(always)]
fn ascii_parse(input: &str, sep: char, max_depth: usize) -> Option<(&str, usize)> {
    if !sep.is_ascii() {
        return None;
    }
    // `strip_prefix`/`strip_suffix` of an ASCII char slice without the
    // char-boundary checks that indexing would do.
    let text = input.strip_prefix(sep).unwrap_or(input);
    if text.is_empty() {
        return Some(("", 0));
    }
    let text = text.strip_suffix(sep).unwrap_or(text);
    let region = text.as_bytes();
    let sep = sep as u8;
    // Empty ("//"), or a separator first or last: an empty component.
    match (region.first(), region.last()) {
        (Some(&first), Some(&last)) if first != sep && last != sep => {}
        _ => return None,
    }
    let (seps, doubled) = if input.len() >= 8 {
        let start = text.as_ptr().addr() - input.as_ptr().addr();
        count_seps_wide(input.as_bytes(), start, start + region.len(), sep)
    } else {
        count_seps_narrow(region, sep)
    };
    let depth = seps + 1;
    if doubled || depth > max_depth {
        return None;
    }
    Some((text, depth))
}

/// `a == b`, without a call to `memcmp` for names of up to 16 bytes (whose
/// first and last eight, or four, bytes cover them; shorter ones byte by
/// byte).
#[inline]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 16 {
        if let Some(eq) = ends_equal::<8>(a, b).or_else(|| ends_equal::<4>(a, b)) {
            return eq;
        }
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    a == b
}

/// Whether the first and last `N` bytes of `a` and `b` agree; `None` if
/// either is shorter than `N`.
#[inline]
fn ends_equal<const N: usize>(a: &[u8], b: &[u8]) -> Option<bool> {
    Some(
        a.first_chunk::<N>()? == b.first_chunk::<N>()?
            && a.last_chunk::<N>()? == b.last_chunk::<N>()?,
    )
}

/// The separators in `region`, and whether two of them are adjacent; one
/// byte at a time (for inputs shorter than a word).
#[inline]
fn count_seps_narrow(region: &[u8], sep: u8) -> (usize, bool) {
    let (mut seps, mut doubled, mut prev) = (0, false, false);
    for &b in region {
        let is = b == sep;
        seps += usize::from(is);
        doubled |= is && prev;
        prev = is;
    }
    (seps, doubled)
}

/// `count_seps_narrow` of `bytes[start..end]` eight bytes at a time
/// (`bytes` is at least eight long): each byte equal to `sep` becomes its
/// word's high bit, exactly (no carries between bytes), so the count is a
/// popcount and adjacent pairs an AND with the mask shifted by a byte.
#[inline(always)]
fn count_seps_wide(bytes: &[u8], start: usize, end: usize, sep: u8) -> (usize, bool) {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let splat = u64::from(sep) * 0x0101_0101_0101_0101;
    #[inline(always)]
    fn sep_bytes(bytes: &[u8], at: usize, splat: u64) -> u64 {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        let x = u64::from_le_bytes(word) ^ splat;
        !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
    }
    let mask = |at: usize| sep_bytes(bytes, at, splat);
    let (mut seps, mut doubled, mut prev) = (0usize, false, false);
    let mut at = start;
    while at + 8 <= end {
        let m = mask(at);
        seps += ones(m);
        doubled |= m & (m >> 8) != 0 || (prev && m & 0x80 != 0);
        prev = m >> 63 != 0;
        at += 8;
    }
    if at < end {
        // The word ending at `end` (or the first word), keeping the bytes
        // of `at..end` only.
        let w = end.max(8) - 8;
        let (lo, hi) = (at - w, end - w);
        let keep = (u64::MAX << (8 * lo)) & (u64::MAX >> (8 * (8 - hi)));
        let m = mask(w) & keep;
        seps += ones(m);
        doubled |= m & (m >> 8) != 0 || (prev && (m >> (8 * lo)) & 0x80 != 0);
    }
    (seps, doubled)
}

/// The number of bytes of `m` that are 0x80 (the others are 0): summed
/// by a multiply, as baseline x86-64 has no `popcnt` instruction.
#[inline]
fn ones(m: u64) -> usize {
    ((m >> 7).wrapping_mul(0x0101_0101_0101_0101) >> 56) as usize
}

/// Validates a list of components and joins them into the normalized form.
fn parse_components<S: AsRef<str>>(
    components: &[S],
    sep: char,
    max_depth: usize,
) -> Result<ParsedPath<'static>, Error> {
    let shown = || {
        format!(
            "{:?}",
            components.iter().map(AsRef::as_ref).collect::<Vec<_>>()
        )
    };
    if components.len() > max_depth {
        return Err(too_deep(shown, components.len(), max_depth));
    }
    let mut text = String::with_capacity(components.iter().map(|c| c.as_ref().len() + 1).sum());
    for (i, c) in components.iter().enumerate() {
        let c = c.as_ref();
        if c.is_empty() {
            return Err(Error::invalid_path(
                shown(),
                format!("component {} is empty", i + 1),
            ));
        }
        if c.contains(sep) {
            return Err(Error::invalid_path(
                shown(),
                format!("component {} ({c:?}) contains the separator {sep:?}", i + 1),
            ));
        }
        if i > 0 {
            text.push(sep);
        }
        text.push_str(c);
    }
    Ok(ParsedPath {
        text: Cow::Owned(text),
        depth: components.len(),
        sep,
    })
}

impl sealed::Sealed for &str {}
impl<'a> IntoPath<'a> for &'a str {
    #[inline(always)]
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'a>, Error> {
        parse_str(self, sep, max_depth)
    }
}

impl sealed::Sealed for &String {}
impl<'a> IntoPath<'a> for &'a String {
    #[inline]
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'a>, Error> {
        parse_str(self, sep, max_depth)
    }
}

impl sealed::Sealed for String {}
impl IntoPath<'static> for String {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_str(&self, sep, max_depth).map(ParsedPath::into_owned)
    }
}

impl sealed::Sealed for &Path {}
impl<'a> IntoPath<'a> for &'a Path {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'a>, Error> {
        if self.sep == sep {
            let depth = self.depth();
            if depth > max_depth {
                return Err(too_deep(|| self.to_string(), depth, max_depth));
            }
            Ok(ParsedPath {
                text: Cow::Borrowed(&self.text),
                depth,
                sep,
            })
        } else {
            let parts: Vec<&str> = self.components().collect();
            parse_components(&parts, sep, max_depth)
        }
    }
}

impl<const N: usize> sealed::Sealed for [&str; N] {}
impl<const N: usize> IntoPath<'static> for [&str; N] {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(&self, sep, max_depth)
    }
}

impl<const N: usize> sealed::Sealed for &[&str; N] {}
impl<const N: usize> IntoPath<'static> for &[&str; N] {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(self, sep, max_depth)
    }
}

impl sealed::Sealed for &[&str] {}
impl IntoPath<'static> for &[&str] {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(self, sep, max_depth)
    }
}

impl sealed::Sealed for &[String] {}
impl IntoPath<'static> for &[String] {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(self, sep, max_depth)
    }
}

impl sealed::Sealed for Vec<&str> {}
impl IntoPath<'static> for Vec<&str> {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(&self, sep, max_depth)
    }
}

impl sealed::Sealed for Vec<String> {}
impl IntoPath<'static> for Vec<String> {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(&self, sep, max_depth)
    }
}

impl sealed::Sealed for &Vec<String> {}
impl IntoPath<'static> for &Vec<String> {
    fn into_parsed(self, sep: char, max_depth: usize) -> Result<ParsedPath<'static>, Error> {
        parse_components(self, sep, max_depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ascii_parse` must return, by splitting.
    fn reference(input: &str, sep: char, max_depth: usize) -> Option<(&str, usize)> {
        let text = input.strip_prefix(sep).unwrap_or(input);
        if text.is_empty() {
            return Some(("", 0));
        }
        let text = text.strip_suffix(sep).unwrap_or(text);
        let depth = text.split(sep).count();
        (!text.split(sep).any(str::is_empty) && depth <= max_depth).then_some((text, depth))
    }

    proptest::proptest! {
        #[test]
        fn ascii_parse_agrees_with_splitting(input in "[ab/:]{0,40}", max_depth in 1usize..12) {
            for sep in ['/', ':'] {
                proptest::prop_assert_eq!(
                    ascii_parse(&input, sep, max_depth),
                    reference(&input, sep, max_depth),
                    "{:?} sep {:?}", input, sep
                );
            }
        }
    }

    fn norm(s: &str) -> Result<(String, usize), Error> {
        parse_str(s, '/', DEFAULT_MAX_DEPTH).map(|p| (p.text.into_owned(), p.depth))
    }

    #[test]
    fn leading_and_trailing_separator_ignored_once() {
        assert_eq!(norm("/a/b").unwrap(), ("a/b".into(), 2));
        assert_eq!(norm("a/b").unwrap(), ("a/b".into(), 2));
        assert_eq!(norm("a/b/").unwrap(), ("a/b".into(), 2));
        assert_eq!(norm("/a/b/").unwrap(), ("a/b".into(), 2));
        assert_eq!(norm("").unwrap(), ("".into(), 0));
        assert_eq!(norm("/").unwrap(), ("".into(), 0));
    }

    #[test]
    fn bad_strings_are_invalid_with_the_input_in_the_message() {
        for bad in ["//a", "/a//", "a//b", "//", "///", "a/b//"] {
            let e = norm(bad).unwrap_err();
            match &e {
                Error::InvalidPath { path, .. } => assert_eq!(path, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn depth_limit() {
        let ok = ["c"; 4].join("/");
        assert_eq!(parse_str(&ok, '/', 4).unwrap().depth, 4);
        let e = parse_str("c/c/c/c/c", '/', 4).unwrap_err();
        assert!(e.to_string().contains("max_depth of 4"), "{e}");
        assert!(e.to_string().contains("5 components"), "{e}");
        assert!(parse_str("", '/', 0).is_ok());
        assert!(parse_str("a", '/', 0).is_err());
        assert!(["a", "b"].into_parsed('/', 1).is_err());
        let deep = vec!["x"; DEFAULT_MAX_DEPTH + 1].join("/");
        assert!(parse_str(&deep, '/', DEFAULT_MAX_DEPTH).is_err());
    }

    #[test]
    fn components_join_with_separator() {
        let p = ["db", "users", "42"].into_parsed('/', 8).unwrap();
        assert_eq!((&*p.text, p.depth), ("db/users/42", 3));
        let p = ["a/b", "c"].into_parsed(':', 8).unwrap();
        assert_eq!(&*p.text, "a/b:c");
        let e = ["a", "b/c"].into_parsed('/', 8).unwrap_err();
        assert!(e.to_string().contains("contains the separator"), "{e}");
        assert!(e.to_string().contains("[\"a\", \"b/c\"]"), "{e}");
        let e = vec!["a", ""].into_parsed('/', 8).unwrap_err();
        assert!(matches!(e, Error::InvalidPath { .. }));
        let empty: [&str; 0] = [];
        assert_eq!(empty.into_parsed('/', 8).unwrap().depth, 0);
        let owned = vec!["x".to_string(), "y".to_string()];
        assert_eq!(&*(&owned).into_parsed('/', 8).unwrap().text, "x/y");
        assert_eq!(&*owned.as_slice().into_parsed('/', 8).unwrap().text, "x/y");
        assert_eq!(&*owned.into_parsed('/', 8).unwrap().text, "x/y");
        let slice: &[&str] = &["p", "q"];
        assert_eq!(&*slice.into_parsed('/', 8).unwrap().text, "p/q");
    }

    #[test]
    fn other_separator() {
        let p = parse_str(":a:b/c:", ':', 8).unwrap();
        assert_eq!((&*p.text, p.depth), ("a:b/c", 2));
        let path = Path::from_normalized(&p.text, ':');
        assert_eq!(path.to_string(), ":a:b/c");
        assert_eq!(path.components().collect::<Vec<_>>(), ["a", "b/c"]);
        assert_eq!(Path::root(':').to_string(), ":");
        // a multi-byte separator
        let p = parse_str("→a→b", '→', 8).unwrap();
        assert_eq!(p.prefixes().collect::<Vec<_>>(), ["a", "a→b"]);
    }

    #[test]
    fn prefixes_walk_root_to_node() {
        let p = parse_str("/db/users/42", '/', 8).unwrap();
        assert_eq!(
            p.prefixes().collect::<Vec<_>>(),
            ["db", "db/users", "db/users/42"]
        );
        assert_eq!(p.prefix(0), "");
        assert_eq!(p.prefix(1), "db");
        assert_eq!(p.prefix(2), "db/users");
        assert_eq!(p.prefix(3), "db/users/42");
        for level in 0..=3 {
            assert_eq!(p.ancestor(level), p.prefix(level));
        }
        let p = parse_str("a:b", ':', 8).unwrap();
        assert_eq!(p.ancestor(1), "a");
        assert_eq!(parse_str("/", '/', 8).unwrap().prefixes().count(), 0);
    }

    #[test]
    fn path_accessors() {
        let p = Path::parse("/a/b/c", '/').unwrap();
        assert_eq!(p.depth(), 3);
        assert_eq!(p.parent().unwrap().to_string(), "/a/b");
        assert_eq!(Path::root('/').parent(), None);
        assert!(Path::root('/').is_root());
        assert_eq!(Path::root('/').components().count(), 0);
        assert!(Path::parse("/a", '/').unwrap().is_prefix_of(&p));
        assert!(!Path::parse("/a/b/cd", '/').unwrap().is_prefix_of(&p));
        assert!(!Path::parse("/a/bc", '/').unwrap().is_prefix_of(&p));
        assert!(Path::root('/').is_prefix_of(&p));
        assert_eq!(format!("{p:?}"), "Path(\"/a/b/c\")");
        // a Path is itself accepted as input, and round-trips
        let again = Path::parse(&p, '/').unwrap();
        assert_eq!(again, p);
        let converted = Path::parse(&p, ':').unwrap();
        assert_eq!(converted.to_string(), ":a:b:c");
    }

    proptest::proptest! {
        #[test]
        fn same_is_equality(a in "[a-c/]{0,20}", b in "[a-c/]{0,20}", at in 0usize..20, c in "[a-d/]") {
            proptest::prop_assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b);
            // One byte changed anywhere (start, middle, end) is seen.
            let mut changed = a.clone().into_bytes();
            if let Some(x) = changed.get_mut(at) {
                *x = c.as_bytes()[0];
            }
            proptest::prop_assert_eq!(same(a.as_bytes(), &changed), a.as_bytes() == changed.as_slice());
        }
    }
}
