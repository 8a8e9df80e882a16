//! An adopted shim's process, as the agent that re-adopted it follows it: its control
//! connection and its pidfd. Apart from `adopt` (which finds and greets the shims) so that
//! `follow` (which watches every shim, started or adopted) can hold one without importing
//! `adopt`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;

/// How long after its connection closed an adopted shim may take to exit.
pub(super) const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// An adopted shim's process: its control connection (closed when it exits) and its pidfd.
pub(super) struct AdoptedProc {
    pub(super) reader: OwnedReadHalf,
    pub(super) pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    pub(super) pid: u32,
    pub(super) closed: bool,
    pub(super) exited: bool,
}

impl AdoptedProc {
    /// Resolves once the shim has exited: its connection closed, then its pidfd (where there
    /// is one) says it is gone, within [`EXIT_LIMIT`]. Cancel-safe.
    pub(super) async fn wait(&mut self) {
        let mut buf = [0u8; 512];
        while !self.closed {
            match self.reader.read(&mut buf).await {
                Ok(0) | Err(_) => self.closed = true,
                Ok(_) => {}
            }
        }
        if !self.exited {
            if let Some(fd) = &self.pidfd {
                let _ = tokio::time::timeout(EXIT_LIMIT, fd.readable()).await;
            }
            self.exited = true;
        }
    }

    /// Sends `sig` to the shim, through its pidfd (a reused pid is never hit), or by pid
    /// while its connection is still open.
    pub(super) fn signal(&mut self, sig: i32) {
        if self.exited {
            return;
        }
        match &self.pidfd {
            Some(fd) => {
                // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.get_ref().as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0u32,
                    )
                };
            }
            None if !self.closed && self.pid > 1 => {
                // SAFETY: kill has no memory-safety preconditions; pid > 1.
                unsafe { libc::kill(self.pid as i32, sig) };
            }
            None => {}
        }
    }
}
