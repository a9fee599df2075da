//! Ids put into URL paths: one encoder for every platform crate.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{Error, Result};

/// Every byte except RFC 3986's unreserved characters (`ALPHA / DIGIT / "-" / "." / "_" /
/// "~"`) is percent-encoded. That covers the delimiters that would change the URL's shape
/// (`/ ? # %`), `+` (which some servers read as a space), spaces (`%20`, never `+`), other
/// ASCII punctuation, controls, and every byte of non-ASCII characters (UTF-8).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Encodes `id` as exactly one URL path segment: `format!("/contacts/{}", path_segment(id)?)`.
///
/// # Behavior
/// - Unreserved characters (`A-Z a-z 0-9 - . _ ~`) stay as they are; the result borrows `id`
///   when nothing needs encoding.
/// - Everything else is percent-encoded byte by byte (UTF-8): `ad eu` becomes `ad%20eu`
///   (never `ad+eu`), `a/b` becomes `a%2Fb`, `?`, `#`, `%`, `+` and non-ASCII are encoded.
///
/// # Errors
/// `InvalidInput` (permanent) for an empty id, `.` or `..`: URL parsers treat these (even
/// percent-encoded as `%2E`) as "this directory" and "parent directory", so no encoding
/// can make them one segment of their own.
pub fn path_segment(id: &str) -> Result<Cow<'_, str>> {
    if id.is_empty() {
        return Err(Error::invalid_input("an id used in a URL path must not be empty").permanent());
    }
    if id == "." || id == ".." {
        return Err(Error::invalid_input(format!(
            "the id {id:?} cannot be used as a URL path segment"
        ))
        .permanent());
    }
    Ok(utf8_percent_encode(id, SEGMENT).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;
    use url::Url;

    #[test]
    fn encodes_delimiters_spaces_and_non_ascii() {
        let cases = [
            ("cnv_123", "cnv_123"),
            ("ad eu", "ad%20eu"),
            ("a/b", "a%2Fb"),
            ("a?b#c", "a%3Fb%23c"),
            ("100%", "100%25"),
            ("a+b", "a%2Bb"),
            ("é", "%C3%A9"),
            ("日本", "%E6%97%A5%E6%9C%AC"),
            ("a.b-c_d~e", "a.b-c_d~e"),
            ("...", "..."),
            ("a\nb", "a%0Ab"),
            ("a;b=c&d", "a%3Bb%3Dc%26d"),
        ];
        for (id, want) in cases {
            assert_eq!(path_segment(id).unwrap(), want, "{id:?}");
        }
        assert!(matches!(path_segment("plain").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_empty_ids_are_refused() {
        for id in ["", ".", ".."] {
            let e = path_segment(id).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{id:?}");
            assert!(!e.is_temporary());
        }
    }

    proptest! {
        /// Whatever the id, the URL gets exactly one more segment, and that segment decodes
        /// back to the id.
        #[test]
        fn any_id_is_exactly_one_segment(id in "\\PC{1,40}|[ ./?#%+]{1,6}") {
            prop_assume!(id != "." && id != "..");
            let seg = path_segment(&id).unwrap();
            let url = Url::parse(&format!("https://api.example.com/v1/things/{seg}")).unwrap();
            let segs: Vec<&str> = url.path_segments().unwrap().collect();
            prop_assert_eq!(segs.len(), 3);
            prop_assert!(url.query().is_none() && url.fragment().is_none());
            let decoded = percent_encoding::percent_decode_str(segs[2]).decode_utf8().unwrap();
            prop_assert_eq!(decoded.as_ref(), id.as_str());
        }
    }
}
