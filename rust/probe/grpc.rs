//! gRPC health (`grpc.health.v1.Health`) over the service's readiness, so Kubernetes' native `grpc:`
//! probe can name the probe port: service `""` is the kernel's readiness (as `/ready` answers it,
//! draining and stalled included), a subsystem's name is that subsystem (as `/ready/<name>`), and any
//! other name is unknown. The message types and server come from `tonic-health`; its own reporter is
//! not used, since the answers are already the service's.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::service::{Parts, Service};

/// How often a `Watch` looks again when no request has refreshed readiness in between, at least.
const WATCH_FLOOR: Duration = Duration::from_millis(100);

pub struct Health {
    service: Arc<Service>,
}

impl Health {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

/// The status of `name` as its readiness answer says: 200 serving, 404 unknown, anything else not.
async fn status(service: &Arc<Service>, name: &str) -> ServingStatus {
    let one = (!name.is_empty()).then_some(name);
    match service.answer_ready(Service::readiness(one), Parts::default()).await.status() {
        200 => ServingStatus::Serving,
        404 => ServingStatus::ServiceUnknown,
        _ => ServingStatus::NotServing,
    }
}

fn message(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into() }
}

type Statuses = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for Health {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = &request.get_ref().service;
        match status(&self.service, name).await {
            ServingStatus::ServiceUnknown => Err(Status::not_found(format!("unknown service {name:?}"))),
            known => Ok(Response::new(message(known))),
        }
    }

    type WatchStream = Statuses;

    /// Sends the status at once, then each change, for as long as the client listens. Readiness is
    /// looked at again every readiness TTL (through its cache: watchers share rounds with everyone).
    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Statuses>, Status> {
        let name = request.into_inner().service;
        let service = Arc::clone(&self.service);
        let period = service.ready_ttl().max(WATCH_FLOOR);
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let now = status(&service, &name).await;
                if last != Some(now) {
                    if sender.send(Ok(message(now))).await.is_err() {
                        return;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(period) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
