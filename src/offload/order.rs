//! Ordering: a device tensor is read only after the work that produced it has finished.
//!
//! # candle's streams
//! candle 0.11 creates a CUDA device (`Device::new_cuda`) on the primary context with
//! `CudaContext::per_thread_stream()`: the handle `CU_STREAM_PER_THREAD`, which the driver
//! resolves to *the calling host thread's own* default stream. So every candle op runs on the
//! stream of the thread that called it, and work from two threads is not ordered. cudarc's
//! per-buffer events (which order streams automatically) are recorded only once the context has
//! created a stream of its own, which candle alone never does. `Device::synchronize` waits for
//! the calling thread's stream only; `cuCtxSynchronize` waits for every stream of the context,
//! whoever queued the work. A device→host copy into ordinary memory (candle's `to_device(Cpu)`)
//! returns when the copy is done. On Metal, candle's device has one command queue for all threads,
//! and `Device::synchronize` waits for everything committed to it.
//!
//! # What the save guarantees
//! - **Saves** ([`crate::write::write`], and the checkpointer's staging): before any worker
//!   starts, the calling thread waits ([`wait_for_producers`]) for every device a planned piece
//!   reads, nested ones included (the parts of a `Joined`, a `Transposed` tensor, a merge's
//!   operands and LoRA factors). With this crate's `cuda` feature that is `cuCtxSynchronize`:
//!   every kernel queued by any thread before the save has finished. Without it — when candle's
//!   `cuda` feature is on through another crate (Cargo unifies features) — it is candle's
//!   `Device::synchronize` on the calling thread: work that thread queued has finished, and work
//!   queued from other threads must have been synchronized by them (candle's
//!   `Device::synchronize` there), as for any cross-thread use of candle. Every read after that
//!   point — a copy to the host, a cast, a contiguous copy or a merge on the device, issued on a
//!   worker's own stream — sees finished data; what a worker makes on its stream it reads on the
//!   same stream.
//! - **Whole-tensor reads** ([`super::host_bytes`]: a projection transposed on the host, a
//!   LoRA's factors or alpha) wait the same way first, wherever they are called from.
//! - **The CUDA fast path** synchronizes the context at its start as well, then works on a stream
//!   of its own: its contiguous copies, made by candle on the pipeline thread's stream, are joined
//!   with an event, and cudarc's read guards are held until its kernel is queued.
//! - **Checkpointer snapshots**: the copies are queued on the training thread's stream, after the
//!   work that produced the weights; a [`Fence`] recorded right after them (an event on that
//!   stream with the `cuda` feature, else a `Device::synchronize` there) is waited for by the
//!   background thread before its write reads a byte, so the loop goes on while the copies run.
//!
//! While a save reads them, the tensors must not be written (no in-place update of the saved
//! variables from another thread); the checkpointer's snapshot exists for that.

use candle_core::{Device, Tensor};

use super::cuda;
use crate::error::Result;
use crate::model::InputTensor;
use crate::plan::{PieceSource, Plan};

/// Adds the candle tensors whose values `t` is made of to `out`: through joins, transposes and
/// merges (LoRA factors included).
pub(crate) fn held<'a>(t: &'a InputTensor, out: &mut Vec<&'a Tensor>) {
    t.visit(&mut |t| {
        if let InputTensor::Candle(c) = t {
            out.push(c);
        }
    });
}

/// Every candle tensor the plan's pieces read.
pub(crate) fn plan_tensors(plan: &Plan) -> Vec<&Tensor> {
    let mut out = Vec::new();
    for p in plan.pieces() {
        match &p.source {
            PieceSource::Candle { tensor, .. } => out.push(tensor),
            PieceSource::Transposed { tensor, .. } => held(tensor, &mut out),
            PieceSource::Merged { merged, .. } => {
                merged
                    .operands()
                    .into_iter()
                    .for_each(|o| held(o, &mut out));
            }
            PieceSource::Dequant { tensor, .. } | PieceSource::BlockScales { tensor, .. } => {
                tensor.members().iter().for_each(|(_, t)| held(t, &mut out));
            }
            PieceSource::Encoded { target, .. } => held(target.source(), &mut out),
            PieceSource::File { .. } | PieceSource::Host { .. } => {}
        }
    }
    out
}

/// Waits, on the calling thread, for the work that produced `tensors` on their devices (see the
/// [module docs](self) for what that covers on each device and build). CPU tensors need nothing.
///
/// # Errors
/// Device errors (a fault of an earlier kernel is reported here).
pub(crate) fn wait_for_producers<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
    let mut done: Vec<&Device> = Vec::new();
    for t in tensors {
        #[cfg(test)]
        seam::note(seam::Event::Waited(t.id()));
        let d = t.device();
        if d.is_cpu() || done.iter().any(|e| e.same_device(d)) {
            continue;
        }
        match d {
            Device::Cuda(_) => cuda::synchronize_context(d)?,
            _ => d.synchronize()?,
        }
        done.push(d);
    }
    Ok(())
}

