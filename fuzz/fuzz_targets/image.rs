//! Decoding an image file of an image folder never panics nor aborts: any bytes give
//! planar pixels within the size limits, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vramlab_data::folder::{decode_bytes, FolderOptions};
use vramlab_data::limits::MAX_IMAGE_PIXELS;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.png");
    let opts = [
        FolderOptions::default(),
        FolderOptions {
            resize: Some(vec![7]),
            center_crop: Some([5, 5]),
            grayscale: true,
        },
    ];
    for o in &opts {
        if let Ok(([c, h, w], px)) = decode_bytes(data, path, o) {
            assert_eq!(px.len(), c * h * w);
            assert!((h * w) as u64 <= MAX_IMAGE_PIXELS);
        }
    }
});
