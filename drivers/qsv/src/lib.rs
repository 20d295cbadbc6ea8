//! Intel Quick Sync Video discovery through oneVPL, loaded at run time.
//!
//! `probe` opens the oneVPL dispatcher (`libvpl.so.2`) with the dynamic
//! loader, asks it for a hardware implementation and opens (then closes)
//! a session on it. Without the dispatcher, a runtime (libmfx-gen) or an
//! Intel GPU the answer is an error in words, which the daemon logs as
//! "QSV unavailable: …" before it uses the software encoder.

pub mod session;
pub mod sys;

pub use session::QsvFactory;

/// The dispatcher library.
pub const VPL_LIBRARY: &str = "libvpl.so.2";

/// What oneVPL reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QsvInfo {
    /// Render nodes present (`/dev/dri/renderD*`).
    pub render_nodes: Vec<String>,
}

/// The render nodes of the machine's GPUs.
pub fn render_nodes() -> Vec<String> {
    let mut nodes: Vec<String> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path().display().to_string()).filter(|p| p.contains("renderD")).collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// Looks for a Quick Sync hardware implementation that encodes H.264.
/// `Err` says why there is none.
pub fn probe() -> Result<QsvInfo, String> {
    let nodes = render_nodes();
    session::Dispatcher::load()?.check().map_err(|why| {
        format!("{why}; render nodes: {}", if nodes.is_empty() { "none".to_string() } else { nodes.join(", ") })
    })?;
    Ok(QsvInfo { render_nodes: nodes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_onevpl_the_reason_names_the_library() {
        match probe() {
            Ok(info) => assert!(!info.render_nodes.is_empty(), "{info:?}"),
            Err(why) => {
                assert!(why.contains("libvpl.so.2") || why.contains("Quick Sync") || why.contains("oneVPL"), "{why}")
            }
        }
    }
}
