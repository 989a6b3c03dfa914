//! A small authoritative DNS server for tests, on an ephemeral loopback port (UDP and TCP), built
//! on hickory-server. The test sets each name's A/AAAA records and TTL, can make the server answer
//! SERVFAIL or empty answers, and can stop it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// The records set by the test (NXDOMAIN for an unknown name).
    Records = 0,
    /// SERVFAIL to every query.
    ServFail = 1,
    /// NOERROR with no records for every query.
    Empty = 2,
}

#[derive(Default)]
struct Zone {
    records: Mutex<HashMap<String, (Vec<IpAddr>, u32)>>,
    mode: AtomicU8,
    queries: AtomicUsize,
}

struct Handler(Arc<Zone>);

#[async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let zone = &self.0;
        zone.queries.fetch_add(1, Ordering::SeqCst);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            header.set_response_code(ResponseCode::FormErr);
            return ResponseInfo::from(header);
        };
        let mode = zone.mode.load(Ordering::SeqCst);
        if mode == Mode::ServFail as u8 {
            let msg = builder.error_msg(request.header(), ResponseCode::ServFail);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| header.into());
        }
        let name = info.query.name().to_string().to_ascii_lowercase();
        let qtype = info.query.query_type();
        let found = zone.records.lock().unwrap().get(&name).cloned();
        let mut answers = Vec::new();
        match (&found, mode == Mode::Empty as u8) {
            (None, false) => {
                header.set_response_code(ResponseCode::NXDomain);
            }
            (Some((addrs, ttl)), false) => {
                let owner = Name::from_ascii(&name).expect("a valid name");
                for ip in addrs {
                    let rdata = match (ip, qtype) {
                        (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                        (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                        _ => continue,
                    };
                    answers.push(Record::from_rdata(owner.clone(), *ttl, rdata));
                }
            }
            (_, true) => {}
        }
        let msg = builder.build(header, answers.iter(), [], [], []);
        response
            .send_response(msg)
            .await
            .unwrap_or_else(|_| header.into())
    }
}

/// The server; stopped when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    /// Starts on a free loopback port, UDP and TCP on the same port.
    pub async fn start() -> DnsServer {
        let zone = Arc::new(Zone::default());
        // The same port for TCP, for truncated answers: retry until both bind.
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let mut server = ServerFuture::new(Handler(zone.clone()));
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        let task = tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        DnsServer { addr, zone, task }
    }

    /// Sets `name`'s records (A for v4 addresses, AAAA for v6) with `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let key = format!("{}.", name.trim_end_matches('.').to_ascii_lowercase());
        self.zone
            .records
            .lock()
            .unwrap()
            .insert(key, (addrs.to_vec(), ttl));
    }

    pub fn mode(&self, mode: Mode) {
        self.zone.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Queries answered (or refused) so far.
    pub fn queries(&self) -> usize {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Stops answering: the sockets are closed.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
