//! Linux backends: GPIO character-device lines through linux-embedded-hal (`CdevPin`) for
//! relays, kernel edge events for inputs and Wiegand lines, V4L2 capture for the camera. A
//! missing device is a typed error naming it, never a panic.
//!
//! Nothing here needs polling to notice a change: every edge, on an input or a reader line,
//! calls the backend's waker, so the service loop sleeps until something happens (or a
//! driver deadline such as a debounce or a frame end falls due).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use linux_embedded_hal::gpio_cdev::{Chip, EventRequestFlags, EventType, LineEventHandle, LineRequestFlags};
use linux_embedded_hal::CdevPin;

use crate::camera::{mjpeg_to_rgb, yuyv_to_rgb, Frame, FrameSource};
use crate::config::{CameraConfig, CameraFormat};
use crate::edge::PinEdge;
use crate::error::HwError;
use crate::runtime::PinBackend;
use crate::sim::SimPin;

const CONSUMER: &str = "gate";

/// Microseconds of CLOCK_MONOTONIC, the clock GPIO edge events are stamped with (Linux ≥ 5.7).
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000) + (t.tv_nsec as u64) / 1_000
}

/// Called from an edge thread after each edge, so the loop that owns the runtime wakes.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// GPIO lines of the board. Time 0 of every edge and of [`LinuxBackend::now_us`] is the
/// moment the backend was created, so live time and recorded `at_us` share one clock.
pub struct LinuxBackend {
    chips: BTreeMap<String, Chip>,
    epoch_us: u64,
    tx: Sender<PinEdge>,
    rx: Option<Receiver<PinEdge>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    waker: Waker,
}

impl Default for LinuxBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl LinuxBackend {
    /// A backend with no line opened yet.
    pub fn new() -> Self {
        let (tx, rx) = channel();
        LinuxBackend { chips: BTreeMap::new(), epoch_us: monotonic_us(), tx, rx: Some(rx), stop: Arc::new(AtomicBool::new(false)), threads: Vec::new(), waker: Arc::new(|| {}) }
    }

    /// A backend whose edge threads call `waker` after every edge (set before opening lines).
    pub fn with_waker(waker: Waker) -> Self {
        let mut b = Self::new();
        b.waker = waker;
        b
    }

    /// Live time in µs since the backend was created; pass it to `HwRuntime::poll`.
    pub fn now_us(&self) -> u64 {
        monotonic_us().saturating_sub(self.epoch_us)
    }

    /// The stream of Wiegand edges (take it once; feed batches to `HwRuntime::feed_edges`).
    pub fn take_edges(&mut self) -> Option<Receiver<PinEdge>> {
        self.rx.take()
    }

    fn chip(&mut self, what: &str, path: &str, line: u32) -> Result<&mut Chip, HwError> {
        if !self.chips.contains_key(path) {
            let chip = Chip::new(path).map_err(|e| open_error(what, path, line, &e))?;
            self.chips.insert(path.to_owned(), chip);
        }
        self.chips.get_mut(path).ok_or_else(|| HwError::GpioOpen { what: what.into(), chip: path.into(), line, reason: "chip vanished".into() })
    }

    fn events(&mut self, what: &str, chip: &str, line: u32) -> Result<LineEventHandle, HwError> {
        self.chip(what, chip, line)?.get_line(line).and_then(|l| l.events(LineRequestFlags::INPUT, EventRequestFlags::BOTH_EDGES, CONSUMER)).map_err(|e| open_error(what, chip, line, &e))
    }
}

impl Drop for LinuxBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The OS reason of a gpio-cdev error (e.g. "No such file or directory (os error 2)").
fn open_error(what: &str, chip: &str, line: u32, err: &linux_embedded_hal::gpio_cdev::Error) -> HwError {
    use std::error::Error as _;
    let reason = err.source().map_or_else(|| err.to_string(), |s| s.to_string());
    HwError::GpioOpen { what: what.into(), chip: chip.into(), line, reason }
}

impl PinBackend for LinuxBackend {
    /// The line's level as its edge thread last saw it (read by the debouncer).
    type Input = SimPin;
    type Output = CdevPin;

    fn input(&mut self, what: &str, chip: &str, line: u32, name: &str, _idle_high: bool) -> Result<SimPin, HwError> {
        let mut handle = self.events(what, chip, line)?;
        let level = handle.get_value().map_err(|e| open_error(what, chip, line, &e))? != 0;
        let pin = SimPin::new(level);
        let (shared, stop, waker, name) = (pin.clone(), Arc::clone(&self.stop), Arc::clone(&self.waker), name.to_owned());
        let thread = std::thread::Builder::new().name(format!("gpio-{name}")).spawn(move || level_loop(&name, &mut handle, &shared, &stop, &waker)).map_err(|e| HwError::GpioOpen {
            what: format!("{what} edge thread"),
            chip: chip.into(),
            line,
            reason: e.to_string(),
        })?;
        self.threads.push(thread);
        Ok(pin)
    }

