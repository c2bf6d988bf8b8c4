//! The request log of the served hot path, written by the core instead of Python's `logging`.
//!
//! Measured on the reference machine, one `logging.info` call with a stream handler costs about 12 µs:
//! as much as a third of serving a cached response, which halved throughput. Here a request costs one
//! formatted line appended to a buffer under an uncontended lock; a background thread writes the buffer
//! out every `FLUSH_EVERY` in a single system call, sooner when it fills.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::render::timestamp;

pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full wakes the flusher early.
const FLUSH_AT_BYTES: usize = 64 * 1024;
/// Past this, lines are dropped (and counted) rather than held: a stuck output must not grow memory.
const MAX_BUFFERED_BYTES: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct Buffer {
    lines: Vec<u8>,
    clock: Clock,
}

/// Formats timestamps like `render::timestamp`, redoing the calendar part only when the second
/// changes: at tens of thousands of lines a second, that was the largest part of a line's cost. The
/// wall-clock time of a line is derived from the monotonic instant its request ended, counted from an
/// anchor read off the system clock at the start of each second, so a line costs no clock read of its
/// own (the request's end is read anyway, for its latency). A step of the system clock shows from the
/// next second on.
#[derive(Default)]
struct Clock {
    /// A monotonic instant and the wall-clock time (since the epoch) read with it.
    anchor: Option<(Instant, Duration)>,
    second: u64,
    /// `2026-11-27T09:01:44.` for `second`.
    prefix: String,
}

impl Clock {
    /// The wall-clock time (since the epoch) of the instant `at`.
    fn since_epoch(&mut self, at: Instant) -> Duration {
        if let Some((instant, wall)) = self.anchor {
            // An instant from before the anchor (another thread's request, ended a moment earlier)
            // counts as the anchor's.
            let derived = wall + at.saturating_duration_since(instant);
            if derived.as_secs() == wall.as_secs() {
                return derived;
            }
        }
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.anchor = Some((at, wall));
        wall
    }

    /// Appends the time `since_epoch` as `2026-11-27T09:01:44.503Z`.
    fn write(&mut self, since_epoch: Duration, out: &mut Vec<u8>) {
        if self.prefix.is_empty() || since_epoch.as_secs() != self.second {
            self.second = since_epoch.as_secs();
            let whole = UNIX_EPOCH + Duration::from_secs(self.second);
            self.prefix = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix.pop(); // the "Z"
            self.prefix.push('.');
        }
        out.extend_from_slice(self.prefix.as_bytes());
        push_three_digits(out, since_epoch.subsec_millis());
        out.push(b'Z');
    }
}

