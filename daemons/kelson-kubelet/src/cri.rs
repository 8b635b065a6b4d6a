//! The CRI v1 client: containerd's runtime and image services over its unix socket.
//!
//! tonic has no unix-socket transport of its own; a custom connector hands it a `UnixStream`
//! for every (re)connect, with a placeholder URI (the authority is never resolved). One
//! multiplexed HTTP/2 channel serves every pod worker: clients are cheap clones of it.
//!
//! Every call is bounded by a timeout so a wedged runtime shows as an error (and the node as
//! NotReady) instead of a hung worker; StopContainer gets its grace period on top.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Default bound on a CRI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("connecting to the container runtime at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call}: {status}")]
    Call {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("CRI {0}: the runtime returned no status")]
    Empty(&'static str),
}

impl CriError {
    /// True if the runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == tonic::Code::NotFound)
    }
    /// The runtime's own message (for pod status), without our prefix.
    pub fn message(&self) -> String {
        match self {
            CriError::Call { status, .. } => status.message().to_string(),
            other => other.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, CriError>;

/// A connected CRI client (cheap to clone).
#[derive(Clone, Debug)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn call<T>(name: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| {
        let _ = std::marker::PhantomData::<T>;
        CriError::Call { call: name, status }
    }
}

macro_rules! rpc {
    ($client:expr, $method:ident, $name:literal, $req:expr) => {{
        let mut req = tonic::Request::new($req);
        req.set_timeout(CALL_TIMEOUT);
        $client
            .$method(req)
            .await
            .map(|r| r.into_inner())
            .map_err(call::<()>($name))
    }};
}

