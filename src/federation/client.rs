//! The outbound federation HTTP client: server discovery, the SSRF guard, TLS trust and
//! `X-Matrix` request signing.
//!
//! Discovery follows the spec ("Resolving server names"): an IP literal or an explicit port is
//! used directly; otherwise `/.well-known/matrix/server`, then SRV `_matrix-fed._tcp` and
//! `_matrix._tcp`, then port 8448. TLS always: the system roots plus `federation.trusted_ca`.
//! Every address we connect to passes [`crate::ssrf`]'s guard: loopback, private, link-local and
//! other non-public addresses (also embedded in NAT64, 6to4, IPv4-mapped or -compatible IPv6)
//! are refused unless `federation.allow_private_addresses` is set.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use ruma::ServerName;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::signatures::Ed25519KeyPair;
use serde_json::Value;

use crate::config::FederationConfig;
use crate::error::{Error, Result};
use crate::ssrf::Guard;

/// Largest federation response body we read (send_join of a big room is the largest).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// How long a discovery result is reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// Most server names whose discovery result is remembered: every `X-Matrix` origin is
/// discovered (to fetch its keys), so without a bound made-up origins grow the cache for ever.
const DISCOVERY_CACHE_MAX: u64 = 10_000;

fn bounded_cache<V: Clone + Send + Sync + 'static>() -> moka::sync::Cache<String, V> {
    moka::sync::Cache::builder().max_capacity(DISCOVERY_CACHE_MAX).time_to_live(DISCOVERY_TTL).build()
}

/// Resolves host names for reqwest through hickory, applying SRV targets chosen by discovery
/// and the SSRF guard.
struct GuardedResolver {
    dns: Option<TokioResolver>,
    guard: Guard,
    /// Host name in the URL -> host name to look up (the SRV target).
    targets: moka::sync::Cache<String, String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let target = self.targets.get(&host).unwrap_or(host);
        let dns = self.dns.clone();
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match &dns {
                Some(dns) => dns.lookup_ip(target.as_str()).await?.iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((target.as_str(), 0)).await?.collect(),
            };
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| guard.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{target}: no permitted address (private addresses are refused)").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Where to reach a server: the URL base and the `Host` header to send.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `https://host:port`.
    pub base: String,
    /// The URL's host and the SRV target it is reached at, when SRV chose one.
    srv: Option<(String, String)>,
}

/// The outbound client.
pub struct FedClient {
    http: reqwest::Client,
    dns: Option<TokioResolver>,
    guard: Guard,
    targets: moka::sync::Cache<String, String>,
    /// Discovery results by server name, bounded and expiring after [`DISCOVERY_TTL`].
    cache: moka::sync::Cache<String, Resolved>,
}

fn bad_gateway(msg: impl Into<String>) -> Error {
    Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", msg)
}

