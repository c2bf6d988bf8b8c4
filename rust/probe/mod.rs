//! The probe listener: an HTTP server on threads of its own (hyper on a tokio runtime of its own) that
//! answers the probe routes straight from the `Service`, so probes are answered however busy or stalled
//! the application's own server and event loop are. One port serves HTTP/1.1, HTTP/2 with prior
//! knowledge (h2c) and gRPC health (`grpc.rs`); the service decides every answer, as it does for the
//! main port.

mod grpc;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tonic::codegen::Service as _;
use tonic_health::pb::health_server::HealthServer;

use crate::service::{Parts, Reply, Routed, Service};

/// Connections served at once; more are closed as soon as accepted, so a flood costs the app nothing.
const MAX_CONNECTIONS: usize = 1024;
/// A request head larger than this is refused (431 over HTTP/1.1, a reset over HTTP/2).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client that takes longer than this to send a request head is disconnected.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STREAMS: u32 = 128;
const BACKLOG: u32 = 1024;

type ProbeBody = Either<Full<Bytes>, tonic::body::Body>;

struct Listener {
    service: Arc<Service>,
    grpc: HealthServer<grpc::Health>,
    request_log: bool,
}

/// Binds `address` and serves probes on it from a thread of its own; returns the address bound (its
/// port, when `address` asks for any). The socket is bound with `SO_REUSEPORT`: every worker of a
/// server binds the same probe port, and the kernel spreads connections among them.
pub fn start(service: Arc<Service>, address: SocketAddr, request_log: bool) -> io::Result<SocketAddr> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().thread_name("phoenix-probe").build()?;
    let listener = {
        let _context = runtime.enter();
        let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.set_nodelay(true)?;
        socket.bind(address)?;
        socket.listen(BACKLOG)?
    };
    let bound = listener.local_addr()?;
    let grpc = HealthServer::new(grpc::Health::new(Arc::clone(&service))).max_decoding_message_size(4096);
    let listener_state = Arc::new(Listener { service, grpc, request_log });
    std::thread::Builder::new()
        .name("phoenix-probe".to_owned())
        .spawn(move || runtime.block_on(serve(listener, listener_state)))?;
    Ok(bound)
}

async fn serve(listener: TcpListener, state: Arc<Listener>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was accepted: try again shortly.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: closed at once
        };
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let answer = service_fn(move |request| answer(Arc::clone(&state), request));
            // A client that sends garbage or goes away ends its own connection; nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), answer).await;
            drop(slot);
        });
    }
}

async fn answer(state: Arc<Listener>, request: Request<Incoming>) -> Result<Response<ProbeBody>, Infallible> {
    if is_grpc(&request) {
        let response = state.grpc.clone().call(request).await?;
        return Ok(response.map(Either::Right));
    }
    let started = Instant::now();
    let (method, path) = (request.method().as_str(), request.uri().path());
    let reply = match state.service.route(method, path) {
        Routed::Reply(reply) => reply,
        Routed::Readiness(readiness) => {
            let header = |name: HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
            let parts = Parts {
                query: request.uri().query().unwrap_or(""),
                accept: header(ACCEPT),
                authorization: state.service.reads_authorization().then(|| header(AUTHORIZATION)).flatten(),
            };
            state.service.answer_ready(readiness, parts).await
        }
    };
    if state.request_log {
        state.service.log(method, path, reply.status(), started.elapsed());
    }
    Ok(http_response(&reply).map(Either::Left))
}

/// gRPC is HTTP/2 with a `application/grpc[+proto]` content type; anything else is an HTTP probe.
fn is_grpc(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_2
        && request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

fn http_response(reply: &Reply) -> Response<Full<Bytes>> {
    let body = &reply.response.body;
    let bytes = if reply.head { Bytes::new() } else { body.bytes.clone() };
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = StatusCode::from_u16(body.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for &(name, value) in body.headers() {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    response
}
