//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.
//!
//! No crate: the protocol is a unix datagram of `KEY=VALUE` lines (sd_notify(3)). A leading `@`
//! in the socket's name is an abstract address. Outside systemd the variable is unset and every
//! call does nothing.

use std::io;

/// Tells systemd the service is ready (`READY=1`), and, when `main_pid` is given, that this
/// process is now the service's main process (`MAINPID=`): after `ctl upgrade` the new process
/// says so, and systemd follows it instead of treating the old one's exit as the end.
///
/// Returns `Ok(false)` when not running under a notify-type unit.
pub fn ready(main_pid: Option<u32>) -> io::Result<bool> {
    let mut msg = String::new();
    if let Some(pid) = main_pid {
        msg.push_str(&format!("MAINPID={pid}\n"));
    }
    msg.push_str("READY=1\n");
    send(&msg)
}

/// Sends `msg` to `$NOTIFY_SOCKET`, if set.
pub fn send(msg: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), &path)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The variable is process-wide: this is the only test in the crate that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(ready(Some(42)).unwrap());
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=42\nREADY=1\n");
        assert!(!ready(None).unwrap(), "no socket, no message");
    }
}
