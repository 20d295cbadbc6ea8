//! Quick Sync H.264 encoding sessions through oneVPL, loaded at run time.
//!
//! A [`Dispatcher`] is the oneVPL dispatcher library with its loader,
//! filtered to hardware implementations of API 2.x that encode H.264. An
//! encoding session takes pictures from system memory: each one is
//! written once into a surface the runtime lends
//! (`MFXMemory_GetSurfaceForEncode`), converted on the way from the
//! pipeline's I420 to the NV12 that Intel's encoders read, and comes back
//! as Annex B bytes.
//!
//! Every segment gets a fresh encoder (`MFXVideoENCODE_Init`, so fresh
//! rate control and an IDR first) on a session kept by [`QsvFactory`]
//! (a [`SessionPool`])
//! from an earlier segment, so sessions are not made and torn down every
//! two seconds. No B-frames and an async depth of one: each picture in
//! gives one coded picture out, as [`VideoEncoder`] requires.

use std::ffi::CString;
use std::ptr;
use std::sync::Arc;

use lockstep_encoder_api::sessions::{self, SessionPool, Shape};
use lockstep_encoder_api::{
    CodedPicture, EncodeError, PictureKind, PictureRef, VideoEncoder, VideoEncoderFactory, VideoSettings,
};

use crate::{VPL_LIBRARY, sys};

/// Backend name used in config and metrics.
pub const NAME: &str = "qsv";

/// Largest picture side the H.264 encoders of Intel GPUs take.
pub const MAX_SIDE: u32 = 4096;

/// How long one picture may take to come back, in milliseconds.
const SYNC_TIMEOUT_MS: u32 = 5_000;

/// The name of a oneVPL status, for error messages.
pub fn status_name(status: sys::mfxStatus) -> String {
    let name = match status {
        sys::MFX_ERR_NONE => "MFX_ERR_NONE",
        sys::MFX_ERR_UNKNOWN => "MFX_ERR_UNKNOWN",
        sys::MFX_ERR_NULL_PTR => "MFX_ERR_NULL_PTR",
        sys::MFX_ERR_UNSUPPORTED => "MFX_ERR_UNSUPPORTED",
        sys::MFX_ERR_MEMORY_ALLOC => "MFX_ERR_MEMORY_ALLOC",
        sys::MFX_ERR_NOT_ENOUGH_BUFFER => "MFX_ERR_NOT_ENOUGH_BUFFER",
        sys::MFX_ERR_INVALID_HANDLE => "MFX_ERR_INVALID_HANDLE",
        sys::MFX_ERR_LOCK_MEMORY => "MFX_ERR_LOCK_MEMORY",
        sys::MFX_ERR_NOT_INITIALIZED => "MFX_ERR_NOT_INITIALIZED",
        sys::MFX_ERR_NOT_FOUND => "MFX_ERR_NOT_FOUND",
        sys::MFX_ERR_MORE_DATA => "MFX_ERR_MORE_DATA",
        sys::MFX_ERR_MORE_SURFACE => "MFX_ERR_MORE_SURFACE",
        sys::MFX_ERR_ABORTED => "MFX_ERR_ABORTED",
        sys::MFX_ERR_DEVICE_LOST => "MFX_ERR_DEVICE_LOST",
        sys::MFX_ERR_INCOMPATIBLE_VIDEO_PARAM => "MFX_ERR_INCOMPATIBLE_VIDEO_PARAM",
        sys::MFX_ERR_INVALID_VIDEO_PARAM => "MFX_ERR_INVALID_VIDEO_PARAM",
        sys::MFX_ERR_UNDEFINED_BEHAVIOR => "MFX_ERR_UNDEFINED_BEHAVIOR",
        sys::MFX_ERR_DEVICE_FAILED => "MFX_ERR_DEVICE_FAILED",
        sys::MFX_ERR_MORE_BITSTREAM => "MFX_ERR_MORE_BITSTREAM",
        sys::MFX_ERR_GPU_HANG => "MFX_ERR_GPU_HANG",
        sys::MFX_ERR_NOT_IMPLEMENTED => "MFX_ERR_NOT_IMPLEMENTED",
        sys::MFX_WRN_DEVICE_BUSY => "MFX_WRN_DEVICE_BUSY",
        sys::MFX_WRN_INCOMPATIBLE_VIDEO_PARAM => "MFX_WRN_INCOMPATIBLE_VIDEO_PARAM",
        _ => return format!("oneVPL status {status}"),
    };
    name.to_owned()
}

