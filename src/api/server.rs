//! One listening socket served by one handler thread: `tiny_http` accepts and parses, the
//! handler thread answers requests one at a time (they only read atomics and small locks),
//! and watches the stop flag between requests.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tiny_http::{Header, Method, Request, Response, Server};

use super::{ApiState, POLL};

/// An answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        let mut body = serde_json::to_vec(value).unwrap_or_default();
        body.push(b'\n');
        Reply {
            status,
            content_type: "application/json",
            body,
            allow: None,
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            allow: None,
        }
    }

    pub fn error(status: u16, message: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "status": "error", "error": message }),
        )
    }
}

/// What a router sees of a request.
pub struct Incoming<'a> {
    pub method: &'static str,
    pub path: &'a str,
    /// The request, whose body is read only by routes that want it ([`Incoming::body`]).
    body: &'a mut Request,
}

impl Incoming<'_> {
    /// The request body, refused when longer than `limit`.
    pub fn body(&mut self, limit: usize) -> Result<Vec<u8>, String> {
        if let Some(len) = self.body.body_length() {
            if len > limit {
                return Err(format!(
                    "body of {len} bytes is over the limit of {limit} bytes"
                ));
            }
        }
        let mut buf = Vec::new();
        self.body
            .as_reader()
            .take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| format!("cannot read the body: {e}"))?;
        if buf.len() > limit {
            return Err(format!("body is over the limit of {limit} bytes"));
        }
        Ok(buf)
    }
}

/// A router: the endpoint label for `response_time_seconds` and the answer.
pub type Router = fn(&ApiState, &mut Incoming<'_>) -> (&'static str, Reply);

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Patch => "PATCH",
        Method::Options => "OPTIONS",
        _ => "OTHER",
    }
}

/// Binds `addr` and serves it on a new thread until `stop` is set.
pub fn spawn(
    name: &str,
    addr: &str,
    state: Arc<ApiState>,
    stop: Arc<AtomicBool>,
    router: Router,
) -> Result<(SocketAddr, JoinHandle<()>), String> {
    let server = Server::http(addr).map_err(|e| e.to_string())?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| "not an IP address".to_string())?;
    let thread = thread::Builder::new()
        .name(format!("{name}-http"))
        .spawn(move || serve(&server, &state, &stop, router))
        .map_err(|e| e.to_string())?;
    Ok((bound, thread))
}

fn serve(server: &Server, state: &ApiState, stop: &AtomicBool, router: Router) {
    while !stop.load(Relaxed) {
        let mut request = match server.recv_timeout(POLL) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("HTTP server: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        let started = Instant::now();
        let method = method_name(request.method());
        let url = request.url().to_string();
        let path = url.split(['?', '#']).next().unwrap_or("/");
        let (endpoint, reply) = router(
            state,
            &mut Incoming {
                method,
                path,
                body: &mut request,
            },
        );
        let mut response = Response::from_data(reply.body).with_status_code(reply.status);
        if let Ok(h) = Header::from_bytes("Content-Type", reply.content_type) {
            response = response.with_header(h);
        }
        if let Some(allow) = reply.allow {
            if let Ok(h) = Header::from_bytes("Allow", allow) {
                response = response.with_header(h);
            }
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!("HTTP {method} {path}: answer not sent: {e}");
        }
        state.observe_response(endpoint, method, started.elapsed());
    }
    state.close_ingest();
}
