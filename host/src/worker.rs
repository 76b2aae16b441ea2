//! In service, every plugin runs on a thread of its own, so the door never waits for a
//! plugin and no plugin waits for another: door contacts, the exit button and fire
//! release are handled by the gateway thread while calls are under way; a policy plugin
//! that hangs to its deadline delays only the doors it serves; an integration plugin
//! that hangs delays no door at all. (Replay calls the plugins inline, in order, for
//! determinism.)
//!
//! Two bounds keep a slow plugin from making anything late:
//! - a card read waits at most `limits.max_decision_wait_ms` for its plugin call to
//!   start (and at most [`MAX_WAITING_PER_DOOR`] reads wait per door); past that the
//!   gateway thread decides it with the host's fallback at once;
//! - an integration plugin's queue holds at most [`EVENT_QUEUE`] access events, each for
//!   at most `limits.max_event_wait_ms`; older or excess ones are dropped, counted and
//!   reported as a `dropped` plugin record. Alarms (and their clears) are never dropped.

use crate::clock::Clock;
use crate::config::{Door, Fallback, Limits, World};
use crate::credentials::Subject;
use crate::event::{CredentialKind, Direction, Record};
use crate::plugin::bindings::policy::gate::plugin::types as wit;
use crate::plugin::{Effects, Slot};
use crate::policy::{fallback_decision, Decided, DropCount, PluginUnit, PolicyEngine};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most card reads that may wait for one door's plugin at once; more are decided by the
/// fallback at once (a flood at one door never builds a backlog).
pub const MAX_WAITING_PER_DOOR: usize = 32;

/// Most access events one integration plugin's queue holds; more are dropped and counted.
pub const EVENT_QUEUE: usize = 1024;

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
    /// A visitor pass presented for entry: checked again and counted when granted.
    pub pass: Option<crate::visitor::Scanned>,
}

/// A read handed to a plugin's thread. Whoever takes the request out decides it: the
/// plugin's thread when it starts the call, or the gateway thread when it waited too long.
type Ticket = Arc<Mutex<Option<AccessRequest>>>;

fn take_request(t: &Ticket) -> Option<AccessRequest> {
    // A poisoned lock still holds a valid Option.
    t.lock().unwrap_or_else(|p| p.into_inner()).take()
}

enum Job {
    Decide(u64, Ticket),
    /// An event for an integration plugin, with when it was queued.
    Notify(Arc<wit::GateEvent>, i64, Instant),
    /// Swap the plugin between two jobs; the replaced one (or why not) goes back on the channel.
    Swap(Box<Slot>, Sender<Result<Option<Slot>, String>>),
    /// The plugin, compiled off the door's path at start, could not be loaded: the fallback keeps its doors.
    CompileFailed(String),
}

/// What a plugin's thread sends back.
// One value per finished job, moved once through a channel: boxing the larger
// variant would add an allocation per decision and save nothing.
#[allow(clippy::large_enum_variant)]
enum Finished {
    Decided(u64, AccessRequest, Decided),
    Notified { published: Option<(String, Effects)>, health: Vec<Record>, at: i64 },
}

/// Swaps plugins on their threads from another thread (the fleet agent). The swap is
/// queued like an event, so it lands between two calls of that plugin, never inside one.
pub struct PluginControl {
    lanes: BTreeMap<String, Sender<Job>>,
    rt: crate::plugin::Runtime,
}

impl PluginControl {
    /// The policy engine's runtime (same engine and linkers) to compile and link new plugins with.
    pub fn runtime(&self) -> &crate::plugin::Runtime {
        &self.rt
    }

    /// Puts `slot` in place of plugin `name`; returns the replaced slot once the plugin's
    /// thread has done it (waits at most `timeout`, the calls ahead of it in its queue).
    /// The new slot's instance is created here, on the caller's thread, so that the swap
    /// and the first call after it never wait for one.
    pub fn swap(&self, name: &str, mut slot: Slot, timeout: Duration) -> Result<Option<Slot>, String> {
        let lane = self.lanes.get(name).ok_or_else(|| format!("plugin `{name}` is not configured at this site"))?;
        if let Err(fault) = slot.prepare(&self.rt) {
            tracing::warn!(plugin = %name, fault = %fault, "the new version could not start an instance ahead of the swap; its first call will try again");
        }
        let (tx, rx) = mpsc::channel();
        lane.send(Job::Swap(Box::new(slot), tx)).map_err(|_| format!("the thread of plugin `{name}` has stopped"))?;
        rx.recv_timeout(timeout).map_err(|_| format!("the thread of plugin `{name}` did not take the swap within {timeout:?}"))?
    }

