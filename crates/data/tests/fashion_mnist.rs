//! The real Fashion-MNIST (Debian's dataset-fashion-mnist; .ci/run installs it).

use vramlab_data::{open, stats::channel_stats, FASHION_MNIST_SYSTEM_ROOT};

fn present() -> bool {
    let here = std::path::Path::new(FASHION_MNIST_SYSTEM_ROOT)
        .join("train-images-idx3-ubyte.gz")
        .is_file();
    assert!(
        here || std::env::var_os("CI").is_none(),
        "CI must install dataset-fashion-mnist (.ci/run does)"
    );
    if !here {
        eprintln!("skipped: {FASHION_MNIST_SYSTEM_ROOT} not found (apt-get install -y dataset-fashion-mnist)");
    }
    here
}

#[test]
fn real_fashion_mnist_has_the_published_shape_classes_and_statistics() {
    if !present() {
        return;
    }
    let ds = open("fashion-mnist", None, &Default::default()).unwrap();
    assert_eq!(ds.shape, [1, 28, 28]);
    assert_eq!(ds.train.len(), 60_000);
    assert_eq!(ds.test.as_ref().unwrap().len(), 10_000);
    assert_eq!(ds.classes.len(), 10);
    assert_eq!(ds.class_counts(&ds.train), vec![6_000; 10]);
    assert_eq!(ds.class_counts(ds.test.as_ref().unwrap()), vec![1_000; 10]);
    assert_eq!(ds.classes[ds.train.labels[0] as usize], "Ankle boot");
    let s = channel_stats(&ds, &ds.train);
    assert_eq!(format!("{:.4}", s.mean[0]), "0.2860");
    assert_eq!(format!("{:.4}", s.std[0]), "0.3530");
}
