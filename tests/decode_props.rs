//! Property tests of the whole decoding stack: lines are encoded as dockerd would send them
//! (frames or a raw TTY stream, 16 KiB partial messages with their own timestamps, chunked
//! HTTP with a realistic head), delivered in random splits, and must come back exactly.

use bytes::Bytes;
use log_capturer::decode::frame::{encode_header, MAX_FRAME_LEN};
use log_capturer::decode::lines::PARTIAL_MESSAGE_LEN;
use log_capturer::decode::timestamp::format_rfc3339_nanos;
use log_capturer::decode::{DecodeError, DecodeOptions, LogDecoder, LogLine, StreamKind};
use proptest::prelude::*;

/// xorshift64*: the encoder's and the splitter's choices, derived from one proptest seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A line's text: anything but `\n`.
#[derive(Debug, Clone)]
enum Text {
    Literal(Vec<u8>),
    /// A long line, generated from a seed rather than by proptest byte by byte.
    Long {
        len: usize,
        seed: u64,
    },
}

impl Text {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Text::Literal(v) => v.clone(),
            Text::Long { len, seed } => {
                let mut r = Rng::new(*seed);
                (0..*len)
                    .map(|_| match r.below(64) as u8 {
                        0 => b'\r',
                        1 => b' ',
                        2 => 0xff,
                        n => b'!' + n,
                    })
                    .collect()
            }
        }
    }
}

fn text() -> impl Strategy<Value = Text> {
    let short = prop::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 0..200);
    let p = PARTIAL_MESSAGE_LEN;
    let long_len = prop_oneof![
        Just(p - 2),
        Just(p - 1),
        Just(p),
        Just(p + 1),
        Just(2 * p - 1),
        Just(2 * p),
        p + 2..3 * p + 100,
    ];
    prop_oneof![
        1 => Just(Text::Literal(Vec::new())),
        1 => Just(Text::Literal(b"2026-11-27T22:23:12.750760435Z looks like a prefix".to_vec())),
        8 => short.prop_map(Text::Literal),
        2 => (long_len, any::<u64>()).prop_map(|(len, seed)| Text::Long { len, seed }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    tty: bool,
    timestamps: bool,
    lines: Vec<(StreamKind, Text)>,
    seed: u64,
    /// 0: one message per HTTP chunk; 1: several per chunk; 2: chunks cut anywhere.
    chunking: u8,
    /// 0: one byte at a time (small responses only); 1: 1-64 bytes; 2: up to 8 KiB; 3: whole.
    delivery: u8,
}

fn case() -> impl Strategy<Value = Case> {
    let line = (
        prop_oneof![Just(StreamKind::Stdout), Just(StreamKind::Stderr)],
        text(),
    );
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(line, 0..24),
        any::<u64>(),
        0u8..3,
        0u8..4,
    )
        .prop_map(|(tty, timestamps, lines, seed, chunking, delivery)| Case {
            tty,
            timestamps,
            lines,
            seed,
            chunking,
            delivery,
        })
}

const HEAD: &str = "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\n\
Content-Type: application/vnd.docker.raw-stream\r\nDate: Fri, 27 Nov 2026 22:23:12 GMT\r\n\
Docker-Experimental: false\r\nOstype: linux\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n\
Transfer-Encoding: chunked\r\n\r\n";

const T0: i64 = 1_795_818_192_750_760_435;

