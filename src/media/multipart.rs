//! The `multipart/mixed` bodies of the federation media endpoints (spec v1.11): exactly two
//! parts, JSON metadata (`{}` for now) then the media, either as bytes with `Content-Type` and
//! `Content-Disposition` or as a `Location` to fetch it from.

use bytes::Bytes;

/// A fresh boundary: random, so it cannot occur in the content by accident or design.
pub fn new_boundary() -> String {
    format!("myelin{:032x}", rand::random::<u128>())
}

/// The `Content-Type` header of a response using `boundary`.
pub fn content_type(boundary: &str) -> String {
    format!("multipart/mixed; boundary={boundary}")
}

/// Everything before the media bytes: the metadata part and the media part's headers.
pub fn head(boundary: &str, content_type: &str, disposition: &str) -> Bytes {
    Bytes::from(format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    ))
}

/// Everything after the media bytes.
pub fn tail(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// The media part of a response.
#[derive(Debug, Default)]
pub struct MediaPart {
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// A URL to fetch the media from instead of inline bytes.
    pub location: Option<String>,
    /// The bytes (empty with `location`).
    pub body: Bytes,
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_owned())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

/// Parses a two-part federation media body; returns the second part.
pub fn parse(content_type: &str, body: &Bytes) -> Option<MediaPart> {
    let boundary = boundary_of(content_type)?;
    if boundary.is_empty() || boundary.len() > 200 {
        return None;
    }
    let delimiter = format!("--{boundary}");
    let first = find(body, delimiter.as_bytes(), 0)?;
    // Each delimiter after the first is preceded by CRLF, which belongs to it (RFC 2046).
    let next_delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let mut pos = first + delimiter.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            break; // the close delimiter
        }
        // Skip to the end of the delimiter line.
        let line_end = find(body, b"\r\n", pos)? + 2;
        let end = find(body, next_delimiter.as_bytes(), line_end)?;
        parts.push(body.slice(line_end..end));
        pos = end + next_delimiter.len();
        if parts.len() > 2 {
            return None;
        }
    }
    let part = parts.get(1)?;
    let (headers, content) = match find(part, b"\r\n\r\n", 0) {
        Some(i) => (&part[..i], part.slice(i + 4..)),
        // A part that starts with a blank line has no headers.
        None if part.starts_with(b"\r\n") => (&part[..0], part.slice(2..)),
        None => return None,
    };
    let mut media = MediaPart { body: content, ..MediaPart::default() };
    for line in std::str::from_utf8(headers).ok()?.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = Some(value.trim().to_owned());
        match name.trim().to_ascii_lowercase().as_str() {
            "content-type" => media.content_type = value,
            "content-disposition" => media.content_disposition = value,
            "location" => media.location = value,
            _ => {}
        }
    }
    Some(media)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let boundary = new_boundary();
        let data = b"\r\n--not-the-boundary\r\n\x00\xff binary".to_vec();
        let mut body = head(&boundary, "image/png", "inline; filename=\"a.png\"").to_vec();
        body.extend_from_slice(&data);
        body.extend_from_slice(&tail(&boundary));
        let part = parse(&content_type(&boundary), &Bytes::from(body)).unwrap();
        assert_eq!(part.content_type.as_deref(), Some("image/png"));
        assert_eq!(part.content_disposition.as_deref(), Some("inline; filename=\"a.png\""));
        assert_eq!(&part.body[..], &data[..]);
    }

    #[test]
    fn other_servers_shapes() {
        // Synapse style: quoted boundary, a Location part, no trailing CRLF.
        let body = Bytes::from_static(
            b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--abc--",
        );
        let part = parse("multipart/mixed; boundary=\"abc\"", &body).unwrap();
        assert_eq!(part.location.as_deref(), Some("https://cdn.example/x"));
        assert!(part.body.is_empty());
        assert!(parse("application/json", &body).is_none());
        assert!(parse("multipart/mixed; boundary=abc", &Bytes::from_static(b"--abc\r\n\r\n{}\r\n--abc--")).is_none());
    }
}
