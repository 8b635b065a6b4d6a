//! Encode-once fan-out: watch responses assembled from pre-encoded events.
//!
//! With many watchers on the same keys, the same event goes out in hundreds of responses. The
//! generated server would clone each event per watcher and prost-encode it per response; here an
//! event is encoded once per variant (with or without `prev_kv`) into the exact bytes of one
//! `WatchResponse.events` field (tag, length, `Event`), shared behind [`Bytes`], and each
//! response is its small head (header, watch id, flags) followed by those field bytes. Protobuf
//! allows a repeated field's elements anywhere in the message, so the result is byte-for-byte a
//! valid `WatchResponse` that any etcd client decodes as usual.
//!
//! [`WatchGrpcServer`] is the generated `WatchServer` with the response codec swapped for one
//! that writes [`EncodedWatchResponse`]s; the service name, path and wire format are the same.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use kelson_etcdpb::etcdserverpb::{WatchRequest, WatchResponse};
use kelson_etcdpb::mvccpb::Event;
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic_prost::ProstCodec;

use crate::service::WatchService;

/// `WatchResponse.events`' field number.
const EVENTS_TAG: u32 = 11;

/// One event encoded as a `WatchResponse.events` field, with its revision for batching.
#[derive(Debug, Clone)]
pub(crate) struct EventField {
    pub(crate) rev: i64,
    pub(crate) bytes: Bytes,
}

impl EventField {
    pub(crate) fn encode(ev: &Event) -> Self {
        let len = ev.encoded_len();
        let mut buf = Vec::with_capacity(len + 1 + prost::length_delimiter_len(len));
        prost::encoding::message::encode(EVENTS_TAG, ev, &mut buf);
        EventField {
            rev: ev.kv.as_ref().map_or(0, |kv| kv.mod_revision),
            bytes: Bytes::from(buf),
        }
    }
}

/// A `WatchResponse` whose events are already encoded (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedWatchResponse {
    /// Everything but the events (its `events` stays empty).
    pub(crate) head: WatchResponse,
    /// Encoded `events` fields, in order.
    pub(crate) events: Vec<Bytes>,
}

impl EncodedWatchResponse {
    /// Wraps a response, encoding its events.
    pub fn from_response(mut resp: WatchResponse) -> Self {
        let events = std::mem::take(&mut resp.events)
            .iter()
            .map(|e| EventField::encode(e).bytes)
            .collect();
        EncodedWatchResponse { head: resp, events }
    }

    /// The plain response, exactly as a client decodes it (for in-process callers and tests).
    pub fn into_response(self) -> Result<WatchResponse, DecodeError> {
        WatchResponse::decode(self.encode_to_vec().as_slice())
    }
}

impl Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.head.encode_raw(buf);
        for e in &self.events {
            buf.put_slice(e);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == EVENTS_TAG {
            let mut ev = Event::default();
            prost::encoding::message::merge(wire_type, &mut ev, buf, ctx)?;
            self.events.push(EventField::encode(&ev).bytes);
            Ok(())
        } else {
            self.head.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.events.iter().map(Bytes::len).sum::<usize>()
    }

    fn clear(&mut self) {
        self.head.clear();
        self.events.clear();
    }
}

/// The `etcdserverpb.Watch` gRPC service writing [`EncodedWatchResponse`]s.
#[derive(Debug, Clone)]
pub struct WatchGrpcServer {
    svc: Arc<WatchService>,
    max_decoding_message_size: Option<usize>,
}

impl WatchGrpcServer {
    pub(crate) fn new(svc: WatchService) -> Self {
        WatchGrpcServer {
            svc: Arc::new(svc),
            max_decoding_message_size: None,
        }
    }

    /// Largest request message accepted (tonic's default is 4 MiB).
    #[must_use]
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

struct WatchMethod(Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = EncodedWatchResponse;
    type ResponseStream =
        tokio_stream::wrappers::ReceiverStream<Result<EncodedWatchResponse, tonic::Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<WatchRequest>>) -> Self::Future {
        let svc = Arc::clone(&self.0);
        Box::pin(async move {
            Ok(tonic::Response::new(
                svc.serve_stream_encoded(request.into_inner()),
            ))
        })
    }
}

impl<B> Service<http::Request<B>> for WatchGrpcServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = WatchMethod(Arc::clone(&self.svc));
        let max_decoding = self.max_decoding_message_size;
        Box::pin(async move {
            let codec = ProstCodec::<EncodedWatchResponse, WatchRequest>::default();
            // No limit on an encoded response: a non-fragmented revision may exceed any.
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(max_decoding, Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

impl tonic::server::NamedService for WatchGrpcServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

#[cfg(test)]
mod tests {
    use super::*;
    use kelson_etcdpb::etcdserverpb::ResponseHeader;
    use kelson_etcdpb::mvccpb::KeyValue;

    fn ev(rev: i64, prev: bool) -> Event {
        let kv = |v: &str| KeyValue {
            key: b"k".to_vec(),
            value: v.as_bytes().to_vec(),
            mod_revision: rev,
            version: 3,
            ..Default::default()
        };
        Event {
            r#type: 0,
            kv: Some(kv("new")),
            prev_kv: prev.then(|| kv("old")),
        }
    }

    #[test]
    fn encoded_responses_decode_as_plain_ones() {
        let plain = WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 4,
            fragment: true,
            events: vec![ev(7, true), ev(8, false)],
            ..Default::default()
        };
        let enc = EncodedWatchResponse::from_response(plain.clone());
        assert_eq!(enc.encoded_len(), enc.encode_to_vec().len());
        assert_eq!(enc.encoded_len(), plain.encoded_len());
        // What a client sees on the wire.
        let wire = WatchResponse::decode(enc.encode_to_vec().as_slice()).unwrap();
        assert_eq!(wire, plain);
        // And back through our own decoder.
        let back = EncodedWatchResponse::decode(enc.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, enc);
        assert_eq!(back.into_response().unwrap(), plain);
    }

    #[test]
    fn a_broken_event_field_is_an_error_not_a_panic() {
        let enc = EncodedWatchResponse {
            head: WatchResponse::default(),
            // events field, length 5, one byte present.
            events: vec![Bytes::from_static(&[0x5a, 0x05, 0x01])],
        };
        assert!(enc.into_response().is_err());
        assert!(EncodedWatchResponse::decode(&[0x5a, 0x05, 0x01][..]).is_err());
    }
}
