//! The engine never panics on a graph it cannot run, and hides no NaN.

use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::{Op, Shaped};

fn lenet() -> Shaped {
    vramlab_graph::zoo::build("lenet5", &Default::default())
        .unwrap()
        .infer()
        .unwrap()
}

fn sgd() -> OptimizerConfig {
    OptimizerConfig::named("sgd", Some(0.1)).unwrap()
}

/// ReLU keeps NaN as PyTorch does (torch.relu(nan) is nan), so a diverged weight shows
/// in the loss instead of being clamped to 0 and hidden.
#[test]
fn relu_propagates_nan_forward_and_the_loss_shows_it() {
    let mut e = Engine::new(lenet(), sgd(), 0, 1).unwrap();
    e.params[0].value.data_mut()[0] = f32::NAN;
    let x = e.batch(vec![0.5; 28 * 28], 1).unwrap();
    let logits = e.predict(&x).unwrap();
    assert!(logits.iter().all(|v| v.is_nan()), "{logits:?}");
    let x = e.batch(vec![0.5; 2 * 28 * 28], 2).unwrap();
    let y = e.labels(vec![0, 1]);
    let r = e.train_step(&x, &y).unwrap();
    assert!(r.loss.is_nan(), "loss {}", r.loss);
}

/// The backward of ReLU and ReLU6 passes the gradient where the saved value is NaN
/// (threshold_backward and hardtanh_backward zero it only where `v <= 0` / `v >= 6`).
#[test]
fn relu_backward_passes_the_gradient_through_nan() {
    for six in [false, true] {
        let text = format!(
            "input = [1, 1, 2]\n[[layers]]\ntype = \"Flatten\"\n[[layers]]\nname = \"fc\"\ntype = \"Linear\"\nin_features = 2\nout_features = 2\n[[layers]]\ntype = \"{}\"\ninplace = false\n[[layers]]\nname = \"out\"\ntype = \"Linear\"\nin_features = 2\nout_features = 2\n",
            if six { "ReLU6" } else { "ReLU" }
        );
        let g = vramlab_graph::model_file::parse(&text, "tiny")
            .unwrap()
            .infer()
            .unwrap();
        let mut e = Engine::new(g, sgd(), 0, 1).unwrap();
        // fc's first output is NaN: its weight row is NaN.
        e.params[0].value.data_mut()[0] = f32::NAN;
        let x = e.batch(vec![1.0, 1.0], 1).unwrap();
        e.gradients(&x, &[0]).unwrap();
        let g_fc = e.params[0].grad.as_ref().unwrap().data().clone();
        assert!(g_fc[0].is_nan(), "six={six}: {g_fc:?}");
    }
}

/// A layer with no outputs (Conv2d out_channels = 0, Linear out_features = 0) is an
/// error of the engine's constructor, not a panic in a kernel.
#[test]
fn zero_sized_layers_are_refused_not_a_panic() {
    for layer in ["conv1", "fc1"] {
        let mut g = lenet();
        let i = g.nodes().iter().position(|n| n.name == layer).unwrap();
        match &mut g.graph.nodes[i].op {
            Op::Conv2d(c) => c.out_channels = 0,
            Op::Linear(l) => l.out_features = 0,
            _ => unreachable!(),
        }
        g.shapes[i][0] = 0;
        let e = Engine::new(g, sgd(), 0, 1);
        let m = e.err().expect("refused").0;
        assert!(
            m.contains(&format!("layer `{layer}`")) && m.contains("empty"),
            "{m}"
        );
    }
}

#[test]
fn a_batch_whose_size_overflows_is_an_error() {
    let e = Engine::new(lenet(), sgd(), 0, 1).unwrap();
    let m = e.batch(Vec::new(), usize::MAX / 2).err().unwrap().0;
    assert!(m.contains("does not fit in memory"), "{m}");
    // The input fits the address space but conv1's output (6 channels for 1) does not:
    // refused before a layer's size wraps.
    let m = e.batch(Vec::new(), usize::MAX / 784 / 4).err().unwrap().0;
    assert!(m.contains("does not fit in memory"), "{m}");
}

#[test]
fn optimizer_hyper_parameters_are_validated() {
    let mut c = sgd();
    if let OptimizerConfig::Sgd { momentum, .. } = &mut c {
        *momentum = -5.0;
    }
    assert_eq!(
        c.validate().unwrap_err(),
        "momentum must be a finite number >= 0, got -5"
    );
    let mut c = OptimizerConfig::named("adam", Some(f32::NAN)).unwrap();
    assert!(c.validate().unwrap_err().starts_with("lr must be"));
    c.set_lr(1e-3);
    assert!(c.validate().is_ok());
    let mut c = OptimizerConfig::named("rmsprop", None).unwrap();
    if let OptimizerConfig::RmsProp { weight_decay, .. } = &mut c {
        *weight_decay = -100.0;
    }
    assert!(c.validate().unwrap_err().starts_with("weight_decay"));
}
