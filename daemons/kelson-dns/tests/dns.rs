//! kelson-dns against a real control plane (kelson-kv + kelson-apiserver): Services and
//! EndpointSlices are created directly with the client (no controller manager), the daemon
//! forwards to a stub upstream on loopback (never the real internet), and it is queried with
//! hickory-proto messages over UDP and TCP, and with the real `busybox nslookup` from a network
//! namespace the test creates.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_dns::stub::StubUpstream;
use kelson_testsupport::probe::http_get;
use kelson_testsupport::{free_port, ChildGuard, ControlPlane, DbusDaemon};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[zbus::proxy(
    interface = "io.kelson.DNS1",
    default_service = "io.kelson.DNS1",
    default_path = "/io/kelson/DNS1"
)]
trait Dns1 {
    #[zbus(property)]
    fn records(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn cache_hits(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn cache_misses(&self) -> zbus::Result<u64>;
    fn flush_cache(&self) -> zbus::Result<u64>;
}

fn name(s: &str) -> Name {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).unwrap()
}

fn query_msg(n: &str, t: RecordType) -> (u16, Vec<u8>) {
    let id: u16 = rand_id();
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(n), t));
    (id, m.to_vec().unwrap())
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 65536) as u16
}

/// One query over UDP; None on timeout (1 s).
async fn try_udp(server: SocketAddr, n: &str, t: RecordType) -> Option<Message> {
    let (id, bytes) = query_msg(n, t);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    sock.send(&bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let len = sock.recv(&mut buf).await.ok()?;
            if let Ok(m) = Message::from_vec(&buf[..len]) {
                if m.metadata.id == id {
                    return Some(m);
                }
            }
        }
    })
    .await
    .ok()
    .flatten()
}

async fn udp(server: SocketAddr, n: &str, t: RecordType) -> Message {
    try_udp(server, n, t)
        .await
        .unwrap_or_else(|| panic!("no UDP answer for {n} {t} from {server}"))
}

async fn tcp(server: SocketAddr, n: &str, t: RecordType) -> Message {
    let (id, bytes) = query_msg(n, t);
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    s.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut len))
        .await
        .expect("TCP answer in time")
        .unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    let m = Message::from_vec(&buf).unwrap();
    assert_eq!(m.metadata.id, id);
    m
}

/// The answer section rendered as strings (addresses, targets, SRV "port target").
fn data(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::CNAME(c) => c.0.to_string(),
            RData::PTR(p) => p.0.to_string(),
            RData::SRV(s) => format!("{} {}", s.port, s.target),
            other => format!("{other:?}"),
        })
        .collect();
    v.sort();
    v
}

struct Env {
    cp: ControlPlane,
    client: kube::Client,
    upstream: StubUpstream,
}

impl Env {
    async fn start() -> Env {
        let cp = ControlPlane::start().await.expect("control plane starts");
        let client = cp.client().await.expect("client");
        let upstream = StubUpstream::start(
            "127.0.0.1:0".parse().unwrap(),
            "example.test",
            &[("h1.example.test", "192.0.2.1".parse().unwrap(), 300)],
            60,
        )
        .await
        .unwrap();
        Env {
            cp,
            client,
            upstream,
        }
    }

    /// web (ClusterIP, named port http/80), db (headless, named port pg; endpoints db-0 ready
    /// with a hostname, one ready without, one not ready), ext (ExternalName h1.example.test).
    /// Returns web's cluster IP.
    async fn create_objects(&self) -> String {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let pp = PostParams::default();
        let web = svcs
            .create(
                &pp,
                &serde_json::from_value(json!({
                    "metadata": {"name": "web"},
                    "spec": {"selector": {"app": "web"},
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
                }))
                .unwrap(),
            )
            .await
            .expect("create web");
        svcs.create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "db"},
                "spec": {"clusterIP": "None", "selector": {"app": "db"},
                         "ports": [{"name": "pg", "port": 5432}]}
            }))
            .unwrap(),
        )
        .await
        .expect("create db");
        svcs.create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "ext"},
                "spec": {"type": "ExternalName", "externalName": "h1.example.test"}
            }))
            .unwrap(),
        )
        .await
        .expect("create ext");
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), "default");
        slices
            .create(
                &pp,
                &serde_json::from_value(json!({
                    "metadata": {"name": "db-x1", "labels": {"kubernetes.io/service-name": "db"}},
                    "addressType": "IPv4",
                    "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                    "endpoints": [
                        {"addresses": ["10.244.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                        {"addresses": ["10.244.0.6"], "conditions": {"ready": true}},
                        {"addresses": ["10.244.0.7"], "conditions": {"ready": false}}
                    ]
                }))
                .unwrap(),
            )
            .await
            .expect("create slice");
        web.spec
            .and_then(|s| s.cluster_ip)
            .filter(|ip| ip.parse::<IpAddr>().is_ok())
            .expect("web got a cluster IP")
    }

    fn start_dns(&self, listen: &[SocketAddr], extra: &[&str]) -> ChildGuard {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelson-dns"));
        cmd.arg("--kubeconfig")
            .arg(self.cp.kubeconfig_path())
            .args(["--upstream", &self.upstream.addr().to_string()])
            .args(["--log-level", "info,kelson_dns=debug"])
            .args(extra);
        for l in listen {
            cmd.args(["--listen", &l.to_string()]);
        }
        let log = self.cp.dir().join(format!("dns-{}.log", listen[0].port()));
        ChildGuard::spawn("kelson-dns", cmd, &log).expect("kelson-dns starts")
    }
}

