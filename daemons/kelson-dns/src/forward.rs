//! Forwarding names outside the cluster zone to the upstream resolvers, with a cache.
//!
//! Why not `hickory-resolver`: a forwarder must pass the upstream's answer through as it is —
//! response code, CNAME chains, the authority section with the SOA that makes negative caching
//! work (RFC 2308) — whereas a resolver's `Lookup` keeps only the answer records and does its
//! own caching and CNAME chasing. So the exchange here is a plain DNS client built on
//! `hickory-proto` messages: one fresh UDP socket per upstream query (a random source port and
//! a random ID against spoofed answers, and no demultiplexing state to share between tasks),
//! falling back to TCP when the UDP answer is truncated, trying the upstreams in order until
//! one answers within the timeout.
//!
//! The cache is an LRU map bounded in entries (`lru`), keyed by lower-case name, type, class
//! and the DO bit. A positive answer lives for the smallest TTL among its records, a negative
//! one for the SOA's `min(TTL, MINIMUM)`, both capped (CoreDNS's `cache` defaults: 3600 s and
//! 1800 s); SERVFAIL, answers with TTL 0 and negative answers without SOA are not cached. On a
//! hit the TTLs are lowered by the entry's age, so downstream caches never hold a record past
//! the upstream's deadline.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use lru::LruCache;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The EDNS payload size we advertise upstream (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream answered {name} {qtype}: {last}")]
    Exhausted {
        name: String,
        qtype: RecordType,
        last: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
}

#[derive(Debug)]
struct Entry {
    msg: Arc<Message>,
    stored: Instant,
    expires: Instant,
}

/// Whether an answer came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
}

/// Counters read by /metrics and D-Bus.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits_success: AtomicU64,
    pub hits_denial: AtomicU64,
    pub misses: AtomicU64,
}

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    max_ttl: u32,
    max_negative_ttl: u32,
    cache: Mutex<LruCache<CacheKey, Entry>>,
    pub stats: CacheStats,
}

/// Options of a [`Forwarder`].
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    pub cache_size: usize,
    pub max_ttl: u32,
    pub max_negative_ttl: u32,
}

impl Forwarder {
    pub fn new(o: ForwarderOptions) -> Forwarder {
        Forwarder {
            upstreams: o.upstreams,
            timeout: o.timeout,
            max_ttl: o.max_ttl,
            max_negative_ttl: o.max_negative_ttl,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(o.cache_size).unwrap_or(NonZeroUsize::MIN),
            )),
            stats: CacheStats::default(),
        }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    pub fn cache_len(&self) -> usize {
        self.cache.lock().len()
    }

    /// Drops every cached answer; returns how many there were.
    pub fn flush(&self) -> usize {
        let mut c = self.cache.lock();
        let n = c.len();
        c.clear();
        n
    }

    /// The answer to `query` (its name as asked, any case), from the cache or an upstream.
    /// The returned message's records carry TTLs already lowered by the time spent cached.
    pub async fn resolve(
        &self,
        query: &Query,
        dnssec_ok: bool,
    ) -> Result<(Message, Source), ForwardError> {
        let key = CacheKey {
            name: query.name().to_ascii().to_ascii_lowercase(),
            qtype: u16::from(query.query_type()),
            qclass: u16::from(query.query_class()),
            dnssec_ok,
        };
        if let Some((msg, age)) = self.cached(&key) {
            let counter = if msg.answers.is_empty() {
                &self.stats.hits_denial
            } else {
                &self.stats.hits_success
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut out = (*msg).clone();
            for r in out
                .answers
                .iter_mut()
                .chain(out.authorities.iter_mut())
                .chain(out.additionals.iter_mut())
            {
                r.ttl = r.ttl.saturating_sub(age);
            }
            return Ok((out, Source::Cache));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let msg = self.exchange_any(query, dnssec_ok).await?;
        if let Some(ttl) = self.cache_ttl(&msg) {
            let now = Instant::now();
            self.cache.lock().put(
                key,
                Entry {
                    msg: Arc::new(msg.clone()),
                    stored: now,
                    expires: now + Duration::from_secs(ttl.into()),
                },
            );
        }
        Ok((msg, Source::Upstream))
    }

    /// A live cache entry and its age in whole seconds; expired entries are removed.
    fn cached(&self, key: &CacheKey) -> Option<(Arc<Message>, u32)> {
        let mut c = self.cache.lock();
        let now = Instant::now();
        match c.get(key) {
            Some(e) if e.expires > now => {
                Some((e.msg.clone(), now.duration_since(e.stored).as_secs() as u32))
            }
            Some(_) => {
                c.pop(key);
                None
            }
            None => None,
        }
    }

    /// How long `msg` may be cached, or None.
    fn cache_ttl(&self, msg: &Message) -> Option<u32> {
        let rcode = msg.metadata.response_code;
        if msg.metadata.truncation {
            return None;
        }
        let ttl = match rcode {
            ResponseCode::NoError if !msg.answers.is_empty() => msg
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .map(|t| t.min(self.max_ttl)),
            ResponseCode::NoError | ResponseCode::NXDomain => msg
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .map(|t| t.min(self.max_negative_ttl)),
            _ => None,
        }?;
        (ttl > 0).then_some(ttl)
    }

    async fn exchange_any(&self, query: &Query, dnssec_ok: bool) -> Result<Message, ForwardError> {
        let mut last = String::from("no upstreams");
        for up in &self.upstreams {
            match tokio::time::timeout(self.timeout, exchange(*up, query, dnssec_ok)).await {
                Ok(Ok(m)) => return Ok(m),
                Ok(Err(e)) => last = format!("{up}: {e}"),
                Err(_) => last = format!("{up}: timed out after {:?}", self.timeout),
            }
            tracing::debug!(upstream = %up, error = %last, "upstream failed; trying the next");
        }
        Err(ForwardError::Exhausted {
            name: query.name().to_string(),
            qtype: query.query_type(),
            last,
        })
    }
}

fn request_bytes(query: &Query, dnssec_ok: bool) -> std::io::Result<(u16, Vec<u8>)> {
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(dnssec_ok);
    m.set_edns(edns);
    let bytes = m.to_vec().map_err(std::io::Error::other)?;
    Ok((id, bytes))
}

/// Whether `resp` answers our request `id` for `query`.
fn matches(resp: &Message, id: u16, query: &Query) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.queries.len() == 1
        && resp.queries[0].query_type() == query.query_type()
        && resp.queries[0].name().eq_ignore_root(query.name())
}

