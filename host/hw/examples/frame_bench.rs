//! Measures frame conversion cost at 640x480: MJPEG decode and YUYV conversion to RGB8.
//!
//! `cargo run --release -p gate-hw --example frame_bench`

use std::time::Instant;

use gate_hw::camera::{mjpeg_to_rgb, yuyv_to_rgb};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (w, h) = (640u16, 480u16);
    let rgb: Vec<u8> = (0..usize::from(w) * usize::from(h)).flat_map(|i| [(i % 251) as u8, (i % 127) as u8, (i % 61) as u8]).collect();
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 85).encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)?;
    let yuyv: Vec<u8> = (0..usize::from(w) * usize::from(h) * 2).map(|i| (i % 223) as u8).collect();
    let n = 100;
    let t = Instant::now();
    for _ in 0..n {
        let f = mjpeg_to_rgb(&jpeg)?;
        assert_eq!(f.rgb.len(), rgb.len());
    }
    let mjpeg_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        let f = yuyv_to_rgb(&yuyv, u32::from(w), u32::from(h), usize::from(w) * 2)?;
        assert_eq!(f.rgb.len(), rgb.len());
    }
    let yuyv_ms = t.elapsed().as_secs_f64() * 1e3 / f64::from(n);
    println!("640x480: MJPEG ({} bytes) decode {mjpeg_ms:.2} ms/frame, YUYV convert {yuyv_ms:.2} ms/frame", jpeg.len());
    Ok(())
}