/// Encodes `case` as dockerd would; returns the response bytes and the lines expected back.
fn encode(case: &Case) -> (Vec<u8>, Vec<LogLine>) {
    let mut rng = Rng::new(case.seed);
    let mut ts = T0 + rng.below(1 << 40) as i64;
    let mut stamp = |rng: &mut Rng| {
        // Equal timestamps happen (coarse clocks); so do large gaps.
        ts += [0, 1, 999, 1_000_000_000][rng.below(4) as usize];
        ts
    };

    // Each line as dockerd's copier cuts it into messages.
    struct Msg {
        stream: StreamKind,
        text: Vec<u8>,
        line: usize,
        last: bool,
    }
    let mut queues: [Vec<Msg>; 2] = [Vec::new(), Vec::new()];
    let mut texts = Vec::new();
    for (i, (stream, text)) in case.lines.iter().enumerate() {
        let stream = if case.tty {
            StreamKind::Stdout
        } else {
            *stream
        };
        let t = text.bytes();
        let mut content = t.clone();
        if case.tty {
            content.push(b'\r');
        }
        let mut parts: Vec<Vec<u8>> = content
            .chunks(PARTIAL_MESSAGE_LEN)
            .map(<[u8]>::to_vec)
            .collect();
        if content.len() % PARTIAL_MESSAGE_LEN == 0 {
            parts.push(Vec::new());
        }
        let n = parts.len();
        let q = &mut queues[(stream == StreamKind::Stderr) as usize];
        for (j, mut p) in parts.into_iter().enumerate() {
            if j == n - 1 {
                p.push(b'\n');
            }
            q.push(Msg {
                stream,
                text: p,
                line: i,
                last: j == n - 1,
            });
        }
        texts.push((stream, t));
    }

    // Interleave the two streams' messages, each stream keeping its order.
    let [qa, qb] = queues;
    let (mut a, mut b) = (qa.into_iter().peekable(), qb.into_iter().peekable());
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut first_ts = vec![None; texts.len()];
    let mut expected = Vec::new();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => rng.chance(50),
        };
        let m = if take_a { a.next() } else { b.next() }.unwrap();
        let t = case.timestamps.then(|| stamp(&mut rng));
        if first_ts[m.line].is_none() {
            first_ts[m.line] = Some(t);
        }
        let mut payload = Vec::new();
        if let Some(t) = t {
            payload.extend_from_slice(format_rfc3339_nanos(t).as_bytes());
            payload.push(b' ');
        }
        payload.extend_from_slice(&m.text);
        if case.tty {
            units.push(payload);
        } else {
            let kind = match m.stream {
                StreamKind::Stdout if rng.chance(10) => 0, // stdin counts as stdout
                StreamKind::Stdout => 1,
                StreamKind::Stderr => 2,
            };
            let mut f = encode_header(kind, payload.len() as u32).to_vec();
            f.extend_from_slice(&payload);
            units.push(f);
        }
        if m.last {
            expected.push(LogLine {
                stream: m.stream,
                timestamp_ns: first_ts[m.line].unwrap(),
                last_timestamp_ns: t,
                message: Bytes::from(texts[m.line].1.clone()),
                truncated: false,
            });
        }
    }

    let chunks: Vec<Vec<u8>> = match case.chunking {
        0 => units,
        1 => {
            let mut out = Vec::new();
            let mut it = units.into_iter().peekable();
            while it.peek().is_some() {
                let n = 1 + rng.below(8) as usize;
                out.push(it.by_ref().take(n).flatten().collect());
            }
            out
        }
        _ => {
            let body: Vec<u8> = units.concat();
            let mut out = Vec::new();
            let mut rest = &body[..];
            while !rest.is_empty() {
                let n = (1 + rng.below(5000) as usize).min(rest.len());
                out.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            out
        }
    };
    let mut resp = HEAD.as_bytes().to_vec();
    for c in chunks {
        let ext = if rng.chance(5) { ";x=y" } else { "" };
        resp.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
        resp.extend_from_slice(&c);
        resp.extend_from_slice(b"\r\n");
    }
    resp.extend_from_slice(b"0\r\n\r\n");
    (resp, expected)
}

