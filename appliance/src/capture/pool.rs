//! Fixed pool of frame buffers shared by capture, analysis and encoders.
//!
//! All buffers are allocated once at start. Capture takes a free slot,
//! fills it and publishes it as a [`FrameRef`]; stages pass `FrameRef`s
//! (an index and a pool handle) over bounded channels; the slot returns to
//! the free list when the last reference drops. No per-frame allocation,
//! no copy of picture data between stages.
//!
//! A device that fills its own memory (a V4L2 buffer ring) lends it: its
//! buffers become extra slots ([`FramePool::with_lent`]), a dequeued
//! buffer is taken with [`FramePool::lent_writer`], and when the last
//! reference drops the buffer goes back to the device instead of the free
//! list. The pool's own slots stay available for frames the pipeline
//! makes itself (a converted picture, a frame standing in for lost signal).
//!
//! Soundness: a slot is written only through the [`FrameWriter`] that took
//! it from the free list, and a slot is on the free list only when no
//! `FrameRef` to it exists. Readers therefore never overlap a writer. The
//! reference count uses release/acquire ordering so the writer's stores are
//! visible to every reader.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crossbeam_channel::{Receiver, Sender};

/// Layout of the pictures and audio held in each slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Picture width (even).
    pub width: u32,
    /// Picture height (even).
    pub height: u32,
    /// Interleaved audio channels (0 = no audio).
    pub audio_channels: u16,
    /// Most audio samples per channel one frame carries.
    pub max_audio_samples: usize,
}

impl FrameLayout {
    /// Bytes per luma row.
    pub fn y_stride(&self) -> usize {
        self.width as usize
    }
    /// Bytes per chroma row.
    pub fn c_stride(&self) -> usize {
        self.width as usize / 2
    }
    /// Bytes of the luma plane.
    pub fn y_len(&self) -> usize {
        self.y_stride() * self.height as usize
    }
    /// Bytes of one chroma plane.
    pub fn c_len(&self) -> usize {
        self.c_stride() * self.height as usize / 2
    }
    /// Bytes of one I420 picture.
    pub fn picture_len(&self) -> usize {
        self.y_len() + 2 * self.c_len()
    }
}

/// What the capture stage knows about a frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Frame number on the channel's timeline.
    pub number: i64,
    /// Interleaved audio samples stored (channels × samples per channel).
    pub audio_len: usize,
    /// Media clock reading when the frame was captured (TAI ns).
    pub captured_tai_ns: i128,
    /// A picture the numbering passed over (a realignment or a clock
    /// correction moved the numbers past it): kept for re-encoding the
    /// segments published before the move (`crate::pipeline::rework`),
    /// never encoded, analysed or fingerprinted into the trail.
    pub passed_over: bool,
}

/// Where a slot's picture lives.
enum Picture {
    /// Allocated by the pool.
    Owned(UnsafeCell<Box<[u8]>>),
    /// Lent by a device for the pool's life.
    Lent { ptr: *mut u8, len: usize },
}

impl Picture {
    /// SAFETY: the caller holds the slot as its writer (module docs).
    // Interior mutability, as with UnsafeCell: exclusivity is the caller's
    // contract, not the borrow checker's.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self) -> &mut [u8] {
        match self {
            // SAFETY: exclusive by the caller's contract.
            Picture::Owned(cell) => unsafe { &mut *cell.get() },
            // SAFETY: the lender guarantees `len` valid bytes at `ptr` for
            // the pool's life; exclusive by the caller's contract.
            Picture::Lent { ptr, len } => unsafe { std::slice::from_raw_parts_mut(*ptr, *len) },
        }
    }

    /// SAFETY: a reference to the slot exists, so no writer does.
    unsafe fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: shared by the caller's contract.
            Picture::Owned(cell) => unsafe { &*cell.get() },
            // SAFETY: as in `bytes_mut`, shared.
            Picture::Lent { ptr, len } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

/// Memory a device lends to the pool: one picture buffer.
#[derive(Debug, Clone, Copy)]
pub struct LentMemory {
    /// Start of the buffer.
    pub ptr: *mut u8,
    /// Its length in bytes (at least one I420 picture of the layout).
    pub len: usize,
}

