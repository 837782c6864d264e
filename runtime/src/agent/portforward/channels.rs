//! Port-forward over plain WebSocket channels (`v4.channel.k8s.io`, or no subprotocol), the
//! kubelet's other port-forward protocol, which kube-rs' `Api::portforward` and the official
//! Python client speak: the socket is one connection to each port of the `ports` query
//! parameter. Port `i` has data channel `2i` and error channel `2i+1`; every binary message
//! starts with its channel's number, and the server's first message on each channel is the
//! port (little-endian u16). The socket closes once every port's connection has ended.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{connect_pod, spdy, OUTGOING_FRAMES};
use crate::pod::network::PodNetwork;

/// The binary channel protocol served (the base64 one is not).
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// The ports of a `ports` query parameter (`8080`, `80,443`, or repeated), as the kubelet
/// reads them.
pub fn ports_of(values: &[&str]) -> Result<Vec<u16>, String> {
    if values.is_empty() {
        return Err("query parameter \"port\" is required".into());
    }
    let mut ports = Vec::new();
    for value in values {
        for port in value.split(',') {
            match port.parse::<u16>() {
                Ok(0) => return Err(format!("port {port:?} must be > 0")),
                Ok(port) => ports.push(port),
                Err(e) => return Err(format!("unable to parse {port:?} as a port: {e}")),
            }
        }
    }
    Ok(ports)
}

fn message(channel: u8, payload: &[u8]) -> Message {
    let mut bytes = BytesMut::with_capacity(1 + payload.len());
    bytes.put_u8(channel);
    bytes.put_slice(payload);
    Message::Binary(bytes.freeze())
}

/// Serves one socket forwarding `ports` of the pod named `pod` until the client closes it
/// or every port's connection has ended.
pub async fn serve(socket: WebSocket, network: Arc<PodNetwork>, pod: String, ports: Vec<u16>) {
    let (mut sink, mut source) = socket.split();
    let (outgoing, mut messages) = mpsc::channel::<Message>(OUTGOING_FRAMES);
    let writer = tokio::spawn(async move {
        while let Some(message) = messages.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // The pipes into the pods, and apart from them the readers of the pods' answers: when
    // every reader is done (each port's connection ended), so is the socket.
    let mut tasks = JoinSet::new();
    let mut readers = JoinSet::new();
    let mut inbound: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        // More ports than channel numbers: the rest get nothing (256 channels, 128 ports).
        let Ok(data) = u8::try_from(2 * i) else {
            inbound.push(None);
            continue;
        };
        let error = data.saturating_add(1);
        for channel in [data, error] {
            let _ = outgoing.send(message(channel, &port.to_le_bytes())).await;
        }
        if network.server(port).is_none() {
            let why = format!(
                "error forwarding port {port} to pod {pod}: nothing in the pod serves port {port}"
            );
            let _ = outgoing.send(message(error, why.as_bytes())).await;
            inbound.push(None);
            continue;
        }
        let (into_pod, mut from_pod) = connect_pod(network.clone(), port, &mut tasks);
        inbound.push(Some(into_pod));
        let outgoing = outgoing.clone();
        readers.spawn(async move {
            let mut buffer = vec![0u8; spdy::MAX_DATA];
            while let Ok(n @ 1..) = from_pod.read(&mut buffer).await {
                if outgoing.send(message(data, &buffer[..n])).await.is_err() {
                    return;
                }
            }
        });
    }
    loop {
        tokio::select! {
            message = source.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let Some((&channel, payload)) = bytes.split_first() else { continue };
                    // Data goes to the even channels; anything else from the client is noise.
                    let port = usize::from(channel / 2);
                    if channel % 2 != 0 || payload.is_empty() {
                        continue;
                    }
                    if let Some(Some(into_pod)) = inbound.get(port) {
                        if into_pod.send(Bytes::copy_from_slice(payload)).await.is_err() {
                            inbound[port] = None;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            done = readers.join_next() => {
                if done.is_none() || readers.is_empty() {
                    break;
                }
            }
        }
    }
    readers.abort_all();
    tasks.abort_all();
    drop(outgoing);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::ports_of;

    #[test]
    fn ports_are_read_as_the_kubelet_reads_them() {
        assert_eq!(ports_of(&["8080"]), Ok(vec![8080]));
        assert_eq!(ports_of(&["80,443", "9090"]), Ok(vec![80, 443, 9090]));
        assert!(ports_of(&[]).unwrap_err().contains("is required"));
        assert!(ports_of(&["0"]).unwrap_err().contains("must be > 0"));
        assert!(ports_of(&["70000"])
            .unwrap_err()
            .contains("unable to parse"));
        assert!(ports_of(&["80,"]).unwrap_err().contains("unable to parse"));
    }
}
