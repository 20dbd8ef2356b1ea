//! Running a tensor's reductions once, and ahead of the writer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::Result;

/// A whole-tensor result computed once, by the first thread that asks for it; threads that ask
/// meanwhile wait for it instead of computing it again. A computation that fails is not kept:
/// the caller gets its error, and the next caller tries again.
pub(crate) struct Computed<T> {
    value: Mutex<Option<Arc<T>>>,
    runs: AtomicUsize,
}

impl<T> Default for Computed<T> {
    fn default() -> Self {
        Computed {
            value: Mutex::new(None),
            runs: AtomicUsize::new(0),
        }
    }
}

impl<T> Computed<T> {
    /// The value, computed by `f` if no thread has yet.
    ///
    /// # Errors
    /// `f`'s error, when this call ran it and it failed.
    pub(crate) fn get_or_compute(&self, f: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        // Held while computing: the other askers wait on the lock.
        let mut slot = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = &*slot {
            return Ok(Arc::clone(v));
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let v = Arc::new(f()?);
        *slot = Some(Arc::clone(&v));
        Ok(v)
    }

    /// The value if it has been computed.
    #[cfg(test)]
    pub(crate) fn get(&self) -> Option<Arc<T>> {
        self.value.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many times the computation ran (1 once it succeeded, whatever the askers).
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

/// A whole-tensor value held only while the tensor's values are produced: computed once by the
/// first thread that asks (as [`Computed`]), then dropped when the askers have produced as
/// many elements as the tensor has ([`Held::produced`]). A later asker (a nested expression
/// read again) computes it again.
pub(crate) struct Held<T> {
    /// The value, and whether it was dropped once (the tensor was produced).
    value: Mutex<(Option<Arc<T>>, bool)>,
    produced: AtomicUsize,
    runs: AtomicUsize,
}

impl<T> Default for Held<T> {
    fn default() -> Self {
        Held {
            value: Mutex::new((None, false)),
            produced: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
        }
    }
}

impl<T> Held<T> {
    /// The value, computed by `f` if it is not held.
    ///
    /// # Errors
    /// `f`'s error, when this call ran it and it failed.
    pub(crate) fn get_or_compute(&self, f: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let mut slot = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = &slot.0 {
            return Ok(Arc::clone(v));
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let v = Arc::new(f()?);
        slot.0 = Some(Arc::clone(&v));
        Ok(v)
    }

    /// As [`Held::get_or_compute`], for a thread computing ahead of the writer: `None`, and
    /// nothing computed, once the tensor was produced (it came too late; what it would compute
    /// nobody would drop).
    ///
    /// # Errors
    /// `f`'s error, when this call ran it and it failed.
    pub(crate) fn ahead(&self, f: impl FnOnce() -> Result<T>) -> Result<Option<Arc<T>>> {
        let mut slot = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = &slot.0 {
            return Ok(Some(Arc::clone(v)));
        }
        if slot.1 {
            return Ok(None);
        }
        self.runs.fetch_add(1, Ordering::Relaxed);
        let v = Arc::new(f()?);
        slot.0 = Some(Arc::clone(&v));
        Ok(Some(v))
    }

    /// `count` more of the tensor's `total` elements are produced: once all are, the value is
    /// dropped (askers still using it keep their `Arc` until they finish).
    pub(crate) fn produced(&self, count: usize, total: usize) {
        let done = self.produced.fetch_add(count, Ordering::AcqRel) + count;
        if done >= total {
            let mut slot = self.value.lock().unwrap_or_else(|p| p.into_inner());
            *slot = (None, true);
            self.produced.store(0, Ordering::Release);
        }
    }

    /// Whether the value is held now.
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.value
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .is_some()
    }

    /// How many times the value was computed.
    #[cfg(test)]
    pub(crate) fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

/// How far the writer's workers have got through the data section, for a thread that computes
/// the reductions of the tensors ahead of them: it waits until the workers reach the tensor
/// before the one it computes next, so it overlaps their writes without running ahead.
#[derive(Default)]
pub(crate) struct Frontier {
    state: Mutex<(u64, bool)>,
    moved: Condvar,
}

impl Frontier {
    /// A worker has started the unit that begins at data-section offset `at`.
    pub(crate) fn reached(&self, at: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if at > s.0 {
            s.0 = at;
            self.moved.notify_all();
        }
    }

    /// The write is over (done, failed or cancelled): nobody waits any more.
    pub(crate) fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = true;
        self.moved.notify_all();
    }

    /// Waits until a worker has reached offset `at`; `false` when the write is over first.
    pub(crate) fn wait_for(&self, at: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.0 < at && !s.1 {
            s = self.moved.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        !s.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn concurrent_askers_share_one_computation() {
        let c: Computed<u64> = Computed::default();
        let started = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = c
                        .get_or_compute(|| {
                            started.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            Ok(42)
                        })
                        .unwrap();
                    assert_eq!(*v, 42);
                });
            }
        });
        assert_eq!(started.load(Ordering::SeqCst), 1);
        assert_eq!(c.runs(), 1);
        assert_eq!(c.get().as_deref(), Some(&42));
    }

    #[test]
    fn a_failed_computation_is_reported_and_tried_again() {
        let c: Computed<u8> = Computed::default();
        let e = c
            .get_or_compute(|| Err(Error::InvalidInput("no".into())))
            .unwrap_err();
        assert!(e.to_string().contains("no"));
        assert!(c.get().is_none());
        assert_eq!(*c.get_or_compute(|| Ok(7)).unwrap(), 7);
        assert_eq!(c.runs(), 2);
    }

    #[test]
    fn a_held_value_is_dropped_once_the_tensor_is_produced_and_computed_again_after() {
        let h: Held<Vec<u32>> = Held::default();
        let v = h.get_or_compute(|| Ok(vec![1, 2, 3])).unwrap();
        assert_eq!(*v, [1, 2, 3]);
        h.produced(60, 100);
        assert!(h.is_held());
        assert_eq!(*h.get_or_compute(|| Ok(vec![9])).unwrap(), [1, 2, 3]);
        h.produced(40, 100);
        assert!(!h.is_held());
        // The asker that still holds it keeps its copy; the next computes it again.
        assert_eq!(*v, [1, 2, 3]);
        assert_eq!(*h.get_or_compute(|| Ok(vec![4])).unwrap(), [4]);
        assert_eq!(h.runs(), 2);
        h.produced(100, 100);
        assert!(!h.is_held());
        // Computing ahead after the tensor was produced computes nothing; before, it does.
        assert!(h.ahead(|| Ok(vec![5])).unwrap().is_none());
        assert_eq!(h.runs(), 2);
        let fresh: Held<Vec<u32>> = Held::default();
        assert_eq!(*fresh.ahead(|| Ok(vec![6])).unwrap().unwrap(), [6]);
        assert_eq!(*fresh.get_or_compute(|| Ok(vec![7])).unwrap(), [6]);
    }

    #[test]
    fn the_frontier_releases_a_waiter_when_reached_or_closed() {
        let f = Frontier::default();
        std::thread::scope(|s| {
            let h = s.spawn(|| f.wait_for(100));
            std::thread::sleep(std::time::Duration::from_millis(10));
            f.reached(50);
            f.reached(100);
            assert!(h.join().unwrap());
            let h = s.spawn(|| f.wait_for(1000));
            f.close();
            assert!(!h.join().unwrap());
        });
    }
}
