//! The training loop of vramlab's CPU engine: epochs over a loader, resuming inside an
//! epoch, a checkpoint after each epoch and on an interrupt, a test accuracy per epoch,
//! and why the run stopped, as a value ([`Stop`]). The caller (the `vramlab` CLI) shows
//! progress through an [`Observer`] and decides what a stop means for the user.
//!
//! ```no_run
//! # fn run(e: &mut vramlab_engine::Engine, l: &vramlab_data::loader::Loader) {
//! use std::sync::atomic::AtomicBool;
//! let schedule = vramlab_train::Schedule { epochs: 2, ..Default::default() };
//! let out = vramlab_train::run(
//!     e, l, &schedule, &AtomicBool::new(false),
//!     &|_, _, _| Default::default(),
//!     &mut |_| Ok(None),
//!     &mut vramlab_train::Quiet,
//! ).unwrap();
//! assert!(out.stopped.is_none());
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use vramlab_data::loader::Loader;
use vramlab_engine::checkpoint::{self, CheckpointError};
use vramlab_engine::{Engine, EngineError, StepMemory};

/// What to run: epochs `start_epoch..epochs`, skipping the first `skip_batches` of the
/// first one (a resumed run), at most `max_steps` steps, saving to `checkpoint`.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub epochs: usize,
    pub start_epoch: usize,
    pub skip_batches: usize,
    pub max_steps: Option<usize>,
    pub checkpoint: Option<PathBuf>,
    /// The checkpoint already holds a good state when the run starts (it resumes from
    /// that file): kept if the loss turns non-finite before this run writes it.
    pub checkpoint_is_start: bool,
}

/// Why a run ended before its last epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// `--max-steps` reached.
    MaxSteps { steps: usize },
    /// Ctrl-C: saved to the checkpoint if there is one.
    Interrupted { saved_to: Option<PathBuf> },
    /// The loss became NaN or infinite (epoch and step from 1); the last good
    /// checkpoint, if any, is kept.
    NonFiniteLoss {
        loss: f32,
        epoch: usize,
        step: usize,
        kept: Option<PathBuf>,
    },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::MaxSteps { steps } => write!(f, "stopped after --max-steps {steps}"),
            Stop::Interrupted { saved_to: Some(c) } => write!(
                f,
                "interrupted: saved to {} (resume with --resume)",
                c.display()
            ),
            Stop::Interrupted { saved_to: None } => {
                f.write_str("interrupted (no --checkpoint given, nothing saved)")
            }
            Stop::NonFiniteLoss {
                loss,
                epoch,
                step,
                kept,
            } => {
                write!(
                    f,
                    "the loss became {loss} at epoch {epoch} step {step}; training stopped"
                )?;
                if let Some(c) = kept {
                    write!(f, " and the last good checkpoint {} was kept", c.display())?;
                }
                Ok(())
            }
        }
    }
}

/// One epoch of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    /// Steps taken in this epoch by this run (fewer on a resumed or stopped epoch).
    pub steps: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: Option<f64>,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub epochs: Vec<EpochRow>,
    /// The engine's measured memory of this run's first two steps.
    pub measured: Vec<StepMemory>,
    pub stopped: Option<Stop>,
}