/// Gives a lent buffer back to its device (the index is the device's).
pub type GiveBack = Box<dyn Fn(u32) + Send + Sync>;

struct Slot {
    picture: Picture,
    audio: UnsafeCell<Box<[i16]>>,
    meta: UnsafeCell<FrameMeta>,
    refs: AtomicU32,
}

// SAFETY: access to the cells follows the protocol in the module docs: one
// writer while the slot is off the free list and unreferenced, shared
// readers while references exist, never both.
unsafe impl Sync for Slot {}

/// The pool: slots plus a free list of indices.
pub struct FramePool {
    layout: FrameLayout,
    slots: Box<[Slot]>,
    free_tx: Sender<u32>,
    free_rx: Receiver<u32>,
    /// Slots from this index on are lent; the closure gives them back.
    lent_from: u32,
    give_back: Option<GiveBack>,
}

// SAFETY: lent pictures are raw pointers into memory the lender keeps
// valid and shareable for the pool's life (`with_lent`); access follows
// the same protocol as owned slots.
unsafe impl Send for FramePool {}
// SAFETY: as above.
unsafe impl Sync for FramePool {}

impl std::fmt::Debug for FramePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramePool").field("layout", &self.layout).field("slots", &self.slots.len()).finish()
    }
}

impl FramePool {
    /// Allocates `count` slots for `layout`.
    pub fn new(layout: FrameLayout, count: u32) -> Arc<Self> {
        Self::build(layout, count, Vec::new(), None)
    }

    /// `owned` slots of the pool's own plus one slot per lent buffer;
    /// `give_back(i)` is called with the buffer's index in `lent` when its
    /// last reference drops.
    ///
    /// # Safety
    /// Every `LentMemory` must point at `len` bytes, at least one picture
    /// of `layout`, that stay valid, and are touched by nobody else while
    /// the pool holds them (from `lent_writer` until `give_back`), for as
    /// long as the pool lives; `give_back` usually owns what keeps them
    /// mapped.
    pub unsafe fn with_lent(
        layout: FrameLayout,
        owned: u32,
        lent: Vec<LentMemory>,
        give_back: GiveBack,
    ) -> Result<Arc<Self>, String> {
        if let Some(short) = lent.iter().position(|m| m.len < layout.picture_len()) {
            return Err(format!(
                "lent buffer {short} holds {} bytes, a {}x{} picture needs {}",
                lent[short].len,
                layout.width,
                layout.height,
                layout.picture_len()
            ));
        }
        Ok(Self::build(layout, owned, lent, Some(give_back)))
    }

    fn build(layout: FrameLayout, count: u32, lent: Vec<LentMemory>, give_back: Option<GiveBack>) -> Arc<Self> {
        let (free_tx, free_rx) = crossbeam_channel::bounded(count as usize);
        let slot = |picture| Slot {
            picture,
            audio: UnsafeCell::new(
                vec![0i16; layout.max_audio_samples * usize::from(layout.audio_channels)].into_boxed_slice(),
            ),
            meta: UnsafeCell::new(FrameMeta::default()),
            refs: AtomicU32::new(0),
        };
        let slots = (0..count)
            .map(|_| slot(Picture::Owned(UnsafeCell::new(vec![0u8; layout.picture_len()].into_boxed_slice()))))
            .chain(lent.into_iter().map(|m| slot(Picture::Lent { ptr: m.ptr, len: m.len })))
            .collect();
        for i in 0..count {
            // The channel holds exactly `count` entries: cannot be full here.
            let _ = free_tx.try_send(i);
        }
        Arc::new(Self { layout, slots, free_tx, free_rx, lent_from: count, give_back })
    }

    /// The writer for lent buffer `buffer`, which its device just filled
    /// and handed over (dequeued). `None` if the pool has no such buffer.
    pub fn lent_writer(self: &Arc<Self>, buffer: u32) -> Option<FrameWriter> {
        let index = self.lent_from.checked_add(buffer)?;
        (self.give_back.is_some() && (index as usize) < self.slots.len())
            .then(|| FrameWriter { pool: Arc::clone(self), index })
    }

    /// Whether the slot of a published frame is lent device memory.
    pub fn is_lent(&self, index: u32) -> bool {
        index >= self.lent_from
    }

