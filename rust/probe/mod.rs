//! The probe listener: an HTTP server on threads of its own (hyper on a tokio runtime of its own) that
//! answers the probe routes straight from the `Service`, so probes are answered however busy or stalled
//! the application's own server and event loop are. One port serves HTTP/1.1, HTTP/2 with prior
//! knowledge (h2c) and gRPC health (`grpc.rs`); the service decides every answer, as it does for the
//! main port.

mod grpc;
#[cfg(target_os = "linux")]
mod idle;
#[cfg(target_os = "linux")]
mod socket;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{self, BoxFuture};
use futures::FutureExt as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, ACCEPT, ALLOW, AUTHORIZATION, CONTENT_TYPE};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tonic::codegen::Service as _;
use tonic_health::pb::health_server::HealthServer;

use crate::render;
use crate::service::{Answer, Parts, Reply, Routed, Service};

/// Connections served at once; more are closed as soon as accepted, so a flood costs the app nothing.
const MAX_CONNECTIONS: usize = 1024;
/// A request head larger than this is refused (431 over HTTP/1.1, a reset over HTTP/2).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A connection that sends nothing for this long (to half of it more) is closed (see `idle.rs`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 clients are pinged this often while their connection is open, so a client that is only
/// listening (a gRPC `Watch`) still sends something, and one that has gone is found out.
const PING_EVERY: Duration = Duration::from_secs(4);
const MAX_STREAMS: u32 = 128;
const BACKLOG: u32 = 1024;

#[cfg(target_os = "linux")]
use socket::Socket;
/// Elsewhere, the stream as tokio reads and writes it (see `socket.rs`).
#[cfg(not(target_os = "linux"))]
type Socket = TcpStream;

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

/// How connections are served: every one as HTTP/1 first, handed to the HTTP/2 server (h2c, gRPC) when
/// hyper finds the HTTP/2 client preface where a request line should be, with the bytes it has read.
/// Serving plain HTTP/1 straight away, without looking at its first bytes or hyper-util's protocol
/// detection (larger state, one more read), is a tenth faster with hundreds of connections open.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Protocols {
    fn new() -> Self {
        // No timer for HTTP/1: hyper would re-arm a header-read timeout for every request, a tenth of
        // a cached answer's cost; `idle` closes silent connections instead.
        let mut http1 = http1::Builder::new();
        http1.max_buf_size(MAX_HEADER_BYTES);
        // Where the kernel cannot tell how long a socket has been silent, hyper's timer does `idle`'s
        // work for HTTP/1, at its cost.
        #[cfg(not(target_os = "linux"))]
        http1.timer(TokioTimer::new()).header_read_timeout(IDLE_TIMEOUT);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(IDLE_TIMEOUT)
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32);
        Self { http1, http2 }
    }

    /// Serves one connection to its end; a client that sends garbage or goes away ends its own
    /// connection, with nothing to report.
    async fn serve(&self, stream: TcpStream, state: Arc<Listener>) {
        let answer = service_fn(move |request| answer(&state, request));
        // Served in the task's own memory: boxed, HTTP/1's state was one more allocation to reach on
        // every wake-up, a few percent of a cached answer with hundreds of connections open.
        let mut http1 = self.http1.serve_connection(TokioIo::new(Socket::from(stream)), answer);
        // Not shut down when done: the socket closes as it drops, and an HTTP/2 client's is kept.
        match future::poll_fn(|cx| http1.poll_without_shutdown(cx)).await {
            Err(error) if error.is_parse_version_h2() => {}
            _ => return,
        }
        let http1::Parts { io, read_buf, service, .. } = http1.into_parts();
        let io = TokioIo::new(Replayed { first: read_buf, stream: io.into_inner() });
        // Boxed: without a box rustc cannot prove the task `Send` ("higher-ranked lifetime error").
        let http2: BoxFuture<'_, ()> = Box::pin(self.http2.serve_connection(io, service).map(drop));
        http2.await;
    }
}

