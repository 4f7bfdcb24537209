//! The checkpoint reader never panics: any bytes give a checkpoint or an error naming
//! the file, and loading a parsed one into a model either succeeds or is an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vramlab_engine::{checkpoint, Engine, OptimizerConfig};

thread_local! {
    /// A small model to load into (built once: LeNet-5 with Adam, so optimizer state,
    /// shapes and names are all checked).
    static ENGINE: std::cell::RefCell<Engine> = std::cell::RefCell::new({
        let g = vramlab_graph::zoo::build("lenet5", &Default::default())
            .expect("a zoo model")
            .infer()
            .expect("it infers");
        Engine::new(g, OptimizerConfig::named("adam", None).expect("known"), 0, 1)
            .expect("an engine")
    });
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let source = std::io::Cursor::new(data.to_vec());
    match checkpoint::read_from(source, len, "fuzz.safetensors") {
        Ok(ck) => {
            let _ = ck.optimizer();
            let names = ck.tensor_names();
            assert!(names.len() <= data.len());
            ENGINE.with(|e| {
                if let Err(err) = ck.load_into(&mut e.borrow_mut()) {
                    assert!(err.0.starts_with("fuzz.safetensors: "), "{}", err.0);
                }
            });
        }
        Err(err) => assert!(err.0.starts_with("fuzz.safetensors: "), "{}", err.0),
    }
});
