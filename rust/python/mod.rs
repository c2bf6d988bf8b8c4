//! The only code that touches Python. It converts types and bridges tokio with asyncio; everything a
//! request needs is decided by the pure-Rust `service`, and every call into Python from a thread of
//! the core goes through `bridge`.

mod bridge;
mod phoenix;
mod probes;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::runtime::Runtime;

use crate::checks::{Report, Subsystem};
use crate::render::{self, Body, View};
use crate::routes::ALLOWED_METHODS;
use crate::service::{
    Answer, CheckOptions, Details, Parts, Readiness, Reply, RoundRun, Routed, Service, Settings,
};
use phoenix::{PlasticLtm, TriuneConscience, WorldModel};
use probes::PyProbe;

create_exception!(
    _core,
    PhoenixError,
    PyException,
    "Base of the errors Phoenix raises."
);
create_exception!(
    _core,
    StoreUnavailable,
    PhoenixError,
    "plastic_ltm's store is not open."
);
create_exception!(
    _core,
    StoreError,
    PhoenixError,
    "A plastic_ltm operation failed."
);

/// Built on first use, inside the serving process: a runtime created before a fork hangs the child.
/// One worker thread is plenty: checks that answer at once run inline, blocking ones on its pool.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("phoenix-core")
            .enable_all()
            .build()
            .expect("cannot start the phoenix-core runtime")
    })
}

fn invalid(why: String) -> PyErr {
    PyValueError::new_err(why)
}

/// A response's `(status, headers, body)` tuples for GET and HEAD, kept in its memo: a cache hit hands
/// Granian the same objects every time.
struct PyResponse {
    get: Py<PyTuple>,
    head: Py<PyTuple>,
}

/// The header lists, built once and shared by every response of their kind.
struct Headers([Py<PyList>; 4]);

impl Headers {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let list = |pairs: &[(&str, &str)]| PyList::new(py, pairs).map(Bound::unbind);
        Ok(Self([
            list(&[("content-type", render::JSON)])?,
            list(&[("content-type", render::HEALTH_JSON)])?,
            list(&[("content-type", render::TEXT)])?,
            list(&[("content-type", render::JSON), ("allow", ALLOWED_METHODS)])?,
        ]))
    }

    fn python(&self, py: Python<'_>, body: &Body) -> PyResult<PyResponse> {
        let kind = match (body.status, body.content_type) {
            (405, _) => 3,
            (_, render::HEALTH_JSON) => 1,
            (_, render::TEXT) => 2,
            _ => 0,
        };
        let tuple = |bytes: &[u8]| {
            let status = body.status.into_pyobject(py)?.into_any();
            let items = [
                status,
                self.0[kind].bind(py).clone().into_any(),
                PyBytes::new(py, bytes).into_any(),
            ];
            PyTuple::new(py, items).map(Bound::unbind)
        };
        Ok(PyResponse {
            get: tuple(&body.bytes)?,
            head: tuple(b"")?,
        })
    }
}

/// What `route` answers: a response, or `None` when the caller must wait for the round in flight.
type Routing = PyResult<Option<Py<PyTuple>>>;

/// The loops with requests waiting for the round in flight, each with the one future they share.
type Waiting = Mutex<Vec<(Py<PyAny>, Py<PyAny>)>>;

fn wake_all(py: Python<'_>, waiting: &Waiting) {
    let waiters = std::mem::take(
        &mut *waiting
            .lock_py_attached(py)
            .unwrap_or_else(PoisonError::into_inner),
    );
    for (event_loop, future) in waiters {
        bridge::settle_later(py, &event_loop, &future, Ok(py.None()));
    }
}

/// The kernel's engine, `phoenix.Kernel`'s core: a `Service` and what Python needs around it.
#[pyclass(frozen, module = "phoenix._core")]
struct Core {
    service: Arc<Service>,
    headers: Headers,
    /// The loop `async def` checks run on.
    event_loop: Arc<ArcSwapOption<Py<PyAny>>>,
    waiting: Arc<Waiting>,
}

