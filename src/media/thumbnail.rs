//! Thumbnail size selection and generation (the `image` crate: PNG, JPEG, GIF, WebP).
//!
//! Size selection follows the spec's thumbnail rules: the requested size is the *minimum* the
//! client wants; results come from the recommended sizes (32×32 and 96×96 crop, 320×240,
//! 640×480 and 800×600 scale) so that few variants are generated and cached per file; a
//! thumbnail is never upscaled and never smaller than requested unless the original is; when
//! the original is no larger than the request, the original itself is the answer.
//!
//! - `scale` keeps the aspect ratio: the largest size that fits the chosen box, raised if
//!   needed so that both sides reach the request (very wide or tall images).
//! - `crop` has the aspect ratio of the box (the request's own for requests larger than
//!   96×96): scaled to cover the box, then centre-cropped.

use std::io::Cursor;

use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Crop sizes the spec recommends, smallest first.
const CROP_SIZES: [(u32, u32); 2] = [(32, 32), (96, 96)];
/// Scale sizes the spec recommends, smallest first.
const SCALE_SIZES: [(u32, u32); 3] = [(320, 240), (640, 480), (800, 600)];

/// Images with more pixels than this are not thumbnailed (413 `M_TOO_LARGE`); decoding one
/// costs 4 bytes per pixel of memory.
pub const MAX_SOURCE_PIXELS: u64 = 40_000_000;
/// Frames of an animation beyond this are dropped from an animated thumbnail.
const MAX_FRAMES: usize = 300;
/// Frames x canvas pixels decoded for one animated thumbnail at most, so that an animation costs
/// no more than the largest still image: every frame is decoded onto, and resized from, the
/// whole canvas, however small the frame itself (a 967-byte GIF with a 5000x5000 canvas and 40
/// one-pixel frames cost 8.7 s of CPU). Frames beyond the budget are dropped; a canvas too large
/// for two frames gets a still thumbnail of its first frame, as Synapse makes of every GIF.
const MAX_ANIMATION_PIXELS: u64 = MAX_SOURCE_PIXELS;

/// `crop` or `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Fill the requested aspect ratio, cutting off what does not fit.
    Crop,
    /// Keep the original aspect ratio.
    Scale,
}

impl Method {
    /// The spec's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Crop => "crop",
            Method::Scale => "scale",
        }
    }
}

/// What to answer a thumbnail request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The original is no larger than what was asked for.
    Original,
    /// Generate (or reuse) a thumbnail of exactly this size.
    Resize {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
}

/// Chooses the thumbnail for an original of `orig` pixels when `req` (both > 0) was asked for.
pub fn plan(orig: (u32, u32), req: (u32, u32), method: Method) -> Plan {
    let (ow, oh) = (orig.0.max(1) as f64, orig.1.max(1) as f64);
    let (rw, rh) = req;
    if orig.0 <= rw && orig.1 <= rh {
        return Plan::Original;
    }
    match method {
        Method::Scale => {
            let (bw, bh) = SCALE_SIZES.into_iter().find(|&(w, h)| w >= rw && h >= rh).unwrap_or(req);
            let fit = (bw as f64 / ow).min(bh as f64 / oh);
            let cover = (rw as f64 / ow).max(rh as f64 / oh);
            let s = fit.max(cover);
            if s >= 1.0 {
                return Plan::Original;
            }
            // Round, but never below the request (nor above the original).
            let width = ((ow * s).round() as u32).max(rw.min(orig.0)).clamp(1, orig.0);
            let height = ((oh * s).round() as u32).max(rh.min(orig.1)).clamp(1, orig.1);
            if (width, height) == orig { Plan::Original } else { Plan::Resize { width, height } }
        }
        Method::Crop => {
            let (bw, bh) = CROP_SIZES.into_iter().find(|&(w, h)| w >= rw && h >= rh).unwrap_or(req);
            let cover = (bw as f64 / ow).max(bh as f64 / oh);
            let (width, height) = if cover < 1.0 {
                (bw, bh)
            } else {
                // Too small to fill the box without upscaling: the largest region of the box's
                // aspect ratio within the original, at its own resolution.
                let width = (oh * bw as f64 / bh as f64).min(ow).round() as u32;
                let height = (ow * bh as f64 / bw as f64).min(oh).round() as u32;
                (width.clamp(1, orig.0), height.clamp(1, orig.1))
            };
            if (width, height) == orig { Plan::Original } else { Plan::Resize { width, height } }
        }
    }
}

