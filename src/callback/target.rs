//! Which callback URLs may be reached: the check where a URL enters and the resolver that
//! repeats it at connect time (see the module doc of `callback`).

use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

/// How long resolving a callback's host may take where the URL enters.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// `GRANDA_CALLBACK_ALLOW_NETS`: ranges callbacks may reach although `refusal` would refuse them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllowNets(pub(crate) Vec<IpNet>);

impl AllowNets {
    /// Comma-separated entries for `parse_net`; empty means none.
    pub fn parse(s: &str) -> Result<AllowNets, String> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(parse_net)
            .collect::<Result<Vec<_>, _>>()
            .map(AllowNets)
    }
}

impl std::ops::Deref for AllowNets {
    type Target = [IpNet];
    fn deref(&self) -> &[IpNet] {
        &self.0
    }
}

/// One entry of `GRANDA_CALLBACK_ALLOW_NETS`: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address.
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8 or an IP address"))
}

/// Why an address may not be a callback target, or `None` when it may. Ranges in `allow` are
/// always fine. IPv4-mapped and IPv4-compatible IPv6 addresses (and IPv4-translated, NAT64 and
/// 6to4 ones) are judged by the IPv4 address they carry; local-use NAT64 (`64:ff9b:1::/48`) and
/// Teredo (`2001::/32`) addresses, whose IPv4 address may sit anywhere or be obfuscated, are
/// refused outright.
pub(crate) fn refusal(ip: IpAddr, allow: &[IpNet]) -> Option<&'static str> {
    let ip = canonical(ip);
    if allow.iter().any(|net| net.contains(&ip)) {
        return None;
    }
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return refusal_v4(v4);
            }
            refusal_v6(v6)
        }
    }
}

/// `::ffff:a.b.c.d` and `::a.b.c.d` as `a.b.c.d`; anything else as it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
                let [.., a, b, c, d] = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(a, b, c, d));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The IPv4 address an IPv4-translated (`::ffff:0:a.b.c.d`, SIIT), NAT64 (`64:ff9b::/96`) or 6to4
/// (`2002::/16`) address leads to.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "unspecified address",
        (127, ..) => "loopback address",
        (10, ..) | (192, 168, _) => "private address",
        (172, b, _) if (16..32).contains(&b) => "private address",
        (169, 254, _) => "link-local address",
        (100, b, _) if (64..128).contains(&b) => "shared (CGNAT) address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation address",
        (198, 18 | 19, _) => "benchmark address",
        (192, 0, 0) | (192, 88, 99) => "reserved address",
        (224..=239, ..) => "multicast address",
        (240..=255, ..) => "reserved address",
        _ => return None,
    })
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified address"
    } else if ip.is_loopback() {
        "loopback address"
    } else if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        "private address"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local address"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast address"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 || s[0] == 0x3fff && s[1] & 0xf000 == 0 {
        "documentation address"
    } else if s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0 {
        "benchmark address"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "reserved address"
    } else if s[..3] == [0x64, 0xff9b, 1] {
        "local-use NAT64 address"
    } else if s[..2] == [0x2001, 0] {
        "Teredo address"
    } else {
        return None;
    })
}

/// Checks a callback URL without resolving it: absolute `http://` or `https://` with a host, no
/// user name or password, and, when the host is an address (in any spelling the URL standard
/// reads), one that [`refusal`] lets through; `localhost` names count as loopback.
pub(crate) fn check_url(url: &str, allow: &[IpNet]) -> Result<reqwest::Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    let refused = |ip: IpAddr| {
        refusal(ip, allow).map(|why| {
            format!(
                "refused: {why} {ip} (callbacks may not reach it unless GRANDA_CALLBACK_ALLOW_NETS allows it)"
            )
        })
    };
    match parsed.host() {
        Some(url::Host::Ipv4(ip)) => refused(ip.into()).map_or(Ok(()), Err)?,
        Some(url::Host::Ipv6(ip)) => refused(ip.into()).map_or(Ok(()), Err)?,
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            if name == "localhost" || name.ends_with(".localhost") {
                refused(Ipv4Addr::LOCALHOST.into()).map_or(Ok(()), Err)?;
                refused(Ipv6Addr::LOCALHOST.into()).map_or(Ok(()), Err)?;
            }
        }
        None => unreachable!("checked above"),
    }
    Ok(parsed)
}

/// [`check_url`], then resolves a host name and refuses it when any of its addresses is refused
/// or it does not resolve. For where a URL enters (registration, `X-Callback-Url`).
pub(crate) async fn check_target(url: &str, allow: &[IpNet]) -> Result<(), String> {
    let parsed = check_url(url, allow)?;
    let Some(url::Host::Domain(name)) = parsed.host() else {
        return Ok(());
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port))).await {
            Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
            _ => Vec::new(),
        };
    if addrs.is_empty() {
        return Err(format!("the host {name:?} does not resolve"));
    }
    for addr in addrs {
        if let Some(why) = refusal(addr.ip(), allow) {
            return Err(format!(
                "refused: {name} resolves to a {why} ({}; callbacks may not reach it unless GRANDA_CALLBACK_ALLOW_NETS allows it)",
                addr.ip()
            ));
        }
    }
    Ok(())
}

/// A resolver that only ever hands the HTTP client addresses [`refusal`] lets through: the
/// connect-time half of the target check.
pub(super) struct GuardedResolver {
    pub(super) allow: Arc<Vec<IpNet>>,
}

/// A name whose every address is refused.
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub(super) struct Refused(pub(super) &'static str);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut why = "the host does not resolve";
            let mut ok = Vec::with_capacity(found.len());
            for addr in found {
                match refusal(addr.ip(), &allow) {
                    None => ok.push(addr),
                    Some(reason) => why = reason,
                }
            }
            if ok.is_empty() {
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
