//! IP access control lists in PulseAudio's `auth-ip-acl` syntax: addresses or networks in CIDR
//! notation separated by semicolons, e.g. `127.0.0.1;192.168.0.0/16;::1;fe80::/10`.
use crate::params::ParamError;
use std::net::IpAddr;

/// A parsed ACL; [`IpAcl::allows`] tells whether a peer address matches an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAcl {
    entries: Vec<(IpAddr, u8)>,
}

fn mask_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    if a[..full] != b[..full] {
        return false;
    }
    let rest = bits % 8;
    if rest == 0 {
        return true;
    }
    let m = 0xffu8 << (8 - rest);
    (a[full] & m) == (b[full] & m)
}

impl IpAcl {
    /// Parses the list; the error names `key` and the entry that is not an address.
    pub fn parse(key: &str, s: &str) -> Result<IpAcl, ParamError> {
        let mut entries = Vec::new();
        for item in s.split(';').map(str::trim).filter(|x| !x.is_empty()) {
            let err = || {
                ParamError::new(
                    key,
                    item,
                    "IP addresses or networks (ADDR/BITS) separated by ';', e.g. 127.0.0.1;192.168.0.0/16;::1",
                )
            };
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| err())?)),
                None => (item, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| err())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            if bits > max {
                return Err(err());
            }
            entries.push((ip, bits));
        }
        if entries.is_empty() {
            return Err(ParamError::new(
                key,
                s,
                "at least one IP address or network",
            ));
        }
        Ok(IpAcl { entries })
    }

    /// True if `peer` (IPv4-mapped IPv6 addresses count as IPv4) matches an entry.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        self.entries.iter().any(|(net, bits)| match (net, peer) {
            (IpAddr::V4(n), IpAddr::V4(p)) => mask_eq(&n.octets(), &p.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(p)) => mask_eq(&n.octets(), &p.octets(), *bits),
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_networks() {
        let acl = IpAcl::parse("auth-ip-acl", "127.0.0.1; 192.168.0.0/16;::1;fe80::/10").unwrap();
        assert!(acl.allows(ip("127.0.0.1")));
        assert!(!acl.allows(ip("127.0.0.2")));
        assert!(acl.allows(ip("192.168.77.3")));
        assert!(!acl.allows(ip("192.169.0.1")));
        assert!(acl.allows(ip("::1")));
        assert!(acl.allows(ip("fe80::1234")));
        assert!(!acl.allows(ip("2001:db8::1")));
        // IPv4 peers seen through a dual-stack socket.
        assert!(acl.allows(ip("::ffff:192.168.1.1")));
        assert!(!acl.allows(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn odd_prefix_lengths() {
        let acl = IpAcl::parse("k", "10.0.0.0/9").unwrap();
        assert!(acl.allows(ip("10.127.255.255")));
        assert!(!acl.allows(ip("10.128.0.0")));
        let all = IpAcl::parse("k", "0.0.0.0/0").unwrap();
        assert!(all.allows(ip("8.8.8.8")));
    }

    #[test]
    fn bad_entries_are_refused_with_the_key() {
        for bad in [
            "",
            "300.1.1.1",
            "10.0.0.0/33",
            "::1/129",
            "host.example",
            "1.2.3.4/x",
        ] {
            let e = IpAcl::parse("auth-ip-acl", bad).unwrap_err();
            assert_eq!(e.key, "auth-ip-acl", "{bad}");
        }
    }
}