    fn output(&mut self, what: &str, chip: &str, line: u32, _name: &str, idle_high: bool) -> Result<CdevPin, HwError> {
        let handle = self.chip(what, chip, line)?.get_line(line).and_then(|l| l.request(LineRequestFlags::OUTPUT, u8::from(idle_high), CONSUMER));
        handle.and_then(CdevPin::new).map_err(|e| open_error(what, chip, line, &e))
    }

    fn wiegand(&mut self, reader: &str, chip: &str, d0: (u32, &str), d1: (u32, &str)) -> Result<Option<(SimPin, SimPin)>, HwError> {
        let h0 = self.events(&format!("reader {reader} D0"), chip, d0.0)?;
        let h1 = self.events(&format!("reader {reader} D1"), chip, d1.0)?;
        let names = [d0.1.to_owned(), d1.1.to_owned()];
        let (tx, stop, epoch, waker) = (self.tx.clone(), Arc::clone(&self.stop), self.epoch_us, Arc::clone(&self.waker));
        let reader = reader.to_owned();
        let thread = std::thread::Builder::new().name(format!("wiegand-{reader}")).spawn(move || edge_loop(&reader, [h0, h1], names, epoch, &tx, &stop, &waker)).map_err(|e| HwError::GpioOpen {
            what: "wiegand edge thread".into(),
            chip: chip.into(),
            line: d0.0,
            reason: e.to_string(),
        })?;
        self.threads.push(thread);
        Ok(None)
    }
}