    /// Picture and audio layout of every slot.
    pub fn layout(&self) -> FrameLayout {
        self.layout
    }

    /// Slots currently free (for metrics).
    pub fn free_slots(&self) -> usize {
        self.free_rx.len()
    }

    /// Takes a free slot, waiting until one is returned.
    pub fn acquire(self: &Arc<Self>) -> FrameWriter {
        // The pool owns a sender, so the channel never disconnects.
        let index = self.free_rx.recv().unwrap_or_else(|_| unreachable!("pool owns its free-list sender"));
        FrameWriter { pool: Arc::clone(self), index }
    }

    /// Takes a free slot if one is available now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<FrameWriter> {
        self.free_rx.try_recv().ok().map(|index| FrameWriter { pool: Arc::clone(self), index })
    }

    fn slot(&self, index: u32) -> &Slot {
        &self.slots[index as usize]
    }

    fn release(&self, index: u32) {
        match &self.give_back {
            Some(give_back) if index >= self.lent_from => give_back(index - self.lent_from),
            _ => {
                let _ = self.free_tx.try_send(index);
            }
        }
    }
}

/// Exclusive access to one slot while capture fills it.
pub struct FrameWriter {
    pool: Arc<FramePool>,
    index: u32,
}

impl std::fmt::Debug for FrameWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameWriter({})", self.index)
    }
}

/// Mutable views of one slot's planes and audio.
#[derive(Debug)]
pub struct FrameBuffers<'a> {
    /// Luma plane.
    pub y: &'a mut [u8],
    /// Cb plane.
    pub u: &'a mut [u8],
    /// Cr plane.
    pub v: &'a mut [u8],
    /// Interleaved audio capacity.
    pub audio: &'a mut [i16],
}

impl FrameWriter {
    /// Slot index in the pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The slot's buffers for filling.
    pub fn buffers(&mut self) -> FrameBuffers<'_> {
        let layout = self.pool.layout;
        let slot = self.pool.slot(self.index);
        // SAFETY: this writer took the index from the free list, so no
        // FrameRef to the slot exists and no other writer holds it; the
        // returned borrows are tied to `&mut self`.
        let (picture, audio) = unsafe { (slot.picture.bytes_mut(), &mut **slot.audio.get()) };
        let (y, c) = picture[..layout.picture_len()].split_at_mut(layout.y_len());
        let (u, v) = c.split_at_mut(layout.c_len());
        FrameBuffers { y, u, v, audio }
    }

    /// Publishes the filled slot; the returned reference is the only one.
    pub fn publish(self, meta: FrameMeta) -> FrameRef {
        let slot = self.pool.slot(self.index);
        // SAFETY: still exclusive (see `buffers`); readers only appear after
        // the release store below.
        unsafe { *slot.meta.get() = meta };
        slot.refs.store(1, Ordering::Release);
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again; we move the Arc out once.
        let pool = unsafe { std::ptr::read(&this.pool) };
        FrameRef { pool, index: this.index }
    }
}

impl Drop for FrameWriter {
    fn drop(&mut self) {
        // Never published (capture failed or ended): give the slot back.
        self.pool.release(self.index);
    }
}

/// Shared, read-only handle to a published frame.
pub struct FrameRef {
    pool: Arc<FramePool>,
    index: u32,
}

impl std::fmt::Debug for FrameRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FrameRef({}, frame {})", self.index, self.meta().number)
    }
}

impl FrameRef {
    /// Slot index in the pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Frame metadata.
    pub fn meta(&self) -> FrameMeta {
        let slot = self.pool.slot(self.index);
        // SAFETY: a reference exists, so no writer does (module docs).
        unsafe { *slot.meta.get() }
    }

    /// Picture layout.
    pub fn layout(&self) -> FrameLayout {
        self.pool.layout
    }

