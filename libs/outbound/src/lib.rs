//! Outbound HTTP for actions, webhooks and Connexease, guarded against SSRF.
//!
//! A workspace decides where Switchboard sends requests, so every destination is checked
//! where it counts: after DNS resolution (a public name may resolve to a private address),
//! for IP literals before any connection, and again for every redirect. Private, loopback,
//! link-local (cloud metadata at 169.254.169.254 included), shared, multicast and
//! unspecified addresses are refused, in IPv4, IPv6 and IPv4-in-IPv6 forms, unless the
//! operator allows a range. Proxies from the environment are ignored: a proxy would resolve
//! names where we cannot check them.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::Url;

/// A destination refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "SB-NET-0001: {host} resolves to {ip}, a {reason} address; outbound requests may not reach it"
)]
pub struct Blocked {
    pub host: String,
    pub ip: IpAddr,
    /// What kind of address it is: `loopback`, `private`, `link-local`, ...
    pub reason: &'static str,
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{range}` is not an IP range in CIDR notation (e.g. 10.1.0.0/16): {reason}")]
pub struct InvalidRange {
    pub range: String,
    pub reason: String,
}

/// Which addresses outbound requests may reach: every public address, plus the ranges the
/// operator allows (a test receiver on loopback, an internal API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    allowed: Vec<IpNet>,
}

impl Policy {
    /// Public addresses only.
    pub fn public_only() -> Self {
        Self::default()
    }

    /// Public addresses and the given CIDR ranges.
    pub fn allowing<S: AsRef<str>>(ranges: &[S]) -> Result<Self, InvalidRange> {
        let allowed = ranges
            .iter()
            .map(|r| {
                let r = r.as_ref().trim();
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| InvalidRange {
                        range: r.to_owned(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Refuses `ip` unless it is public or in an allowed range.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), Blocked> {
        let Some(reason) = special_purpose(ip) else {
            return Ok(());
        };
        if self
            .allowed
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical(ip)))
        {
            return Ok(());
        }
        Err(Blocked {
            host: host.to_owned(),
            ip,
            reason,
        })
    }

    /// Checks a URL whose host is an IP literal (names are checked when resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Blocked> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check(&ip.to_string(), IpAddr::V6(ip)),
            _ => Ok(()),
        }
    }
}

/// What kind of non-public address `ip` is, or `None` for a public one.
pub fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses, and NAT64 ones, checked as the IPv4
/// address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96, the well-known NAT64 prefix.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            ip
        }
        v4 => v4,
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata lives here)"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_multicast() {
        "multicast"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (carrier-grade NAT)"
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        "IETF protocol assignment"
    } else if a == 198 && (b == 18 || b == 19) {
        "benchmarking"
    } else if a >= 240 {
        "reserved"
    } else {
        return None;
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_multicast() {
        "multicast"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if first & 0xfe00 == 0xfc00 {
        "unique local (private)"
    } else if first & 0xffc0 == 0xfec0 {
        "site-local (private)"
    } else if ip.segments()[..6] == [0; 6] {
        "IPv4-compatible"
    } else {
        return None;
    })
}

/// Resolves names with the system resolver and keeps only the addresses the policy allows;
/// a name with none left is refused with the first address's reason.
struct GuardedResolver {
    policy: Arc<Policy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match policy.check(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(blocked) => {
                        first_refusal.get_or_insert(blocked);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_refusal) {
                (true, Some(blocked)) => {
                    Err(Box::new(blocked) as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// How a guarded client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Redirects to follow (each target checked); 0 follows none, and a 3xx is returned
    /// as the response.
    pub max_redirects: usize,
    pub user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_redirects: 0,
            user_agent: concat!("Switchboard/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Makes ring the process's rustls provider, the one provider of the whole tree. Safe to
/// call more than once.
/// Reads at most `cap` bytes of `response`'s body, and whether there was more: an answer
/// from an outside server is never buffered whole.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client whose every connection goes through the guard.
#[derive(Clone)]
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

impl GuardedClient {
    pub fn new(policy: Policy, options: &ClientOptions) -> Result<Self, reqwest::Error> {
        install_crypto_provider();
        let policy = Arc::new(policy);
        let redirects = {
            let policy = policy.clone();
            let max = options.max_redirects;
            redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max {
                    return attempt.stop();
                }
                // Names are checked by the resolver on connect; literals are checked here.
                // reqwest drops credentials on redirects to another host.
                match policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(blocked) => attempt.error(blocked),
                }
            })
        };
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .redirect(if options.max_redirects == 0 {
                redirect::Policy::none()
            } else {
                redirects
            })
            .no_proxy()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            .build()?;
        Ok(Self { client, policy })
    }

    /// The underlying client, for building requests. Send them with [`GuardedClient::execute`].
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` if its destination is allowed.
    pub async fn execute(
        &self,
        request: reqwest::Request,
    ) -> Result<reqwest::Response, OutboundError> {
        self.policy
            .check_url(request.url())
            .map_err(OutboundError::Blocked)?;
        self.client
            .execute(request)
            .await
            .map_err(|e| match blocked_cause(&e) {
                Some(blocked) => OutboundError::Blocked(blocked.clone()),
                None => OutboundError::Http(e),
            })
    }
}

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The destination is not allowed (the `ssrf_blocked` error class).
    #[error(transparent)]
    Blocked(Blocked),
    /// Anything else: DNS, connect, TLS, timeout.
    #[error("{0}")]
    Http(#[source] reqwest::Error),
}

/// The guard's refusal somewhere in an error's chain of causes.
pub fn blocked_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return Some(blocked);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_refused() {
        let refused = [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.5.4",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::7f00:1",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(special_purpose(ip).is_some(), "{ip} should be refused");
            assert!(Policy::public_only().check("h", ip).is_err(), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(special_purpose(ip), None, "{ip} is public");
        }
    }

    #[test]
    fn operators_can_allow_ranges() {
        let policy = Policy::allowing(&["127.0.0.0/8", "10.1.0.0/16", "::1"]).unwrap();
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(policy.check("h", ip.parse().unwrap()).is_ok(), "{ip}");
        }
        for ip in ["10.2.0.1", "169.254.169.254"] {
            assert!(policy.check("h", ip.parse().unwrap()).is_err(), "{ip}");
        }
        assert!(Policy::allowing(&["10.0.0.0/33"]).is_err());
        assert!(Policy::allowing(&["localhost"]).is_err());
    }
}