/// Cuts `all` into zero-copy slices per the delivery mode.
fn deliveries(all: &Bytes, mode: u8, rng: &mut Rng) -> Vec<Bytes> {
    let max = match mode {
        0 if all.len() <= 40_000 => 1,
        0 | 1 => 64,
        2 => 8192,
        _ => usize::MAX,
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < all.len() {
        let n = if max == 1 {
            1
        } else {
            (1 + rng.below(max.min(1 << 30) as u64) as usize).min(all.len() - at)
        };
        out.push(all.slice(at..at + n));
        at += n;
    }
    out
}

fn decode(opts: DecodeOptions, parts: &[Bytes]) -> (Vec<LogLine>, Result<(), DecodeError>) {
    let mut d = LogDecoder::new(opts);
    let mut out = Vec::new();
    for p in parts {
        if let Err(e) = d.feed(p.clone(), &mut out) {
            return (out, Err(e));
        }
    }
    let r = d.finish(&mut out);
    (out, r)
}

proptest! {
    // Cases are large (lines up to 48 KiB): bound shrinking so a failure reports in seconds.
    #![proptest_config(ProptestConfig {
        cases: 384,
        max_shrink_time: 20_000,
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decoded_lines_equal_the_originals(case in case()) {
        let (resp, expected) = encode(&case);
        let all = Bytes::from(resp);
        let mut rng = Rng::new(case.seed ^ 0xD1B5_4A32_D192_ED03);
        let parts = deliveries(&all, case.delivery, &mut rng);
        let opts = DecodeOptions { tty: case.tty, timestamps: case.timestamps };
        let (out, r) = decode(opts, &parts);
        prop_assert_eq!(r, Ok(()));
        prop_assert_eq!(out.len(), expected.len());
        for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
            prop_assert_eq!(got, want, "line {}", i);
        }
    }

    #[test]
    fn garbage_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        with_head in any::<bool>(),
        tty in any::<bool>(),
        timestamps in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut all = if with_head { HEAD.as_bytes().to_vec() } else { Vec::new() };
        all.extend_from_slice(&data);
        let all = Bytes::from(all);
        let parts = deliveries(&all, (seed % 4) as u8, &mut Rng::new(seed));
        let (_, r) = decode(DecodeOptions { tty, timestamps }, &parts);
        if let Err(e) = r {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn corrupted_streams_never_panic(
        case in case(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let (mut resp, _) = encode(&case);
        for (at, byte) in flips {
            let i = at.index(resp.len());
            resp[i] = byte;
        }
        let all = Bytes::from(resp);
        let parts = deliveries(&all, case.delivery, &mut Rng::new(case.seed));
        let opts = DecodeOptions { tty: case.tty, timestamps: case.timestamps };
        let mut d = LogDecoder::new(opts);
        let mut out = Vec::new();
        let mut first_err = None;
        for p in parts {
            match d.feed(p, &mut out) {
                Ok(()) => prop_assert!(first_err.is_none()),
                Err(e) => {
                    // Once dead, the decoder keeps saying the same thing.
                    if let Some(prev) = &first_err {
                        prop_assert_eq!(prev, &e);
                    }
                    first_err = Some(e);
                }
            }
        }
        let r = d.finish(&mut out);
        if let Some(prev) = first_err {
            prop_assert_eq!(r, Err(prev));
        }
    }
}

// Malformed inputs: each error names the byte offset where it was found.

fn stamped(t: i64, text: &str) -> Vec<u8> {
    format!("{} {text}", format_rfc3339_nanos(T0 + t)).into_bytes()
}

fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = encode_header(stream, payload.len() as u32).to_vec();
    v.extend_from_slice(payload);
    v
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut v = format!("{:x}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

const MUX: DecodeOptions = DecodeOptions {
    tty: false,
    timestamps: true,
};

/// Decodes `resp` whole and byte by byte; both must fail the same way.
fn fail(opts: DecodeOptions, resp: &[u8]) -> DecodeError {
    let whole = decode(opts, &[Bytes::copy_from_slice(resp)]).1.unwrap_err();
    let parts: Vec<Bytes> = resp.iter().map(|b| Bytes::copy_from_slice(&[*b])).collect();
    let bytewise = decode(opts, &parts).1.unwrap_err();
    assert_eq!(whole, bytewise);
    whole
}

fn assert_names_offset(e: &DecodeError, offset: usize, what: &str) {
    let msg = e.to_string();
    assert_eq!(e.offset(), Some(offset as u64), "{msg}");
    assert!(msg.contains(&format!("at byte {offset}")), "{msg}");
    assert!(msg.contains(what), "{msg:?} should mention {what:?}");
}

#[test]
fn bad_chunk_size() {
    let mut resp = HEAD.as_bytes().to_vec();
    resp.extend(chunk(&frame(1, &stamped(0, "ok\n"))));
    let at = resp.len();
    resp.extend_from_slice(b"1g\r\n");
    assert_names_offset(&fail(MUX, &resp), at + 1, "chunk size");

    let mut resp = HEAD.as_bytes().to_vec();
    let at = resp.len();
    resp.extend_from_slice(b"fffffffffffffffff\r\n");
    assert_names_offset(&fail(MUX, &resp), at + 16, "overflows");
}

#[test]
fn oversized_frame() {
    let mut resp = HEAD.as_bytes().to_vec();
    let mut body = frame(2, &stamped(0, "ok\n"));
    let at_body = body.len();
    body.extend_from_slice(&encode_header(1, MAX_FRAME_LEN + 1));
    resp.extend(chunk(&body));
    let at = HEAD.len() + format!("{:x}\r\n", body.len()).len() + at_body;
    let e = fail(MUX, &resp);
    assert_names_offset(&e, at, &format!("{}", MAX_FRAME_LEN + 1));
}

#[test]
fn bad_timestamp() {
    let mut resp = HEAD.as_bytes().to_vec();
    let payload = b"2026-11-27T25:23:12.750760435Z hour 25\n";
    resp.extend(chunk(&frame(1, payload)));
    let at = HEAD.len() + 4 + 8 + 11; // chunk line "2f\r\n", header, "2026-11-27T"
    assert_names_offset(&fail(MUX, &resp), at, "hour out of range");

    // Raw TTY stream: a line without a prefix.
    let mut resp = HEAD.as_bytes().to_vec();
    resp.extend(chunk(&stamped(0, "fine\r\n")));
    let at = resp.len() + 4; // past the chunk-size line "13\r\n"
    resp.extend(chunk(b"no timestamp here\r\n"));
    let tty = DecodeOptions {
        tty: true,
        timestamps: true,
    };
    assert_names_offset(&fail(tty, &resp), at, "bad timestamp");
}

#[test]
fn stream_type_7() {
    let mut resp = HEAD.as_bytes().to_vec();
    let mut body = frame(1, &stamped(0, "ok\n"));
    let at_body = body.len();
    body.extend(frame(7, b"?"));
    resp.extend(chunk(&body));
    let at = HEAD.len() + format!("{:x}\r\n", body.len()).len() + at_body;
    assert_names_offset(&fail(MUX, &resp), at, "stream type 7");
}

#[test]
fn truncated_stream() {
    let mut resp = HEAD.as_bytes().to_vec();
    resp.extend(chunk(&frame(1, &stamped(0, "complete\n"))));
    resp.extend(chunk(&frame(1, &stamped(1, "cut short\n"))));
    let cut = resp.len() - 7;
    let e = fail(MUX, &resp[..cut]);
    assert_names_offset(&e, cut, "connection closed");
    let (out, _) = decode(MUX, &[Bytes::copy_from_slice(&resp[..cut])]);
    assert_eq!(
        out.len(),
        1,
        "the complete line comes out, the cut one does not"
    );

    // Chunked encoding complete, but a frame is cut: the frame layer notices.
    let mut resp = HEAD.as_bytes().to_vec();
    let f = frame(1, &stamped(0, "half"));
    resp.extend(chunk(&f[..10]));
    let end = resp.len();
    resp.extend_from_slice(b"0\r\n\r\n");
    let e = fail(MUX, &resp);
    assert_names_offset(&e, end - 2, "inside a frame");
}

#[test]
fn daemon_error_frame() {
    let mut resp = HEAD.as_bytes().to_vec();
    resp.extend(chunk(&frame(
        3,
        b"Error grabbing logs: log message is too large\n",
    )));
    let e = fail(MUX, &resp);
    assert!(
        e.to_string()
            .starts_with("dockerd: Error grabbing logs: log message is too large"),
        "{e}"
    );
}

#[test]
fn no_such_container() {
    let body = r#"{"message":"No such container: 0123456789ab"}"#;
    let resp = format!(
        "HTTP/1.1 404 Not Found\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}\n",
        body.len() + 1
    );
    let e = fail(MUX, resp.as_bytes());
    assert_eq!(e.status(), Some(404));
    assert!(
        e.to_string().contains("No such container: 0123456789ab"),
        "{e}"
    );
}
