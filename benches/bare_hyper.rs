//! A bare hyper 1 server on a current-thread tokio runtime answering every request with a static
//! `/health`-shaped body: the reference issue 9 measures the probe listener against (`make bench-http`
//! starts it beside nginx). Not part of the product; `cargo run --release --example bare_hyper -- PORT
//! [BODY]` serves it on 127.0.0.1:PORT.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const DEFAULT_BODY: &str =
    r#"{"status":"healthy","uptime_seconds":2,"timestamp":"2026-12-02T06:27:31.337Z"}"#;

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: bare_hyper PORT [BODY]");
    // Lives as long as the process, so every response shares it without a copy.
    let body: &'static str = std::env::args()
        .nth(2)
        .map_or(DEFAULT_BODY, |b| Box::leak(b.into_boxed_str()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the port");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let answer = service_fn(move |_: Request<Incoming>| async move {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    response
                        .headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(response)
                });
                let connection = hyper::server::conn::http1::Builder::new();
                let _ = connection
                    .serve_connection(TokioIo::new(stream), answer)
                    .await;
            });
        }
    });
}