/// One query to one upstream: UDP, then TCP if the answer was truncated.
pub async fn exchange(up: SocketAddr, query: &Query, dnssec_ok: bool) -> std::io::Result<Message> {
    let (id, bytes) = request_bytes(query, dnssec_ok)?;
    let bind: SocketAddr = if up.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Garbage or a stale answer on our port: keep waiting (bounded by the caller's timeout).
        let Ok(resp) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if !matches(&resp, id, query) {
            continue;
        }
        if resp.metadata.truncation {
            return exchange_tcp(up, query, dnssec_ok).await;
        }
        return Ok(resp);
    }
}

/// One query over TCP (RFC 1035 4.2.2: two-byte length prefix).
pub async fn exchange_tcp(
    up: SocketAddr,
    query: &Query,
    dnssec_ok: bool,
) -> std::io::Result<Message> {
    let (id, bytes) = request_bytes(query, dnssec_ok)?;
    let mut s = TcpStream::connect(up).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    let resp = Message::from_vec(&buf).map_err(std::io::Error::other)?;
    if !matches(&resp, id, query) {
        return Err(std::io::Error::other("TCP answer does not match the query"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    fn fwd() -> Forwarder {
        Forwarder::new(ForwarderOptions {
            upstreams: vec![],
            timeout: Duration::from_millis(10),
            cache_size: 2,
            max_ttl: 100,
            max_negative_ttl: 7,
        })
    }

    #[test]
    fn cache_ttls() {
        let f = fwd();
        let n = Name::from_ascii("a.test.").unwrap();
        let mut m = Message::response(1, OpCode::Query);
        m.add_answer(Record::from_rdata(
            n.clone(),
            300,
            RData::A(A::new(1, 2, 3, 4)),
        ));
        m.add_answer(Record::from_rdata(
            n.clone(),
            60,
            RData::A(A::new(1, 2, 3, 5)),
        ));
        assert_eq!(f.cache_ttl(&m), Some(60));
        m.answers[1].ttl = 6000;
        assert_eq!(f.cache_ttl(&m), Some(100));
        m.answers[0].ttl = 0;
        assert_eq!(f.cache_ttl(&m), None);
        let mut neg = Message::response(1, OpCode::Query);
        neg.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(f.cache_ttl(&neg), None, "no SOA: not cached");
        let soa = SOA::new(n.clone(), n.clone(), 1, 1, 1, 1, 30);
        neg.add_authority(Record::from_rdata(n.clone(), 3600, RData::SOA(soa)));
        assert_eq!(f.cache_ttl(&neg), Some(7));
        neg.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(f.cache_ttl(&neg), None);
    }

    #[tokio::test]
    async fn unreachable_upstreams_error() {
        let f = Forwarder::new(ForwarderOptions {
            // Nothing listens on the discard port of loopback; the timeout bounds the wait.
            upstreams: vec!["127.0.0.1:9".parse().unwrap()],
            timeout: Duration::from_millis(200),
            cache_size: 2,
            max_ttl: 100,
            max_negative_ttl: 7,
        });
        let q = Query::query(Name::from_ascii("a.test.").unwrap(), RecordType::A);
        assert!(f.resolve(&q, false).await.is_err());
        assert_eq!(f.stats.misses.load(Ordering::Relaxed), 1);
        assert_eq!(f.cache_len(), 0);
    }
}
