//! NVENC API types and constants generated from `nvEncodeAPI.h` by the
//! build script (see build.rs). Function-like macros are not translated;
//! the struct versions they build are in [`crate::session`].

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, missing_debug_implementations)]
#![allow(unnecessary_transmutes)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

include!(concat!(env!("OUT_DIR"), "/nvenc_sys.rs"));
