//! The only module that touches Python: it converts types, releases the GIL around blocking work and
//! bridges tokio with asyncio. Everything it calls is plain Rust from the sibling modules.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::future::{ready, FutureExt};
use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime;

use crate::access_log::{self, AccessLog};
use crate::cache::{Entry, Lookup, TtlCache};
use crate::checks::{start_round, CheckFuture, CheckResult, Policy, Probe, Report, Subsystem};
use crate::exit_gate::Gate;
use crate::render::{self, Body, Format, View};
use crate::routes::{bearer_matches, route, Endpoint, Query, Route, ALLOWED_METHODS};
use crate::subsystems::Phoenix;

fn runtime() -> &'static Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Every call from a Rust thread (tokio's workers and blocking pool) into Python passes this gate,
/// which closes when the interpreter begins to exit. On Python < 3.14, a thread that wants the GIL
/// back while the interpreter finalizes is ended with `pthread_exit`, and that forced unwind cannot
/// cross Rust frames: the process aborts. A thread inside `call_soon_threadsafe`, which releases the
/// GIL to wake the loop, as the main thread returns from `asyncio.run(kernel.check())` and exits is
/// enough (found as a SIGABRT of `phoenix check` on a loaded machine). So `close_python_gate` runs
/// at exit, before finalization: nothing new enters, and it waits for the threads inside to leave.
static PYTHON_GATE: Gate = Gate::new();

/// How long exit waits for Rust threads to leave Python: ample for any callback, short enough that
/// a hung synchronous check cannot hold the process up.
const EXIT_PATIENCE: Duration = Duration::from_secs(1);

/// What a Python check reports when it is asked to run while the interpreter exits.
const EXITING: &str = "the Python interpreter is exiting";

/// `Python::attach` for Rust threads, through the gate: `None` once the interpreter is exiting.
fn attach<R>(work: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    PYTHON_GATE.pass(|| Python::attach(work))
}

/// Registered with `atexit` when the module loads, so it runs before finalization begins, and
/// after any exit hook registered later (which may still use a kernel).
#[pyfunction]
fn close_python_gate(py: Python<'_>) {
    py.detach(|| PYTHON_GATE.close(EXIT_PATIENCE));
}

/// pyo3-async-runtimes' tokio bridge, except that the closures which resolve asyncio futures from
/// the blocking pool (they take the GIL) pass the gate. Same runtime, same task-local event loop.
struct GatedTokio;

tokio::task_local! {
    static TASK_LOCALS: TaskLocals;
}

impl pyo3_async_runtimes::generic::Runtime for GatedTokio {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        runtime().spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        runtime().spawn_blocking(move || {
            PYTHON_GATE.pass(f);
        })
    }
}

impl pyo3_async_runtimes::generic::ContextExt for GatedTokio {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(locals, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS.try_with(TaskLocals::clone).ok()
    }
}

/// A Rust future as an asyncio awaitable, resolved through the gate.
fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<GatedTokio, F, T>(py, fut)
}

/// pyo3-log's logger behind the gate: records logged from Rust threads once the interpreter exits
/// are dropped instead of taking the GIL.
struct GatedLogger(pyo3_log::Logger);

impl log::Log for GatedLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        PYTHON_GATE
            .pass(|| self.0.enabled(metadata))
            .unwrap_or(false)
    }

    fn log(&self, record: &log::Record<'_>) {
        PYTHON_GATE.pass(|| self.0.log(record));
    }

    fn flush(&self) {}
}

/// A rendered response, turned into Python objects once, by the first request that reads it, so that
/// rounds finishing on a tokio thread never wait for the GIL.
struct Rendered {
    body: Body,
    // PyOnceLock, not OnceLock: building the tuples runs Python code, which may release the GIL, and a
    // second thread blocking on a std lock while holding the GIL would deadlock.
    python: PyOnceLock<(Py<PyTuple>, Py<PyTuple>)>,
}

impl Rendered {
    fn new(body: Body) -> Self {
        Self {
            body,
            python: PyOnceLock::new(),
        }
    }

    /// The `(status, headers, body)` tuple for GET, or the same without a body for HEAD; the same
    /// objects on every call, so a cache hit allocates nothing.
    fn response(&self, py: Python<'_>, headers: &Headers, head: bool) -> Py<PyTuple> {
        let (get, head_only) = self.python.get_or_init(py, || {
            let list = headers.for_body(&self.body);
            let tuple = |body: &[u8]| {
                PyTuple::new(
                    py,
                    [
                        self.body.status.into_pyobject(py).unwrap().into_any(),
                        list.bind(py).clone().into_any(),
                        PyBytes::new(py, body).into_any(),
                    ],
                )
                .expect("a three-item tuple")
                .unbind()
            };
            (tuple(&self.body.bytes), tuple(b""))
        });
        if head { head_only } else { get }.clone_ref(py)
    }
}