impl Cri {
    /// Connects (lazily: the first call dials) to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Cri> {
        let p = path.to_path_buf();
        let channel = Endpoint::try_from("http://cri.invalid")
            .map_err(|source| CriError::Connect {
                path: p.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let p = p.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            }));
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
        })
    }

    /// The raw runtime client, for calls this wrapper does not cover (streaming: server/).
    pub fn runtime_client(&self) -> RuntimeServiceClient<Channel> {
        self.runtime.clone()
    }

    pub async fn version(&self) -> Result<cri::VersionResponse> {
        rpc!(
            self.runtime.clone(),
            version,
            "Version",
            cri::VersionRequest {
                version: "v1".into()
            }
        )
    }

    /// Runtime conditions (RuntimeReady, NetworkReady).
    pub async fn status(&self) -> Result<cri::RuntimeStatus> {
        let r = rpc!(
            self.runtime.clone(),
            status,
            "Status",
            cri::StatusRequest { verbose: false }
        )?;
        r.status.ok_or(CriError::Empty("Status"))
    }

    pub async fn run_pod_sandbox(&self, config: cri::PodSandboxConfig) -> Result<String> {
        let r = rpc!(
            self.runtime.clone(),
            run_pod_sandbox,
            "RunPodSandbox",
            cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }
        )?;
        Ok(r.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        rpc!(
            self.runtime.clone(),
            stop_pod_sandbox,
            "StopPodSandbox",
            cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into()
            }
        )
        .map(|_| ())
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        rpc!(
            self.runtime.clone(),
            remove_pod_sandbox,
            "RemovePodSandbox",
            cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into()
            }
        )
        .map(|_| ())
    }

    pub async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let r = rpc!(
            self.runtime.clone(),
            pod_sandbox_status,
            "PodSandboxStatus",
            cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false
            }
        )?;
        r.status.ok_or(CriError::Empty("PodSandboxStatus"))
    }

    /// Sandboxes whose labels include all of `labels`.
    pub async fn list_pod_sandboxes(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::PodSandbox>> {
        let r = rpc!(
            self.runtime.clone(),
            list_pod_sandbox,
            "ListPodSandbox",
            cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: labels,
                    ..Default::default()
                })
            }
        )?;
        Ok(r.items)
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: cri::ContainerConfig,
        sandbox_config: cri::PodSandboxConfig,
    ) -> Result<String> {
        let r = rpc!(
            self.runtime.clone(),
            create_container,
            "CreateContainer",
            cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.into(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            }
        )?;
        Ok(r.container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        rpc!(
            self.runtime.clone(),
            start_container,
            "StartContainer",
            cri::StartContainerRequest {
                container_id: id.into()
            }
        )
        .map(|_| ())
    }

    /// Stops with SIGTERM, then SIGKILL after `timeout_secs` (the runtime enforces it).
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let mut req = tonic::Request::new(cri::StopContainerRequest {
            container_id: id.into(),
            timeout: timeout_secs,
        });
        req.set_timeout(CALL_TIMEOUT + Duration::from_secs(timeout_secs.max(0) as u64));
        self.runtime
            .clone()
            .stop_container(req)
            .await
            .map(|_| ())
            .map_err(call::<()>("StopContainer"))
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        rpc!(
            self.runtime.clone(),
            remove_container,
            "RemoveContainer",
            cri::RemoveContainerRequest {
                container_id: id.into()
            }
        )
        .map(|_| ())
    }

    /// Containers (any state) whose labels include all of `labels`, optionally in one sandbox.
    pub async fn list_containers(
        &self,
        sandbox_id: Option<&str>,
        labels: HashMap<String, String>,
    ) -> Result<Vec<cri::Container>> {
        let r = rpc!(
            self.runtime.clone(),
            list_containers,
            "ListContainers",
            cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    pod_sandbox_id: sandbox_id.unwrap_or_default().into(),
                    label_selector: labels,
                    ..Default::default()
                })
            }
        )?;
        Ok(r.containers)
    }

    /// Stats (CPU, memory, writable layer) of every container the runtime has.
    pub async fn list_container_stats(&self) -> Result<Vec<cri::ContainerStats>> {
        let r = rpc!(
            self.runtime.clone(),
            list_container_stats,
            "ListContainerStats",
            cri::ListContainerStatsRequest { filter: None }
        )?;
        Ok(r.stats)
    }

    pub async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let r = rpc!(
            self.runtime.clone(),
            container_status,
            "ContainerStatus",
            cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false
            }
        )?;
        r.status.ok_or(CriError::Empty("ContainerStatus"))
    }

    /// Runs `cmd` in a container and waits up to `timeout_secs`.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_secs: i64,
    ) -> Result<cri::ExecSyncResponse> {
        let mut req = tonic::Request::new(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: timeout_secs,
        });
        req.set_timeout(Duration::from_secs(timeout_secs.max(1) as u64 + 5));
        self.runtime
            .clone()
            .exec_sync(req)
            .await
            .map(|r| r.into_inner())
            .map_err(call::<()>("ExecSync"))
    }

    /// The image if present locally (by reference or ID).
    pub async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let r = rpc!(
            self.images.clone(),
            image_status,
            "ImageStatus",
            cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                verbose: false
            }
        )?;
        Ok(r.image)
    }

    /// Every image the runtime has (for image garbage collection).
    pub async fn list_images(&self) -> Result<Vec<cri::Image>> {
        let r = rpc!(
            self.images.clone(),
            list_images,
            "ListImages",
            cri::ListImagesRequest { filter: None }
        )?;
        Ok(r.images)
    }

    /// Removes an image (by ID or reference); a missing image is not an error (CRI contract).
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        rpc!(
            self.images.clone(),
            remove_image,
            "RemoveImage",
            cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                })
            }
        )
        .map(|_| ())
    }

    /// The filesystems the runtime keeps images on (mount point and bytes/inodes used).
    pub async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>> {
        let r = rpc!(
            self.images.clone(),
            image_fs_info,
            "ImageFsInfo",
            cri::ImageFsInfoRequest {}
        )?;
        Ok(r.image_filesystems)
    }

    /// The sandbox (pause) image the runtime is configured with, from its verbose status
    /// (containerd's CRI plugin reports its config there as JSON with `sandboxImage`).
    pub async fn sandbox_image(&self) -> Result<Option<String>> {
        let r = rpc!(
            self.runtime.clone(),
            status,
            "Status",
            cri::StatusRequest { verbose: true }
        )?;
        Ok(r.info.get("config").and_then(|c| {
            serde_json::from_str::<serde_json::Value>(c)
                .ok()?
                .get("sandboxImage")?
                .as_str()
                .map(String::from)
        }))
    }

    /// Pulls from a registry; returns the image ref.
    pub async fn pull_image(&self, image: &str) -> Result<String> {
        let r = rpc!(
            self.images.clone(),
            pull_image,
            "PullImage",
            cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None
            }
        )?;
        Ok(r.image_ref)
    }
}
