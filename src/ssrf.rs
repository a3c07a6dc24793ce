//! The one SSRF guard of every outbound connection: which addresses the server may connect to
//! on behalf of someone else (federation, URL previews, push gateways, identity servers;
//! appservices later), and the operator's allow-lists of ranges that are not public but wanted
//! (an intranet, a test network).
//!
//! An address is public when it is global unicast by IANA's special-purpose registries (IPv4
//! and IPv6). IPv6 forms that reach an embedded IPv4 address (IPv4-mapped `::ffff:0:0/96`,
//! IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that IPv4
//! address: a NAT64 gateway would connect to `64:ff9b::7f00:1` as `127.0.0.1`.
//!
//! Hand-written: `std`'s `is_global` is unstable, and the crates that have one (`ipnet`,
//! `iprange`) parse ranges but do not classify addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address range given as `address` or `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a single address.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.trim().parse::<IpAddr>().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is inside the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - self.prefix) };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - self.prefix) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What may be connected to: public addresses, plus the operator's allowed ranges.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowlist: Vec<IpRange>,
}

impl Guard {
    /// A guard that also allows `allowlist`.
    pub fn new(allowlist: Vec<IpRange>) -> Self {
        Self { allowlist }
    }

    /// A guard that allows every address (`federation.allow_private_addresses`).
    pub fn allow_all() -> Self {
        Self::new(["0.0.0.0/0", "::/0"].iter().filter_map(|r| IpRange::parse(r)).collect())
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allowlist.iter().any(|r| r.contains(ip))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so that v4 rules apply to it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address (see the module doc).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IANA IPv4 Special-Purpose Address Registry, the blocks not globally reachable, plus
/// multicast, and the deprecated 6to4 relay anycast block.
fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                        // 0.0.0.0/8 "this network"
        || a == 10                                  // 10.0.0.0/8 private
        || (a == 100 && (64..128).contains(&b))     // 100.64.0.0/10 shared (CGNAT)
        || a == 127                                 // 127.0.0.0/8 loopback
        || (a == 169 && b == 254)                   // 169.254.0.0/16 link-local
        || (a == 172 && (16..32).contains(&b))      // 172.16.0.0/12 private
        || (a == 192 && b == 0 && c == 0)           // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)           // 192.0.2.0/24 TEST-NET-1
        || (a == 192 && b == 88 && c == 99)         // 192.88.99.0/24 6to4 relay anycast (deprecated)
        || (a == 192 && b == 168)                   // 192.168.0.0/16 private
        || (a == 198 && (b == 18 || b == 19))       // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100)        // 198.51.100.0/24 TEST-NET-2
        || (a == 203 && b == 0 && c == 113)         // 203.0.113.0/24 TEST-NET-3
        || a >= 224) // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 broadcast
}

