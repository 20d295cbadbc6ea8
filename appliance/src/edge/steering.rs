//! HLS Content Steering (draft-pantos-hls-rfc8216bis, 4.4.6.6 and 7):
//! players get a multivariant playlist listing every variant once per
//! pathway (a CDN edge), and ask the steering server every `TTL` seconds
//! which pathway to prefer. The server's answer puts pathways in the
//! order of their health: an edge the agent finds failing — or, once the
//! prediction runs, predicts to fail — goes last, and players move to the
//! next before their buffer runs dry.
//!
//! Pure functions; the origin serves them (`/steered/<channel>/master.m3u8`
//! and `/steering/<channel>`) from the pathways of `[steering]` and the
//! edge health agent's states.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::PathwayConfig;
use crate::health::chain::State;

/// The steering manifest a player reloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Always 1.
    #[serde(rename = "VERSION")]
    pub version: u32,
    /// Seconds until the player asks again.
    #[serde(rename = "TTL")]
    pub ttl: u32,
    /// Pathway ids, preferred first.
    #[serde(rename = "PATHWAY-PRIORITY")]
    pub pathway_priority: Vec<String>,
}

/// The pathways, healthiest first; among equals in the configured order.
/// `state` gives a pathway's state (`None`: not judged yet, taken as ok).
pub fn priority(pathways: &[PathwayConfig], state: impl Fn(&str) -> Option<State>) -> Vec<String> {
    let mut ranked: Vec<(State, usize, &str)> =
        pathways.iter().enumerate().map(|(i, p)| (state(&p.id).unwrap_or(State::Ok), i, p.id.as_str())).collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, _, id)| id.to_owned()).collect()
}

/// The steering manifest for `priority`.
pub fn manifest(priority: Vec<String>, ttl: u32) -> Manifest {
    Manifest { version: 1, ttl, pathway_priority: priority }
}

/// The steered multivariant playlist: `master` (a multivariant playlist
/// whose URIs are relative to `base`, e.g. `combined/main/`) with every
/// rendition group and variant once per pathway, their URIs absolute
/// under the pathway's URL, and the steering tag naming `server_uri` and
/// the pathway to start on (`first`).
pub fn steered_playlist(master: &str, base: &str, pathways: &[PathwayConfig], server_uri: &str, first: &str) -> String {
    let lines: Vec<&str> = master.lines().collect();
    let body_starts = lines.iter().position(|l| l.starts_with("#EXT-X-MEDIA:") || l.starts_with("#EXT-X-STREAM-INF:"));
    let (head, body) = lines.split_at(body_starts.unwrap_or(lines.len()));
    let mut s = String::with_capacity(master.len() * (pathways.len() + 1));
    for l in head {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(s, "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{server_uri}\",PATHWAY-ID=\"{first}\"");
    for p in pathways {
        let absolute = |uri: &str| {
            if uri.contains("://") { uri.to_owned() } else { format!("{}/{base}{uri}", p.url) }
        };
        let group = |g: &str| format!("{g}@{}", p.id);
        let mut next_is_uri = false;
        for l in body {
            if next_is_uri && !l.starts_with('#') && !l.is_empty() {
                let _ = writeln!(s, "{}", absolute(l));
                next_is_uri = false;
            } else if let Some(attrs) = l.strip_prefix("#EXT-X-MEDIA:") {
                let attrs = with_attr(attrs, "GROUP-ID", &group);
                let _ = writeln!(s, "#EXT-X-MEDIA:{}", with_attr(&attrs, "URI", &absolute));
            } else if let Some(attrs) = l.strip_prefix("#EXT-X-STREAM-INF:") {
                let attrs = with_attr(attrs, "AUDIO", &group);
                let _ = writeln!(s, "#EXT-X-STREAM-INF:{attrs},PATHWAY-ID=\"{}\"", p.id);
                next_is_uri = true;
            } else if !l.is_empty() {
                let _ = writeln!(s, "{l}");
            }
        }
    }
    s
}

/// `attrs` (an attribute list) with the quoted value of `name` mapped by
/// `f`; unchanged without it.
fn with_attr(attrs: &str, name: &str, f: &dyn Fn(&str) -> String) -> String {
    let key = format!("{name}=\"");
    let at = attrs.match_indices(&key).map(|(i, _)| i).find(|&i| i == 0 || attrs.as_bytes()[i - 1] == b',');
    let Some(at) = at else { return attrs.to_owned() };
    let start = at + key.len();
    let Some(len) = attrs[start..].find('"') else { return attrs.to_owned() };
    format!("{}{}{}", &attrs[..start], f(&attrs[start..start + len]), &attrs[start + len..])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pathways() -> Vec<PathwayConfig> {
        ["1", "2"]
            .iter()
            .map(|k| PathwayConfig { id: format!("edge-{k}"), url: format!("http://127.0.0.1:818{k}") })
            .collect()
    }

    #[test]
    fn a_failing_edge_goes_last_and_equals_keep_their_order() {
        let p = pathways();
        assert_eq!(priority(&p, |_| None), ["edge-1", "edge-2"]);
        assert_eq!(priority(&p, |id| (id == "edge-1").then_some(State::Warn)), ["edge-2", "edge-1"]);
        assert_eq!(
            priority(&p, |id| Some(if id == "edge-1" { State::Bad } else { State::Down })),
            ["edge-1", "edge-2"]
        );
        let m = serde_json::to_value(manifest(priority(&p, |_| Some(State::Ok)), 2)).unwrap();
        assert_eq!(m, serde_json::json!({ "VERSION": 1, "TTL": 2, "PATHWAY-PRIORITY": ["edge-1", "edge-2"] }));
    }

    #[test]
    fn the_steered_playlist_lists_every_variant_and_group_once_per_pathway() {
        let master = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n\
            #EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",NAME=\"main\",DEFAULT=YES,URI=\"audio/playlist.m3u8\"\n\
            #EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS=\"avc1.4d401f,opus\",AUDIO=\"audio\"\n360p/playlist.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=300000,CODECS=\"avc1.4d401f,opus\",AUDIO=\"audio\"\n180p/playlist.m3u8\n";
        let s = steered_playlist(master, "combined/main/", &pathways(), "/steering/main", "edge-1");
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[..3], ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]);
        assert_eq!(lines[3], "#EXT-X-CONTENT-STEERING:SERVER-URI=\"/steering/main\",PATHWAY-ID=\"edge-1\"");
        assert_eq!(
            lines[4],
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio@edge-1\",NAME=\"main\",DEFAULT=YES,\
             URI=\"http://127.0.0.1:8181/combined/main/audio/playlist.m3u8\""
        );
        assert_eq!(
            lines[5],
            "#EXT-X-STREAM-INF:BANDWIDTH=900000,CODECS=\"avc1.4d401f,opus\",AUDIO=\"audio@edge-1\",PATHWAY-ID=\"edge-1\""
        );
        assert_eq!(lines[6], "http://127.0.0.1:8181/combined/main/360p/playlist.m3u8");
        assert_eq!(
            lines[9],
            "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio@edge-2\",NAME=\"main\",DEFAULT=YES,URI=\"http://127.0.0.1:8182/combined/main/audio/playlist.m3u8\""
        );
        assert_eq!(lines[13], "http://127.0.0.1:8182/combined/main/180p/playlist.m3u8");
        assert_eq!(lines.len(), 14);
        assert_eq!(s.matches("PATHWAY-ID=\"edge-2\"").count(), 2);
    }
}