fn check(status: sys::mfxStatus, what: &str) -> Result<(), EncodeError> {
    // Warnings (positive) leave the call done; errors are negative.
    if status < 0 { Err(EncodeError::Backend(format!("{what}: {}", status_name(status)))) } else { Ok(()) }
}

/// Checks what Intel's H.264 encoder cannot take before a session is opened.
pub fn check_settings(settings: &VideoSettings) -> Result<(), EncodeError> {
    sessions::check_settings(NAME, settings, MAX_SIDE, 1000)
}

/// oneVPL's rate fields are 16-bit kbit/s (and kilobytes) times
/// `BRCParamMultiplier`: the smallest multiplier that fits, and the
/// target and one-second buffer in those units.
pub fn rate_fields(bitrate_bps: u32) -> (u16, u16, u16) {
    let kbps = (bitrate_bps / 1000).max(1);
    let multiplier = kbps.div_ceil(u32::from(u16::MAX)).max(1);
    let target = u16::try_from(kbps / multiplier).unwrap_or(u16::MAX);
    let buffer_kb = u16::try_from((bitrate_bps / 8000).max(1).div_ceil(multiplier)).unwrap_or(u16::MAX);
    (u16::try_from(multiplier).unwrap_or(u16::MAX), target, buffer_kb)
}

