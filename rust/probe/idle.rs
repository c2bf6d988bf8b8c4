//! Closing connections that have gone silent, cheaply. hyper's own HTTP/1 header-read timeout re-arms
//! a timer for every request; here reading counts bytes on an atomic, and one timer per connection
//! looks at the count every `timeout`: a connection that sent nothing in a whole period is closed. It
//! frees the slot of a client that stalls mid-request, idles on keep-alive, or has vanished.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that counts what is read from it.
pub struct Watched<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

/// The count a `Watched` stream keeps, for its connection's timer.
pub struct Activity {
    read: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    pub fn new(inner: S) -> (Self, Activity) {
        let read = Arc::new(AtomicU64::new(0));
        (Self { inner, read: Arc::clone(&read) }, Activity { read })
    }
}

impl Activity {
    /// Drives `connection` to its end, or drops it (closing the socket) once a whole `timeout`
    /// passes with nothing read. `None` when it was closed for that.
    pub async fn close_when_idle<F: Future>(self, connection: F, timeout: Duration) -> Option<F::Output> {
        tokio::pin!(connection);
        loop {
            let before = self.read.load(Ordering::Relaxed);
            tokio::select! {
                output = &mut connection => return Some(output),
                () = tokio::time::sleep(timeout) => {
                    if self.read.load(Ordering::Relaxed) == before {
                        return None;
                    }
                }
            }
        }
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
            self.read.fetch_add(read as u64, Ordering::Relaxed);
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

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_keeps_sending_stays_and_a_silent_one_is_closed() {
        let timeout = Duration::from_secs(10);
        let (mut client, server) = tokio::io::duplex(64);
        let (mut server, activity) = Watched::new(server);
        // The "connection" reads until the client hangs up.
        let connection = async move {
            let mut sink = Vec::new();
            server.read_to_end(&mut sink).await.map(|_| sink.len())
        };
        let watched = tokio::spawn(activity.close_when_idle(connection, timeout));
        // A byte every 6 s: never a whole period of silence.
        for _ in 0..5 {
            client.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(!watched.is_finished(), "closed while the client was still sending");
        }
        // Then silence: closed within the next two periods, with the client still connected.
        tokio::time::sleep(timeout * 2).await;
        assert!(watched.is_finished());
        assert_eq!(watched.await.unwrap().map(|read| read.ok()), None, "closed for idling, not ended");
    }
}