/// `t`, about to be read: the first touch of a held tensor's values goes through here, so the
/// tests can check that it came after [`wait_for_producers`] (nothing is done otherwise).
#[inline]
pub(crate) fn read(t: &Tensor) -> &Tensor {
    #[cfg(test)]
    seam::note(seam::Event::Read(t.id()));
    t
}

/// The work queued so far on the calling thread's device streams, recorded so that another
/// thread can wait for it before it reads what that work produced (the checkpointer's snapshot
/// copies, read by its background write).
pub(crate) struct Fence {
    produced: Vec<cuda::Produced>,
    #[cfg(test)]
    ids: Vec<candle_core::TensorId>,
}

impl Fence {
    /// Records the work that produces `tensors`, queued by the calling thread. With the `cuda`
    /// feature, CUDA work is marked by an event on the thread's candle stream (nothing waits
    /// now); without it, and on Metal, the thread synchronizes its device here.
    ///
    /// # Errors
    /// Device errors.
    pub(crate) fn after<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) -> Result<Fence> {
        let mut fence = Fence {
            produced: Vec::new(),
            #[cfg(test)]
            ids: Vec::new(),
        };
        let mut seen: Vec<&Device> = Vec::new();
        for t in tensors {
            #[cfg(test)]
            {
                seam::note(seam::Event::Fenced(t.id()));
                fence.ids.push(t.id());
            }
            let d = t.device();
            if d.is_cpu() || seen.iter().any(|e| e.same_device(d)) {
                continue;
            }
            match d {
                Device::Cuda(_) => fence.produced.push(cuda::Produced::record(d)?),
                _ => d.synchronize()?,
            }
            seen.push(d);
        }
        Ok(fence)
    }

    /// Blocks until the recorded work has finished.
    ///
    /// # Errors
    /// Device errors.
    pub(crate) fn wait(&self) -> Result<()> {
        #[cfg(test)]
        self.ids
            .iter()
            .for_each(|&id| seam::note(seam::Event::FenceWaited(id)));
        self.produced.iter().try_for_each(cuda::Produced::wait)
    }
}

/// The tests' record of the ordering calls, for the tensors a test watches: CPU tensors stand
/// in for device ones, since the calls are made whatever the device.
#[cfg(test)]
pub(crate) mod seam {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use candle_core::TensorId;

    /// One ordering call or read, for one tensor.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Event {
        /// [`super::wait_for_producers`] covered it.
        Waited(TensorId),
        /// Its values were read ([`super::read`]).
        Read(TensorId),
        /// A [`super::Fence`] was recorded after its producing work.
        Fenced(TensorId),
        /// That fence was waited for.
        FenceWaited(TensorId),
    }

    impl Event {
        /// The tensor the event is about.
        pub(crate) fn id(self) -> TensorId {
            match self {
                Event::Waited(i) | Event::Read(i) | Event::Fenced(i) | Event::FenceWaited(i) => i,
            }
        }
    }

    static LOG: Mutex<(Vec<TensorId>, Vec<Event>)> = Mutex::new((Vec::new(), Vec::new()));

    fn log() -> std::sync::MutexGuard<'static, (Vec<TensorId>, Vec<Event>)> {
        LOG.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn note(e: Event) {
        let mut log = log();
        if log.0.contains(&e.id()) {
            log.1.push(e);
        }
    }

    /// Starts recording the events of these tensors (tests run in parallel: each watches its own).
    pub(crate) fn watch(ids: impl IntoIterator<Item = TensorId>) {
        log().0.extend(ids);
    }

    /// The recorded events of `ids`, in the order they happened.
    pub(crate) fn events(ids: &[TensorId]) -> Vec<Event> {
        let set: HashSet<TensorId> = ids.iter().copied().collect();
        log()
            .1
            .iter()
            .copied()
            .filter(|e| set.contains(&e.id()))
            .collect()
    }

    /// Checks that each of `ids` was read at least once, and only after a wait that covered it.
    pub(crate) fn assert_waited_before_read(ids: &[TensorId]) {
        let events = events(ids);
        for &id in ids {
            let mine: Vec<Event> = events.iter().copied().filter(|e| e.id() == id).collect();
            let first_read = mine.iter().position(|e| matches!(e, Event::Read(_)));
            let first_wait = mine.iter().position(|e| matches!(e, Event::Waited(_)));
            match (first_wait, first_read) {
                (_, None) => panic!("{id:?} was never read: {mine:?}"),
                (Some(w), Some(r)) if w < r => {}
                _ => panic!("{id:?} was read before any wait for its producer: {mine:?}"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
