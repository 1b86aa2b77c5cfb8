//! The Linux host's radio: a real pendant over BLE, through BlueZ, with
//! btleplug (feature `ble`).
//!
//! [`run_ble_link`] produces the same [`LinkEvent`]s as the simulator's
//! [`crate::link::spawn_sim_link_thread`] and the phone apps' CoreBluetooth glue, so
//! [`crate::run`] cannot tell them apart. One connection goes like this:
//!
//! 1. take the first Bluetooth adapter BlueZ knows;
//! 2. scan, filtered by the two service UUIDs a pendant advertises
//!    (Lanyard's [`lanyard_proto::ble::gatt::SERVICE`], Omi's
//!    [`lanyard_proto::omi::gatt::SERVICE`]) and, when asked, by name or
//!    address; the advertised service picks the framing;
//! 3. connect, discover the GATT services (which confirm or correct the
//!    framing), read the ATT MTU (see [`att_mtu_from_reported`]), read Omi's
//!    codec characteristic for an Omi pendant and the battery level if the
//!    pendant has one;
//! 4. subscribe to the audio characteristic (and battery notifications), send
//!    [`LinkEvent::Connected`], then forward every audio notification as
//!    [`LinkEvent::Notification`], moving the bytes btleplug hands over
//!    (no copy), and battery changes as [`LinkEvent::Battery`];
//! 5. on any failure or disconnect send [`LinkEvent::Disconnected`] with a
//!    reason that says what to do, wait ([`Backoff`]: 1 s doubling to 30 s,
//!    back to 1 s after a connection that streamed), and start again at 1.
//!
//! It stops only when the receiving side of the channel is dropped.
//!
//! # Backpressure
//!
//! A notification is handed on with an awaited `send`, as the simulator
//! link does: while the relay is behind, this task waits and BlueZ's D-Bus
//! messages queue up in memory in the meantime. Nothing blocks a thread and
//! nothing is dropped; at 50 notifications a second the queue is small. (The
//! phone FFI cannot wait inside a CoreBluetooth callback, so it drops and
//! counts instead; a Linux host has no such constraint.)
//!
//! # What is tested
//!
//! The decisions are small pure functions with unit tests below: the framing
//! from advertised or discovered services, the name/address filter, which
//! characteristic is which, the Omi codec byte, the MTU, routing a
//! notification, the backoff. **The radio path itself (scan, connect,
//! discovery, subscription, disconnect detection against BlueZ) is untested:
//! there is no Bluetooth hardware on the build machines.** Run it by hand:
//! `lanyard relay --ble --token ...` next to a powered-on pendant.
//!
//! # Needs
//!
//! BlueZ (`bluetoothd`) reached over the D-Bus system bus; building needs the
//! libdbus headers (Debian/Ubuntu: `libdbus-1-dev`, plus `pkg-config`). The
//! user running the relay must be allowed to talk to BlueZ (root, or a
//! member of the `bluetooth` group on most distributions).

use std::collections::BTreeSet;
use std::time::Duration;