/// A stream whose first bytes, read already, are read again: the HTTP/2 preface hyper's HTTP/1 server
/// read before it found the connection was not its own.
struct Replayed {
    first: Bytes,
    stream: Socket,
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let replayed = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first.split_to(replayed));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

async fn serve(listener: TcpListener, state: Arc<Listener>) {
    let protocols = Arc::new(Protocols::new());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    #[cfg(target_os = "linux")]
    let sweeper = idle::Sweeper::start(IDLE_TIMEOUT);
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
        let protocols = Arc::clone(&protocols);
        let state = Arc::clone(&state);
        let serve_connection = move |stream| async move {
            protocols.serve(stream, state).await;
            drop(slot);
        };
        #[cfg(target_os = "linux")]
        sweeper.spawn(stream, serve_connection);
        #[cfg(not(target_os = "linux"))]
        tokio::spawn(serve_connection(stream));
    }
}

type Answered = Result<Response<ProbeBody>, Infallible>;

/// What hyper keeps per request in flight, for as long as the connection lives. Nearly every probe is
/// answered at once from the cache, so that case is a plain value; only a request that must wait for a
/// round, or a gRPC call, gets a boxed future. (An `async fn` here made every connection carry the
/// waiting path's 800-byte state, which cost a quarter of the throughput at 500 connections.)
type Answering = future::Either<future::Ready<Answered>, BoxFuture<'static, Answered>>;

fn answer(state: &Arc<Listener>, request: Request<Incoming>) -> Answering {
    if is_grpc(&request) {
        let call = state.grpc.clone().call(request);
        return future::Either::Right(Box::pin(async move { Ok(call.await?.map(Either::Right)) }));
    }
    let started = Instant::now();
    let (method, path) = (request.method().as_str(), request.uri().path());
    let reply = match state.service.route(method, path, started) {
        Routed::Reply(reply) => reply,
        Routed::Detailed(detailed) => match state.service.answer(detailed, parts(state, &request)) {
            Answer::Reply(reply) => reply,
            Answer::Wait => {
                return future::Either::Right(Box::pin(wait_for_round(Arc::clone(state), request, started)))
            }
        },
    };
    future::Either::Left(future::ready(Ok(respond(state, method, path, &reply, started))))
}

/// A readiness answer once the round `answer` was told to wait for has ended (a cold cache, or one too
/// old to serve).
async fn wait_for_round(state: Arc<Listener>, request: Request<Incoming>, started: Instant) -> Answered {
    let (method, path) = (request.method().as_str(), request.uri().path());
    let reply = match state.service.route(method, path, started) {
        Routed::Detailed(detailed) => state.service.after_round(detailed, parts(&state, &request)).await,
        Routed::Reply(reply) => reply,
    };
    Ok(respond(&state, method, path, &reply, started))
}

/// What a readiness answer depends on, from the request.
fn parts<'a>(state: &Listener, request: &'a Request<Incoming>) -> Parts<'a> {
    let header = |name: HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
    Parts {
        query: request.uri().query().unwrap_or(""),
        accept: header(ACCEPT),
        authorization: state.service.reads_authorization().then(|| header(AUTHORIZATION)).flatten(),
    }
}

fn respond(
    state: &Listener,
    method: &str,
    path: &str,
    reply: &Reply,
    started: Instant,
) -> Response<ProbeBody> {
    let ended = Instant::now();
    let elapsed = ended - started;
    state.service.record(method, path, reply.status(), elapsed);
    if state.request_log {
        state.service.log(method, path, reply.status(), elapsed, ended);
    }
    http_response(reply).map(Either::Left)
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
        headers.insert(header_name(name), header_value(value));
    }
    response
}

/// The headers `render` sends, without parsing or validating them per request (a few percent of a
/// cached answer's cost); anything else is converted as it comes.
fn header_name(name: &'static str) -> HeaderName {
    match name {
        "content-type" => CONTENT_TYPE,
        "allow" => ALLOW,
        other => HeaderName::from_static(other),
    }
}

