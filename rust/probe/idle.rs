//! Closing connections that have gone silent, at no cost per request. hyper's own HTTP/1 header-read
//! timeout re-arms a timer for every request, and a timer per connection is polled at every wake-up of
//! its task; both cost several percent of a cached answer with hundreds of connections open, and so
//! did counting each read through a stream wrapper. Instead one `Sweeper` task per listener asks the
//! kernel, every half of its limit, how long each connection's socket has received no data
//! (`TCP_INFO`'s `tcpi_last_data_recv`), and closes those silent for the whole limit. That frees the slot of a client
//! that stalls mid-request, idles on keep-alive, or has vanished. HTTP/2 clients answer the listener's
//! pings, and those answers are data, so a connection only listening (a gRPC `Watch`) is kept.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::AbortHandle;

/// The open connections of one listener.
pub struct Sweeper {
    limit: Duration,
    connections: Mutex<HashMap<u64, Tracked>>,
    next_key: AtomicU64,
}

struct Tracked {
    /// The connection's socket. Its task closes it and takes it off the list in one drop (`Forget`),
    /// on the listener's one thread, which also sweeps: a sweep never asks about a closed socket, whose
    /// number the kernel may have given to another.
    socket: RawFd,
    task: AbortHandle,
}

impl Sweeper {
    /// A sweeper that closes connections silent for `limit` (within half of it more), on the current
    /// tokio runtime.
    pub fn start(limit: Duration) -> Arc<Self> {
        let sweeper = Self::new(limit);
        let sweeping = Arc::downgrade(&sweeper);
        let period = limit / 2;
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

    fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self { limit, connections: Mutex::default(), next_key: AtomicU64::new(0) })
    }

    /// Serves `stream` (through `serve`) as a task of its own, dropped (closing the socket) when a
    /// sweep finds it silent.
    pub fn spawn<F>(self: &Arc<Self>, stream: TcpStream, serve: impl FnOnce(TcpStream) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let socket = stream.as_raw_fd();
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let forget = Forget { sweeper: Arc::clone(self), key };
        let serving = serve(stream);
        // Listed under the lock the task's `Forget` needs, so it cannot be taken off before it is on.
        let mut connections = self.lock();
        let task = tokio::spawn(async move {
            let _forget = forget;
            serving.await;
        });
        connections.insert(key, Tracked { socket, task: task.abort_handle() });
    }

    fn sweep(&self) {
        self.lock().retain(|_, tracked| {
            // A socket the kernel cannot tell about is gone already.
            let silent = silent_for(tracked.socket).is_none_or(|silence| silence >= self.limit);
            if silent {
                tracked.task.abort();
            }
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

/// Takes an ended connection off the sweeper's list.
struct Forget {
    sweeper: Arc<Sweeper>,
    key: u64,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.sweeper.lock().remove(&self.key);
    }
}

/// How long a TCP socket has received no data, by the kernel (to its clock tick, a few ms).
fn silent_for(socket: RawFd) -> Option<Duration> {
    // SAFETY: `tcp_info` is plain integers, for which zero is a valid value; getsockopt writes at most
    // `length` bytes into it and only reads the socket number.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let read = unsafe {
        libc::getsockopt(
            socket,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut length,
        )
    };
    (read == 0).then(|| Duration::from_millis(info.tcpi_last_data_recv.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A client connected to a served "connection" that reads until the client hangs up; what it read
    /// when it ended by itself is sent on the returned channel.
    async fn connect(sweeper: &Arc<Sweeper>) -> (TcpStream, tokio::sync::oneshot::Receiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (ended, end) = tokio::sync::oneshot::channel();
        sweeper.spawn(server, |mut server| async move {
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
            let _ = ended.send(sink.len());
        });
        (client, end)
    }

    #[tokio::test]
    async fn a_connection_silent_past_the_limit_is_closed_with_its_client_still_there() {
        let sweeper = Sweeper::new(Duration::from_millis(10));
        let (mut client, end) = connect(&sweeper).await;
        client.write_all(b"x").await.unwrap();
        // Well past the limit, whatever the kernel's clock tick.
        tokio::time::sleep(Duration::from_millis(60)).await;
        sweeper.sweep();
        assert_eq!(sweeper.tracked(), 0);
        assert!(end.await.is_err(), "dropped for its silence, not ended by itself");
        // The client sees its connection closed.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn data_received_within_the_limit_keeps_a_connection() {
        let sweeper = Sweeper::new(Duration::from_secs(3600));
        let (mut client, mut end) = connect(&sweeper).await;
        client.write_all(b"xy").await.unwrap();
        sweeper.sweep();
        tokio::task::yield_now().await;
        assert_eq!(sweeper.tracked(), 1);
        assert!(end.try_recv().is_err(), "still served");
        drop(client);
        assert_eq!(end.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_kernel_counts_silence_from_the_last_data_received() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = silent_for(server.as_raw_fd()).unwrap();
        assert!(before >= Duration::from_millis(150), "{before:?}: silent since it was accepted");
        client.write_all(b"x").await.unwrap();
        server.read_exact(&mut [0u8; 1]).await.unwrap();
        let after = silent_for(server.as_raw_fd()).unwrap();
        assert!(after < before, "{after:?} after data, {before:?} before");
        // Sending is not receiving.
        server.write_all(b"y").await.unwrap();
        client.read_exact(&mut [0u8; 1]).await.unwrap();
        assert!(silent_for(server.as_raw_fd()).unwrap() >= after);
        assert_eq!(silent_for(-1), None);
    }

    #[tokio::test]
    async fn a_connection_that_ends_is_taken_off_the_list_at_once() {
        let sweeper = Sweeper::new(Duration::from_secs(3600));
        let (mut client, end) = connect(&sweeper).await;
        client.write_all(b"bye").await.unwrap();
        drop(client);
        // The task takes itself off as it ends, before this one hears of it.
        assert_eq!(end.await.unwrap(), 3);
        assert_eq!(sweeper.tracked(), 0);
    }
}
