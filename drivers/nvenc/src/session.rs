//! NVENC H.264 encoding sessions, on NVIDIA's driver loaded at run time.
//!
//! A [`Driver`] holds the two driver libraries, the function table
//! `NvEncodeAPICreateInstance` fills in, and one CUDA context on the GPU.
//! An encoding session takes pictures from system memory: each one is
//! copied once into an NVENC input buffer (planar I420, the layout the
//! pipeline already has, so the copy is the upload and nothing is
//! converted) and comes back as Annex B bytes.
//!
//! The timeline contract (every segment starts with an IDR and is coded
//! on its own) is kept without paying for a new session per segment:
//! [`NvencFactory`] keeps the sessions of finished segments (a
//! [`SessionPool`]) and opens the next segment of the same shape by
//! reconfiguring one with
//! `resetEncoder` and `forceIDR`, which also applies a changed bitrate.
//! No B-frames and no look-ahead, so every picture in gives exactly one
//! coded picture out, as [`VideoEncoder`] requires.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::ptr;
use std::sync::Arc;

use lockstep_encoder_api::sessions::{self, SessionPool, Shape};
use lockstep_encoder_api::{
    CodedPicture, EncodeError, PictureKind, PictureRef, VideoEncoder, VideoEncoderFactory, VideoSettings,
};

use crate::{CUDA_LIBRARY, ENCODE_LIBRARY, split_version, sys};

/// Backend name used in config and metrics.
pub const NAME: &str = "nvenc";

/// `NVENCAPI_VERSION` of the header this crate is built from.
pub const API_VERSION: u32 = sys::NVENCAPI_MAJOR_VERSION | (sys::NVENCAPI_MINOR_VERSION << 24);

/// `NVENCAPI_STRUCT_VERSION(ver)` of nvEncodeAPI.h.
pub const fn struct_version(ver: u32) -> u32 {
    API_VERSION | (ver << 16) | (0x7 << 28)
}

const FUNCTION_LIST_VER: u32 = struct_version(2);
const OPEN_SESSION_VER: u32 = struct_version(1);
const CONFIG_VER: u32 = struct_version(7) | (1 << 31);
const RC_PARAMS_VER: u32 = struct_version(1);
const PRESET_CONFIG_VER: u32 = struct_version(4) | (1 << 31);
const INITIALIZE_PARAMS_VER: u32 = struct_version(5) | (1 << 31);
const RECONFIGURE_PARAMS_VER: u32 = struct_version(1) | (1 << 31);
const CREATE_INPUT_BUFFER_VER: u32 = struct_version(1);
const CREATE_BITSTREAM_BUFFER_VER: u32 = struct_version(1);
const LOCK_INPUT_BUFFER_VER: u32 = struct_version(1);
const LOCK_BITSTREAM_VER: u32 = struct_version(1);
const PIC_PARAMS_VER: u32 = struct_version(4) | (1 << 31);

