//! cuDNN's convolution workspaces, as the pytorch-cuda profile asks the caching
//! allocator for them: an estimate, not a rule of PyTorch's.
//!
//! With `torch.backends.cudnn.benchmark=False` (the default) PyTorch takes cuDNN's
//! heuristic plans in order and runs the first one it can: before the kernel it asks the
//! caching allocator for that plan's workspace and frees it after (`run_conv_plan` and
//! `try_plans` in aten/src/ATen/native/cudnn/Conv_v8.cpp; a request the allocator cannot
//! serve raises `OutOfMemoryError`, which `try_plans` catches to try the next plan). A
//! convolution's backward allocates the input's gradient, runs its kernel, then the
//! weight's: one workspace after each. Which plan cuDNN ranks first is its own
//! heuristic, not derivable from PyTorch's source; the sizes here are read off the 25
//! allocator traces recorded on an H200 and an H100 (cuDNN 9.19, PyTorch 2.11,
//! tests/fixtures/gpu/*-traces.json.gz; about 1,600 workspaces in fp32, fp16 and bf16):
//!
//! - a dense convolution with a spatial kernel (ResNet's 3x3 and 7x7, VGG, DenseNet's
//!   3x3, a patch embedding): its plans transpose input, output and weight, and the
//!   workspace is their three sizes plus 16 or 147 bytes (forward and input gradient;
//!   a few forward plans took 8 MiB more, some strided ones only input and weight: not
//!   modelled); the weight gradient's adds split-K partial sums, 14 fp32 copies of a
//!   small weight and at most about 8.25 MiB (in half precision none past 600 KB);
//! - a forward whose reduction (input channels x kernel) is under 128 long takes none:
//!   stems over RGB with 3x3 and 5x5 kernels (a small CNN, VGG, EfficientNet; ResNet's
//!   7x7 stem and ViT's 16x16 patches take theirs), 1x1 convolutions over fewer than 128
//!   channels (ResNet-18's first downsampling; squeeze-excitation's take a few KB);
//! - a strided 1x1 convolution (ResNet's downsampling): input plus output;
//! - a 1x1 convolution at stride 1: a few hundred bytes over large planes (none here),
//!   input plus output over 7x7 and smaller ones; its weight gradient one fp32 partial
//!   weight per sample, or input plus output where that would pass 64 MiB;
//! - grouped and depthwise convolutions: none, but ConvNeXt's 7x7 depthwise weight
//!   gradients in half precision (eight fp32 partial weights per sample, exact at four
//!   plane sizes); EfficientNet's fp16 ones (input plus output) and ConvNeXt's fp32 ones
//!   (164 and 318 MB) are not modelled.
//!
//! With the recorded workspaces in the planned traces' place, reserved is within 3 % in
//! 23 of 25 cases; with these estimates in 17 (15 with none), and `max_memory_allocated`
//! within 1 % in 22 (docs/PERFORMANCE.md, tests/gpu.rs). Other cards and cuDNN versions
//! pick their own plans. `--cudnn-workspace` caps every workspace (what cuDNN's
//! `CUDNN_CONV_WSCAP_DBG` does); `0` turns them off.

use vramlab_graph::Conv2d;

/// Which of a convolution's kernels runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPass {
    Forward,
    /// Backward, the input's gradient.
    BackwardData,
    /// Backward, the weight's gradient.
    BackwardFilter,
}

impl ConvPass {
    /// The aten op that runs it.
    pub fn op(self) -> &'static str {
        match self {
            ConvPass::Forward => "aten.convolution.default",
            ConvPass::BackwardData | ConvPass::BackwardFilter => {
                "aten.convolution_backward.default"
            }
        }
    }
}

/// What a convolution kernel works on: batch and element counts of the whole batch.
#[derive(Debug, Clone, Copy)]
pub struct ConvTensors {
    pub batch: u128,
    /// Elements of the input, the output and the weight.
    pub input: u128,
    pub output: u128,
    pub weight: u128,
    /// Bytes per element the kernel runs in (2 under autocast).
    pub elem: u128,
}

