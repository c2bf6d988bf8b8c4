//! Closing connections that have gone silent, cheaply. hyper's own HTTP/1 header-read timeout re-arms
//! a timer for every request, and a timer per connection is polled at every wake-up of its task; both
//! cost several percent of a cached answer with hundreds of connections open. Here reading only counts
//! bytes on an atomic, and one `Sweeper` task per listener looks at every count once a period: a
//! connection that read nothing since the previous look (a silence of one to two periods) is closed.
//! It frees the slot of a client that stalls mid-request, idles on keep-alive, or has vanished.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;

/// A stream that counts what is read from it.
pub struct Watched<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

/// The count a `Watched` stream keeps, for the sweeper.
pub struct Activity {
    read: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    pub fn new(inner: S) -> (Self, Activity) {
        let read = Arc::new(AtomicU64::new(0));
        (Self { inner, read: Arc::clone(&read) }, Activity { read })
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// The open connections of one listener, each with its read count as of the previous sweep.
pub struct Sweeper {
    connections: Mutex<HashMap<u64, Tracked>>,
    next_key: AtomicU64,
}

struct Tracked {
    read: Arc<AtomicU64>,
    seen: u64,
    task: AbortHandle,
}

impl Sweeper {
    /// A sweeper that looks at its connections every `period`, on the current tokio runtime.
    pub fn start(period: Duration) -> Arc<Self> {
        let sweeper = Arc::new(Self { connections: Mutex::default(), next_key: AtomicU64::new(0) });
        let sweeping = Arc::downgrade(&sweeper);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match sweeping.upgrade() {
                    Some(sweeper) => sweeper.sweep(),
                    None => return,
                }
            }
        });
        sweeper
    }

    /// Serves a connection (`serving`, reading from the `Watched` stream `activity` counts) as a task
    /// of its own, dropped (closing its socket) when a sweep finds it silent.
    pub fn spawn(self: &Arc<Self>, activity: Activity, serving: impl Future<Output = ()> + Send + 'static) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let forget = Forget { sweeper: Arc::clone(self), key };
        let task = tokio::spawn(async move {
            let _forget = forget;
            serving.await;
        });
        let tracked = Tracked { read: activity.read, seen: 0, task: task.abort_handle() };
        self.lock().insert(key, tracked);
    }

    fn sweep(&self) {
        self.lock().retain(|_, tracked| {
            let read = tracked.read.load(Ordering::Relaxed);
            let silent = read == tracked.seen;
            if silent {
                tracked.task.abort();
            }
            tracked.seen = read;
            !silent
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        // The map stays consistent whatever panicked while holding it.
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// Takes an ended connection off the sweeper's list. (One that ends before it is listed is taken off
/// by the next sweep, having read nothing since.)
struct Forget {
    sweeper: Arc<Sweeper>,
    key: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.sweeper.lock().remove(&self.key);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            // This stream is the count's only writer: a plain store, not a locked read-modify-write.
            let count = self.read.load(Ordering::Relaxed);
            self.read.store(count.wrapping_add(read as u64), Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client connected to a "connection" that reads until the client hangs up; whether it ended
    /// by itself is sent on the returned channel.
    fn connect(sweeper: &Arc<Sweeper>) -> (tokio::io::DuplexStream, tokio::sync::oneshot::Receiver<usize>) {
        let (client, server) = tokio::io::duplex(64);
        let (mut server, activity) = Watched::new(server);
        let (ended, end) = tokio::sync::oneshot::channel();
        sweeper.spawn(activity, async move {
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
            let _ = ended.send(sink.len());
        });
        (client, end)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_keeps_sending_stays_and_a_silent_one_is_closed() {
        let period = Duration::from_secs(10);
        let sweeper = Sweeper::start(period);
        let (mut talking, talking_end) = connect(&sweeper);
        let (_silent, mut silent_end) = connect(&sweeper);
        // A byte every 6 s: never a whole period of silence.
        for _ in 0..5 {
            talking.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        // The silent one was dropped without ending by itself (its sender went with it), its client
        // still connected; the talking one is still served and still listed.
        assert!(silent_end.try_recv().is_err());
        assert_eq!(sweeper.tracked(), 1);
        // Then silence: closed within the next two periods, with the client still connected.
        tokio::time::sleep(period * 2).await;
        assert_eq!(sweeper.tracked(), 0);
        assert!(talking_end.await.is_err(), "dropped for idling, not ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_is_taken_off_the_list_at_once() {
        let sweeper = Sweeper::start(Duration::from_secs(10));
        let (mut client, end) = connect(&sweeper);
        client.write_all(b"bye").await.unwrap();
        drop(client);
        assert_eq!(end.await.unwrap(), 3);
        tokio::task::yield_now().await;
        assert_eq!(sweeper.tracked(), 0);
    }
}
