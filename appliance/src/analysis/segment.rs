//! Per-segment aggregation: complexity score, scene cuts and a content-type
//! label with a confidence, from the per-frame features.

use serde::Serialize;

use crate::analysis::audio::{self, AudioSegment, AudioWindow};
use crate::analysis::video::VideoFeatures;

/// Content-type labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// Fast motion everywhere (sports, action, pans).
    HighMotion,
    /// Clean synthetic pictures (animation, graphics, slides).
    Synthetic,
    /// Little change (talking head, static shot).
    Static,
    /// Anything else, or several kinds in one segment.
    Mixed,
}

impl ContentType {
    /// Every label, in a fixed order.
    pub const ALL: [ContentType; 4] = [Self::HighMotion, Self::Synthetic, Self::Static, Self::Mixed];

    /// The label as written in manifests and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::HighMotion => "high_motion",
            Self::Synthetic => "synthetic",
            Self::Static => "static",
            Self::Mixed => "mixed",
        }
    }
}

/// What analysis says about one segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentAnalysis {
    /// Frames whose picture was analysed.
    pub frames: u32,
    /// Frames of the segment left out because analysis fell behind
    /// (subsampling); 0 normally.
    pub frames_skipped: u32,
    /// Mean spatial complexity (mean |dx| + |dy| on the analysis picture).
    pub spatial: f32,
    /// Mean motion-compensated difference (temporal complexity).
    pub temporal: f32,
    /// Mean difference to the previous frame without motion compensation.
    pub difference: f32,
    /// Mean motion-compensated residual above the dead zone, per pixel.
    pub residual: f32,
    /// Mean share of blocks with residual above the dead zone.
    pub active_blocks: f32,
    /// Mean log-residual per block (see `VideoFeatures::coded`).
    pub coded: f32,
    /// Mean share of pixels with gradient above the edge threshold.
    pub edge_density: f32,
    /// Mean share of pixels with no gradient.
    pub flat: f32,
    /// Mean motion-vector length (full-resolution pixels per frame).
    pub motion: f32,
    /// Mean motion-vector variance.
    pub motion_variance: f32,
    /// Mean luma.
    pub mean_luma: f32,
    /// Share of frames flagged low-light.
    pub low_light: f32,
    /// Mean noise estimate.
    pub noise: f32,
    /// Frame numbers of scene cuts inside the segment.
    pub scene_cuts: Vec<i64>,
    /// Complexity score, 0–1: predicted encoding cost (docs/analysis.md).
    pub complexity: f32,
    /// Content type.
    pub content: ContentType,
    /// Confidence in the label, 0–1.
    pub confidence: f32,
    /// Audio features, when the channel has audio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioSegment>,
}

/// Sums frame features over a segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentAccumulator {
    frames: u32,
    spatial: f64,
    temporal: f64,
    difference: f64,
    residual: f64,
    active: f64,
    coded: f64,
    edges: f64,
    flat: f64,
    motion: f64,
    motion_var: f64,
    luma: f64,
    low_light: u32,
    noise: f64,
    cuts: Vec<i64>,
    skipped: u32,
    audio: Vec<AudioWindow>,
}

impl SegmentAccumulator {
    /// Adds frame `n`'s features.
    pub fn add(&mut self, n: i64, f: &VideoFeatures) {
        self.frames += 1;
        self.spatial += f64::from(f.spatial);
        self.temporal += f64::from(f.mc_sad);
        self.difference += f64::from(f.sad);
        self.residual += f64::from(f.residual);
        self.active += f64::from(f.active_blocks);
        self.coded += f64::from(f.coded);
        self.edges += f64::from(f.edge_density);
        self.flat += f64::from(f.flat);
        self.motion += f64::from(f.mv_mean);
        self.motion_var += f64::from(f.mv_var);
        self.luma += f64::from(f.mean_luma);
        self.low_light += u32::from(f.low_light);
        self.noise += f64::from(f.noise);
        if f.scene_cut {
            self.cuts.push(n);
        }
    }

    /// Counts frames whose picture was not analysed.
    pub fn skip(&mut self, frames: u32) {
        self.skipped += frames;
    }

    /// Adds audio windows that ended in this segment.
    pub fn add_audio(&mut self, windows: &[AudioWindow]) {
        self.audio.extend_from_slice(windows);
    }

