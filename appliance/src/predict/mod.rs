//! Predictions the swarm acts on before trouble shows. `drift`: where a
//! neighbour's media clock is heading against this node's, from the
//! clock discipline's Kalman filter (`lockstep_ptp::servo`), and when the
//! difference will reach half a frame. `consensus`: where this node's
//! media clock is heading against the swarm's (the median of its
//! neighbours'), from the same filter.

pub mod consensus;
pub mod drift;