/// The header lists, built once and shared by every response of their kind.
struct Headers {
    json: Py<PyList>,
    health_json: Py<PyList>,
    text: Py<PyList>,
    not_allowed: Py<PyList>,
}

impl Headers {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let list = |pairs: &[(&str, &str)]| -> PyResult<Py<PyList>> {
            let list = PyList::empty(py);
            for pair in pairs {
                list.append(*pair)?;
            }
            Ok(list.unbind())
        };
        Ok(Self {
            json: list(&[("content-type", render::JSON)])?,
            health_json: list(&[("content-type", render::HEALTH_JSON)])?,
            text: list(&[("content-type", render::TEXT)])?,
            not_allowed: list(&[("content-type", render::JSON), ("allow", ALLOWED_METHODS)])?,
        })
    }

    fn for_body(&self, body: &Body) -> &Py<PyList> {
        match (body.status, body.content_type) {
            (405, _) => &self.not_allowed,
            (_, render::HEALTH_JSON) => &self.health_json,
            (_, render::TEXT) => &self.text,
            _ => &self.json,
        }
    }
}

/// Who may see subsystems, metrics and errors.
enum Details {
    Always,
    Never,
    /// Only callers presenting `Authorization: Bearer <token>`.
    Token(String),
}

impl Details {
    fn parse(details: &str, token: Option<String>) -> PyResult<Self> {
        match (details, token) {
            ("always", _) => Ok(Details::Always),
            ("never", _) => Ok(Details::Never),
            ("token", Some(token)) if !token.is_empty() => Ok(Details::Token(token)),
            ("token", _) => Err(PyValueError::new_err(
                "details = \"token\" needs a non-empty token",
            )),
            (other, _) => Err(PyValueError::new_err(format!(
                "details must be \"always\", \"never\" or \"token\", not {other:?}"
            ))),
        }
    }
}

/// One round's report with its two common answers rendered up front: the hot path serves them as is.
struct ReadyEntry {
    report: Report,
    /// The status-only answer, for callers not shown details (`None` when everyone is).
    public: Option<Rendered>,
    full: Rendered,
}

/// The `/ready` round in flight, and the asyncio future its waiters share. The future is made only
/// when a request actually waits, so that a busy server, which serves the previous answer meanwhile,
/// never makes the round's thread take the GIL.
#[derive(Default)]
struct RoundState {
    in_flight: bool,
    waiters: Option<Waiters>,
}

struct Waiters {
    future: Py<PyAny>,
    event_loop: Py<PyAny>,
}

impl Waiters {
    fn new(py: Python<'_>) -> PyResult<Self> {
        let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
        Ok(Self {
            future: event_loop.call_method0("create_future")?.unbind(),
            event_loop: event_loop.unbind(),
        })
    }

    /// Wakes every waiter, from any thread.
    fn wake(self) {
        attach(|py| {
            let set_result = self.future.bind(py).getattr("set_result");
            let scheduled = set_result.and_then(|set_result| {
                self.event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (set_result, py.None()))
            });
            // A closed loop has no waiters left to wake.
            drop(scheduled);
        });
    }
}

/// Ends the round when dropped (at its end, or if its task is torn down), so no waiter can hang.
struct RoundEnd(Arc<Inner>);

impl Drop for RoundEnd {
    fn drop(&mut self) {
        // Take the waiters out first: waking them needs the GIL, and a thread holding the GIL may be
        // waiting for this lock.
        let waiters = {
            let mut round = self.0.round.lock().unwrap_or_else(PoisonError::into_inner);
            round.in_flight = false;
            round.waiters.take()
        };
        if let Some(waiters) = waiters {
            waiters.wake();
        }
    }
}

/// What a request to `/ready` or `/ready/<name>` asks for, read off it once.
struct ReadyRequest {
    one: Option<String>,
    head: bool,
    query: Query,
    format: Format,
    details: bool,
}

struct Inner {
    started: Instant,
    health: Arc<TtlCache<Rendered>>,
    ready: Arc<TtlCache<ReadyEntry>>,
    subsystems: ArcSwap<Vec<Arc<Subsystem>>>,
    check_timeout: Duration,
    /// Swappable: a server settles an unset mode once it knows the address it serves on.
    details: ArcSwap<Details>,
    phoenix: OnceLock<Arc<Phoenix>>,
    /// The event loop that `async def` checks run on.
    event_loop: Arc<ArcSwapOption<TaskLocals>>,
    running: AtomicBool,
    draining: AtomicBool,
    /// The round in flight: every request that must wait awaits one shared asyncio future, so a
    /// burst of waiters costs one wake-up each instead of one task and thread hop each.
    round: Mutex<RoundState>,
    /// Created on first use, inside the serving process (its flusher thread must not precede a fork).
    access_log: OnceLock<Arc<AccessLog<io::Stderr>>>,
    headers: Headers,
    live: Rendered,
    starting: Rendered,
    started_up: Rendered,
}