use btleplug::api::{
    Central, CentralEvent, CentralState, CharPropFlags, Characteristic, Manager as _, Peripheral as _, ScanFilter,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures::StreamExt;
use lanyard_proto::backoff::{Backoff, Retries};
use lanyard_proto::ble::{Framing, gatt};
use lanyard_proto::omi::{self, OmiCodec};
use thiserror::Error;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::link::LinkEvent;

/// The ATT MTU assumed when BlueZ does not say which one it negotiated.
///
/// btleplug reads the MTU from BlueZ's `GattCharacteristic1.MTU` property
/// (BlueZ 5.62 and later) and answers the BLE minimum, 23, when the property
/// is missing, so 23 cannot be told apart from "unknown". BlueZ always asks
/// for a large MTU (517) when it connects, and btleplug offers no way to ask
/// for another one, so a reported 23 is taken as unknown and this value is
/// assumed instead: 185 is what iOS centrals and common pendant firmware
/// settle on. The value is informational only (the relay logs it): Lanyard
/// and Omi notifications carry their own length and fragment numbering, so
/// reassembly never depends on it.
pub const ASSUMED_ATT_MTU: u16 = 185;

/// How long a connection attempt may take before it counts as failed.
/// BlueZ itself gives up after about 20 s; 15 s gets the retry going sooner
/// for a pendant that walked out of range between advertising and connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long GATT service discovery may take. A pendant has three small
/// services; a discovery still running after this is stuck.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a single characteristic read (Omi codec, battery) may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the link waits for a polite disconnect when it stops.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What to look for and how patiently to retry.
#[derive(Debug, Clone)]
pub struct BleOptions {
    /// Only a pendant whose advertised name contains this (ignoring case),
    /// or whose address is this (`AA:BB:CC:DD:EE:FF`, any case). `None`: the
    /// first pendant that advertises a Lanyard or Omi service.
    pub name: Option<String>,
    /// Wait before the first retry; doubled after each failure.
    pub min_backoff: Duration,
    /// Longest wait between retries: a pendant coming back into range is
    /// found within this time.
    pub max_backoff: Duration,
}

impl Default for BleOptions {
    fn default() -> Self {
        Self { name: None, min_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(30) }
    }
}

/// Why a BLE connection failed or ended. The text goes into
/// [`LinkEvent::Disconnected`] and the log, so each says what to do.
#[derive(Debug, Error)]
pub enum BleError {
    #[error(
        "cannot reach BlueZ over D-Bus ({0}): is bluetoothd running (`systemctl status bluetooth`)? is the D-Bus system bus up?"
    )]
    Bluez(#[source] btleplug::Error),
    #[error(
        "no Bluetooth adapter found: is bluetoothd running? is the adapter powered? `bluetoothctl power on` (and `rfkill unblock bluetooth` if it is blocked)"
    )]
    NoAdapter,
    #[error(
        "the Bluetooth adapter is powered off: `bluetoothctl power on` (and `rfkill unblock bluetooth` if it is blocked)"
    )]
    PoweredOff,
    #[error("BlueZ refused access: run the relay as root or as a user in the `bluetooth` group")]
    PermissionDenied,
    #[error("{what} failed: {source}")]
    Radio {
        what: &'static str,
        #[source]
        source: btleplug::Error,
    },
    #[error("{what} timed out after {secs} s: is the pendant in range and awake?", secs = after.as_secs())]
    TimedOut { what: &'static str, after: Duration },
    #[error("BlueZ stopped sending events (did bluetoothd restart?)")]
    EventsEnded,
    #[error("the pendant disconnected")]
    PendantDisconnected,
    #[error(
        "the pendant has no {framing:?} audio characteristic ({uuid}) that notifies: is its firmware a Lanyard or Omi build?"
    )]
    NoAudioCharacteristic { framing: Framing, uuid: Uuid },
    #[error(
        "the Omi pendant has no codec characteristic ({}): its firmware is too old for the relay; update it",
        omi::gatt::CODEC
    )]
    NoOmiCodecCharacteristic,
    #[error("the Omi codec characteristic is empty: the pendant's firmware is misbehaving; restart the pendant")]
    EmptyOmiCodec,
    #[error(
        "the Omi pendant uses codec id {0}, which the relay does not know: set it to Opus 16 kHz 20 ms (21) or PCM16 (0)"
    )]
    UnknownOmiCodec(u8),
    #[error(
        "the Omi pendant uses {0:?}, which the relay would have to transcode: set it to Opus 16 kHz 20 ms (21) or PCM16 (0)"
    )]
    UntranscodableOmiCodec(OmiCodec),
}

impl BleError {
    fn radio(what: &'static str) -> impl FnOnce(btleplug::Error) -> BleError {
        move |source| match source {
            btleplug::Error::PermissionDenied => BleError::PermissionDenied,
            btleplug::Error::TimedOut(after) => BleError::TimedOut { what, after },
            source => BleError::Radio { what, source },
        }
    }
}