const fn guid(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> sys::GUID {
    sys::GUID { Data1: data1, Data2: data2, Data3: data3, Data4: data4 }
}

/// `NV_ENC_CODEC_H264_GUID`.
const CODEC_H264: sys::GUID = guid(0x6bc8_2762, 0x4e63, 0x4ca4, [0xaa, 0x85, 0x1e, 0x50, 0xf3, 0x21, 0xf6, 0xbf]);
/// `NV_ENC_H264_PROFILE_HIGH_GUID`.
const PROFILE_HIGH: sys::GUID = guid(0xe7cb_c309, 0x4f7a, 0x4b89, [0xaf, 0x2a, 0xd5, 0x37, 0xc9, 0x2b, 0xe3, 0x10]);
/// `NV_ENC_PRESET_P4_GUID`: the middle of the P1 (fastest) to P7 range.
const PRESET_P4: sys::GUID = guid(0x90a7_b826, 0xdf06, 0x4862, [0xb9, 0xd2, 0xcd, 0x6d, 0x73, 0xa0, 0x86, 0x81]);

/// Largest picture side NVENC's H.264 encoder takes.
pub const MAX_SIDE: u32 = 4096;

/// The name of an NVENC status, for error messages.
pub fn status_name(status: sys::NVENCSTATUS) -> String {
    let name = match status {
        sys::NV_ENC_SUCCESS => "NV_ENC_SUCCESS",
        sys::NV_ENC_ERR_NO_ENCODE_DEVICE => "NV_ENC_ERR_NO_ENCODE_DEVICE",
        sys::NV_ENC_ERR_UNSUPPORTED_DEVICE => "NV_ENC_ERR_UNSUPPORTED_DEVICE",
        sys::NV_ENC_ERR_INVALID_ENCODERDEVICE => "NV_ENC_ERR_INVALID_ENCODERDEVICE",
        sys::NV_ENC_ERR_INVALID_DEVICE => "NV_ENC_ERR_INVALID_DEVICE",
        sys::NV_ENC_ERR_DEVICE_NOT_EXIST => "NV_ENC_ERR_DEVICE_NOT_EXIST",
        sys::NV_ENC_ERR_INVALID_PTR => "NV_ENC_ERR_INVALID_PTR",
        sys::NV_ENC_ERR_INVALID_PARAM => "NV_ENC_ERR_INVALID_PARAM",
        sys::NV_ENC_ERR_INVALID_CALL => "NV_ENC_ERR_INVALID_CALL",
        sys::NV_ENC_ERR_OUT_OF_MEMORY => "NV_ENC_ERR_OUT_OF_MEMORY",
        sys::NV_ENC_ERR_ENCODER_NOT_INITIALIZED => "NV_ENC_ERR_ENCODER_NOT_INITIALIZED",
        sys::NV_ENC_ERR_UNSUPPORTED_PARAM => "NV_ENC_ERR_UNSUPPORTED_PARAM",
        sys::NV_ENC_ERR_LOCK_BUSY => "NV_ENC_ERR_LOCK_BUSY",
        sys::NV_ENC_ERR_NOT_ENOUGH_BUFFER => "NV_ENC_ERR_NOT_ENOUGH_BUFFER",
        sys::NV_ENC_ERR_INVALID_VERSION => "NV_ENC_ERR_INVALID_VERSION",
        sys::NV_ENC_ERR_NEED_MORE_INPUT => "NV_ENC_ERR_NEED_MORE_INPUT",
        sys::NV_ENC_ERR_ENCODER_BUSY => "NV_ENC_ERR_ENCODER_BUSY",
        sys::NV_ENC_ERR_GENERIC => "NV_ENC_ERR_GENERIC",
        sys::NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY => "NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY",
        sys::NV_ENC_ERR_UNIMPLEMENTED => "NV_ENC_ERR_UNIMPLEMENTED",
        _ => return format!("NVENC status {status}"),
    };
    name.to_owned()
}

/// Why opening a session failed, in words. Consumer GPUs limit how many
/// sessions run at once; the driver answers the one over the limit with
/// one of these two statuses.
pub fn open_failure(status: sys::NVENCSTATUS) -> String {
    let hint = match status {
        sys::NV_ENC_ERR_OUT_OF_MEMORY | sys::NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY => {
            " (the GPU's limit on concurrent encoding sessions is probably reached)"
        }
        _ => "",
    };
    format!("opening an NVENC session: {}{hint}", status_name(status))
}

/// Fills in the parts of `config` Lockstep decides, on top of the preset's
/// values: High profile, an IDR every `gop_frames`, no B-frames, constant
/// bitrate with a one-second VBV, no look-ahead, parameter sets on every
/// IDR.
pub fn apply(settings: &VideoSettings, config: &mut sys::NV_ENC_CONFIG) {
    config.version = CONFIG_VER;
    config.profileGUID = PROFILE_HIGH;
    config.gopLength = settings.gop_frames.max(1);
    config.frameIntervalP = 1;
    let rc = &mut config.rcParams;
    rc.version = RC_PARAMS_VER;
    rc.rateControlMode = sys::NV_ENC_PARAMS_RC_CBR;
    rc.averageBitRate = settings.bitrate_bps;
    rc.maxBitRate = settings.bitrate_bps;
    rc.vbvBufferSize = settings.bitrate_bps;
    rc.vbvInitialDelay = settings.bitrate_bps;
    rc.set_enableLookahead(0);
    rc.set_zeroReorderDelay(1);
    rc.multiPass = sys::NV_ENC_MULTI_PASS_DISABLED;
    // SAFETY: the union's H.264 member is the one an H.264 session reads;
    // every member is plain integers, so any bytes are a valid value.
    let h264 = unsafe { &mut config.encodeCodecConfig.h264Config };
    h264.idrPeriod = config.gopLength;
    h264.set_repeatSPSPPS(1);
    h264.set_disableSPSPPS(0);
    h264.chromaFormatIDC = 1;
}

/// The initialisation parameters for `settings`, pointing at `config`.
pub fn initialize(settings: &VideoSettings, config: *mut sys::NV_ENC_CONFIG) -> sys::NV_ENC_INITIALIZE_PARAMS {
    sys::NV_ENC_INITIALIZE_PARAMS {
        version: INITIALIZE_PARAMS_VER,
        encodeGUID: CODEC_H264,
        presetGUID: PRESET_P4,
        encodeWidth: settings.width,
        encodeHeight: settings.height,
        darWidth: settings.width,
        darHeight: settings.height,
        frameRateNum: settings.fps_num,
        frameRateDen: settings.fps_den.max(1),
        enableEncodeAsync: 0,
        enablePTD: 1,
        encodeConfig: config,
        maxEncodeWidth: settings.width,
        maxEncodeHeight: settings.height,
        tuningInfo: sys::NV_ENC_TUNING_INFO_LOW_LATENCY,
        ..Default::default()
    }
}

/// Checks what NVENC's H.264 encoder cannot take before a session is opened.
pub fn check_settings(settings: &VideoSettings) -> Result<(), EncodeError> {
    sessions::check_settings(NAME, settings, MAX_SIDE, 1)
}

/// Bytes an NVENC I420 (`IYUV`) buffer of `height` rows at luma `pitch`
/// holds: the luma plane, then Cb and Cr at half the pitch and height.
pub fn iyuv_len(pitch: usize, height: u32) -> usize {
    let h = height as usize;
    pitch * h + 2 * (pitch / 2) * h.div_ceil(2)
}

/// Copies `picture` into an NVENC I420 buffer with luma pitch `pitch`:
/// the one copy between a pool buffer and the encoder.
pub fn copy_iyuv(picture: &PictureRef<'_>, dst: &mut [u8], pitch: usize) -> Result<(), EncodeError> {
    let (w, h) = (picture.width as usize, picture.height as usize);
    let (cw, ch, cpitch) = (w / 2, h / 2, pitch / 2);
    if pitch < w || dst.len() < iyuv_len(pitch, picture.height) {
        return Err(EncodeError::Backend(format!(
            "NVENC input buffer too small: pitch {pitch}, {} bytes for {w}x{h}",
            dst.len()
        )));
    }
    let planes = [
        (picture.y, picture.y_stride, w, h, 0, pitch),
        (picture.u, picture.c_stride, cw, ch, pitch * h, cpitch),
        (picture.v, picture.c_stride, cw, ch, pitch * h + cpitch * ch, cpitch),
    ];
    for (src, stride, width, rows, at, dpitch) in planes {
        if src.len() < stride * rows.saturating_sub(1) + width {
            return Err(EncodeError::Backend(format!(
                "picture plane of {} bytes is short for {width}x{rows}",
                src.len()
            )));
        }
        for r in 0..rows {
            dst[at + r * dpitch..at + r * dpitch + width].copy_from_slice(&src[r * stride..r * stride + width]);
        }
    }
    Ok(())
}

type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
type CuDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
type CuCtxCreate = unsafe extern "C" fn(*mut *mut c_void, c_uint, c_int) -> c_int;
type CuCtx = unsafe extern "C" fn(*mut c_void) -> c_int;
type CuCtxPop = unsafe extern "C" fn(*mut *mut c_void) -> c_int;
type CreateInstance = unsafe extern "C" fn(*mut sys::NV_ENCODE_API_FUNCTION_LIST) -> sys::NVENCSTATUS;
type MaxSupportedVersion = unsafe extern "C" fn(*mut u32) -> sys::NVENCSTATUS;

/// Calls a function of the NVENC table; `Err` names the call and status.
macro_rules! nvenc {
    ($api:expr, $f:ident ( $($arg:expr),* $(,)? )) => {
        match $api.$f {
            Some(f) => match f($($arg),*) {
                sys::NV_ENC_SUCCESS => Ok(()),
                status => Err((status, format!("{}: {}", stringify!($f), status_name(status)))),
            },
            None => Err((sys::NV_ENC_ERR_UNIMPLEMENTED, format!("the driver's NVENC table has no {}", stringify!($f)))),
        }
    };
}

/// NVIDIA's driver, loaded: the NVENC function table and a CUDA context.
pub struct Driver {
    api: sys::NV_ENCODE_API_FUNCTION_LIST,
    context: *mut c_void,
    push: CuCtx,
    pop: CuCtxPop,
    destroy: CuCtx,
    gpu_ordinal: c_int,
    // Last, so the libraries are unloaded after everything above is done.
    _cuda: libloading::Library,
    _encode: libloading::Library,
}

// SAFETY: the function table is immutable after loading and the CUDA
// context is only used between `push` and `pop` on the calling thread
// (see `Current`), which CUDA allows from any thread.
unsafe impl Send for Driver {}
// SAFETY: as above; nothing in `Driver` is mutated after `load`.
unsafe impl Sync for Driver {}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nvenc::Driver(GPU {})", self.gpu_ordinal)
    }
}

