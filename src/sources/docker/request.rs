//! HTTP requests to the Docker Engine API, built once per stream as the bytes to send. Every
//! builder takes the [`ApiVersion`] to speak (negotiated, see `super::version`).

use std::path::PathBuf;

use bytes::Bytes;

use super::version::ApiVersion;
use crate::decode::timestamp::format_since;

/// Turns `unix:///var/run/docker.sock` (or a bare path) into the socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.is_empty() || !path.starts_with('/') {
        return Err(format!(
            "docker socket {endpoint:?}: expected unix:///absolute/path or an absolute path"
        ));
    }
    Ok(PathBuf::from(path))
}

/// What to ask of a container's log stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogsQuery {
    /// Keep the stream open for new lines (`follow=1`), or end after what is logged so far.
    pub follow: bool,
    /// Only lines with a timestamp at or after this one (inclusive, nanoseconds).
    pub since_ns: Option<i64>,
    /// Only the last this many lines of the log, then (with `follow`) what comes after them.
    /// dockerd finds them from the end of the file, where `since` alone decodes the file
    /// from its start (see `crate::sources::docker::window`). `None`: every line (`tail=all`).
    pub tail: Option<u64>,
}

/// `GET /containers/{id}/logs` with stdout, stderr and timestamps always on: the timestamps
/// are what positions and deduplication are made of.
pub fn logs_request(version: ApiVersion, container_id: &str, query: LogsQuery) -> Bytes {
    let mut target = format!(
        "{}/containers/{container_id}/logs?stdout=1&stderr=1&timestamps=1&follow={}",
        version.prefix(),
        u8::from(query.follow)
    );
    if let Some(since) = query.since_ns {
        target.push_str("&since=");
        target.push_str(&format_since(since));
    }
    if let Some(tail) = query.tail {
        target.push_str("&tail=");
        target.push_str(&tail.to_string());
    }
    get_request(&target)
}

/// `POST /containers/{id}/attach?stream=1&stdout=1&stderr=1`: the container's output from
/// the moment dockerd registers the attach on, as multiplexed frames (raw for a TTY) without
/// timestamps, until the container exits. On a created container it waits for the start, so
/// an attach made at `create` carries every line (see `crate::sources::docker::safety_net`). No `logs=1`:
/// dockerd reads the log file and then attaches, with nothing tying the two together.
pub fn attach_request(version: ApiVersion, container_id: &str) -> Bytes {
    let target = format!(
        "{}/containers/{container_id}/attach?stream=1&stdout=1&stderr=1",
        version.prefix()
    );
    post_request(&target)
}

/// A POST without a body; as [`get_request`], one request per connection.
pub fn post_request(target: &str) -> Bytes {
    Bytes::from(format!(
        "POST {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: log_capturer/{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    ))
}

/// A GET for `target`, one request per connection: `Connection: close` makes the daemon end
/// the connection with the response, so EOF marks the end even where a body's own framing
/// would be missing. (A kept-alive connection would also outlive a finished `follow=0`
/// stream.)
pub fn get_request(target: &str) -> Bytes {
    Bytes::from(format!(
        "GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: log_capturer/{}\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_request_carries_since_as_seconds_dot_nanos() {
        let req = logs_request(
            ApiVersion::new(1, 44),
            "abc",
            LogsQuery {
                follow: true,
                since_ns: Some(1_700_000_000_000_000_042),
                tail: None,
            },
        );
        let text = std::str::from_utf8(&req).unwrap();
        assert!(text.starts_with(
            "GET /v1.44/containers/abc/logs?stdout=1&stderr=1&timestamps=1&follow=1&since=1700000000.000000042 HTTP/1.1\r\n"
        ), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn logs_request_carries_tail() {
        let req = logs_request(
            ApiVersion::new(1, 41),
            "abc",
            LogsQuery {
                follow: false,
                since_ns: None,
                tail: Some(1),
            },
        );
        let text = std::str::from_utf8(&req).unwrap();
        assert!(
            text.starts_with(
                "GET /v1.41/containers/abc/logs?stdout=1&stderr=1&timestamps=1&follow=0&tail=1 HTTP/1.1\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn attach_request_is_a_bodyless_post() {
        let req = attach_request(ApiVersion::new(1, 41), "abc");
        let text = std::str::from_utf8(&req).unwrap();
        assert!(
            text.starts_with(
                "POST /v1.41/containers/abc/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Length: 0\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn socket_endpoints() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").unwrap(),
            PathBuf::from("/var/run/docker.sock")
        );
        assert_eq!(
            socket_path("/tmp/d.sock").unwrap(),
            PathBuf::from("/tmp/d.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:2375")
            .unwrap_err()
            .contains("tcp://"));
    }
}