impl Inner {
    fn render_health(&self) -> Rendered {
        Rendered::new(Body {
            status: 200,
            content_type: render::JSON,
            bytes: render::health(self.started.elapsed(), SystemTime::now()),
        })
    }

    fn health(&self, py: Python<'_>, head: bool) -> Py<PyTuple> {
        let headers = &self.headers;
        if let Some(hit) = self.health.read_fresh(|r| r.response(py, headers, head)) {
            return hit;
        }
        let entry = match (self.health.try_begin_refresh(), self.health.lookup()) {
            (Some(refresh), _) => refresh.finish(self.render_health()),
            (None, Lookup::Fresh(entry) | Lookup::Stale(entry)) => entry,
            // Someone else is rendering and nothing servable is left: rendering is cheap, so render
            // for this request only rather than wait.
            (None, Lookup::Missing) => Arc::new(Entry {
                value: self.render_health(),
                born: Instant::now(),
            }),
        };
        entry.value.response(py, headers, head)
    }

    fn is_started(&self) -> bool {
        self.phoenix.get().is_none_or(|p| p.is_initialised())
    }

    fn shows_details(&self, authorization: Option<&str>) -> bool {
        match &**self.details.load() {
            Details::Always => true,
            Details::Never => false,
            Details::Token(token) => bearer_matches(authorization, token),
        }
    }

