//! The mixer's threads: rooms sharded over threads that own them and their legs'
//! sockets outright, controlled through bounded queues that never block a shard.
//!
//! Each shard waits in `epoll` (through mio) for its legs' sockets, its command queue's
//! waker, or its rooms' next tick, so an idle room never wakes anything and a busy one
//! reads each datagram when it arrives (accurate arrival times for the jitter
//! buffers). No lock is taken and nothing is allocated per packet or per tick.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::error::{MixerError, Result};
use crate::leg::{LegConfig, LegId, LegStats, MAX_DATAGRAM};
use crate::outbox::Outbox;
use crate::room::{Room, RoomConfig, RoomEvent, RoomId};

const WAKER: Token = Token(usize::MAX);

/// How many threads and how deep the queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixerConfig {
    /// Mixer threads; 0 means one per core.
    pub shards: usize,
    /// Commands a shard can have queued before callers get [`MixerError::Busy`].
    pub command_queue: usize,
    /// Events queued for the owner before further ones are dropped (and counted).
    pub event_queue: usize,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            shards: 0,
            command_queue: 1024,
            event_queue: 8192,
        }
    }
}

/// What the mixer tells its owner (the SIP service).
#[derive(Debug, Clone, PartialEq)]
pub enum MixerEvent {
    /// Something happened in a room.
    Room {
        /// The room.
        room: RoomId,
        /// What happened.
        event: RoomEvent,
    },
    /// A leg left its room (removed, or its room destroyed); its final counters.
    LegRemoved {
        /// The room.
        room: RoomId,
        /// The leg.
        leg: LegId,
        /// Its counters.
        stats: LegStats,
    },
    /// Counters of a leg, answering [`Mixer::request_stats`].
    Stats {
        /// The room.
        room: RoomId,
        /// The leg.
        leg: LegId,
        /// Its counters.
        stats: LegStats,
    },
    /// A command could not be carried out (the id was unknown, or the room is full).
    CommandFailed {
        /// The room named in the command.
        room: RoomId,
        /// Why.
        reason: String,
    },
}

/// What the owner needs to know of a leg it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegHandle {
    /// Its room.
    pub room: RoomId,
    /// Its id.
    pub leg: LegId,
    /// The local address of its socket (goes into the SDP answer).
    pub local: SocketAddr,
}

enum Command {
    CreateRoom(RoomId, RoomConfig),
    DestroyRoom(RoomId),
    AddLeg(RoomId, LegId, Box<LegConfig>, std::net::UdpSocket),
    RemoveLeg(RoomId, LegId),
    Mute(RoomId, LegId, bool),
    Hold(RoomId, LegId, bool),
    Stats(RoomId, LegId),
    Shutdown,
}

