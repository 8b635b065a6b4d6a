//! The real kubectl (when installed at /usr/bin/kubectl) reads the served documents: a tiny
//! HTTP server answers discovery and OpenAPI requests from this crate's functions exactly as
//! the API server daemon is meant to (content negotiation by `Accept`), and
//! `kubectl api-resources` / `api-versions` / `explain` must succeed and show our data.

use kelson_apiresources::{
    aggregated_discovery, discovery_api_for, discovery_apis, discovery_group_version,
    negotiate_discovery, openapi_v2, openapi_v3, openapi_v3_index, registry, DiscoveryFormat,
};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const KUBECTL: &str = "/usr/bin/kubectl";

fn respond(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut accept = String::new();
    // Bounded header read: at most 100 lines.
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("accept") {
                accept = v.trim().to_string();
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let path = target
        .split('?')
        .next()
        .unwrap_or("/")
        .trim_end_matches('/');
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let format = negotiate_discovery(&accept);
    let aggregated = format != DiscoveryFormat::Legacy;
    let v2 = format == DiscoveryFormat::AggregatedV2;
    let (status, ctype, body): (&str, &str, Vec<u8>) = match path {
        "/api" if aggregated => (
            "200 OK",
            format.content_type(),
            json(aggregated_discovery(true, v2)),
        ),
        "/api" => (
            "200 OK",
            "application/json",
            json(discovery_api_for("127.0.0.1:6443")),
        ),
        "/apis" if aggregated => (
            "200 OK",
            format.content_type(),
            json(aggregated_discovery(false, v2)),
        ),
        "/apis" => ("200 OK", "application/json", json(discovery_apis())),
        "/version" => (
            "200 OK",
            "application/json",
            json(serde_json::json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"})),
        ),
        "/openapi/v2" => ("200 OK", "application/json", openapi_v2().to_vec()),
        "/openapi/v3" => ("200 OK", "application/json", json(openapi_v3_index())),
        p if p.starts_with("/openapi/v3/") => match openapi_v3(p) {
            Some(b) => ("200 OK", "application/json", b.to_vec()),
            None => ("404 Not Found", "application/json", b"{}".to_vec()),
        },
        p => {
            let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
            let doc = match parts.as_slice() {
                ["api", v] => discovery_group_version("", v),
                ["apis", g, v] => discovery_group_version(g, v),
                _ => None,
            };
            match doc {
                Some(d) => ("200 OK", "application/json", json(d)),
                None => ("404 Not Found", "application/json", b"{}".to_vec()),
            }
        }
    };
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)
}

fn kubectl(server: &str, cache: &Path, args: &[&str]) -> String {
    let out = Command::new(KUBECTL)
        .args(["--server", server, "--request-timeout=10s", "--cache-dir"])
        .arg(cache)
        .args(args)
        .env("KUBECONFIG", "/dev/null")
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubectl_reads_discovery_and_openapi_v3() {
    // kubectl is the judge of API compatibility: its absence is a broken test machine.
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is required (preinstalled on these machines)"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    // The server thread ends with the test process; each connection is handled and closed.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = respond(stream);
            });
        }
    });
    let cache = std::env::temp_dir().join(format!(
        "kelson-apiresources-kubectl-{}",
        std::process::id()
    ));

    let resources = kubectl(&server, &cache, &["api-resources", "-o", "wide"]);
    for r in registry::resources() {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().next() == Some(r.resource)),
            "{} missing from:\n{resources}",
            r.resource
        );
    }
    let deploy = resources
        .lines()
        .find(|l| l.starts_with("deployments "))
        .unwrap();
    assert!(deploy.contains("deploy") && deploy.contains("apps/v1") && deploy.ends_with("all"));

    let versions = kubectl(&server, &cache, &["api-versions"]);
    for (g, v) in registry::group_versions() {
        assert!(
            versions.lines().any(|l| l == registry::api_version(g, v)),
            "{g}/{v}"
        );
    }

    let explain = kubectl(&server, &cache, &["explain", "pods.spec.containers.ports"]);
    assert!(explain.contains("containerPort"), "{explain}");
    let explain = kubectl(&server, &cache, &["explain", "deploy.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");
    let _ = std::fs::remove_dir_all(&cache);
}
