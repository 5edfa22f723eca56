//! The address delegates join at, each hall's own address, and their QR codes (on the terminal
//! at start, and as images at `/qr.svg` for the engineer to put on the halls' screens).
//!
//! A relay bound to every interface finds the addresses a phone could reach from the machine's
//! own interfaces (`getifaddrs`): an interpretation LAN is often offline, with no default route,
//! so nothing here needs a route to the internet. Several candidates are all offered; the
//! engineer picks one with `serve --public-url`.

use crate::config::Event;
use qrcode::render::{svg, unicode};
use qrcode::QrCode;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// An address of one of the machine's interfaces, as `getifaddrs` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ip: IpAddr,
    /// Up and running (IFF_UP and IFF_RUNNING): a cable in, or a Wi-Fi associated.
    pub running: bool,
    pub loopback: bool,
}

/// The page's addresses for a relay bound to `bound`, best first: the bound address itself, or
/// when bound to every interface, one per address of the machine a phone could reach
/// (`candidates`). Never empty: with no such address, the loopback one.
pub fn urls(bound: SocketAddr, tls: bool) -> Vec<String> {
    let ips = if bound.ip().is_unspecified() {
        let mut ips = candidates(&interfaces(), default_route_address());
        if bound.is_ipv4() {
            ips.retain(IpAddr::is_ipv4);
        }
        if ips.is_empty() {
            ips.push(match bound {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        ips
    } else {
        vec![bound.ip()]
    };
    ips.into_iter()
        .map(|ip| address(ip, bound.port(), tls))
        .collect()
}

/// The first of `urls`.
pub fn url(bound: SocketAddr, tls: bool) -> String {
    urls(bound, tls).swap_remove(0)
}

fn address(ip: IpAddr, port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    match (tls, port) {
        (false, 80) | (true, 443) => format!("{scheme}://{host}/"),
        _ => format!("{scheme}://{host}:{port}/"),
    }
}

/// The addresses among `interfaces` that a phone on the venue's network could reach, best
/// first: interfaces that are up and running, not loopback; no link-local addresses (IPv6
/// ones would need the interface named in the address, IPv4 ones are a failed DHCP); IPv4
/// before IPv6, private ranges (a venue LAN) before others; `preferred` (the address of the
/// default route, where there is one) ahead of all. Duplicates are dropped.
pub fn candidates(interfaces: &[Interface], preferred: Option<IpAddr>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = interfaces
        .iter()
        .filter(|i| i.running && !i.loopback && reachable(i.ip))
        .map(|i| i.ip)
        .collect();
    ips.sort_by_key(|ip| (Some(*ip) != preferred, rank(*ip)));
    ips.dedup();
    ips
}

fn reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback()
                || v6.is_unspecified()
                || link_local
                || v6.to_ipv4_mapped().is_some())
        }
    }
}

fn rank(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) if v4.is_private() => 0,
        IpAddr::V4(_) => 1,
        // Unique local addresses (fc00::/7): a LAN's own.
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => 2,
        IpAddr::V6(_) => 3,
    }
}

/// The local address of the default route, where there is one: a UDP socket "connected" to a
/// documentation address (which sends nothing). None on a network without a default route.
fn default_route_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The machine's interface addresses (IPv4 and IPv6); empty if they cannot be listed.
pub fn interfaces() -> Vec<Interface> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let flags = ifa.ifa_flags as libc::c_int;
        out.push(Interface {
            name,
            ip,
            running: flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0,
            loopback: flags & libc::IFF_LOOPBACK != 0,
        });
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// A hall's own address: the page's address with `?room=ID`, which opens that hall's
/// languages. `base` ends with `/`.
pub fn hall_url(base: &str, room: &str) -> String {
    format!("{base}?room={room}")
}

/// `/join` and `/qr.svg` take `?room=ID` for a hall's own address.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Query {
    pub room: Option<String>,
}

/// A `room` that the event does not have.
#[derive(Debug, thiserror::Error)]
#[error("there is no room {0:?} in this event")]
pub struct UnknownRoom(pub String);

/// The address to join at: `base`, or with a room, that hall's own address.
pub fn join_url(event: &Event, base: &str, room: Option<&str>) -> Result<String, UnknownRoom> {
    match room {
        None => Ok(base.to_string()),
        Some(id) if event.rooms.iter().any(|r| r.id == id) => Ok(hall_url(base, id)),
        Some(id) => Err(UnknownRoom(id.to_string())),
    }
}

