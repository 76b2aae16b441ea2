//! The service's side of systemd: readiness, the watchdog, a clean stop on SIGTERM /
//! SIGINT, and SIGHUP. Outside systemd (no `NOTIFY_SOCKET`) every notification is a no-op.
//!
//! The watchdog is pinged only from the door loop's own turns ([`Watchdog`] is its
//! [`Hooks`](super::Hooks)), so a wedged loop stops the pings and systemd restarts it.

use super::{Control, Hooks};
use std::time::{Duration, Instant};

/// Tells systemd what state the service is in (`READY=1`, `STOPPING=1`, `STATUS=`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Notifier;

impl Notifier {
    /// The doors are served.
    pub fn ready(&self, status: &str) {
        self.send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
    }

    /// A clean stop has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status(status)]);
    }

    /// A reload has begun (a restart on the new configuration follows).
    pub fn reloading(&self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => self.send(&[sd_notify::NotifyState::Reloading]),
        }
    }

    /// A free-form status line (`systemctl status gate` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[sd_notify::NotifyState::Status(status)]);
    }

    fn send(&self, states: &[sd_notify::NotifyState]) {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "could not notify the service manager");
        }
    }
}

/// Pings systemd's watchdog from the loop at half the interval systemd asked for.
pub struct Watchdog {
    interval: Option<Duration>,
    last: Instant,
    /// Called on a reload request (SIGHUP).
    on_reload: Box<dyn FnMut()>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` / `WATCHDOG_PID` (none: no pings, loop sleeps at most 1 s).
    pub fn from_env(on_reload: Box<dyn FnMut()>) -> Watchdog {
        let mut usec = 0u64;
        let interval = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2)).filter(|d| !d.is_zero());
        if let Some(i) = interval {
            tracing::info!(every_ms = i.as_millis() as u64, "systemd watchdog on: pinged from the door loop");
        }
        Watchdog { interval, last: Instant::now() - Duration::from_secs(3600), on_reload }
    }
}

impl Hooks for Watchdog {
    fn tick(&mut self) {
        if let Some(i) = self.interval {
            if self.last.elapsed() >= i {
                if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "could not ping the systemd watchdog");
                }
                self.last = Instant::now();
            }
        }
    }

    fn max_sleep(&self) -> Duration {
        self.interval.map_or(Duration::from_secs(1), |i| i.min(Duration::from_secs(1)))
    }

    fn reload(&mut self) {
        (self.on_reload)();
    }
}

/// Turns SIGTERM and SIGINT into a clean stop and SIGHUP into a reload request, on a
/// thread of their own (a signal handler itself does nothing but wake that thread).
pub fn handle_signals(ctl: Control) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Installed before the thread starts, so a signal right after start is not missed.
    let (mut term, mut int, mut hup) = {
        let _in = rt.enter();
        (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?)
    };
    std::thread::Builder::new().name("gate-signals".into()).spawn(move || {
        rt.block_on(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM: stopping"); ctl.request_stop(); }
                    _ = int.recv() => { tracing::info!("SIGINT: stopping"); ctl.request_stop(); }
                    _ = hup.recv() => { tracing::info!("SIGHUP: checking the configuration again"); ctl.request_reload(); }
                }
            }
        });
    })?;
    Ok(())
}
