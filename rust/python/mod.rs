//! The only code that touches Python: it converts types and bridges tokio with asyncio. The pure-Rust
//! `service` decides every answer; every call into Python from a core thread goes through `bridge`.

mod bridge;
mod phoenix;
mod probes;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::runtime::Runtime;

use crate::checks::{Report, Subsystem};
use crate::render::{self, Body, View};
use crate::service::{
    Answer, CheckOptions, DependencyOptions, Details, Parts, Reply, RoundRun, Routed, Service, Settings,
};
use phoenix::{PlasticLtm, TriuneConscience, WorldModel};
use probes::PyProbe;

create_exception!(_core, PhoenixError, PyException, "Base of the errors Phoenix raises.");
create_exception!(_core, StoreUnavailable, PhoenixError, "plastic_ltm's store is not open.");
create_exception!(_core, StoreError, PhoenixError, "A plastic_ltm operation failed.");

/// Built on first use, inside the serving process: a runtime created before a fork hangs the child.
/// One worker thread is plenty: checks that answer at once run inline, blocking ones on its pool.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).thread_name("phoenix-core").enable_all();
        builder.build().expect("cannot start the phoenix-core runtime")
    })
}

/// A response's `(status, headers, body)` for GET and HEAD, in its memo: a cache hit converts nothing.
struct PyResponse {
    get: Py<PyTuple>,
    head: Py<PyTuple>,
}

impl PyResponse {
    fn new(py: Python<'_>, body: &Body) -> PyResult<Self> {
        let headers = PyList::new(py, body.headers())?;
        let tuple = |bytes: &[u8]| {
            let status = body.status.into_pyobject(py)?.into_any();
            let items = [status, headers.clone().into_any(), PyBytes::new(py, bytes).into_any()];
            PyTuple::new(py, items).map(Bound::unbind)
        };
        Ok(Self { get: tuple(&body.bytes)?, head: tuple(b"")? })
    }
}

type Answered = PyResult<Py<PyTuple>>;
type Routing = PyResult<Option<Py<PyTuple>>>; // `None`: wait for the round in flight

/// The kernel's engine, `phoenix.Kernel`'s core: a `Service` and what Python needs around it.
#[pyclass(frozen, module = "phoenix._core")]
struct Core {
    service: Arc<Service>,
    /// The loop `async def` checks run on.
    event_loop: Arc<ArcSwapOption<Py<PyAny>>>,
    /// Where the probe listener listens, once started.
    probe: Mutex<Option<SocketAddr>>,
    /// Whether `serve` and `record_request` write request-log lines (the RSGI path's choice).
    request_log: AtomicBool,
}

impl Core {
    fn python(&self, py: Python<'_>, reply: &Reply) -> Answered {
        let response = &reply.response;
        let memo = match response.memo::<PyResponse>() {
            Some(memo) => memo,
            None => response.set_memo(PyResponse::new(py, &response.body)?).expect("a memo was just set"),
        };
        Ok(if reply.head { &memo.head } else { &memo.get }.clone_ref(py))
    }

    /// Reads what a readiness answer depends on off `scope` (anything with a `query_string` str and
    /// `headers` with `get(name)`, like Granian's RSGI scope): only readiness requests pay for it.
    fn with_parts<'py, R>(
        &self,
        scope: &Bound<'py, PyAny>,
        answer: impl FnOnce(Parts<'_>) -> R,
    ) -> PyResult<R> {
        let py = scope.py();
        let query = scope.getattr(intern!(py, "query_string"))?;
        let query = query.cast::<PyString>()?.to_cow()?;
        let headers = scope.getattr(intern!(py, "headers"))?;
        // A header that is absent, or not text Rust can read, counts as absent.
        let header = |name: &Bound<'py, PyString>| -> Option<Bound<'py, PyString>> {
            let value = headers.call_method1(intern!(py, "get"), (name,)).ok()?;
            value.cast_into::<PyString>().ok()
        };
        let accept = header(intern!(py, "accept"));
        let authorization =
            self.service.reads_authorization().then(|| header(intern!(py, "authorization"))).flatten();
        Ok(answer(Parts {
            query: &query,
            accept: accept.as_ref().and_then(|v| v.to_str().ok()),
            authorization: authorization.as_ref().and_then(|v| v.to_str().ok()),
        }))
    }

