//! Small HTTP/1.1 servers on hyper: the admin API, the metrics endpoint and the demo backends.
//!
//! These are not on the proxy's request path, so they use hyper rather than pingora's `ServeHttp`,
//! for two reasons: we bind their sockets ourselves before the server starts (a bind failure is a
//! clean start-up error, not a panic in a service task that leaves the process running without an
//! admin socket, pingora#667), and tokio's `UnixStream` gives the peer's uid (SO_PEERCRED), which
//! the audit trail records as the actor of a change.
//!
//! Their listening sockets survive a binary upgrade: [`HandOver`] registers each one in pingora's
//! fd table, so `switchyard ctl upgrade` passes them to the new process with the proxy's own
//! (next-steps §1.3 (A)), and neither a deploy script nor a scraper ever sees "connection refused".

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;

/// A client that sends its headers slower than this is cut (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listening socket, TCP or unix.
pub enum Listener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Binds a TCP listener now, so the caller learns of a busy port before anything starts.
    pub fn bind_tcp(addr: SocketAddr) -> std::io::Result<Listener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(Listener::Tcp(l))
    }

    /// Binds a unix socket at `path`, mode 0600, creating its directory (mode 0750) if missing.
    /// With `group` (a gid, `[admin] socket_group`) the socket is mode 0660 and owned by that
    /// group, so its members can use it; the directory must let them in (systemd's
    /// `RuntimeDirectoryMode=0750` with `Group=` set to the group does).
    ///
    /// A stale socket left by a process that died is replaced; a live one (another switchyard
    /// answering on it) or a file that is not a socket is an error, never silently unlinked.
    pub fn bind_unix(path: &Path, group: Option<u32>) -> Result<Listener, UnixBindError> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
        let err = |reason: String| UnixBindError {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(dir)
                    .map_err(|e| err(format!("cannot create its directory: {e}")))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(err(
                        "another process is serving on it (is switchyard already running?)".into(),
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
            }
            Ok(_) => {
                return Err(err(
                    "a file that is not a socket is in the way; remove it or choose another path"
                        .into(),
                ))
            }
            Err(_) => {}
        }
        let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
        restrict(path, group).map_err(err)?;
        l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        Ok(Listener::Unix(l))
    }

    /// A second handle on the same socket.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
        })
    }

    fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }

    /// Binds a unix socket at `path` even though a process answers on it: binds next to it and
    /// renames over it (atomic: a client connects to the old socket or the new one, never to
    /// nothing). Only for a process taking over from an old one that did not hand the socket on.
    pub fn replace_unix(path: &Path, group: Option<u32>) -> Result<Listener, UnixBindError> {
        let err = |reason: String| UnixBindError {
            path: path.to_path_buf(),
            reason,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let l = std::os::unix::net::UnixListener::bind(&tmp).map_err(|e| err(e.to_string()))?;
        restrict(&tmp, group).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(|e| err(format!("cannot rename into place: {e}")))?;
        l.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
        Ok(Listener::Unix(l))
    }

    /// The bound TCP address (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }
}

/// Mode 0600 on a freshly bound socket, or 0660 owned by `group` (`[admin] socket_group`).
/// The group is set before its bits: no moment where another group may connect.
fn restrict(path: &Path, group: Option<u32>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set mode 0600: {e}"))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            format!(
                "cannot give it to group {gid} ([admin] socket_group): {e}; switchyard must run \
                 as root or as a member of that group"
            )
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| format!("cannot set mode 0660: {e}"))?;
    }
    Ok(())
}

/// The gid of group `name` (a name in `/etc/group`, or a number). `/etc/group` is read rather
/// than NSS (`getgrnam`), which needs unsafe code; a group only in LDAP can be given by number.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.trim().parse().ok()
    })
}

/// A listening socket kept across binary upgrades in pingora's fd table, under `key`.
///
/// A fresh process binds the socket in [`Switchyard::build`](crate::server::Switchyard::build)
/// (a bind error is a clean start-up error) and [`HandOver::open`] registers it; a process
/// started by `ctl upgrade` finds it in the table the old process sent and adopts it. The table
/// holds only the fd's number, so the original socket stays here, open, for as long as the
/// service runs: the server is served from a duplicate.
pub struct HandOver {
    key: String,
    kind: Kind,
    prebound: Option<Listener>,
    /// The registered socket, kept open while the service lives.
    held: Option<Listener>,
    /// A unix socket's group (`[admin] socket_group`), should it have to be bound here.
    group: Option<u32>,
}

