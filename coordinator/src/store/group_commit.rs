//! Group commit: many batches, one flush.
//!
//! A flush (fsync) costs milliseconds whatever it carries, so a coordinator that flushed once
//! per batch could admit only a few hundred nodes a second, and a join storm of thousands of
//! nodes would queue behind the disk. Here a batch is first *applied* (in memory, in order,
//! numbered by a ticket), and one flusher thread flushes whatever has been applied so far;
//! every batch applied before a flush began is durable when it ends. Callers wait for their
//! ticket before they acknowledge or act on the batch, so the rule of the store ("durable
//! before acted on") holds unchanged, while all the batches that arrive during one flush share
//! the next one.
//!
//! Why waiting for your own ticket is enough: the engine's log is written in order, so a
//! flush makes every earlier write durable too. An action that depends on a state another
//! caller applied but has not yet seen flushed is itself a batch with a later ticket; by the
//! time that action is taken, the earlier state is on disk as well.
//!
//! A failed flush leaves memory ahead of the disk with no way to tell which batches made it;
//! the only safe answer is to stop the process and let a restart reload what is durable
//! (systemd restarts it). That is what the flusher does.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use tokio::sync::watch;

/// Identifies an applied batch: it is durable once the flushed ticket reaches it.
pub type Ticket = u64;

#[derive(Debug, Default)]
struct State {
    applied: Ticket,
    flushed: Ticket,
    stop: bool,
}

/// The shared half: callers take tickets and wait on them.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    cv: Condvar,
    flushed_tx: watch::Sender<Ticket>,
}

/// Owns the flusher thread; stopping it flushes what is left.
#[derive(Debug)]
pub struct Flusher {
    shared: Arc<GroupCommit>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the flusher thread around `flush`.
    pub fn start(
        flush: impl Fn() -> Result<(), String> + Send + 'static,
    ) -> std::io::Result<(Arc<GroupCommit>, Flusher)> {
        let (flushed_tx, _) = watch::channel(0);
        let shared = Arc::new(GroupCommit {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            flushed_tx,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-flush".into())
            .spawn(move || s.run(flush))?;
        Ok((
            shared.clone(),
            Flusher {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, flush: impl Fn() -> Result<(), String>) {
        loop {
            let target = {
                let mut st = self.lock();
                while st.applied == st.flushed && !st.stop {
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.applied == st.flushed {
                    return;
                }
                st.applied
            };
            if let Err(e) = flush() {
                tracing::error!(error = %e, "the store could not be flushed to disk; exiting so that a restart reloads the durable state");
                eprintln!("tandem-coordinator: store flush failed: {e}");
                std::process::exit(70);
            }
            let mut st = self.lock();
            st.flushed = st.flushed.max(target);
            let flushed = st.flushed;
            drop(st);
            self.cv.notify_all();
            self.flushed_tx.send_replace(flushed);
        }
    }

    /// Takes the ticket of a batch the caller has just applied (call it after the apply, while
    /// still holding whatever ordered the apply).
    pub fn applied(&self) -> Ticket {
        let mut st = self.lock();
        st.applied += 1;
        let t = st.applied;
        drop(st);
        self.cv.notify_all();
        t
    }

    /// The newest ticket handed out.
    pub fn last(&self) -> Ticket {
        self.lock().applied
    }

    /// Blocks until `ticket` is durable.
    pub fn wait(&self, ticket: Ticket) {
        let mut st = self.lock();
        while st.flushed < ticket {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Resolves once `ticket` is durable, without holding a thread.
    pub async fn durable(&self, ticket: Ticket) {
        let mut rx = self.flushed_tx.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we are borrowed.
        let _ = rx.wait_for(|f| *f >= ticket).await;
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn batches_during_a_flush_share_the_next_one() {
        let flushes = Arc::new(AtomicU64::new(0));
        let f = flushes.clone();
        let (gc, flusher) = GroupCommit::start(move || {
            f.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok(())
        })
        .unwrap();
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let gc = gc.clone();
                std::thread::spawn(move || {
                    let t = gc.applied();
                    gc.wait(t);
                    assert!(gc.lock().flushed >= t);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = flushes.load(Ordering::SeqCst);
        assert!((1..50).contains(&n), "{n} flushes for 50 batches");
        drop(flusher);
    }

    #[tokio::test]
    async fn async_waiters_see_their_ticket_flushed() {
        let (gc, _flusher) = GroupCommit::start(|| Ok(())).unwrap();
        let t1 = gc.applied();
        let t2 = gc.applied();
        gc.durable(t2).await;
        assert!(gc.lock().flushed >= t1.max(t2));
    }

    #[test]
    fn stopping_flushes_what_is_left() {
        let flushes = Arc::new(AtomicU64::new(0));
        let f = flushes.clone();
        let (gc, flusher) = GroupCommit::start(move || {
            f.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let t = gc.applied();
        drop(flusher);
        assert_eq!(gc.lock().flushed, t);
        assert!(flushes.load(Ordering::SeqCst) >= 1);
    }
}
