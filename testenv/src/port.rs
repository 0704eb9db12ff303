//! Loopback ports that no other test can take, and names no other test can pick.
//!
//! The old way — bind port 0, read the port, close the socket, let a child bind it later — left a
//! window in which another test's `bind(0)` got the same port; its server then failed to bind,
//! and the test's readiness probe connected to the *other* test's server. Two tests shared one
//! SMTP sink that way (issue 13).
//!
//! A [`Port`] instead keeps a socket bound to the port for as long as the peer lives, across its
//! restarts (an outage test stops and starts a server on the same port). The socket is bound with
//! `SO_REUSEADDR` and never listens, which on Linux has two effects:
//! - the kernel never hands the port to another `bind(0)` or outgoing `connect()` while it is
//!   bound (`inet_csk_find_open_port` does not relax the conflict for `SO_REUSEADDR` unless
//!   `net.ipv4.ip_autobind_reuse` is set, which it is not by default);
//! - the child it is meant for can still bind and listen on it, because every server the harness
//!   starts sets `SO_REUSEADDR` too (Go's `net.Listen`, Python's asyncio and `socketserver`,
//!   PostgreSQL, Chromium's server sockets, tokio) and the reservation is not listening.
//!
//! `port_reservation_*` tests in this file check both effects against this kernel.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Socket, Type};

use crate::{Error, io};

/// A TCP port on 127.0.0.1 reserved for one peer for as long as this value lives.
///
/// Hand [`Port::get`] to the child on its command line; keep the `Port` beside the child.
#[derive(Debug)]
pub struct Port {
    port: u16,
    _reservation: Socket,
}

impl Port {
    /// Reserve a port the kernel chooses among the free ones.
    ///
    /// Errors: [`Error::Io`] when no socket can be created or bound (no free port).
    pub fn reserve() -> Result<Self, Error> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)
            .map_err(io("creating a socket to reserve a port"))?;
        socket
            .set_reuse_address(true)
            .map_err(io("setting SO_REUSEADDR on a port reservation"))?;
        socket
            .bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())
            .map_err(io("reserving a port on 127.0.0.1"))?;
        let port = socket
            .local_addr()
            .map_err(io("reading a reserved port"))?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| Error::Io {
                what: "reading a reserved port".into(),
                source: std::io::Error::other("not an IP socket"),
            })?;
        Ok(Self {
            port,
            _reservation: socket,
        })
    }

    /// The port number.
    pub fn get(&self) -> u16 {
        self.port
    }
}

/// A name unique in this process and across runs of it: `<prefix>-<pid>-<n>`, where `n` counts
/// up from 1. For scratch folders and database names, which used to be named after a "free"
/// port and so could collide the same way the ports did.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::TcpListener;

    use super::*;

    fn bind_zero() -> (u16, TcpListener) {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        (l.local_addr().unwrap().port(), l)
    }

    #[test]
    fn port_reservation_is_never_handed_out_again() {
        let reserved: Vec<Port> = (0..20).map(|_| Port::reserve().unwrap()).collect();
        let ports: HashSet<u16> = reserved.iter().map(Port::get).collect();
        assert_eq!(ports.len(), reserved.len(), "two reservations share a port");
        // Bind and release many times, as other tests and clients would: the kernel's choice
        // wanders over the whole range, and must never land on a reserved port.
        for _ in 0..3000 {
            let (port, listener) = bind_zero();
            drop(listener);
            assert!(
                !ports.contains(&port),
                "bind(0) returned reserved port {port}"
            );
        }
        // Outgoing connections take ephemeral ports too: never a reserved one.
        let (target, listener) = bind_zero();
        for _ in 0..200 {
            let c = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
            let (_accepted, _) = listener.accept().unwrap();
            let local = c.local_addr().unwrap().port();
            assert!(
                !ports.contains(&local),
                "connect() used reserved port {local}"
            );
        }
    }

    #[test]
    fn port_reservation_lets_a_reuseaddr_server_listen_and_no_one_else() {
        let port = Port::reserve().unwrap();
        // A server as the peers bind: SO_REUSEADDR, then listen (std's TcpListener sets it).
        let server = TcpListener::bind(("127.0.0.1", port.get()))
            .expect("the child the port is for can bind it");
        // While it listens, nobody else binds the port, SO_REUSEADDR or not.
        assert!(TcpListener::bind(("127.0.0.1", port.get())).is_err());
        std::net::TcpStream::connect(("127.0.0.1", port.get())).expect("it accepts");
        drop(server);
        // Stopped (an outage), the port stays reserved: bind(0) keeps away, and the server can
        // come back on it.
        for _ in 0..1000 {
            assert_ne!(bind_zero().0, port.get());
        }
        TcpListener::bind(("127.0.0.1", port.get())).expect("the server can come back");
    }

    #[test]
    fn unique_names_do_not_repeat() {
        let names: HashSet<String> = (0..1000).map(|_| unique_name("x")).collect();
        assert_eq!(names.len(), 1000);
    }
}