/// What a [`HandOver`] listens on.
#[derive(Debug, Clone)]
pub enum Kind {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl HandOver {
    /// `prebound` is `None` in a process started by an upgrade: the socket comes from the old
    /// process (or, from a release that did not hand these sockets over, is bound at start).
    pub fn new(kind: Kind, prebound: Option<Listener>) -> HandOver {
        let key = match &kind {
            // The same key conventions as pingora's own listeners.
            Kind::Tcp(addr) => addr.to_string(),
            Kind::Unix(path) => path.display().to_string(),
        };
        HandOver {
            key,
            kind,
            prebound,
            held: None,
            group: None,
        }
    }

    /// A unix socket bound by [`HandOver::open`] (not handed over) is shared with `group`.
    pub fn with_group(mut self, group: Option<u32>) -> HandOver {
        self.group = group;
        self
    }

    /// The fd table key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The socket to serve on: the inherited one if the table has it, else the pre-bound one
    /// (or a new bind), registered in the table so the next upgrade passes it on.
    pub fn open(
        &mut self,
        fds: Option<&pingora::server::ListenFds>,
    ) -> Result<Listener, HandOverError> {
        let err = |reason: String| HandOverError {
            key: self.key.clone(),
            reason,
        };
        let inherited = fds.and_then(|t| t.lock().get(&self.key).copied());
        let listener = match inherited {
            Some(fd) => inherited::adopt(fd, &self.kind).map_err(err)?,
            None => {
                let l = match self.prebound.take() {
                    Some(l) => l,
                    None => {
                        tracing::info!(
                            "{} is not among the sockets the old process handed over (a new address, or an \
                             old process that did not hand it over): binding it",
                            self.key
                        );
                        match &self.kind {
                            Kind::Tcp(addr) => {
                                Listener::bind_tcp(*addr).map_err(|e| err(e.to_string()))?
                            }
                            Kind::Unix(path) => Listener::replace_unix(path, self.group)
                                .map_err(|e| err(e.reason))?,
                        }
                    }
                };
                if let Some(t) = fds {
                    t.lock().add(self.key.clone(), l.raw_fd());
                }
                l
            }
        };
        let serving = listener.try_clone().map_err(|e| err(e.to_string()))?;
        self.held = Some(listener);
        Ok(serving)
    }
}

/// Why a handed-over socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the listening socket {key}: {reason}")]
pub struct HandOverError {
    pub key: String,
    pub reason: String,
}

/// The one place that turns a raw fd into a socket.
///
/// `unsafe` is allowed here only (lib.rs denies it everywhere else): `from_raw_fd` needs the
/// promise that nobody else owns or closes the fd. The fds come from pingora's table, which
/// holds numbers without owning them; pingora's own listeners take only the keys they are
/// configured with, and ours are distinct (an admin or metrics address cannot equal a proxy
/// address: the config refuses it, and the kernel would too), so each inherited fd is adopted
/// exactly once. What the fd is, is then checked: a socket bound to the expected address.
mod inherited {
    #![allow(unsafe_code)]

    use std::os::fd::{FromRawFd, RawFd};

    use super::{Kind, Listener};

    pub fn adopt(fd: RawFd, kind: &Kind) -> Result<Listener, String> {
        match kind {
            Kind::Tcp(want) => {
                // SAFETY: see the module doc: an inherited fd no one else owns.
                let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                let got = l
                    .local_addr()
                    .map_err(|e| format!("inherited fd {fd}: {e}"))?;
                if got.port() != want.port() {
                    return Err(format!("inherited fd {fd} is bound to {got}, not {want}"));
                }
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(Listener::Tcp(l))
            }
            Kind::Unix(want) => {
                // SAFETY: see the module doc: an inherited fd no one else owns.
                let l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                let got = l
                    .local_addr()
                    .map_err(|e| format!("inherited fd {fd}: {e}"))?;
                // A socket a previous process bound next to the path and renamed into place
                // (`replace_unix`) keeps its first name.
                let named = got.as_pathname().is_some_and(|p| {
                    p.as_os_str()
                        .to_string_lossy()
                        .starts_with(&*want.to_string_lossy())
                });
                if !named {
                    return Err(format!(
                        "inherited fd {fd} is bound to {got:?}, not {}",
                        want.display()
                    ));
                }
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(Listener::Unix(l))
            }
        }
    }
}

/// Why a unix socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the socket {path}: {reason}")]
pub struct UnixBindError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The peer's uid, on a unix socket.
    pub uid: Option<u32>,
    /// The peer's address, on TCP.
    pub addr: Option<SocketAddr>,
}

