//! A blocking client for the Docker Engine API's control calls (list, inspect): short
//! request/response exchanges, off the hot path, where a plain socket with a timeout is the
//! simplest correct thing. Log streams go through the io engines instead.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::request::{get_request, API_VERSION};
use crate::decode::http::{Event, ResponseDecoder};

/// A control call answering slower than this is treated as failed.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Larger answers are refused: a container list of tens of thousands still fits.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A failed control call, naming the call.
#[derive(Debug)]
pub struct ClientError {
    pub call: String,
    pub status: Option<u16>,
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
    /// dockerd rotates the container's log file (`--log-opt max-size`, or the daemon's
    /// default): lines can be deleted before a reader got them (see `crate::replay`).
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
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// A client for one Docker socket. Each call opens its own connection and closes it.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
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
        let raw: Inspect = self.get_json(&format!("/containers/{id}/json"))?;
        Ok(ContainerInfo {
            id: raw.id,
            name: raw.name.trim_start_matches('/').to_string(),
            image: raw.config.image,
            labels: raw.config.labels.unwrap_or_default(),
            tty: raw.config.tty,
            running: raw.state.running,
            created: crate::decode::timestamp::parse_rfc3339_nanos(raw.created.as_bytes()).ok(),
            log_rotates: raw
                .host_config
                .log_config
                .config
                .is_some_and(|c| c.get("max-size").is_some_and(|s| !s.is_empty())),
        })
    }

    /// `GET /containers/json`: running containers, or every container with `all`.
    pub fn list_containers(&self, all: bool) -> Result<Vec<ContainerSummary>, ClientError> {
        if all {
            self.get_json("/containers/json?all=1")
        } else {
            self.get_json("/containers/json")
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Opens a connection and sends `GET /{API_VERSION}{path}` (`path` already URL-encoded),
    /// for responses that stream (`/events`): the caller reads the response from the returned
    /// socket, which has `read_timeout` set so that its reader can look up between reads. The
    /// connection is a plain blocking socket owned by the caller: dropping it closes it, and
    /// nothing stays behind in the kernel.
    pub fn open_stream(
        &self,
        path: &str,
        read_timeout: Duration,
    ) -> Result<UnixStream, ClientError> {
        let fail = |message: String| ClientError {
            call: format!("GET {path}"),
            status: None,
            message,
        };
        let mut conn = UnixStream::connect(&self.socket)
            .map_err(|e| fail(format!("connect {}: {e}", self.socket.display())))?;
        conn.set_read_timeout(Some(read_timeout))
            .map_err(|e| fail(e.to_string()))?;
        conn.set_write_timeout(Some(TIMEOUT))
            .map_err(|e| fail(e.to_string()))?;
        conn.write_all(&get_request(&format!("/{API_VERSION}{path}")))
            .map_err(|e| fail(format!("send: {e}")))?;
        Ok(conn)
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ClientError> {
        let call = format!("GET {path}");
        let (status, body) = self
            .get(&format!("/{API_VERSION}{path}"))
            .map_err(|message| ClientError {
                call: call.clone(),
                status: None,
                message,
            })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError {
                call,
                status: Some(status),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| ClientError {
            call,
            status: Some(status),
            message: format!("unexpected answer: {e}"),
        })
    }

    fn get(&self, target: &str) -> Result<(u16, Vec<u8>), String> {
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
        let status = decoder.head().map(|h| h.status).ok_or("no response head")?;
        Ok((status, body))
    }
}
