//! `kubectl port-forward` into a pod: the agent's end of `pods/portforward`. The API server
//! passes the client's WebSocket upgrade through to the gateway unchanged (as kube-apiserver
//! does to the kubelet); here the socket speaks `SPDY/3.1+portforward.k8s.io`, the tunnelling
//! kubectl 1.31+ uses: its binary messages form one byte stream of SPDY/3.1 frames
//! ([`spdy`]). Each forwarded connection is a pair of SPDY streams with one `requestid`: an
//! error stream (a failure is written there as text) and a data stream, whose bytes are
//! served as one HTTP/1.1 connection on the pod's port, in-process (keep-alive, pipelining
//! and bodies of any size, as hyper serves them). A Wasm pod has no TCP sockets: what it
//! serves on a port is its HTTP components, so that is what a forwarded port reaches.
//!
//! Clients that speak plain WebSocket channels instead (kube-rs, the Python client) are
//! served by [`channels`].
//!
//! Nothing outlives the socket: when it closes, every stream's task is aborted.

pub mod channels;
pub mod dictionary;
pub mod spdy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::pod::network::PodNetwork;
use spdy::{header, Decoder, Encoder, Frame, Headers};

/// The WebSocket subprotocol kubectl asks for (and the only one served here).
pub const PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How many frames may wait for the socket: past this, streams wait (backpressure).
const OUTGOING_FRAMES: usize = 64;
/// How many chunks a data stream may hold for the pod before the connection waits.
const INCOMING_CHUNKS: usize = 16;
/// Requests whose pair of streams is not complete yet: a client that opens streams and
/// never pairs them is cut off past this.
const MAX_UNPAIRED: usize = 1024;
/// The in-memory pipe between a data stream and the pod's HTTP server.
const PIPE_BYTES: usize = 64 * 1024;

/// One forwarded connection's streams, as they arrive.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<(u32, u16)>,
}

/// Serves one port-forward connection for the pod named `pod` (`namespace/name`) until
/// the client closes it.
pub async fn serve(socket: WebSocket, network: Arc<PodNetwork>, pod: String) {
    let (sink, source) = socket.split();
    serve_messages(sink, source, network, pod).await
}

/// [`serve`] over any message source and sink (tests drive it without a socket).
async fn serve_messages<Si, So, E>(
    mut sink: Si,
    mut source: So,
    network: Arc<PodNetwork>,
    pod: String,
) where
    Si: futures::Sink<Message> + Unpin + Send + 'static,
    So: futures::Stream<Item = Result<Message, E>> + Unpin,
{
    let (outgoing, mut frames) = mpsc::channel::<Bytes>(OUTGOING_FRAMES);
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            if sink.send(Message::Binary(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let mut session = Session {
        network,
        pod,
        encoder: Encoder::default(),
        outgoing,
        pairs: HashMap::new(),
        inbound: HashMap::new(),
        tasks: JoinSet::new(),
        last_stream: 0,
    };
    let mut decoder = Decoder::default();
    'socket: while let Some(Ok(message)) = source.next().await {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            // Text, ping and pong carry nothing of the tunnel (tungstenite answers pings).
            _ => continue,
        };
        decoder.push(&bytes);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if !session.handle(frame).await {
                        break 'socket;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("port-forward to {}: {e}", session.pod);
                    let goaway = Encoder::goaway(session.last_stream, spdy::PROTOCOL_ERROR);
                    let _ = session.outgoing.send(goaway).await;
                    break 'socket;
                }
            }
        }
    }
    // Every stream ends with the connection; the writer then drains and closes the socket.
    session.tasks.abort_all();
    drop(session);
    let _ = writer.await;
}

struct Session {
    network: Arc<PodNetwork>,
    pod: String,
    encoder: Encoder,
    outgoing: mpsc::Sender<Bytes>,
    pairs: HashMap<String, Pair>,
    /// The data streams' way into the pod, by stream id; dropped at the client's FIN.
    inbound: HashMap<u32, mpsc::Sender<Bytes>>,
    tasks: JoinSet<()>,
    last_stream: u32,
}