/// The driver's CUDA context, current on this thread until dropped.
struct Current<'a>(&'a Driver);

impl Drop for Current<'_> {
    fn drop(&mut self) {
        let mut popped = ptr::null_mut();
        // SAFETY: `Driver::enter` pushed the context on this thread.
        unsafe { (self.0.pop)(&raw mut popped) };
    }
}

fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: every `T` asked for is the C signature the vendor's headers
    // give that symbol (cuda.h, nvEncodeAPI.h); the library outlives the
    // copied pointer because `Driver` keeps it.
    unsafe { lib.get::<T>(&bytes).map(|s| *s).map_err(|e| format!("{name}: {e}")) }
}

impl Driver {
    /// Loads the driver and makes a CUDA context on GPU `ordinal`.
    pub fn load(ordinal: c_int) -> Result<Self, String> {
        // SAFETY: loading NVIDIA's driver libraries runs their initialisers,
        // which have no preconditions on the caller.
        let cuda = unsafe { libloading::Library::new(CUDA_LIBRARY) }.map_err(|e| e.to_string())?;
        // SAFETY: as above.
        let encode = unsafe { libloading::Library::new(ENCODE_LIBRARY) }.map_err(|e| e.to_string())?;
        let init: CuInit = symbol(&cuda, "cuInit")?;
        let device_get: CuDeviceGet = symbol(&cuda, "cuDeviceGet")?;
        let create: CuCtxCreate = symbol(&cuda, "cuCtxCreate_v2")?;
        let destroy: CuCtx = symbol(&cuda, "cuCtxDestroy_v2")?;
        let push: CuCtx = symbol(&cuda, "cuCtxPushCurrent_v2")?;
        let pop: CuCtxPop = symbol(&cuda, "cuCtxPopCurrent_v2")?;
        let create_instance: CreateInstance = symbol(&encode, "NvEncodeAPICreateInstance")?;
        let max_version: MaxSupportedVersion = symbol(&encode, "NvEncodeAPIGetMaxSupportedVersion")?;
        let needed = (sys::NVENCAPI_MAJOR_VERSION, sys::NVENCAPI_MINOR_VERSION);
        let mut api = sys::NV_ENCODE_API_FUNCTION_LIST { version: FUNCTION_LIST_VER, ..Default::default() };
        let mut context = ptr::null_mut();
        // SAFETY: the functions have the signatures declared above; every
        // pointer handed over is to a live local.
        unsafe {
            let mut v = 0u32;
            let status = max_version(&raw mut v);
            if status != sys::NV_ENC_SUCCESS {
                return Err(format!("NvEncodeAPIGetMaxSupportedVersion: {}", status_name(status)));
            }
            if split_version(v) < needed {
                let (major, minor) = split_version(v);
                return Err(format!(
                    "the driver supports NVENC API {major}.{minor}; Lockstep needs {}.{} (driver 470 or newer)",
                    needed.0, needed.1
                ));
            }
            let status = create_instance(&raw mut api);
            if status != sys::NV_ENC_SUCCESS {
                return Err(format!("NvEncodeAPICreateInstance: {}", status_name(status)));
            }
            let rc = init(0);
            if rc != 0 {
                return Err(format!("cuInit failed with CUDA error {rc}"));
            }
            let mut device = 0;
            let rc = device_get(&raw mut device, ordinal);
            if rc != 0 {
                return Err(format!("no CUDA device {ordinal} (CUDA error {rc})"));
            }
            let rc = create(&raw mut context, 0, device);
            if rc != 0 {
                return Err(format!("cuCtxCreate on CUDA device {ordinal} failed with CUDA error {rc}"));
            }
            let mut popped = ptr::null_mut();
            pop(&raw mut popped);
        }
        Ok(Self { api, context, push, pop, destroy, gpu_ordinal: ordinal, _cuda: cuda, _encode: encode })
    }