/// Finds a pendant, streams its audio into `tx`, and does it again after
/// every disconnect or failure, with [`Backoff`], until `tx` is closed.
///
/// Every attempt that fails, and every connection that ends, is reported as
/// [`LinkEvent::Disconnected`] (and logged as a warning), so a relay started
/// with no adapter says why, once per retry, instead of waiting silently.
pub async fn run_ble_link(opts: BleOptions, tx: mpsc::Sender<LinkEvent>) {
    // One client retrying one pendant: no jitter.
    let mut backoff = Retries::new(Backoff::new(opts.min_backoff, opts.max_backoff), 0);
    let filter = opts.name.as_deref().map(DeviceFilter::new);
    loop {
        let mut streamed = false;
        let reason = tokio::select! {
            r = connect_and_stream(filter.as_ref(), &tx, &mut streamed) => match r {
                Ok(()) => return, // the relay closed the channel
                Err(e) => e.to_string(),
            },
            _ = tx.closed() => return,
        };
        if streamed {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tracing::warn!(%reason, retry_in_ms = wait.as_millis() as u64, "BLE link down");
        if tx.send(LinkEvent::Disconnected { reason }).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

/// One attempt: adapter, scan, connect, set up, stream. `Ok` only when the
/// relay closed the channel; every other end is an error that says why.
/// Sets `streamed` once [`LinkEvent::Connected`] has gone out.
async fn connect_and_stream(
    filter: Option<&DeviceFilter>,
    tx: &mpsc::Sender<LinkEvent>,
    streamed: &mut bool,
) -> Result<(), BleError> {
    let adapter = first_adapter().await?;
    // Subscribe to adapter events before scanning so no advertisement is
    // missed; btleplug also replays the devices BlueZ already knows.
    let mut events = adapter.events().await.map_err(BleError::radio("listening to BlueZ"))?;
    let scan = ScanFilter { services: vec![gatt::SERVICE, omi::gatt::SERVICE] };
    adapter.start_scan(scan).await.map_err(BleError::radio("starting a BLE scan"))?;
    tracing::info!(filter = ?filter.map(|f| &f.raw), "scanning for a Lanyard or Omi pendant");
    let found = find_pendant(&adapter, &mut events, filter).await;
    // Scanning while connected wastes radio time and battery; stop either way.
    let _ = adapter.stop_scan().await;
    let (peripheral, advertised) = found?;

    let result = stream_from(&peripheral, advertised, &mut events, tx, streamed).await;
    if !matches!(result, Err(BleError::PendantDisconnected)) {
        // Leave the pendant free for the next attempt (or another central).
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, peripheral.disconnect()).await;
    }
    result
}

async fn first_adapter() -> Result<Adapter, BleError> {
    let manager = Manager::new().await.map_err(BleError::Bluez)?;
    let adapter = manager
        .adapters()
        .await
        .map_err(|e| match e {
            btleplug::Error::PermissionDenied => BleError::PermissionDenied,
            e => BleError::Bluez(e),
        })?
        .into_iter()
        .next()
        .ok_or(BleError::NoAdapter)?;
    if adapter.adapter_state().await.map_err(BleError::radio("reading the adapter state"))? == CentralState::PoweredOff
    {
        return Err(BleError::PoweredOff);
    }
    Ok(adapter)
}

type Events = std::pin::Pin<Box<dyn futures::Stream<Item = CentralEvent> + Send>>;

/// Waits for the first pendant that advertises a known service, passes the
/// filter, and is actually around now.
async fn find_pendant(
    adapter: &Adapter,
    events: &mut Events,
    filter: Option<&DeviceFilter>,
) -> Result<(Peripheral, Framing), BleError> {
    while let Some(event) = events.next().await {
        let id = match event {
            CentralEvent::DeviceDiscovered(id)
            | CentralEvent::DeviceUpdated(id)
            | CentralEvent::DeviceConnected(id)
            | CentralEvent::ServicesAdvertisement { id, .. }
            | CentralEvent::RssiUpdate { id, .. } => id,
            CentralEvent::StateUpdate(CentralState::PoweredOff) => return Err(BleError::PoweredOff),
            _ => continue,
        };
        if let Some(found) = candidate(adapter, &id, filter).await {
            return Ok(found);
        }
    }
    Err(BleError::EventsEnded)
}

/// The peripheral and its framing if `id` is a pendant worth connecting to.
async fn candidate(
    adapter: &Adapter,
    id: &PeripheralId,
    filter: Option<&DeviceFilter>,
) -> Option<(Peripheral, Framing)> {
    let peripheral = adapter.peripheral(id).await.ok()?;
    let props = peripheral.properties().await.ok()??;
    let framing = framing_for_services(&props.services)?;
    let address = props.address.to_string();
    let names = [props.local_name.as_deref(), props.advertisement_name.as_deref()];
    if let Some(f) = filter
        && !names.iter().any(|n| f.matches(*n, &address))
    {
        return None;
    }
    // BlueZ also replays devices it remembers from earlier scans. Only an
    // RSSI (heard during this scan) or a live connection shows the pendant is
    // here now; connecting to a remembered one would just time out.
    let present = props.rssi.is_some() || peripheral.is_connected().await.unwrap_or(false);
    if !present {
        return None;
    }
    tracing::info!(%address, name = ?props.local_name, ?framing, "pendant found");
    Some((peripheral, framing))
}

/// Connects, sets the pendant up, and forwards its notifications until it
/// goes away (an error) or the relay closes `tx` (`Ok`).
async fn stream_from(
    peripheral: &Peripheral,
    advertised: Framing,
    events: &mut Events,
    tx: &mpsc::Sender<LinkEvent>,
    streamed: &mut bool,
) -> Result<(), BleError> {
    if !peripheral.is_connected().await.unwrap_or(false) {
        peripheral.connect_with_timeout(CONNECT_TIMEOUT).await.map_err(BleError::radio("connecting to the pendant"))?;
    }
    peripheral
        .discover_services_with_timeout(DISCOVERY_TIMEOUT)
        .await
        .map_err(BleError::radio("discovering the pendant's GATT services"))?;
    let services: Vec<Uuid> = peripheral.services().iter().map(|s| s.uuid).collect();
    // The GATT table is the authority; the advertisement only got us here.
    let framing = framing_for_services(&services).unwrap_or(advertised);
    let plan = GattPlan::from_characteristics(framing, &peripheral.characteristics())?;

    let omi_codec = match &plan.omi_codec {
        Some(c) => Some(omi_codec_from_value(&read(peripheral, c, "reading the Omi codec characteristic").await?)?),
        None => None,
    };
    let battery = match &plan.battery {
        Some(b) if b.properties.contains(CharPropFlags::READ) => {
            read(peripheral, b, "reading the battery level").await.ok().and_then(|v| v.first().copied())
        }
        _ => None,
    };
    let att_mtu = att_mtu_from_reported(peripheral.mtu());

    // Take the notification stream before subscribing, so the first
    // notifications after the subscription are not missed.
    let mut notifications =
        peripheral.notifications().await.map_err(BleError::radio("listening for the pendant's notifications"))?;
    peripheral.subscribe(&plan.audio).await.map_err(BleError::radio("subscribing to the audio characteristic"))?;
    if let Some(b) = &plan.battery
        && b.properties.intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
    {
        // Battery notifications are a nicety: a pendant that refuses them
        // still streams audio.
        if let Err(e) = peripheral.subscribe(b).await {
            tracing::debug!(error = %e, "battery notifications unavailable");
        }
    }

    tracing::info!(?framing, ?omi_codec, att_mtu, "pendant connected");
    if tx.send(LinkEvent::Connected { framing, omi_codec, att_mtu }).await.is_err() {
        return Ok(());
    }
    *streamed = true;
    if let Some(level) = battery
        && tx.send(LinkEvent::Battery(level)).await.is_err()
    {
        return Ok(());
    }

    let me = peripheral.id();
    loop {
        tokio::select! {
            n = notifications.next() => {
                let Some(n) = n else { return Err(BleError::PendantDisconnected) };
                if let Some(event) = plan.route(n.uuid, n.value)
                    && tx.send(event).await.is_err()
                {
                    return Ok(());
                }
            }
            ev = events.next() => match ev {
                Some(CentralEvent::DeviceDisconnected(id)) if id == me => return Err(BleError::PendantDisconnected),
                Some(CentralEvent::StateUpdate(CentralState::PoweredOff)) => return Err(BleError::PoweredOff),
                Some(_) => {}
                None => return Err(BleError::EventsEnded),
            },
        }
    }
}

async fn read(peripheral: &Peripheral, c: &Characteristic, what: &'static str) -> Result<Vec<u8>, BleError> {
    match tokio::time::timeout(READ_TIMEOUT, peripheral.read(c)).await {
        Ok(r) => r.map_err(BleError::radio(what)),
        Err(_) => Err(BleError::TimedOut { what, after: READ_TIMEOUT }),
    }
}

/// The framing a device speaks, from the service UUIDs it advertises (or
/// that discovery found). Lanyard's own framing wins when a device offers
/// both: it carries utterance markers and its own sequence numbers.
pub fn framing_for_services(services: &[Uuid]) -> Option<Framing> {
    [Framing::Lanyard, Framing::Omi].into_iter().find(|f| services.contains(&f.service()))
}

/// The `--ble-name` filter: a name fragment or an exact address.
#[derive(Debug, Clone)]
pub struct DeviceFilter {
    raw: String,
    lower: String,
}

impl DeviceFilter {
    pub fn new(filter: &str) -> Self {
        Self { raw: filter.to_string(), lower: filter.to_lowercase() }
    }

    /// True when `name` contains the filter (ignoring case), or `address`
    /// (as `AA:BB:CC:DD:EE:FF`) equals it (ignoring case). An empty filter
    /// matches everything.
    pub fn matches(&self, name: Option<&str>, address: &str) -> bool {
        address.eq_ignore_ascii_case(&self.raw) || name.is_some_and(|n| n.to_lowercase().contains(&self.lower))
    }
}

/// Which characteristic is which on a connected pendant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GattPlan {
    /// Audio notifications: Lanyard's or Omi's audio characteristic.
    pub audio: Characteristic,
    /// Omi's codec characteristic; only for Omi framing.
    pub omi_codec: Option<Characteristic>,
    /// The standard battery level, if the pendant has one.
    pub battery: Option<Characteristic>,
}

impl GattPlan {
    /// Picks the characteristics for `framing` out of what discovery found.
    /// The audio characteristic must notify (or indicate) and Omi's codec
    /// characteristic must exist; the battery is optional.
    pub fn from_characteristics(framing: Framing, chars: &BTreeSet<Characteristic>) -> Result<Self, BleError> {
        let (service, audio_uuid) = match framing {
            Framing::Lanyard => (gatt::SERVICE, gatt::AUDIO),
            Framing::Omi => (omi::gatt::SERVICE, omi::gatt::AUDIO),
        };
        let find = |svc: Uuid, uuid: Uuid| chars.iter().find(|c| c.service_uuid == svc && c.uuid == uuid).cloned();
        let audio = find(service, audio_uuid)
            .filter(|c| c.properties.intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE))
            .ok_or(BleError::NoAudioCharacteristic { framing, uuid: audio_uuid })?;
        let omi_codec = match framing {
            Framing::Omi => Some(find(omi::gatt::SERVICE, omi::gatt::CODEC).ok_or(BleError::NoOmiCodecCharacteristic)?),
            Framing::Lanyard => None,
        };
        let battery = find(gatt::BATTERY_SERVICE, gatt::BATTERY_LEVEL);
        Ok(Self { audio, omi_codec, battery })
    }

    /// What a notification from characteristic `uuid` means to the relay.
    /// Takes the value by move: audio goes on without a copy.
    pub fn route(&self, uuid: Uuid, value: Vec<u8>) -> Option<LinkEvent> {
        if uuid == self.audio.uuid {
            Some(LinkEvent::Notification(value))
        } else if self.battery.as_ref().is_some_and(|b| b.uuid == uuid) {
            value.first().map(|&level| LinkEvent::Battery(level))
        } else {
            None
        }
    }
}