/// Workspace bytes of one convolution kernel ([`ConvPass`]) over `t`.
pub fn conv_workspace_bytes(conv: &Conv2d, pass: ConvPass, t: ConvTensors) -> u128 {
    let (i, o, w) = (t.input * t.elem, t.output * t.elem, t.weight * t.elem);
    // The plans' own scratch past the transposed tensors: 16 or 147 bytes measured
    // (the allocator rounds either to one more 512-byte step).
    const PAD: u128 = 16;
    let pointwise = conv.kernel_size == (1, 1);
    let plane = t.output / (t.batch * conv.out_channels as u128).max(1);
    // Partial weight gradients are summed in fp32.
    let w32 = t.weight * 4;
    if conv.groups > 1 {
        // Depthwise 7x7 weight gradients in half precision (ConvNeXt's): eight fp32
        // partials per sample, measured exactly at 7x7 to 56x56 planes; none otherwise
        // (EfficientNet's 3x3 and 5x5 in fp16 measured input plus output: not modelled).
        let depthwise = conv.groups == conv.in_channels && conv.groups == conv.out_channels;
        return match pass {
            ConvPass::BackwardFilter if depthwise && t.elem == 2 && conv.kernel_size.0 >= 7 => {
                8 * t.batch * w32
            }
            _ => 0,
        };
    }
    match pass {
        // A reduction under 128 long (an RGB stem with a 3x3 or 5x5 kernel, a 1x1 over
        // fewer than 128 channels) runs its forward without one.
        ConvPass::Forward if conv.in_channels * conv.kernel_size.0 * conv.kernel_size.1 < 128 => 0,
        ConvPass::Forward | ConvPass::BackwardData => match (pointwise, conv.stride) {
            // A 1x1 at stride 1 is a plain GEMM over the channels: none, but for small
            // planes (7x7 and less), where the plans transpose input and output.
            (true, (1, 1)) if plane <= 49 => i + o + PAD,
            (true, (1, 1)) => 0,
            (true, _) => i + o + PAD,
            (false, _) => i + o + w + PAD,
        },
        ConvPass::BackwardFilter => {
            if pointwise && conv.stride == (1, 1) {
                // One partial weight gradient per sample, unless that passes 64 MiB.
                let per_sample = t.batch * w32;
                return if per_sample <= 64 << 20 {
                    per_sample
                } else {
                    i + o + PAD
                };
            }
            // Split-K: a few partial weight gradients (14 measured for small weights,
            // bounded by about 8.25 MiB in fp32; in half precision none past 600 KB).
            let split = if t.elem >= 4 {
                (14 * w32).min(8_650_752)
            } else if w32 <= 600_000 {
                14 * w32
            } else {
                0
            };
            i + o + w + split + PAD
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(batch: u128, input: u128, output: u128, weight: u128) -> ConvTensors {
        ConvTensors {
            batch,
            input,
            output,
            weight,
            elem: 4,
        }
    }

    /// Workspaces measured on the H200 (resnet18 at 3x224x224, batch 64, fp32, cuDNN
    /// 9.19): the rule's against them.
    #[test]
    fn resnet18_workspaces_as_measured() {
        use ConvPass::*;
        // conv1: 7x7 stride 2, 3 -> 64 channels, 224 -> 112: forward exact.
        let conv1 = Conv2d::new(3, 64, 7).stride(2).padding(3);
        let c1 = t(64, 64 * 3 * 224 * 224, 64 * 64 * 112 * 112, 64 * 3 * 49);
        assert_eq!(conv_workspace_bytes(&conv1, Forward, c1), 244_093_712);
        // layer1's 3x3 at 56x56: forward and input gradient within 131 bytes; the
        // weight gradient's split-K buffer: 14 fp32 copies of the weight, exact but
        // for 663 bytes.
        let c = Conv2d::new(64, 64, 3).padding(1);
        let l1 = t(64, 64 * 64 * 56 * 56, 64 * 64 * 56 * 56, 64 * 64 * 9);
        assert_eq!(conv_workspace_bytes(&c, Forward, l1), 102_908_051 - 131);
        assert_eq!(
            conv_workspace_bytes(&c, BackwardData, l1),
            102_908_051 - 131
        );
        assert_eq!(
            conv_workspace_bytes(&c, BackwardFilter, l1),
            104_972_967 - 663
        );
        // layer3.0.downsample: 1x1 stride 2, 128 -> 256, 28 -> 14: input plus output.
        let d = Conv2d::new(128, 256, 1).stride(2);
        let ds = t(64, 64 * 128 * 28 * 28, 64 * 256 * 14 * 14, 128 * 256);
        assert_eq!(conv_workspace_bytes(&d, Forward, ds), 38_535_315 - 131);
    }

    /// An RGB stem with a 3x3 kernel runs its forward without one (VGG's, measured at
    /// batch 32), ResNet's 7x7 stem with one; the weight gradient always takes one.
    #[test]
    fn short_reductions_run_forward_without_one() {
        use ConvPass::*;
        let vgg = Conv2d::new(3, 64, 3).padding(1);
        let v = t(32, 32 * 3 * 224 * 224, 32 * 64 * 224 * 224, 64 * 27);
        assert_eq!(conv_workspace_bytes(&vgg, Forward, v), 0);
        assert!(conv_workspace_bytes(&vgg, BackwardFilter, v) > 0);
        let resnet = Conv2d::new(3, 64, 7).stride(2).padding(3);
        let r = t(32, 32 * 3 * 224 * 224, 32 * 64 * 112 * 112, 64 * 147);
        // 122,065,680 B measured (densenet121's stem, the same shape).
        assert_eq!(conv_workspace_bytes(&resnet, Forward, r), 122_065_680);
    }

    /// A 1x1 convolution at stride 1 needs none over large planes, input plus output
    /// over small ones; its weight gradient keeps one fp32 partial per sample (resnet50
    /// at batch 32: 32 x 16 KiB for layer1's 64 -> 64); depthwise ones none.
    #[test]
    fn pointwise_and_depthwise() {
        use ConvPass::*;
        let pw = Conv2d::new(64, 64, 1);
        let big = t(32, 32 * 64 * 56 * 56, 32 * 64 * 56 * 56, 64 * 64);
        assert_eq!(conv_workspace_bytes(&pw, Forward, big), 0);
        assert_eq!(conv_workspace_bytes(&pw, BackwardFilter, big), 524_288);
        let pw7 = Conv2d::new(2048, 512, 1);
        let small = t(32, 32 * 2048 * 49, 32 * 512 * 49, 2048 * 512);
        // resnet50.s layer4 at batch 32: 16,056,336 B measured.
        assert_eq!(conv_workspace_bytes(&pw7, Forward, small), 16_056_336);
        let dw = Conv2d::new(96, 96, 7).padding(3).groups(96);
        let m = t(32, 32 * 96 * 56 * 56, 32 * 96 * 56 * 56, 96 * 49);
        for pass in [Forward, BackwardData, BackwardFilter] {
            assert_eq!(conv_workspace_bytes(&dw, pass, m), 0);
        }
    }
}