    /// Reads a readiness request off `scope` (anything with `query_string` and `headers`, like
    /// Granian's RSGI scope): only readiness requests pay for reading them.
    fn ready_request<'py>(
        &self,
        one: Option<&str>,
        head: bool,
        scope: &Bound<'py, PyAny>,
    ) -> PyResult<ReadyRequest> {
        // On the hot path: interned names, and the header value borrowed rather than copied.
        let py = scope.py();
        let query = scope.getattr(intern!(py, "query_string"))?;
        let query = query.cast::<PyString>()?.to_str()?;
        let headers = scope.getattr(intern!(py, "headers"))?;
        let header = |name: &Bound<'py, PyString>| -> PyResult<Option<Bound<'py, PyString>>> {
            let value = headers.call_method1(intern!(py, "get"), (name,))?;
            Ok(value.cast_into::<PyString>().ok())
        };
        let query = if query.is_empty() {
            Query::default()
        } else {
            Query::parse(query)
        };
        let accept = header(intern!(py, "accept"))?;
        let format = query.format(accept.as_ref().map(|v| v.to_str()).transpose()?);
        let details = match **self.details.load() {
            Details::Token(_) => {
                let authorization = header(intern!(py, "authorization"))?;
                self.shows_details(authorization.as_ref().map(|v| v.to_str()).transpose()?)
            }
            _ => self.shows_details(None),
        };
        Ok(ReadyRequest {
            one: one.map(str::to_owned),
            head,
            query,
            format,
            details,
        })
    }

    fn ready_entry(&self, report: Report) -> ReadyEntry {
        let full = Rendered::new(render::ready(&report, &View::FULL_JSON));
        // With details always shown, every caller gets `full`; nothing else to render.
        let public = match **self.details.load() {
            Details::Always => None,
            _ => Some(Rendered::new(render::ready(&report, &View::PUBLIC_JSON))),
        };
        ReadyEntry {
            report,
            public,
            full,
        }
    }

    /// Starts a check round unless one is already in flight. The probes start here, on the calling
    /// thread, so that Python checks are called with the GIL the caller already holds.
    fn refresh_ready(self: &Arc<Self>) {
        let Some(refresh) = self.ready.try_begin_refresh() else {
            return;
        };
        // The round before may have finished between the caller's look and this claim: then the
        // entry is fresh again and another round would answer the same burst twice.
        if self.ready.read_fresh(|_| ()).is_some() {
            return;
        }
        self.round
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .in_flight = true;
        let end = RoundEnd(Arc::clone(self));
        let subsystems = self.subsystems.load_full();
        let round = start_round(&subsystems, runtime().handle());
        let inner = Arc::clone(self);
        runtime().spawn(async move {
            let entry = inner.ready_entry(round.await);
            refresh.finish(entry);
            drop(end);
        });
    }

    /// The answer to a readiness request from a round's entry.
    fn ready_response(
        &self,
        py: Python<'_>,
        entry: &ReadyEntry,
        request: &ReadyRequest,
    ) -> Py<PyTuple> {
        let view = View {
            format: request.format,
            details: request.details,
            exclude: request.query.exclude.iter().map(String::as_str).collect(),
        };
        let rendered = match &request.one {
            None if view.format == Format::Json && view.exclude.is_empty() => {
                let common = match (&entry.public, view.details) {
                    (Some(public), false) => public,
                    (_, true) => &entry.full,
                    // Rendered for everyone before details were turned off (`set_details`).
                    (None, false) => {
                        &Rendered::new(render::ready(&entry.report, &View::PUBLIC_JSON))
                    }
                };
                return common.response(py, &self.headers, request.head);
            }
            None => Rendered::new(render::ready(&entry.report, &view)),
            Some(name) => match entry.report.get(name) {
                Some(outcome) => Rendered::new(render::subsystem(outcome, &view)),
                None => return self.error(py, 404),
            },
        };
        rendered.response(py, &self.headers, request.head)
    }

    /// While draining, readiness answers 503 whatever the checks say.
    fn draining_response(&self, py: Python<'_>, request: &ReadyRequest) -> Option<Py<PyTuple>> {
        self.draining.load(Ordering::Acquire).then(|| {
            Rendered::new(render::draining(request.format)).response(
                py,
                &self.headers,
                request.head,
            )
        })
    }

    /// A servable readiness answer if there is one, starting a refresh when it is due.
    fn ready_now(
        self: &Arc<Self>,
        py: Python<'_>,
        request: &ReadyRequest,
    ) -> PyResult<Option<Py<PyTuple>>> {
        if let Some(draining) = self.draining_response(py, request) {
            return Ok(Some(draining));
        }
        if let Some(hit) = self
            .ready
            .read_fresh(|entry| self.ready_response(py, entry, request))
        {
            return Ok(Some(hit));
        }
        self.refresh_ready();
        Ok(match self.ready.lookup() {
            Lookup::Fresh(entry) | Lookup::Stale(entry) => {
                Some(self.ready_response(py, &entry.value, request))
            }
            Lookup::Missing => None,
        })
    }

    /// See `Core::route`.
    fn answer(
        self: &Arc<Self>,
        py: Python<'_>,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyTuple>>> {
        let inner = self;
        let (endpoint, head) = match route(method, path) {
            Route::Serve { endpoint, head } => (endpoint, head),
            Route::MethodNotAllowed => return Ok(Some(inner.error(py, 405))),
            Route::NotFound => return Ok(Some(inner.error(py, 404))),
        };
        let one = match endpoint {
            Endpoint::Health => return Ok(Some(inner.health(py, head))),
            Endpoint::Live => return Ok(Some(inner.live.response(py, &inner.headers, head))),
            Endpoint::Startup => {
                let answer = if inner.is_started() {
                    &inner.started_up
                } else {
                    &inner.starting
                };
                return Ok(Some(answer.response(py, &inner.headers, head)));
            }
            Endpoint::Ready => None,
            Endpoint::ReadyOne(name) => Some(name),
        };
        let request = inner.ready_request(one, head, scope)?;
        inner.ready_now(py, &request)
    }

    /// Appends one line to the request log (see `access_log.rs`).
    fn log(&self, method: &str, path: &str, status: u16, elapsed: Duration) {
        let log = self.access_log.get_or_init(|| {
            let log = AccessLog::new(io::stderr());
            // Without the flusher, lines still go out whenever the buffer fills and at shutdown.
            let _ = AccessLog::spawn_flusher(&log, access_log::FLUSH_EVERY);
            log
        });
        log.record(method, path, status, elapsed);
    }

    fn error(&self, py: Python<'_>, code: u16) -> Py<PyTuple> {
        let body = Body {
            status: code,
            content_type: render::JSON,
            bytes: render::error(code, SystemTime::now()),
        };
        Rendered::new(body).response(py, &self.headers, false)
    }
}

