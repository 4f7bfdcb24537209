//! The data loader: seeded shuffles, batches of `[B, C, H, W]` f32 images and i64
//! labels (the layout the engine consumes), transforms on worker threads with a bounded
//! prefetch queue. Memory: the dataset in u8 plus at most `workers * prefetch` batches.
//!
//! The same seed gives the same batches whatever the number of workers: each epoch's
//! order comes from (seed, epoch), each sample's augmentation from (seed, epoch, index),
//! and batches are handed out in order.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::rng::Rng;
use crate::transform::Pipeline;
use crate::{DataError, Dataset};

/// Most worker threads (and batches each may have ready): more only cost memory.
pub const MAX_WORKERS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    /// Threads that make batches; 0 makes them on the caller's thread.
    pub workers: usize,
    /// Batches each worker may have ready ahead.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: true,
            seed: 0,
            drop_last: false,
            workers: 2,
            prefetch: 2,
        }
    }
}

/// One batch: `images` is `[B, C, H, W]` row-major f32, `labels` i64.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub shape: [usize; 4],
}

impl Batch {
    /// Bytes of the batch as a framework holds it: f32 images and i64 labels.
    pub fn bytes(&self) -> u128 {
        self.images.len() as u128 * 4 + self.labels.len() as u128 * 8
    }
}

/// Serves one split of a dataset.
#[derive(Clone)]
pub struct Loader {
    data: Arc<Dataset>,
    test: bool,
    pipeline: Arc<Pipeline>,
    cfg: LoaderConfig,
}

impl Loader {
    pub fn new(
        data: Arc<Dataset>,
        split: &str,
        pipeline: Pipeline,
        cfg: LoaderConfig,
    ) -> Result<Self, DataError> {
        let samples = data.split(split)?.len();
        if u32::try_from(samples).is_err() {
            return Err(DataError::Config(format!(
                "the {split} split has {samples} images; the loader serves at most {}",
                u32::MAX
            )));
        }
        if cfg.workers > MAX_WORKERS || cfg.prefetch > MAX_WORKERS {
            return Err(DataError::Config(format!(
                "{} loader workers with {} batches each ahead: at most {MAX_WORKERS} of each",
                cfg.workers, cfg.prefetch
            )));
        }
        if pipeline.in_shape() != data.shape {
            return Err(DataError::Config(format!(
                "the transforms were made for {:?} images, the dataset's are {:?}",
                pipeline.in_shape(),
                data.shape
            )));
        }
        if cfg.batch_size == 0 {
            return Err(DataError::Config("batch size must be at least 1".into()));
        }
        Ok(Loader {
            test: split == "test",
            data,
            pipeline: Arc::new(pipeline),
            cfg,
        })
    }

    fn len(&self) -> usize {
        if self.test {
            self.data.test.as_ref().map_or(0, |s| s.len())
        } else {
            self.data.train.len()
        }
    }

    pub fn num_samples(&self) -> usize {
        self.len()
    }

    pub fn num_batches(&self) -> usize {
        let n = self.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The batches of one epoch, in order.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        if self.cfg.shuffle {
            Rng::for_item(self.cfg.seed, epoch, u64::MAX).shuffle(&mut order);
        }
        let job = Arc::new(Job {
            loader: self.clone(),
            order,
            epoch,
        });
        let total = self.num_batches();
        let workers = self.cfg.workers.min(total);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel(self.cfg.prefetch.max(1));
            let job = Arc::clone(&job);
            handles.push(std::thread::spawn(move || {
                let mut k = w;
                while k < total {
                    if tx.send(job.make(k)).is_err() {
                        return;
                    }
                    k += workers;
                }
            }));
            receivers.push(rx);
        }
        Epoch {
            job,
            receivers,
            handles,
            next: 0,
            total,
        }
    }
}

struct Job {
    loader: Loader,
    order: Vec<u32>,
    epoch: u64,
}

impl Job {
    fn make(&self, k: usize) -> Batch {
        let l = &self.loader;
        let split = if l.test {
            l.data.test.as_ref().expect("checked in new")
        } else {
            &l.data.train
        };
        let bs = l.cfg.batch_size;
        let idx = &self.order[k * bs..((k + 1) * bs).min(self.order.len())];
        let [c, h, w] = l.pipeline.out_shape();
        let per = c * h * w;
        let mut images = vec![0.0f32; idx.len() * per];
        let mut labels = Vec::with_capacity(idx.len());
        for (j, &i) in idx.iter().enumerate() {
            let mut rng = Rng::for_item(l.cfg.seed, self.epoch, i as u64);
            l.pipeline.apply(
                l.data.image(split, i as usize),
                &mut rng,
                &mut images[j * per..(j + 1) * per],
            );
            labels.push(split.labels[i as usize] as i64);
        }
        Batch {
            images,
            labels,
            shape: [idx.len(), c, h, w],
        }
    }
}

