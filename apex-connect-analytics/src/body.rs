//! Reading a response body into memory with a cap (for answers the platforms send as one JSON
//! document; exports are streamed instead).

use apex_connect_core::http::DEFAULT_MAX_BODY_BYTES;
use apex_connect_core::{Error, ErrorKind, Result};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

/// Reads `resp`'s body, at most [`DEFAULT_MAX_BODY_BYTES`].
///
/// # Errors
/// `InvalidResponse`: permanent for a body over the cap, temporary for one cut short.
pub(crate) async fn read_body(resp: reqwest::Response) -> Result<Bytes> {
    const MAX: usize = DEFAULT_MAX_BODY_BYTES;
    let too_big = || {
        Error::new(
            ErrorKind::InvalidResponse,
            "response body exceeds the limit",
        )
        .permanent()
    };
    if resp.content_length().is_some_and(|n| n > MAX as u64) {
        return Err(too_big());
    }
    // A body that says its length is read into one buffer of that size (no doubling growth,
    // which could hold twice a page's bytes and copy them on the way).
    let hint = resp
        .content_length()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(MAX);
    let mut out = BytesMut::with_capacity(hint);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::new(ErrorKind::InvalidResponse, "response body ended early")
                .temporary()
                .set_source(e.without_url())
        })?;
        if out.len().saturating_add(chunk.len()) > MAX {
            return Err(too_big());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
