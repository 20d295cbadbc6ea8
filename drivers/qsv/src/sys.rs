//! oneVPL types and constants generated from `vpl/mfx.h` by the build
//! script (see build.rs); the functions are resolved at run time in
//! [`crate::session`].

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, missing_debug_implementations)]
#![allow(unnecessary_transmutes)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/vpl_sys.rs"));