impl Core {
    fn python(&self, py: Python<'_>, reply: &Reply) -> PyResult<Py<PyTuple>> {
        let response = &reply.response;
        let memo = match response.memo::<PyResponse>() {
            Some(memo) => memo,
            None => response
                .set_memo(self.headers.python(py, &response.body)?)
                .expect("a memo was just set"),
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
        let authorization = self
            .service
            .reads_authorization()
            .then(|| header(intern!(py, "authorization")))
            .flatten();
        Ok(answer(Parts {
            query: &query,
            accept: accept.as_ref().and_then(|v| v.to_str().ok()),
            authorization: authorization.as_ref().and_then(|v| v.to_str().ok()),
        }))
    }

    fn readiness<'a>(&self, method: &str, path: &'a str) -> PyResult<Readiness<'a>> {
        match self.service.route(method, path) {
            Routed::Readiness(readiness) => Ok(readiness),
            Routed::Reply(_) => Err(invalid(format!(
                "{method} {path} is not a readiness request"
            ))),
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
    #[new]
    fn new(
        py: Python<'_>,
        health_ttl_ms: u64,
        ready_ttl_ms: u64,
        check_timeout_ms: u64,
        details: &str,
        token: Option<String>,
    ) -> PyResult<Self> {
        if check_timeout_ms == 0 {
            return Err(invalid("check_timeout_ms must be positive".to_owned()));
        }
        let settings = Settings {
            health_ttl: Duration::from_millis(health_ttl_ms),
            ready_ttl: Duration::from_millis(ready_ttl_ms),
            check_timeout: Duration::from_millis(check_timeout_ms),
            details: Details::parse(details, token).map_err(invalid)?,
        };
        Ok(Self {
            service: Service::new(settings, || runtime().handle().clone()),
            headers: Headers::new(py)?,
            event_loop: Arc::new(ArcSwapOption::empty()),
            waiting: Arc::default(),
        })
    }

    /// Answers a request: a `(status, headers, body)` tuple, or `None` when a readiness answer has
    /// nothing servable yet: the caller then awaits `ready_round()` and asks `route_latest`.
    fn route(&self, py: Python<'_>, method: &str, path: &str, scope: &Bound<'_, PyAny>) -> Routing {
        let readiness = match self.service.route(method, path) {
            Routed::Reply(reply) => return self.python(py, &reply).map(Some),
            Routed::Readiness(readiness) => readiness,
        };
        match self.with_parts(scope, |parts| self.service.ready(readiness, parts))? {
            Answer::Reply(reply) => self.python(py, &reply).map(Some),
            Answer::Wait => Ok(None),
        }
    }

    /// `route`, plus the request-log line for every answer it gives (the served RSGI path).
    fn serve(&self, py: Python<'_>, method: &str, path: &str, scope: &Bound<'_, PyAny>) -> Routing {
        let started = Instant::now();
        let answer = self.route(py, method, path, scope)?;
        if let Some(response) = &answer {
            let status: u16 = response.bind(py).get_item(0)?.extract()?;
            self.service.log(method, path, status, started.elapsed());
        }
        Ok(answer)
    }

    /// An asyncio future that resolves when the round in flight ends (at once if none is), starting a
    /// round if there has never been one. Requests waiting on one loop share one future: await it
    /// through `asyncio.shield`.
    fn ready_round(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.service.ensure_round();
        let event_loop = bridge::running_loop(py)?;
        // Held while Python runs (create_future), so taken releasing the GIL while it waits.
        let mut waiting = self
            .waiting
            .lock_py_attached(py)
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, future)) = waiting.iter().find(|(l, _)| l.is(&event_loop)) {
            return Ok(future.clone_ref(py));
        }
        let future = event_loop.call_method0("create_future")?.unbind();
        waiting.push((event_loop.unbind(), future.clone_ref(py)));
        let first = waiting.len() == 1;
        drop(waiting);
        if first {
            let waiting = Arc::clone(&self.waiting);
            let wake = move || bridge::submit(move |py| wake_all(py, &waiting));
            if self.service.when_round_ends(wake).is_err() {
                // No round in flight: its answer is in the cache already.
                wake_all(py, &self.waiting);
            }
        }
        Ok(future)
    }

    /// Answers a readiness request from the newest round whatever its age: for requests that have
    /// just waited for that round.
    fn route_latest(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyTuple>> {
        let readiness = self.readiness(method, path)?;
        let reply = self.with_parts(scope, |parts| self.service.ready_latest(readiness, parts))?;
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
        self.service
            .set_details(Details::parse(details, token).map_err(invalid)?);
        Ok(())
    }

    /// Appends one line to the request log: the RSGI path's `phoenix.api` log.
    fn log_request(&self, method: &str, path: &str, status: u16, elapsed_s: f64) -> PyResult<()> {
        let elapsed = Duration::try_from_secs_f64(elapsed_s).map_err(|_| {
            invalid(format!(
                "elapsed_s must be a finite number of seconds >= 0, not {elapsed_s}"
            ))
        })?;
        self.service.log(method, path, status, elapsed);
        Ok(())
    }

    /// Writes out buffered request-log lines now (at worker shutdown).
    fn flush_log(&self, py: Python<'_>) {
        py.detach(|| self.service.flush_log());
    }

    /// The JSON error response for `code`, e.g. 500 when the glue itself failed.
    fn error_response(&self, py: Python<'_>, code: u16) -> PyResult<Py<PyTuple>> {
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

    /// Registers a Python check. `is_async` says whether `func` returns a coroutine (run on the
    /// kernel's event loop) or a value (run in a thread).
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
        let options = CheckOptions {
            threshold,
            warn_threshold,
            timeout_ms,
            interval_ms,
            failures_before_unready,
        };
        let policy = self.service.policy(&options).map_err(invalid)?;
        let probe = PyProbe {
            func: Arc::new(func),
            is_async,
            event_loop: Arc::clone(&self.event_loop),
        };
        let subsystem = Subsystem::new(name, "metric", policy, Box::new(probe));
        self.service.add(subsystem).map_err(invalid)
    }

    /// Registers a native check that always passes (Kubernetes' `ping`).
    fn add_ping(&self, name: String) -> PyResult<()> {
        self.service.add_ping(name).map_err(invalid)
    }

    /// Adds the three native Phoenix subsystems over `data_dir` and returns their Python handles
    /// `(memory, conscience, world)`. Nothing touches the disk until `start`.
    fn add_phoenix(
        &self,
        data_dir: PathBuf,
    ) -> PyResult<(PlasticLtm, TriuneConscience, WorldModel)> {
        let phoenix = self
            .service
            .add_phoenix(&data_dir)
            .map_err(PhoenixError::new_err)?;
        Ok((
            PlasticLtm(Arc::clone(&phoenix)),
            TriuneConscience(Arc::clone(&phoenix)),
            WorldModel(phoenix),
        ))
    }

    /// Starts background work once per process, and binds `event_loop` (or the running loop) as the
    /// loop `async def` checks run on.
    #[pyo3(signature = (event_loop = None))]
    fn start(&self, py: Python<'_>, event_loop: Option<Bound<'_, PyAny>>) {
        match event_loop {
            Some(event_loop) => self.event_loop.store(Some(Arc::new(event_loop.unbind()))),
            None => self.bind_running_loop(py),
        }
        self.service.start();
    }

    /// Resolves once the native subsystems (if any) have finished initialising.
    fn wait_initialised(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self
            .service
            .phoenix()
            .filter(|p| !p.is_initialised())
            .cloned()
        {
            Some(phoenix) => bridge::awaitable(
                py,
                async move { phoenix.wait_initialised().await },
                |py, ()| Ok(py.None()),
            ),
            None => bridge::resolved(py, py.None()),
        }
    }

    /// True once the native subsystems (if any) have finished initialising: `/startup` answers 200.
    #[getter]
    fn initialised(&self) -> bool {
        self.service.is_started()
    }

    /// Registered subsystem names, in order.
    #[getter]
    fn subsystem_names(&self) -> Vec<String> {
        self.service.subsystem_names()
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Rust log records (a status change, a malformed axioms file) go to Python's `logging` under their
    // target's name. No caching, so logging configured after import is honoured.
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Nothing)?;
    if log::set_boxed_logger(Box::new(bridge::QueuedLogger(Arc::new(logger)))).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    py.import("atexit")?.call_method1(
        "register",
        (wrap_pyfunction!(bridge::close_python_gate, m)?,),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("PhoenixError", py.get_type::<PhoenixError>())?;
    m.add("StoreUnavailable", py.get_type::<StoreUnavailable>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add_class::<Core>()?;
    m.add_class::<PlasticLtm>()?;
    m.add_class::<TriuneConscience>()?;
    m.add_class::<WorldModel>()?;
    Ok(())
}
