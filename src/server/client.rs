//! Whose try a redemption is: the client's address, as the rate limits key it.
//!
//! Behind an ingress every connection comes from the proxy, so the peer address alone would put
//! the whole internet in one bucket. With `--trusted-proxies`, a connection from a trusted proxy
//! is attributed to the address that proxy says it forwarded for: `X-Forwarded-For` is read from
//! the right (the entries nearest to usher, which our own proxies appended), trusted proxies
//! are skipped, and the first address that is not one of them is the client (if all are proxies,
//! the furthest one). Entries further left were written by the client itself and are never
//! believed. A connection from anywhere else is its peer address, whatever headers it sends.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Proxies whose `X-Forwarded-For` usher believes (`--trusted-proxies`), as CIDR ranges.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `--trusted-proxies` entry that is neither an address nor a CIDR range.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR range such as 10.0.0.0/8 or fd00::/8")]
pub struct BadProxy(String);

impl TrustedProxies {
    /// Parse a comma-separated list of addresses and CIDR ranges (`10.0.0.0/8,192.0.2.7`); an
    /// address alone is a range of one. Errors: an entry that is neither ([`BadProxy`]).
    pub fn parse(text: &str) -> Result<Self, BadProxy> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| BadProxy(entry.to_string()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&canonical(address)))
    }

    /// The client a request from `peer` with these `headers` is counted as, as a rate-limit
    /// key: the address (see the module's rule), and for IPv6 its /64, which one subscriber
    /// holds whole.
    pub fn client_key(&self, peer: IpAddr, headers: &HeaderMap) -> String {
        let client = if self.trusts(peer) {
            let hops = forwarded_for(headers);
            // Only proxies forwarded it: the furthest of them is as far as anyone can tell.
            hops.iter()
                .rev()
                .find(|hop| !self.trusts(**hop))
                .or(hops.first())
                .copied()
                .unwrap_or(peer)
        } else {
            peer
        };
        match canonical(client) {
            IpAddr::V6(v6) => format!("{}/64", ipnet::Ipv6Net::new_assert(v6, 64).trunc().addr()),
            v4 => v4.to_string(),
        }
    }
}

/// IPv4 written as IPv6 (`::ffff:192.0.2.1`, a dual-stack listener's peers) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

/// The addresses of every `X-Forwarded-For` header, in order, left to right. An entry that is
/// not an address (garbage, `unknown`, a port) ends the list there: what lies left of it cannot
/// be attributed.
fn forwarded_for(headers: &HeaderMap) -> Vec<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .collect();
    let mut addresses = Vec::new();
    for entry in entries.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(address) => addresses.push(address),
            Err(_) => break,
        }
    }
    addresses.reverse();
    addresses
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_trusted_proxy_is_seen_through_and_no_one_else_is() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7").unwrap();
        let ingress = ip("10.1.2.3");
        // The ingress appended the client it saw; the client's own entries are left of it.
        let h = headers(&["6.6.6.6, 203.0.113.9"]);
        assert_eq!(proxies.client_key(ingress, &h), "203.0.113.9");
        // Two of our proxies in a row (a load balancer, then the ingress).
        let h = headers(&["203.0.113.9, 192.0.2.7"]);
        assert_eq!(proxies.client_key(ingress, &h), "203.0.113.9");
        // Several headers read as one list.
        let h = headers(&["6.6.6.6", "203.0.113.9"]);
        assert_eq!(proxies.client_key(ingress, &h), "203.0.113.9");
        // A client that is not a proxy cannot pick its own bucket.
        let h = headers(&["198.51.100.1"]);
        assert_eq!(proxies.client_key(ip("203.0.113.9"), &h), "203.0.113.9");
        // Nothing forwarded: the proxy itself. Only proxies: the furthest of them.
        assert_eq!(proxies.client_key(ingress, &HeaderMap::new()), "10.1.2.3");
        let h = headers(&["10.9.9.9"]);
        assert_eq!(proxies.client_key(ingress, &h), "10.9.9.9");
        // Garbage stops the walk: what is left of it is not believed.
        let h = headers(&["203.0.113.9, unknown, 198.51.100.1"]);
        assert_eq!(proxies.client_key(ingress, &h), "198.51.100.1");
        let h = headers(&["203.0.113.9, nonsense"]);
        assert_eq!(proxies.client_key(ingress, &h), "10.1.2.3");
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client() {
        let none = TrustedProxies::default();
        let h = headers(&["198.51.100.1"]);
        assert_eq!(none.client_key(ip("10.1.2.3"), &h), "10.1.2.3");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let proxies = TrustedProxies::parse("fd00::/8").unwrap();
        let a = proxies.client_key(ip("2001:db8:1:2::1"), &HeaderMap::new());
        let b = proxies.client_key(ip("2001:db8:1:2:ffff::9"), &HeaderMap::new());
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_eq!(a, b, "one subscriber's /64 is one client");
        let h = headers(&["2001:db8:1:3::5"]);
        assert_eq!(proxies.client_key(ip("fd00::1"), &h), "2001:db8:1:3::/64");
        let v4 = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&["203.0.113.9"]);
        assert_eq!(v4.client_key(ip("::ffff:10.1.2.3"), &h), "203.0.113.9");
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse("10.0.0.0/8,ingress.local").unwrap_err();
        assert!(err.to_string().contains("\"ingress.local\""), "{err}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }
}
