//! Container discovery: which containers to capture, and when they start, stop, go away or
//! change name.
//!
//! One thread ([`spawn`], or [`Discovery::spawn`]) does three things, in this order:
//!
//! 1. **At start** it lists the containers, inspects the running ones that pass the filter and
//!    sends [`ContainerEvent::Running`] for each.
//! 2. **Then it follows** `GET /events?filters={"type":["container"]}` and turns `create` into
//!    `Created` (from the event's attributes: no inspect, and handled before the other events
//!    of the same read), `start`, `restart`, `unpause` into `Running` (after a fresh inspect),
//!    `die`/`stop` into `Stopped`, `destroy` into `Removed` and `rename` into `Renamed`. After any error (daemon restarted,
//!    socket gone, bad answer) it reconnects with a backoff of 100 ms doubling up to
//!    `reconcile_every`, logging at warn, and asks for `since=<newest event seen - 1 s>` (at the
//!    very first connection: the start time - 1 s), so no event in the gap is lost. Each
//!    connection negotiates the API version again ([`Client::open_stream`]): the daemon may
//!    have been upgraded while it was away. The
//!    events that come twice because of that overlap are dropped by their
//!    `(timeNano, id, action)`, and handling is idempotent besides.
//! 3. **Every `reconcile_every`** it lists again: `Running` for every matching running container
//!    (again: the receiver must treat a `Running` for a container it already reads as a no-op),
//!    `Stopped` for a container it had reported running that no longer runs, `Removed` for one
//!    it had reported that no longer exists, `Renamed` for one whose name changed. This catches
//!    anything the events missed: dockerd replays only its last 256 events on `since`, so a
//!    long enough gap does lose events.
//!
//! Beside it a second thread, the **attacher**, follows only the `create` events on a
//! connection of its own and sends `POST /containers/{id}/attach` for each new container at
//! once, keeping the connection for the main thread, which hands it out with `Created` (or
//! closes it when the filter rejects the container, or after a minute unclaimed). The main
//! thread cannot do it in time: it inspects at every `start`, and `docker run` starts its
//! container ~1 ms after its own attach; an attach that reaches dockerd after the start waits
//! for the start to finish and misses what the container wrote meanwhile. The attacher ends
//! with the main thread.
//!
//! ## What the receiver can rely on
//! - `Running(info)` means "this container was started (or is running) and matches the
//!   filter": read its log. It comes again on every reconcile pass and after event replays.
//!   `info.running` is the state at inspect time: a container that exits within milliseconds is
//!   still reported `Running` (with `running: false`) so that its lines are read; its `Stopped`
//!   follows.
//! - `Stopped { id }` is sent at most once after each `Running` (the thread remembers what it
//!   reported: `die` and the `stop` that follows it give one `Stopped`), but a receiver should
//!   still treat a second one as a no-op. A container renamed out of the filter is also
//!   reported `Stopped`. `kill`, `oom` and `pause` are not stops: a kill may be a harmless
//!   signal, an OOM kill may hit a child process only, and a paused container's log stream stays
//!   open; when the container really ends, `die` follows.
//! - `Created(info, attach)`: a container was created (not started yet) and matches the filter
//!   (`info` from the event's attributes: `tty` is not known there, `false`); `attach` is the
//!   connection of the attach sent for it, when that worked. Sent
//!   once, from the `create` event only, so that the receiver can attach before the start (a
//!   `--rm` job can be gone ~30 ms after its `start` event). Its `Running` may never come: a
//!   job that is over before the inspect after `start` is only `Created`, then `Removed`.
//! - `Removed { id }` and `Renamed(info)` are sent only for containers reported before.
//! - Only containers passing the filter are reported, and never the capturer's own container
//!   ([`OwnContainer`]).
//!
//! ## Stopping
//! The events connection is a plain blocking [`UnixStream`] owned by the thread, with a read
//! timeout of 250 ms: on each timeout the thread looks at the `stop` flag (and whether a
//! reconcile pass is due). When the flag is set it drops the socket, which closes it, and
//! returns: no read is ever left behind in the kernel, so the thread ends within about 250 ms
//! (plus, at worst, one list/inspect call in progress, which the client bounds at 30 s and
//! which takes milliseconds on a healthy daemon). The thread also ends when the receiver of
//! the channel is dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;

use crate::config::ContainerMonitorConfig;
use crate::decode::http::{Event, ResponseDecoder};
use crate::decode::timestamp::format_since;
use crate::sources::docker::{Client, ContainerInfo};

/// What discovery tells the rest of the capturer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Created, not started yet, matches the filter, with the attach discovery sent for it at
    /// once (when it could). See the module docs.
    Created(ContainerInfo, Option<SentAttach>),
    /// Started or running, matches the filter: read its log. Repeated; see the module docs.
    Running(ContainerInfo),
    /// A container reported `Running` has stopped (or was renamed out of the filter).
    Stopped { id: String },
    /// A container reported before no longer exists.
    Removed { id: String },
    /// A container reported before has a new name (in `info.name`).
    Renamed(ContainerInfo),
}