    fn enter(&self) -> Result<Current<'_>, EncodeError> {
        // SAFETY: the context is alive until `Driver` drops.
        let rc = unsafe { (self.push)(self.context) };
        if rc != 0 {
            return Err(EncodeError::Backend(format!("cuCtxPushCurrent failed with CUDA error {rc}")));
        }
        Ok(Current(self))
    }

    /// The driver's own words about the last failure of `encoder`.
    fn last_error(&self, encoder: *mut c_void) -> String {
        let Some(f) = self.api.nvEncGetLastErrorString else { return String::new() };
        // SAFETY: `encoder` is a live session; the driver returns a
        // NUL-terminated string it owns, or null.
        let text: *const c_char = unsafe { f(encoder) };
        if text.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated (above); copied before the next call.
        let s = unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned();
        if s.is_empty() { s } else { format!(" ({s})") }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SAFETY: every session made on the context holds an `Arc` of the
        // driver, so none is left when this runs.
        unsafe { (self.destroy)(self.context) };
    }
}

/// One NVENC session with its input and output buffers.
struct Session {
    driver: Arc<Driver>,
    encoder: *mut c_void,
    input: sys::NV_ENC_INPUT_PTR,
    output: sys::NV_ENC_OUTPUT_PTR,
    shape: Shape,
    // Boxed so the pointer in `init` stays valid when the session moves.
    config: Box<sys::NV_ENC_CONFIG>,
    init: Box<sys::NV_ENC_INITIALIZE_PARAMS>,
}

