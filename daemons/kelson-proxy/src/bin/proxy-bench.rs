//! proxy-bench: nftables sync times of kelson-proxy's rule generation, as a table.
//!
//! For 1k and 10k services (10 ready endpoints each, one TCP port, ClusterIP + NodePort) it
//! creates a fresh network namespace, runs a full sync (`nft -f` of the whole generated
//! table), then adds one more service and syncs incrementally, and removes one endpoint from
//! one service. Each incremental row is the median of several runs. Times are the proxier's
//! whole sync (render + diff + apply), with the apply part shown separately, and the CPU time
//! of the sync: this process (rendering, and with netlink the kernel's work for our socket)
//! plus the `nft` children. Needs root.
//!
//! Incremental syncs go over netlink (the daemon's default), with `--incremental nft` through
//! `nft -f` (the session 2/3 path), or with `both` alternately within each run on the same
//! table, so before/after are measured back to back under the same load.
//! `PROXY_BENCH_ALL=1` also prints every run's add-one CPU time, and split into this process's
//! user time (rendering, diffing, encoding), its system time (with netlink: the kernel's
//! commit) and the `nft` children.
//!
//! Usage: `proxy-bench [--sizes 1000,10000] [--runs 5] [--incremental netlink|nft|both]`

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kelson_proxy::model::{Endpoint, Protocol, ServiceInfo, ServicePortName, State};
use kelson_proxy::nft::Nft;
use kelson_proxy::proxier::NftProxier;

struct Netns(String);

impl Netns {
    fn new(name: &str) -> anyhow::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        let st = Command::new("ip").args(["netns", "add", name]).status()?;
        if !st.success() {
            bail!("ip netns add {name} failed (root needed)");
        }
        Ok(Netns(name.to_string()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if std::env::var_os("PROXY_BENCH_KEEP_NETNS").is_some() {
            eprintln!("keeping netns {}", self.0);
            return;
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn service(i: usize) -> (ServicePortName, ServiceInfo) {
    let ip = |base: [u8; 2], n: usize| IpAddr::from([base[0], base[1], (n >> 8) as u8, n as u8]);
    let endpoints = (0..10)
        .map(|e| Endpoint {
            ip: ip([10, 100 + (e as u8)], i),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            local: e % 2 == 0,
        })
        .collect();
    (
        ServicePortName {
            namespace: format!("ns{}", i % 50),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
        },
        ServiceInfo {
            cluster_ips: vec![ip([10, 96], i)],
            port: 80,
            node_port: Some(30000 + (i % 2700) as u16).filter(|_| i < 2700),
            endpoints,
            ..Default::default()
        },
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

/// CPU time (user + system) of the waited-for children so far: the `nft` processes, whose
/// system time includes the kernel's work for them (cache dumps, the commit). Unlike wall
/// time it does not grow with other processes' load on a shared machine.
/// Plus this process's own CPU time: with netlink the kernel's commit work is system time of
/// our `sendmsg`.
fn children_cpu() -> Duration {
    let (u, s, c) = cpu_split();
    u + s + c
}

/// (this process's user time, its system time, the children's user + system time).
fn cpu_split() -> (Duration, Duration, Duration) {
    use nix::sys::resource::{getrusage, UsageWho};
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    let me = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let ch = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    (
        tv(me.user_time()),
        tv(me.system_time()),
        tv(ch.user_time()) + tv(ch.system_time()),
    )
}

type Sample = (Duration, Duration, Duration);

/// Medians of each column separately (CPU time is the robust one under load).
fn col(v: &[Sample], i: usize) -> Duration {
    median(
        v.iter()
            .map(|t| [t.0, t.1, t.2][i])
            .collect::<Vec<Duration>>(),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut sizes = vec![1000usize, 10000];
    let mut runs = 5usize;
    // Modes of the incremental syncs, alternated within each run when both.
    let mut modes = vec![true];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes N,M")?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--incremental" => {
                modes = match args.next().as_deref() {
                    Some("netlink") => vec![true],
                    Some("nft") => vec![false],
                    Some("both") => vec![false, true],
                    _ => bail!("--incremental netlink|nft|both"),
                }
            }
            _ => bail!(
                "usage: proxy-bench [--sizes 1000,10000] [--runs 5] [--incremental netlink|nft|both]"
            ),
        }
    }
    println!(
        "| services | endpoints | rules | incremental via | full sync ms (apply ms, CPU ms, script KiB) | add 1 service ms (apply ms, CPU ms) | remove 1 endpoint ms (apply ms, CPU ms) |"
    );
    println!("|---:|---:|---:|---|---:|---:|---:|");
    for n in sizes {
        let ns = Netns::new(&format!("kpx-bench-{}", std::process::id()))?;
        let mut p = NftProxier::new(
            Nft::in_netns(&ns.0),
            &["10.100.0.0/14".to_string()],
            false,
            &[],
        );
        let mut state: State = (0..n).map(service).collect();
        let t = Instant::now();
        let c = children_cpu();
        let full = p.sync(&state, true).await.context("full sync")?;
        let full_total = t.elapsed();
        let full_cpu = children_cpu() - c;
        let mut adds: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
        let mut removes: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
        let mut splits: Vec<Vec<String>> = vec![Vec::new(); modes.len()];
        let mut next = n;
        for r in 0..runs {
            for (m, &netlink) in modes.iter().enumerate() {
                p.set_netlink(netlink);
                let (k, v) = service(next);
                next += 1;
                state.insert(k, v);
                let t = Instant::now();
                let c = children_cpu();
                let c0 = cpu_split();
                let s = p.sync(&state, false).await.context("add one")?;
                let c1 = cpu_split();
                splits[m].push(format!(
                    "{}/{}/{}",
                    ms(c1.0 - c0.0),
                    ms(c1.1 - c0.1),
                    ms(c1.2 - c0.2)
                ));
                if netlink && (s.netlink == 0 || s.nft_fallbacks > 0) {
                    bail!("add one did not go over netlink: {s:?}");
                }
                adds[m].push((t.elapsed(), s.apply, children_cpu() - c));
                let victim = service(r * modes.len() + m).0;
                state.get_mut(&victim).unwrap().endpoints.pop();
                let t = Instant::now();
                let c = children_cpu();
                let s = p.sync(&state, false).await.context("remove endpoint")?;
                removes[m].push((t.elapsed(), s.apply, children_cpu() - c));
            }
        }
        for (m, &netlink) in modes.iter().enumerate() {
            println!(
                "| {n} | {} | {} | {} | {} ({}, {}, {}) | {} ({}, {}) | {} ({}, {}) |",
                n * 10,
                full.rules,
                if netlink { "netlink" } else { "nft -f" },
                ms(full_total),
                ms(full.apply),
                ms(full_cpu),
                full.script_bytes / 1024,
                ms(col(&adds[m], 0)),
                ms(col(&adds[m], 1)),
                ms(col(&adds[m], 2)),
                ms(col(&removes[m], 0)),
                ms(col(&removes[m], 1)),
                ms(col(&removes[m], 2))
            );
            if std::env::var_os("PROXY_BENCH_ALL").is_some() {
                let cpu: Vec<String> = adds[m].iter().map(|s| ms(s.2)).collect();
                println!("  add-one CPU ms, every run: {}", cpu.join(", "));
                println!(
                    "  add-one CPU ms as proxy user/proxy system/nft children: {}",
                    splits[m].join(", ")
                );
            }
        }
    }
    Ok(())
}
