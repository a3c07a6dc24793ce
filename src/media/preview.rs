//! URL previews: fetching a page for `/preview_url` without becoming an SSRF proxy, and reading
//! its OpenGraph tags.
//!
//! The guard: every hop (the URL and each redirect, followed here by hand, never by reqwest) is
//! checked before any connection. An IP-literal host must be a public address; a host name is
//! resolved here and *every* address it resolves to must be public (one private address among
//! public ones is refused, since the connection could pick it), and the request is then pinned
//! to exactly those checked addresses (`resolve_to_addrs`), so a second, different DNS answer
//! (rebinding) is never used. Proxies from the environment are disabled: they would connect on
//! our behalf to an unchecked address. Only `http`/`https` on any port are fetched. Operators
//! can allow chosen private ranges (`media.url_preview_ip_allowlist`), e.g. for an intranet.
//! What counts as public is [`crate::ssrf`]'s rule, the same for every outbound connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Redirects followed before giving up.
const MAX_REDIRECTS: usize = 5;
/// Time allowed for one hop (connect, headers and body).
const HOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an HTML page is read: OpenGraph tags live in the head.
pub const MAX_HTML_BYTES: usize = 1024 * 1024;
/// Longest string kept from a tag.
const MAX_VALUE_CHARS: usize = 2000;
/// Most `og:` tags kept from one page.
const MAX_TAGS: usize = 50;

use crate::ssrf::Guard;
use crate::ssrf::IpRange;

/// A fetched response body.
#[derive(Debug)]
pub struct Fetched {
    /// The URL that finally answered (after redirects).
    pub url: url::Url,
    /// Its `Content-Type`, lower-cased, without parameters.
    pub content_type: String,
    /// Its `Content-Disposition`, if any.
    pub content_disposition: Option<String>,
    /// The body, at most the limit passed to [`Fetcher::fetch`] (HTML is cut there).
    pub body: Bytes,
}

/// The SSRF-guarded HTTP fetcher.
#[derive(Debug, Clone)]
pub struct Fetcher {
    guard: Guard,
}

fn refused(msg: impl Into<String>) -> Error {
    Error::forbidden(msg)
}

fn bad_gateway(msg: impl Into<String>) -> Error {
    Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", msg)
}

impl Fetcher {
    /// A fetcher that also allows the given ranges.
    pub fn new(allowlist: Vec<IpRange>) -> Self {
        Self { guard: Guard::new(allowlist) }
    }

