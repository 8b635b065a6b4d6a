//! `kelsonctl pki init` through the real binary: creates the files, a second run keeps them.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn kelsonctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kelsonctl"))
        .args(args)
        .output()
        .expect("running kelsonctl")
}

#[test]
fn pki_init_twice_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let d = pki.to_str().unwrap();
    let out = kelsonctl(&["pki", "init", "--dir", d, "--hosts", "kv1.example,10.9.8.7"]);
    assert!(out.status.success(), "{out:?}");
    let names = [
        "ca.crt",
        "ca.key",
        "store-ca.crt",
        "store-ca.key",
        "kv-server.crt",
        "kv-server.key",
        "kv-peer.crt",
        "kv-peer.key",
        "kv-client.crt",
        "kv-client.key",
    ];
    let first: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(pki.join(n)).unwrap())
        .collect();
    for n in names {
        let mode = std::fs::metadata(pki.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, if n.ends_with(".key") { 0o600 } else { 0o644 }, "{n}");
    }

    let out = kelsonctl(&["pki", "init", "--dir", d, "--hosts", "kv1.example,10.9.8.7"]);
    assert!(out.status.success(), "{out:?}");
    let second: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(pki.join(n)).unwrap())
        .collect();
    assert_eq!(first, second, "second init must not rotate anything");

    let out = kelsonctl(&["pki", "show", "--dir", d]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CN=kube-apiserver-etcd-client"), "{text}");
    // Which CA issued what: the store's leaves come from the store CA (CIS 2.7).
    for leaf in ["kv-server.crt", "kv-peer.crt", "kv-client.crt"] {
        let block = text
            .split("\n/")
            .find(|b| b.contains(leaf))
            .unwrap_or_else(|| panic!("{leaf} not shown: {text}"));
        assert!(block.contains("ca:      store-ca.crt"), "{block}");
        assert!(block.contains("issuer:  CN=kelson-store-ca"), "{block}");
    }

    assert!(
        text.contains("kv1.example") && text.contains("10.9.8.7"),
        "{text}"
    );
}

#[test]
fn bad_invocations_fail_cleanly() {
    let out = kelsonctl(&["pki", "init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = kelsonctl(&["pki", "init", "--dir", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error"),
        "{out:?}"
    );
}
