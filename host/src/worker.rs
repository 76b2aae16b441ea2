//! In service, plugins run on their own thread so that the door never waits
//! for them: door contacts, the exit button and fire release are handled by
//! the gateway thread while a plugin call is still under way. (Replay calls
//! the policy inline, in order, for determinism.)

use crate::config::Door;
use crate::credentials::Subject;
use crate::event::{CredentialKind, Direction, Record};
use crate::plugin::bindings::policy::gate::plugin::types as wit;
use crate::plugin::{Effects, Slot};
use crate::policy::{Decided, PolicyEngine};
use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// An access attempt waiting for its decision.
#[derive(Clone, Debug)]
pub struct AccessRequest {
    pub door: Door,
    pub event: wit::AccessEvent,
    pub kind: CredentialKind,
    pub subject: Option<Subject>,
    pub direction: Direction,
    /// Gateway time the credential was presented.
    pub at: i64,
}

enum Job {
    Decide(AccessRequest),
    Notify(wit::GateEvent, i64),
    /// Swap a plugin between two jobs; the replaced one (or why not) goes back on the channel.
    Swap(String, Box<Slot>, Sender<Result<Option<Slot>, String>>),
    /// A plugin compiled off the door's path could not be loaded: the fallback keeps its doors.
    CompileFailed(String, String),
}

/// Swaps plugins on the policy thread from another thread (the fleet agent). The swap
/// is queued like an event, so it lands between two decisions, never inside one.
pub struct PluginControl {
    jobs: Sender<Job>,
    rt: crate::plugin::Runtime,
}

impl PluginControl {
    /// The policy engine's runtime (same engine and linkers) to compile and link new plugins with.
    pub fn runtime(&self) -> &crate::plugin::Runtime {
        &self.rt
    }

    /// Puts `slot` in place of plugin `name`; returns the replaced slot once the policy
    /// thread has done it (waits at most `timeout`, the events ahead of it in the queue).
    pub fn swap(&self, name: &str, slot: Slot, timeout: Duration) -> Result<Option<Slot>, String> {
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Job::Swap(name.to_string(), Box::new(slot), tx)).map_err(|_| "the policy thread has stopped".to_string())?;
        rx.recv_timeout(timeout).map_err(|_| format!("the policy thread did not take the swap within {timeout:?}"))?
    }

    /// Tells the policy thread that plugin `name`, being compiled at start-up, will not come.
    pub fn compile_failed(&self, name: &str, error: &str) {
        let _ = self.jobs.send(Job::CompileFailed(name.to_string(), error.to_string()));
    }
}

/// A finished job, handed back to the gateway thread.
// One value per finished job, moved once through a channel: boxing the larger
// variant would add an allocation per decision and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum Done {
    Decided(AccessRequest, Decided),
    Notified { published: Vec<(String, Effects)>, health: Vec<Record>, at: i64 },
}

/// The policy thread and its two queues.
pub struct PolicyWorker {
    jobs: Sender<Job>,
    done: Receiver<Done>,
    ready: VecDeque<Done>,
    in_flight: usize,
    /// A sibling of the engine's runtime, for [`PluginControl`].
    rt: crate::plugin::Runtime,
}

impl PolicyWorker {
    /// Moves the engine onto its own thread.
    pub fn spawn(mut engine: PolicyEngine, bell: crate::service::Bell) -> std::io::Result<PolicyWorker> {
        let rt = engine.runtime().sibling();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        std::thread::Builder::new().name("gate-policy".into()).spawn(move || {
            for job in job_rx {
                let out = match job {
                    Job::Decide(req) => {
                        let d = engine.decide(&req.door, &req.event, req.kind, req.subject.as_ref(), req.at);
                        Done::Decided(req, d)
                    }
                    Job::Notify(ev, at) => {
                        let (published, health) = engine.notify(&ev, at);
                        Done::Notified { published, health, at }
                    }
                    Job::Swap(name, slot, reply) => {
                        let _ = reply.send(engine.swap(&name, *slot));
                        continue;
                    }
                    Job::CompileFailed(name, error) => {
                        engine.compile_failed(&name, &error);
                        continue;
                    }
                };
                if done_tx.send(out).is_err() {
                    break;
                }
                bell.ring();
            }
        })?;
        Ok(PolicyWorker { jobs, done, ready: VecDeque::new(), in_flight: 0, rt })
    }

    /// Queues a decision; false if the policy thread is gone (the caller falls back).
    pub fn decide(&mut self, req: AccessRequest) -> bool {
        let ok = self.jobs.send(Job::Decide(req)).is_ok();
        self.in_flight += usize::from(ok);
        ok
    }

    /// Queues an event for the integration plugins.
    pub fn notify(&mut self, ev: wit::GateEvent, at: i64) {
        if self.jobs.send(Job::Notify(ev, at)).is_ok() {
            self.in_flight += 1;
        }
    }

    /// A handle that swaps plugins on the policy thread.
    pub fn control(&self) -> PluginControl {
        PluginControl { jobs: self.jobs.clone(), rt: self.rt.sibling() }
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Waits up to `timeout` for a finished job; true when one is ready.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if !self.ready.is_empty() {
            return true;
        }
        match self.done.recv_timeout(timeout) {
            Ok(d) => {
                self.ready.push_back(d);
                true
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => false,
        }
    }

    /// Takes the next finished job without waiting.
    pub fn take(&mut self) -> Option<Done> {
        let d = self.ready.pop_front().or_else(|| self.done.try_recv().ok())?;
        self.in_flight = self.in_flight.saturating_sub(1);
        Some(d)
    }
}
