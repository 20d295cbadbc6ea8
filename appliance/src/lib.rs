//! Lockstep appliance: the daemon's modules.
//!
//! The binary (`main.rs`) is a thin command-line front end over these.

pub mod admin;
pub mod analysis;
pub mod bench;
pub mod capture;
pub mod channels;
pub mod clock;
pub mod command;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod devices;
pub mod drill;
pub mod edge;
pub mod encode;
pub mod errors;
pub mod files;
pub mod handover;
pub mod health;
pub mod history;
pub mod metrics;
pub mod origin;
pub mod package;
pub mod persist;
pub mod pipeline;
pub mod predict;
pub mod provision;
pub mod rt;
pub mod swarm;
pub mod sync;
pub mod systemd;
pub mod timeline;
