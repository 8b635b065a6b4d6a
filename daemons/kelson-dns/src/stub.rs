//! A tiny authoritative DNS server on UDP, standing in for the node's upstream resolver in
//! tests and in the benchmark (they must never query the real internet).
//!
//! It answers A queries for the names it was given, NXDOMAIN with an SOA (so negative answers
//! are cacheable) for any other name, and counts the queries it received — the count is how a
//! test proves that a second query was served from kelson-dns's cache.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

#[derive(Debug)]
pub struct StubUpstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StubUpstream {
    /// Serves `records` (name without trailing dot → address, TTL) on `bind` (e.g.
    /// 127.0.0.1:0); negative answers carry an SOA of `zone` with minimum `neg_ttl`.
    pub async fn start(
        bind: SocketAddr,
        zone: &str,
        records: &[(&str, Ipv4Addr, u32)],
        neg_ttl: u32,
    ) -> std::io::Result<StubUpstream> {
        let sock = UdpSocket::bind(bind).await?;
        let addr = sock.local_addr()?;
        let map: HashMap<String, (Ipv4Addr, u32)> = records
            .iter()
            .map(|(n, ip, ttl)| (n.to_ascii_lowercase(), (*ip, *ttl)))
            .collect();
        let zone_name = Name::from_ascii(format!("{zone}.")).map_err(std::io::Error::other)?;
        let queries = Arc::new(AtomicUsize::new(0));
        let q2 = queries.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q2.fetch_add(1, Ordering::Relaxed);
                let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
                resp.metadata.authoritative = true;
                resp.metadata.recursion_desired = req.metadata.recursion_desired;
                resp.add_queries(req.queries.clone());
                if let Some(q) = req.queries.first() {
                    let key = q
                        .name()
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    match map.get(&key) {
                        Some((ip, ttl)) if q.query_type() == RecordType::A => {
                            resp.add_answer(Record::from_rdata(
                                q.name().clone(),
                                *ttl,
                                RData::A(A(*ip)),
                            ));
                        }
                        found => {
                            if found.is_none() {
                                resp.metadata.response_code = ResponseCode::NXDomain;
                            }
                            let soa = SOA::new(
                                zone_name.clone(),
                                zone_name.clone(),
                                1,
                                3600,
                                600,
                                86400,
                                neg_ttl,
                            );
                            resp.add_authority(Record::from_rdata(
                                zone_name.clone(),
                                neg_ttl,
                                RData::SOA(soa),
                            ));
                        }
                    }
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        Ok(StubUpstream {
            addr,
            queries,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}
