//! Transforms with torchvision's names and semantics, composable and seeded:
//! `RandomCrop(size, padding)` and `RandomHorizontalFlip(p)` on the u8 image,
//! `ToTensor()` (u8 to f32 in [0, 1]), `Normalize(mean, std)`.
//!
//! A [`Pipeline`] runs them in order. Geometric transforms must come before `ToTensor`,
//! as in torchvision where they act on the PIL image. The whole pipeline is fused into
//! one pass per image: each output pixel reads its source pixel (or the zero padding)
//! and applies the per-channel scale and shift.

use crate::limits::{check_image_size, MAX_IMAGE_SIDE};
use crate::rng::Rng;
use crate::DataError;

#[derive(Debug, Clone, PartialEq)]
pub enum Transform {
    /// Crop `size` (h, w) at a random place of the image padded by `padding` zeros.
    RandomCrop {
        size: (usize, usize),
        padding: usize,
    },
    /// Mirror left-right with probability `p`.
    RandomHorizontalFlip { p: f64 },
    /// u8 0..255 to f32 0..1.
    ToTensor,
    /// `(x - mean[c]) / std[c]`.
    Normalize { mean: Vec<f32>, std: Vec<f32> },
}

/// A composed, validated list of transforms for images of one shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    pub transforms: Vec<Transform>,
    in_shape: [usize; 3],
    out_shape: [usize; 3],
    crop: Option<((usize, usize), usize)>,
    flip: Option<f64>,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Pipeline {
    /// Checks the order and the channel counts against images of `shape`.
    pub fn new(transforms: Vec<Transform>, shape: [usize; 3]) -> Result<Self, DataError> {
        let c = shape[0];
        let mut crop = None;
        let mut flip = None;
        let mut tensor = false;
        let (mut scale, mut shift) = (vec![1.0f32; c], vec![0.0f32; c]);
        let mut out_shape = shape;
        for t in &transforms {
            match t {
                Transform::RandomCrop { size, padding } => {
                    if tensor {
                        return Err(DataError::Config(
                            "RandomCrop must come before ToTensor".into(),
                        ));
                    }
                    if *padding as u64 > MAX_IMAGE_SIDE {
                        return Err(DataError::Config(format!(
                            "RandomCrop padding={padding} is larger than {MAX_IMAGE_SIDE}"
                        )));
                    }
                    if size.0 == 0
                        || size.1 == 0
                        || size.0 > shape[1].saturating_add(2 * padding)
                        || size.1 > shape[2].saturating_add(2 * padding)
                    {
                        return Err(DataError::Config(format!(
                            "RandomCrop({}x{}, padding={padding}) does not fit {}x{} images",
                            size.0, size.1, shape[1], shape[2]
                        )));
                    }
                    check_image_size(
                        size.1 as u64,
                        size.0 as u64,
                        &format!("RandomCrop({}x{}) gives images of", size.0, size.1),
                    )
                    .map_err(DataError::Config)?;
                    crop = Some((*size, *padding));
                    out_shape = [c, size.0, size.1];
                }
                Transform::RandomHorizontalFlip { p } => {
                    if tensor {
                        return Err(DataError::Config(
                            "RandomHorizontalFlip must come before ToTensor".into(),
                        ));
                    }
                    if !(0.0..=1.0).contains(p) {
                        return Err(DataError::Config(format!(
                            "RandomHorizontalFlip p={p}: expected a probability from 0 to 1"
                        )));
                    }
                    flip = Some(*p);
                }
                Transform::ToTensor => {
                    tensor = true;
                    scale.iter_mut().for_each(|s| *s /= 255.0);
                }
                Transform::Normalize { mean, std } => {
                    if !tensor {
                        return Err(DataError::Config(
                            "Normalize must come after ToTensor".into(),
                        ));
                    }
                    if mean.len() != c || std.len() != c {
                        return Err(DataError::Config(format!(
                            "Normalize has {} means and {} stds for {c}-channel images",
                            mean.len(),
                            std.len()
                        )));
                    }
                    if std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
                        return Err(DataError::Config(format!(
                            "Normalize std {std:?}: each must be a positive finite number"
                        )));
                    }
                    if mean.iter().any(|m| !m.is_finite()) {
                        return Err(DataError::Config(format!(
                            "Normalize mean {mean:?}: each must be a finite number"
                        )));
                    }
                    for ch in 0..c {
                        scale[ch] /= std[ch];
                        shift[ch] = (shift[ch] - mean[ch]) / std[ch];
                    }
                }
            }
        }
        if !tensor {
            return Err(DataError::Config(
                "the pipeline needs ToTensor to make float tensors".into(),
            ));
        }
        Ok(Pipeline {
            transforms,
            in_shape: shape,
            out_shape,
            crop,
            flip,
            scale,
            shift,
        })
    }

    /// `ToTensor()` then `Normalize(mean, std)`.
    pub fn normalize(shape: [usize; 3], mean: Vec<f32>, std: Vec<f32>) -> Result<Self, DataError> {
        Pipeline::new(
            vec![Transform::ToTensor, Transform::Normalize { mean, std }],
            shape,
        )
    }

    pub fn out_shape(&self) -> [usize; 3] {
        self.out_shape
    }

    /// The shape of the images it was made for.
    pub fn in_shape(&self) -> [usize; 3] {
        self.in_shape
    }

    /// Applies the pipeline to one planar u8 image, writing `out_shape` floats.
    pub fn apply(&self, src: &[u8], rng: &mut Rng, out: &mut [f32]) {
        let [c, h, w] = self.in_shape;
        let [_, oh, ow] = self.out_shape;
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(out.len(), c * oh * ow);
        let (dy, dx, pad) = match self.crop {
            Some(((ch, cw), pad)) => {
                let dy = rng.below((h + 2 * pad - ch + 1) as u64) as usize;
                let dx = rng.below((w + 2 * pad - cw + 1) as u64) as usize;
                (dy, dx, pad)
            }
            None => (0, 0, 0),
        };
        let flip = self.flip.is_some_and(|p| rng.unit_f64() < p);
        if !flip && dy == pad && dx == pad && oh == h && ow == w {
            for ch in 0..c {
                let (s, b) = (self.scale[ch], self.shift[ch]);
                let plane = &src[ch * h * w..(ch + 1) * h * w];
                for (o, &v) in out[ch * h * w..(ch + 1) * h * w].iter_mut().zip(plane) {
                    *o = v as f32 * s + b;
                }
            }
            return;
        }
        for ch in 0..c {
            let (s, b) = (self.scale[ch], self.shift[ch]);
            for y in 0..oh {
                let sy = (y + dy) as isize - pad as isize;
                for x in 0..ow {
                    // Flip acts on the cropped image: column x reads column ow-1-x.
                    let xc = if flip { ow - 1 - x } else { x };
                    let sx = (xc + dx) as isize - pad as isize;
                    let v = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                        src[ch * h * w + sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                    out[ch * oh * ow + y * ow + x] = v as f32 * s + b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> Vec<u8> {
        // 1x2x3: rows [0 51 102], [153 204 255]
        vec![0, 51, 102, 153, 204, 255]
    }

    #[test]
    fn to_tensor_and_normalize_match_torchvision() {
        let p = Pipeline::normalize([1, 2, 3], vec![0.5], vec![0.5]).unwrap();
        let mut out = vec![0.0; 6];
        p.apply(&img(), &mut Rng::new(0), &mut out);
        let expect = [-1.0, -0.6, -0.2, 0.2, 0.6, 1.0];
        for (o, e) in out.iter().zip(expect) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn a_flip_with_p_1_mirrors_rows() {
        let p = Pipeline::new(
            vec![
                Transform::RandomHorizontalFlip { p: 1.0 },
                Transform::ToTensor,
            ],
            [1, 2, 3],
        )
        .unwrap();
        let mut out = vec![0.0; 6];
        p.apply(&img(), &mut Rng::new(0), &mut out);
        let got: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
        assert_eq!(got, vec![102, 51, 0, 255, 204, 153]);
    }

    #[test]
    fn a_padded_random_crop_shifts_within_zero_padding() {
        let p = Pipeline::new(
            vec![
                Transform::RandomCrop {
                    size: (2, 3),
                    padding: 1,
                },
                Transform::ToTensor,
            ],
            [1, 2, 3],
        )
        .unwrap();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let mut out = vec![0.0; 6];
            p.apply(&img(), &mut Rng::new(seed), &mut out);
            let got: Vec<u8> = out.iter().map(|v| (v * 255.0).round() as u8).collect();
            // Every crop is a 2x3 window of the zero-padded 4x5 image.
            let padded = [
                [0, 0, 0, 0, 0],
                [0, 0, 51, 102, 0],
                [0, 153, 204, 255, 0],
                [0, 0, 0, 0, 0],
            ];
            let ok = (0..3).any(|dy| {
                (0..3).any(|dx| {
                    (0..2).all(|y| (0..3).all(|x| padded[y + dy][x + dx] == got[y * 3 + x]))
                })
            });
            assert!(ok, "{got:?}");
            seen.insert(got);
        }
        assert_eq!(seen.len(), 9, "all 3x3 offsets occur");
    }

    #[test]
    fn order_and_channel_errors_are_clear() {
        let e = Pipeline::new(
            vec![
                Transform::ToTensor,
                Transform::RandomHorizontalFlip { p: 0.5 },
            ],
            [1, 2, 2],
        )
        .unwrap_err();
        assert!(e.to_string().contains("before ToTensor"));
        let e = Pipeline::normalize([3, 2, 2], vec![0.5], vec![0.5]).unwrap_err();
        assert!(e.to_string().contains("1 means and 1 stds for 3-channel"));
    }

    #[test]
    fn non_finite_or_out_of_range_parameters_are_refused() {
        let e = Pipeline::normalize([1, 2, 2], vec![f32::NAN], vec![1.0]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Normalize mean [NaN]: each must be a finite number"
        );
        let e = Pipeline::normalize([1, 2, 2], vec![0.0], vec![f32::INFINITY]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Normalize std [inf]: each must be a positive finite number"
        );
        let flip = |p| {
            Pipeline::new(
                vec![Transform::RandomHorizontalFlip { p }, Transform::ToTensor],
                [1, 2, 2],
            )
        };
        assert!(flip(f64::NAN).is_err());
        assert!(flip(1.5).is_err());
        let e = Pipeline::new(
            vec![
                Transform::RandomCrop {
                    size: (2, 2),
                    padding: usize::MAX,
                },
                Transform::ToTensor,
            ],
            [1, 2, 2],
        )
        .unwrap_err();
        assert!(e.to_string().contains("is larger than 65536"), "{e}");
        let e = Pipeline::new(
            vec![
                Transform::RandomCrop {
                    size: (60_000, 60_000),
                    padding: 65_536,
                },
                Transform::ToTensor,
            ],
            [1, 2, 2],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("RandomCrop(60000x60000) gives images of 60000x60000 pixels"),
            "{e}"
        );
    }
}