/// The kernel's engine: caches, subsystems and routing. `phoenix.Kernel` is its Python face.
#[pyclass(frozen, module = "phoenix._core")]
struct Core(Arc<Inner>);

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (health_ttl_ms, ready_ttl_ms, check_timeout_ms, details, token))]
    fn new(
        py: Python<'_>,
        health_ttl_ms: u64,
        ready_ttl_ms: u64,
        check_timeout_ms: u64,
        details: &str,
        token: Option<String>,
    ) -> PyResult<Self> {
        if check_timeout_ms == 0 {
            return Err(PyValueError::new_err("check_timeout_ms must be positive"));
        }
        let details = Details::parse(details, token)?;
        let ttl = Duration::from_millis;
        let fixed = |body: Body| Rendered::new(body);
        let inner = Inner {
            started: Instant::now(),
            // A stale entry may be served for one more TTL while its refresh runs; past that, callers
            // wait for the fresh one.
            health: Arc::new(TtlCache::new(ttl(health_ttl_ms), ttl(health_ttl_ms))),
            ready: Arc::new(TtlCache::new(ttl(ready_ttl_ms), ttl(ready_ttl_ms))),
            subsystems: ArcSwap::from_pointee(Vec::new()),
            check_timeout: ttl(check_timeout_ms),
            details: ArcSwap::from_pointee(details),
            phoenix: OnceLock::new(),
            event_loop: Arc::new(ArcSwapOption::empty()),
            running: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            round: Mutex::new(RoundState::default()),
            access_log: OnceLock::new(),
            headers: Headers::new(py)?,
            live: fixed(render::live()),
            starting: fixed(render::startup(false)),
            started_up: fixed(render::startup(true)),
        };
        inner.health.insert(inner.render_health());
        Ok(Self(Arc::new(inner)))
    }

    /// Answers a request from the caches: a `(status, headers, body)` tuple, or `None` when a
    /// readiness answer has nothing servable yet: the caller then awaits `ready_round()` and asks
    /// `route_latest` with the same arguments. `scope` is Granian's RSGI scope, or anything with a
    /// `query_string` (str) and `headers` (with `get(name)`, lower-case names), read only for readiness.
    fn route(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyTuple>>> {
        self.0.answer(py, method, path, scope)
    }

    /// `route`, plus the request-log line for every answer it gives (the served RSGI path): timing
    /// and logging here spare the handler two clock reads and a call per request.
    fn serve(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyTuple>>> {
        let started = Instant::now();
        let answer = self.0.answer(py, method, path, scope)?;
        if let Some(response) = &answer {
            let status: u16 = response.bind(py).get_item(0)?.extract()?;
            self.0.log(method, path, status, started.elapsed());
        }
        Ok(answer)
    }

    /// An asyncio future that resolves when the round in flight ends (at once if none is), starting a
    /// round if there has never been one. Await it through `asyncio.shield`: it is shared by every
    /// waiter.
    fn ready_round(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let inner = &self.0;
        if inner.ready.newest().is_none() {
            inner.refresh_ready();
        }
        let mut round = inner.round.lock().unwrap_or_else(PoisonError::into_inner);
        if !round.in_flight {
            // The round has already ended: its answer is in the cache, and nothing is to be awaited.
            let done = Waiters::new(py)?.future;
            done.call_method1(py, "set_result", (py.None(),))?;
            return Ok(done);
        }
        let waiters = match &mut round.waiters {
            Some(waiters) => waiters,
            empty @ None => empty.insert(Waiters::new(py)?),
        };
        Ok(waiters.future.clone_ref(py))
    }

    /// Answers a readiness request from the newest round whatever its age: for requests that have
    /// just waited for that round (with a TTL of 0 every entry is born stale, yet it is theirs).
    fn route_latest(
        &self,
        py: Python<'_>,
        method: &str,
        path: &str,
        scope: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyTuple>> {
        let (one, head) = match route(method, path) {
            Route::Serve {
                endpoint: Endpoint::ReadyOne(name),
                head,
            } => (Some(name), head),
            Route::Serve {
                endpoint: Endpoint::Ready,
                head,
            } => (None, head),
            _ => {
                return Err(PyValueError::new_err(
                    "route_latest is only for /ready and /ready/<name>",
                ))
            }
        };
        let request = self.0.ready_request(one, head, scope)?;
        if let Some(draining) = self.0.draining_response(py, &request) {
            return Ok(draining);
        }
        // Never a new round here: the caller has just waited for one, and it is the answer.
        match self.0.ready.newest() {
            Some(entry) => Ok(self.0.ready_response(py, &entry.value, &request)),
            // Only if a round was abandoned before it ever produced a result.
            None => Ok(self.0.error(py, 503)),
        }
    }

    /// Who sees subsystems, metrics and errors from now on: `"always"`, `"never"` or `"token"`.
    #[pyo3(signature = (details, token))]
    fn set_details(&self, details: &str, token: Option<String>) -> PyResult<()> {
        self.0
            .details
            .store(Arc::new(Details::parse(details, token)?));
        Ok(())
    }

    /// From now on `/ready` answers 503 `draining`, whatever the checks say; everything else is served
    /// as before. Called when shutdown begins, so that load balancers stop sending traffic first.
    fn drain(&self) {
        self.0.draining.store(true, Ordering::Release);
    }

    #[getter]
    fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Acquire)
    }

    /// Appends one line to the request log (see `access_log.rs`): the RSGI path's `phoenix.api` log.
    fn log_request(&self, method: &str, path: &str, status: u16, elapsed_s: f64) {
        let elapsed = Duration::from_secs_f64(elapsed_s.max(0.0));
        self.0.log(method, path, status, elapsed);
    }

    /// Writes out buffered request-log lines now (at worker shutdown).
    fn flush_log(&self, py: Python<'_>) {
        if let Some(log) = self.0.access_log.get() {
            let _ = py.detach(|| log.flush());
        }
    }

    /// The JSON error response for `code`, e.g. 500 when the glue itself failed.
    fn error_response(&self, py: Python<'_>, code: u16) -> Py<PyTuple> {
        self.0.error(py, code)
    }

    /// Runs one uncached round now and returns `(ready, status, body)` with full details.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.bind_current_loop(py)?;
        let subsystems = self.0.subsystems.load_full();
        let round = start_round(&subsystems, runtime().handle());
        future_into_py(py, async move {
            let report: Report = round.await;
            let body = render::ready(&report, &View::FULL_JSON);
            Ok((report.ready(), body.status, body.bytes))
        })
    }

    /// Registers a Python check. `func` is called with no arguments; `is_async` says whether it
    /// returns a coroutine (run on the kernel's event loop) or a value (run in a thread).
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
        let mut policy = self.policy(threshold, timeout_ms)?;
        if let Some(warn) = warn_threshold {
            if !warn.is_finite() || warn < threshold {
                return Err(PyValueError::new_err(
                    "warn_threshold must be a finite number not below threshold",
                ));
            }
            policy.warn_threshold = Some(warn);
        }
        policy.interval = match interval_ms {
            Some(0) => return Err(PyValueError::new_err("interval_ms must be positive")),
            ms => ms.map(Duration::from_millis),
        };
        if failures_before_unready == 0 {
            return Err(PyValueError::new_err(
                "failures_before_unready must be at least 1",
            ));
        }
        policy.failures_before_unready = failures_before_unready;
        let probe = PyProbe {
            func: Arc::new(func),
            is_async,
            event_loop: Arc::clone(&self.0.event_loop),
        };
        self.insert(Subsystem::new(name, "metric", policy, Box::new(probe)))
    }

    /// Registers a native check that always passes, like Kubernetes' `ping` check: proof that the
    /// core answers, a placeholder while a real check is written, and a baseline for benchmarks.
    fn add_ping(&self, name: String) -> PyResult<()> {
        let probe = crate::checks::FnProbe(|| ready(Ok(1.0)));
        let policy = self.policy(0.0, None)?;
        self.insert(Subsystem::new(name, "ping", policy, Box::new(probe)))
    }

    /// Adds the three native Phoenix subsystems over `data_dir` and returns their Python handles
    /// `(memory, conscience, world)`. Nothing touches the disk until `start`.
    fn add_phoenix(
        &self,
        data_dir: PathBuf,
    ) -> PyResult<(PlasticLtm, TriuneConscience, WorldModel)> {
        let phoenix = Phoenix::new(&data_dir);
        if self.0.phoenix.set(Arc::clone(&phoenix)).is_err() {
            return Err(PyRuntimeError::new_err(
                "this kernel already has the Phoenix subsystems",
            ));
        }
        for subsystem in phoenix.subsystems(self.0.check_timeout) {
            self.insert(subsystem)?;
        }
        Ok((
            PlasticLtm(Arc::clone(&phoenix)),
            TriuneConscience(Arc::clone(&phoenix)),
            WorldModel(phoenix),
        ))
    }

    /// Starts background work (native initialisation, background checks, periodic refreshes) once per
    /// process, and binds `event_loop` (or the running loop) as the loop `async def` checks run on.
    #[pyo3(signature = (event_loop = None))]
    fn start(&self, py: Python<'_>, event_loop: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        match event_loop {
            Some(event_loop) => self.0.event_loop.store(Some(Arc::new(
                TaskLocals::new(event_loop).copy_context(py)?,
            ))),
            None => self.bind_current_loop(py)?,
        }
        if self.0.running.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let rt = runtime();
        if let Some(phoenix) = self.0.phoenix.get() {
            let init = Arc::clone(phoenix);
            rt.spawn_blocking(move || init.initialise());
            rt.spawn(Phoenix::keep_system_entry_fresh(
                Arc::downgrade(phoenix),
                crate::subsystems::SYSTEM_REFRESH,
            ));
        }
        for subsystem in self.0.subsystems.load().iter() {
            spawn_background(subsystem);
        }
        Ok(())
    }

    /// Resolves once the native subsystems (if any) have finished initialising.
    fn wait_initialised<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let phoenix = self.0.phoenix.get().cloned();
        future_into_py(py, async move {
            if let Some(phoenix) = phoenix {
                phoenix.wait_initialised().await;
            }
            Ok(())
        })
    }

    /// True once the native subsystems (if any) have finished initialising: `/startup` answers 200.
    #[getter]
    fn initialised(&self) -> bool {
        self.0.is_started()
    }

    /// Registered subsystem names, in order.
    #[getter]
    fn subsystem_names(&self) -> Vec<String> {
        self.0
            .subsystems
            .load()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }
}

