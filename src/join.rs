//! The address delegates join at, and its QR code (on the terminal at start, and as an image
//! at `/qr.svg` for the engineer to put on screen).

use qrcode::render::{svg, unicode};
use qrcode::QrCode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The page's address for a relay bound to `bound`: the address itself, or when bound to every
/// interface, the address of the interface the machine would use to reach the network (a
/// phone on the venue's network reaches that one).
pub fn url(bound: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let ip = if bound.ip().is_unspecified() {
        lan_address().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    } else {
        bound.ip()
    };
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    let port = bound.port();
    match (tls, port) {
        (false, 80) | (true, 443) => format!("{scheme}://{host}/"),
        _ => format!("{scheme}://{host}:{port}/"),
    }
}

/// The local address of the default route, found by "connecting" a UDP socket (which sends
/// nothing) to a documentation address.
fn lan_address() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
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

/// The QR code of `url` for a terminal: two rows of modules per line, light on dark swapped so
/// that it scans on a dark terminal too (the quiet zone is drawn).
pub fn text(url: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::new(url.as_bytes())?;
    Ok(code
        .render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn qr_codes_render() {
        let s = svg("http://10.1.2.3:8080/").unwrap();
        assert!(s.contains("<svg") && s.contains("</svg>"));
        let t = text("http://10.1.2.3:8080/").unwrap();
        // A version 2 code (25 modules) with its 4-module quiet zone: 33 columns, 17 lines.
        assert_eq!(t.lines().count(), 17, "{t}");
        assert!(t.lines().all(|l| l.chars().count() == 33));
    }
}
