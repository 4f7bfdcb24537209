//! The IDX parser never panics: any bytes, raw or as a gzip, give a parsed file or an
//! error, and never more data than the header describes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.idx");
    for parsed in [
        vramlab_data::idx::parse(data, path),
        vramlab_data::idx::parse_gzip(data, path),
    ] {
        if let Ok(idx) = parsed {
            let total: usize = idx.dims.iter().product();
            assert_eq!(idx.data.len(), total);
        }
    }
});