fn narrow(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// The encoder parameters for `settings`: H.264 High, closed GOPs of
/// `gop_frames` that start with an IDR, no B-frames, constant bitrate with
/// a one-second buffer, NV12 pictures from system memory.
pub fn video_params(settings: &VideoSettings) -> sys::mfxVideoParam {
    let mut par = sys::mfxVideoParam {
        AsyncDepth: 1,
        IOPattern: narrow(sys::MFX_IOPATTERN_IN_SYSTEM_MEMORY),
        ..Default::default()
    };
    let (multiplier, kbps, buffer_kb) = rate_fields(settings.bitrate_bps);
    // SAFETY: an encoder reads the `mfx` member of the union and its
    // encoder-parameter member; all are plain integers, so writing them
    // into zeroed memory makes valid values.
    unsafe {
        let mfx = &mut par.__bindgen_anon_1.mfx;
        mfx.CodecId = sys::MFX_CODEC_AVC;
        mfx.CodecProfile = narrow(sys::MFX_PROFILE_AVC_HIGH);
        mfx.BRCParamMultiplier = multiplier;
        let enc = &mut mfx.__bindgen_anon_1.__bindgen_anon_1;
        enc.TargetUsage = narrow(sys::MFX_TARGETUSAGE_BALANCED);
        enc.GopPicSize = narrow(settings.gop_frames.max(1));
        enc.GopRefDist = 1;
        enc.GopOptFlag = narrow(sys::MFX_GOP_CLOSED);
        enc.IdrInterval = 0;
        enc.RateControlMethod = narrow(sys::MFX_RATECONTROL_CBR);
        enc.__bindgen_anon_1.InitialDelayInKB = buffer_kb;
        enc.BufferSizeInKB = buffer_kb;
        enc.__bindgen_anon_2.TargetKbps = kbps;
        enc.__bindgen_anon_3.MaxKbps = kbps;
        let info = &mut mfx.FrameInfo;
        info.FourCC = sys::MFX_FOURCC_NV12;
        info.ChromaFormat = narrow(sys::MFX_CHROMAFORMAT_YUV420);
        info.PicStruct = narrow(sys::MFX_PICSTRUCT_PROGRESSIVE);
        info.FrameRateExtN = settings.fps_num;
        info.FrameRateExtD = settings.fps_den.max(1);
        let size = &mut info.__bindgen_anon_1.__bindgen_anon_1;
        size.Width = narrow(settings.width.next_multiple_of(16));
        size.Height = narrow(settings.height.next_multiple_of(16));
        size.CropW = narrow(settings.width);
        size.CropH = narrow(settings.height);
    }
    par
}

/// Writes `picture` (I420) into an NV12 surface: luma rows at `pitch`,
/// then the interleaved Cb/Cr rows at the same pitch. This interleave is
/// the one conversion pass on the way to the encoder.
pub fn copy_nv12(picture: &PictureRef<'_>, y: &mut [u8], uv: &mut [u8], pitch: usize) -> Result<(), EncodeError> {
    let (w, h) = (picture.width as usize, picture.height as usize);
    let (cw, ch) = (w / 2, h / 2);
    if pitch < w || y.len() < pitch * (h - 1) + w || uv.len() < pitch * (ch - 1) + w {
        return Err(EncodeError::Backend(format!("QSV surface too small for {w}x{h} at pitch {pitch}")));
    }
    let short = |plane: &[u8], stride: usize, width: usize, rows: usize| plane.len() < stride * (rows - 1) + width;
    if short(picture.y, picture.y_stride, w, h)
        || short(picture.u, picture.c_stride, cw, ch)
        || short(picture.v, picture.c_stride, cw, ch)
    {
        return Err(EncodeError::Backend(format!("picture planes are short for {w}x{h}")));
    }
    for r in 0..h {
        y[r * pitch..r * pitch + w].copy_from_slice(&picture.y[r * picture.y_stride..r * picture.y_stride + w]);
    }
    for r in 0..ch {
        let row = &mut uv[r * pitch..r * pitch + w];
        let (u, v) = (&picture.u[r * picture.c_stride..], &picture.v[r * picture.c_stride..]);
        for (i, pair) in row.chunks_exact_mut(2).enumerate() {
            pair[0] = u[i];
            pair[1] = v[i];
        }
    }
    Ok(())
}

type Load = unsafe extern "C" fn() -> sys::mfxLoader;
type Unload = unsafe extern "C" fn(sys::mfxLoader);
type CreateConfig = unsafe extern "C" fn(sys::mfxLoader) -> sys::mfxConfig;
type SetFilter = unsafe extern "C" fn(sys::mfxConfig, *const u8, sys::mfxVariant) -> sys::mfxStatus;
type CreateSession = unsafe extern "C" fn(sys::mfxLoader, u32, *mut sys::mfxSession) -> sys::mfxStatus;
type Close = unsafe extern "C" fn(sys::mfxSession) -> sys::mfxStatus;
type WithParams = unsafe extern "C" fn(sys::mfxSession, *mut sys::mfxVideoParam) -> sys::mfxStatus;
type GetSurface = unsafe extern "C" fn(sys::mfxSession, *mut *mut sys::mfxFrameSurface1) -> sys::mfxStatus;
type EncodeFrame = unsafe extern "C" fn(
    sys::mfxSession,
    *mut sys::mfxEncodeCtrl,
    *mut sys::mfxFrameSurface1,
    *mut sys::mfxBitstream,
    *mut sys::mfxSyncPoint,
) -> sys::mfxStatus;
type SyncOperation = unsafe extern "C" fn(sys::mfxSession, sys::mfxSyncPoint, u32) -> sys::mfxStatus;

/// The oneVPL dispatcher, loaded, with a loader filtered to hardware
/// H.264 encoders of API 2.x.
pub struct Dispatcher {
    loader: sys::mfxLoader,
    unload: Unload,
    create_session: CreateSession,
    close: Close,
    init: WithParams,
    get_param: WithParams,
    encoder_close: Close,
    get_surface: GetSurface,
    encode: EncodeFrame,
    sync: SyncOperation,
    // Last, so the library is unloaded after the loader is freed.
    _lib: libloading::Library,
}

// SAFETY: the function pointers are immutable after loading; the loader
// is only used to make sessions, which oneVPL allows from any thread.
unsafe impl Send for Dispatcher {}
// SAFETY: as above.
unsafe impl Sync for Dispatcher {}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("qsv::Dispatcher")
    }
}

fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> Result<T, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: every `T` asked for is the C signature oneVPL's headers give
    // that symbol (mfxdispatcher.h, mfxsession.h, mfxvideo.h); the library
    // outlives the copied pointer because `Dispatcher` keeps it.
    unsafe { lib.get::<T>(c.as_bytes_with_nul()).map(|s| *s).map_err(|e| format!("{name}: {e}")) }
}

fn u32_variant(value: u32) -> sys::mfxVariant {
    let mut v = sys::mfxVariant { Type: sys::MFX_VARIANT_TYPE_U32, ..Default::default() };
    v.Version.Version = 0x0100; // mfxVariant 1.0
    v.Data.U32 = value;
    v
}

impl Dispatcher {
    /// Loads `libvpl.so.2` and sets the loader's filters.
    pub fn load() -> Result<Self, String> {
        // SAFETY: loading the dispatcher runs its initialisers, which have
        // no preconditions on the caller.
        let lib = unsafe { libloading::Library::new(VPL_LIBRARY) }.map_err(|e| e.to_string())?;
        let load: Load = symbol(&lib, "MFXLoad")?;
        let create_config: CreateConfig = symbol(&lib, "MFXCreateConfig")?;
        let set_filter: SetFilter = symbol(&lib, "MFXSetConfigFilterProperty")?;
        let mut this = Self {
            loader: ptr::null_mut(),
            unload: symbol(&lib, "MFXUnload")?,
            create_session: symbol(&lib, "MFXCreateSession")?,
            close: symbol(&lib, "MFXClose")?,
            init: symbol(&lib, "MFXVideoENCODE_Init")?,
            get_param: symbol(&lib, "MFXVideoENCODE_GetVideoParam")?,
            encoder_close: symbol(&lib, "MFXVideoENCODE_Close")?,
            get_surface: symbol(&lib, "MFXMemory_GetSurfaceForEncode")?,
            encode: symbol(&lib, "MFXVideoENCODE_EncodeFrameAsync")?,
            sync: symbol(&lib, "MFXVideoCORE_SyncOperation")?,
            _lib: lib,
        };
        // SAFETY: `MFXLoad` has the signature declared above. From here on
        // `Drop` frees the loader on every error path.
        this.loader = unsafe { load() };
        if this.loader.is_null() {
            return Err("MFXLoad returned no loader".into());
        }
        let filters = [
            ("mfxImplDescription.Impl", sys::MFX_IMPL_TYPE_HARDWARE),
            ("mfxImplDescription.ApiVersion.Version", 2 << 16),
            ("mfxImplDescription.mfxEncoderDescription.encoder.CodecID", sys::MFX_CODEC_AVC),
        ];
        for (name, value) in filters {
            let c = CString::new(name).map_err(|e| e.to_string())?;
            // SAFETY: the loader is alive; a config made on it is freed
            // with it; `c` outlives the call.
            let rc = unsafe {
                let config = create_config(this.loader);
                if config.is_null() {
                    sys::MFX_ERR_NULL_PTR
                } else {
                    set_filter(config, c.as_ptr().cast(), u32_variant(value))
                }
            };
            if rc != sys::MFX_ERR_NONE {
                return Err(format!("oneVPL refused the filter {name}: {}", status_name(rc)));
            }
        }
        Ok(this)
    }

