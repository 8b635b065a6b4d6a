//! The etcd `Cluster` service: membership changes go through Raft configuration changes.

use std::sync::Arc;

use kelson_etcdpb::cluster_server::Cluster;
use kelson_etcdpb::*;
use kelson_raft::MemberInfo;
use tonic::{Request, Response, Status};

use crate::errors::raft_status;
use crate::store::Shared;

pub struct ClusterService {
    shared: Arc<Shared>,
}

impl ClusterService {
    pub fn new(shared: Arc<Shared>) -> Self {
        ClusterService { shared }
    }
    fn header(&self) -> Option<ResponseHeader> {
        Some(
            self.shared
                .header(self.shared.mvcc.read().current_revision()),
        )
    }
}

pub fn to_pb(m: &MemberInfo) -> Member {
    Member {
        id: m.id,
        name: m.name.clone(),
        peer_ur_ls: m.peer_urls.clone(),
        client_ur_ls: m.client_urls.clone(),
        is_learner: m.is_learner,
    }
}

fn check_urls(urls: &[String]) -> Result<(), Status> {
    if urls.is_empty() {
        return Err(Status::invalid_argument("etcdserver: no peer URLs given"));
    }
    for u in urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() < 10 {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid peer URL {u:?}"
            )));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let (member, members) = self
            .shared
            .node()
            .add_member(req.peer_ur_ls, req.is_learner)
            .await
            .map_err(|e| raft_status(&e))?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(to_pb(&member)),
            members: members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let members = self
            .shared
            .node()
            .remove_member(id)
            .await
            .map_err(|e| raft_status(&e))?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = request.into_inner();
        check_urls(&req.peer_ur_ls)?;
        let members = self
            .shared
            .node()
            .update_member(req.id, req.peer_ur_ls)
            .await
            .map_err(|e| raft_status(&e))?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let req = request.into_inner();
        self.shared.read_barrier(!req.linearizable).await?;
        let members = self.shared.node().members();
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: members.iter().map(to_pb).collect(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let members = self
            .shared
            .node()
            .promote_member(id)
            .await
            .map_err(|e| raft_status(&e))?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: members.iter().map(to_pb).collect(),
        }))
    }
}