fn host_port(authority: &str) -> (String, Option<u16>) {
    // IPv6 literals are bracketed: `[::1]:8448`.
    if let Some(rest) = authority.strip_prefix('[')
        && let Some((ip, after)) = rest.split_once(']')
    {
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (ip.to_owned(), port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => (h.to_owned(), p.parse().ok()),
        _ => (authority.to_owned(), None),
    }
}

fn url_host(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

impl FedClient {
    /// Builds the client from the `[federation]` configuration.
    pub fn new(config: &FederationConfig) -> anyhow::Result<Self> {
        let dns = match TokioResolver::builder_tokio() {
            Ok(b) => b.build().ok(),
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration; falling back to getaddrinfo without SRV");
                None
            }
        };
        let targets = bounded_cache();
        let guard = if config.allow_private_addresses { Guard::allow_all() } else { Guard::default() };
        let resolver = GuardedResolver { dns: dns.clone(), guard: guard.clone(), targets: targets.clone() };
        let mut builder = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver))
            .connect_timeout(Duration::from_secs(10))
            // Under the 30 s in which a Myelin peer's federation listener closes a connection
            // waiting for its next request head, so that a request is never sent on a
            // connection the peer is closing at that moment.
            .pool_idle_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("myelin/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.trusted_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("reading federation.trusted_ca {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("federation.trusted_ca {}: {e}", ca.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build()?;
        Ok(Self { http, dns, guard, targets, cache: bounded_cache() })
    }

    /// Finds where `server` is reached (cached).
    pub async fn resolve(&self, server: &str) -> Result<Resolved> {
        let resolved = match self.cache.get(server) {
            Some(r) => r,
            None => {
                let resolved = self.discover(server).await?;
                self.cache.insert(server.to_owned(), resolved.clone());
                resolved
            }
        };
        // The SRV target lives in a cache of its own (the resolver sees only the URL's host),
        // which may have dropped it while this result lives on.
        if let Some((host, target)) = &resolved.srv
            && self.targets.get(host).as_ref() != Some(target)
        {
            self.targets.insert(host.clone(), target.clone());
        }
        Ok(resolved)
    }

    fn direct(&self, host: &str, port: u16) -> Result<Resolved> {
        if let Ok(ip) = host.parse::<IpAddr>()
            && !self.guard.allows(ip)
        {
            return Err(bad_gateway(format!("{host}: private addresses are refused")));
        }
        Ok(Resolved { base: format!("https://{}:{port}", url_host(host)), srv: None })
    }

    async fn srv(&self, host: &str) -> Option<(String, u16)> {
        let dns = self.dns.as_ref()?;
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Ok(lookup) = dns.srv_lookup(format!("{service}.{host}.")).await {
                let mut records: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv.clone()),
                        _ => None,
                    })
                    .collect();
                records.sort_by_key(|s| (s.priority, std::cmp::Reverse(s.weight)));
                if let Some(s) = records.first() {
                    return Some((s.target.to_utf8().trim_end_matches('.').to_owned(), s.port));
                }
            }
        }
        None
    }

    /// A host name without an explicit port: SRV, else port 8448.
    async fn via_srv(&self, host: &str) -> Result<Resolved> {
        if let Some((target, port)) = self.srv(host).await {
            // Connect to the SRV target but keep `host` in the URL, so TLS and Host use it.
            self.targets.insert(host.to_owned(), target.clone());
            return Ok(Resolved { base: format!("https://{host}:{port}"), srv: Some((host.to_owned(), target)) });
        }
        self.direct(host, 8448)
    }

    async fn discover(&self, server: &str) -> Result<Resolved> {
        let (host, port) = host_port(server);
        if host.parse::<IpAddr>().is_ok() {
            return self.direct(&host, port.unwrap_or(8448));
        }
        if let Some(port) = port {
            return self.direct(&host, port);
        }
        if let Some(delegated) = self.well_known(&host).await {
            let (dhost, dport) = host_port(&delegated);
            if dhost.parse::<IpAddr>().is_ok() {
                return self.direct(&dhost, dport.unwrap_or(8448));
            }
            if let Some(p) = dport {
                return self.direct(&dhost, p);
            }
            return self.via_srv(&dhost).await;
        }
        self.via_srv(&host).await
    }

    async fn well_known(&self, host: &str) -> Option<String> {
        let res = self
            .http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !res.status().is_success() {
            return None;
        }
        let bytes = res.bytes().await.ok()?;
        if bytes.len() > 64 * 1024 {
            return None;
        }
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["m.server"].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
    }

    /// Sends a request signed with `X-Matrix` and returns the status and JSON body.
    pub async fn request(
        &self,
        origin: &ServerName,
        key: &Ed25519KeyPair,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<(http::StatusCode, Value)> {
        let resolved = self.resolve(destination.as_str()).await?;
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let signing = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(bytes.as_slice())
            .map_err(Error::internal)?;
        let xmatrix = XMatrix::sign_http_request(
            &signing,
            XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key),
        )
        .map_err(Error::internal)?;
        let auth = http::HeaderValue::from(&xmatrix);
        let mut req = self.http.request(method, format!("{}{}", resolved.base, path_and_query));
        req = req.header(http::header::AUTHORIZATION, auth);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        let res = req.send().await.map_err(|e| bad_gateway(format!("{destination}: {e}")))?;
        let status = res.status();
        let bytes = read_limited(res).await.map_err(|e| bad_gateway(format!("{destination}: {e}")))?;
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Ok((status, value))
    }

    /// Sends a signed GET and returns the status, headers and raw body of the answer,
    /// for endpoints that do not answer JSON (media). Bodies over `limit` bytes are an error.
    pub async fn get_raw(
        &self,
        origin: &ServerName,
        key: &Ed25519KeyPair,
        destination: &ServerName,
        path_and_query: &str,
        limit: usize,
    ) -> Result<(http::StatusCode, http::HeaderMap, bytes::Bytes)> {
        let resolved = self.resolve(destination.as_str()).await?;
        let signing = http::Request::builder()
            .method(http::Method::GET)
            .uri(path_and_query)
            .body(&[][..])
            .map_err(Error::internal)?;
        let xmatrix = XMatrix::sign_http_request(
            &signing,
            XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key),
        )
        .map_err(Error::internal)?;
        let res = self
            .http
            .get(format!("{}{}", resolved.base, path_and_query))
            .header(http::header::AUTHORIZATION, http::HeaderValue::from(&xmatrix))
            .send()
            .await
            .map_err(|e| bad_gateway(format!("{destination}: {e}")))?;
        let status = res.status();
        let headers = res.headers().clone();
        if res.content_length().is_some_and(|l| l > limit as u64) {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_TOO_LARGE",
                format!("{destination}: answer too large"),
            ));
        }
        let mut res = res;
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| bad_gateway(format!("{destination}: {e}")))? {
            if out.len() + chunk.len() > limit {
                return Err(Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    "M_TOO_LARGE",
                    format!("{destination}: answer too large"),
                ));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, headers, out.freeze()))
    }

    /// Unsigned GET (key server).
    pub async fn get_unsigned(&self, destination: &str, path: &str) -> Result<(http::StatusCode, Value)> {
        let resolved = self.resolve(destination).await?;
        let res = self
            .http
            .get(format!("{}{}", resolved.base, path))
            .send()
            .await
            .map_err(|e| bad_gateway(format!("{destination}: {e}")))?;
        let status = res.status();
        let bytes = read_limited(res).await.map_err(|e| bad_gateway(format!("{destination}: {e}")))?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }
}

async fn read_limited(mut res: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each made-up `X-Matrix` origin is discovered once; 100k of them leave the discovery
    /// cache at its bound.
    #[tokio::test]
    async fn discovery_cache_stays_bounded() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = FedClient::new(&crate::config::FederationConfig::default()).unwrap();
        for i in 0..100_000u32 {
            // Public IP literals with a port resolve without any network traffic.
            let server = format!("8.{}.{}.{}:8448", i >> 16, (i >> 8) & 0xff, i & 0xff);
            client.resolve(&server).await.unwrap();
        }
        client.cache.run_pending_tasks();
        let n = client.cache.entry_count();
        assert!(n <= DISCOVERY_CACHE_MAX, "{n} entries");
        // A private literal is refused and not remembered.
        assert!(client.resolve("127.0.0.1:8448").await.is_err());
        assert!(client.resolve("[64:ff9b::7f00:1]:8448").await.is_err());
    }
}
