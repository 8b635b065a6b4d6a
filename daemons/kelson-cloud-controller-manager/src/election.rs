//! Which node announces an address: rendezvous hashing, as MetalLB's L2 mode does.
//!
//! Every candidate node gets the score `sha256(node + "#" + ip)`; the lowest score wins. The
//! choice depends only on the set of candidates, so every observer with the same view agrees,
//! addresses spread evenly over nodes, and when a node leaves only the addresses it held move
//! (the others keep their announcer, so their clients' neighbour entries stay valid).

use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// The announcer of `ip` among `candidates` (order does not matter), or None if there are none.
pub fn choose<'a>(ip: IpAddr, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|n| {
            let mut h = Sha256::new();
            h.update(n.as_bytes());
            h.update(b"#");
            h.update(ip.to_string().as_bytes());
            (h.finalize(), n)
        })
        .min()
        .map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_minimal_movement() {
        let nodes = ["a", "b", "c", "d"];
        let mut moved = 0;
        let mut per_node = std::collections::HashMap::new();
        for i in 1..=200u32 {
            let ip: IpAddr = format!("10.9.{}.{}", i / 250, i % 250).parse().unwrap();
            let all = choose(ip, nodes).unwrap();
            let rev: Vec<&str> = nodes.iter().rev().copied().collect();
            assert_eq!(choose(ip, rev), Some(all), "order must not matter");
            *per_node.entry(all).or_insert(0) += 1;
            // Removing "a" only moves addresses "a" held.
            let without_a = choose(ip, ["b", "c", "d"]).unwrap();
            if all != "a" {
                assert_eq!(without_a, all);
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
        assert_eq!(per_node.len(), 4, "addresses spread over all nodes");
        assert_eq!(
            choose("10.0.0.1".parse().unwrap(), Vec::<&str>::new()),
            None
        );
    }
}
