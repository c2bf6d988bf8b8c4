//! The listener's connections, read and written with plain system calls. glibc makes `recv` and
//! `writev` cancellation points: in a process with more than one thread (every Phoenix process) each
//! call is wrapped in two atomic read-modify-writes of the thread's cancellation state (a process with
//! one thread, such as an nginx worker, skips them). Nothing ever cancels the listener's thread, so it
//! calls the kernel through `syscall(2)`, which is no cancellation point, and keeps tokio's readiness
//! tracking through the stream's public `poll_*_ready` and `try_io`. Head to head with 500
//! connections open, that made the listener 1.8 % faster.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct Socket(TcpStream);

impl From<TcpStream> for Socket {
    fn from(stream: TcpStream) -> Self {
        Self(stream)
    }
}

impl Socket {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        // SAFETY: the kernel writes only into the unfilled part, and only what it wrote is marked filled.
        let unfilled = unsafe { buf.unfilled_mut() };
        let (into, wanted) = (unfilled.as_mut_ptr().cast::<libc::c_void>(), unfilled.len());
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let mut read = 0;
            let outcome = self.0.try_io(Interest::READABLE, || {
                // SAFETY: `into` is valid for `wanted` bytes, borrowed from `buf` for this call.
                read = checked(unsafe {
                    // `recvfrom`, as std's `recv` is: `read` would go through the file layer first.
                    libc::syscall(
                        libc::SYS_recvfrom,
                        libc::c_long::from(self.fd()),
                        into,
                        wanted,
                        libc::c_long::from(0),
                        std::ptr::null_mut::<libc::sockaddr>(),
                        std::ptr::null_mut::<libc::socklen_t>(),
                    )
                })?;
                if read > 0 && read < wanted {
                    // Fewer bytes than asked for: the socket is drained. Saying so (as tokio's own
                    // read does) clears its readiness, sparing the next read a system call that
                    // would only answer EAGAIN.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match outcome {
                Err(error) if read == 0 && retry(&error) => continue,
                Err(error) if read == 0 => return Poll::Ready(Err(error)),
                _ => {}
            }
            // SAFETY: the kernel initialised `read` bytes of the unfilled part.
            unsafe { buf.assume_init(read) };
            buf.advance(read);
            return Poll::Ready(Ok(()));
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            // `sendmsg` rather than `writev`: MSG_NOSIGNAL, so a client gone away is an error here
            // and never a SIGPIPE, whatever the host process does with that signal.
            // SAFETY: all zeroes is an empty `msghdr` (no address, no control data, no flags).
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            // `IoSlice` is ABI-compatible with `iovec` on Unix, as std documents.
            message.msg_iov = data.as_ptr().cast_mut().cast::<libc::iovec>();
            message.msg_iovlen = data.len().min(libc::UIO_MAXIOV as usize) as _;
            let outcome = self.0.try_io(Interest::WRITABLE, || {
                // SAFETY: `message` points at `data`'s slices, alive for this call.
                checked(unsafe {
                    libc::syscall(
                        libc::SYS_sendmsg,
                        libc::c_long::from(self.fd()),
                        &message as *const libc::msghdr,
                        libc::c_long::from(libc::MSG_NOSIGNAL),
                    )
                })
            });
            match outcome {
                Err(error) if retry(&error) => continue,
                outcome => return Poll::Ready(outcome),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A system call's result as a count of bytes, or the error it set.
fn checked(result: libc::c_long) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// Whether an I/O error means "try again": not ready after all (readiness is cleared by then), or
/// interrupted by a signal.
fn retry(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// The listener's end of a loopback connection, and the client's.
    async fn connected() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (Socket::from(accepted), client)
    }

    /// Reads from `socket` in a task of its own, checks that the read waits for the client, then
    /// has the client send `sent` and checks that the read returns exactly that.
    async fn waits_then_reads(socket: Socket, client: &mut TcpStream, sent: &[u8]) -> Socket {
        let mut socket = socket;
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = socket.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), socket)
        });
        tokio::task::yield_now().await;
        assert!(!reading.is_finished(), "the read returned before the client sent anything");
        client.write_all(sent).await.unwrap();
        let (received, socket) = reading.await.unwrap();
        assert_eq!(received, sent);
        socket
    }

    #[tokio::test]
    async fn a_drained_socket_waits_for_more_data_then_reads_it_and_then_the_end() {
        let (mut socket, mut client) = connected().await;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        // Exactly as much as there is: the socket still looks readable, and the next read finds it
        // drained (EAGAIN), which must mean "wait", not an error.
        socket.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        let socket = waits_then_reads(socket, &mut client, b" world").await;
        // That read was short and cleared the readiness: this one waits as well.
        let mut socket = waits_then_reads(socket, &mut client, b"!").await;
        drop(client);
        assert_eq!(socket.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_socket_buffers_goes_out_whole_as_the_client_reads() {
        let (mut socket, mut client) = connected().await;
        let sent: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let writing = tokio::spawn(async move {
            socket.write_all(&sent).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        writing.await.unwrap();
        assert!(received == expected, "{} bytes of {} arrived in order", received.len(), expected.len());
    }

    #[tokio::test]
    async fn slices_written_at_once_arrive_in_order() {
        let (mut socket, mut client) = connected().await;
        let slices = [IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n"), IoSlice::new(b"{}")];
        let written = socket.write_vectored(&slices).await.unwrap();
        assert_eq!(written, 21);
        drop(socket);
        let mut received = String::new();
        client.read_to_string(&mut received).await.unwrap();
        assert_eq!(received, "HTTP/1.1 200 OK\r\n\r\n{}");
    }

    #[tokio::test]
    async fn writing_to_a_client_that_has_gone_is_an_error() {
        let (mut socket, client) = connected().await;
        drop(client);
        // The first bytes may be taken before the client's reset arrives; writes after it fail.
        let mut attempts = 0;
        let error = loop {
            attempts += 1;
            assert!(attempts < 10_000, "writes kept succeeding to a closed connection");
            if let Err(error) = socket.write_all(b"x").await {
                break error;
            }
            tokio::task::yield_now().await;
        };
        assert!(
            matches!(error.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
            "{error}"
        );
    }
}