/// Appends `n` (below 1000) zero-padded to three digits.
fn push_three_digits(out: &mut Vec<u8>, n: u32) {
    debug_assert!(n < 1000);
    out.extend_from_slice(&[b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

/// Lines are appended under one lock and written out under another, by the flusher thread alone, so
/// a request never waits for a write: the hot path holds its lock only to copy one line.
pub struct AccessLog<W: Write + Send> {
    buffer: Mutex<Buffer>,
    /// The output, and the buffer that goes in next: written out and emptied, it keeps its capacity,
    /// so lines are appended to memory already in place (growing a fresh buffer each flush, page
    /// faults and copies included, cost more than formatting the lines).
    out: Mutex<(W, Vec<u8>)>,
    dropped: AtomicU64,
    flusher: OnceLock<Thread>,
}

impl<W: Write + Send + 'static> AccessLog<W> {
    pub fn new(out: W) -> Arc<Self> {
        Arc::new(Self {
            buffer: Mutex::new(Buffer::default()),
            out: Mutex::new((out, Vec::with_capacity(FLUSH_AT_BYTES))),
            dropped: AtomicU64::new(0),
            flusher: OnceLock::new(),
        })
    }

    /// Appends one line in the format of Phoenix's Python log handler, so both read alike:
    /// `2026-11-27T09:01:44.503Z INFO phoenix.api: GET /health 200 0.131ms`, for a request that took
    /// `elapsed` and ended at `ended`.
    pub fn record(&self, method: &str, path: &str, status: u16, elapsed: Duration, ended: Instant) {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        if buffer.lines.len() >= MAX_BUFFERED_BYTES {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Buffer { lines, clock } = &mut *buffer;
        // Formatted by hand, not with `write!`: by callgrind, the formatting machinery cost four times
        // the core's routing and cache lookup for the same request.
        let since_epoch = clock.since_epoch(ended);
        clock.write(since_epoch, lines);
        lines.extend_from_slice(b" INFO phoenix.api: ");
        lines.extend_from_slice(method.as_bytes());
        lines.push(b' ');
        // Paths are printable ASCII nearly always; anything else is escaped so it cannot forge lines.
        if path.bytes().all(|b| b.is_ascii_graphic()) {
            lines.extend_from_slice(path.as_bytes());
        } else {
            let _ = write!(lines, "{}", path.escape_debug());
        }
        let mut digits = itoa::Buffer::new();
        lines.push(b' ');
        lines.extend_from_slice(digits.format(status).as_bytes());
        lines.push(b' ');
        // Integer arithmetic: float formatting costs more than the rest of the line (and 64 bits, not
        // `as_micros`' 128, whose division is a library call).
        let millis =
            elapsed.as_secs().saturating_mul(1000).saturating_add(u64::from(elapsed.subsec_millis()));
        lines.extend_from_slice(digits.format(millis).as_bytes());
        lines.push(b'.');
        push_three_digits(lines, elapsed.subsec_micros() % 1000);
        lines.extend_from_slice(b"ms\n");
        if lines.len() >= FLUSH_AT_BYTES {
            if let Some(flusher) = self.flusher.get() {
                flusher.unpark();
            }
        }
    }

    /// Writes out what is buffered. The buffer is swapped out first, so recording goes on meanwhile.
    pub fn flush(&self) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let (out, pending) = &mut *out;
        {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut buffer.lines, pending);
        }
        let written = write_out(out, pending, self.dropped.swap(0, Ordering::Relaxed));
        pending.clear();
        // A burst's worth of capacity is not kept for ever.
        pending.shrink_to(4 * FLUSH_AT_BYTES);
        written
    }

    /// Flushes every `every` (sooner when the buffer fills) until the log is dropped.
    pub fn spawn_flusher(log: &Arc<Self>, every: Duration) -> io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(log);
        let thread = std::thread::Builder::new().name("phoenix-access-log".into()).spawn(move || loop {
            std::thread::park_timeout(every);
            match weak.upgrade() {
                Some(log) => {
                    let _ = log.flush();
                }
                None => return,
            }
        })?;
        let _ = log.flusher.set(thread.thread().clone());
        Ok(())
    }
}

