//! The OTLP gRPC services. tonic frames, decompresses (gzip) and bounds each message; the
//! service receives the message's bytes undecoded, so that it can count them ([`super::scan`])
//! and decode them off the async workers when they are large, as the HTTP receiver does.
//!
//! tonic answers a message over the limit with `OUT_OF_RANGE` and a gzip body that
//! decompresses beyond it with `RESOURCE_EXHAUSTED`; OTLP clients retry both forever, so they
//! are answered `INVALID_ARGUMENT` instead.

use super::{receive, Format, Intake, Refused, Signal};
use crate::delivery::Refusal;
use prost::bytes::{Buf, Bytes};
use std::convert::Infallible;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::{Code, Status};

use super::RETRY_AFTER;

/// One signal's gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct Grpc<S> {
    sig: S,
    intake: Intake,
}

impl<S: Signal> Grpc<S> {
    pub(crate) fn new(sig: S, intake: Intake) -> Grpc<S> {
        Grpc { sig, intake }
    }
}

impl<S: Signal> tonic::server::NamedService for Grpc<S> {
    const NAME: &'static str = S::SERVICE;
}

impl<S: Signal> Service<http::Request<tonic::body::Body>> for Grpc<S> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != S::METHOD {
                return Ok(
                    Status::unimplemented(format!("no method {}", req.uri().path())).into_http(),
                );
            }
            let max = this.intake.max_request_bytes;
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(Raw::<S::Response>(PhantomData))
                .apply_compression_config(gzip, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(max), None);
            let res = grpc.unary(Export(this), req).await;
            Ok(never_retried_limits(res, max))
        })
    }
}

/// Rewrites tonic's answers to a message over the limit (retryable codes in OTLP) to
/// `INVALID_ARGUMENT`. The service's own `RESOURCE_EXHAUSTED` carries `RetryInfo` and stays.
fn never_retried_limits(
    res: http::Response<tonic::body::Body>,
    max: usize,
) -> http::Response<tonic::body::Body> {
    let code = res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from);
    let limit = match code {
        Some(Code::OutOfRange) => true,
        Some(Code::ResourceExhausted) => !res.headers().contains_key("grpc-status-details-bin"),
        _ => false,
    };
    if !limit {
        return res;
    }
    let message = Status::from_header_map(res.headers())
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    Status::invalid_argument(format!(
        "{message} (the largest request taken is {max} bytes, --max-request-bytes)"
    ))
    .into_http()
}

/// A refusal as a gRPC status.
fn status(e: Refused) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match e {
        Refused::Invalid(m) | Refused::TooLarge(m) | Refused::Unsupported(m) => {
            Status::invalid_argument(m)
        }
        Refused::Queue(full @ Refusal::Full { .. }) => Status::with_error_details(
            Code::ResourceExhausted,
            full.to_string(),
            ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
        ),
        Refused::Queue(other) => Status::unavailable(other.to_string()),
        Refused::Internal(m) => Status::internal(m),
    }
}

struct Export<S>(Grpc<S>);

impl<S: Signal> tonic::server::UnaryService<Bytes> for Export<S> {
    type Response = S::Response;
    type Future = BoxFuture<tonic::Response<S::Response>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let g = self.0.clone();
        Box::pin(async move {
            receive(
                &g.sig,
                &g.intake,
                request.into_inner(),
                Format::Protobuf,
                false,
            )
            .await
            .map(tonic::Response::new)
            .map_err(status)
        })
    }
}

/// Responses encoded with prost; requests passed on as their bytes.
struct Raw<T>(PhantomData<fn() -> T>);

impl<T: prost::Message + Send + 'static> Codec for Raw<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = Raw<T>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Raw<T> {
        Raw(PhantomData)
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl<T: prost::Message> Encoder for Raw<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}