/// The Omi codec from the codec characteristic's value (its first byte).
/// Refuses codecs the relay would have to transcode, as the host would: an
/// Omi pendant in such a mode sends audio the relay cannot carry.
pub fn omi_codec_from_value(value: &[u8]) -> Result<OmiCodec, BleError> {
    let &id = value.first().ok_or(BleError::EmptyOmiCodec)?;
    let codec = OmiCodec::from_id(id).ok_or(BleError::UnknownOmiCodec(id))?;
    match codec.to_lanyard() {
        Some(_) => Ok(codec),
        None => Err(BleError::UntranscodableOmiCodec(codec)),
    }
}

/// The ATT MTU to report from what btleplug says: its answer when above the
/// minimum, [`ASSUMED_ATT_MTU`] when it says 23 (btleplug's "unknown" on
/// BlueZ) or less.
pub fn att_mtu_from_reported(reported: u16) -> u16 {
    if usize::from(reported) > lanyard_proto::ble::MIN_ATT_MTU { reported } else { ASSUMED_ATT_MTU }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(service: Uuid, uuid: Uuid, properties: CharPropFlags) -> Characteristic {
        Characteristic { uuid, service_uuid: service, properties, descriptors: BTreeSet::new() }
    }

    fn lanyard_gatt() -> BTreeSet<Characteristic> {
        [
            ch(gatt::SERVICE, gatt::AUDIO, CharPropFlags::NOTIFY),
            ch(gatt::SERVICE, gatt::CONTROL, CharPropFlags::WRITE),
            ch(gatt::BATTERY_SERVICE, gatt::BATTERY_LEVEL, CharPropFlags::READ | CharPropFlags::NOTIFY),
        ]
        .into()
    }

    fn omi_gatt() -> BTreeSet<Characteristic> {
        [
            ch(omi::gatt::SERVICE, omi::gatt::AUDIO, CharPropFlags::NOTIFY | CharPropFlags::READ),
            ch(omi::gatt::SERVICE, omi::gatt::CODEC, CharPropFlags::READ),
        ]
        .into()
    }

    #[test]
    fn framing_follows_the_advertised_service() {
        let other = Uuid::from_u128(0x1234);
        assert_eq!(framing_for_services(&[other, gatt::SERVICE]), Some(Framing::Lanyard));
        assert_eq!(framing_for_services(&[omi::gatt::SERVICE]), Some(Framing::Omi));
        assert_eq!(framing_for_services(&[omi::gatt::SERVICE, gatt::SERVICE]), Some(Framing::Lanyard));
        assert_eq!(framing_for_services(&[other, gatt::BATTERY_SERVICE]), None);
        assert_eq!(framing_for_services(&[]), None);
    }

    #[test]
    fn filter_matches_name_fragment_or_exact_address() {
        let f = DeviceFilter::new("omi");
        assert!(f.matches(Some("Omi DevKit 2"), "AA:BB:CC:DD:EE:FF"));
        assert!(f.matches(Some("friend-OMI"), "AA:BB:CC:DD:EE:FF"));
        assert!(!f.matches(Some("Lanyard"), "AA:BB:CC:DD:EE:FF"));
        assert!(!f.matches(None, "AA:BB:CC:DD:EE:FF"));

        let a = DeviceFilter::new("aa:bb:cc:dd:ee:ff");
        assert!(a.matches(None, "AA:BB:CC:DD:EE:FF"));
        assert!(!a.matches(None, "AA:BB:CC:DD:EE:00"));
        assert!(DeviceFilter::new("").matches(Some("anything"), "AA:BB:CC:DD:EE:FF"));
    }

    #[test]
    fn lanyard_plan_finds_audio_and_battery() {
        let plan = GattPlan::from_characteristics(Framing::Lanyard, &lanyard_gatt()).unwrap();
        assert_eq!(plan.audio.uuid, gatt::AUDIO);
        assert_eq!(plan.omi_codec, None);
        assert_eq!(plan.battery.as_ref().map(|b| b.uuid), Some(gatt::BATTERY_LEVEL));
    }

    #[test]
    fn omi_plan_needs_the_codec_characteristic() {
        let plan = GattPlan::from_characteristics(Framing::Omi, &omi_gatt()).unwrap();
        assert_eq!(plan.audio.uuid, omi::gatt::AUDIO);
        assert_eq!(plan.omi_codec.as_ref().map(|c| c.uuid), Some(omi::gatt::CODEC));
        assert_eq!(plan.battery, None);

        let mut no_codec = omi_gatt();
        no_codec.retain(|c| c.uuid != omi::gatt::CODEC);
        assert!(matches!(
            GattPlan::from_characteristics(Framing::Omi, &no_codec),
            Err(BleError::NoOmiCodecCharacteristic)
        ));
    }

    #[test]
    fn audio_characteristic_must_notify_and_sit_in_its_service() {
        let read_only: BTreeSet<_> = [ch(gatt::SERVICE, gatt::AUDIO, CharPropFlags::READ)].into();
        let err = GattPlan::from_characteristics(Framing::Lanyard, &read_only).unwrap_err();
        assert!(matches!(err, BleError::NoAudioCharacteristic { framing: Framing::Lanyard, .. }), "{err}");
        assert!(err.to_string().contains("Lanyard or Omi build"), "{err}");

        let indicate: BTreeSet<_> = [ch(gatt::SERVICE, gatt::AUDIO, CharPropFlags::INDICATE)].into();
        assert!(GattPlan::from_characteristics(Framing::Lanyard, &indicate).is_ok());

        let wrong_service: BTreeSet<_> = [ch(omi::gatt::SERVICE, gatt::AUDIO, CharPropFlags::NOTIFY)].into();
        assert!(GattPlan::from_characteristics(Framing::Lanyard, &wrong_service).is_err());

        // An Omi table does not satisfy a Lanyard plan, and the reverse.
        assert!(GattPlan::from_characteristics(Framing::Lanyard, &omi_gatt()).is_err());
        assert!(GattPlan::from_characteristics(Framing::Omi, &lanyard_gatt()).is_err());
    }

    #[test]
    fn notifications_route_by_characteristic() {
        let plan = GattPlan::from_characteristics(Framing::Lanyard, &lanyard_gatt()).unwrap();
        let audio = vec![0x11, 0, 0, 0, 1, 0xfc];
        let ptr = audio.as_ptr();
        match plan.route(gatt::AUDIO, audio) {
            // The very same allocation: no copy on the way to the relay.
            Some(LinkEvent::Notification(v)) => assert_eq!(v.as_ptr(), ptr),
            other => panic!("{other:?}"),
        }
        assert_eq!(plan.route(gatt::BATTERY_LEVEL, vec![87]), Some(LinkEvent::Battery(87)));
        assert_eq!(plan.route(gatt::BATTERY_LEVEL, vec![]), None);
        assert_eq!(plan.route(gatt::CONTROL, vec![1]), None);
    }

    #[test]
    fn omi_codec_byte() {
        assert_eq!(omi_codec_from_value(&[21]).unwrap(), OmiCodec::OpusFs320);
        assert_eq!(omi_codec_from_value(&[0, 99]).unwrap(), OmiCodec::Pcm16);
        assert!(matches!(omi_codec_from_value(&[]), Err(BleError::EmptyOmiCodec)));
        assert!(matches!(omi_codec_from_value(&[7]), Err(BleError::UnknownOmiCodec(7))));
        let err = omi_codec_from_value(&[20]).unwrap_err();
        assert!(matches!(err, BleError::UntranscodableOmiCodec(OmiCodec::Opus)));
        assert!(err.to_string().contains("(21)"), "{err}");
        assert!(matches!(omi_codec_from_value(&[1]), Err(BleError::UntranscodableOmiCodec(OmiCodec::Pcm8))));
    }

    #[test]
    fn mtu_unknown_is_assumed() {
        assert_eq!(att_mtu_from_reported(23), ASSUMED_ATT_MTU);
        assert_eq!(att_mtu_from_reported(0), ASSUMED_ATT_MTU);
        assert_eq!(att_mtu_from_reported(24), 24);
        assert_eq!(att_mtu_from_reported(517), 517);
    }

    #[test]
    fn no_adapter_message_says_what_to_do() {
        let msg = BleError::NoAdapter.to_string();
        assert!(msg.contains("is bluetoothd running?"), "{msg}");
        assert!(msg.contains("is the adapter powered?"), "{msg}");
        assert!(msg.contains("`bluetoothctl power on`"), "{msg}");
    }

    /// The link gives up as soon as the relay is gone, even with no adapter
    /// (as on the build machines): it must not spin or hang.
    #[tokio::test]
    async fn stops_when_the_relay_is_gone() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), run_ble_link(BleOptions::default(), tx))
            .await
            .expect("run_ble_link ends once its channel is closed");
    }
}
