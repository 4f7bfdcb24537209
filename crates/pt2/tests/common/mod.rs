//! Helpers the pt2 test files share.

use std::io::Cursor;
use std::path::PathBuf;

/// A committed fixture's bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The exported program (`models/model.json`) of a committed archive, as text.
pub fn model_json(name: &str) -> String {
    let mut ar = vramlab_pt2::zip::Archive::open(Cursor::new(fixture(name))).unwrap();
    let e = ar
        .entries
        .iter()
        .find(|e| e.name.ends_with("models/model.json"))
        .cloned()
        .unwrap();
    String::from_utf8(ar.read(&e).unwrap()).unwrap()
}
