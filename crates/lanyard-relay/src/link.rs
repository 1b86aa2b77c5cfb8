//! How a pendant's notifications reach the relay.
//!
//! Every transport (CoreBluetooth on iOS, btleplug on Linux, the simulator's
//! loopback socket) produces the same [`LinkEvent`]s, so reassembly and
//! everything after it are one code path.

use std::net::SocketAddr;
use std::time::Duration;

use lanyard_proto::ble::Framing;
use lanyard_proto::link::{Decoder, Record};
use lanyard_proto::omi::OmiCodec;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What a pendant link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A pendant connected and said which framing and codec it speaks.
    Connected { framing: Framing, omi_codec: Option<OmiCodec>, att_mtu: u16 },
    /// One audio notification, as received over the air.
    Notification(Vec<u8>),
    Battery(u8),
    /// The pendant went away; the link reconnects by itself.
    Disconnected { reason: String },
}

/// Connects to a pendant simulator listening at `addr` and forwards its
/// events, reconnecting after every drop (as a phone re-attaches to a
/// pendant that comes back in range). Ends when `tx` is closed.
pub async fn run_sim_link(addr: SocketAddr, tx: mpsc::Sender<LinkEvent>) {
    loop {
        let reason = match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                read_stream(stream, &tx).await
            }
            Err(e) => format!("cannot reach the pendant simulator at {addr}: {e}"),
        };
        if tx.send(LinkEvent::Disconnected { reason }).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn read_stream(mut stream: TcpStream, tx: &mpsc::Sender<LinkEvent>) -> String {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => return "pendant closed the link".into(),
            Ok(n) => n,
            Err(e) => return format!("link read failed: {e}"),
        };
        decoder.extend(&buf[..n]);
        loop {
            let event = match decoder.next_record() {
                Ok(None) => break,
                Ok(Some(Record::Advertise { service, att_mtu, codec })) => {
                    let framing = if service == Framing::Omi.service() {
                        Framing::Omi
                    } else if service == Framing::Lanyard.service() {
                        Framing::Lanyard
                    } else {
                        return format!("pendant advertises unknown service {service}");
                    };
                    let omi_codec = match framing {
                        Framing::Omi => match OmiCodec::from_id(codec) {
                            Some(c) => Some(c),
                            None => return format!("Omi codec id {codec} is not supported"),
                        },
                        Framing::Lanyard => None,
                    };
                    LinkEvent::Connected { framing, omi_codec, att_mtu }
                }
                Ok(Some(Record::Notify(n))) => LinkEvent::Notification(n),
                Ok(Some(Record::Battery(b))) => LinkEvent::Battery(b),
                Err(e) => return format!("link out of sync: {e}"),
            };
            if tx.send(event).await.is_err() {
                return "relay stopped".into();
            }
        }
    }
}