impl ContainerEvent {
    /// The full id of the container the event is about.
    pub fn id(&self) -> &str {
        match self {
            ContainerEvent::Created(info, _)
            | ContainerEvent::Running(info)
            | ContainerEvent::Renamed(info) => &info.id,
            ContainerEvent::Stopped { id } | ContainerEvent::Removed { id } => id,
        }
    }
}

/// An attach request discovery sent the moment it read a `create` event: the connection, to
/// be taken (once) by the receiver and read from there. The capture thread would open it
/// only at its next poll, and the `docker run` CLI starts its container ~1 ms after its own
/// attach: an attach that reaches dockerd after the start waits for the start to finish and
/// misses what the container wrote meanwhile (seen here under load: most of `seq 1 2000`).
#[derive(Clone, Debug)]
pub struct SentAttach(Arc<Mutex<Option<UnixStream>>>);

impl SentAttach {
    pub fn new(conn: UnixStream) -> Self {
        SentAttach(Arc::new(Mutex::new(Some(conn))))
    }

    /// The connection, the first time.
    pub fn take(&self) -> Option<UnixStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl PartialEq for SentAttach {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SentAttach {}

/// Decides from a container's name (without the leading `/`) and labels whether to capture it.
pub type Filter = Box<dyn Fn(&str, &BTreeMap<String, String>) -> bool + Send>;

/// The Go filter rules of `container_monitor` (`include_names`, `exclude_names`,
/// `include_labels`, `exclude_labels`), see [`ContainerMonitorConfig::matches`].
pub fn filter_from_config(config: &ContainerMonitorConfig) -> Filter {
    let config = config.clone();
    Box::new(move |name, labels| config.matches(name, labels))
}

/// How long a read on the events socket blocks before the thread looks at its stop flag.
const EVENTS_READ_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest the thread sleeps between looks at the stop flag while it waits to reconnect.
const IDLE_TICK: Duration = Duration::from_millis(100);
/// First reconnect delay; doubles up to `reconcile_every`.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// A connection that stayed up this long resets the backoff when it fails.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(1);
/// `since` reaches back this far before the newest event seen: dockerd stamps an event before
/// it publishes it, so events can arrive slightly out of time order.
const REPLAY_MARGIN_NS: i64 = 1_000_000_000;
/// Events are remembered this long (by their time, behind the newest) to drop replays.
const DEDUPE_WINDOW_NS: i64 = 5 * REPLAY_MARGIN_NS;
/// An events line longer than this is a broken stream.
const MAX_EVENT_LINE: usize = 1024 * 1024;
/// `{"type":["container"]}`, URL-encoded.
const CONTAINER_EVENTS_FILTER: &str = "%7B%22type%22%3A%5B%22container%22%5D%7D";

/// The events request path (after the API version) for events at or after `since_ns`.
fn events_path(since_ns: i64) -> String {
    format!(
        "/events?since={}&filters={CONTAINER_EVENTS_FILTER}",
        format_since(since_ns.max(0))
    )
}

/// The container the capturer itself runs in, if any: it is never captured (its own log
/// would feed itself).
///
/// Found from `/proc/self/cgroup` (cgroup v1 and cgroup v2 with the host's cgroup namespace:
/// `/docker/<id>`, `/system.slice/docker-<id>.scope`), from `/proc/self/mountinfo` (the
/// `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` bind mounts come from
/// `<data-root>/containers/<id>/`; this works with cgroup v2's private namespace too), and
/// from the hostname, which Docker sets to the first 12 hex digits of the id unless told
/// otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnContainer {
    ids: Vec<String>,
    hostname_prefix: Option<String>,
}

impl OwnContainer {
    /// Not in a container (or do not skip anything).
    pub fn none() -> Self {
        OwnContainer::default()
    }

    /// Exactly these full container ids.
    pub fn from_ids<I: IntoIterator<Item = String>>(ids: I) -> Self {
        OwnContainer {
            ids: ids.into_iter().collect(),
            hostname_prefix: None,
        }
    }

    /// Looks at this process: `/proc/self/cgroup`, `/proc/self/mountinfo`, the hostname.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mut hostname = read("/proc/sys/kernel/hostname");
        if hostname.trim().is_empty() {
            hostname = std::env::var("HOSTNAME").unwrap_or_default();
        }
        Self::from_sources(
            &read("/proc/self/cgroup"),
            &read("/proc/self/mountinfo"),
            &hostname,
        )
    }

    /// [`detect`](Self::detect) on given file contents (a pure function, for tests).
    pub fn from_sources(cgroup: &str, mountinfo: &str, hostname: &str) -> Self {
        let mut ids = ids_in_cgroup(cgroup);
        for id in ids_in_mountinfo(mountinfo) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let hostname = hostname.trim();
        let hostname_prefix =
            (hostname.len() == 12 && is_lower_hex(hostname)).then(|| hostname.to_string());
        OwnContainer {
            ids,
            hostname_prefix,
        }
    }

    /// True for the capturer's own container.
    pub fn is_own(&self, id: &str) -> bool {
        self.ids.iter().any(|own| own == id)
            || self
                .hostname_prefix
                .as_deref()
                .is_some_and(|prefix| id.len() == 64 && id.starts_with(prefix))
    }

    /// Whether anything identifies a container at all.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.hostname_prefix.is_none()
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Every run of exactly 64 lowercase hex digits in `text`, bounded by anything but a letter or
/// digit.
fn hex64_runs(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let word = &text[start..i];
        if word.len() == 64 && is_lower_hex(word) {
            out.push(word.to_string());
        }
    }
    out
}

