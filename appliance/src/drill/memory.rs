//! A memory leak: the daemon maps, and touches, more and more anonymous
//! memory. It never takes the daemon past [`CEILING`] of its memory limit
//! (its cgroup's, else the machine's), so the drill shows the approach to
//! the limit, not the OOM killer. The chunks are mappings of their own,
//! not heap allocations, so ending the drill gives the memory back to the
//! kernel at once (freed heap memory may stay with the process).

use memmap2::MmapMut;

use super::{DrillError, Stress};
use crate::health::MemoryUse;

/// Allocated a chunk at a time, bytes.
const CHUNK: usize = 1 << 20;
/// The share of the limit the leak stops at.
pub const CEILING: f64 = 0.97;

/// The memory drill's stress: level = bytes leaked.
#[derive(Debug, Default)]
pub struct Leak {
    chunks: Vec<MmapMut>,
}

impl Leak {
    /// Bytes held now.
    pub fn held(&self) -> u64 {
        (self.chunks.len() * CHUNK) as u64
    }
}

/// How many more bytes the leak may take with `now` in use.
fn headroom(now: Option<MemoryUse>) -> u64 {
    now.map_or(0, |m| ((m.limit_bytes as f64 * CEILING) as u64).saturating_sub(m.used_bytes))
}

impl Stress for Leak {
    fn apply(&mut self, level: f64) -> Result<f64, DrillError> {
        let want = (level.max(0.0) as u64).div_ceil(CHUNK as u64) as usize;
        if want < self.chunks.len() {
            self.chunks.truncate(want);
        }
        let room = headroom(MemoryUse::now()) / CHUNK as u64;
        let grow = (want - self.chunks.len()).min(room as usize);
        for _ in 0..grow {
            let mut chunk =
                MmapMut::map_anon(CHUNK).map_err(|e| DrillError::Refused(format!("cannot map memory: {e}")))?;
            // Written: untouched pages would cost nothing.
            chunk.fill(0xa5);
            self.chunks.push(chunk);
        }
        Ok(self.held() as f64)
    }

    fn undo(&mut self) {
        self.chunks = Vec::new();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_grows_to_its_level_within_the_headroom_and_is_given_back() {
        let mut leak = Leak::default();
        assert_eq!(leak.apply(3.5 * CHUNK as f64).unwrap(), 4.0 * CHUNK as f64, "whole chunks");
        assert_eq!(leak.apply(CHUNK as f64).unwrap(), CHUNK as f64);
        leak.undo();
        assert_eq!(leak.held(), 0);
        let m = |used: u64, limit: u64| Some(MemoryUse { used_bytes: used, limit_bytes: limit, scope: "cgroup" });
        assert_eq!(headroom(m(90, 100)), 7, "up to 97 % of the limit");
        assert_eq!(headroom(m(99, 100)), 0);
        assert_eq!(headroom(None), 0, "nothing known: nothing taken");
    }
}
