//! `vramlab`: the command-line program (the library in `lib.rs` parses, plans and prints).

fn main() {
    vramlab::main();
}
