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
        let (content, confidence) = classify(temporal, motion, noise, self.cuts.len());
        SegmentAnalysis {
            frames: self.frames,
            frames_skipped: self.skipped,
            spatial,
            temporal,
            motion,
            motion_variance: mean(self.motion_var),
            mean_luma: mean(self.luma),
            low_light: self.low_light as f32 / n as f32,
            noise,
            scene_cuts: self.cuts.clone(),
            complexity: complexity(spatial, temporal, self.cuts.len() as f32 / n as f32),
            content,
            confidence,
            audio: audio::summarise(&self.audio),
        }
    }
}

/// Complexity score: intra cost grows with spatial detail, inter cost with
/// the motion-compensated residual, and every cut costs an intra picture;
/// squashed to 0–1 (docs/analysis.md).
pub fn complexity(spatial: f32, temporal: f32, cuts_per_frame: f32) -> f32 {
    let x = 0.35 * (spatial / 30.0) + 0.65 * (temporal / 6.0) + 2.0 * cuts_per_frame;
    1.0 - (-x).exp()
}

fn classify(temporal: f32, motion: f32, noise: f32, cuts: usize) -> (ContentType, f32) {
    let margin = |v: f32, t: f32| ((v - t).abs() / t).min(1.0);
    if cuts >= 2 {
        return (ContentType::Mixed, 0.5 + 0.1 * (cuts.min(5) as f32));
    }
    if motion > 4.0 || temporal > 8.0 {
        return (ContentType::HighMotion, 0.5 + 0.5 * margin(motion.max(temporal / 2.0), 4.0));
    }
    if temporal < 1.5 && motion < 1.0 {
        return (ContentType::Static, 0.5 + 0.5 * margin(temporal, 1.5));
    }
    if noise < 1.0 {
        return (ContentType::Synthetic, 0.5 + 0.5 * margin(noise, 1.0));
    }
    (ContentType::Mixed, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complexity_is_monotonic_and_bounded() {
        let a = complexity(5.0, 0.5, 0.0);
        let b = complexity(20.0, 0.5, 0.0);
        let c = complexity(20.0, 10.0, 0.0);
        assert!(a < b && b < c && c < 1.0 && a > 0.0);
        assert!(complexity(0.0, 0.0, 0.0).abs() < 1e-6);
    }

    #[test]
    fn labels_follow_motion() {
        let mut acc = SegmentAccumulator::default();
        for n in 0..50 {
            acc.add(n, &VideoFeatures { mc_sad: 12.0, mv_mean: 9.0, spatial: 20.0, noise: 3.0, ..Default::default() });
        }
        let s = acc.finish();
        assert_eq!(s.content, ContentType::HighMotion);
        let mut acc = SegmentAccumulator::default();
        for n in 0..50 {
            acc.add(n, &VideoFeatures { mc_sad: 0.3, mv_mean: 0.1, spatial: 10.0, noise: 2.0, ..Default::default() });
        }
        assert_eq!(acc.finish().content, ContentType::Static);
    }
}