/// Background subsystems check themselves on their own period, on the core's runtime.
fn spawn_background(subsystem: &Arc<Subsystem>) {
    if subsystem.policy.interval.is_some() {
        let rt = runtime();
        rt.spawn(Subsystem::run_in_background(
            Arc::downgrade(subsystem),
            rt.handle().clone(),
        ));
    }
}

impl Core {
    fn bind_current_loop(&self, py: Python<'_>) -> PyResult<()> {
        if let Ok(locals) = pyo3_async_runtimes::generic::get_current_locals::<GatedTokio>(py) {
            self.0.event_loop.store(Some(Arc::new(locals)));
        }
        Ok(())
    }

    fn policy(&self, threshold: f64, timeout_ms: Option<u64>) -> PyResult<Policy> {
        if !threshold.is_finite() {
            return Err(PyValueError::new_err("threshold must be a finite number"));
        }
        let timeout = match timeout_ms {
            Some(0) => return Err(PyValueError::new_err("timeout_ms must be positive")),
            Some(ms) => Duration::from_millis(ms),
            None => self.0.check_timeout,
        };
        Ok(Policy::new(threshold, timeout))
    }

    fn insert(&self, subsystem: Subsystem) -> PyResult<()> {
        if self
            .0
            .subsystems
            .load()
            .iter()
            .any(|s| s.name == subsystem.name)
        {
            return Err(PyValueError::new_err(format!(
                "a subsystem named {:?} is already registered",
                subsystem.name
            )));
        }
        let subsystem = Arc::new(subsystem);
        self.0.subsystems.rcu(|current| {
            let mut next = Vec::clone(current);
            next.push(Arc::clone(&subsystem));
            next
        });
        if self.0.running.load(Ordering::Acquire) {
            spawn_background(&subsystem);
        }
        Ok(())
    }
}

