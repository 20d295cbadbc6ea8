//! `lockstep devices`: what this machine offers the daemon — capture
//! devices, encoder backends, PTP hardware clocks.

use serde_json::{Value, json};

use crate::config::Backend;
use crate::encode::backend;

/// A PTP hardware clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phc {
    /// Device node (`/dev/ptp0`).
    pub path: String,
    /// The driver's clock name.
    pub name: String,
    /// Network interfaces whose NIC owns it.
    pub interfaces: Vec<String>,
}

/// Every `/dev/ptp*` with its name and interfaces, from sysfs.
pub fn phcs() -> Vec<Phc> {
    let mut out: Vec<Phc> = std::fs::read_dir("/sys/class/ptp")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let name =
                        std::fs::read_to_string(e.path().join("clock_name")).unwrap_or_default().trim().to_string();
                    Phc { path: format!("/dev/{id}"), name, interfaces: interfaces_of(&id) }
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn interfaces_of(ptp: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().join("device/ptp").join(ptp).exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The whole report as JSON.
pub fn report() -> Value {
    let capture: Vec<Value> = lockstep_v4l2::discover()
        .into_iter()
        .map(|d| {
            json!({
                "path": d.path,
                "driver": d.driver,
                "card": d.card,
                "bus": d.bus,
                "streaming": d.streaming,
                "buffers": d.buffers.name(),
                "inputs": d.inputs.iter().map(|i| json!({"index": i.index, "name": i.name, "status": i.status})).collect::<Vec<_>>(),
                "formats": d.formats.iter().map(|f| json!({
                    "fourcc": f.fourcc, "description": f.description, "supported": f.supported, "sizes": f.sizes,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let hw = backend::hardware();
    let hardware = |name: &str, kind: Backend, r: Result<String, &String>| match r {
        Ok(detail) => match backend::session(kind) {
            Ok(_) => json!({"name": name, "available": true, "detail": detail, "session": true}),
            Err(why) => json!({"name": name, "available": true, "detail": detail, "session": false,
                "note": format!("no session opens: {why}")}),
        },
        Err(why) => json!({"name": name, "available": false, "detail": why}),
    };
    let encoders = vec![
        json!({"name": "openh264", "available": true, "detail": "software H.264 (built in)", "session": true}),
        json!({"name": "x264", "available": cfg!(feature = "x264"),
            "detail": if cfg!(feature = "x264") { "software H.264 (libx264)" } else { "not built in (--features x264)" },
            "session": cfg!(feature = "x264")}),
        hardware(
            "nvenc",
            Backend::Nvenc,
            hw.nvenc
                .as_ref()
                .map(|i| format!("{} (NVENC API {}.{})", i.gpus.join(", "), i.api_version.0, i.api_version.1)),
        ),
        hardware("qsv", Backend::Qsv, hw.qsv.as_ref().map(|i| i.render_nodes.join(", "))),
    ];
    let clocks: Vec<Value> =
        phcs().into_iter().map(|p| json!({"path": p.path, "name": p.name, "interfaces": p.interfaces})).collect();
    json!({"capture": capture, "encoders": encoders, "phc": clocks})
}

/// The report for a terminal.
pub fn text(report: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(out, "Capture devices:");
    let capture = list(&report["capture"]);
    if capture.is_empty() {
        let _ = writeln!(out, "  none (no /dev/video* capture node; is the card's driver loaded?)");
    }
    for d in capture {
        let _ = writeln!(
            out,
            "  {}  {} ({}, {}; {})",
            s(&d["path"]),
            s(&d["card"]),
            s(&d["driver"]),
            s(&d["bus"]),
            s(&d["buffers"])
        );
        for i in list(&d["inputs"]) {
            let status = list(&i["status"]).iter().map(s).collect::<Vec<_>>();
            let _ = writeln!(
                out,
                "    input {}: {}{}",
                i["index"],
                s(&i["name"]),
                if status.is_empty() { String::new() } else { format!(" [{}]", status.join(", ")) }
            );
        }
        for f in list(&d["formats"]) {
            let sizes = list(&f["sizes"]).iter().map(s).collect::<Vec<_>>();
            let _ = writeln!(
                out,
                "    {} {}{}: {}",
                s(&f["fourcc"]),
                s(&f["description"]),
                if f["supported"] == true { "" } else { " (not used)" },
                if sizes.is_empty() { "-".to_string() } else { sizes.join(" ") }
            );
        }
    }
    let _ = writeln!(out, "Encoders:");
    for e in list(&report["encoders"]) {
        let state = match (e["available"] == true, e["session"] == true) {
            (true, true) => "ready",
            (true, false) => "found",
            _ => "unavailable",
        };
        let note = if state == "found" { format!(" ({})", s(&e["note"])) } else { String::new() };
        let _ = writeln!(out, "  {:<9}{:<12}{}{note}", s(&e["name"]), state, s(&e["detail"]));
    }
    let _ = writeln!(out, "PTP hardware clocks:");
    let clocks = list(&report["phc"]);
    if clocks.is_empty() {
        let _ = writeln!(out, "  none (the media clock can follow the system clock or a PTP peer in software)");
    }
    for c in clocks {
        let ifs = list(&c["interfaces"]).iter().map(s).collect::<Vec<_>>();
        let _ = writeln!(
            out,
            "  {}  {}{}",
            s(&c["path"]),
            s(&c["name"]),
            if ifs.is_empty() { String::new() } else { format!(" on {}", ifs.join(", ")) }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_always_lists_the_software_encoder() {
        let r = report();
        let encoders = r["encoders"].as_array().cloned().unwrap_or_default();
        assert!(encoders.iter().any(|e| e["name"] == "openh264" && e["available"] == true));
        let nvenc = encoders.iter().find(|e| e["name"] == "nvenc").cloned().unwrap_or_default();
        // Either the GPU is named or the reason is.
        assert!(!nvenc["detail"].as_str().unwrap_or("").is_empty(), "{nvenc}");
        let t = text(&r);
        assert!(t.contains("Capture devices:") && t.contains("openh264") && t.contains("PTP hardware clocks:"), "{t}");
    }
}