    /// Opens a session on the first implementation that passes the filters.
    fn session(&self) -> Result<sys::mfxSession, String> {
        let mut session = ptr::null_mut();
        // SAFETY: the loader is alive; `session` a live local.
        let rc = unsafe { (self.create_session)(self.loader, 0, &raw mut session) };
        if rc != sys::MFX_ERR_NONE || session.is_null() {
            return Err(format!(
                "no Quick Sync hardware implementation that encodes H.264 (MFXCreateSession: {})",
                status_name(rc)
            ));
        }
        Ok(session)
    }

    /// Opens and closes a session: whether this machine can encode.
    pub fn check(&self) -> Result<(), String> {
        let session = self.session()?;
        // SAFETY: the session was just made and is not used again.
        unsafe { (self.close)(session) };
        Ok(())
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if !self.loader.is_null() {
            // SAFETY: every session holds an `Arc` of the dispatcher, so
            // none is left; the loader is not used again.
            unsafe { (self.unload)(self.loader) };
        }
    }
}

/// One oneVPL session with an initialised encoder and its output buffer.
struct Session {
    vpl: Arc<Dispatcher>,
    session: sys::mfxSession,
    shape: Shape,
    bitstream: Vec<u8>,
    encoding: bool,
}

// SAFETY: a oneVPL session may be driven from any thread, one at a time;
// `Session` is owned by one encoder or by the idle list behind a mutex.
unsafe impl Send for Session {}

impl Session {
    fn open(vpl: &Arc<Dispatcher>, settings: &VideoSettings) -> Result<Self, EncodeError> {
        let session = vpl.session().map_err(EncodeError::Unavailable)?;
        let mut s = Self {
            vpl: Arc::clone(vpl),
            session,
            shape: Shape::from(settings),
            bitstream: Vec::new(),
            encoding: false,
        };
        s.start(settings)?;
        Ok(s)
    }

    /// A fresh encoder on this session for one segment: new rate control
    /// at the (possibly changed) bitrate, and an IDR first.
    fn start(&mut self, settings: &VideoSettings) -> Result<(), EncodeError> {
        if self.encoding {
            // SAFETY: the session is alive and its encoder initialised.
            unsafe { (self.vpl.encoder_close)(self.session) };
            self.encoding = false;
        }
        let mut par = video_params(settings);
        // SAFETY: the session is alive; `par` a live local.
        check(unsafe { (self.vpl.init)(self.session, &raw mut par) }, "MFXVideoENCODE_Init")?;
        self.encoding = true;
        let mut got = sys::mfxVideoParam::default();
        // SAFETY: as above.
        check(unsafe { (self.vpl.get_param)(self.session, &raw mut got) }, "MFXVideoENCODE_GetVideoParam")?;
        // SAFETY: the encoder filled the `mfx` member and its encoder part.
        let (kb, multiplier) = unsafe {
            let mfx = got.__bindgen_anon_1.mfx;
            (
                usize::from(mfx.__bindgen_anon_1.__bindgen_anon_1.BufferSizeInKB),
                usize::from(mfx.BRCParamMultiplier.max(1)),
            )
        };
        // The encoder's own bound, and never less than a raw picture.
        let raw = settings.width as usize * settings.height as usize * 3 / 2;
        self.bitstream.resize((kb * 1000 * multiplier).max(raw), 0);
        Ok(())
    }
}

impl sessions::Session for Session {
    fn fits(&self, settings: &VideoSettings) -> bool {
        self.shape == Shape::from(settings)
    }

    fn restart(&mut self, settings: &VideoSettings) -> Result<(), EncodeError> {
        self.start(settings)
    }