    /// The segment's analysis.
    pub fn finish(&self) -> SegmentAnalysis {
        let n = f64::from(self.frames.max(1));
        let mean = |v: f64| (v / n) as f32;
        let (spatial, temporal, motion) = (mean(self.spatial), mean(self.temporal), mean(self.motion));
        let noise = mean(self.noise);
        let (difference, flat) = (mean(self.difference), mean(self.flat));
        let (content, confidence) = classify(difference, temporal, motion, flat, self.cuts.len());
        SegmentAnalysis {
            frames: self.frames,
            frames_skipped: self.skipped,
            spatial,
            temporal,
            difference,
            residual: mean(self.residual),
            active_blocks: mean(self.active),
            coded: mean(self.coded),
            edge_density: mean(self.edges),
            flat,
            motion,
            motion_variance: mean(self.motion_var),
            mean_luma: mean(self.luma),
            low_light: self.low_light as f32 / n as f32,
            noise,
            scene_cuts: self.cuts.clone(),
            complexity: complexity(mean(self.residual), mean(self.edges)),
            content,
            confidence,
            audio: audio::summarise(&self.audio),
        }
    }
}

/// Complexity score, 0–1: `1 − exp(−x / 4)` with `x = residual + 2 ·
/// edge_density`. The residual (motion-compensated difference above the
/// quantiser's dead zone, per pixel) carries the inter-frame cost, the
/// edge density the intra picture each segment starts with. Calibrated
/// against libx264's bits at QP 28 (docs/analysis.md): Spearman 0.92 on
/// the 19 labelled clips of `tests/complexity_and_content.rs`.
pub fn complexity(residual: f32, edge_density: f32) -> f32 {
    let x = residual.max(0.0) + 2.0 * edge_density.max(0.0);
    1.0 - (-x / 4.0).exp()
}

/// Content type from segment means (thresholds and their measured
/// accuracy: docs/analysis.md), first rule that applies:
/// - two or more cuts: mixed;
/// - nothing changes (difference < 0.3): static;
/// - broad, fast motion (difference explained by motion compensation
///   ≥ 2 levels and vectors ≥ 3 px per frame): high motion;
/// - clean pictures (≥ 25 % of pixels without gradient): synthetic;
/// - otherwise (noise, small moving objects on a still shot): static.
///
/// The confidence grows with the distance from the deciding threshold.
fn classify(difference: f32, temporal: f32, motion: f32, flat: f32, cuts: usize) -> (ContentType, f32) {
    let margin = |v: f32, t: f32| 0.5 + 0.5 * ((v - t).abs() / t).min(1.0);
    if cuts >= 2 {
        return (ContentType::Mixed, (0.5 + 0.1 * cuts.min(5) as f32).min(1.0));
    }
    if difference < 0.3 {
        return (ContentType::Static, margin(difference, 0.3));
    }
    let moving = (difference - temporal).max(0.0);
    if moving >= 2.0 && motion >= 3.0 {
        return (ContentType::HighMotion, margin(moving, 2.0).min(margin(motion, 3.0)));
    }
    if flat >= 0.25 {
        return (ContentType::Synthetic, margin(flat, 0.25));
    }
    (ContentType::Static, margin(moving, 2.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complexity_is_monotonic_and_bounded() {
        let a = complexity(0.5, 0.01);
        let b = complexity(0.5, 0.2);
        let c = complexity(10.0, 0.2);
        assert!(a < b && b < c && c < 1.0 && a > 0.0);
        assert!(complexity(0.0, 0.0).abs() < 1e-6);
    }

    #[test]
    fn labels_follow_the_rules() {
        let label = |f: VideoFeatures, cut_frames: &[i64]| {
            let mut acc = SegmentAccumulator::default();
            for n in 0..50 {
                acc.add(n, &VideoFeatures { scene_cut: cut_frames.contains(&n), ..f });
            }
            acc.finish().content
        };
        let pan = VideoFeatures { sad: 12.0, mc_sad: 3.0, mv_mean: 9.0, flat: 0.02, ..Default::default() };
        assert_eq!(label(pan, &[]), ContentType::HighMotion);
        let noisy_still = VideoFeatures { sad: 6.0, mc_sad: 5.5, flat: 0.0, ..Default::default() };
        assert_eq!(label(noisy_still, &[]), ContentType::Static);
        let graphics = VideoFeatures { sad: 2.0, mc_sad: 0.5, flat: 0.8, ..Default::default() };
        assert_eq!(label(graphics, &[]), ContentType::Synthetic);
        assert_eq!(label(VideoFeatures { flat: 0.9, ..Default::default() }, &[]), ContentType::Static);
        assert_eq!(label(pan, &[10, 30]), ContentType::Mixed);
    }
}
