//! Runs one pod sandbox (and a busybox container in it) through CRI against a containerd
//! socket and prints what happens: a quick check that a machine's runtime, runc and CNI work
//! the way the kubelet needs. Usage: `cri-smoke SOCKET [IMAGE]`; everything is removed after.

use std::collections::HashMap;

use k8s_cri::v1 as cri;
use kelson_kubelet::cri::Cri;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let socket = args
        .next()
        .unwrap_or_else(|| "/run/containerd/containerd.sock".into());
    let image = args
        .next()
        .unwrap_or_else(|| "kelson.local/busybox:latest".into());
    let host_net = std::env::var("HOSTNET").is_ok();
    let c = Cri::connect(std::path::Path::new(&socket))?;
    println!("version: {:?}", c.version().await?);
    let uid = format!("smoke-{}", std::process::id());
    let ns_mode = if host_net {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    } as i32;
    let sb = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "smoke".into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "smoke".into(),
        log_directory: format!("/tmp/{uid}"),
        labels: HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.clone())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: std::env::var("CGROUP_PARENT").unwrap_or_default(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: ns_mode,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = c.run_pod_sandbox(sb.clone()).await;
    println!("RunPodSandbox: {id:?}");
    let id = id?;
    println!("status: {:?}", c.pod_sandbox_status(&id).await?.network);
    let img = c.image_status(&image).await?.map(|i| i.id).unwrap_or(image);
    let cfg = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: img,
            ..Default::default()
        }),
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo smoke-ok; ip addr 2>/dev/null | grep inet".into(),
        ],
        log_path: "c.log".into(),
        ..Default::default()
    };
    let cid = c.create_container(&id, cfg, sb).await;
    println!("CreateContainer: {cid:?}");
    if let Ok(cid) = cid {
        println!("StartContainer: {:?}", c.start_container(&cid).await);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let st = c.container_status(&cid).await?;
        println!("exit {} reason {}", st.exit_code, st.reason);
        println!(
            "log: {}",
            std::fs::read_to_string(format!("/tmp/{uid}/c.log")).unwrap_or_default()
        );
        let _ = c.remove_container(&cid).await;
    }
    c.stop_pod_sandbox(&id).await?;
    c.remove_pod_sandbox(&id).await?;
    let _ = std::fs::remove_dir_all(format!("/tmp/{uid}"));
    Ok(())
}
