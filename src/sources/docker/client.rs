//! A blocking client for the Docker Engine API's control calls (list, inspect, the events
//! connection): short request/response exchanges, off the hot path, where a plain socket with
//! a timeout is the simplest correct thing. Log streams go through the io engines instead.
//!
//! The client negotiates the API version ([`super::version`]) before its first call, again
//! before every events connection (a reconnect: dockerd may have been upgraded in between),
//! after any call that could not reach the engine, and once when the engine refuses the
//! version spoken (`400 client version ... is too old`), retrying that call. What it learns
//! (reachable, version, failed calls) goes to the [`DockerStatus`] it shares with the reader
//! and the HTTP API.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::request::get_request;
use super::status::DockerStatus;
use super::version::{self, ApiVersion, EngineVersions};
use crate::decode::http::{Event, ResponseDecoder};

/// A control call answering slower than this is treated as failed.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Larger answers are refused: a container list of tens of thousands still fits.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Why a control call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer: connect, send or receive failed, or the answer was cut short.
    Unreachable,
    /// The engine answered with an error status, or with something that does not parse.
    Answer,
    /// The engine's API versions and this program's do not meet.
    Incompatible,
}

/// A failed control call, naming the call.
#[derive(Debug)]
pub struct ClientError {
    pub call: String,
    pub status: Option<u16>,
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "docker {}: HTTP {status}: {}", self.call, self.message),
            None => write!(f, "docker {}: {}", self.call, self.message),
        }
    }
}

impl std::error::Error for ClientError {}

/// One container of `GET /containers/json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub state: String,
}