    fn encode(&mut self, picture: &PictureRef<'_>, index: u64, out: &mut Vec<u8>) -> Result<CodedPicture, EncodeError> {
        if (picture.width, picture.height) != (self.shape.width, self.shape.height) {
            return Err(EncodeError::Settings(format!(
                "picture is {}x{}, the QSV session {}x{}",
                picture.width, picture.height, self.shape.width, self.shape.height
            )));
        }
        let vpl = Arc::clone(&self.vpl);
        let mut surface: *mut sys::mfxFrameSurface1 = ptr::null_mut();
        // SAFETY: the session is alive; `surface` a live local.
        check(unsafe { (vpl.get_surface)(self.session, &raw mut surface) }, "MFXMemory_GetSurfaceForEncode")?;
        if surface.is_null() {
            return Err(EncodeError::Backend("MFXMemory_GetSurfaceForEncode gave no surface".into()));
        }
        // SAFETY: the runtime lent `surface` with its interface; it is ours
        // until released below, and mapped for writing while it is filled.
        let filled = unsafe { fill(surface, picture, index) };
        let mut ctrl = sys::mfxEncodeCtrl::default();
        let first = index == 0;
        if first {
            ctrl.FrameType = narrow(sys::MFX_FRAMETYPE_I | sys::MFX_FRAMETYPE_IDR | sys::MFX_FRAMETYPE_REF);
        }
        let mut bs = sys::mfxBitstream {
            Data: self.bitstream.as_mut_ptr(),
            MaxLength: u32::try_from(self.bitstream.len()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        let mut sync: sys::mfxSyncPoint = ptr::null_mut();
        let status = if filled.is_ok() {
            loop {
                // SAFETY: session, surface, bitstream buffer and sync point
                // are alive; the encoder keeps its own reference to the
                // surface while it needs it.
                let rc = unsafe {
                    (vpl.encode)(
                        self.session,
                        if first { &raw mut ctrl } else { ptr::null_mut() },
                        surface,
                        &raw mut bs,
                        &raw mut sync,
                    )
                };
                if rc != sys::MFX_WRN_DEVICE_BUSY {
                    break rc;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        } else {
            sys::MFX_ERR_NONE
        };
        // SAFETY: the surface was lent above; this gives our reference back.
        unsafe { release(surface) };
        filled?;
        if status == sys::MFX_ERR_MORE_DATA {
            return Err(EncodeError::Backend(format!("QSV held picture {index} back (it must code each at once)")));
        }
        check(status, "MFXVideoENCODE_EncodeFrameAsync")?;
        // SAFETY: `sync` came from the call above on this session.
        check(unsafe { (vpl.sync)(self.session, sync, SYNC_TIMEOUT_MS) }, "MFXVideoCORE_SyncOperation")?;
        let (at, len) = (bs.DataOffset as usize, bs.DataLength as usize);
        let coded = self.bitstream.get(at..at + len).ok_or_else(|| {
            EncodeError::Backend(format!("QSV reported {len} bytes at {at} in a buffer of {}", self.bitstream.len()))
        })?;
        out.extend_from_slice(coded);
        let idr = u32::from(bs.FrameType) & sys::MFX_FRAMETYPE_IDR != 0;
        Ok(CodedPicture { len, kind: if idr { PictureKind::Idr } else { PictureKind::Other } })
    }
}

/// Maps `surface`, writes `picture` into it as NV12 and unmaps it.
///
/// # Safety
/// `surface` is a live surface from `MFXMemory_GetSurfaceForEncode` with
/// its frame interface, not mapped by anyone else.
unsafe fn fill(surface: *mut sys::mfxFrameSurface1, picture: &PictureRef<'_>, index: u64) -> Result<(), EncodeError> {
    // SAFETY: the caller's contract.
    let iface = unsafe { (*surface).__bindgen_anon_1.FrameInterface };
    // SAFETY: the caller's contract: a surface has its interface.
    let (Some(map), Some(unmap)) = (unsafe { ((*iface).Map, (*iface).Unmap) }) else {
        return Err(EncodeError::Backend("QSV surface has no Map/Unmap".into()));
    };
    // SAFETY: mapping a live surface for writing.
    check(unsafe { map(surface, sys::MFX_MAP_WRITE) }, "mfxFrameSurfaceInterface::Map")?;
    // SAFETY: while mapped, `Data.Y` and `Data.UV` point at the NV12 planes
    // of the surface's allocated size (width and height rounded up to 16)
    // at `Pitch`; only this thread touches them until unmapped below.
    let written = unsafe {
        let data = &mut (*surface).Data;
        let pitch = (usize::from(data.PitchHigh) << 16) | usize::from(data.__bindgen_anon_2.Pitch);
        let rows = picture.height.next_multiple_of(16) as usize;
        let (y, uv) = (data.__bindgen_anon_3.Y, data.__bindgen_anon_4.UV);
        data.TimeStamp = index;
        if y.is_null() || uv.is_null() {
            Err(EncodeError::Backend("QSV surface mapped without planes".into()))
        } else {
            let y = std::slice::from_raw_parts_mut(y, pitch * rows);
            let uv = std::slice::from_raw_parts_mut(uv, pitch * rows / 2);
            copy_nv12(picture, y, uv, pitch)
        }
    };
    // SAFETY: the surface was mapped above.
    let unmapped = check(unsafe { unmap(surface) }, "mfxFrameSurfaceInterface::Unmap");
    written.and(unmapped)
}

/// Gives back the reference `MFXMemory_GetSurfaceForEncode` lent.
///
/// # Safety
/// `surface` is a live lent surface; it is not used after this.
unsafe fn release(surface: *mut sys::mfxFrameSurface1) {
    // SAFETY: the caller's contract.
    unsafe {
        let iface = (*surface).__bindgen_anon_1.FrameInterface;
        if let Some(release) = (*iface).Release {
            release(surface);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: the session is this one's own and not used after this.
        unsafe {
            if self.encoding {
                (self.vpl.encoder_close)(self.session);
            }
            (self.vpl.close)(self.session);
        }
    }
}

/// Sessions kept idle at most; more are closed when their segment ends.
const MAX_IDLE: usize = 8;

/// Opens Quick Sync encoders; keeps finished sessions for reuse.
pub struct QsvFactory {
    vpl: Arc<Dispatcher>,
    pool: SessionPool<Session>,
}

impl std::fmt::Debug for QsvFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QsvFactory({} idle)", self.pool.idle())
    }
}

impl QsvFactory {
    /// Loads the dispatcher and checks that a hardware session opens.
    /// `Err` says why Quick Sync cannot be used.
    pub fn load() -> Result<Self, String> {
        let vpl = Dispatcher::load()?;
        vpl.check()?;
        Ok(Self { vpl: Arc::new(vpl), pool: SessionPool::new(NAME, MAX_IDLE) })
    }
}

impl VideoEncoderFactory for QsvFactory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn open(&self, settings: &VideoSettings) -> Result<Box<dyn VideoEncoder>, EncodeError> {
        check_settings(settings)?;
        self.pool.open(settings, || Session::open(&self.vpl, settings))
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
    fn the_parameters_code_closed_gops_without_delay_at_the_bitrate() {
        let par = video_params(&settings());
        assert_eq!((par.AsyncDepth, par.IOPattern), (1, 2));
        // SAFETY: `video_params` wrote these members.
        let (mfx, enc, size) = unsafe {
            let mfx = par.__bindgen_anon_1.mfx;
            (mfx, mfx.__bindgen_anon_1.__bindgen_anon_1, mfx.FrameInfo.__bindgen_anon_1.__bindgen_anon_1)
        };
        assert_eq!(mfx.CodecId, sys::MFX_CODEC_AVC);
        assert_eq!((enc.GopPicSize, enc.GopRefDist, enc.IdrInterval), (100, 1, 0), "IDR every GOP, no B-frames");
        assert_eq!(u32::from(enc.GopOptFlag), sys::MFX_GOP_CLOSED);
        assert_eq!(u32::from(enc.RateControlMethod), sys::MFX_RATECONTROL_CBR);
        // SAFETY: written as kbit/s and kilobytes by `video_params`.
        let (kbps, max) = unsafe { (enc.__bindgen_anon_2.TargetKbps, enc.__bindgen_anon_3.MaxKbps) };
        assert_eq!((kbps, max, enc.BufferSizeInKB, mfx.BRCParamMultiplier), (4000, 4000, 500, 1));
        assert_eq!((size.Width, size.Height, size.CropW, size.CropH), (1280, 720, 1280, 720));
        assert_eq!(mfx.FrameInfo.FourCC, sys::MFX_FOURCC_NV12);
        let mut odd = settings();
        odd.height = 1080;
        // SAFETY: as above.
        let h = unsafe { video_params(&odd).__bindgen_anon_1.mfx.FrameInfo.__bindgen_anon_1.__bindgen_anon_1 };
        assert_eq!((h.Height, h.CropH), (1088, 1080), "surfaces are 16-aligned, the crop is the picture");
    }

    #[test]
    fn bitrates_past_16_bits_of_kbits_use_the_multiplier() {
        assert_eq!(rate_fields(4_000_000), (1, 4000, 500));
        let (m, kbps, kb) = rate_fields(100_000_000);
        assert_eq!(m, 2);
        assert_eq!(u32::from(kbps) * u32::from(m), 100_000);
        assert_eq!(u32::from(kb) * u32::from(m), 12_500);
        assert_eq!(rate_fields(10), (1, 1, 1), "tiny rates still ask for something");
    }

    #[test]
    fn the_upload_interleaves_chroma_into_nv12() {
        let y = [1, 2, 3, 4, 0, 5, 6, 7, 8, 0];
        let (u, v) = ([9, 10, 0], [11, 12, 0]);
        let picture = PictureRef { width: 4, height: 2, y: &y, u: &u, v: &v, y_stride: 5, c_stride: 3 };
        let (mut ys, mut uv) = (vec![0xee; 16], vec![0xee; 8]);
        copy_nv12(&picture, &mut ys, &mut uv, 8).unwrap();
        assert_eq!(&ys[0..4], &[1, 2, 3, 4]);
        assert_eq!(&ys[8..12], &[5, 6, 7, 8]);
        assert_eq!(&uv[0..4], &[9, 11, 10, 12], "Cb and Cr alternate");
        assert_eq!(uv[4], 0xee, "padding is left alone");
        assert!(copy_nv12(&picture, &mut ys[..4], &mut uv, 8).is_err());
    }

    #[test]
    fn settings_qsv_cannot_code_are_refused_in_words() {
        let mut odd = settings();
        odd.width = 641;
        assert!(check_settings(&odd).unwrap_err().to_string().contains("641x720"));
        assert!(check_settings(&settings()).is_ok());
        assert_eq!(status_name(sys::MFX_ERR_MORE_DATA), "MFX_ERR_MORE_DATA");
        assert_eq!(status_name(-999), "oneVPL status -999");
    }

    #[test]
    fn without_hardware_the_factory_says_why() {
        match QsvFactory::load() {
            // A machine with an Intel GPU: a real session codes an IDR first.
            Ok(factory) => {
                let mut enc = factory.open(&settings()).unwrap();
                let (y, c) = (vec![128u8; 1280 * 720], vec![128u8; 640 * 360]);
                let picture =
                    PictureRef { width: 1280, height: 720, y: &y, u: &c, v: &c, y_stride: 1280, c_stride: 640 };
                let mut out = Vec::new();
                let coded = enc.encode(&picture, 0, &mut out).unwrap();
                assert_eq!(coded.kind, PictureKind::Idr);
                assert!(coded.len > 0 && coded.len == out.len());
            }
            Err(why) => {
                assert!(why.contains(VPL_LIBRARY) || why.contains("Quick Sync") || why.contains("oneVPL"), "{why}")
            }
        }
    }
}
