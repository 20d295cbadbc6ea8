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
use crate::health::chain::{Judged, State};

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

/// Where a pathway stands for steering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Standing {
    /// Pathway id.
    pub id: String,
    /// The state it is ranked by.
    pub state: State,
    /// Why it is not `ok`.
    pub why: Option<String>,
}

/// The pathways' standings, preferred first. `judged` is the health
/// agent's judgement of a pathway's edge (`None`: not judged yet, taken as
/// ok); `predicted` the probability of its failure while the failure
/// prediction's alarm for it is up. An edge predicted to fail ranks as
/// `warn`: after the healthy ones, before those failing now, so players
/// leave it before it fails.
pub fn standings(
    pathways: &[PathwayConfig],
    judged: impl Fn(&str) -> Option<Judged>,
    predicted: impl Fn(&str) -> Option<f64>,
) -> Vec<Standing> {
    let mut all: Vec<Standing> = pathways
        .iter()
        .map(|p| {
            let judged = judged(&p.id).unwrap_or(Judged { state: State::Ok, reasons: Vec::new() });
            let mut why: Vec<String> = judged.reasons;
            let mut state = judged.state;
            if let Some(probability) = predicted(&p.id) {
                state = state.max(State::Warn);
                why.push(format!(
                    "failure predicted within {} s (probability {probability:.2})",
                    crate::predict::live::HORIZON_S
                ));
            }
            Standing { id: p.id.clone(), state, why: (state > State::Ok).then(|| why.join("; ")) }
        })
        .collect();
    let order = priority(pathways, |id| all.iter().find(|s| s.id == id).map(|s| s.state));
    all.sort_by_key(|s| order.iter().position(|id| *id == s.id));
    all
}

/// What an event says when the pathway priority changes from `before`
/// to `now`: the new order and why each pathway behind the first stands
/// where it does.
pub fn change_message(before: &[Standing], now: &[Standing]) -> Option<String> {
    let ids = |s: &[Standing]| s.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    if ids(before) == ids(now) {
        return None;
    }
    let mut text = format!("players steered to {}", ids(now).join(" > "));
    let reasons: Vec<String> = now.iter().filter_map(|s| s.why.as_ref().map(|w| format!("{}: {w}", s.id))).collect();
    if reasons.is_empty() {
        text.push_str(": every pathway healthy again");
    } else {
        text.push_str(&format!(" ({})", reasons.join("; ")));
    }
    Some(text)
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
    fn an_edge_predicted_to_fail_goes_after_the_healthy_before_the_failing() {
        let mut p = pathways();
        p.push(PathwayConfig { id: "edge-3".into(), url: "http://127.0.0.1:8183".into() });
        let judged = |id: &str| {
            (id == "edge-3")
                .then(|| Judged { state: State::Bad, reasons: vec!["3 of the last 10 probes failed".into()] })
        };
        let calm = standings(&p, judged, |_| None);
        assert_eq!(calm.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["edge-1", "edge-2", "edge-3"]);
        assert_eq!(calm[0].why, None);
        let ahead = standings(&p, judged, |id| (id == "edge-1").then_some(0.83));
        assert_eq!(ahead.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["edge-2", "edge-1", "edge-3"]);
        assert_eq!(ahead[1].state, State::Warn);
        assert_eq!(ahead[1].why.as_deref(), Some("failure predicted within 30 s (probability 0.83)"));
        let said = change_message(&calm, &ahead).unwrap();
        assert_eq!(
            said,
            "players steered to edge-2 > edge-1 > edge-3 (edge-1: failure predicted within 30 s (probability 0.83); \
             edge-3: 3 of the last 10 probes failed)"
        );
        assert_eq!(change_message(&ahead, &ahead), None, "no change, no event");
        let healthy = standings(&pathways(), |_| None, |_| None);
        assert_eq!(
            change_message(&standings(&pathways(), |_| None, |id| (id == "edge-1").then_some(0.9)), &healthy).unwrap(),
            "players steered to edge-1 > edge-2: every pathway healthy again"
        );
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
