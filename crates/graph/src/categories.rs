//! The vocabulary of training memory that the planner predicts and the engine measures:
//! the categories, bytes by category, and the phase of a step.

use serde::Serialize;
use std::fmt;

/// Where memory goes during training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Params = 0,
    Buffers = 1,
    Grads = 2,
    OptimizerState = 3,
    DataBatch = 4,
    Activations = 5,
    Temporaries = 6,
    Overhead = 7,
    /// Many GPUs: DDP's gradient buckets, all-gathered parameters and reduce-scatter
    /// buffers of sharded training.
    Communication = 8,
}

impl Category {
    /// How many categories there are.
    pub const COUNT: usize = 9;

    pub const ALL: [Category; Category::COUNT] = [
        Category::Params,
        Category::Buffers,
        Category::Grads,
        Category::OptimizerState,
        Category::DataBatch,
        Category::Activations,
        Category::Temporaries,
        Category::Overhead,
        Category::Communication,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Category::Params => "params",
            Category::Buffers => "buffers",
            Category::Grads => "grads",
            Category::OptimizerState => "optimizer_state",
            Category::DataBatch => "data_batch",
            Category::Activations => "activations",
            Category::Temporaries => "temporaries",
            Category::Overhead => "overhead",
            Category::Communication => "communication",
        }
    }
}

/// Bytes in each category at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CategoryBytes {
    pub params: u128,
    pub buffers: u128,
    pub grads: u128,
    pub optimizer_state: u128,
    pub data_batch: u128,
    pub activations: u128,
    pub temporaries: u128,
    pub overhead: u128,
    pub communication: u128,
}

impl CategoryBytes {
    pub fn get(&self, c: Category) -> u128 {
        match c {
            Category::Params => self.params,
            Category::Buffers => self.buffers,
            Category::Grads => self.grads,
            Category::OptimizerState => self.optimizer_state,
            Category::DataBatch => self.data_batch,
            Category::Activations => self.activations,
            Category::Temporaries => self.temporaries,
            Category::Overhead => self.overhead,
            Category::Communication => self.communication,
        }
    }

    pub fn total(&self) -> u128 {
        Category::ALL.iter().map(|&c| self.get(c)).sum()
    }
}

/// The part of a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        })
    }
}