impl Session {
    /// Handles one frame; `false` ends the connection.
    async fn handle(&mut self, frame: Frame) -> bool {
        match frame {
            Frame::SynStream {
                stream, headers, ..
            } => {
                self.last_stream = self.last_stream.max(stream);
                self.open(stream, &headers).await
            }
            Frame::Data { stream, fin, data } => {
                if let Some(inbound) = self.inbound.get(&stream) {
                    if !data.is_empty() && inbound.send(data).await.is_err() {
                        // The pod closed its side: nothing more goes in.
                        self.inbound.remove(&stream);
                    }
                }
                if fin {
                    // Dropping the sender closes the pod connection's input.
                    self.inbound.remove(&stream);
                }
                true
            }
            Frame::RstStream { stream, .. } => {
                self.inbound.remove(&stream);
                true
            }
            Frame::Ping { id } => self.send(Encoder::ping(id)).await,
            Frame::GoAway { .. } => false,
            Frame::SynReply { .. }
            | Frame::Settings
            | Frame::Headers { .. }
            | Frame::WindowUpdate { .. } => true,
        }
    }

    async fn send(&self, frame: Bytes) -> bool {
        self.outgoing.send(frame).await.is_ok()
    }

    /// A new stream: checked as the kubelet checks it, answered, and paired with its
    /// request's other stream.
    async fn open(&mut self, stream: u32, headers: &Headers) -> bool {
        let port = header(headers, "port").unwrap_or("");
        let kind = header(headers, "streamtype").unwrap_or("");
        let port: Option<u16> = port.parse().ok().filter(|p| *p > 0);
        let (Some(port), "error" | "data") = (port, kind) else {
            tracing::debug!(
                "port-forward to {}: refused stream {stream}: {headers:?}",
                self.pod
            );
            return self
                .send(Encoder::rst_stream(stream, spdy::REFUSED_STREAM))
                .await;
        };
        let reply = self.encoder.syn_reply(stream, false, &Vec::new());
        if !self.send(reply).await {
            return false;
        }
        // Old clients sent no request id: the kubelet pairs their streams by number.
        let request = match header(headers, "requestid") {
            Some(id) => id.to_string(),
            None if kind == "error" => stream.to_string(),
            None => stream.saturating_sub(2).to_string(),
        };
        if self.pairs.len() >= MAX_UNPAIRED && !self.pairs.contains_key(&request) {
            return false;
        }
        let pair = self.pairs.entry(request.clone()).or_default();
        let duplicate = match kind {
            "error" => pair.error.replace(stream).is_some(),
            _ => pair.data.replace((stream, port)).is_some(),
        };
        let complete = match *pair {
            Pair {
                error: Some(error),
                data: Some((data, port)),
            } => Some((error, data, port)),
            _ => None,
        };
        if duplicate {
            let message = format!(
                "error processing stream for request {request}: {kind} stream already assigned"
            );
            self.fail(&request, &message).await;
            return true;
        }
        if let Some((error, data, port)) = complete {
            self.pairs.remove(&request);
            self.forward(error, data, port).await;
        }
        true
    }

    /// Writes `message` on the request's error stream, if it has one, and closes it.
    async fn fail(&mut self, request: &str, message: &str) {
        if let Some(pair) = self.pairs.remove(request) {
            if let Some(error) = pair.error {
                let _ = self
                    .send(Encoder::data(error, true, message.as_bytes()))
                    .await;
            }
            if let Some((data, _)) = pair.data {
                let _ = self.send(Encoder::data(data, true, b"")).await;
            }
        }
    }

