//! Predictions the swarm acts on before trouble shows. `drift`: where a
//! neighbour's media clock is heading against this node's, from the
//! clock discipline's Kalman filter (`lockstep_ptp::servo`), and when the
//! difference will reach half a frame.

pub mod drift;