/// A user's check written in Python.
struct PyProbe {
    func: Arc<Py<PyAny>>,
    is_async: bool,
    event_loop: Arc<ArcSwapOption<TaskLocals>>,
}

/// `ValueError: boom`: the type and message, never a traceback or a file path.
fn describe(py: Python<'_>, err: &PyErr) -> String {
    let kind = err
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    match err.value(py).str() {
        Ok(text) if !text.to_string_lossy().is_empty() => {
            format!("{kind}: {}", text.to_string_lossy())
        }
        _ => kind,
    }
}

/// A check's return value as a metric: `True`/`False` mean 1.0/0.0, numbers are taken as they are.
fn metric(value: &Bound<'_, PyAny>) -> CheckResult {
    if let Ok(flag) = value.cast::<pyo3::types::PyBool>() {
        return Ok(if flag.is_true() { 1.0 } else { 0.0 });
    }
    value.extract::<f64>().map_err(|_| {
        let kind = value
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        format!("check returned {kind}, expected a float or a bool")
    })
}

/// What a Python check returned (or raised), judged with the GIL, taken through the gate.
fn check_result(returned: impl for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>>) -> CheckResult {
    attach(|py| match returned(py) {
        Ok(value) => metric(value.bind(py)),
        Err(err) => Err(describe(py, &err)),
    })
    .unwrap_or_else(|| Err(EXITING.to_owned()))
}

impl Probe for PyProbe {
    fn start(&self) -> CheckFuture {
        if !self.is_async {
            let func = Arc::clone(&self.func);
            return async move {
                let call = move || check_result(|py| func.call0(py));
                tokio::task::spawn_blocking(call)
                    .await
                    .unwrap_or_else(|_| Err("check thread failed".to_owned()))
            }
            .boxed();
        }
        let Some(locals) = self.event_loop.load_full() else {
            return ready(Err("no event loop to run async checks on".to_owned())).boxed();
        };
        attach(|py| {
            let started = self.func.call0(py).and_then(|coro| {
                pyo3_async_runtimes::into_future_with_locals(&locals, coro.into_bound(py))
            });
            match started {
                Ok(running) => async move {
                    let outcome = running.await;
                    check_result(|_| outcome)
                }
                .boxed(),
                Err(err) => ready(Err(describe(py, &err))).boxed(),
            }
        })
        .unwrap_or_else(|| ready(Err(EXITING.to_owned())).boxed())
    }
}

fn with_store<T>(
    py: Python<'_>,
    phoenix: &Phoenix,
    work: impl FnOnce(
            &crate::subsystems::plastic_ltm::PlasticLtm,
        ) -> Result<T, crate::subsystems::plastic_ltm::LtmError>
        + Send,
) -> PyResult<T>
where
    T: Send,
{
    py.detach(|| match phoenix.memory() {
        Ok(store) => work(store).map_err(|e| e.to_string()),
        Err(why) => Err(format!("plastic_ltm unavailable: {why}")),
    })
    .map_err(PyRuntimeError::new_err)
}

/// Persistent long-term memory (`kernel.memory`). Calls before start-up has finished wait for the store.
#[pyclass(frozen, module = "phoenix._core")]
struct PlasticLtm(Arc<Phoenix>);