/// Writes `pending` lines out, after a line saying how many were `dropped`, if any.
fn write_out(out: &mut impl Write, pending: &[u8], dropped: u64) -> io::Result<()> {
    if dropped > 0 {
        writeln!(
            out,
            "{} WARNING phoenix.api: {dropped} request log lines dropped: the log output is not keeping up",
            timestamp(SystemTime::now())
        )?;
    }
    if pending.is_empty() {
        return Ok(());
    }
    out.write_all(pending)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn cached_clock_formats_like_the_renderer() {
        let mut clock = Clock::default();
        for millis in [0, 1_700_000_000_123, 1_700_000_000_999, 1_700_000_001_000, 1_700_000_061_005] {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = Vec::new();
            clock.write(at.duration_since(UNIX_EPOCH).unwrap(), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), timestamp(at));
        }
    }

    #[test]
    fn line_times_follow_the_monotonic_clock_within_the_anchored_second() {
        let start = Instant::now();
        let anchored = Duration::from_millis(1_700_000_000_100);
        let mut clock = Clock { anchor: Some((start, anchored)), ..Clock::default() };
        assert_eq!(
            clock.since_epoch(start + Duration::from_millis(250)),
            anchored + Duration::from_millis(250)
        );
        // A request that ended a moment before the anchor was read counts as the anchor's.
        if let Some(earlier) = start.checked_sub(Duration::from_millis(5)) {
            assert_eq!(clock.since_epoch(earlier), anchored);
        }
        assert_eq!(clock.anchor, Some((start, anchored)), "no new anchor within the second");
    }

    #[test]
    fn a_new_second_reads_the_system_clock_again() {
        let start = Instant::now();
        // An anchor three years behind the system clock: only a fresh reading can catch up.
        let stale =
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(3 * 365 * 86_400);
        let mut clock = Clock { anchor: Some((start, stale)), ..Clock::default() };
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let later = start + Duration::from_secs(2);
        let read = clock.since_epoch(later);
        assert!(read >= before, "{read:?} is the system clock's reading, not {stale:?} + 2 s");
        assert_eq!(clock.anchor, Some((later, read)));
    }

    #[test]
    fn latency_is_printed_in_milliseconds_with_three_decimals() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        log.record("GET", "/a", 200, Duration::from_micros(5), Instant::now());
        log.record("GET", "/b", 200, Duration::from_micros(12_345), Instant::now());
        log.record("GET", "/c", 200, Duration::from_secs(2) + Duration::from_micros(7_001), Instant::now());
        log.flush().unwrap();
        let text = sink.text();
        assert!(text.contains("GET /a 200 0.005ms\n"), "{text}");
        assert!(text.contains("GET /b 200 12.345ms\n"), "{text}");
        assert!(text.contains("GET /c 200 2007.001ms\n"), "{text}");
        // Saturated as the metrics' histogram saturates, not overflowed.
        log.record("GET", "/d", 200, Duration::MAX, Instant::now());
        log.flush().unwrap();
        assert!(sink.text().contains("GET /d 200 18446744073709551615.999ms\n"), "{}", sink.text());
    }

    #[test]
    fn lines_are_buffered_until_flushed() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        log.record("GET", "/health", 200, Duration::from_micros(131), Instant::now());
        assert_eq!(sink.text(), "");
        log.flush().unwrap();
        let text = sink.text();
        assert!(text.ends_with(" INFO phoenix.api: GET /health 200 0.131ms\n"), "{text}");
        assert!(text.starts_with("20"), "{text}");
    }

    #[test]
    fn a_full_buffer_wakes_the_flusher_early() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        AccessLog::spawn_flusher(&log, Duration::from_secs(3600)).unwrap();
        let long_path = "/".repeat(1000);
        for _ in 0..70 {
            log.record("GET", &long_path, 404, Duration::ZERO, Instant::now());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().len() < FLUSH_AT_BYTES {
            assert!(std::time::Instant::now() < deadline, "flusher was not woken");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_stuck_output_drops_lines_and_says_how_many() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        let long_path = "/".repeat(1000);
        let lines = MAX_BUFFERED_BYTES / 1000 + 100;
        for _ in 0..lines {
            log.record("GET", &long_path, 404, Duration::ZERO, Instant::now());
        }
        log.flush().unwrap();
        let text = sink.text();
        assert!(text.len() < MAX_BUFFERED_BYTES + 10_000);
        assert!(text.lines().next().unwrap().contains("request log lines dropped"), "{}", &text[..200]);
    }

    #[test]
    fn control_characters_in_paths_cannot_forge_lines() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        log.record("GET", "/x\n2026 INFO fake", 404, Duration::ZERO, Instant::now());
        log.flush().unwrap();
        assert_eq!(sink.text().lines().count(), 1);
    }

    #[test]
    fn flusher_writes_without_being_asked_and_stops_with_the_log() {
        let sink = Sink::default();
        let log = AccessLog::new(sink.clone());
        AccessLog::spawn_flusher(&log, Duration::from_millis(10)).unwrap();
        log.record("HEAD", "/ready", 503, Duration::ZERO, Instant::now());
        std::thread::sleep(Duration::from_millis(100));
        assert!(sink.text().contains("HEAD /ready 503"));
        drop(log);
    }
}