/// Waits until `server` answers `web` with an address (the daemon is up and synced).
async fn wait_serving(dns: &mut ChildGuard, server: SocketAddr, web_ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = try_udp(server, "web.default.svc.cluster.local", RecordType::A).await {
            if data(&m) == [web_ip] {
                return;
            }
        }
        assert!(dns.is_running(), "kelson-dns exited:\n{}", dns.log_tail(40));
        assert!(
            Instant::now() < deadline,
            "kelson-dns did not serve web in time:\n{}",
            dns.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric line starting {prefix:?} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_records_forwarding_cache_and_bad_input() {
    let env = Env::start().await;
    let web_ip = env.create_objects().await;
    let bus = DbusDaemon::start().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut dns = env.start_dns(
        &[listen],
        &["--dbus-address", bus.address(), "--metrics-addr", &metrics],
    );
    wait_serving(&mut dns, listen, &web_ip).await;

    // ClusterIP service: A over UDP and TCP, authoritative.
    let m = udp(listen, "web.default.svc.cluster.local", RecordType::A).await;
    assert!(m.metadata.authoritative);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let m = tcp(listen, "WEB.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), std::slice::from_ref(&web_ip));
    // SRV for the named port, with the target's address as additional.
    let m = udp(
        listen,
        "_http._tcp.web.default.svc.cluster.local",
        RecordType::SRV,
    )
    .await;
    assert_eq!(data(&m), ["80 web.default.svc.cluster.local."]);
    assert!(m
        .additionals
        .iter()
        .any(|r| matches!(&r.data, RData::A(a) if a.0.to_string() == web_ip)));
    // PTR of the cluster IP.
    let ip: std::net::Ipv4Addr = web_ip.parse().unwrap();
    let o = ip.octets();
    let rev = format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]);
    let m = udp(listen, &rev, RecordType::PTR).await;
    assert_eq!(data(&m), ["web.default.svc.cluster.local."]);
    // Headless: the ready endpoints only; hostname records; SRV per endpoint; PTR of a pod IP.
    let m = udp(listen, "db.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), ["10.244.0.5", "10.244.0.6"]);
    let m = udp(listen, "db-0.db.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), ["10.244.0.5"]);
    let m = udp(
        listen,
        "_pg._tcp.db.default.svc.cluster.local",
        RecordType::SRV,
    )
    .await;
    assert_eq!(
        data(&m),
        [
            "5432 10-244-0-6.db.default.svc.cluster.local.",
            "5432 db-0.db.default.svc.cluster.local."
        ]
    );
    let m = udp(listen, "5.0.244.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(data(&m), ["db-0.db.default.svc.cluster.local."]);
    // ExternalName → CNAME.
    let m = udp(listen, "ext.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), ["h1.example.test."]);
    // Pod record.
    let m = udp(
        listen,
        "10-244-1-9.default.pod.cluster.local",
        RecordType::A,
    )
    .await;
    assert_eq!(data(&m), ["10.244.1.9"]);
    // NXDOMAIN with the zone's SOA for a missing service; NODATA for another type.
    let m = udp(listen, "missing.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    assert!(
        m.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA && r.name == name("cluster.local")),
        "{m:?}"
    );
    let m = udp(listen, "web.default.svc.cluster.local", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);

    // Live updates (watch events applied to the zone incrementally): a Service created while
    // serving resolves, and NXDOMAIN again after it is deleted.
    let svcs: Api<Service> = Api::namespaced(env.client.clone(), "default");
    let late = svcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "late"},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
            }))
            .unwrap(),
        )
        .await
        .expect("create late");
    let late_ip = late.spec.unwrap().cluster_ip.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = udp(listen, "late.default.svc.cluster.local", RecordType::A).await;
        if data(&m) == [late_ip.clone()] {
            break;
        }
        assert!(Instant::now() < deadline, "late never resolved: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    svcs.delete("late", &Default::default())
        .await
        .expect("delete late");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = udp(listen, "late.default.svc.cluster.local", RecordType::A).await;
        if m.metadata.response_code == ResponseCode::NXDomain {
            break;
        }
        assert!(Instant::now() < deadline, "late still answers: {m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(m.answers.is_empty());
    assert!(m
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA));

    // A headless endpoint change shows within 1 s.
    let slices: Api<EndpointSlice> = Api::namespaced(env.client.clone(), "default");
    let changed = Instant::now();
    slices
        .patch(
            "db-x1",
            &PatchParams::default(),
            &Patch::Merge(json!({"endpoints": [
                {"addresses": ["10.244.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.244.0.8"], "conditions": {"ready": true}}
            ]})),
        )
        .await
        .unwrap();
    loop {
        let m = udp(listen, "db.default.svc.cluster.local", RecordType::A).await;
        if data(&m) == ["10.244.0.5", "10.244.0.8"] {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "endpoint change not visible within 1 s: {:?}",
            data(&m)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("endpoint change visible after {:?}", changed.elapsed());

    // Forwarding: the first query goes upstream, the second is served from the cache.
    assert_eq!(env.upstream.queries(), 0);
    let m = udp(listen, "h1.example.test", RecordType::A).await;
    assert_eq!(data(&m), ["192.0.2.1"]);
    assert!(!m.metadata.authoritative);
    assert!(m.metadata.recursion_available);
    assert_eq!(env.upstream.queries(), 1);
    let m = udp(listen, "h1.example.test", RecordType::A).await;
    assert_eq!(data(&m), ["192.0.2.1"]);
    assert!(m.answers[0].ttl <= 300);
    assert_eq!(
        env.upstream.queries(),
        1,
        "second query served from the cache"
    );
    // The upstream's NXDOMAIN passes through (and is cached as a denial).
    let m = udp(listen, "nope.example.test", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let _ = udp(listen, "nope.example.test", RecordType::A).await;
    assert_eq!(env.upstream.queries(), 2);

    let text = http_get(&metrics, "/metrics").await;
    assert_eq!(
        metric(
            &text,
            "coredns_cache_hits_total{server=\"dns://kelson-dns\",type=\"success\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "coredns_cache_hits_total{server=\"dns://kelson-dns\",type=\"denial\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "coredns_cache_misses_total"), 2.0);
    assert!(text.contains("coredns_dns_requests_total{"), "{text}");
    assert!(text.contains("proto=\"tcp\""), "{text}");
    assert!(
        text.contains("coredns_dns_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("rcode=\"NXDOMAIN\""), "{text}");

    // D-Bus: counters, records, FlushCache.
    let conn = zbus::connection::Builder::address(bus.address())
        .unwrap()
        .build()
        .await
        .unwrap();
    let d = Dns1Proxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(d.cache_hits().await.unwrap(), 2);
    assert_eq!(d.cache_misses().await.unwrap(), 2);
    // web: A, SRV, PTR; db: 2 A, 2 hostname A, 2 SRV, 2 PTR; ext: CNAME (plus the default
    // namespace's `kubernetes` service if the API server created one: A + PTR + SRV).
    let records = d.records().await.unwrap();
    assert!(records == 12 || records == 15, "records = {records}");
    assert_eq!(d.flush_cache().await.unwrap(), 2);
    let _ = udp(listen, "h1.example.test", RecordType::A).await;
    assert_eq!(
        env.upstream.queries(),
        3,
        "the flushed entry was fetched again"
    );

    // Bad input: garbage, short headers, bogus counts, responses, label loops — over UDP and
    // TCP. None may take the server down; parseable headers get FORMERR.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(listen).await.unwrap();
    let mut packets: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x12],
        vec![0; 11],
        // Header says 5 questions, none follow.
        vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0],
        // One question whose name is a compression pointer to itself.
        vec![
            0xab, 0xce, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1,
        ],
        // A label running past the end.
        vec![
            0xab, 0xcf, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, b'a', b'b',
        ],
        // A response (QR set): must be ignored, not answered.
        vec![0xab, 0xd0, 0x81, 0x80, 0x00, 0x00, 0, 0, 0, 0, 0, 0],
    ];
    let mut seed: u32 = 0x2545_f491;
    for i in 0..200 {
        let len = (i % 120) + 1;
        let p: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        packets.push(p);
    }
    for p in &packets {
        sock.send(p).await.unwrap();
    }
    let mut formerr = 0;
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await
    {
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.response_code == ResponseCode::FormErr {
                formerr += 1;
            }
        }
    }
    assert!(
        formerr >= 2,
        "FORMERR answers to malformed queries: {formerr}"
    );
    for p in packets.iter().take(20) {
        if let Ok(mut s) = tokio::net::TcpStream::connect(listen).await {
            let mut framed = (p.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(p);
            let _ = s.write_all(&framed).await;
        }
    }
    // A length prefix promising more than is sent, then a hang-up.
    if let Ok(mut s) = tokio::net::TcpStream::connect(listen).await {
        let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dns.is_running(), "kelson-dns died:\n{}", dns.log_tail(40));
    let m = udp(listen, "web.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), std::slice::from_ref(&web_ip));
    let m = tcp(listen, "web.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(data(&m), [web_ip]);

    dns.terminate(Duration::from_secs(10)).unwrap();
}

/// A network namespace with a veth pair to the host, deleted on drop. The host end gets
/// `host_ip`, the namespace end `ns_ip` (a /30 derived from the pid, so parallel test
/// processes do not collide).
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn create() -> Netns {
        assert!(
            nix_is_root(),
            "this test needs root (network namespaces, port 53)"
        );
        let k = std::process::id() % 16000;
        let name = format!("kdns{k}");
        let host_if = format!("kdh{k}");
        let ns_if = format!("kdn{k}");
        let host_ip = format!("10.254.{}.{}", k / 64, (k % 64) * 4 + 1);
        let ns_ip = format!("10.254.{}.{}", k / 64, (k % 64) * 4 + 2);
        // Leftovers of a crashed run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        let n = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        n
    }

    /// `ip netns exec` bind-mounts /etc/netns/<name>/resolv.conf over /etc/resolv.conf.
    fn write_resolv_conf(&self, text: &str) {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/resolv.conf"), text).unwrap();
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

fn nix_is_root() -> bool {
    // The effective uid from /proc: no unsafe geteuid() call needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_nslookup_from_a_netns() {
    let out = Command::new("busybox").arg("nslookup").output();
    assert!(
        out.is_ok(),
        "busybox (busybox-static) is required for this test"
    );
    let netns = Netns::create();
    let env = Env::start().await;
    let web_ip = env.create_objects().await;
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // busybox nslookup only talks to port 53: serve there on the host end of the veth.
    let host53: SocketAddr = format!("{}:53", netns.host_ip).parse().unwrap();
    let mut dns = env.start_dns(&[local, host53], &["--no-dbus"]);
    wait_serving(&mut dns, local, &web_ip).await;
    netns.write_resolv_conf(&format!(
        "nameserver {}\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
        netns.host_ip
    ));

    let fqdn = netns.exec(&[
        "busybox",
        "nslookup",
        "web.default.svc.cluster.local",
        &netns.host_ip,
    ]);
    assert!(
        fqdn.contains(&web_ip),
        "nslookup FQDN:\n{fqdn}\n{}",
        dns.log_tail(20)
    );
    // The short name through the pod-style search path in resolv.conf.
    let short = netns.exec(&["busybox", "nslookup", "web"]);
    assert!(short.contains(&web_ip), "nslookup short name:\n{short}");
    let headless = netns.exec(&["busybox", "nslookup", "db.default.svc.cluster.local"]);
    assert!(
        headless.contains("10.244.0.5") && headless.contains("10.244.0.6"),
        "nslookup headless:\n{headless}"
    );
    assert!(
        !headless.contains("10.244.0.7"),
        "not-ready endpoint listed:\n{headless}"
    );
    let srv = netns.exec(&[
        "busybox",
        "nslookup",
        "-type=srv",
        "_pg._tcp.db.default.svc.cluster.local",
    ]);
    assert!(
        srv.contains("5432") && srv.contains("db-0.db.default.svc.cluster.local"),
        "nslookup SRV:\n{srv}"
    );
    let ext = netns.exec(&["busybox", "nslookup", "h1.example.test"]);
    assert!(ext.contains("192.0.2.1"), "nslookup forwarded:\n{ext}");
    let missing = netns.exec(&["busybox", "nslookup", "missing.default.svc.cluster.local"]);
    assert!(
        missing.contains("NXDOMAIN") || missing.contains("can't find"),
        "nslookup missing:\n{missing}"
    );
    dns.terminate(Duration::from_secs(10)).unwrap();
}