/// Waits for edges on both data lines, stamps them with the kernel time, sends them in time order.
fn edge_loop(reader: &str, mut handles: [LineEventHandle; 2], names: [String; 2], epoch_us: u64, tx: &Sender<PinEdge>, stop: &AtomicBool, waker: &Waker) {
    use rustix::event::{poll, PollFd, PollFlags};
    let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    while !stop.load(Ordering::SeqCst) {
        let ready = {
            let [a, b] = &handles;
            let mut fds = [PollFd::new(a, PollFlags::IN), PollFd::new(b, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => [fds[0].revents().contains(PollFlags::IN), fds[1].revents().contains(PollFlags::IN)],
                Err(e) => {
                    tracing::warn!(reader, error = %e, "wiegand edge poll failed; reader stopped");
                    return;
                }
            }
        };
        let mut batch = Vec::new();
        for (i, is_ready) in ready.into_iter().enumerate() {
            if !is_ready {
                continue;
            }
            match handles[i].get_event() {
                Ok(ev) => batch.push(PinEdge { at_us: (ev.timestamp() / 1_000).saturating_sub(epoch_us), line: names[i].clone(), level: matches!(ev.event_type(), EventType::RisingEdge) }),
                Err(e) => tracing::warn!(reader, error = %e, "wiegand edge read failed"),
            }
        }
        batch.sort_by_key(|e| e.at_us);
        let any = !batch.is_empty();
        for e in batch {
            if tx.send(e).is_err() {
                return; // the runtime is gone
            }
        }
        if any {
            waker();
        }
    }
}

/// Follows one input line's edges into `pin` (the level the debouncer samples) and wakes
/// the loop, so a door contact, exit button or fire input needs no polling to be seen.
fn level_loop(name: &str, handle: &mut LineEventHandle, pin: &SimPin, stop: &AtomicBool, waker: &Waker) {
    use rustix::event::{poll, PollFd, PollFlags};
    let timeout = rustix::time::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    while !stop.load(Ordering::SeqCst) {
        let ready = {
            let mut fds = [PollFd::new(&*handle, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => fds[0].revents().contains(PollFlags::IN),
                Err(e) => {
                    tracing::warn!(input = name, error = %e, "input edge poll failed; input stopped");
                    return;
                }
            }
        };
        if !ready {
            continue;
        }
        match handle.get_event() {
            Ok(ev) => {
                pin.set(matches!(ev.event_type(), EventType::RisingEdge));
                waker();
            }
            Err(e) => tracing::warn!(input = name, error = %e, "input edge read failed"),
        }
    }
}

/// A V4L2 camera streaming MJPEG or YUYV, converted to in-memory RGB8 frames.
pub struct LinuxCamera {
    device: String,
    format: CameraFormat,
    width: u32,
    height: u32,
    stride: usize,
    stream: linuxvideo::stream::ReadStream,
}

impl LinuxCamera {
    /// Opens and starts the camera with the configured format, size and frame rate.
    pub fn open(config: &CameraConfig) -> Result<Self, HwError> {
        use linuxvideo::format::{PixFormat, PixelFormat};
        let err = |reason: String| HwError::Camera { device: config.device.clone(), reason };
        let device = linuxvideo::Device::open(&config.device).map_err(|e| err(format!("cannot open: {e}")))?;
        let wanted = match config.format {
            CameraFormat::Mjpeg => PixelFormat::MJPG,
            CameraFormat::Yuyv => PixelFormat::YUYV,
        };
        let capture = device.video_capture(PixFormat::new(config.width, config.height, wanted)).map_err(|e| err(format!("cannot set {:?} {}x{}: {e}", config.format, config.width, config.height)))?;
        let got = capture.format();
        let (got_format, got_width, got_height, got_stride) = (got.pixel_format(), got.width(), got.height(), got.bytes_per_line());
        if got_format != wanted {
            return Err(err(format!("does not offer {:?}; it chose {}", config.format, got_format)));
        }
        if got_width != config.width || got_height != config.height {
            tracing::warn!(device = %config.device, width = got_width, height = got_height, "camera chose another size");
        }
        if config.fps > 0 {
            if let Err(e) = capture.set_frame_interval(linuxvideo::Fract::new(1, config.fps)) {
                tracing::warn!(device = %config.device, error = %e, "camera refused the frame rate");
            }
        }
        let stream = capture.into_stream().map_err(|e| err(format!("cannot start streaming: {e}")))?;
        Ok(LinuxCamera { device: config.device.clone(), format: config.format, width: got_width, height: got_height, stride: got_stride as usize, stream })
    }
}

impl FrameSource for LinuxCamera {
    fn next_frame(&mut self) -> Result<Frame, HwError> {
        let (format, w, h, stride) = (self.format, self.width, self.height, self.stride);
        let converted = self.stream.dequeue(|buf| {
            if buf.is_error() {
                return Ok(Err(HwError::Frame { format: "v4l2", width: w, height: h, reason: "driver flagged the buffer as corrupt".into() }));
            }
            Ok(match format {
                CameraFormat::Mjpeg => mjpeg_to_rgb(&buf),
                CameraFormat::Yuyv => yuyv_to_rgb(&buf, w, h, if stride == 0 { w as usize * 2 } else { stride }),
            })
        });
        converted.map_err(|e| HwError::Camera { device: self.device.clone(), reason: format!("capture failed: {e}") })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HardwareConfig;
    use crate::runtime::HwRuntime;

    #[test]
    fn a_missing_gpio_chip_is_a_clear_error_naming_device_line_and_signal() {
        let cfg: HardwareConfig = toml::from_str("backend = \"linux\"\ngpio_chip = \"/dev/gpiochip-absent\"\n[[relays]]\ndoor = \"north-gate\"\nline = 17\n").expect("parses");
        let mut backend = LinuxBackend::new();
        let msg = HwRuntime::open(&cfg, &mut backend).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("door north-gate relay: /dev/gpiochip-absent line 17: "), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
    }

    #[test]
    fn a_missing_wiegand_chip_names_the_reader_line() {
        let cfg: HardwareConfig = toml::from_str("gpio_chip = \"/dev/gpiochip-absent\"\n[[readers]]\nname = \"north-in\"\ndoor = \"north\"\nd0 = 22\nd1 = 23\n").expect("parses");
        let msg = HwRuntime::open(&cfg, &mut LinuxBackend::new()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("reader north-in D0: /dev/gpiochip-absent line 22: "), "{msg}");
    }

    #[test]
    fn a_missing_camera_is_a_clear_error_naming_the_device() {
        let cfg = CameraConfig { device: "/dev/video-absent".into(), door: "north".into(), direction: Default::default(), width: 640, height: 480, fps: 15, format: CameraFormat::Mjpeg };
        let msg = LinuxCamera::open(&cfg).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("camera /dev/video-absent: cannot open: No such file or directory"), "{msg}");
    }

    #[test]
    fn live_time_starts_near_zero_and_advances() {
        let b = LinuxBackend::new();
        let t0 = b.now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let t1 = b.now_us();
        assert!(t0 < 1_000_000 && t1 >= t0 + 2_000, "{t0} {t1}");
    }
}
