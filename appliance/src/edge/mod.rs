//! CDN edges in front of the origins and the players' steering between
//! them (docs/architecture.md, "Edges and steering").
//!
//! - [`nginx`]: a real CDN edge — Debian's nginx as a caching reverse
//!   proxy in front of the appliances' origins — configured and started by
//!   the project (the demo's `--edge`, the tests);
//! - [`steering`]: HLS Content Steering: the steered multivariant
//!   playlist (every variant once per pathway) and the steering manifest,
//!   whose pathway priority puts an edge the health agent finds failing
//!   (`crate::health::edge`) last.

pub mod nginx;
pub mod steering;