    fn reply(
        &self,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
        arrived: Instant,
    ) -> PyResult<Option<Reply>> {
        let detailed = match self.service.route(method, path, arrived) {
            Routed::Reply(reply) => return Ok(Some(reply)),
            Routed::Detailed(detailed) => detailed,
        };
        Ok(match self.with_parts(scope, |parts| self.service.answer(detailed, parts))? {
            Answer::Reply(reply) => Some(reply),
            Answer::Wait => None,
        })
    }

    fn finished(&self, method: &str, path: &str, status: u16, elapsed: Duration, ended: Instant) {
        self.service.record(method, path, status, elapsed);
        if self.request_log.load(Ordering::Relaxed) {
            self.service.log(method, path, status, elapsed, ended);
        }
    }

    fn bind_running_loop(&self, py: Python<'_>) {
        if let Ok(event_loop) = bridge::running_loop(py) {
            self.event_loop.store(Some(Arc::new(event_loop.unbind())));
        }
    }
}

#[pymethods]
impl Core {
    /// One argument per setting, as `phoenix.Kernel` passes them from the config.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        health_ttl_ms: u64,
        ready_ttl_ms: u64,
        check_timeout_ms: u64,
        details: &str,
        token: Option<String>,
        live_stale_ms: u64,
        ready_stale_ms: u64,
        metrics: bool,
    ) -> PyResult<Self> {
        let mut settings = Settings::from_millis(
            health_ttl_ms,
            ready_ttl_ms,
            check_timeout_ms,
            details,
            token,
            live_stale_ms,
            ready_stale_ms,
        )
        .map_err(PyValueError::new_err)?;
        settings.metrics = metrics;
        let service = Service::new(settings, || runtime().handle().clone());
        Ok(Self {
            service,
            event_loop: Arc::default(),
            probe: Mutex::default(),
            request_log: AtomicBool::new(false),
        })
    }

    /// Starts the probe listener on `host:port` (once: later calls return where it listens) and
    /// returns the port it listens on.
    fn listen(&self, py: Python<'_>, host: &str, port: u16, request_log: bool) -> PyResult<u16> {
        let mut probe = self.probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(address) = *probe {
            return Ok(address.port());
        }
        let cannot = |err: std::io::Error| {
            PhoenixError::new_err(format!("cannot listen for probes on {host}:{port}: {err}"))
        };
        let address = (host, port).to_socket_addrs().map_err(cannot)?.next();
        let address = address.ok_or_else(|| cannot(std::io::ErrorKind::AddrNotAvailable.into()))?;
        let service = Arc::clone(&self.service);
        let bound = py.detach(|| {
            // Workers sharing a fixed port share their heartbeats too; an ephemeral port is this process's.
            if port != 0 {
                service.share_heartbeat(port)?;
            }
            crate::probe::start(service, address, request_log)
        });
        let bound = bound.map_err(cannot)?;
        *probe = Some(bound);
        Ok(bound.port())
    }

    /// Publishes this worker's metrics to the board of the server serving on `port`, so that a scrape
    /// answered by any of its workers reports them all.
    fn share_metrics(&self, py: Python<'_>, port: u16) -> PyResult<()> {
        let service = Arc::clone(&self.service);
        py.detach(|| service.share_metrics(port))
            .map_err(|err| PhoenixError::new_err(format!("cannot share metrics between workers: {err}")))
    }

    /// Stamps the serving event loop's heartbeat: the loop calls this every `HEARTBEAT_PERIOD_S`.
    fn beat(&self) {
        self.service.beat();
    }

    /// A `(status, headers, body)`, or `None`: then await `ready_round()` and ask `route_latest`.
    fn route(&self, py: Python<'_>, method: &str, path: &str, scope: &Bound<'_, PyAny>) -> Routing {
        self.reply(method, path, scope, Instant::now())?.map(|reply| self.python(py, &reply)).transpose()
    }

    /// `route`, timed: every answer it gives is counted in the metrics and, with the request log on,
    /// logged (the served RSGI path).
    fn serve(&self, py: Python<'_>, method: &str, path: &str, scope: &Bound<'_, PyAny>) -> Routing {
        let started = Instant::now();
        let reply = self.reply(method, path, scope, started)?;
        if let Some(reply) = &reply {
            let ended = Instant::now();
            self.finished(method, path, reply.status(), ended - started, ended);
        }
        reply.map(|reply| self.python(py, &reply)).transpose()
    }

    /// Whether `serve` and `record_request` write request-log lines from now on.
    fn log_requests(&self, on: bool) {
        self.request_log.store(on, Ordering::Relaxed);
    }

    /// Whether requests are counted in the metrics (then the server must time them with `serve`).
    #[getter]
    fn metrics(&self) -> bool {
        self.service.metrics_on()
    }

    fn set_metrics(&self, on: bool) {
        self.service.set_metrics(on);
    }

    /// Serves `/metrics` without the token even when details need one.
    fn set_metrics_public(&self, public: bool) {
        self.service.set_metrics_public(public);
    }

    /// An asyncio future resolved when the round in flight ends (at once if none is; a first round is
    /// started), on the caller's own loop.
    fn ready_round(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.service.ensure_round();
        let event_loop = bridge::running_loop(py)?.unbind();
        let future = event_loop.call_method0(py, "create_future")?;
        let waiter = future.clone_ref(py);
        let wake =
            move || bridge::submit(move |py| bridge::settle_later(py, &event_loop, &waiter, Ok(py.None())));
        if self.service.when_round_ends(wake).is_err() {
            // No round in flight: its answer is in the cache already.
            future.call_method1(py, "set_result", (py.None(),))?;
        }
        Ok(future)
    }

    /// Answers a readiness request from the newest round, whatever its age: the one it waited for.
    fn route_latest(&self, py: Python<'_>, method: &str, path: &str, scope: &Bound<'_, PyAny>) -> Answered {
        let Routed::Detailed(detailed) = self.service.route(method, path, Instant::now()) else {
            return Err(PyValueError::new_err(format!("{method} {path} is not a readiness request")));
        };
        let reply = self.with_parts(scope, |parts| self.service.ready_latest(detailed, parts))?;
        self.python(py, &reply)
    }

    fn drain(&self) {
        self.service.drain();
    }

    #[getter]
    fn draining(&self) -> bool {
        self.service.draining()
    }

    /// Who sees details from now on: "always", "never" or "token" (with `token`).
    #[pyo3(signature = (details, token = None))]
    fn set_details(&self, details: &str, token: Option<String>) -> PyResult<()> {
        self.service.set_details(Details::parse(details, token).map_err(PyValueError::new_err)?);
        Ok(())
    }

    /// An answer given outside `serve` (after waiting for a round, a 500, the ASGI path): counted in
    /// the metrics and, with the request log on, logged.
    fn record_request(&self, method: &str, path: &str, status: u16, elapsed_s: f64) -> PyResult<()> {
        let elapsed = Duration::try_from_secs_f64(elapsed_s).map_err(|_| {
            PyValueError::new_err(format!(
                "elapsed_s must be a finite number of seconds >= 0, not {elapsed_s}"
            ))
        })?;
        self.finished(method, path, status, elapsed, Instant::now());
        Ok(())
    }

    /// Writes out buffered request-log lines now (at worker shutdown).
    fn flush_log(&self, py: Python<'_>) {
        py.detach(|| self.service.flush_log());
    }

    /// The JSON error response for `code`, e.g. 500 when the glue itself failed.
    fn error_response(&self, py: Python<'_>, code: u16) -> Answered {
        self.python(py, &self.service.error(code))
    }

    /// Runs one uncached round now; resolves to `(ready, status, body)` with full details.
    fn check(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.bind_running_loop(py);
        let convert = |py: Python<'_>, report: Report| {
            let body = render::ready(&report, &View::FULL_JSON);
            let result = (report.ready(), body.status, PyBytes::new(py, &body.bytes));
            Ok(result.into_pyobject(py)?.into_any().unbind())
        };
        match self.service.run_round() {
            RoundRun::Done(report) => bridge::resolved(py, convert(py, report)?),
            RoundRun::Running(round) => bridge::awaitable(py, round, convert),
        }
    }

    /// `is_async`: `func` returns a coroutine, run on the kernel's loop; else it runs in a thread.
    #[pyo3(signature = (name, func, is_async, threshold, timeout_ms = None, warn_threshold = None, interval_ms = None, failures_before_unready = 1))]
    #[allow(clippy::too_many_arguments)]
    fn add_check(
        &self,
        name: String,
        func: Py<PyAny>,
        is_async: bool,
        threshold: f64,
        timeout_ms: Option<u64>,
        warn_threshold: Option<f64>,
        interval_ms: Option<u64>,
        failures_before_unready: u32,
    ) -> PyResult<()> {
        let options =
            CheckOptions { threshold, warn_threshold, timeout_ms, interval_ms, failures_before_unready };
        let policy = self.service.policy(&options).map_err(PyValueError::new_err)?;
        let probe = PyProbe { func: Arc::new(func), is_async, event_loop: Arc::clone(&self.event_loop) };
        let subsystem = Subsystem::new(name, "metric", policy, Box::new(probe));
        self.service.add(subsystem).map_err(PyValueError::new_err)
    }

    /// A native dependency check of `kind` with its settings as a JSON object; unset options take the
    /// kind's defaults. ValueError, one line naming the key, on bad input.
    #[pyo3(signature = (name, kind, settings_json, threshold = None, timeout_ms = None, warn_threshold = None, interval_ms = None, failures_before_unready = 1))]
    #[allow(clippy::too_many_arguments)]
    fn add_dependency(
        &self,
        py: Python<'_>,
        name: String,
        kind: &str,
        settings_json: &str,
        threshold: Option<f64>,
        timeout_ms: Option<u64>,
        warn_threshold: Option<f64>,
        interval_ms: Option<u64>,
        failures_before_unready: u32,
    ) -> PyResult<()> {
        let settings = serde_json::from_str(settings_json)
            .map_err(|err| PyValueError::new_err(format!("settings are not valid JSON: {err}")))?;
        let options =
            DependencyOptions { threshold, warn_threshold, timeout_ms, interval_ms, failures_before_unready };
        // Without the GIL: a disk check's path is looked up, which may touch a slow mount.
        py.detach(|| self.service.add_dependency(name, kind, settings, &options))
            .map_err(PyValueError::new_err)
    }

    fn add_ping(&self, name: String) -> PyResult<()> {
        self.service.add_ping(name).map_err(PyValueError::new_err)
    }

    /// The Phoenix subsystems over `data_dir`, with handles `(memory, conscience, world)`.
    fn add_phoenix(&self, data_dir: PathBuf) -> PyResult<(PlasticLtm, TriuneConscience, WorldModel)> {
        let phoenix = self.service.add_phoenix(&data_dir).map_err(PhoenixError::new_err)?;
        Ok((PlasticLtm(Arc::clone(&phoenix)), TriuneConscience(Arc::clone(&phoenix)), WorldModel(phoenix)))
    }

    /// Starts background work once, and binds `event_loop` (or the running one) for `async def` checks.
    #[pyo3(signature = (event_loop = None))]
    fn start(&self, py: Python<'_>, event_loop: Option<Bound<'_, PyAny>>) {
        match event_loop {
            Some(event_loop) => self.event_loop.store(Some(Arc::new(event_loop.unbind()))),
            None => self.bind_running_loop(py),
        }
        self.service.start();
    }

    /// Resolves once the native subsystems (if any) have started: `/startup` answers 200.
    fn wait_initialised(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.service.phoenix().filter(|p| !p.is_initialised()).cloned() {
            Some(phoenix) => {
                bridge::awaitable(py, async move { phoenix.wait_initialised().await }, |py, ()| Ok(py.None()))
            }
            None => bridge::resolved(py, py.None()),
        }
    }

    #[getter]
    fn initialised(&self) -> bool {
        self.service.is_started()
    }

    #[getter]
    fn subsystem_names(&self) -> Vec<String> {
        self.service.subsystem_names()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    if log::set_logger(&bridge::PythonLogger).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    py.import("atexit")?.call_method1("register", (wrap_pyfunction!(bridge::close_python_gate, m)?,))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("HEARTBEAT_PERIOD_S", crate::heartbeat::BEAT_PERIOD.as_secs_f64())?;
    m.add("PhoenixError", py.get_type::<PhoenixError>())?;
    m.add("StoreUnavailable", py.get_type::<StoreUnavailable>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add_class::<Core>()?;
    m.add_class::<PlasticLtm>()?;
    m.add_class::<TriuneConscience>()?;
    m.add_class::<WorldModel>()?;
    Ok(())
}
