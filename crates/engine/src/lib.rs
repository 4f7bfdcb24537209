//! vramlab's CPU training engine: it runs any graph the planner accepts (forward,
//! cross-entropy, backward, optimizer step) and measures its own memory by category,
//! so the planner's `native` profile can be checked to the byte.
//!
//! For the convolutional layers it keeps for backward what PyTorch's autograd keeps
//! (conv and linear inputs, ReLU results, max-pool inputs and int64 indices, BatchNorm
//! input and statistics, a float dropout mask); its attention layers keep their own set
//! (the input, the packed projections, the probabilities, the heads' outputs), which the
//! native profile plans. Each layer type is one file under [`ops`], its scratch declared
//! there once for the kernels and the native profile.
//!
//! ```
//! use vramlab_engine::{Engine, OptimizerConfig};
//! let g = vramlab_graph::zoo::build("lenet5", &Default::default()).unwrap().infer().unwrap();
//! let mut e = Engine::new(g, OptimizerConfig::named("adam", None).unwrap(), 0, 1).unwrap();
//! let x = e.batch(vec![0.5; 4 * 28 * 28], 4).unwrap();
//! let y = e.labels(vec![0, 1, 2, 3]);
//! let r = e.train_step(&x, &y).unwrap();
//! assert!(r.loss > 0.0 && r.memory.peak.bytes > 0);
//! ```
//!
//! Main types: [`Engine`], [`OptimizerConfig`], [`tensor::Tracker`].

pub mod checkpoint;
pub mod kernels;
mod model;
pub mod ops;
pub mod optim;
pub mod tensor;

pub use model::{Engine, EngineError, Param, StepMemory, StepResult};
pub use ops::batch_norm::BnBuffers;
pub use optim::OptimizerConfig;
pub use vramlab_graph::rng;
pub use vramlab_isa as isa;
