//! CDN edges in front of the origins and the players' steering between
//! them (docs/architecture.md, "Edges and steering").
//!
//! - [`nginx`]: a real CDN edge — Debian's nginx as a caching reverse
//!   proxy in front of the appliances' origins — configured and started by
//!   the project (the demo's `--edge`, the tests);
//! - [`steering`]: HLS Content Steering: the steered multivariant
//!   playlist (every variant once per pathway) and the steering manifest,
//!   whose pathway priority puts an edge the health agent finds failing
//!   (`crate::health::edge`) last, and one whose failure is predicted
//!   (`crate::predict`) after the healthy ones.

pub mod nginx;
pub mod steering;

use crate::config::SteeringConfig;
use crate::health::edge::EdgeAgent;
use crate::predict::live::Predictor;

/// The pathways' standings now, preferred first: the edge agent's
/// judgement of each edge, and the failure prediction's alarm for it
/// (`steering::standings`).
pub fn standings(config: &SteeringConfig, agent: &EdgeAgent, predictor: Option<&Predictor>) -> Vec<steering::Standing> {
    let figures = agent.figures();
    steering::standings(
        &config.pathways,
        |id| figures.iter().find(|f| f.id == id).map(crate::health::chain::edge),
        |id| {
            let risk = predictor?.risk(&crate::predict::failure::Component::edge(id).id)?;
            risk.alarm.then_some(risk.probability)
        },
    )
}