    /// Tells plugin `name`'s thread that the plugin, being compiled at start-up, will not come.
    pub fn compile_failed(&self, name: &str, error: &str) {
        if let Some(lane) = self.lanes.get(name) {
            let _ = lane.send(Job::CompileFailed(error.to_string()));
        }
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

/// Drops an integration plugin's thread counted, for the gateway thread to report.
#[derive(Default)]
struct LaneStats {
    too_old: AtomicU64,
    rate_limited: AtomicU64,
}

/// One plugin's thread, seen from the gateway thread.
struct Lane {
    jobs: Sender<Job>,
    world: World,
    /// Access events queued for this (integration) plugin and not yet taken.
    queued: Arc<AtomicUsize>,
    stats: Arc<LaneStats>,
    drops: DropCount,
}

/// A read waiting for its plugin.
struct Waiting {
    since: Instant,
    door: String,
    ticket: Ticket,
}

/// The plugins' threads and what they have been handed.
pub struct PolicyWorker {
    lanes: BTreeMap<String, Lane>,
    done: Receiver<Finished>,
    ready: VecDeque<Done>,
    /// Reads handed to a plugin and not yet decided, by ticket (ascending = oldest first).
    waiting: BTreeMap<u64, Waiting>,
    per_door: HashMap<String, usize>,
    next_ticket: u64,
    /// Events handed to integration plugins and not yet back.
    notifying: usize,
    max_wait: Duration,
    max_event_wait: Duration,
    fallback: Fallback,
    clock: Clock,
    /// The engine's runtime: it owns the epoch ticker, so it lives as long as the threads.
    rt: crate::plugin::Runtime,
}

impl PolicyWorker {
    /// Moves each of the engine's plugins onto a thread of its own; they ring `bell`
    /// whenever they finish something.
    pub fn spawn(engine: PolicyEngine, bell: crate::service::Bell, clock: Clock) -> std::io::Result<PolicyWorker> {
        let parts = engine.into_parts();
        let (done_tx, done) = mpsc::channel::<Finished>();
        let mut lanes = BTreeMap::new();
        for unit in parts.plugins {
            let name = unit.name().to_string();
            let world = unit.world();
            let (jobs, rx) = mpsc::channel::<Job>();
            let queued = Arc::new(AtomicUsize::new(0));
            let stats = Arc::new(LaneStats::default());
            let ctx = LaneCtx {
                unit,
                rt: parts.rt.sibling(),
                fallback: parts.fallback.clone(),
                limits: parts.limits.clone(),
                queued: queued.clone(),
                stats: stats.clone(),
                max_event_wait: Duration::from_millis(parts.limits.max_event_wait_ms),
            };
            let (tx, bell, clock) = (done_tx.clone(), bell.clone(), clock.clone());
            let thread = format!("gate-p-{}", name.chars().take(8).collect::<String>());
            std::thread::Builder::new().name(thread).spawn(move || ctx.run(rx, tx, bell, clock))?;
            lanes.insert(name, Lane { jobs, world, queued, stats, drops: DropCount::default() });
        }
        Ok(PolicyWorker {
            lanes,
            done,
            ready: VecDeque::new(),
            waiting: BTreeMap::new(),
            per_door: HashMap::new(),
            next_ticket: 0,
            notifying: 0,
            max_wait: Duration::from_millis(parts.limits.max_decision_wait_ms),
            max_event_wait: Duration::from_millis(parts.limits.max_event_wait_ms),
            fallback: parts.fallback,
            clock,
            rt: parts.rt,
        })
    }

    /// Hands a read to its door's plugin. Gives it back, with the fallback's reason, when
    /// the door has no plugin thread, its queue is full, or the thread is gone: the caller
    /// decides it with the fallback at once.
    pub fn decide(&mut self, req: AccessRequest) -> Result<(), Box<(AccessRequest, &'static str)>> {
        let Some(name) = req.door.policy.as_deref() else { return Err(Box::new((req, "no-policy"))) };
        let Some(lane) = self.lanes.get(name) else { return Err(Box::new((req, "plugin-unavailable"))) };
        let count = self.per_door.get(&req.door.id).copied().unwrap_or(0);
        if count >= MAX_WAITING_PER_DOOR {
            tracing::warn!(door = %req.door.id, waiting = count, "too many reads waiting for the door's plugin; the fallback decides this one");
            return Err(Box::new((req, "queue-full")));
        }
        let id = self.next_ticket;
        let door = req.door.id.clone();
        let ticket: Ticket = Arc::new(Mutex::new(Some(req)));
        if lane.jobs.send(Job::Decide(id, ticket.clone())).is_err() {
            let req = take_request(&ticket).expect("the request was never handed over");
            return Err(Box::new((req, "policy-thread-gone")));
        }
        self.next_ticket += 1;
        *self.per_door.entry(door.clone()).or_insert(0) += 1;
        self.waiting.insert(id, Waiting { since: Instant::now(), door, ticket });
        Ok(())
    }

    /// Hands an event to every integration plugin. An access event finds a full queue
    /// dropped (and counted); an alarm always goes through.
    pub fn notify(&mut self, ev: wit::GateEvent, at: i64) {
        let alarm = matches!(ev, wit::GateEvent::Alarm(_));
        let ev = Arc::new(ev);
        let now = Instant::now();
        for lane in self.lanes.values_mut().filter(|l| l.world == World::Integration) {
            if !alarm {
                if lane.queued.load(Ordering::Relaxed) >= EVENT_QUEUE {
                    lane.drops.queue_full = lane.drops.queue_full.saturating_add(1);
                    continue;
                }
                lane.queued.fetch_add(1, Ordering::Relaxed);
            }
            if lane.jobs.send(Job::Notify(ev.clone(), at, now)).is_ok() {
                self.notifying += 1;
            } else if !alarm {
                lane.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// A handle that swaps plugins on their threads.
    pub fn control(&self) -> PluginControl {
        PluginControl { lanes: self.lanes.iter().map(|(n, l)| (n.clone(), l.jobs.clone())).collect(), rt: self.rt.sibling() }
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.waiting.len() + self.notifying
    }

    /// How long until the oldest read still waiting for its call to start reaches
    /// `limits.max_decision_wait_ms` (the service loop wakes then).
    pub fn next_expiry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.waiting.values().find(|w| w.ticket.lock().map(|g| g.is_some()).unwrap_or(true)).map(|w| (w.since + self.max_wait).saturating_duration_since(now))
    }

    /// Takes the next finished job without waiting: a decision, integration results, a
    /// read that waited past `limits.max_decision_wait_ms` decided by the fallback, or a
    /// report of dropped events.
    pub fn take(&mut self) -> Option<Done> {
        if let Some(d) = self.ready.pop_front() {
            return Some(d);
        }
        if let Ok(f) = self.done.try_recv() {
            return Some(self.finish(f));
        }
        if let Some(d) = self.expire() {
            return Some(d);
        }
        self.drop_reports()
    }

    fn finish(&mut self, f: Finished) -> Done {
        match f {
            Finished::Decided(id, req, decided) => {
                if let Some(w) = self.waiting.remove(&id) {
                    self.leave(&w.door);
                }
                Done::Decided(req, decided)
            }
            Finished::Notified { published, health, at } => {
                self.notifying = self.notifying.saturating_sub(1);
                Done::Notified { published: published.into_iter().collect(), health, at }
            }
        }
    }

    fn leave(&mut self, door: &str) {
        if let Some(n) = self.per_door.get_mut(door) {
            *n = n.saturating_sub(1);
        }
    }

    /// The oldest read whose call has not started within the limit, decided by the fallback.
    fn expire(&mut self) -> Option<Done> {
        let now = Instant::now();
        let mut found = None;
        for (id, w) in &self.waiting {
            let waited = now.saturating_duration_since(w.since);
            if waited <= self.max_wait {
                break;
            }
            // Still in the queue (a read whose call is running ends at the plugin's deadline).
            if let Some(req) = take_request(&w.ticket) {
                found = Some((*id, req, waited));
                break;
            }
        }
        let (id, req, waited) = found?;
        if let Some(w) = self.waiting.remove(&id) {
            self.leave(&w.door);
        }
        tracing::warn!(door = %req.door.id, plugin = req.door.policy.as_deref().unwrap_or(""), waited_ms = waited.as_millis() as u64, limit_ms = self.max_wait.as_millis() as u64, "read waited past limits.max_decision_wait_ms for its plugin; the fallback decides it now");
        let decided = fallback_decision(&self.fallback, &req.door, req.kind, req.subject.as_ref(), "waited-too-long", Vec::new());
        Some(Done::Decided(req, decided))
    }

    /// Health records for integration plugins that dropped events or publishes (at most
    /// one per plugin per second of gateway time).
    fn drop_reports(&mut self) -> Option<Done> {
        let now = self.clock.now_ms();
        let mut health = Vec::new();
        for (name, lane) in &mut self.lanes {
            lane.drops.too_old = lane.drops.too_old.saturating_add(lane.stats.too_old.swap(0, Ordering::Relaxed));
            lane.drops.rate_limited = lane.drops.rate_limited.saturating_add(lane.stats.rate_limited.swap(0, Ordering::Relaxed));
            health.extend(lane.drops.report(name, now));
        }
        (!health.is_empty()).then_some(Done::Notified { published: Vec::new(), health, at: now })
    }

    /// The longest an access event waits for an integration plugin.
    pub fn max_event_wait(&self) -> Duration {
        self.max_event_wait
    }
}

/// What one plugin's thread owns.
struct LaneCtx {
    unit: PluginUnit,
    rt: crate::plugin::Runtime,
    fallback: Fallback,
    limits: Limits,
    queued: Arc<AtomicUsize>,
    stats: Arc<LaneStats>,
    max_event_wait: Duration,
}

impl LaneCtx {
    fn run(mut self, jobs: Receiver<Job>, done: Sender<Finished>, bell: crate::service::Bell, clock: Clock) {
        self.unit.prepare(&self.rt, clock.now_ms());
        for job in jobs {
            let out = match job {
                Job::Decide(id, ticket) => {
                    // Gone: it waited too long and the gateway thread decided it.
                    let Some(req) = take_request(&ticket) else { continue };
                    let d = self.unit.decide(&self.rt, &req.door, &req.event, req.kind, req.subject.as_ref(), req.at, &self.fallback, &self.limits);
                    Finished::Decided(id, req, d)
                }
                Job::Notify(ev, at, queued_at) => {
                    let alarm = matches!(*ev, wit::GateEvent::Alarm(_));
                    if !alarm {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                    }
                    if !alarm && queued_at.elapsed() > self.max_event_wait {
                        self.stats.too_old.fetch_add(1, Ordering::Relaxed);
                        Finished::Notified { published: None, health: Vec::new(), at }
                    } else {
                        let (fx, health) = self.unit.notify(&self.rt, &ev, at, &self.limits);
                        if let Some(fx) = &fx {
                            self.stats.rate_limited.fetch_add(fx.publishes_refused, Ordering::Relaxed);
                        }
                        Finished::Notified { published: fx.map(|fx| (self.unit.name().to_string(), fx)), health, at }
                    }
                }
                Job::Swap(slot, reply) => {
                    let _ = reply.send(self.unit.swap(*slot));
                    continue;
                }
                Job::CompileFailed(error) => {
                    self.unit.compile_failed(&error);
                    continue;
                }
            };
            if done.send(out).is_err() {
                break;
            }
            bell.ring();
            // After the answer is out: a call that faulted lost its instance, and the next
            // read must not wait while a new one is made.
            self.unit.prepare(&self.rt, clock.now_ms());
        }
    }
}
