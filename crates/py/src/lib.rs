//! `vramlab._native`: the Python package's bridge to the command-line program. It runs the
//! CLI's planning commands in-process (`vramlab::run_captured`), so Python gets exactly the
//! numbers the CLI prints; the Python side (`python/vramlab/`) builds the arguments, captures
//! a live torch module to a .pt2 archive, and turns the JSON into objects.

use pyo3::prelude::*;

/// run(args: list[str]) -> (code, stdout, notes, error)
///
/// Runs `vramlab ARGS` (without the program name) in this process: `memory`, `fit`,
/// `summary`, `models` or `gpus`. `code` is 0, or 2 with `error` the one-line reason;
/// `stdout` is what the command printed (JSON with `--json`); `notes` are its `note:` lines.
#[pyfunction]
fn run(py: Python<'_>, args: Vec<String>) -> (i32, String, Vec<String>, Option<String>) {
    let c = py.detach(|| vramlab::run_captured(&args));
    (c.code, c.stdout, c.notes, c.error)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