    /// Connects a complete pair to the pod's port: the data stream's bytes become one HTTP
    /// connection to the server on `port`.
    async fn forward(&mut self, error: u32, data: u32, port: u16) {
        if self.network.server(port).is_none() {
            let message = format!(
                "error forwarding port {port} to pod {}: nothing in the pod serves port {port}",
                self.pod
            );
            let _ = self
                .send(Encoder::data(error, true, message.as_bytes()))
                .await;
            let _ = self.send(Encoder::data(data, true, b"")).await;
            return;
        }
        let (inbound, mut from_pod) = connect_pod(self.network.clone(), port, &mut self.tasks);
        self.inbound.insert(data, inbound);
        // Pod to client: what the pod answers, as data frames, then FIN on both streams.
        let outgoing = self.outgoing.clone();
        self.tasks.spawn(async move {
            let mut buffer = vec![0u8; spdy::MAX_DATA];
            loop {
                match from_pod.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if outgoing
                            .send(Encoder::data(data, false, &buffer[..n]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let _ = outgoing.send(Encoder::data(data, true, b"")).await;
            let _ = outgoing.send(Encoder::data(error, true, b"")).await;
        });
    }
}

/// Opens one HTTP/1.1 connection into the pod's server on `port`, its tasks in `tasks`: the
/// sender feeds the connection's input (dropping it ends the input, as a client's FIN), the
/// reader yields what the pod answers, and ends when the pod has closed the connection.
fn connect_pod(
    network: Arc<PodNetwork>,
    port: u16,
    tasks: &mut JoinSet<()>,
) -> (
    mpsc::Sender<Bytes>,
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
) {
    let (tunnel, pod_side) = tokio::io::duplex(PIPE_BYTES);
    let (from_pod, mut into_pod) = tokio::io::split(tunnel);
    let (inbound, mut chunks) = mpsc::channel::<Bytes>(INCOMING_CHUNKS);
    // The pod's side: its HTTP server on `port`, over the pipe.
    tasks.spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let network = network.clone();
            async move { Ok::<_, Infallible>(serve_in_pod(&network, port, request).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(pod_side), service)
            .await;
    });
    // The client's bytes into the pipe, then end of input.
    tasks.spawn(async move {
        while let Some(chunk) = chunks.recv().await {
            if into_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = into_pod.shutdown().await;
    });
    (inbound, from_pod)
}

/// Serves one request that came through the tunnel on the pod's `port`.
async fn serve_in_pod(
    network: &PodNetwork,
    port: u16,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<axum::body::Body> {
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = format!("http://localhost:{port}{path}").parse() {
        parts.uri = uri;
    }
    let request = crate::pod::network::request(http::Request::from_parts(parts, body));
    match network.serve(port, request).await {
        Ok(response) => response.map(axum::body::Body::new),
        Err(e) => {
            let mut response = http::Response::new(axum::body::Body::from(format!("{e}\n")));
            *response.status_mut() = e.status();
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc::unbounded;

    /// Runs a session on `messages` (then the client closes) with a pod that serves nothing;
    /// returns the frames sent back.
    async fn session(messages: Vec<Bytes>) -> Vec<Frame> {
        let (sink, mut sent) = unbounded::<Message>();
        let source = futures::stream::iter(
            messages
                .into_iter()
                .map(|m| Ok::<_, Infallible>(Message::Binary(m))),
        );
        let network = PodNetwork::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            serve_messages(sink, source, network, "default/web".into()),
        )
        .await
        .expect("the session ends when the client does");
        let mut decoder = Decoder::default();
        let mut frames = Vec::new();
        while let Ok(message) = sent.try_recv() {
            if let Message::Binary(bytes) = message {
                decoder.push(&bytes);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
        }
        frames
    }

    fn opened(kind: &str, port: &str, request: &str) -> Headers {
        [("streamtype", kind), ("port", port), ("requestid", request)]
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_with_a_goaway() {
        let frames = session(vec![Bytes::from_static(
            b"\x80\x02\x00\x01\x00\x00\x00\x00",
        )])
        .await;
        assert_eq!(
            frames,
            vec![Frame::GoAway {
                last_good: 0,
                status: spdy::PROTOCOL_ERROR
            }]
        );
    }

    #[tokio::test]
    async fn a_port_nothing_serves_is_reported_on_the_error_stream() {
        let mut client = Encoder::default();
        let frames = session(vec![
            client.syn_stream(1, false, &opened("error", "9999", "0")),
            client.syn_stream(3, false, &opened("data", "9999", "0")),
            Encoder::ping(7),
        ])
        .await;
        assert!(matches!(frames[0], Frame::SynReply { stream: 1, .. }));
        assert!(matches!(frames[1], Frame::SynReply { stream: 3, .. }));
        let Frame::Data {
            stream: 1,
            fin: true,
            data,
        } = &frames[2]
        else {
            panic!("{frames:?}");
        };
        assert!(
            String::from_utf8_lossy(data).contains("nothing in the pod serves port 9999"),
            "{data:?}"
        );
        assert_eq!(
            frames[3],
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::new()
            }
        );
        assert_eq!(frames[4], Frame::Ping { id: 7 });
    }

    #[tokio::test]
    async fn streams_opened_and_never_used_or_bad_are_dropped_with_the_connection() {
        let mut client = Encoder::default();
        let frames = session(vec![
            // An error stream whose data stream never comes.
            client.syn_stream(1, false, &opened("error", "8080", "0")),
            // No port, then a bad stream type: refused.
            client.syn_stream(3, false, &opened("data", "", "1")),
            client.syn_stream(5, false, &opened("nonsense", "8080", "2")),
            // Data for a stream that does not exist.
            Encoder::data(99, false, b"lost"),
        ])
        .await;
        assert!(matches!(frames[0], Frame::SynReply { stream: 1, .. }));
        assert_eq!(
            frames[1..],
            [
                Frame::RstStream {
                    stream: 3,
                    status: spdy::REFUSED_STREAM
                },
                Frame::RstStream {
                    stream: 5,
                    status: spdy::REFUSED_STREAM
                }
            ]
        );
    }
}
