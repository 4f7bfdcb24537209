//! Tracked storage: every buffer the engine allocates is counted by a [`Tracker`] under
//! a category, from allocation to drop, and the tracker keeps the peak. A buffer kept
//! by the backward tape counts as an activation, otherwise as a temporary, as in the
//! planner.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::rc::Rc;

pub use vramlab_graph::categories::{Category, CategoryBytes, Phase};

/// The highest point seen.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Peak {
    pub bytes: u128,
    pub phase: Phase,
    pub at: CategoryBytes,
}

#[derive(Debug, Default)]
struct State {
    fixed: [u128; Category::COUNT],
    saved: u128,
    unsaved: u128,
    peak: Option<Peak>,
    phase: Option<Phase>,
}

/// Counts live bytes by category and the peak; shared by every buffer.
#[derive(Debug, Default)]
pub struct Tracker {
    s: RefCell<State>,
}

impl Tracker {
    pub fn new() -> Rc<Self> {
        Rc::new(Tracker::default())
    }

    fn slot(s: &mut State, fixed: Option<Category>, saved: bool) -> &mut u128 {
        match fixed {
            Some(c) => &mut s.fixed[c as usize],
            None if saved => &mut s.saved,
            None => &mut s.unsaved,
        }
    }

    fn add(&self, bytes: u128, fixed: Option<Category>, saved: bool) {
        let mut s = self.s.borrow_mut();
        *Self::slot(&mut s, fixed, saved) += bytes;
    }

    fn sub(&self, bytes: u128, fixed: Option<Category>, saved: bool) {
        let mut s = self.s.borrow_mut();
        *Self::slot(&mut s, fixed, saved) -= bytes;
    }

    fn snapshot(s: &State) -> CategoryBytes {
        let f = &s.fixed;
        CategoryBytes {
            params: f[0],
            buffers: f[1],
            grads: f[2],
            optimizer_state: f[3],
            data_batch: f[4],
            activations: f[5] + s.saved,
            temporaries: f[6] + s.unsaved,
            overhead: f[7],
            communication: f[8],
        }
    }

    /// Samples the peak (after every allocation).
    fn sample(&self) {
        let mut s = self.s.borrow_mut();
        let now = Self::snapshot(&s);
        let total = now.total();
        if s.peak.as_ref().is_none_or(|p| total > p.bytes) {
            let phase = s.phase.unwrap_or(Phase::Forward);
            s.peak = Some(Peak {
                bytes: total,
                phase,
                at: now,
            });
        }
    }

    pub fn live(&self) -> CategoryBytes {
        Self::snapshot(&self.s.borrow())
    }

    pub fn set_phase(&self, p: Phase) {
        self.s.borrow_mut().phase = Some(p);
    }

    /// Starts a new measurement window.
    pub fn reset_peak(&self) {
        self.s.borrow_mut().peak = None;
    }

    pub fn peak(&self) -> Option<Peak> {
        self.s.borrow().peak.clone()
    }
}

/// A tracked buffer of `T` (f32 data or i64 indices).
#[derive(Debug)]
pub struct Buf<T> {
    data: RefCell<Vec<T>>,
    bytes: u128,
    fixed: Cell<Option<Category>>,
    saved: Cell<u32>,
    tracker: Rc<Tracker>,
}

impl<T: Copy + Default> Buf<T> {
    /// A zeroed buffer of `len` elements, counted from now.
    pub fn zeros(tracker: &Rc<Tracker>, len: usize, category: Option<Category>) -> Rc<Self> {
        Self::from_vec(tracker, vec![T::default(); len], category)
    }

    pub fn from_vec(tracker: &Rc<Tracker>, data: Vec<T>, category: Option<Category>) -> Rc<Self> {
        let bytes = (data.len() * std::mem::size_of::<T>()) as u128;
        tracker.add(bytes, category, false);
        tracker.sample();
        Rc::new(Buf {
            data: RefCell::new(data),
            bytes,
            fixed: Cell::new(category),
            saved: Cell::new(0),
            tracker: Rc::clone(tracker),
        })
    }
}

impl<T> Buf<T> {
    pub fn borrow(&self) -> Ref<'_, Vec<T>> {
        self.data.borrow()
    }
    pub fn borrow_mut(&self) -> RefMut<'_, Vec<T>> {
        self.data.borrow_mut()
    }
    pub fn len(&self) -> usize {
        self.data.borrow().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn bytes(&self) -> u128 {
        self.bytes
    }

    /// The backward tape keeps this buffer.
    pub fn mark_saved(&self) {
        if self.saved.get() == 0 && self.fixed.get().is_none() {
            self.tracker.sub(self.bytes, None, false);
            self.tracker.add(self.bytes, None, true);
        }
        self.saved.set(self.saved.get() + 1);
    }

    pub fn unmark_saved(&self) {
        self.saved.set(self.saved.get() - 1);
        if self.saved.get() == 0 && self.fixed.get().is_none() {
            self.tracker.sub(self.bytes, None, true);
            self.tracker.add(self.bytes, None, false);
        }
    }

    /// Moves the buffer into a fixed category (a gradient stored as `.grad`).
    pub fn set_category(&self, c: Category) {
        self.tracker
            .sub(self.bytes, self.fixed.get(), self.saved.get() > 0);
        self.fixed.set(Some(c));
        self.tracker.add(self.bytes, Some(c), false);
    }
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        self.tracker
            .sub(self.bytes, self.fixed.get(), self.saved.get() > 0);
    }
}

/// An f32 tensor: a shared tracked buffer and a shape (views share the buffer).
#[derive(Debug, Clone)]
pub struct Tensor {
    pub buf: Rc<Buf<f32>>,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn zeros(tracker: &Rc<Tracker>, shape: &[usize], category: Option<Category>) -> Tensor {
        Tensor {
            buf: Buf::zeros(tracker, shape.iter().product(), category),
            shape: shape.to_vec(),
        }
    }
    pub fn from_vec(
        tracker: &Rc<Tracker>,
        shape: &[usize],
        data: Vec<f32>,
        category: Option<Category>,
    ) -> Tensor {
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "shape and data agree"
        );
        Tensor {
            buf: Buf::from_vec(tracker, data, category),
            shape: shape.to_vec(),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn data(&self) -> Ref<'_, Vec<f32>> {
        self.buf.borrow()
    }
    pub fn data_mut(&self) -> RefMut<'_, Vec<f32>> {
        self.buf.borrow_mut()
    }
    /// Whether nobody else holds the buffer (an in-place update is safe).
    pub fn unique(&self) -> bool {
        Rc::strong_count(&self.buf) == 1
    }
}

/// A tensor kept by the tape: counted as an activation while kept.
#[derive(Debug)]
pub struct Saved(pub Tensor);

impl Saved {
    pub fn new(t: &Tensor) -> Saved {
        t.buf.mark_saved();
        Saved(t.clone())
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        self.0.buf.unmark_saved();
    }
}

/// Saved int64 indices (max-pool).
#[derive(Debug)]
pub struct SavedIdx(pub Rc<Buf<i64>>);

impl SavedIdx {
    pub fn new(b: Rc<Buf<i64>>) -> Self {
        b.mark_saved();
        SavedIdx(b)
    }
}

impl Drop for SavedIdx {
    fn drop(&mut self) {
        self.0.unmark_saved();
    }
}
