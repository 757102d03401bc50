//! [`Reaper`]: the host's thread that frees what swapped-out revisions leave behind, so no
//! call pays for it.
//!
//! A revision is freed by whoever drops the last `Arc` to it, and after a swap that is as
//! likely a call still running on it (or a [`Pinned`](crate::Pinned) request) as the loading
//! thread. Freeing it means dropping its stores: the pooling allocator resets each linear
//! memory and table, and the last revision of a module the host no longer keeps in memory
//! (`compiled.rs`) unmaps the module's code. Those are
//! microseconds each, some of them system calls, and they would land on one request's
//! latency. So a revision's drop only hands its instances to the reaper (a push under a
//! mutex), and the reaper's thread drops them.
//!
//! ```text
//!  last holder (call, pin, loader) ── Revision::drop ── reaper.retire(instances) ── return
//!  hotload-reaper ── wait ── take the queue ── drop stores, reset memories, unmap code ── wait
//!  loader ── reaper.settle() ── build the next revision (the freed slots are back)
//! ```
//! [`Reaper::settle`] keeps the pool's accounting what it was when teardown ran inline: a
//! load waits for teardown already handed over before it takes new slots.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// A queue of things to drop and the thread that drops them.
pub(crate) struct Reaper<T> {
    queue: Mutex<Queue<T>>,
    /// Signalled when work arrives or the reaper is told to stop.
    work: Condvar,
    /// Signalled when the thread has dropped everything it took.
    idle: Condvar,
}

struct Queue<T> {
    items: Vec<T>,
    /// The thread is dropping a batch it took off `items`.
    busy: bool,
    /// The host is gone: whatever is retired from now on is dropped where it is.
    stopped: bool,
}

impl<T: Send + 'static> Reaper<T> {
    /// Starts the reaper thread; it runs until the returned guard drops.
    pub(crate) fn start() -> std::io::Result<(Arc<Self>, ReaperThread<T>)> {
        let reaper = Arc::new(Reaper {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                busy: false,
                stopped: false,
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let run = reaper.clone();
        let thread = std::thread::Builder::new()
            .name("hotload-reaper".into())
            .spawn(move || run.run())?;
        Ok((
            reaper.clone(),
            ReaperThread {
                reaper,
                thread: Some(thread),
            },
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // Nothing runs under this lock that can panic halfway (pushes, flags, a `take`).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `item` to the thread to drop. After the host is gone it is dropped here.
    pub(crate) fn retire(&self, item: T) {
        let mut q = self.lock();
        if q.stopped {
            drop(q);
            drop(item);
            return;
        }
        q.items.push(item);
        drop(q);
        self.work.notify_one();
    }

    /// Waits until everything retired so far has been dropped.
    pub(crate) fn settle(&self) {
        let mut q = self.lock();
        while !q.items.is_empty() || q.busy {
            q = self.idle.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn run(&self) {
        let mut q = self.lock();
        loop {
            if q.items.is_empty() {
                if q.stopped {
                    return;
                }
                q = self.work.wait(q).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let batch = std::mem::take(&mut q.items);
            q.busy = true;
            drop(q);
            drop(batch);
            q = self.lock();
            q.busy = false;
            self.idle.notify_all();
        }
    }
}

/// Owns the reaper thread: on drop, the thread drops what is queued and ends.
pub(crate) struct ReaperThread<T> {
    reaper: Arc<Reaper<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T> Drop for ReaperThread<T> {
    fn drop(&mut self) {
        let mut q = self.reaper.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.stopped = true;
        drop(q);
        self.reaper.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Reports the name of the thread it is dropped on.
    struct Probe(mpsc::Sender<Option<String>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let _ = self
                .0
                .send(std::thread::current().name().map(str::to_string));
        }
    }

    #[test]
    fn retired_items_are_dropped_on_the_reaper_thread() {
        let (reaper, _thread) = Reaper::start().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || reaper.retire(Probe(tx)))
            .join()
            .unwrap();
        assert_eq!(rx.recv().unwrap().as_deref(), Some("hotload-reaper"));
    }

    #[test]
    fn settle_returns_once_everything_retired_is_dropped() {
        let (reaper, _thread) = Reaper::start().unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..100 {
            reaper.retire(Probe(tx.clone()));
        }
        reaper.settle();
        assert_eq!(rx.try_iter().count(), 100);
    }

    #[test]
    fn stopping_drops_what_is_queued_and_later_items_in_place() {
        let (reaper, thread) = Reaper::start().unwrap();
        let (tx, rx) = mpsc::channel();
        reaper.retire(Probe(tx.clone()));
        drop(thread);
        assert_eq!(rx.try_iter().count(), 1);
        reaper.retire(Probe(tx));
        let here = std::thread::current().name().map(str::to_string);
        assert_eq!(rx.try_recv().unwrap(), here);
    }
}