fn header_value(value: &'static str) -> HeaderValue {
    const JSON: HeaderValue = HeaderValue::from_static(render::JSON);
    const HEALTH_JSON: HeaderValue = HeaderValue::from_static(render::HEALTH_JSON);
    const TEXT: HeaderValue = HeaderValue::from_static(render::TEXT);
    match value {
        render::JSON => JSON,
        render::HEALTH_JSON => HEALTH_JSON,
        render::TEXT => TEXT,
        other => HeaderValue::from_static(other),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::service::Settings;

    /// A service with one passing check, its probe listener on a free loopback port, and the runtime
    /// its rounds run on.
    fn listening() -> (Arc<Service>, SocketAddr, tokio::runtime::Runtime) {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let handle = runtime.handle().clone();
        let settings = Settings::from_millis(100, 100, 500, "always", None, 5000, 2000).unwrap();
        let service = Service::new(settings, move || handle.clone());
        service.add_ping("ping".to_owned()).unwrap();
        let address = start(Arc::clone(&service), "127.0.0.1:0".parse().unwrap(), false).unwrap();
        (service, address, runtime)
    }

    /// Sends `request` as is and returns the whole answer (the server closes after it).
    fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn get(address: SocketAddr, target: &str) -> String {
        exchange(address, format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
    }

    fn body(answer: &str) -> serde_json::Value {
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
    }

    #[test]
    fn answers_what_the_service_answers_on_every_route() {
        let (service, address, _runtime) = listening();
        let health = get(address, "/health");
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.contains("content-type: application/json\r\n"));
        assert_eq!(body(&health)["status"], "healthy");
        assert_eq!(body(&get(address, "/live")), serde_json::json!({"status": "alive"}));
        // The first readiness request waits for the first round, then gets its answer.
        let ready = get(address, "/ready");
        assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
        assert_eq!(body(&ready)["subsystems"]["ping"]["status"], "pass");
        assert_eq!(body(&get(address, "/ready/ping"))["name"], "ping");
        let verbose = get(address, "/ready?verbose");
        assert!(
            verbose.contains("content-type: text/plain; charset=utf-8\r\n") && verbose.contains("[+]ping ok")
        );
        let missing = get(address, "/ready/nothing");
        assert!(missing.starts_with("HTTP/1.1 404 Not Found\r\n") && body(&missing)["code"] == 404);
        let excludes = (0..65).map(|i| format!("exclude=c{i}")).collect::<Vec<_>>().join("&");
        assert_eq!(body(&get(address, &format!("/ready?{excludes}")))["code"], 400);
        let post = exchange(address, b"POST /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && post.contains("allow: GET, HEAD\r\n")
        );
        let head = exchange(address, b"HEAD /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), "{head}");
        service.drain();
        assert_eq!(body(&get(address, "/ready")), serde_json::json!({"status": "draining"}));
    }

    #[test]
    fn oversized_and_malformed_requests_are_refused_and_the_listener_goes_on() {
        let (_service, address, _runtime) = listening();
        let huge = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(64 * 1024));
        let refused = exchange(address, huge.as_bytes());
        assert!(refused.is_empty() || refused.starts_with("HTTP/1.1 431 "), "{refused}");
        let garbage = exchange(address, b"\x16\x03\x01 this is not HTTP\r\n\r\n");
        assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        assert!(get(address, "/health").starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn http2_with_prior_knowledge_is_told_apart_from_http1_on_the_same_port() {
        let (_service, address, _runtime) = listening();
        // The client preface, then an empty SETTINGS frame: an HTTP/2 server answers with its own
        // SETTINGS frame (type 4), where an HTTP/1.1 server would answer 400.
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
        let mut frame_header = [0u8; 9];
        stream.read_exact(&mut frame_header).unwrap();
        assert_eq!(frame_header[3], 4, "a SETTINGS frame");
        assert!(get(address, "/health").starts_with("HTTP/1.1 200 OK\r\n"));
    }
}
