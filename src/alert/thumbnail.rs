//! Evidence thumbnails: the triggering frame as a small JPEG, kept in the state directory.

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{imageops, ImageBuffer, Rgb};

use crate::decode::Frame;

/// JPEG quality of thumbnails: enough to recognise what a stream showed.
const QUALITY: u8 = 80;

/// Where the thumbnail of an incident lives.
pub fn path(dir: &Path, incident_id: &str) -> PathBuf {
    dir.join(format!("{incident_id}.jpg"))
}

/// Encodes a frame as a JPEG at most `width` pixels wide (never enlarged). Colour when the
/// frame kept its 4:2:0 chroma, grey otherwise.
pub fn encode(frame: &Frame, width: u32) -> image::ImageResult<Vec<u8>> {
    let (w, h) = (frame.width as u32, frame.height as u32);
    let rgb = ImageBuffer::from_fn(w, h, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let luma = frame.luma[y * frame.width + x] as f32;
        let (cb, cr) = match &frame.chroma {
            Some(c) => {
                let i = (y / 2) * c.width + x / 2;
                (c.u[i] as f32 - 128.0, c.v[i] as f32 - 128.0)
            }
            None => (0.0, 0.0),
        };
        // BT.709, the matrix of HD video; limited range expanded to full
        let (y, scale) = if frame.full_range {
            (luma, 1.0)
        } else {
            ((luma - 16.0) * 255.0 / 219.0, 255.0 / 224.0)
        };
        let (cb, cr) = (cb * scale, cr * scale);
        let px = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        Rgb([
            px(y + 1.5748 * cr),
            px(y - 0.1873 * cb - 0.4681 * cr),
            px(y + 1.8556 * cb),
        ])
    });
    let rgb = if w > width {
        let th = ((h as u64 * width as u64) / w as u64).max(1) as u32;
        imageops::thumbnail(&rgb, width, th)
    } else {
        rgb
    };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&rgb)?;
    Ok(out)
}

/// Writes a thumbnail atomically (temporary file, then rename) so a reader never sees half.
pub fn write(dir: &Path, incident_id: &str, jpeg: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let dest = path(dir, incident_id);
    let tmp = dir.join(format!(".{incident_id}.tmp"));
    std::fs::write(&tmp, jpeg)?;
    std::fs::rename(&tmp, &dest)?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Chroma;
    use std::time::Instant;

    fn frame(w: usize, h: usize, chroma: bool) -> Frame {
        Frame {
            stream: 0,
            pts_us: None,
            arrival: Instant::now(),
            width: w,
            height: h,
            luma: (0..w * h).map(|i| (16 + i % 200) as u8).collect(),
            full_range: false,
            chroma: chroma.then(|| Chroma {
                width: w.div_ceil(2),
                height: h.div_ceil(2),
                // strongly red: Cr high, Cb low
                u: vec![90; w.div_ceil(2) * h.div_ceil(2)],
                v: vec![240; w.div_ceil(2) * h.div_ceil(2)],
            }),
            matrix: crate::classify::preprocess::Matrix::Bt709,
        }
    }

    #[test]
    fn thumbnails_are_small_jpegs_with_the_frames_aspect_and_colour() {
        let jpeg = encode(&frame(1280, 720, true), 480).unwrap();
        let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        assert_eq!((img.width(), img.height()), (480, 270));
        let p = img.get_pixel(240, 135);
        assert!(p[0] > p[1] && p[0] > p[2], "red dominates: {p:?}");
        // no enlargement of small frames; grey without chroma (odd sizes too)
        let grey = encode(&frame(101, 57, false), 480).unwrap();
        let img = image::load_from_memory(&grey).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (101, 57));
        let p = img.get_pixel(50, 20);
        assert!(
            p[0].abs_diff(p[1]) <= 3 && p[1].abs_diff(p[2]) <= 3,
            "{p:?}"
        );
    }
}