/// Serves `handler` on `listener` until `shutdown` turns true. Must run inside a tokio runtime.
pub async fn serve<H, F, B>(listener: Listener, handler: H, mut shutdown: watch::Receiver<bool>)
where
    H: Fn(Request<Incoming>, Peer) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    enum L {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let listener = match listener {
        Listener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(L::Tcp),
        Listener::Unix(l) => tokio::net::UnixListener::from_std(l).map(L::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot register listener with the runtime: {e}");
            return;
        }
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            a = async {
                match &listener {
                    L::Tcp(l) => l.accept().await.map(|(s, addr)| {
                        let _ = s.set_nodelay(true);
                        (Box::new(s) as Box<dyn Io>, Peer { uid: None, addr: Some(addr) })
                    }),
                    L::Unix(l) => l.accept().await.map(|(s, _)| {
                        let uid = s.peer_cred().ok().map(|c| c.uid());
                        (Box::new(s) as Box<dyn Io>, Peer { uid, addr: None })
                    }),
                }
            } => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(Linger::new(stream)), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// A stream hyper can serve.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// After a half-close, how much of what the client still sends is read and thrown away, and for
/// how long at most, before the connection is closed. Four times the admin API's largest body.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// A connection that closes gracefully: when hyper shuts it down (after a response it will not
/// follow with another, e.g. a 413 to a request whose body it did not read), the write side is
/// closed first, then what the client still sends is read and discarded until it closes too, or
/// up to [`LINGER_BYTES`] or [`LINGER_TIME`] (nginx's lingering close). Closing at once with
/// unread data would reset the connection, and the client, still writing its body, would get a
/// broken pipe instead of the answer.
struct Linger {
    inner: Box<dyn Io>,
    /// Set once the write side is closed: bytes left to discard, and the deadline.
    draining: Option<(usize, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl Linger {
    fn new(inner: Box<dyn Io>) -> Linger {
        Linger {
            inner,
            draining: None,
        }
    }
}

impl tokio::io::AsyncRead for Linger {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Linger {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.draining.is_none() {
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let deadline = Box::pin(tokio::time::sleep(LINGER_TIME));
            this.draining = Some((LINGER_BYTES, deadline));
        }
        let Some((left, deadline)) = this.draining.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 4096];
        while *left > 0 && deadline.as_mut().poll(cx).is_pending() {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut this.inner), cx, &mut buf)
            {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    *left = left.saturating_sub(buf.filled().len());
                }
                // The client closed (or the connection broke): nothing more to wait for.
                Poll::Ready(_) => break,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A plain-text response.
pub fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

/// A JSON response.
pub fn json(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Waits for the shutdown broadcast. A service whose sockets are in pingora's fd table holds
/// them (through its endpoints) until then: the table refers to them by number, and the next
/// process of an upgrade gets them from it.
pub async fn hold_until_shutdown(shutdown: &mut pingora::server::ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
}

/// Read-only pages served next to `/metrics` (the status page), so the metrics listener can
/// serve them without the metrics module knowing what they are.
pub trait Pages: Send + Sync + 'static {
    /// The response to a `GET` of `path`, or `None` when `path` is not one of these pages.
    /// May block (it reads files): the listener calls it off the async workers.
    fn get(&self, path: &str) -> Option<Response<Full<Bytes>>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn unix_sockets_are_0600_or_0660_for_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let a = dir.path().join("a.sock");
        let _a = Listener::bind_unix(&a, None).unwrap();
        assert_eq!(mode(&a), 0o600);
        // Tests run as root, which may give a file to any group; gid 1 is `daemon` on Debian.
        let b = dir.path().join("b.sock");
        let _b = Listener::bind_unix(&b, Some(1)).unwrap();
        assert_eq!((mode(&b), std::fs::metadata(&b).unwrap().gid()), (0o660, 1));
        let _c = Listener::replace_unix(&a, Some(1)).unwrap();
        assert_eq!((mode(&a), std::fs::metadata(&a).unwrap().gid()), (0o660, 1));
        assert_eq!(group_id("daemon"), Some(1));
        assert_eq!(group_id("42"), Some(42));
        assert_eq!(group_id("no-such-group-xyz"), None);
    }
}