    /// The checked addresses for `url`'s host, or why it is refused.
    async fn check_host(&self, url: &url::Url) -> Result<Option<(String, Vec<SocketAddr>)>> {
        let port = url.port_or_known_default().ok_or_else(|| Error::invalid_param("URL has no port"))?;
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map(|_| None),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map(|_| None),
            Some(url::Host::Domain(domain)) => {
                let addrs: Vec<SocketAddr> = tokio::time::timeout(HOP_TIMEOUT, tokio::net::lookup_host((domain, port)))
                    .await
                    .map_err(|_| bad_gateway("DNS lookup timed out"))?
                    .map_err(|_| bad_gateway(format!("Could not resolve {domain}")))?
                    .collect();
                if addrs.is_empty() {
                    return Err(bad_gateway(format!("Could not resolve {domain}")));
                }
                for addr in &addrs {
                    self.check_ip(addr.ip())?;
                }
                Ok(Some((domain.to_owned(), addrs)))
            }
            None => Err(Error::invalid_param("URL has no host")),
        }
    }

    fn check_ip(&self, ip: IpAddr) -> Result<()> {
        if self.guard.allows(ip) { Ok(()) } else { Err(refused("URL resolves to a non-public address")) }
    }

    /// A client for one request to `url`, whose host is checked and pinned to the checked
    /// addresses (so that a second DNS answer cannot lead elsewhere); it follows no redirects.
    async fn client_for(&self, url: &url::Url, user_agent: &'static str) -> Result<reqwest::Client> {
        let pinned = self.check_host(url).await?;
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HOP_TIMEOUT)
            .user_agent(user_agent);
        if let Some((domain, addrs)) = &pinned {
            builder = builder.resolve_to_addrs(domain, addrs);
        }
        builder.build().map_err(Error::internal)
    }

    /// GETs `url`, following up to five redirects, each checked like the first hop. Bodies larger
    /// than `limit` are refused (413) unless `truncate` is set, which cuts them there instead.
    pub async fn fetch(&self, url: &str, limit: usize, truncate: bool) -> Result<Fetched> {
        let mut url = url::Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
        for _ in 0..=MAX_REDIRECTS {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::invalid_param("Only http and https URLs can be previewed"));
            }
            let client = self.client_for(&url, concat!("Myelin/", env!("CARGO_PKG_VERSION"), " (URL preview)")).await?;
            let res = client
                .get(url.clone())
                .header(http::header::ACCEPT, "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5")
                .send()
                .await
                .map_err(|e| bad_gateway(format!("Fetching the URL failed: {}", e.without_url())))?;
            if res.status().is_redirection() {
                let location = res
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| bad_gateway("Redirect without a Location"))?;
                url = url.join(location).map_err(|_| bad_gateway("Redirect to an invalid URL"))?;
                continue;
            }
            if !res.status().is_success() {
                return Err(bad_gateway(format!("The URL answered {}", res.status().as_u16())));
            }
            let content_type = res
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
                .unwrap_or_default();
            let content_disposition =
                res.headers().get(http::header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let body = read_limited(res, limit, truncate).await?;
            return Ok(Fetched { url, content_type, content_disposition, body });
        }
        Err(bad_gateway("Too many redirects"))
    }
}

impl Fetcher {
    /// POSTs `body` as JSON to `url` (a push gateway), checked like a fetch and without
    /// following redirects; returns the status and the JSON answer (`Null` if it is not JSON),
    /// read up to `limit` bytes.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        limit: usize,
    ) -> Result<(u16, serde_json::Value)> {
        self.request_json(http::Method::POST, url, None, Some(body), limit).await
    }

    /// Sends a JSON request (a push gateway, an identity server), checked like a fetch and
    /// without following redirects, with `bearer` as its `Authorization`; returns the status
    /// and the JSON answer (`Null` if it is not JSON), read up to `limit` bytes.
    pub async fn request_json(
        &self,
        method: http::Method,
        url: &str,
        bearer: Option<&str>,
        body: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<(u16, serde_json::Value)> {
        let url = url::Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid_param("Only http and https URLs can be reached"));
        }
        let client = self.client_for(&url, concat!("Myelin/", env!("CARGO_PKG_VERSION"))).await?;
        let mut req = client.request(method, url);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.map_err(|e| bad_gateway(format!("Reaching the URL failed: {}", e.without_url())))?;
        let status = res.status().as_u16();
        let bytes = read_limited(res, limit, true).await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    }
}