// SAFETY: an NVENC session may be driven from any thread as long as one
// thread at a time does; `Session` is owned by one encoder or by the idle
// list behind a mutex, never shared.
unsafe impl Send for Session {}

impl Session {
    fn fail(&self, (_, what): (sys::NVENCSTATUS, String)) -> EncodeError {
        EncodeError::Backend(format!("{what}{}", self.driver.last_error(self.encoder)))
    }

    fn open(driver: &Arc<Driver>, settings: &VideoSettings) -> Result<Self, EncodeError> {
        let current = driver.enter()?;
        let mut params = sys::NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS {
            version: OPEN_SESSION_VER,
            deviceType: sys::NV_ENC_DEVICE_TYPE_CUDA,
            device: driver.context,
            apiVersion: API_VERSION,
            ..Default::default()
        };
        let mut encoder = ptr::null_mut();
        // SAFETY: both pointers are to live locals; the context is current.
        unsafe { nvenc!(driver.api, nvEncOpenEncodeSessionEx(&raw mut params, &raw mut encoder)) }
            .map_err(|(status, _)| EncodeError::Unavailable(open_failure(status)))?;
        drop(current);
        // From here on `Drop` closes the session on every error path.
        let mut s = Self {
            driver: Arc::clone(driver),
            encoder,
            input: ptr::null_mut(),
            output: ptr::null_mut(),
            shape: Shape::from(settings),
            config: Box::default(),
            init: Box::default(),
        };
        let _current = driver.enter()?;
        let mut preset = sys::NV_ENC_PRESET_CONFIG {
            version: PRESET_CONFIG_VER,
            presetCfg: sys::NV_ENC_CONFIG { version: CONFIG_VER, ..Default::default() },
            ..Default::default()
        };
        // SAFETY: `encoder` is the live session; `preset` a live local.
        unsafe {
            nvenc!(
                driver.api,
                nvEncGetEncodePresetConfigEx(
                    s.encoder,
                    CODEC_H264,
                    PRESET_P4,
                    sys::NV_ENC_TUNING_INFO_LOW_LATENCY,
                    &raw mut preset
                )
            )
        }
        .map_err(|e| s.fail(e))?;
        *s.config = preset.presetCfg;
        apply(settings, &mut s.config);
        *s.init = initialize(settings, &raw mut *s.config);
        // SAFETY: `init` and the config it points at are boxed in `s`.
        unsafe { nvenc!(driver.api, nvEncInitializeEncoder(s.encoder, &raw mut *s.init)) }.map_err(|e| s.fail(e))?;
        let mut input = sys::NV_ENC_CREATE_INPUT_BUFFER {
            version: CREATE_INPUT_BUFFER_VER,
            width: settings.width,
            height: settings.height,
            memoryHeap: sys::NV_ENC_MEMORY_HEAP_AUTOSELECT,
            bufferFmt: sys::NV_ENC_BUFFER_FORMAT_IYUV,
            ..Default::default()
        };
        // SAFETY: live session and local.
        unsafe { nvenc!(driver.api, nvEncCreateInputBuffer(s.encoder, &raw mut input)) }.map_err(|e| s.fail(e))?;
        s.input = input.inputBuffer;
        let mut output = sys::NV_ENC_CREATE_BITSTREAM_BUFFER {
            version: CREATE_BITSTREAM_BUFFER_VER,
            memoryHeap: sys::NV_ENC_MEMORY_HEAP_AUTOSELECT,
            ..Default::default()
        };
        // SAFETY: live session and local.
        unsafe { nvenc!(driver.api, nvEncCreateBitstreamBuffer(s.encoder, &raw mut output)) }.map_err(|e| s.fail(e))?;
        s.output = output.bitstreamBuffer;
        Ok(s)
    }
}