/// The batches of one epoch; dropping it stops the workers.
pub struct Epoch {
    job: Arc<Job>,
    receivers: Vec<Receiver<Batch>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl Iterator for Epoch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.total {
            return None;
        }
        let k = self.next;
        self.next += 1;
        if self.receivers.is_empty() {
            return Some(self.job.make(k));
        }
        let rx = &self.receivers[k % self.receivers.len()];
        Some(rx.recv().expect("a worker sends every batch it owns"))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Split;

    fn tiny(n: usize) -> Arc<Dataset> {
        Arc::new(Dataset {
            name: "tiny".into(),
            shape: [1, 2, 2],
            classes: vec!["a".into(), "b".into()],
            train: Split {
                images: (0..n * 4).map(|v| (v % 256) as u8).collect(),
                labels: (0..n).map(|i| (i % 2) as u16).collect(),
            },
            test: None,
            source: "mem".into(),
        })
    }

    fn loader(n: usize, cfg: LoaderConfig) -> Loader {
        let p = Pipeline::normalize([1, 2, 2], vec![0.0], vec![1.0]).unwrap();
        Loader::new(tiny(n), "train", p, cfg).unwrap()
    }

    #[test]
    fn an_epoch_visits_every_sample_once_in_a_seeded_order() {
        let cfg = LoaderConfig {
            batch_size: 4,
            workers: 2,
            seed: 3,
            ..Default::default()
        };
        let l = loader(10, cfg);
        let batches: Vec<Batch> = l.epoch(0).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].shape, [2, 1, 2, 2]);
        let firsts: Vec<u8> = batches
            .iter()
            .flat_map(|b| b.images.chunks(4).map(|c| (c[0] * 255.0).round() as u8))
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).map(|i| (i * 4) as u8).collect::<Vec<_>>());
        let again: Vec<Batch> = l.epoch(0).collect();
        assert_eq!(batches, again, "same seed, same epoch");
        let other: Vec<Batch> = l.epoch(1).collect();
        assert_ne!(batches, other, "another epoch, another order");
    }

    #[test]
    fn the_number_of_workers_does_not_change_the_batches() {
        let base = LoaderConfig {
            batch_size: 3,
            workers: 0,
            seed: 9,
            ..Default::default()
        };
        let inline: Vec<Batch> = loader(20, base.clone()).epoch(2).collect();
        let threaded: Vec<Batch> = loader(20, LoaderConfig { workers: 3, ..base })
            .epoch(2)
            .collect();
        assert_eq!(inline, threaded);
    }

    #[test]
    fn drop_last_drops_the_short_batch() {
        let l = loader(
            10,
            LoaderConfig {
                batch_size: 4,
                drop_last: true,
                ..Default::default()
            },
        );
        assert_eq!(l.num_batches(), 2);
        assert_eq!(l.epoch(0).count(), 2);
    }

    #[test]
    fn thousands_of_workers_are_refused() {
        let p = Pipeline::normalize([1, 2, 2], vec![0.0], vec![1.0]).unwrap();
        let cfg = LoaderConfig {
            workers: 100_000,
            ..Default::default()
        };
        let e = Loader::new(tiny(10), "train", p, cfg).err().unwrap();
        assert_eq!(
            e.to_string(),
            "100000 loader workers with 2 batches each ahead: at most 256 of each"
        );
    }

    #[test]
    fn transforms_for_another_shape_are_refused() {
        let p = Pipeline::normalize([1, 3, 3], vec![0.0], vec![1.0]).unwrap();
        let e = Loader::new(tiny(10), "train", p, Default::default())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "the transforms were made for [1, 3, 3] images, the dataset's are [1, 2, 2]"
        );
    }

    #[test]
    fn stopping_early_does_not_hang() {
        let l = loader(
            1000,
            LoaderConfig {
                batch_size: 1,
                workers: 2,
                prefetch: 1,
                ..Default::default()
            },
        );
        let mut e = l.epoch(0);
        e.next();
        drop(e);
    }
}