/// Container ids in the paths of `/proc/self/cgroup` (`hierarchy:controllers:path` lines).
pub fn ids_in_cgroup(cgroup: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for id in hex64_runs(path) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// Container ids in `/proc/self/mountinfo`: the root of the `/etc/hostname`, `/etc/hosts` or
/// `/etc/resolv.conf` mount when it lies under `.../containers/<id>/`. Other mounts are not
/// looked at: on a host, dockerd's own mounts (`.../containers/<id>/mounts/shm`) are visible
/// and name other containers.
pub fn ids_in_mountinfo(mountinfo: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let (Some(root), Some(mount_point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        if !matches!(
            mount_point,
            "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf"
        ) {
            continue;
        }
        let mut rest = root;
        while let Some(at) = rest.find("/containers/") {
            rest = &rest[at + "/containers/".len()..];
            if let Some(id) = rest.get(..64) {
                if is_lower_hex(id) && rest[64..].starts_with('/') && !ids.iter().any(|x| x == id) {
                    ids.push(id.to_string());
                }
            }
        }
    }
    ids
}

/// Builds and starts a discovery thread.
pub struct Discovery {
    client: Client,
    filter: Filter,
    reconcile_every: Duration,
    own: OwnContainer,
}

impl Discovery {
    /// Discovery over `client`, reporting containers `filter` accepts, reconciling by listing
    /// every `reconcile_every` (also the longest reconnect backoff). The own container is
    /// detected from this process ([`OwnContainer::detect`]).
    pub fn new<F>(client: Client, filter: F, reconcile_every: Duration) -> Self
    where
        F: Fn(&str, &BTreeMap<String, String>) -> bool + Send + 'static,
    {
        Discovery {
            client,
            filter: Box::new(filter),
            reconcile_every: reconcile_every.max(BACKOFF_START),
            own: OwnContainer::detect(),
        }
    }

    /// Replaces the detected own container.
    pub fn with_own_container(mut self, own: OwnContainer) -> Self {
        self.own = own;
        self
    }

    /// Starts the thread (named `discovery`). It sends on `tx` until `stop` is set or the
    /// receiver is dropped; see the module docs for what it sends and how it stops.
    pub fn spawn(
        self,
        tx: Sender<ContainerEvent>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || self.run(tx, stop))
    }

    /// What [`spawn`](Self::spawn)'s thread does, on the calling thread (for a caller that
    /// has work of its own to do on that thread first). Starts the `attacher` thread too.
    pub fn run(self, tx: Sender<ContainerEvent>, stop: Arc<AtomicBool>) {
        let sent: SentMap = Arc::default();
        let attacher_stop = Arc::new(AtomicBool::new(false));
        let attacher = {
            let (client, own, sent, stop) = (
                self.client.clone(),
                self.own.clone(),
                sent.clone(),
                attacher_stop.clone(),
            );
            std::thread::Builder::new()
                .name("attacher".into())
                .spawn(move || attach_on_create(client, own, sent, stop))
        };
        let attacher = match attacher {
            Ok(handle) => Some((handle, attacher_stop)),
            Err(e) => {
                tracing::error!("discovery: no attacher thread ({e}): no safety net at create");
                None
            }
        };
        let worker = Worker {
            sent,
            attacher,
            client: self.client,
            filter: self.filter,
            own: self.own,
            reconcile_every: self.reconcile_every,
            tx,
            stop,
            known: HashMap::new(),
            cursor_ns: now_ns(),
            recent: HashSet::new(),
            recent_order: VecDeque::new(),
            reconcile_soon: false,
        };
        worker.run()
    }
}

/// [`Discovery::new`] + [`Discovery::spawn`].
pub fn spawn<F>(
    client: Client,
    filter: F,
    reconcile_every: Duration,
    tx: Sender<ContainerEvent>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>>
where
    F: Fn(&str, &BTreeMap<String, String>) -> bool + Send + 'static,
{
    Discovery::new(client, filter, reconcile_every).spawn(tx, stop)
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The receiver is gone: the thread ends.
struct Gone;

/// What a reconcile pass can end with.
enum PassError {
    Gone,
    Docker(String),
}

impl From<Gone> for PassError {
    fn from(_: Gone) -> Self {
        PassError::Gone
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    Created,
    Started,
    Stopped,
    Destroyed,
    Renamed,
}

/// The event actions discovery acts on; `exec_start: sh`, `health_status: healthy` and the
/// like carry a `: detail` suffix and are none of them.
fn classify(action: &str) -> Option<Action> {
    match action {
        "create" => Some(Action::Created),
        "start" | "restart" | "unpause" => Some(Action::Started),
        "die" | "stop" => Some(Action::Stopped),
        "destroy" => Some(Action::Destroyed),
        "rename" => Some(Action::Renamed),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: RawActor,
    /// Older daemons' spelling of the actor id.
    #[serde(default)]
    id: String,
    #[serde(rename = "timeNano", default)]
    time_nano: i64,
}

#[derive(Default, Deserialize)]
struct RawActor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: Option<BTreeMap<String, String>>,
}

/// One container event discovery acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DockerEvent {
    id: String,
    action: Action,
    time_nano: i64,
    /// `name`, `image` and the labels, for `create` only (empty otherwise).
    attributes: BTreeMap<String, String>,
}

/// Parses one line of the events stream; `Ok(None)` for events discovery ignores.
fn parse_event(line: &[u8]) -> Result<Option<DockerEvent>, serde_json::Error> {
    let raw: RawEvent = serde_json::from_slice(line)?;
    if raw.kind != "container" && !raw.kind.is_empty() {
        return Ok(None);
    }
    let id = if raw.actor.id.is_empty() {
        raw.id
    } else {
        raw.actor.id
    };
    if id.is_empty() {
        return Ok(None);
    }
    Ok(classify(&raw.action).map(|action| DockerEvent {
        id,
        action,
        time_nano: raw.time_nano,
        attributes: match action {
            Action::Created => raw.actor.attributes.unwrap_or_default(),
            _ => BTreeMap::new(),
        },
    }))
}

/// What a `create` event says of the container, without an inspect (which would cost
/// dockerd time when the attach must be quick): name, image and labels from the attributes,
/// `created` from the event time. Its TTY flag is not known yet (`false`); the attach finds
/// it out from the stream.
fn created_info(event: DockerEvent) -> ContainerInfo {
    let mut labels = event.attributes;
    let name = labels.remove("name").unwrap_or_default();
    let image = labels.remove("image").unwrap_or_default();
    ContainerInfo {
        id: event.id,
        name: name.trim_start_matches('/').to_string(),
        image,
        labels,
        tty: false,
        running: false,
        created: Some(event.time_nano),
        started: None,
        // Known from the inspect at `start`.
        log_rotates: false,
    }
}

/// Attach connections by container id, with when they were made.
type SentMap = Arc<Mutex<HashMap<String, (Instant, UnixStream)>>>;

/// An attach sent and not claimed this long (a container the filter rejects, or whose
/// `create` the worker never saw) is closed.
const SENT_UNCLAIMED: Duration = Duration::from_secs(60);

/// `{"type":["container"],"event":["create"]}`, URL-encoded.
const CREATE_EVENTS_FILTER: &str =
    "%7B%22type%22%3A%5B%22container%22%5D%2C%22event%22%3A%5B%22create%22%5D%7D";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The attacher thread: follows the `create` events on a connection of its own and sends
/// an attach for each at once, for the worker to claim. The worker cannot do it in time: it
/// handles events in order, each `start` after an inspect (100 ms and more on a busy
/// daemon), while the `docker run` CLI starts its container ~1 ms after its own attach.
/// Best effort: after an error it reconnects from the newest `create` seen, and a `create`
/// it misses is attached by the worker (later).
fn attach_on_create(client: Client, own: OwnContainer, sent: SentMap, stop: Arc<AtomicBool>) {
    let _running = crate::failure::global().running("attacher");
    let mut since_ns = now_ns();
    let mut backoff = Backoff::new(Duration::from_secs(2));
    // A connection made ahead (once containers are being created): at a `create` only the
    // request is left to write, and dockerd is already reading it (an idle connection there
    // waits without a timeout).
    let mut spare: Option<UnixStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let path = format!(
            "/events?since={}&filters={CREATE_EVENTS_FILTER}",
            format_since(since_ns)
        );
        let mut conn = match client.open_stream("events", &path, EVENTS_READ_TIMEOUT) {
            Ok(sock) => EventsConn::new(sock),
            Err(e) => {
                tracing::debug!("attacher: events: {e}");
                std::thread::sleep(backoff.step().min(IDLE_TICK * 5));
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            match conn.poll() {
                Ok(Poll::Idle) => {
                    lock(&sent).retain(|_, (at, _)| at.elapsed() < SENT_UNCLAIMED);
                }
                Ok(Poll::Events(events)) => {
                    backoff.reset();
                    let creates = events.iter().any(|e| e.action == Action::Created);
                    for event in events {
                        if event.action != Action::Created || own.is_own(&event.id) {
                            continue;
                        }
                        since_ns = since_ns.max(event.time_nano + 1);
                        // A spare the daemon has closed meanwhile fails: then a new one.
                        let sent_now = spare
                            .take()
                            .and_then(|conn| client.send_attach_on(conn, &event.id).ok())
                            .map_or_else(|| client.send_attach(&event.id), Ok);
                        match sent_now {
                            Ok(c) => {
                                tracing::debug!(
                                    "attacher: {} attached {:.1} ms after its create",
                                    short(&event.id),
                                    (now_ns() - event.time_nano) as f64 / 1e6
                                );
                                lock(&sent).insert(event.id, (Instant::now(), c));
                            }
                            Err(e) => tracing::debug!("attacher: {e}"),
                        }
                    }
                    if creates && spare.is_none() {
                        spare = client.connect().ok();
                    }
                }
                Err(e) => {
                    tracing::debug!("attacher: events: {e}");
                    break;
                }
            }
        }
    }
}

/// The events response being read.
struct EventsConn {
    sock: UnixStream,
    decoder: ResponseDecoder,
    /// Body bytes after the last complete line (or an error body).
    line: Vec<u8>,
    buf: Box<[u8]>,
    /// The status, when the daemon answered with an error.
    failed_status: Option<u16>,
    opened_at: Instant,
}

enum Poll {
    /// The read timed out (or was interrupted): look at the flags and come back.
    Idle,
    /// These events arrived (possibly none, e.g. only the head).
    Events(Vec<DockerEvent>),
}

impl EventsConn {
    fn new(sock: UnixStream) -> Self {
        EventsConn {
            sock,
            decoder: ResponseDecoder::new(),
            line: Vec::new(),
            buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            failed_status: None,
            opened_at: Instant::now(),
        }
    }

    fn error_body(&self) -> String {
        let text = String::from_utf8_lossy(&self.line);
        #[derive(Deserialize)]
        struct ErrorBody {
            message: String,
        }
        match serde_json::from_slice::<ErrorBody>(&self.line) {
            Ok(e) => e.message,
            Err(_) => text.trim().chars().take(500).collect(),
        }
    }

    fn ended(&self) -> String {
        match self.failed_status {
            Some(status) => format!("HTTP {status}: {}", self.error_body()),
            None => "the daemon ended the events stream".to_string(),
        }
    }

    /// One read, decoded. `Err` ends the connection.
    fn poll(&mut self) -> Result<Poll, String> {
        let n = match self.sock.read(&mut self.buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(Poll::Idle)
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        if n == 0 {
            self.decoder.finish().map_err(|e| e.to_string())?;
            return Err(self.ended());
        }
        let mut input = Bytes::copy_from_slice(&self.buf[..n]);
        let mut events = Vec::new();
        while let Some(event) = self.decoder.decode(&mut input).map_err(|e| e.to_string())? {
            match event {
                Event::Head => {
                    let status = self.decoder.head().map_or(0, |h| h.status);
                    if !(200..300).contains(&status) {
                        self.failed_status = Some(status);
                    }
                }
                Event::Data(span) => {
                    self.line.extend_from_slice(&span.bytes);
                    if self.failed_status.is_none() {
                        self.split_lines(&mut events)?;
                    }
                    if self.line.len() > MAX_EVENT_LINE {
                        return Err(format!("an event line over {MAX_EVENT_LINE} bytes"));
                    }
                }
                Event::End => return Err(self.ended()),
            }
        }
        Ok(Poll::Events(events))
    }

    fn split_lines(&mut self, events: &mut Vec<DockerEvent>) -> Result<(), String> {
        let mut start = 0;
        while let Some(pos) = memchr::memchr(b'\n', &self.line[start..]) {
            let line = self.line[start..start + pos].trim_ascii();
            start += pos + 1;
            if line.is_empty() {
                continue;
            }
            match parse_event(line) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "discovery: skipping an events line that does not parse ({e}): {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ),
            }
        }
        self.line.drain(..start);
        Ok(())
    }
}

/// A delay doubling from [`BACKOFF_START`] up to `max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: BACKOFF_START,
            max,
        }
    }

    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// What discovery has reported about a container.
struct Tracked {
    info: ContainerInfo,
    /// A `Running` was sent and no `Stopped` since.
    running: bool,
}

struct Worker {
    /// Attach requests sent at `create` by the attacher thread, by container id.
    sent: SentMap,
    /// The attacher thread and its stop flag: ended with the worker.
    attacher: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    client: Client,
    filter: Filter,
    own: OwnContainer,
    reconcile_every: Duration,
    tx: Sender<ContainerEvent>,
    stop: Arc<AtomicBool>,
    /// Every container reported (and not removed since), by id.
    known: HashMap<String, Tracked>,
    /// The newest event time seen (at first: the start time).
    cursor_ns: i64,
    /// Events handled within [`DEDUPE_WINDOW_NS`] of the cursor, to drop replays.
    recent: HashSet<(i64, String, Action)>,
    recent_order: VecDeque<(i64, String, Action)>,
    /// An inspect after an event failed: reconcile at once.
    reconcile_soon: bool,
}

impl Worker {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn send(&self, event: ContainerEvent) -> Result<(), Gone> {
        tracing::debug!("discovery: {event:?}");
        self.tx.send(event).map_err(|_| Gone)
    }

    fn run(mut self) {
        self.run_events();
        if let Some((thread, stop)) = self.attacher.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }

    fn run_events(&mut self) {
        if !self.own.is_empty() {
            tracing::info!("discovery: own container {:?} is never captured", self.own);
        }
        let mut reconcile_backoff = Backoff::new(self.reconcile_every);
        let mut events_backoff = Backoff::new(self.reconcile_every);
        let mut next_reconcile = Instant::now();
        let mut reconnect_at = Instant::now();
        let mut conn: Option<EventsConn> = None;
        // Leaving the loop drops `conn`, which closes the events socket: nothing outlives
        // the thread.
        while !self.stopped() {
            let now = Instant::now();
            if now >= next_reconcile || self.reconcile_soon {
                self.reconcile_soon = false;
                match self.reconcile() {
                    Ok(()) => {
                        reconcile_backoff.reset();
                        next_reconcile = Instant::now() + self.reconcile_every;
                    }
                    Err(PassError::Gone) => return,
                    Err(PassError::Docker(e)) => {
                        let delay = reconcile_backoff.step();
                        tracing::warn!(
                            "discovery: listing containers failed, again in {delay:?}: {e}"
                        );
                        next_reconcile = Instant::now() + delay;
                    }
                }
                continue;
            }
            let Some(c) = conn.as_mut() else {
                if now < reconnect_at {
                    let wake = reconnect_at.min(next_reconcile);
                    std::thread::sleep(wake.saturating_duration_since(now).min(IDLE_TICK));
                    continue;
                }
                let path = events_path(self.cursor_ns - REPLAY_MARGIN_NS);
                match self
                    .client
                    .open_stream("events", &path, EVENTS_READ_TIMEOUT)
                {
                    Ok(sock) => conn = Some(EventsConn::new(sock)),
                    Err(e) => {
                        let delay = events_backoff.step();
                        tracing::warn!(
                            "discovery: events stream failed, reconnecting in {delay:?}: {e}"
                        );
                        reconnect_at = Instant::now() + delay;
                    }
                }
                continue;
            };
            match c.poll() {
                Ok(Poll::Idle) => {}
                Ok(Poll::Events(events)) => {
                    // `create`s first: they cost no inspect, and an attach must be made
                    // before the start, which the inspects of this batch could outlast.
                    let (creates, rest): (Vec<_>, Vec<_>) = events
                        .into_iter()
                        .partition(|e| e.action == Action::Created);
                    for event in creates.into_iter().chain(rest) {
                        if self.on_event(event).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.client.stream_failed("events");
                    if c.opened_at.elapsed() >= BACKOFF_RESET_AFTER {
                        events_backoff.reset();
                    }
                    let delay = events_backoff.step();
                    tracing::warn!(
                        "discovery: events stream failed, reconnecting in {delay:?}: {e}"
                    );
                    reconnect_at = Instant::now() + delay;
                    conn = None;
                }
            }
        }
    }

    /// Drops replayed events; remembers this one.
    fn first_time(&mut self, event: &DockerEvent) -> bool {
        let key = (event.time_nano, event.id.clone(), event.action);
        if self.recent.contains(&key) {
            return false;
        }
        self.recent.insert(key.clone());
        self.recent_order.push_back(key);
        self.cursor_ns = self.cursor_ns.max(event.time_nano);
        while let Some(front) = self.recent_order.front() {
            if front.0 >= self.cursor_ns - DEDUPE_WINDOW_NS {
                break;
            }
            if let Some(old) = self.recent_order.pop_front() {
                self.recent.remove(&old);
            }
        }
        true
    }

    fn on_event(&mut self, event: DockerEvent) -> Result<(), Gone> {
        if !self.first_time(&event) || self.own.is_own(&event.id) {
            return Ok(());
        }
        match event.action {
            Action::Created => self.offer_created(created_info(event)),
            Action::Started | Action::Renamed => {
                let info = match self.client.inspect(&event.id) {
                    Ok(info) => info,
                    // Gone already: its destroy event follows.
                    Err(e) if e.status == Some(404) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(
                            "discovery: {:?} of {}: {e}; reconciling by listing",
                            event.action,
                            short(&event.id)
                        );
                        self.reconcile_soon = true;
                        return Ok(());
                    }
                };
                if event.action == Action::Started {
                    self.offer_running(info)
                } else {
                    self.on_rename(info)
                }
            }
            Action::Stopped => self.mark_stopped(&event.id),
            Action::Destroyed => {
                if self.known.remove(&event.id).is_some() {
                    self.send(ContainerEvent::Removed { id: event.id })?;
                }
                Ok(())
            }
        }
    }

    fn matches(&self, info: &ContainerInfo) -> bool {
        !self.own.is_own(&info.id) && (self.filter)(&info.name, &info.labels)
    }

    /// Sends `Running` for a matching container and remembers it.
    fn offer_running(&mut self, info: ContainerInfo) -> Result<(), Gone> {
        if !self.matches(&info) {
            return Ok(());
        }
        self.known.insert(
            info.id.clone(),
            Tracked {
                info: info.clone(),
                running: true,
            },
        );
        self.send(ContainerEvent::Running(info))
    }

    /// Sends `Created` for a matching container not reported yet, and remembers it (not
    /// running), so that its `destroy` is reported.
    fn offer_created(&mut self, info: ContainerInfo) -> Result<(), Gone> {
        let sent = lock(&self.sent).remove(&info.id).map(|(_, conn)| conn);
        if !self.matches(&info) || self.known.contains_key(&info.id) {
            return Ok(());
        }
        let sent = match sent {
            Some(conn) => Ok(conn),
            None => self.client.send_attach(&info.id),
        };
        let attach = match sent {
            Ok(conn) => Some(SentAttach::new(conn)),
            Err(e) => {
                tracing::warn!("discovery: {}: {e}", info.name);
                None
            }
        };
        self.known.insert(
            info.id.clone(),
            Tracked {
                info: info.clone(),
                running: false,
            },
        );
        self.send(ContainerEvent::Created(info, attach))
    }

    fn mark_stopped(&mut self, id: &str) -> Result<(), Gone> {
        if let Some(tracked) = self.known.get_mut(id) {
            if tracked.running {
                tracked.running = false;
                self.send(ContainerEvent::Stopped { id: id.to_string() })?;
            }
        }
        Ok(())
    }

    fn on_rename(&mut self, info: ContainerInfo) -> Result<(), Gone> {
        let matches = self.matches(&info);
        let id = info.id.clone();
        let Some(tracked) = self.known.get_mut(&id) else {
            return if info.running {
                self.offer_running(info)
            } else {
                Ok(())
            };
        };
        if !matches {
            tracked.info = info;
            return self.mark_stopped(&id);
        }
        if !tracked.running && info.running {
            return self.offer_running(info);
        }
        tracked.info = info.clone();
        self.send(ContainerEvent::Renamed(info))
    }

    /// One pass of listing; see the module docs.
    fn reconcile(&mut self) -> Result<(), PassError> {
        let list = self
            .client
            .list_containers(true)
            .map_err(|e| PassError::Docker(e.to_string()))?;
        let mut present = HashSet::with_capacity(list.len());
        for summary in list {
            present.insert(summary.id.clone());
            if self.stopped() {
                return Ok(());
            }
            if self.own.is_own(&summary.id) {
                continue;
            }
            let name = summary
                .names
                .first()
                .map(|n| n.trim_start_matches('/'))
                .unwrap_or_default()
                .to_string();
            let labels = summary.labels.unwrap_or_default();
            let running = matches!(summary.state.as_str(), "running" | "paused");
            if !(running && (self.filter)(&name, &labels)) {
                // Stopped, or renamed out of the filter, and the event missed.
                self.mark_stopped(&summary.id)?;
                continue;
            }
            let cached = self
                .known
                .get(&summary.id)
                .filter(|t| t.info.name == name)
                .map(|t| t.info.clone());
            let info = match cached {
                Some(mut info) => {
                    info.running = true;
                    info
                }
                None => match self.client.inspect(&summary.id) {
                    Ok(info) if info.running => info,
                    // Exited (or gone) between the list and the inspect.
                    Ok(_) => {
                        self.mark_stopped(&summary.id)?;
                        continue;
                    }
                    Err(e) if e.status == Some(404) => continue,
                    Err(e) => return Err(PassError::Docker(e.to_string())),
                },
            };
            if let Some(tracked) = self.known.get_mut(&summary.id) {
                if tracked.info.name != info.name {
                    tracked.info = info.clone();
                    self.send(ContainerEvent::Renamed(info.clone()))?;
                }
            }
            self.offer_running(info)?;
        }
        let removed: Vec<String> = self
            .known
            .keys()
            .filter(|id| !present.contains(*id))
            .cloned()
            .collect();
        for id in removed {
            self.known.remove(&id);
            self.send(ContainerEvent::Removed { id })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const ID: &str = "3f1c9ad2b7e04c5a8d6f0e1b2c3d4e5f60718293a4b5c6d7e8f9012345678901";
    const OTHER: &str = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233";

    #[test]
    fn events_path_encodes_the_filter_and_since() {
        assert_eq!(
            events_path(1_700_000_000_000_000_042),
            "/events?since=1700000000.000000042&filters=%7B%22type%22%3A%5B%22container%22%5D%7D"
        );
    }

    #[test]
    fn parses_dockerd_20_10_events() {
        let start = format!(
            r#"{{"status":"start","id":"{ID}","from":"local/busybox:latest","Type":"container","Action":"start","Actor":{{"ID":"{ID}","Attributes":{{"image":"local/busybox:latest","name":"web"}}}},"scope":"local","time":1795823089,"timeNano":1795823089448221700}}"#
        );
        assert_eq!(
            parse_event(start.as_bytes()).unwrap(),
            Some(DockerEvent {
                id: ID.into(),
                action: Action::Started,
                time_nano: 1_795_823_089_448_221_700,
                attributes: BTreeMap::new(),
            })
        );
        let rename = format!(
            r#"{{"Type":"container","Action":"rename","Actor":{{"ID":"{ID}","Attributes":{{"name":"new","oldName":"/old"}}}},"timeNano":5}}"#
        );
        assert_eq!(
            parse_event(rename.as_bytes()).unwrap().unwrap().action,
            Action::Renamed
        );
        for ignored in [
            format!(
                r#"{{"Type":"container","Action":"exec_start: sh -c true","Actor":{{"ID":"{ID}"}},"timeNano":5}}"#
            ),
            format!(
                r#"{{"Type":"container","Action":"health_status: healthy","Actor":{{"ID":"{ID}"}},"timeNano":5}}"#
            ),
            format!(r#"{{"Type":"network","Action":"destroy","Actor":{{"ID":"{ID}"}}}}"#),
            format!(r#"{{"Type":"container","Action":"kill","Actor":{{"ID":"{ID}"}}}}"#),
            r#"{"Type":"container","Action":"start","Actor":{"Attributes":null}}"#.to_string(),
        ] {
            assert_eq!(parse_event(ignored.as_bytes()).unwrap(), None, "{ignored}");
        }
        // Old daemons: no Actor, only `id` and `status`/`Action`.
        let old = format!(r#"{{"id":"{ID}","Action":"die","timeNano":7}}"#);
        assert_eq!(
            parse_event(old.as_bytes()).unwrap().unwrap(),
            DockerEvent {
                id: ID.into(),
                action: Action::Stopped,
                time_nano: 7,
                attributes: BTreeMap::new(),
            }
        );
        assert!(parse_event(b"{not json").is_err());
    }

    #[test]
    fn actions() {
        assert_eq!(classify("create"), Some(Action::Created));
        assert_eq!(classify("start"), Some(Action::Started));
        assert_eq!(classify("restart"), Some(Action::Started));
        assert_eq!(classify("unpause"), Some(Action::Started));
        assert_eq!(classify("die"), Some(Action::Stopped));
        assert_eq!(classify("stop"), Some(Action::Stopped));
        assert_eq!(classify("destroy"), Some(Action::Destroyed));
        assert_eq!(classify("rename"), Some(Action::Renamed));
        for none in ["kill", "oom", "pause", "attach", "exec_die"] {
            assert_eq!(classify(none), None, "{none}");
        }
    }

    #[test]
    fn own_id_from_cgroup_v1() {
        let cgroup = format!(
            "12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n"
        );
        assert_eq!(ids_in_cgroup(&cgroup), vec![ID.to_string()]);
        let systemd = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(ids_in_cgroup(&systemd), vec![ID.to_string()]);
    }

    #[test]
    fn no_own_id_on_a_host() {
        // cgroup v2 in a private namespace, and this VM's own (32-hex) cgroup path.
        assert!(ids_in_cgroup("0::/\n").is_empty());
        assert!(ids_in_cgroup(
            "9:name=systemd:/\n4:memory:/process_api/588aff30abe19f40847d5614e9bbf8c9\n0::/\n"
        )
        .is_empty());
        assert!(ids_in_cgroup(&format!("0::/user.slice/x{ID}y\n")).is_empty());
        // A host sees dockerd's shm mounts of other containers: not its own.
        let host = format!(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             812 29 0:55 / /var/lib/docker/containers/{OTHER}/mounts/shm rw,nosuid - tmpfs shm rw,size=65536k\n"
        );
        assert!(ids_in_mountinfo(&host).is_empty());
        let own = OwnContainer::from_sources("0::/\n", &host, "vm\n");
        assert!(own.is_empty());
        assert!(!own.is_own(OTHER));
    }

    #[test]
    fn own_id_from_mountinfo_with_cgroup_v2() {
        let mountinfo = format!(
            "605 540 0:60 / / rw,relatime master:312 - overlay overlay rw,lowerdir=/x\n\
             620 605 254:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw\n\
             621 605 254:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw\n\
             622 605 254:1 /containers/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/vdb rw\n\
             623 605 0:59 / /dev/shm rw - tmpfs shm rw\n"
        );
        assert_eq!(ids_in_mountinfo(&mountinfo), vec![ID.to_string()]);
        let own = OwnContainer::from_sources("0::/\n", &mountinfo, "custom-name\n");
        assert!(own.is_own(ID));
        assert!(!own.is_own(OTHER));
    }

    #[test]
    fn own_id_from_hostname_prefix() {
        let own = OwnContainer::from_sources("0::/\n", "", &format!("{}\n", &ID[..12]));
        assert!(own.is_own(ID));
        assert!(!own.is_own(OTHER));
        assert!(!own.is_own(&ID[..12]), "only full ids are compared");
        for not_an_id in ["vm", "3F1C9AD2B7E0", "3f1c9ad2b7e", "3f1c9ad2b7e0c"] {
            assert!(OwnContainer::from_sources("", "", not_an_id).is_empty());
        }
        assert!(OwnContainer::from_ids([ID.to_string()]).is_own(ID));
        assert!(!OwnContainer::none().is_own(ID));
    }

    #[test]
    fn events_stream_split_across_chunks_and_reads() {
        let (mut server, client) = UnixStream::pair().unwrap();
        let mut conn = EventsConn::new(client);
        conn.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let line = |action: &str, t: i64| {
            format!(
                r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{ID}"}},"timeNano":{t}}}"#
            ) + "\n"
        };
        let body = line("start", 1) + &line("exec_start: sh", 2) + &line("die", 3);
        let (a, b) = body.split_at(40);
        let mut events = Vec::new();
        let mut poll_all = |conn: &mut EventsConn| loop {
            match conn.poll().unwrap() {
                Poll::Idle => break,
                Poll::Events(e) => events.extend(e),
            }
        };
        server
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        server
            .write_all(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes())
            .unwrap();
        poll_all(&mut conn);
        server
            .write_all(format!("{:x}\r\n{b}\r\n", b.len()).as_bytes())
            .unwrap();
        poll_all(&mut conn);
        let actions: Vec<_> = events.iter().map(|e| (e.action, e.time_nano)).collect();
        assert_eq!(actions, [(Action::Started, 1), (Action::Stopped, 3)]);
        drop(server);
        let err = conn.poll().err().expect("EOF mid-body is an error");
        assert!(!err.is_empty());
    }

    #[test]
    fn events_stream_error_status_is_reported() {
        let (mut server, client) = UnixStream::pair().unwrap();
        let mut conn = EventsConn::new(client);
        let body = r#"{"message":"invalid filter"}"#;
        server
            .write_all(
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        let err = loop {
            match conn.poll() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err, "HTTP 400: invalid filter");
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let steps: Vec<_> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.step(), BACKOFF_START);
    }
}