    /// Luma, Cb and Cr planes.
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let layout = self.pool.layout;
        let slot = self.pool.slot(self.index);
        // SAFETY: a reference exists, so no writer does; the borrow lives
        // no longer than `self`, which keeps the slot referenced.
        let picture: &[u8] = unsafe { slot.picture.bytes() };
        let (y, c) = picture[..layout.picture_len()].split_at(layout.y_len());
        let (u, v) = c.split_at(layout.c_len());
        (y, u, v)
    }

    /// Interleaved audio samples that belong to this frame.
    pub fn audio(&self) -> &[i16] {
        let slot = self.pool.slot(self.index);
        let len = self.meta().audio_len;
        // SAFETY: as in `planes`.
        let audio: &[i16] = unsafe { &*slot.audio.get() };
        &audio[..len.min(audio.len())]
    }
}

impl Clone for FrameRef {
    fn clone(&self) -> Self {
        self.pool.slot(self.index).refs.fetch_add(1, Ordering::Relaxed);
        Self { pool: Arc::clone(&self.pool), index: self.index }
    }
}

impl Drop for FrameRef {
    fn drop(&mut self) {
        if self.pool.slot(self.index).refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.pool.release(self.index);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layout() -> FrameLayout {
        FrameLayout { width: 16, height: 8, audio_channels: 2, max_audio_samples: 4 }
    }

    #[test]
    fn slots_return_when_the_last_reference_drops() {
        let pool = FramePool::new(layout(), 2);
        let mut w = pool.acquire();
        w.buffers().y[0] = 42;
        let a = w.publish(FrameMeta { number: 7, ..FrameMeta::default() });
        let b = a.clone();
        assert_eq!(pool.free_slots(), 1);
        drop(a);
        assert_eq!(pool.free_slots(), 1);
        assert_eq!(b.planes().0[0], 42);
        assert_eq!(b.meta().number, 7);
        drop(b);
        assert_eq!(pool.free_slots(), 2);
    }

    #[test]
    fn an_unpublished_writer_gives_its_slot_back() {
        let pool = FramePool::new(layout(), 1);
        let w = pool.acquire();
        assert!(pool.try_acquire().is_none());
        drop(w);
        assert!(pool.try_acquire().is_some());
    }

    #[test]
    fn lent_buffers_go_back_to_their_device() {
        use std::sync::Mutex;
        let mut memory = [vec![0u8; 256], vec![0u8; 256]];
        let lent = memory.iter_mut().map(|m| LentMemory { ptr: m.as_mut_ptr(), len: m.len() }).collect();
        let given_back = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&given_back);
        // SAFETY: `memory` outlives the pool (dropped at the end of the
        // test, after the pool) and nothing else touches it.
        let pool =
            unsafe { FramePool::with_lent(layout(), 1, lent, Box::new(move |i| log.lock().unwrap().push(i))).unwrap() };
        let mut w = pool.lent_writer(1).unwrap();
        w.buffers().y[0] = 9;
        let frame = w.publish(FrameMeta { number: 3, ..FrameMeta::default() });
        assert!(pool.is_lent(frame.index()));
        assert_eq!(frame.planes().0[0], 9);
        let copy = frame.clone();
        drop(frame);
        assert!(given_back.lock().unwrap().is_empty(), "still referenced");
        drop(copy);
        assert_eq!(*given_back.lock().unwrap(), [1]);
        // An unpublished lent writer gives its buffer back too; own slots
        // still come from the free list.
        drop(pool.lent_writer(0).unwrap());
        assert_eq!(*given_back.lock().unwrap(), [1, 0]);
        assert!(pool.lent_writer(2).is_none());
        assert!(!pool.is_lent(pool.acquire().index()));
        drop(pool);
        assert_eq!(memory[1][0], 9, "the device's memory was written in place");
    }

    #[test]
    fn short_lent_buffers_are_refused() {
        let mut m = vec![0u8; 10];
        let lent = vec![LentMemory { ptr: m.as_mut_ptr(), len: m.len() }];
        // SAFETY: refused before any use.
        let err = unsafe { FramePool::with_lent(layout(), 1, lent, Box::new(|_| {})) }.unwrap_err();
        assert!(err.contains("needs 192"), "{err}");
    }

    #[test]
    fn planes_have_the_layout_sizes() {
        let pool = FramePool::new(layout(), 1);
        let r = pool.acquire().publish(FrameMeta::default());
        let (y, u, v) = r.planes();
        assert_eq!((y.len(), u.len(), v.len()), (128, 32, 32));
    }
}