impl sessions::Session for Session {
    fn fits(&self, settings: &VideoSettings) -> bool {
        self.shape == Shape::from(settings)
    }

    /// A new segment on a kept session: `resetEncoder` and `forceIDR`,
    /// with the (possibly changed) bitrate applied.
    fn restart(&mut self, settings: &VideoSettings) -> Result<(), EncodeError> {
        let driver = Arc::clone(&self.driver);
        let _current = driver.enter()?;
        apply(settings, &mut self.config);
        *self.init = initialize(settings, &raw mut *self.config);
        let mut params = sys::NV_ENC_RECONFIGURE_PARAMS {
            version: RECONFIGURE_PARAMS_VER,
            reInitEncodeParams: *self.init,
            ..Default::default()
        };
        params.set_resetEncoder(1);
        params.set_forceIDR(1);
        // SAFETY: live session; `params` points at the boxed config.
        unsafe { nvenc!(driver.api, nvEncReconfigureEncoder(self.encoder, &raw mut params)) }.map_err(|e| self.fail(e))
    }

    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
        if (picture.width, picture.height) != (self.shape.width, self.shape.height) {
            return Err(EncodeError::Settings(format!(
                "picture is {}x{}, the NVENC session {}x{}",
                picture.width, picture.height, self.shape.width, self.shape.height
            )));
        }
        let driver = Arc::clone(&self.driver);
        let api = &driver.api;
        let _current = driver.enter()?;
        let mut lock = sys::NV_ENC_LOCK_INPUT_BUFFER {
            version: LOCK_INPUT_BUFFER_VER,
            inputBuffer: self.input,
            ..Default::default()
        };
        // SAFETY: live session, its own input buffer, a live local.
        unsafe { nvenc!(api, nvEncLockInputBuffer(self.encoder, &raw mut lock)) }.map_err(|e| self.fail(e))?;
        let pitch = lock.pitch as usize;
        let copied = if lock.bufferDataPtr.is_null() {
            Err(EncodeError::Backend("nvEncLockInputBuffer gave no buffer".into()))
        } else {
            // SAFETY: the locked buffer holds an I420 picture of the
            // session's size at `pitch` (nvEncodeAPI.h) and is ours until
            // it is unlocked below.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(lock.bufferDataPtr.cast::<u8>(), iyuv_len(pitch, picture.height))
            };
            copy_iyuv(picture, dst, pitch)
        };
        // SAFETY: the buffer was locked above.
        unsafe { nvenc!(api, nvEncUnlockInputBuffer(self.encoder, self.input)) }.map_err(|e| self.fail(e))?;
        copied?;
        let mut pic = sys::NV_ENC_PIC_PARAMS {
            version: PIC_PARAMS_VER,
            inputWidth: picture.width,
            inputHeight: picture.height,
            inputPitch: lock.pitch,
            encodePicFlags: if index == 0 {
                sys::NV_ENC_PIC_FLAG_FORCEIDR | sys::NV_ENC_PIC_FLAG_OUTPUT_SPSPPS
            } else {
                0
            },
            frameIdx: u32::try_from(index).unwrap_or(u32::MAX),
            inputTimeStamp: index,
            inputBuffer: self.input,
            outputBitstream: self.output,
            bufferFmt: sys::NV_ENC_BUFFER_FORMAT_IYUV,
            pictureStruct: sys::NV_ENC_PIC_STRUCT_FRAME,
            ..Default::default()
        };
        // SAFETY: live session, its own buffers, a live local.
        let encoded = unsafe { nvenc!(api, nvEncEncodePicture(self.encoder, &raw mut pic)) };
        match encoded {
            Ok(()) => {}
            Err((sys::NV_ENC_ERR_NEED_MORE_INPUT, _)) => {
                return Err(EncodeError::Backend(format!(
                    "NVENC held picture {index} back (it must code each at once)"
                )));
            }
            Err(e) => return Err(self.fail(e)),
        }
        let mut bits = sys::NV_ENC_LOCK_BITSTREAM {
            version: LOCK_BITSTREAM_VER,
            outputBitstream: self.output,
            ..Default::default()
        };
        // SAFETY: live session, its own output buffer, a live local.
        unsafe { nvenc!(api, nvEncLockBitstream(self.encoder, &raw mut bits)) }.map_err(|e| self.fail(e))?;
        let len = bits.bitstreamSizeInBytes as usize;
        if !bits.bitstreamBufferPtr.is_null() {
            // SAFETY: the locked bitstream holds `len` bytes until unlocked.
            out.extend_from_slice(unsafe { std::slice::from_raw_parts(bits.bitstreamBufferPtr.cast::<u8>(), len) });
        }
        // SAFETY: the bitstream was locked above.
        unsafe { nvenc!(api, nvEncUnlockBitstream(self.encoder, self.output)) }.map_err(|e| self.fail(e))?;
        let kind = if bits.pictureType == sys::NV_ENC_PIC_TYPE_IDR { PictureKind::Idr } else { PictureKind::Other };
        Ok(CodedPicture { len, kind })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let api = &self.driver.api;
        let current = self.driver.enter();
        // SAFETY: the buffers and the session are this session's own and
        // nothing uses them after this; a null buffer was never made.
        unsafe {
            if !self.input.is_null() {
                let _ = nvenc!(api, nvEncDestroyInputBuffer(self.encoder, self.input));
            }
            if !self.output.is_null() {
                let _ = nvenc!(api, nvEncDestroyBitstreamBuffer(self.encoder, self.output));
            }
            let _ = nvenc!(api, nvEncDestroyEncoder(self.encoder));
        }
        drop(current);
    }
}

