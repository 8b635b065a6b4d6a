//! The etcd `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are replicated: the request is wrapped in an `InternalRequest`, proposed through Raft,
//! and the response is whatever the state machine produced when the entry was applied on this
//! member. Reads are served from the local MVCC after a ReadIndex barrier (linearizable, the
//! default) or directly (serializable). A read-only Txn is a read, as in etcd.

use std::sync::Arc;

use kelson_etcdpb::internal::{
    internal_request::Request as IReq, internal_response::Response as IResp,
};
use kelson_etcdpb::kv_server::Kv;
use kelson_etcdpb::*;
use kelson_mvcc::Mvcc;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::errors::{mvcc_status, status_for_message, ERR_EMPTY_KEY, ERR_TOO_MANY_OPS};
use crate::store::Shared;

/// etcd's `--max-txn-ops` default.
pub const MAX_TXN_OPS: usize = 128;

pub struct KvService {
    shared: Arc<Shared>,
}

impl KvService {
    pub fn new(shared: Arc<Shared>) -> Self {
        KvService { shared }
    }

    fn header(&self, h: Option<ResponseHeader>) -> Option<ResponseHeader> {
        Some(self.shared.header(h.map(|h| h.revision).unwrap_or(0)))
    }
}

fn unexpected() -> Status {
    Status::internal("etcdserver: unexpected apply result")
}

fn check_txn(req: &TxnRequest) -> Result<(), Status> {
    if req.success.len() > MAX_TXN_OPS || req.failure.len() > MAX_TXN_OPS {
        return Err(status_for_message(ERR_TOO_MANY_OPS));
    }
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(status_for_message(ERR_EMPTY_KEY))
            }
            Some(request_op::Request::RequestPut(r)) if r.key.is_empty() => {
                return Err(status_for_message(ERR_EMPTY_KEY))
            }
            Some(request_op::Request::RequestDeleteRange(r)) if r.key.is_empty() => {
                return Err(status_for_message(ERR_EMPTY_KEY))
            }
            Some(request_op::Request::RequestTxn(t)) => check_txn(t)?,
            _ => {}
        }
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(status_for_message(ERR_EMPTY_KEY));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(status_for_message(ERR_EMPTY_KEY));
        }
        self.shared.read_barrier(req.serializable).await?;
        let mut resp = self
            .shared
            .mvcc
            .read()
            .range(&req)
            .map_err(|e| mvcc_status(&e))?;
        resp.header = self.header(resp.header);
        Ok(Response::new(resp))
    }

    type RangeStreamStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<RangeStreamResponse, Status>> + Send>>;

    /// etcd 3.7's chunked Range: the same result as Range, its kvs split over several messages,
    /// header/more/count only on the last one.
    async fn range_stream(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        const CHUNK: usize = 1000;
        let resp = self.range(request).await?.into_inner();
        let mut kvs = resp.kvs;
        let mut chunks = Vec::new();
        while kvs.len() > CHUNK {
            let rest = kvs.split_off(CHUNK);
            chunks.push(RangeResponse {
                kvs,
                ..Default::default()
            });
            kvs = rest;
        }
        chunks.push(RangeResponse {
            header: resp.header,
            kvs,
            more: resp.more,
            count: resp.count,
        });
        let out = futures::stream::iter(chunks.into_iter().map(|r| {
            Ok(RangeStreamResponse {
                range_response: Some(r),
            })
        }));
        Ok(Response::new(Box::pin(out)))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(status_for_message(ERR_EMPTY_KEY));
        }
        crate::maintenance::check_quota(&self.shared, req.encoded_len()).await?;
        match self.shared.propose(IReq::Put(req)).await?.response {
            Some(IResp::Put(mut r)) => {
                r.header = self.header(r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(status_for_message(ERR_EMPTY_KEY));
        }
        match self.shared.propose(IReq::DeleteRange(req)).await?.response {
            Some(IResp::DeleteRange(mut r)) => {
                r.header = self.header(r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = request.into_inner();
        check_txn(&req)?;
        if !Mvcc::has_writes(&req) {
            // A read-only txn needs no consensus round, only the read barrier (etcd does the same).
            let serializable = txn_all_serializable(&req);
            self.shared.read_barrier(serializable).await?;
            let mut resp = self
                .shared
                .mvcc
                .read()
                .txn_read_only(&req)
                .map_err(|e| mvcc_status(&e))?;
            resp.header = self.header(resp.header);
            return Ok(Response::new(resp));
        }
        crate::maintenance::check_quota(&self.shared, req.encoded_len()).await?;
        match self.shared.propose(IReq::Txn(req)).await?.response {
            Some(IResp::Txn(mut r)) => {
                r.header = self.header(r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let req = request.into_inner();
        match self.shared.propose(IReq::Compaction(req)).await?.response {
            Some(IResp::Compaction(mut r)) => {
                r.header = self.header(r.header);
                Ok(Response::new(r))
            }
            _ => Err(unexpected()),
        }
    }
}

/// etcd serves a read-only txn serializably only if every range in it asked for that.
fn txn_all_serializable(req: &TxnRequest) -> bool {
    let ops = req.success.iter().chain(req.failure.iter());
    let mut any = false;
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                any = true;
                if !r.serializable {
                    return false;
                }
            }
            Some(request_op::Request::RequestTxn(t)) if !txn_all_serializable(t) => return false,
            _ => {}
        }
    }
    any && req.compare.is_empty()
}
