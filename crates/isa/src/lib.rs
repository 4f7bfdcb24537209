//! The one table of instruction-set tiers that vramlab's CPU engine runs its kernels
//! with, and that the `native` memory profile reads to predict the engine's scratch
//! buffers. The CPU is probed once; `VRAMLAB_ISA` (`scalar`, `avx2`, `avx512`, `neon`)
//! forces the tier down, never up: a request above what the CPU has is clamped to the
//! CPU's tier with a one-line note on stderr, an unknown name is ignored with a note.
//!
//! | tier | where | direct convolution tile | direct weight gradient | 2x2 max-pool |
//! |---|---|---|---|---|
//! | scalar | every CPU | none (im2col + sgemm) | no (im2col + sgemm) | scalar selects |
//! | avx2 | x86_64 with AVX2 and FMA | 16 columns x 6 channels (12 ymm) | yes | 8 lanes |
//! | avx512 | x86_64 with AVX-512F | 16 columns x 8 channels (8 zmm) | yes (AVX2 code) | 16 lanes |
//! | neon | aarch64 (always present) | none yet (im2col + sgemm) | no | scalar selects |

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that forces the tier down.
pub const ENV: &str = "VRAMLAB_ISA";

/// An instruction-set tier, ordered: a higher tier can run every lower one's code on
/// the same architecture (NEON is aarch64's only tier above scalar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Scalar,
    Neon,
    Avx2,
    Avx512,
}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 4] = [Tier::Scalar, Tier::Neon, Tier::Avx2, Tier::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Scalar => "scalar",
            Tier::Neon => "neon",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Tier::Scalar),
            "neon" => Some(Tier::Neon),
            "avx2" | "avx2+fma" | "avx2fma" => Some(Tier::Avx2),
            "avx512" | "avx-512" | "avx512f" => Some(Tier::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run this tier's code.
    pub fn supported(self) -> bool {
        match self {
            Tier::Scalar => true,
            Tier::Neon => cfg!(target_arch = "aarch64"),
            Tier::Avx2 => x86_has_avx2_fma(),
            Tier::Avx512 => x86_has_avx512(),
        }
    }

    /// The direct convolution's output tile, `(columns, output channels)`, where this
    /// tier has one: the columns set the padded row width, the channels the blocking of
    /// the weights (both scratch buffers the native profile counts).
    pub fn direct_tile(self) -> Option<(usize, usize)> {
        match self {
            Tier::Avx512 => Some((16, 8)),
            // Four 4-lane registers of columns by 6 channels: 24 accumulators of NEON's 32.
            Tier::Avx2 | Tier::Neon => Some((16, 6)),
            Tier::Scalar => None,
        }
    }
}

impl Tier {
    /// Whether this tier computes a direct-shaped convolution's weight gradient
    /// directly, over the padded input (no im2col, no matrix packing): the AVX2+FMA
    /// kernel, which AVX-512 CPUs run too, and the NEON one. Where false, im2col and a
    /// matrix product;
    /// the native profile counts the padded input or the column matrix accordingly.
    pub fn direct_wgrad(self) -> bool {
        matches!(self, Tier::Avx2 | Tier::Avx512 | Tier::Neon)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn x86_has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn x86_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX-512 kernels use 256-bit AVX2/FMA forms too.
        std::arch::is_x86_feature_detected!("avx512f") && x86_has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The highest tier this CPU has (probed once).
pub fn detected() -> Tier {
    static D: OnceLock<Tier> = OnceLock::new();
    *D.get_or_init(|| {
        Tier::ALL
            .iter()
            .rev()
            .copied()
            .find(|t| t.supported())
            .unwrap_or(Tier::Scalar)
    })
}

/// Every tier this CPU can run, lowest first (scalar always): what the tests compare
/// against the scalar code.
pub fn available() -> Vec<Tier> {
    Tier::ALL
        .iter()
        .copied()
        .filter(|t| t.supported())
        .collect()
}

/// The tier chosen from the CPU's tier and a request (the value of `VRAMLAB_ISA`), with
/// the note to print when the request was not taken as given.
pub fn choose(cpu: Tier, request: Option<&str>) -> (Tier, Option<String>) {
    let Some(req) = request.map(str::trim).filter(|r| !r.is_empty()) else {
        return (cpu, None);
    };
    match Tier::parse(req) {
        None => (
            cpu,
            Some(format!(
                "note: {ENV}={req:?} is not a tier (expected scalar, avx2, avx512 or neon); using {cpu}, this CPU's tier"
            )),
        ),
        Some(t) if t == cpu || (t < cpu && t.supported_below(cpu)) => (t, None),
        Some(t) => {
            // Above the CPU (or another architecture's tier): the best the CPU has that
            // is not above the request.
            let best = Tier::ALL
                .iter()
                .rev()
                .copied()
                .find(|c| *c <= t.min(cpu) && c.supported_below(cpu))
                .unwrap_or(Tier::Scalar);
            (
                best,
                Some(format!(
                    "note: {ENV}={req} asks for {t}, which this CPU does not have ({cpu} at most); using {best}"
                )),
            )
        }
    }
}

impl Tier {
    /// Whether a CPU whose tier is `cpu` runs this tier's code (same architecture).
    fn supported_below(self, cpu: Tier) -> bool {
        match (self, cpu) {
            (Tier::Scalar, _) => true,
            (Tier::Neon, c) => c == Tier::Neon,
            (Tier::Avx2, c) => c == Tier::Avx2 || c == Tier::Avx512,
            (Tier::Avx512, c) => c == Tier::Avx512,
        }
    }
}

/// The tier the engine runs, and the native profile plans for: this CPU's, forced down
/// by `VRAMLAB_ISA`. Chosen once per process (a note, if any, printed once).
pub fn active() -> Tier {
    static A: OnceLock<Tier> = OnceLock::new();
    *A.get_or_init(|| {
        let req = std::env::var(ENV).ok();
        let (t, note) = choose(detected(), req.as_deref());
        if let Some(n) = note {
            eprintln!("{n}");
        }
        t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_forces_the_tier_down_never_up() {
        use Tier::*;
        assert_eq!(choose(Avx512, None), (Avx512, None));
        assert_eq!(choose(Avx512, Some("avx2")), (Avx2, None));
        assert_eq!(choose(Avx512, Some("SCALAR")), (Scalar, None));
        assert_eq!(choose(Avx2, Some("avx2")), (Avx2, None));
        let (t, note) = choose(Avx2, Some("avx512"));
        assert_eq!(t, Avx2);
        assert!(note.unwrap().contains("avx2 at most"));
        // Another architecture's tier: the best below it this CPU runs.
        let (t, note) = choose(Avx2, Some("neon"));
        assert_eq!(t, Scalar);
        assert!(note.is_some());
        let (t, note) = choose(Neon, Some("avx512"));
        assert_eq!(t, Neon);
        assert!(note.unwrap().contains("neon at most"));
        let (t, note) = choose(Avx2, Some("sse9"));
        assert_eq!(t, Avx2);
        assert!(note.unwrap().contains("VRAMLAB_ISA=\"sse9\" is not a tier"));
        assert_eq!(choose(Scalar, Some(" ")), (Scalar, None));
    }

    #[test]
    fn the_detected_tier_is_the_highest_available_and_active_is_not_above_it() {
        let av = available();
        assert_eq!(av[0], Tier::Scalar);
        assert_eq!(*av.last().unwrap(), detected());
        assert!(active() <= detected());
        assert!(active().supported());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(av.contains(&Tier::Avx2));
        }
        #[cfg(target_arch = "aarch64")]
        assert_eq!(detected(), Tier::Neon);
    }
}