/// Why a thumbnail could not be made.
#[derive(Debug)]
pub enum ThumbnailError {
    /// Not an image we can decode (PDF, video, corrupt file): 400.
    Unsupported,
    /// Larger than [`MAX_SOURCE_PIXELS`]: 413.
    TooLarge,
}

/// A decodable source image: its format and size.
#[derive(Debug, Clone, Copy)]
pub struct SourceInfo {
    /// Detected from the bytes, not from the declared content type.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl SourceInfo {
    /// Whether the format can hold an animation we know how to resize.
    pub fn may_animate(&self) -> bool {
        matches!(self.format, ImageFormat::Gif | ImageFormat::WebP)
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(30_000);
    limits.max_image_height = Some(30_000);
    limits.max_alloc = Some(MAX_SOURCE_PIXELS * 4 + 64 * 1024 * 1024);
    limits
}

fn reader(bytes: &[u8]) -> Result<ImageReader<Cursor<&[u8]>>, ThumbnailError> {
    let mut reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|_| ThumbnailError::Unsupported)?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP) => {}
        _ => return Err(ThumbnailError::Unsupported),
    }
    reader.limits(limits());
    Ok(reader)
}

/// Reads format and dimensions from the header only (cheap; no pixel decoding).
pub fn inspect(bytes: &[u8]) -> Result<SourceInfo, ThumbnailError> {
    let reader = reader(bytes)?;
    let format = reader.format().ok_or(ThumbnailError::Unsupported)?;
    let (width, height) = reader.into_dimensions().map_err(|_| ThumbnailError::Unsupported)?;
    if width as u64 * height as u64 > MAX_SOURCE_PIXELS {
        return Err(ThumbnailError::TooLarge);
    }
    Ok(SourceInfo { format, width, height })
}

/// A generated thumbnail.
#[derive(Debug)]
pub struct Thumbnail {
    /// Encoded bytes.
    pub bytes: Vec<u8>,
    /// Their content type.
    pub content_type: &'static str,
}

/// Generates a thumbnail of `width`×`height` (as planned). CPU-heavy: call from a blocking
/// thread. With `animated` and an animated GIF/WebP source the result is an animated GIF (the
/// `image` crate cannot encode animated WebP); otherwise a still PNG, or JPEG for JPEG sources.
pub fn generate(
    bytes: &[u8],
    info: SourceInfo,
    width: u32,
    height: u32,
    method: Method,
    animated: bool,
) -> Result<Thumbnail, ThumbnailError> {
    if animated
        && info.may_animate()
        && let Some(thumb) = generate_animated(bytes, info, width, height, method)?
    {
        return Ok(thumb);
    }
    let img = reader(bytes)?.decode().map_err(|_| ThumbnailError::Unsupported)?;
    let out = resize(&img, width, height, method);
    let mut buf = Cursor::new(Vec::new());
    let content_type = if info.format == ImageFormat::Jpeg {
        // JPEG has no alpha; the encoder wants RGB.
        let rgb = DynamicImage::ImageRgb8(out.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85);
        rgb.write_with_encoder(encoder).map_err(|_| ThumbnailError::Unsupported)?;
        "image/jpeg"
    } else {
        out.write_to(&mut buf, ImageFormat::Png).map_err(|_| ThumbnailError::Unsupported)?;
        "image/png"
    };
    Ok(Thumbnail { bytes: buf.into_inner(), content_type })
}

fn resize(img: &DynamicImage, width: u32, height: u32, method: Method) -> DynamicImage {
    let filter = image::imageops::FilterType::Triangle;
    if (img.width(), img.height()) == (width, height) {
        return img.clone();
    }
    match method {
        Method::Crop => img.resize_to_fill(width, height, filter),
        Method::Scale => img.resize_exact(width, height, filter),
    }
}

