//! The IDX parser never panics: any bytes give a parsed file or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.idx");
    if let Ok(idx) = vramlab_data::idx::parse(data, path) {
        let total: usize = idx.dims.iter().product();
        assert_eq!(idx.data.len(), total);
    }
});