/// What the capturer needs of `GET /containers/{id}/json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub running: bool,
    /// Creation time (inspect's `Created`), nanoseconds since the Unix epoch; `None` when the
    /// daemon's text does not parse.
    pub created: Option<i64>,
    /// Last start time (inspect's `State.StartedAt`), nanoseconds since the Unix epoch; `None`
    /// for a container never started, or when the text does not parse.
    pub started: Option<i64>,
    /// dockerd rotates the container's log file (`--log-opt max-size`, or the daemon's
    /// default, which dockerd copies into the container's config at create; or the `local`
    /// driver): lines can be deleted before a reader got them (see `crate::sources::docker::replay`). Only
    /// then does the capture keep a replay window for it.
    pub log_rotates: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    created: String,
    config: InspectConfig,
    state: InspectState,
    #[serde(default)]
    host_config: InspectHostConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectHostConfig {
    #[serde(default)]
    log_config: InspectLogConfig,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct InspectLogConfig {
    #[serde(default, rename = "Type")]
    driver: String,
    #[serde(default)]
    config: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    #[serde(default)]
    running: bool,
    #[serde(default)]
    started_at: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionBody {
    #[serde(default)]
    api_version: String,
    #[serde(rename = "MinAPIVersion", default)]
    min_api_version: String,
}

/// dockerd's answer to a version outside its range: `client version 1.41 is too old.
/// Minimum supported API version is 1.44, ...` or `... is too new. Maximum ...`.
fn is_version_refusal(status: u16, message: &str) -> bool {
    status == 400
        && message.starts_with("client version ")
        && (message.contains("is too old") || message.contains("is too new"))
}

/// A client for one Docker socket. Each call opens its own connection and closes it. Clones
/// share one [`DockerStatus`].
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    status: Arc<DockerStatus>,
}

impl Client {
    /// A client that negotiates the API version.
    pub fn new(socket: &Path) -> Self {
        Client::with_status(socket, Arc::new(DockerStatus::new(None)))
    }

    /// A client reporting to (and taking its version from) `status`.
    pub fn with_status(socket: &Path, status: Arc<DockerStatus>) -> Self {
        Client {
            socket: socket.to_path_buf(),
            status,
        }
    }

    pub fn status(&self) -> &Arc<DockerStatus> {
        &self.status
    }

    /// The version to speak, negotiated first when due (see the module docs).
    pub fn api_version(&self) -> Result<ApiVersion, ClientError> {
        if self.status.needs_negotiation() {
            self.negotiate()
        } else {
            Ok(self.status.request_version())
        }
    }

    /// Asks the engine for its versions (`GET /version`, else `/_ping`'s `API-Version`
    /// header, both unversioned) and chooses one; a pinned version is returned as is.
    pub fn negotiate(&self) -> Result<ApiVersion, ClientError> {
        if let Some(pinned) = self.status.pinned() {
            return Ok(pinned);
        }
        let engine = self.engine_versions()?;
        match version::negotiate(engine) {
            Ok(chosen) => {
                self.status.mark_up();
                let before = self.status.negotiated(engine, chosen);
                if before != Some(chosen) {
                    let min = engine.min.map_or("unknown".into(), |m| m.to_string());
                    tracing::info!(
                        "docker API version {chosen} (engine: {} to {}; this program: {} to {})",
                        min,
                        engine.max,
                        ApiVersion::LOWEST,
                        ApiVersion::HIGHEST
                    );
                }
                Ok(chosen)
            }
            Err(message) => {
                self.status.mark_down("version", message.clone());
                Err(ClientError {
                    call: "GET /version".into(),
                    status: None,
                    kind: ErrorKind::Incompatible,
                    message,
                })
            }
        }
    }

    fn engine_versions(&self) -> Result<EngineVersions, ClientError> {
        let unreachable = |call: &str, message: String| {
            self.status.mark_down("version", message.clone());
            ClientError {
                call: call.into(),
                status: None,
                kind: ErrorKind::Unreachable,
                message,
            }
        };
        let (status, header, body) = self
            .get("/version")
            .map_err(|m| unreachable("GET /version", m))?;
        if (200..300).contains(&status) {
            if let Ok(b) = serde_json::from_slice::<VersionBody>(&body) {
                if let Ok(max) = ApiVersion::parse(&b.api_version) {
                    return Ok(EngineVersions {
                        max,
                        min: ApiVersion::parse(&b.min_api_version).ok(),
                    });
                }
            }
        }
        // Every dockerd answer carries its default (highest) version in this header.
        let header = match header {
            Some(h) => Some(h),
            None => {
                self.get("/_ping")
                    .map_err(|m| unreachable("GET /_ping", m))?
                    .1
            }
        };
        match header.as_deref().map(ApiVersion::parse) {
            Some(Ok(max)) => Ok(EngineVersions { max, min: None }),
            _ => {
                self.status.count_error("version");
                Err(ClientError {
                    call: "GET /version".into(),
                    status: Some(status),
                    kind: ErrorKind::Answer,
                    message: "the engine named no API version (no ApiVersion in /version, \
                              no API-Version header)"
                        .into(),
                })
            }
        }
    }

    /// Running containers, each inspected (the list does not say whether a container has a
    /// TTY, and a TTY stream has no frame headers).
    pub fn running_containers(&self) -> Result<Vec<ContainerInfo>, ClientError> {
        self.containers(false)
    }

    /// Running containers, or with `all` every container, each inspected.
    pub fn containers(&self, all: bool) -> Result<Vec<ContainerInfo>, ClientError> {
        let list = self.list_containers(all)?;
        let mut out = Vec::with_capacity(list.len());
        for summary in list {
            match self.inspect(&summary.id) {
                Ok(info) if all || info.running => out.push(info),
                Ok(_) => {}
                // Gone between the list and the inspect.
                Err(e) if e.status == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn inspect(&self, id: &str) -> Result<ContainerInfo, ClientError> {
        let raw: Inspect =
            self.get_json("containers_inspect", &format!("/containers/{id}/json"))?;
        Ok(ContainerInfo {
            id: raw.id,
            name: raw.name.trim_start_matches('/').to_string(),
            image: raw.config.image,
            labels: raw.config.labels.unwrap_or_default(),
            tty: raw.config.tty,
            running: raw.state.running,
            created: crate::decode::timestamp::parse_rfc3339_nanos(raw.created.as_bytes()).ok(),
            // A container never started says `0001-01-01T00:00:00Z`.
            started: crate::decode::timestamp::parse_rfc3339_nanos(raw.state.started_at.as_bytes())
                .ok()
                .filter(|&ns| ns > 0),
            // The `local` driver rotates without being asked (20 MB files by default).
            log_rotates: raw.host_config.log_config.driver == "local"
                || raw
                    .host_config
                    .log_config
                    .config
                    .is_some_and(|c| c.get("max-size").is_some_and(|s| !s.is_empty())),
        })
    }

    /// `GET /containers/json`: running containers, or every container with `all`.
    pub fn list_containers(&self, all: bool) -> Result<Vec<ContainerSummary>, ClientError> {
        if all {
            self.get_json("containers_list", "/containers/json?all=1")
        } else {
            self.get_json("containers_list", "/containers/json")
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a connection and sends `GET /v<version>{path}` (`path` already URL-encoded),
    /// for responses that stream (`/events`, counted under `endpoint`), after negotiating the
    /// version again: a new stream is a reconnect. The caller reads the response from the
    /// returned socket, which has `read_timeout` set so that its reader can look up between
    /// reads. The connection is a plain blocking socket owned by the caller: dropping it
    /// closes it, and nothing stays behind in the kernel.
    pub fn open_stream(
        &self,
        endpoint: &'static str,
        path: &str,
        read_timeout: Duration,
    ) -> Result<UnixStream, ClientError> {
        let version = self.negotiate()?;
        let fail = |message: String| {
            self.status.mark_down(endpoint, message.clone());
            ClientError {
                call: format!("GET {path}"),
                status: None,
                kind: ErrorKind::Unreachable,
                message,
            }
        };
        let mut conn = UnixStream::connect(&self.socket)
            .map_err(|e| fail(format!("connect {}: {e}", self.socket.display())))?;
        conn.set_read_timeout(Some(read_timeout))
            .map_err(|e| fail(e.to_string()))?;
        conn.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        conn.write_all(&get_request(&format!("{}{path}", version.prefix())))
            .map_err(|e| fail(format!("send: {e}")))?;
        Ok(conn)
    }

    /// A streamed response of `endpoint` failed after it was opened (counted; the next
    /// [`open_stream`](Self::open_stream) negotiates again anyway).
    pub fn stream_failed(&self, endpoint: &'static str) {
        self.status.count_error(endpoint);
    }

    /// Connects and sends `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1` (see
    /// [`super::attach_request`]), leaving the answer unread: the caller hands the socket to
    /// an io engine ([`crate::io::Engine::adopt`]).
    pub fn send_attach(&self, id: &str) -> Result<UnixStream, ClientError> {
        let conn = self.connect().map_err(|message| ClientError {
            call: format!("POST /containers/{id}/attach"),
            status: None,
            kind: ErrorKind::Unreachable,
            message,
        })?;
        self.send_attach_on(conn, id)
    }

    /// A new connection to the daemon, for [`Client::send_attach_on`]: one made ahead saves
    /// dockerd's accept when the request is urgent.
    pub fn connect(&self) -> Result<UnixStream, String> {
        UnixStream::connect(&self.socket)
            .map_err(|e| format!("connect {}: {e}", self.socket.display()))
    }

    /// [`Client::send_attach`] on a connection made before (by [`Client::connect`]).
    pub fn send_attach_on(
        &self,
        mut conn: UnixStream,
        id: &str,
    ) -> Result<UnixStream, ClientError> {
        let fail = |message: String| ClientError {
            call: format!("POST /containers/{id}/attach"),
            status: None,
            kind: ErrorKind::Unreachable,
            message,
        };
        conn.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        conn.write_all(&super::attach_request(self.status.request_version(), id))
            .map_err(|e| fail(format!("send: {e}")))?;
        Ok(conn)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<T, ClientError> {
        let call = format!("GET {path}");
        let mut retried = false;
        loop {
            let version = self.api_version()?;
            let (status, _, body) = match self.get(&format!("{}{path}", version.prefix())) {
                Ok(answer) => answer,
                Err(message) => {
                    self.status.mark_down(endpoint, message.clone());
                    return Err(ClientError {
                        call,
                        status: None,
                        kind: ErrorKind::Unreachable,
                        message,
                    });
                }
            };
            self.status.mark_up();
            if !(200..300).contains(&status) {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
                if is_version_refusal(status, &message)
                    && !retried
                    && self.status.pinned().is_none()
                {
                    tracing::warn!("docker {call}: {message}; negotiating the API version again");
                    self.status.invalidate();
                    retried = true;
                    continue;
                }
                // 404 and 409 are answers about a container (gone, being removed), not
                // failures of the engine.
                if !matches!(status, 404 | 409) {
                    self.status.count_error(endpoint);
                }
                return Err(ClientError {
                    call,
                    status: Some(status),
                    kind: ErrorKind::Answer,
                    message,
                });
            }
            return serde_json::from_slice(&body).map_err(|e| {
                self.status.count_error(endpoint);
                ClientError {
                    call,
                    status: Some(status),
                    kind: ErrorKind::Answer,
                    message: format!("unexpected answer: {e}"),
                }
            });
        }
    }

    /// One exchange: status, `API-Version` header, body.
    fn get(&self, target: &str) -> Result<(u16, Option<String>, Vec<u8>), String> {
        let mut conn = UnixStream::connect(&self.socket)
            .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
        conn.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        conn.write_all(&get_request(target))
            .map_err(|e| format!("send: {e}"))?;
        let mut decoder = ResponseDecoder::new();
        let mut body = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf).map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                decoder.finish().map_err(|e| e.to_string())?;
                break;
            }
            let mut input = Bytes::copy_from_slice(&buf[..n]);
            while let Some(event) = decoder.decode(&mut input).map_err(|e| e.to_string())? {
                if let Event::Data(span) = event {
                    body.extend_from_slice(&span.bytes);
                    if body.len() > MAX_BODY {
                        return Err(format!("answer larger than {MAX_BODY} bytes"));
                    }
                }
            }
            if decoder.is_done() {
                break;
            }
        }
        let head = decoder.head().ok_or("no response head")?;
        let api_version = head.header("api-version").map(str::to_string);
        Ok((head.status, api_version, body))
    }
}
