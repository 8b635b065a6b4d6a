//! The announcer on its own, for both address families: a neighbour that cached the old
//! holder's MAC switches to the new holder on the gratuitous ARP (IPv4) or the unsolicited
//! Neighbor Advertisement (IPv6) alone, without sending anything itself. Needs root.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use kelson_cloud_controller_manager::announce::Announcer;

/// Resolves `ip` from the client (any TCP answer, even a reset, needs the neighbour entry).
fn touch(lab: &Lab, ip: IpAddr) {
    let url = match ip {
        IpAddr::V4(_) => format!("http://{ip}:9/"),
        IpAddr::V6(_) => format!("http://[{ip}]:9/"),
    };
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.host("client").netns,
            "curl",
            "-g",
            "-s",
            "--noproxy",
            "*",
            "-m",
            "1",
            &url,
        ])
        .output();
}

async fn moves_by_announcement(ip: &str) {
    require_root();
    let lab = Lab::new(&[("n1", 11), ("n2", 12), ("client", 2)]);
    let v6 = ip.contains(':');
    if v6 {
        for (h, octet) in [("n1", 11), ("n2", 12), ("client", 2)] {
            run_ok(&[
                "ip",
                "-n",
                &lab.host(h).netns,
                "addr",
                "add",
                &format!("fd77::{octet}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
    }
    let ip: IpAddr = ip.parse().unwrap();
    let a1 = Announcer::start(Some(&lab.host("n1").netns), "eth0").unwrap();
    let a2 = Announcer::start(Some(&lab.host("n2").netns), "eth0").unwrap();
    assert_eq!(
        kelson_cloud_controller_manager::announce::format_mac(&a1.mac()),
        lab.host("n1").mac
    );

    a1.add(ip).await.unwrap();
    a1.announce(ip).await.unwrap();
    let ips = ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.neighbor_mac("client", &ips).as_deref() != Some(lab.host("n1").mac.as_str()) {
        assert!(
            Instant::now() < deadline,
            "client never resolved {ip} to n1"
        );
        touch(&lab, ip);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a1.del(ip).await.unwrap();
    a1.del(ip)
        .await
        .expect("deleting an absent address is fine");
    assert!(!lab.has_address("n1", &ips));
    a2.add(ip).await.unwrap();
    a2.add(ip).await.expect("adding twice is fine");
    a2.announce(ip).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.neighbor_mac("client", &ips).as_deref() != Some(lab.host("n2").mac.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the announcement did not update the client's entry: {:?}",
            lab.neighbor_mac("client", &ips)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn gratuitous_arp_moves_ipv4_neighbour() {
    moves_by_announcement("10.77.0.100").await;
}

#[tokio::test]
async fn unsolicited_na_moves_ipv6_neighbour() {
    moves_by_announcement("fd77::100").await;
}

#[test]
fn missing_interface_and_netns_are_errors() {
    require_root();
    let lab = Lab::new(&[("n1", 11)]);
    let e = Announcer::start(Some(&lab.host("n1").netns), "nope0").unwrap_err();
    assert!(e.to_string().contains("nope0"), "{e}");
    let e = Announcer::start(Some("kccm-no-such-netns"), "eth0").unwrap_err();
    assert!(e.to_string().contains("kccm-no-such-netns"), "{e}");
}