async fn read_limited(mut res: reqwest::Response, limit: usize, truncate: bool) -> Result<Bytes> {
    if !truncate && res.content_length().is_some_and(|l| l > limit as u64) {
        return Err(Error::too_large("The linked content is too large"));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| bad_gateway(format!("Reading the URL failed: {e}")))? {
        let room = limit - buf.len();
        if chunk.len() > room {
            if truncate {
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(Error::too_large("The linked content is too large"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The OpenGraph tags of an HTML page: every `<meta property|name="og:…" content="…">`, with
/// `og:title` falling back to `<title>` and `og:description` to `<meta name="description">`.
/// Deliberately small: a tag scanner, not an HTML parser; it skips comments, scripts and styles.
pub fn parse_opengraph(html: &str) -> Map<String, Value> {
    let mut og = Map::new();
    let mut title = None;
    let mut description = None;
    let lower = html.to_ascii_lowercase();
    let mut pos = 0;
    while let Some(off) = lower[pos..].find('<') {
        let start = pos + off;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            pos = rest.find("-->").map_or(lower.len(), |e| start + e + 3);
            continue;
        }
        let name_end = rest[1..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(rest.len(), |e| e + 1);
        let name = &rest[1..name_end];
        let Some(tag_end) = tag_end(html, start + name_end) else { break };
        match name {
            "script" | "style" => {
                let close = format!("</{name}");
                pos = lower[tag_end..].find(&close).map_or(lower.len(), |e| tag_end + e);
                continue;
            }
            "title" if title.is_none() => {
                let end = lower[tag_end..].find("</title").map_or(lower.len(), |e| tag_end + e);
                title = Some(decode_entities(html[tag_end..end].trim()));
            }
            "meta" => {
                let attrs = attributes(&html[start + name_end..tag_end.saturating_sub(1)]);
                let key = attrs.iter().find(|(k, _)| k == "property" || k == "name").map(|(_, v)| v.as_str());
                let content = attrs.iter().find(|(k, _)| k == "content").map(|(_, v)| v.clone());
                if let (Some(key), Some(content)) = (key, content) {
                    let key = key.to_ascii_lowercase();
                    if key.starts_with("og:") && !og.contains_key(&key) && og.len() < MAX_TAGS {
                        og.insert(key, Value::String(truncate_chars(content)));
                    } else if key == "description" && description.is_none() {
                        description = Some(content);
                    }
                }
            }
            _ => {}
        }
        pos = tag_end;
    }
    if !og.contains_key("og:title")
        && let Some(t) = title.filter(|t| !t.is_empty())
    {
        og.insert("og:title".into(), Value::String(truncate_chars(t)));
    }
    if !og.contains_key("og:description")
        && let Some(d) = description.filter(|d| !d.is_empty())
    {
        og.insert("og:description".into(), Value::String(truncate_chars(d)));
    }
    og
}

fn truncate_chars(s: String) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS { s } else { s.chars().take(MAX_VALUE_CHARS).collect() }
}

/// The index just after the `>` closing the tag whose attributes start at `from`, skipping
/// quoted attribute values (which may contain `>`).
fn tag_end(html: &str, from: usize) -> Option<usize> {
    let bytes = html.as_bytes();
    let mut quote = None;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b),
            (None, b'>') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `key="value"` pairs of a tag (keys lower-cased, values entity-decoded). Indices only ever
/// stop at ASCII bytes, so every slice is on a character boundary.
fn attributes(s: &str) -> Vec<(String, String)> {
    let b = s.as_bytes();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let key_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let key = s[key_start..i].to_ascii_lowercase();
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            out.push((key, String::new()));
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let value = if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
            let quote = b[i];
            let start = i + 1;
            let end = b[start..].iter().position(|&c| c == quote).map_or(b.len(), |p| start + p);
            i = (end + 1).min(b.len());
            &s[start..end]
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            &s[start..i]
        };
        out.push((key, decode_entities(value)));
    }
    out
}

/// Decodes the character references that appear in attribute values and titles.
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.bytes().take(12).position(|b| b == b';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph() {
        let html = r#"<html><head><title>Fallback &amp; title</title>
            <!-- <meta property="og:title" content="commented out"> -->
            <script>var x = '<meta property="og:title" content="in a script">';</script>
            <meta property="og:title" content="The &quot;real&quot; title" />
            <meta content='A page > about things' property=og:description>
            <meta name="description" content="plain description">
            <META PROPERTY="og:image" CONTENT="/img.png">
            </head><body>x</body></html>"#;
        let og = parse_opengraph(html);
        assert_eq!(og["og:title"], "The \"real\" title");
        assert_eq!(og["og:description"], "A page > about things");
        assert_eq!(og["og:image"], "/img.png");

        let og = parse_opengraph("<title>Only &#x41;&#66; title</title><meta name=description content=desc>");
        assert_eq!(og["og:title"], "Only AB title");
        assert_eq!(og["og:description"], "desc");
    }
}