struct ShardHandle {
    commands: SyncSender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// The running mixer: a handle that can be used from any thread, including tokio
/// tasks, since every call only enqueues a command.
pub struct Mixer {
    shards: Vec<ShardHandle>,
    next_id: AtomicU64,
    events: Receiver<MixerEvent>,
    dropped_events: Arc<AtomicU64>,
}

impl Mixer {
    /// Starts the shard threads. Raises the process' open-file limit first, since every
    /// leg holds a socket.
    pub fn start(config: MixerConfig) -> Result<Self> {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let n = if config.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.shards
        };
        let (event_tx, events) = mpsc::sync_channel(config.event_queue.max(1));
        let dropped_events = Arc::new(AtomicU64::new(0));
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new().map_err(MixerError::io("creating a mixer poller"))?;
            let waker = Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(MixerError::io("creating a waker"))?,
            );
            let (tx, rx) = mpsc::sync_channel(config.command_queue.max(1));
            let shard = Shard {
                poll,
                commands: rx,
                events: event_tx.clone(),
                dropped_events: dropped_events.clone(),
                rooms: HashMap::new(),
                sockets: HashMap::new(),
                outbox: Outbox::with_capacity(256),
                buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("mixer-{i}"))
                .spawn(move || shard.run())
                .map_err(MixerError::io("spawning a mixer thread"))?;
            shards.push(ShardHandle {
                commands: tx,
                waker,
                thread: Some(thread),
            });
        }
        Ok(Mixer {
            shards,
            next_id: AtomicU64::new(1),
            events,
            dropped_events,
        })
    }

    /// Number of shard threads.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Events dropped because the owner did not drain [`Mixer::events`] fast enough.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    /// The owner's event stream.
    pub fn events(&self) -> &Receiver<MixerEvent> {
        &self.events
    }

    fn shard_of(&self, room: RoomId) -> usize {
        (room.0 % self.shards.len() as u64) as usize
    }

    fn send(&self, room: RoomId, cmd: Command) -> Result<()> {
        let i = self.shard_of(room);
        let shard = &self.shards[i];
        match shard.commands.try_send(cmd) {
            Ok(()) => shard
                .waker
                .wake()
                .map_err(MixerError::io("waking a mixer thread")),
            Err(TrySendError::Full(_)) => Err(MixerError::Busy(i)),
            Err(TrySendError::Disconnected(_)) => Err(MixerError::ShutDown),
        }
    }

    /// Creates a room on the next shard, returning its id.
    pub fn create_room(&self, config: RoomConfig) -> Result<RoomId> {
        let id = RoomId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.send(id, Command::CreateRoom(id, config))?;
        Ok(id)
    }

    /// Destroys a room; each of its legs is reported as [`MixerEvent::LegRemoved`].
    pub fn destroy_room(&self, room: RoomId) -> Result<()> {
        self.send(room, Command::DestroyRoom(room))
    }

    /// Adds a leg that sends and receives on `socket` (bound by the caller from the RTP
    /// port range). The shard takes the socket over.
    pub fn add_leg(
        &self,
        room: RoomId,
        config: LegConfig,
        socket: std::net::UdpSocket,
    ) -> Result<LegHandle> {
        let local = socket
            .local_addr()
            .map_err(MixerError::io("reading a leg socket's address"))?;
        socket
            .set_nonblocking(true)
            .map_err(MixerError::io("making a leg socket non-blocking"))?;
        let leg = LegId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.send(room, Command::AddLeg(room, leg, Box::new(config), socket))?;
        Ok(LegHandle { room, leg, local })
    }

    /// Removes a leg; reported as [`MixerEvent::LegRemoved`] with its final counters.
    pub fn remove_leg(&self, room: RoomId, leg: LegId) -> Result<()> {
        self.send(room, Command::RemoveLeg(room, leg))
    }

    /// Mutes or unmutes a leg.
    pub fn set_muted(&self, room: RoomId, leg: LegId, muted: bool) -> Result<()> {
        self.send(room, Command::Mute(room, leg, muted))
    }

    /// Puts a leg on hold (no timeout while held) or resumes it.
    pub fn set_held(&self, room: RoomId, leg: LegId, held: bool) -> Result<()> {
        self.send(room, Command::Hold(room, leg, held))
    }

    /// Asks for a leg's counters, answered as [`MixerEvent::Stats`].
    pub fn request_stats(&self, room: RoomId, leg: LegId) -> Result<()> {
        self.send(room, Command::Stats(room, leg))
    }

    /// Stops every shard and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for s in &self.shards {
            // Wake first, so a shard with a full queue drains it and makes room; the
            // blocking send then cannot wait long, and fails at once if the shard died.
            let _ = s.waker.wake();
            let _ = s.commands.send(Command::Shutdown);
            let _ = s.waker.wake();
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Mixer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands an event to the owner without ever blocking the shard: when the owner lags,
/// the event is dropped and counted.
fn emit(events: &SyncSender<MixerEvent>, dropped: &AtomicU64, event: MixerEvent) {
    if events.try_send(event).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

struct LegSocket {
    room: RoomId,
    socket: UdpSocket,
    send_errors: u64,
}

struct Shard {
    poll: Poll,
    commands: Receiver<Command>,
    events: SyncSender<MixerEvent>,
    dropped_events: Arc<AtomicU64>,
    rooms: HashMap<RoomId, Room>,
    sockets: HashMap<LegId, LegSocket>,
    outbox: Outbox,
    buf: Box<[u8]>,
}

impl Shard {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = self
                .rooms
                .values()
                .filter_map(Room::poll_timeout)
                .min()
                .map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    return;
                }
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    if !self.drain_commands() {
                        return;
                    }
                } else {
                    self.read_leg(LegId(ev.token().0 as u64));
                }
            }
            self.tick_due(Instant::now());
        }
    }

    fn emit(&self, event: MixerEvent) {
        emit(&self.events, &self.dropped_events, event);
    }

    /// Returns false when the shard must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(cmd) => self.apply(cmd),
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn fail(&self, room: RoomId, e: MixerError) {
        self.emit(MixerEvent::CommandFailed {
            room,
            reason: e.to_string(),
        });
    }

    fn apply(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::CreateRoom(id, cfg) => {
                self.rooms.insert(id, Room::new(id, cfg));
            }
            Command::DestroyRoom(id) => match self.rooms.get(&id) {
                Some(room) => {
                    let legs: Vec<LegId> = room.leg_ids().collect();
                    for leg in legs {
                        self.remove_leg(id, leg);
                    }
                    self.rooms.remove(&id);
                }
                None => self.fail(id, MixerError::NoSuchRoom(id.0)),
            },
            Command::AddLeg(room_id, leg, cfg, socket) => {
                let Some(room) = self.rooms.get_mut(&room_id) else {
                    return self.fail(room_id, MixerError::NoSuchRoom(room_id.0));
                };
                if let Err(e) = room.add_leg(leg, *cfg, now) {
                    return self.fail(room_id, e);
                }
                let mut socket = UdpSocket::from_std(socket);
                if let Err(e) = self.poll.registry().register(
                    &mut socket,
                    Token(leg.0 as usize),
                    Interest::READABLE,
                ) {
                    let _ = room.remove_leg(leg);
                    return self.fail(room_id, MixerError::io("registering a leg socket")(e));
                }
                self.sockets.insert(
                    leg,
                    LegSocket {
                        room: room_id,
                        socket,
                        send_errors: 0,
                    },
                );
            }
            Command::RemoveLeg(room, leg) => self.remove_leg(room, leg),
            Command::Mute(room, leg, on) => self.with_room(room, |r| r.set_muted(leg, on)),
            Command::Hold(room, leg, on) => self.with_room(room, |r| r.set_held(leg, on, now)),
            Command::Stats(room, leg) => {
                match self.rooms.get(&room).and_then(|r| r.leg_stats(leg)) {
                    Some(stats) => self.emit(MixerEvent::Stats { room, leg, stats }),
                    None => self.fail(room, MixerError::NoSuchLeg(leg.0)),
                }
            }
            Command::Shutdown => {}
        }
    }

    fn with_room(&mut self, id: RoomId, f: impl FnOnce(&mut Room) -> Result<()>) {
        let result = match self.rooms.get_mut(&id) {
            Some(room) => f(room),
            None => Err(MixerError::NoSuchRoom(id.0)),
        };
        if let Err(e) = result {
            self.fail(id, e);
        }
    }

    fn remove_leg(&mut self, room_id: RoomId, leg: LegId) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return self.fail(room_id, MixerError::NoSuchRoom(room_id.0));
        };
        match room.remove_leg(leg) {
            Ok(stats) => {
                while let Some(event) = room.poll_event() {
                    let event = MixerEvent::Room {
                        room: room_id,
                        event,
                    };
                    emit(&self.events, &self.dropped_events, event);
                }
                if let Some(mut s) = self.sockets.remove(&leg) {
                    let _ = self.poll.registry().deregister(&mut s.socket);
                }
                self.emit(MixerEvent::LegRemoved {
                    room: room_id,
                    leg,
                    stats,
                });
            }
            Err(e) => self.fail(room_id, e),
        }
    }

    fn read_leg(&mut self, leg: LegId) {
        let Some(s) = self.sockets.get(&leg) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&s.room) else {
            return;
        };
        loop {
            match s.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    let _ = room.handle_packet(leg, from, &self.buf[..n], Instant::now());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // ICMP port unreachable from an earlier send and the like: keep reading.
                Err(_) => continue,
            }
        }
    }

    fn tick_due(&mut self, now: Instant) {
        for (id, room) in self.rooms.iter_mut() {
            while room.poll_timeout().is_some_and(|t| t <= now) {
                room.tick(now, &mut self.outbox);
                for (pkt, bytes) in self.outbox.iter() {
                    if let Some(s) = self.sockets.get_mut(&pkt.leg) {
                        if s.socket.send_to(bytes, pkt.destination).is_err() {
                            s.send_errors += 1;
                        }
                    }
                }
                self.outbox.clear();
            }
            while let Some(event) = room.poll_event() {
                let event = MixerEvent::Room { room: *id, event };
                emit(&self.events, &self.dropped_events, event);
            }
        }
    }
}
