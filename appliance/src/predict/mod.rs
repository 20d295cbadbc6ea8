//! Predictions the swarm acts on before trouble shows. `drift`: where a
//! neighbour's media clock is heading against this node's, from the
//! clock discipline's Kalman filter (`lockstep_ptp::servo`), and when the
//! difference will reach half a frame. `consensus`: where this node's
//! media clock is heading against the swarm's (the median of its
//! neighbours'), from the same filter.

pub mod bench;
pub mod consensus;
pub mod drift;
pub mod failure;
pub mod live;

/// Reproducible noise for the filters' tests, roughly uniform in ±a.
#[cfg(test)]
pub(crate) struct Noise(pub u64);

#[cfg(test)]
impl Noise {
    /// The next value (xorshift).
    pub fn next(&mut self, a: f64) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * a
    }
}
