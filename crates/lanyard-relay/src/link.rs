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

/// What a pendant link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A pendant connected and said which framing and codec it speaks.
    Connected {
        framing: Framing,
        omi_codec: Option<OmiCodec>,
        att_mtu: u16,
    },
    /// One audio notification, as received over the air.
    Notification(Vec<u8>),
    Battery(u8),
    /// The pendant went away; the link reconnects by itself.
    Disconnected {
        reason: String,
    },
}

/// Connects to a pendant simulator listening at `addr` and hands its events
/// to the relay, reconnecting after every drop (as a phone re-attaches to a
/// pendant that comes back in range). It runs on a thread of its own that
/// calls into the relay directly, as CoreBluetooth's delegate queue does on a
/// phone: each notification is spooled on this thread, and the relay's loop
/// is not woken for it. `deliver` hands each event over, normally `|ev| link.event(ev)`
/// (a benchmark wraps it to measure it). Ends once `stopped` says the relay
/// has stopped (normally `move || link.is_stopped()`).
pub fn spawn_sim_link_thread(
    addr: SocketAddr,
    stopped: impl Fn() -> bool + Send + 'static,
    mut deliver: impl FnMut(LinkEvent) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("pendant-link".into()).spawn(move || {
        while !stopped() {
            let reason = match std::net::TcpStream::connect(addr) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    read_stream_blocking(stream, &stopped, &mut deliver)
                }
                Err(e) => format!("cannot reach the pendant simulator at {addr}: {e}"),
            };
            deliver(LinkEvent::Disconnected { reason });
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn read_stream_blocking(
    mut stream: std::net::TcpStream,
    stopped: &impl Fn() -> bool,
    deliver: &mut impl FnMut(LinkEvent),
) -> String {
    use std::io::Read;
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 4096];
    // Wake now and then to notice a relay that stopped.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return "pendant closed the link".into(),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stopped() {
                    return "relay stopped".into();
                }
                continue;
            }
            Err(e) => return format!("link read failed: {e}"),
        };
        decoder.extend(&buf[..n]);
        loop {
            match next_event(&mut decoder) {
                Ok(None) => break,
                Ok(Some(event)) => deliver(event),
                Err(reason) => return reason,
            }
        }
    }
}

/// The next whole event in the simulator's byte stream; `Err` says why the
/// link cannot go on.
fn next_event(decoder: &mut Decoder) -> Result<Option<LinkEvent>, String> {
    Ok(Some(match decoder.next_record() {
        Ok(None) => return Ok(None),
        Ok(Some(Record::Advertise { service, att_mtu, codec })) => {
            let framing = if service == Framing::Omi.service() {
                Framing::Omi
            } else if service == Framing::Lanyard.service() {
                Framing::Lanyard
            } else {
                return Err(format!("pendant advertises unknown service {service}"));
            };
            let omi_codec = match framing {
                Framing::Omi => match OmiCodec::from_id(codec) {
                    Some(c) => Some(c),
                    None => return Err(format!("Omi codec id {codec} is not supported")),
                },
                Framing::Lanyard => None,
            };
            LinkEvent::Connected { framing, omi_codec, att_mtu }
        }
        Ok(Some(Record::Notify(n))) => LinkEvent::Notification(n),
        Ok(Some(Record::Battery(b))) => LinkEvent::Battery(b),
        Err(e) => return Err(format!("link out of sync: {e}")),
    }))
}