/// What `/join` answers (JSON): `url` (the address asked for), `rooms` (each hall's `id`,
/// `name` and own `url`, in the event's order) and `language` (the page's default language
/// from the event file, or null: the page then follows the browser).
pub fn page_info(
    event: &Event,
    base: &str,
    room: Option<&str>,
) -> Result<serde_json::Value, UnknownRoom> {
    let url = join_url(event, base, room)?;
    let rooms: Vec<_> = event
        .rooms
        .iter()
        .map(|r| serde_json::json!({ "id": r.id, "name": r.name, "url": hall_url(base, &r.id) }))
        .collect();
    Ok(serde_json::json!({ "url": url, "rooms": rooms, "language": event.page_language }))
}

/// What `serve` prints at start about joining: the address and its QR code; when the machine
/// has several addresses a phone might reach (`others`, the candidates the address was taken
/// from, empty when `--public-url` chose it), all of them and how to choose; with several
/// halls, each hall's own address. `colors`: the QR code in ANSI colours (see `text`).
pub fn announce(event: &Event, url: &str, others: &[String], colors: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "delegates join at {url} (QR code: {url}qr.svg)");
    if others.len() > 1 {
        let _ = writeln!(
            out,
            "this machine has {} addresses a phone might reach; delegates join at any one the venue's network routes:",
            others.len()
        );
        for o in others {
            let _ = writeln!(out, "  {o}");
        }
        let _ = writeln!(
            out,
            "the QR codes show the first; choose another with --public-url URL"
        );
    }
    if let Ok(qr) = text(url, colors) {
        let _ = writeln!(out, "{qr}");
    }
    if event.rooms.len() > 1 {
        let _ = writeln!(out, "halls, each with its own address and QR code:");
        for r in &event.rooms {
            let hall = hall_url(url, &r.id);
            let _ = writeln!(
                out,
                "  {}: {hall} (QR code: {url}qr.svg?room={})",
                r.name, r.id
            );
        }
    }
    out
}

/// The QR code of `url` as an SVG image.
pub fn svg(url: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(url.as_bytes())?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(320, 320)
        .quiet_zone(true)
        .build())
}