#[pymethods]
impl PlasticLtm {
    /// Stores `data` with its `metadata` and returns the new record's id.
    #[pyo3(signature = (data, metadata = None))]
    fn store(
        &self,
        py: Python<'_>,
        data: &[u8],
        metadata: Option<BTreeMap<String, String>>,
    ) -> PyResult<u64> {
        let metadata = metadata.unwrap_or_default();
        with_store(py, &self.0, |s| s.store(data, &metadata))
    }

    /// Returns `(data, metadata)`; raises `KeyError` for an unknown id.
    fn retrieve<'py>(
        &self,
        py: Python<'py>,
        id: u64,
    ) -> PyResult<(Bound<'py, PyBytes>, BTreeMap<String, String>)> {
        match with_store(py, &self.0, |s| s.retrieve(id))? {
            Some((data, metadata)) => Ok((PyBytes::new(py, &data), metadata)),
            None => Err(PyKeyError::new_err(id)),
        }
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let len = with_store(py, &self.0, |s| s.len())?;
        usize::try_from(len).map_err(|_| PyRuntimeError::new_err("store too large"))
    }

    /// The integrity metric in [0, 1], measured now.
    fn integrity(&self, py: Python<'_>) -> PyResult<f64> {
        with_store(py, &self.0, |s| s.integrity().map(|i| i.metric))
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.0
            .data_dir()
            .join(crate::subsystems::plastic_ltm::FILE_NAME)
    }
}

/// The kernel's axioms (`kernel.conscience`).
#[pyclass(frozen, module = "phoenix._core")]
struct TriuneConscience(Arc<Phoenix>);

#[pymethods]
impl TriuneConscience {
    fn alignment(&self, py: Python<'_>) -> f64 {
        py.detach(|| self.0.conscience().alignment())
    }

    /// The valid axioms as dicts with `id`, `statement` and `weight`.
    fn axioms<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let set = py.detach(|| self.0.conscience());
        set.axioms
            .iter()
            .map(|a| {
                let d = PyDict::new(py);
                d.set_item("id", &a.id)?;
                d.set_item("statement", &a.statement)?;
                d.set_item("weight", a.weight)?;
                Ok(d)
            })
            .collect()
    }

    /// Where the axioms came from: a file path, or `built-in`.
    #[getter]
    fn source(&self, py: Python<'_>) -> String {
        py.detach(|| self.0.conscience().source.clone())
    }

    /// What was wrong with the axioms file, one entry per problem.
    #[getter]
    fn problems(&self, py: Python<'_>) -> Vec<String> {
        py.detach(|| self.0.conscience().problems.clone())
    }
}

/// The kernel's state map (`kernel.world`): key to JSON value, with the time of each update.
#[pyclass(frozen, module = "phoenix._core")]
struct WorldModel(Arc<Phoenix>);

#[pymethods]
impl WorldModel {
    /// Records `value` (anything `json.dumps` accepts) under `key`, stamped with the current time.
    fn update(&self, py: Python<'_>, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let text: String = py
            .import("json")?
            .call_method1("dumps", (value,))?
            .extract()?;
        let value =
            serde_json::from_str(&text).map_err(|e| PyValueError::new_err(e.to_string()))?;
        self.0.world().update(key, value);
        Ok(())
    }

    /// The value stored under `key`, or `None`.
    fn get<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.0.world().get(key) {
            Some((value, _)) => Ok(Some(
                py.import("json")?
                    .call_method1("loads", (value.to_string(),))?,
            )),
            None => Ok(None),
        }
    }

    /// Seconds since the Unix epoch of `key`'s last update, or `None`.
    fn updated_at(&self, key: &str) -> Option<f64> {
        let (_, at) = self.0.world().get(key)?;
        at.duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64())
    }

    fn remove(&self, key: &str) -> bool {
        self.0.world().remove(key)
    }

    fn keys(&self) -> Vec<String> {
        self.0.world().keys()
    }

    fn __len__(&self) -> usize {
        self.0.world().len()
    }

    fn coherence(&self) -> f64 {
        self.0.world().coherence()
    }
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Rust log records (e.g. a malformed axioms file) go to Python's `logging` under the target name.
    // No caching, so logging configured after import is honoured; these records are rare.
    let logger = GatedLogger(pyo3_log::Logger::new(py, pyo3_log::Caching::Nothing)?);
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    py.import("atexit")?
        .call_method1("register", (wrap_pyfunction!(close_python_gate, m)?,))?;
    // One worker thread is plenty: native checks run on the blocking pool, and the runtime is only
    // built on first use, inside the serving process, never in a parent that forks.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(1)
        .thread_name("phoenix-core")
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Core>()?;
    m.add_class::<PlasticLtm>()?;
    m.add_class::<TriuneConscience>()?;
    m.add_class::<WorldModel>()?;
    Ok(())
}
