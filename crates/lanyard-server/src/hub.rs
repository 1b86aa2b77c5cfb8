//! Live connections by device, so that results go down an open socket at once.

use std::collections::HashMap;
use std::sync::Mutex;

use lanyard_proto::wire::ServerMsg;
use tokio::sync::mpsc;
use uuid::Uuid;

/// One open stream: its id and where its messages go.
type Conn = (u64, mpsc::UnboundedSender<ServerMsg>);

/// Senders of every open stream, by device.
#[derive(Default)]
pub struct Hub {
    conns: Mutex<HashMap<Uuid, Vec<Conn>>>,
    next_id: Mutex<u64>,
}

impl Hub {
    /// Registers a connection; returns its id for [`Hub::leave`].
    pub fn join(&self, device: Uuid, tx: mpsc::UnboundedSender<ServerMsg>) -> u64 {
        let id = {
            let mut n = self.next_id.lock().expect("hub poisoned");
            *n += 1;
            *n
        };
        self.conns.lock().expect("hub poisoned").entry(device).or_default().push((id, tx));
        id
    }

    pub fn leave(&self, device: Uuid, id: u64) {
        let mut conns = self.conns.lock().expect("hub poisoned");
        if let Some(list) = conns.get_mut(&device) {
            list.retain(|(c, _)| *c != id);
            if list.is_empty() {
                conns.remove(&device);
            }
        }
    }

    /// Drops the senders of every open stream of the device: each stream sees
    /// its channel close and ends with `close::REVOKED`. For a removed device.
    pub fn disconnect(&self, device: Uuid) {
        self.conns.lock().expect("hub poisoned").remove(&device);
    }

    /// Sends to every open stream of the device. A device with none gets the
    /// push notification only.
    pub fn send(&self, device: Uuid, msg: &ServerMsg) {
        if let Some(list) = self.conns.lock().expect("hub poisoned").get(&device) {
            for (_, tx) in list {
                let _ = tx.send(msg.clone());
            }
        }
    }

    /// Open streams, for metrics and tests.
    pub fn connections(&self) -> usize {
        self.conns.lock().expect("hub poisoned").values().map(Vec::len).sum()
    }
}