/// Why the loop could not go on.
#[derive(Debug)]
pub enum TrainError {
    Engine(EngineError),
    Checkpoint(CheckpointError),
    /// The resume position is past the epoch's end.
    Resume(String),
    /// The test evaluation failed.
    Eval(String),
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::Engine(e) => write!(f, "{e}"),
            TrainError::Checkpoint(e) => write!(f, "{e}"),
            TrainError::Resume(m) | TrainError::Eval(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TrainError {}

impl From<EngineError> for TrainError {
    fn from(e: EngineError) -> Self {
        TrainError::Engine(e)
    }
}

impl From<CheckpointError> for TrainError {
    fn from(e: CheckpointError) -> Self {
        TrainError::Checkpoint(e)
    }
}

/// Progress of a run, for a progress bar and epoch lines.
pub trait Observer {
    /// An epoch starts with `done` of its `batches` already done (a resumed run).
    fn epoch_started(&mut self, _epoch: usize, _batches: usize, _done: usize) {}
    /// Batch `index` (from 0) is done; the epoch's mean loss and accuracy so far.
    fn step(&mut self, _index: usize, _loss: f64, _accuracy: f64, _images_per_s: f64) {}
    /// Before the epoch's evaluation and checkpoint (the bar can go).
    fn epoch_steps_done(&mut self) {}
    fn epoch_finished(&mut self, _row: &EpochRow) {}
}

/// An observer that shows nothing.
pub struct Quiet;

impl Observer for Quiet {}

/// Runs the schedule. `metadata(epoch, position, batches)` is the checkpoint's metadata
/// once `position` batches of `epoch` are done; `test_accuracy` evaluates after each
/// epoch (`None`: no test split); `interrupted` is polled after every step.
pub fn run(
    e: &mut Engine,
    loader: &Loader,
    schedule: &Schedule,
    interrupted: &AtomicBool,
    metadata: &dyn Fn(usize, usize, usize) -> BTreeMap<String, String>,
    test_accuracy: &mut dyn FnMut(&mut Engine) -> Result<Option<f64>, TrainError>,
    obs: &mut dyn Observer,
) -> Result<Outcome, TrainError> {
    let batches = loader.num_batches();
    let mut skip = schedule.skip_batches;
    if skip >= batches {
        return Err(TrainError::Resume(format!(
            "the checkpoint stopped after batch {skip} of an epoch that has {batches}"
        )));
    }
    let mut out = Outcome {
        epochs: Vec::new(),
        measured: Vec::new(),
        stopped: None,
    };
    let mut steps_done = 0usize;
    // Whether this run wrote its checkpoint: only then is one "kept" when the loss turns
    // non-finite (a file already at the path may be anything).
    let mut saved = schedule.checkpoint_is_start;
    'epochs: for epoch in schedule.start_epoch..schedule.epochs {
        let t0 = Instant::now();
        let skip_now = std::mem::take(&mut skip);
        obs.epoch_started(epoch, batches, skip_now);
        let (mut loss_sum, mut correct, mut seen, mut steps) = (0.0f64, 0usize, 0usize, 0usize);
        // Batches of this epoch done, counting those of the resumed checkpoint.
        let mut position = skip_now;
        for (bi, batch) in loader.epoch(epoch as u64).enumerate().skip(skip_now) {
            let n = batch.labels.len();
            let x = e.batch(batch.images, n)?;
            let y = e.labels(batch.labels);
            let r = e.train_step(&x, &y)?;
            if !r.loss.is_finite() {
                out.stopped = Some(Stop::NonFiniteLoss {
                    loss: r.loss,
                    epoch: epoch + 1,
                    step: bi + 1,
                    kept: schedule.checkpoint.clone().filter(|_| saved),
                });
                break 'epochs;
            }
            position = bi + 1;
            if out.measured.len() < 2 {
                out.measured.push(r.memory.clone());
            }
            loss_sum += r.loss as f64 * n as f64;
            correct += r.correct;
            seen += n;
            steps += 1;
            steps_done += 1;
            let s = t0.elapsed().as_secs_f64();
            obs.step(
                bi,
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / s.max(1e-9),
            );
            if interrupted.load(Ordering::SeqCst) {
                obs.epoch_steps_done();
                let saved_to = match &schedule.checkpoint {
                    Some(c) => {
                        checkpoint::save(e, c, metadata(epoch, position, batches))?;
                        Some(c.clone())
                    }
                    None => None,
                };
                out.stopped = Some(Stop::Interrupted { saved_to });
                break 'epochs;
            }
            if schedule.max_steps.is_some_and(|m| steps_done >= m) {
                out.stopped = Some(Stop::MaxSteps { steps: steps_done });
                break;
            }
        }
        obs.epoch_steps_done();
        let seconds = t0.elapsed().as_secs_f64();
        let row = EpochRow {
            epoch: epoch + 1,
            steps,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_accuracy: test_accuracy(e)?,
            seconds,
            images_per_s: seen as f64 / seconds.max(1e-9),
        };
        obs.epoch_finished(&row);
        out.epochs.push(row);
        if let Some(c) = &schedule.checkpoint {
            checkpoint::save(e, c, metadata(epoch, position, batches))?;
            saved = true;
        }
        if out.stopped.is_some() {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_read_as_the_cli_prints_them() {
        assert_eq!(
            Stop::MaxSteps { steps: 50 }.to_string(),
            "stopped after --max-steps 50"
        );
        assert_eq!(
            Stop::NonFiniteLoss {
                loss: f32::NAN,
                epoch: 1,
                step: 3,
                kept: Some("run.safetensors".into())
            }
            .to_string(),
            "the loss became NaN at epoch 1 step 3; training stopped and the last good \
             checkpoint run.safetensors was kept"
        );
        assert_eq!(
            Stop::Interrupted { saved_to: None }.to_string(),
            "interrupted (no --checkpoint given, nothing saved)"
        );
    }
}