/// An animated GIF thumbnail, or `None` when the source has a single frame or its canvas is too
/// large to animate within [`MAX_ANIMATION_PIXELS`].
fn generate_animated(
    bytes: &[u8],
    info: SourceInfo,
    width: u32,
    height: u32,
    method: Method,
) -> Result<Option<Thumbnail>, ThumbnailError> {
    let canvas = u64::from(info.width.max(1)) * u64::from(info.height.max(1));
    let max_frames = (MAX_ANIMATION_PIXELS / canvas).min(MAX_FRAMES as u64) as usize;
    if max_frames < 2 {
        return Ok(None);
    }
    let frames = match info.format {
        ImageFormat::Gif => {
            let mut decoder =
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(|_| ThumbnailError::Unsupported)?;
            decoder.set_limits(limits()).map_err(|_| ThumbnailError::TooLarge)?;
            decoder.into_frames()
        }
        ImageFormat::WebP => {
            let mut decoder =
                image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).map_err(|_| ThumbnailError::Unsupported)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            decoder.set_limits(limits()).map_err(|_| ThumbnailError::TooLarge)?;
            decoder.into_frames()
        }
        _ => return Ok(None),
    };
    let mut out = Vec::new();
    let mut count = 0;
    {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(&mut out, 10);
        encoder.set_repeat(image::codecs::gif::Repeat::Infinite).map_err(|_| ThumbnailError::Unsupported)?;
        for frame in frames.take(max_frames) {
            let frame = frame.map_err(|_| ThumbnailError::Unsupported)?;
            let delay = frame.delay();
            let img = DynamicImage::ImageRgba8(frame.into_buffer());
            let resized = resize(&img, width, height, method).to_rgba8();
            encoder
                .encode_frame(image::Frame::from_parts(resized, 0, 0, delay))
                .map_err(|_| ThumbnailError::Unsupported)?;
            count += 1;
        }
    }
    if count <= 1 {
        return Ok(None);
    }
    Ok(Some(Thumbnail { bytes: out, content_type: "image/gif" }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resize_of(p: Plan) -> (u32, u32) {
        match p {
            Plan::Resize { width, height } => (width, height),
            Plan::Original => panic!("expected a resize"),
        }
    }

    #[test]
    fn scale_uses_recommended_boxes_and_keeps_aspect() {
        assert_eq!(resize_of(plan((1000, 500), (100, 100), Method::Scale)), (320, 160));
        assert_eq!(resize_of(plan((1000, 1000), (400, 300), Method::Scale)), (480, 480));
        // 800x400 would fit the 800x600 box but be lower than the 500 asked for.
        assert_eq!(resize_of(plan((2000, 1000), (700, 500), Method::Scale)), (1000, 500));
        assert_eq!(resize_of(plan((2000, 1000), (700, 300), Method::Scale)), (800, 400));
        // Beyond the largest box: the request itself is the box.
        assert_eq!(resize_of(plan((4000, 3000), (1000, 1000), Method::Scale)), (1333, 1000));
    }

    #[test]
    fn scale_never_goes_below_the_request_for_extreme_aspects() {
        let (w, h) = resize_of(plan((4000, 100), (300, 50), Method::Scale));
        assert!(w >= 300 && h >= 50, "{w}x{h}");
        // Reaching the request would need the whole original: answer the original.
        assert_eq!(plan((1000, 100), (300, 200), Method::Scale), Plan::Original);
    }

    #[test]
    fn crop_uses_recommended_squares_then_the_request() {
        assert_eq!(resize_of(plan((1000, 500), (32, 32), Method::Crop)), (32, 32));
        assert_eq!(resize_of(plan((1000, 500), (50, 40), Method::Crop)), (96, 96));
        assert_eq!(resize_of(plan((1000, 500), (200, 100), Method::Crop)), (200, 100));
    }

    #[test]
    fn never_upscales() {
        assert_eq!(plan((20, 10), (32, 32), Method::Crop), Plan::Original);
        assert_eq!(plan((200, 100), (320, 240), Method::Scale), Plan::Original);
        // Wider than the box but not tall enough to fill it: the largest square inside.
        assert_eq!(resize_of(plan((150, 60), (96, 96), Method::Crop)), (60, 60));
        assert_eq!(plan((100, 80), (32, 100), Method::Scale), Plan::Original);
    }
}