/// The QR code of `url` for a terminal: two rows of modules per line, dark modules as the
/// glyphs, quiet zone included. With `colors`, every line is drawn black on white with ANSI
/// colours, so that it scans on a light and a dark terminal alike (scanners want dark modules
/// on a light ground); without (not a terminal), plain dark-on-light glyphs.
pub fn text(url: &str, colors: bool) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(url.as_bytes())?;
    let plain = code
        .render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Dark)
        .light_color(unicode::Dense1x2::Light)
        .quiet_zone(true)
        .build();
    if !colors {
        return Ok(plain);
    }
    Ok(plain
        .lines()
        .map(|l| format!("{ANSI_BLACK_ON_WHITE}{l}{ANSI_RESET}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Foreground black, background white (ANSI SGR 30 and 107, bright white).
pub const ANSI_BLACK_ON_WHITE: &str = "\x1b[30;107m";
pub const ANSI_RESET: &str = "\x1b[0m";

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: &str, running: bool, loopback: bool) -> Interface {
        Interface {
            name: name.into(),
            ip: ip.parse().unwrap(),
            running,
            loopback,
        }
    }

    #[test]
    fn join_addresses() {
        let a: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert_eq!(url(a, false), "http://10.1.2.3:8080/");
        assert_eq!(url(a, true), "https://10.1.2.3:8080/");
        let b: SocketAddr = "192.168.0.5:443".parse().unwrap();
        assert_eq!(url(b, true), "https://192.168.0.5/");
        let c: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        assert_eq!(url(c, false), "http://[fd00::1]:8080/");
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let u = url(any, false);
        assert!(u.starts_with("http://") && u.ends_with(":8080/"), "{u}");
        assert!(!u.contains("0.0.0.0"), "{u}");
        assert_eq!(
            hall_url("http://10.1.2.3:8080/", "panel-a"),
            "http://10.1.2.3:8080/?room=panel-a"
        );
    }

    #[test]
    fn candidates_from_interfaces_without_a_route() {
        // An offline interpretation LAN: one LAN address, no default route.
        let lan = [
            iface("lo", "127.0.0.1", true, true),
            iface("lo", "::1", true, true),
            iface("eth0", "10.77.0.5", true, false),
            iface("eth0", "fe80::1", true, false),
        ];
        assert_eq!(
            candidates(&lan, None),
            vec!["10.77.0.5".parse::<IpAddr>().unwrap()]
        );
        // Down or not running, link-local (a failed DHCP) and loopback addresses are left out;
        // private IPv4 first, then public IPv4, then unique local IPv6, then global IPv6.
        let many = [
            iface("docker0", "172.17.0.1", false, false),
            iface("wlan0", "169.254.3.4", true, false),
            iface("eth1", "2001:db8::5", true, false),
            iface("eth1", "fd12::5", true, false),
            iface("eth2", "198.51.100.7", true, false),
            iface("eth0", "192.168.1.20", true, false),
        ];
        let ips: Vec<String> = candidates(&many, None)
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(
            ips,
            ["192.168.1.20", "198.51.100.7", "fd12::5", "2001:db8::5"]
        );
        // The default route's address comes first where there is one.
        let ips = candidates(&many, Some("198.51.100.7".parse().unwrap()));
        assert_eq!(ips[0].to_string(), "198.51.100.7");
        // Nothing reachable: none (the caller falls back to loopback).
        assert!(candidates(&lan[..2], None).is_empty());
    }

    #[test]
    fn interfaces_are_listed() {
        // Every machine has a loopback interface.
        assert!(interfaces()
            .iter()
            .any(|i| i.loopback && i.ip.is_loopback()));
    }

    #[test]
    fn halls_and_page_info() {
        let event = Event::parse(
            r#"
[event]
name = "Forum"
[[rooms]]
id = "plenary"
name = "Plenary hall"
[[rooms.channels]]
lang = "en"
name = "English"
native = "English"
[[rooms]]
id = "panel-a"
name = "Panel A"
[[rooms.channels]]
lang = "fr"
name = "French"
native = "Français"
"#,
            "test.toml",
            &|_| None,
        )
        .unwrap();
        let base = "http://10.77.0.5:8080/";
        assert_eq!(join_url(&event, base, None).unwrap(), base);
        assert_eq!(
            join_url(&event, base, Some("panel-a")).unwrap(),
            "http://10.77.0.5:8080/?room=panel-a"
        );
        let e = join_url(&event, base, Some("nope")).unwrap_err();
        assert_eq!(e.to_string(), "there is no room \"nope\" in this event");
        let info = page_info(&event, base, Some("panel-a")).unwrap();
        assert_eq!(info["url"], "http://10.77.0.5:8080/?room=panel-a");
        assert_eq!(info["rooms"][1]["name"], "Panel A");
        assert_eq!(
            info["rooms"][0]["url"],
            "http://10.77.0.5:8080/?room=plenary"
        );
        assert!(info["language"].is_null());
    }

    #[test]
    fn announce_lists_candidates_and_halls() {
        let event = Event::parse(
            &["plenary", "panel-a"]
                .iter()
                .zip(["Plenary hall", "Panel A"])
                .map(|(id, name)| {
                    format!("[[rooms]]\nid = \"{id}\"\nname = \"{name}\"\n[[rooms.channels]]\nlang = \"en\"\nname = \"E\"\nnative = \"E\"\n")
                })
                .fold("[event]\nname = \"F\"\n".to_string(), |a, r| a + &r),
            "t.toml",
            &|_| None,
        )
        .unwrap();
        let url = "http://10.77.0.5:8080/";
        let both = [url.to_string(), "http://192.168.77.5:8080/".to_string()];
        let text = announce(&event, url, &both, false);
        assert!(text.starts_with(
            "delegates join at http://10.77.0.5:8080/ (QR code: http://10.77.0.5:8080/qr.svg)\n"
        ));
        assert!(text.contains("\n  http://192.168.77.5:8080/\n"), "{text}");
        assert!(text.contains("--public-url"), "{text}");
        assert!(text.contains(
            "  Panel A: http://10.77.0.5:8080/?room=panel-a (QR code: http://10.77.0.5:8080/qr.svg?room=panel-a)"
        ));
        // One address: no list, no suggestion.
        let one = announce(&event, url, &both[..1], false);
        assert!(!one.contains("--public-url"), "{one}");
    }

    #[test]
    fn qr_codes_render() {
        let s = svg("http://10.1.2.3:8080/").unwrap();
        assert!(s.contains("<svg") && s.contains("</svg>"));
        let t = text("http://10.1.2.3:8080/", false).unwrap();
        // A version 2 code (25 modules) with its 4-module quiet zone: 33 columns, 17 lines.
        assert_eq!(t.lines().count(), 17, "{t}");
        assert!(t.lines().all(|l| l.chars().count() == 33));
        let c = text("http://10.1.2.3:8080/", true).unwrap();
        assert!(c
            .lines()
            .all(|l| l.starts_with(ANSI_BLACK_ON_WHITE) && l.ends_with(ANSI_RESET)));
    }
}
