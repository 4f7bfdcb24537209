//! `vramlab`: the command-line program (the library in `lib.rs` parses, plans and prints).

/// mimalloc: `fit` runs tens of simulations of a training step, each of thousands of
/// small allocations; glibc's malloc took a quarter of its time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    vramlab::main();
}