/// IANA IPv6 Special-Purpose Address Registry: only global unicast (`2000::/3`) outside the
/// blocks not globally reachable; embedded IPv4 forms are judged by their IPv4 address.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let v4_at = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_unspecified() || ip.is_loopback() {
        return false;
    }
    // ::/96 IPv4-compatible (deprecated) and 64:ff9b::/96 NAT64 reach the low 32 bits.
    if seg[..6] == [0; 6] || (seg[..2] == [0x64, 0xff9b] && seg[2..6] == [0; 4]) {
        return is_public_v4(v4_at(seg[6], seg[7]));
    }
    // 2002::/16 6to4 reaches the 32 bits after the prefix.
    if seg[0] == 0x2002 {
        return is_public_v4(v4_at(seg[1], seg[2]));
    }
    // Outside 2000::/3 nothing is global unicast: ::/8 reserved, 64:ff9b:1::/48 local-use NAT64,
    // 100::/64 discard-only, 100:0:0:1::/64 dummy prefix, 5f00::/16 SRv6 SIDs, fc00::/7 unique
    // local, fe80::/10 link-local, fec0::/10 site-local, ff00::/8 multicast.
    if seg[0] & 0xe000 != 0x2000 {
        return false;
    }
    if seg[0] == 0x2001 && seg[1] < 0x200 {
        // 2001::/23 IETF protocol assignments (Teredo 2001::/32, benchmarking 2001:2::/48,
        // ORCHID 2001:10::/28, ...) except the blocks the registry marks globally reachable.
        return matches!(u128::from(ip), 0x2001_0001_0000_0000_0000_0000_0000_0001..=0x2001_0001_0000_0000_0000_0000_0000_0003) // PCP, TURN, DNS-SD SRP anycast
            || seg[1] == 0x3 // 2001:3::/32 AMT
            || (seg[1] == 0x4 && seg[2] == 0x112) // 2001:4:112::/48 AS112-v6
            || (0x20..0x40).contains(&seg[1]); // 2001:20::/28 ORCHIDv2, 2001:30::/28 drone remote ID
    }
    !((seg[0] == 0x2001 && seg[1] == 0x0db8)       // 2001:db8::/32 documentation
        || (seg[0] == 0x3fff && seg[1] < 0x1000)) // 3fff::/20 documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block of IANA's IPv4 and IPv6 special-purpose registries (first and last address
    /// where the block is larger than one), with the verdict: `false` is refused.
    const TABLE: &[(&str, bool)] = &[
        // IPv4
        ("0.0.0.0", false),
        ("0.255.255.255", false),
        ("10.0.0.0", false),
        ("10.255.255.255", false),
        ("100.64.0.0", false),
        ("100.127.255.255", false),
        ("100.63.255.255", true),
        ("100.128.0.0", true),
        ("127.0.0.1", false),
        ("127.255.255.254", false),
        ("169.254.0.0", false),
        ("169.254.169.254", false),
        ("172.16.0.0", false),
        ("172.31.255.255", false),
        ("172.15.255.255", true),
        ("172.32.0.0", true),
        ("192.0.0.0", false),
        ("192.0.0.8", false),
        ("192.0.0.170", false),
        ("192.0.0.255", false),
        ("192.0.2.1", false),
        ("192.31.196.1", true), // AS112-v4, globally reachable
        ("192.52.193.1", true), // AMT, globally reachable
        ("192.88.99.1", false),
        ("192.168.0.0", false),
        ("192.168.255.255", false),
        ("192.175.48.1", true), // AS112 direct delegation, globally reachable
        ("198.18.0.0", false),
        ("198.19.255.255", false),
        ("198.51.100.1", false),
        ("203.0.113.1", false),
        ("224.0.0.1", false),
        ("239.255.255.255", false),
        ("240.0.0.1", false),
        ("255.255.255.255", false),
        ("8.8.8.8", true),
        ("1.1.1.1", true),
        // IPv6
        ("::", false),
        ("::1", false),
        ("::ffff:127.0.0.1", false),
        ("::ffff:10.0.0.1", false),
        ("::ffff:169.254.169.254", false),
        ("::ffff:8.8.8.8", true),
        ("::127.0.0.1", false), // IPv4-compatible
        ("::10.0.0.1", false),
        ("::8.8.8.8", true),
        ("64:ff9b::7f00:1", false), // NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", false),
        ("64:ff9b::808:808", true),
        ("64:ff9b:1::1", false), // local-use NAT64
        ("100::1", false),       // discard-only
        ("100:0:0:1::1", false), // dummy prefix
        ("2001::1", false),      // Teredo
        ("2001:0:4136:e378::1", false),
        ("2001:1::1", true), // PCP anycast
        ("2001:1::2", true), // TURN anycast
        ("2001:1::4", false),
        ("2001:2::1", false), // benchmarking
        ("2001:3::1", true),  // AMT
        ("2001:4:112::1", true),
        ("2001:4:113::1", false),
        ("2001:10::1", false), // ORCHID (deprecated)
        ("2001:20::1", true),  // ORCHIDv2
        ("2001:30::1", true),  // drone remote ID
        ("2001:1ff:ffff::1", false),
        ("2001:200::1", true), // first address after 2001::/23
        ("2001:db8::1", false),
        ("2002:7f00:1::1", false), // 6to4 of 127.0.0.1
        ("2002:a00:1::1", false),
        ("2002:808:808::1", true),
        ("2620:4f:8000::1", true), // AS112 direct delegation
        ("3fff::1", false),        // documentation (RFC 9637)
        ("3fff:fff::1", false),
        ("3fff:1000::1", true),
        ("5f00::1", false), // SRv6 SIDs
        ("fc00::1", false),
        ("fd12:3456::1", false),
        ("fe80::1", false),
        ("febf::1", false),
        ("fec0::1", false),
        ("ff02::1", false),
        ("ff0e::1", false),
        ("4000::1", false), // outside 2000::/3
        ("2606:4700:4700::1111", true),
        ("2a00:1450:4001::1", true),
    ];

    #[test]
    fn special_purpose_addresses() {
        let wrong: Vec<String> = TABLE
            .iter()
            .filter(|(s, public)| is_public(s.parse().unwrap()) != *public)
            .map(|(s, public)| format!("{s} should be {}", if *public { "public" } else { "refused" }))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn allowlists() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let r = IpRange::parse("127.0.0.1").unwrap();
        assert!(r.contains(ip("127.0.0.1")) && !r.contains(ip("127.0.0.2")));
        assert!(r.contains(ip("::ffff:127.0.0.1")));
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains(ip("10.200.0.1")) && !r.contains(ip("11.0.0.1")));
        assert!(IpRange::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(IpRange::parse("10.0.0.0/33").is_none());
        assert!(IpRange::parse("nonsense").is_none());

        let guard = Guard::new(vec![IpRange::parse("10.1.0.0/16").unwrap()]);
        assert!(guard.allows(ip("10.1.2.3")) && guard.allows(ip("8.8.8.8")));
        assert!(!guard.allows(ip("10.2.0.1")) && !guard.allows(ip("64:ff9b::7f00:1")));
        let all = Guard::allow_all();
        assert!(all.allows(ip("127.0.0.1")) && all.allows(ip("::1")) && all.allows(ip("64:ff9b::7f00:1")));
    }
}
