//! The DNS front end: `hickory-server` owns the sockets (UDP and TCP per listen address,
//! framing, malformed-packet handling — anything that does not parse gets FORMERR or is
//! dropped before it reaches us) and calls [`Handler`] with one parsed request.
//!
//! The handler answers names in the cluster zone from the current [`Zone`](crate::zone::Zone)
//! snapshot (authoritative, AA set) and everything else through the
//! [`Forwarder`](crate::forward::Forwarder) (RA set, the upstream's response code and sections
//! passed through). Only standard queries with exactly one question are served; other opcodes
//! get NOTIMP, as CoreDNS answers them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo, Server};
use hickory_server::zone_handler::MessageResponseBuilder;

use crate::metrics::{DurationLabels, RequestLabels, ResponseLabels, TypeLabel};
use crate::zone::Answer;
use crate::Dns;

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// CoreDNS's spelling of response codes in metrics.
fn rcode_label(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => u16::from(other).to_string(),
    }
}

/// Answers one listener's requests.
pub struct Handler {
    dns: Arc<Dns>,
    /// `dns://<listen address>`, the `server` label of the metrics.
    server: String,
}

fn failed(meta: Metadata) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: meta,
        counts: HeaderCounts::default(),
    })
}

impl Handler {
    async fn answer<R: ResponseHandler>(&self, request: &Request, mut rh: R) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let builder = MessageResponseBuilder::from_message_request(request);
        if request.metadata.op_code != OpCode::Query {
            meta.response_code = ResponseCode::NotImp;
            return send(&mut rh, builder.build_no_records(meta), meta).await;
        }
        let Ok(info) = request.request_info() else {
            meta.response_code = ResponseCode::FormErr;
            return send(&mut rh, builder.build_no_records(meta), meta).await;
        };
        // EDNS in, EDNS out (RFC 6891 6.1.1), with the client's payload size (at least 512).
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().max(512));
            out
        });
        let mut builder = builder;
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let query = info.query;
        let qtype = query.query_type();
        let name = query.name().to_string();
        let name = name.trim_end_matches('.');
        let empty = || std::iter::empty::<&Record>();

        let zone = self.dns.zone();
        match zone.lookup(name, qtype) {
            Answer::Records {
                answers,
                additionals,
                soa,
            } => {
                meta.authoritative = true;
                let r = builder.build(meta, answers.iter(), empty(), soa, additionals.iter());
                send(&mut rh, r, meta).await
            }
            Answer::NxDomain { soa } => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                let r = builder.build(meta, empty(), empty(), Some(soa), empty());
                send(&mut rh, r, meta).await
            }
            Answer::NotReady => {
                meta.response_code = ResponseCode::ServFail;
                send(&mut rh, builder.build_no_records(meta), meta).await
            }
            Answer::NotOurs => {
                let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
                match self
                    .dns
                    .forwarder
                    .resolve(query.original(), dnssec_ok)
                    .await
                {
                    Ok((msg, _source)) => {
                        meta.response_code = msg.metadata.response_code;
                        meta.authentic_data = msg.metadata.authentic_data;
                        let r = builder.build(
                            meta,
                            msg.answers.iter(),
                            msg.authorities.iter(),
                            empty(),
                            msg.additionals.iter(),
                        );
                        send(&mut rh, r, meta).await
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "forwarding failed");
                        meta.response_code = ResponseCode::ServFail;
                        send(&mut rh, builder.build_no_records(meta), meta).await
                    }
                }
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    rh: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    meta: Metadata,
) -> ResponseInfo {
    match rh.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "sending a response failed");
            let mut meta = meta;
            meta.response_code = ResponseCode::ServFail;
            failed(meta)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let info = self.answer(request, response_handle).await;
        let qtype = request
            .queries
            .queries()
            .first()
            .map(|q| q.query_type().to_string())
            .unwrap_or_else(|| "other".into());
        let proto = match request.protocol() {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            _ => "other",
        };
        let family = if request.src().is_ipv4() { "1" } else { "2" };
        let m = &self.dns.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                server: self.server.clone(),
                zone: ".".into(),
                proto: proto.into(),
                family: family.into(),
                qtype: TypeLabel {
                    r#type: qtype.clone(),
                },
            })
            .inc();
        m.responses
            .get_or_create(&ResponseLabels {
                server: self.server.clone(),
                zone: ".".into(),
                rcode: rcode_label(info.response_code),
            })
            .inc();
        m.duration
            .get_or_create(&DurationLabels {
                server: self.server.clone(),
                zone: ".".into(),
                qtype: TypeLabel { r#type: qtype },
            })
            .observe(start.elapsed().as_secs_f64());
        self.dns.requests_total.fetch_add(1, Ordering::Relaxed);
        info
    }
}

/// The running listeners.
pub struct Listeners {
    servers: Vec<Server<Handler>>,
    addrs: Vec<SocketAddr>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Listeners {
    /// Binds UDP and TCP on each address (port 0 picks one port for both) and serves `dns`.
    pub async fn bind(dns: Arc<Dns>, addrs: &[SocketAddr]) -> std::io::Result<Listeners> {
        let mut servers = Vec::new();
        let mut bound = Vec::new();
        for addr in addrs {
            let udp = tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding UDP {addr}: {e}")))?;
            let local = udp.local_addr()?;
            let tcp = tokio::net::TcpListener::bind(local)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding TCP {local}: {e}")))?;
            let mut server = Server::new(Handler {
                dns: dns.clone(),
                server: format!("dns://{local}"),
            });
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE, 64);
            servers.push(server);
            bound.push(local);
        }
        Ok(Listeners {
            servers,
            addrs: bound,
        })
    }

    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting and waits (bounded) for in-flight requests.
    pub async fn shutdown(mut self) {
        for s in &mut self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(5), s.shutdown_gracefully()).await;
        }
    }
}
