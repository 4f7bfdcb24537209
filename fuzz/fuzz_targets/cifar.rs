//! The CIFAR-10 and CIFAR-100 record parsers never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vramlab_data::cifar::{parse, Kind, PIXELS};
use vramlab_data::Split;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.bin");
    for (kind, coarse) in [(Kind::Cifar10, false), (Kind::Cifar100, false), (Kind::Cifar100, true)] {
        let mut s = Split { images: Vec::new(), labels: Vec::new() };
        if parse(data, path, kind, coarse, &mut s).is_ok() {
            assert_eq!(s.images.len(), s.labels.len() * PIXELS);
        }
    }
});
