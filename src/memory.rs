//! Giving memory back to the system after a crowd of clients has gone.
//!
//! mimalloc keeps the pages a worker thread freed until that thread allocates again (or after
//! `purge_delay`, but only checked when it allocates), and an idle worker allocates nothing: the
//! ~9 KiB each idle keep-alive client held stayed resident after 2 000 clients left (RSS 1.9–2.3×
//! the idle baseline). `MIMALLOC_PURGE_DELAY=0` returns pages as soon as they are free, on every
//! free, which costs page faults on the request path under load. Instead [`Trimming`] wraps the
//! proxy's pingora app and counts open client connections; when a connection ends on a thread
//! and the count has halved since that thread last trimmed (or reached zero), the thread runs the
//! installed trim (`mi_collect(true)` in the binary: free its empty pages and purge them at
//! once). With a steady number of clients nothing is trimmed; when N clients leave, each worker
//! trims about log2(N) times.
//!
//! The trim is a hook ([`install`]) so the library does not assume an allocator: the binary uses
//! mimalloc, the tests the system allocator (no hook: counting only).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// Client connections open now, over all worker threads.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Trims run, over all threads (for tests and curiosity; not a metric).
static TRIMS: AtomicUsize = AtomicUsize::new(0);
/// What a trim does on the calling thread.
static TRIM: OnceLock<fn()> = OnceLock::new();

/// Fewer connections gone than this since a thread's last trim is not worth a trim (a trim walks
/// the thread's heap: cheap, but not free).
const MIN_GONE: usize = 64;

thread_local! {
    /// The most connections open, seen from this thread since it last trimmed.
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// Sets what a trim does (once per process; later calls are ignored). The binary installs
/// mimalloc's `mi_collect(true)`.
pub fn install(trim: fn()) {
    let _ = TRIM.set(trim);
}

/// Client connections open now.
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// Trims run so far.
pub fn trims() -> usize {
    TRIMS.load(Ordering::Relaxed)
}

/// A pingora app that counts its connections and trims the thread a connection ends on when
/// enough of them are gone (module docs).
pub struct Trimming<A> {
    inner: Arc<A>,
}

impl<A> Trimming<A> {
    pub fn new(inner: A) -> Trimming<A> {
        Trimming {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Trimming<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.with(|p| p.set(p.get().max(open)));
        let reusable = self.inner.process_new(stream, shutdown).await;
        if reusable.is_none() {
            connection_ended();
        } else {
            // Handed back to pingora for another round: still open.
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
        reusable
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Counts a connection gone and trims this thread if enough are gone since it last trimmed.
fn connection_ended() {
    let open = OPEN.fetch_sub(1, Ordering::Relaxed) - 1;
    let trim = PEAK.with(|p| {
        let peak = p.get().max(open + 1);
        let gone = peak - open;
        let due = open == 0 || (open * 2 <= peak && gone >= MIN_GONE);
        p.set(if due { open } else { peak });
        due
    });
    if trim {
        if let Some(trim) = TRIM.get() {
            trim();
        }
        TRIMS.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counting and the halving rule, on one thread (the statics are shared by the tests of
    /// this module only; the request path's tests run elsewhere).
    #[test]
    fn a_thread_trims_when_the_open_count_halves_or_reaches_zero() {
        std::thread::spawn(|| {
            let before = trims();
            for _ in 0..1000 {
                OPEN.fetch_add(1, Ordering::Relaxed);
                PEAK.with(|p| p.set(p.get().max(OPEN.load(Ordering::Relaxed))));
            }
            // 1000 → 500: a trim at 500, then at 250, at 125, at 61 (the first count at most
            // half of 125 with MIN_GONE gone), and at 0.
            for _ in 0..1000 {
                connection_ended();
            }
            assert_eq!(trims() - before, 5);
            assert_eq!(open_connections(), 0);
        })
        .join()
        .unwrap();
    }
}