/// Sessions kept idle at most; more are closed when their segment ends.
const MAX_IDLE: usize = 8;

/// Opens NVENC encoders on one GPU; keeps finished sessions for reuse.
pub struct NvencFactory {
    driver: Arc<Driver>,
    pool: SessionPool<Session>,
}

impl std::fmt::Debug for NvencFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NvencFactory({:?}, {} idle)", self.driver, self.pool.idle())
    }
}

impl NvencFactory {
    /// Loads the driver for GPU `ordinal`. `Err` says why NVENC cannot be
    /// used ("libcuda.so.1: cannot open shared object file …").
    pub fn load(ordinal: i32) -> Result<Self, String> {
        Ok(Self { driver: Arc::new(Driver::load(ordinal)?), pool: SessionPool::new(NAME, MAX_IDLE) })
    }
}

impl VideoEncoderFactory for NvencFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        check_settings(settings)?;
        self.pool.open(settings, || Session::open(&self.driver, settings))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings() -> VideoSettings {
        VideoSettings { width: 1280, height: 720, fps_num: 50, fps_den: 1, bitrate_bps: 4_000_000, gop_frames: 100 }
    }

    #[test]
    fn struct_versions_are_the_headers() {
        // NVENCAPI_VERSION 11.1 is 0x0100000b; NVENCAPI_STRUCT_VERSION(1)
        // adds 1 << 16 and 7 << 28.
        assert_eq!(API_VERSION, 0x0100_000b);
        assert_eq!(OPEN_SESSION_VER, 0x7101_000b);
        assert_eq!(CONFIG_VER, 0xf107_000b);
        assert_eq!(PIC_PARAMS_VER, 0xf104_000b);
        assert_eq!(FUNCTION_LIST_VER, 0x7102_000b);
    }

    #[test]
    fn the_config_codes_closed_gops_without_delay_at_the_bitrate() {
        let mut config = sys::NV_ENC_CONFIG::default();
        apply(&settings(), &mut config);
        assert_eq!((config.gopLength, config.frameIntervalP), (100, 1), "IDR every GOP, no B-frames");
        assert_eq!(config.version, CONFIG_VER);
        let rc = &config.rcParams;
        assert_eq!(rc.rateControlMode, sys::NV_ENC_PARAMS_RC_CBR);
        assert_eq!((rc.averageBitRate, rc.maxBitRate, rc.vbvBufferSize), (4_000_000, 4_000_000, 4_000_000));
        assert_eq!((rc.enableLookahead(), rc.zeroReorderDelay()), (0, 1));
        // SAFETY: `apply` wrote the H.264 member.
        let h264 = unsafe { config.encodeCodecConfig.h264Config };
        assert_eq!((h264.idrPeriod, h264.repeatSPSPPS(), h264.disableSPSPPS()), (100, 1, 0));
        let mut zero = settings();
        zero.gop_frames = 0;
        apply(&zero, &mut config);
        assert_eq!(config.gopLength, 1, "a zero GOP means every picture is an IDR, not none");
    }

    #[test]
    fn initialisation_asks_for_h264_at_the_picture_size_and_rate() {
        let mut config = sys::NV_ENC_CONFIG::default();
        let init = initialize(&settings(), &raw mut config);
        assert_eq!((init.encodeWidth, init.encodeHeight, init.frameRateNum, init.frameRateDen), (1280, 720, 50, 1));
        assert_eq!((init.enablePTD, init.enableEncodeAsync), (1, 0));
        assert_eq!(init.encodeGUID.Data1, 0x6bc8_2762);
        assert_eq!(init.tuningInfo, sys::NV_ENC_TUNING_INFO_LOW_LATENCY);
        assert!(ptr::eq(init.encodeConfig, &raw const config));
    }

    #[test]
    fn settings_nvenc_cannot_code_are_refused_in_words() {
        let mut odd = settings();
        odd.width = 1279;
        let e = check_settings(&odd).unwrap_err().to_string();
        assert!(e.contains("1279x720"), "{e}");
        let mut huge = settings();
        huge.height = 8192;
        assert!(check_settings(&huge).is_err());
        assert!(check_settings(&settings()).is_ok());
    }

    #[test]
    fn the_upload_copies_each_plane_at_the_buffers_pitch() {
        // A 4x2 picture with padded strides into a buffer of pitch 8.
        let y = [1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 0];
        let u = [9, 10, 0];
        let v = [11, 12, 0];
        let picture = PictureRef { width: 4, height: 2, y: &y, u: &u, v: &v, y_stride: 6, c_stride: 3 };
        let mut dst = vec![0xee; iyuv_len(8, 2)];
        assert_eq!(dst.len(), 8 * 2 + 2 * 4);
        copy_iyuv(&picture, &mut dst, 8).unwrap();
        assert_eq!(&dst[0..4], &[1, 2, 3, 4]);
        assert_eq!(&dst[8..12], &[5, 6, 7, 8]);
        assert_eq!(&dst[16..18], &[9, 10], "Cb follows the luma plane");
        assert_eq!(&dst[20..22], &[11, 12], "Cr follows Cb at half the pitch");
        assert_eq!(dst[4], 0xee, "padding is left alone");
        let mut small = vec![0; 10];
        assert!(copy_iyuv(&picture, &mut small, 8).is_err());
    }

    #[test]
    fn session_limit_failures_say_so() {
        assert!(
            open_failure(sys::NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY).contains("limit on concurrent encoding sessions")
        );
        assert!(open_failure(sys::NV_ENC_ERR_OUT_OF_MEMORY).contains("NV_ENC_ERR_OUT_OF_MEMORY"));
        assert_eq!(status_name(sys::NV_ENC_ERR_INVALID_PARAM), "NV_ENC_ERR_INVALID_PARAM");
        assert_eq!(status_name(999), "NVENC status 999");
    }

    #[test]
    fn without_the_driver_the_factory_says_which_library_is_missing() {
        match NvencFactory::load(0) {
            // A machine with a GPU: a real session codes an IDR first.
            Ok(factory) => {
                let mut enc = factory.open(&settings()).unwrap();
                let (w, h) = (1280usize, 720usize);
                let (y, c) = (vec![128u8; w * h], vec![128u8; w * h / 4]);
                let picture =
                    PictureRef { width: 1280, height: 720, y: &y, u: &c, v: &c, y_stride: w, c_stride: w / 2 };
                let mut out = Vec::new();
                let coded = enc.encode(&picture, 0, &mut out).unwrap();
                assert_eq!(coded.kind, PictureKind::Idr);
                assert!(out.starts_with(&[0, 0, 0, 1]) && coded.len == out.len());
            }
            Err(why) => assert!(why.contains(CUDA_LIBRARY) || why.contains(ENCODE_LIBRARY), "{why}"),
        }
    }
}
