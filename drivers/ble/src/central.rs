//! The BLE central (btleplug): find the peripheral, connect with retries,
//! find the gateway service, say HELLO, and run the GATT link over
//! write-without-response (out) and notifications (in).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use btleplug::api::{
    BDAddr, Central, CentralEvent, Characteristic, Manager as _, Peripheral as _, ScanFilter,
    WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral};
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use gateway_bluez::gatt::wire::{self, Packet, Refusal, VERSION};
use gateway_bluez::gatt::{
    GattConfig, NOTIFY_CHARACTERISTIC_UUID, PacketSink, SERVICE_UUID, WRITE_CHARACTERISTIC_UUID,
    Wiring, incoming_queue, spawn_link,
};
use gateway_link::{Link, LinkInfo, LinkKind, OpenError};
use tokio::time::{Instant, sleep, timeout_at};

/// How an open goes: the numbers of the central side.
#[derive(Clone, Debug)]
pub(crate) struct OpenParams {
    pub(crate) addr: BDAddr,
    /// Local adapter name (hci0); `None` picks one that is not `addr` itself.
    pub(crate) adapter: Option<String>,
    /// Whole open: scan, connect (with retries), handshake.
    pub(crate) timeout: Duration,
    pub(crate) selector: String,
}

/// First connect retry after this, doubling up to [`BACKOFF_MAX`]: on BlueZ,
/// a connect right after discovery fails about half the time.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// One connect attempt may take this long.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(10);
/// HELLO to WELCOME.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Writes (D-Bus WriteValue calls) in flight at once. bluetoothd serves a
/// connection's calls in order and queues write commands in order, so
/// pipelining keeps the order and hides the D-Bus round trip.
const WRITES_IN_FLIGHT: usize = 8;

/// Links per peripheral in this process: the last one to end disconnects.
static USERS: LazyLock<Mutex<HashMap<BDAddr, Arc<tokio::sync::Mutex<usize>>>>> =
    LazyLock::new(Default::default);

fn users(addr: BDAddr) -> Arc<tokio::sync::Mutex<usize>> {
    USERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(addr)
        .or_default()
        .clone()
}

fn bt_err(what: &str, e: btleplug::Error) -> OpenError {
    match e {
        btleplug::Error::PermissionDenied => OpenError::PermissionDenied {
            what: what.to_string(),
            fix: "BlueZ refused; run as root or a user in group bluetooth".into(),
        },
        btleplug::Error::DeviceNotFound => OpenError::NotFound(format!("{what}: device not found")),
        btleplug::Error::TimedOut(d) => {
            OpenError::Timeout(format!("{what}: no answer within {d:?}"))
        }
        other => OpenError::Io(io::Error::other(format!("{what}: {other}"))),
    }
}

pub(crate) async fn open(
    manager: &Manager,
    cfg: &GattConfig,
    p: &OpenParams,
) -> Result<Box<dyn Link>, OpenError> {
    let deadline = Instant::now() + p.timeout;
    let (adapter, adapter_name) = pick_adapter(manager, p).await?;
    let peripheral = find(&adapter, p, deadline).await?;
    let users = users(p.addr);
    let mut count = users.lock().await;
    let (write_c, notify_c) = connect(&adapter, &peripheral, p, deadline).await?;
    let _ = adapter.stop_scan().await;
    let mut notes = peripheral
        .notifications()
        .await
        .map_err(|e| bt_err("listening for notifications", e))?;
    let nonce: u64 = rand::random();
    let hello = wire::encode(
        wire::HANDSHAKE,
        &Packet::Hello {
            version: VERSION,
            nonce,
            window: cfg.window_packets,
        },
    );
    peripheral
        .write(&write_c, &hello, WriteType::WithoutResponse)
        .await
        .map_err(|e| bt_err(&format!("saying hello to {}", p.addr), e))?;
    let hs_deadline = deadline
        .min(Instant::now() + HANDSHAKE)
        .max(Instant::now() + Duration::from_secs(2));
    // The link's first packets may overtake the WELCOME (Enhanced ATT
    // spreads notifications over several bearers): keep them for the link.
    let mut early = Vec::new();
    let (channel, packet, peer_window) = loop {
        let n = match timeout_at(hs_deadline, notes.next()).await {
            Err(_) => {
                return Err(OpenError::Timeout(format!(
                    "{} has the gateway GATT service but did not answer the hello within {HANDSHAKE:?}; is `gateway serve` still running there?",
                    p.addr
                )));
            }
            Ok(None) => {
                return Err(OpenError::Io(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("{} disconnected during the hello", p.addr),
                )));
            }
            Ok(Some(n)) => n,
        };
        if n.uuid != notify_c.uuid {
            continue;
        }
        let raw = Bytes::from(n.value);
        match wire::decode(&raw) {
            Some((
                wire::HANDSHAKE,
                Packet::Welcome {
                    nonce: got,
                    channel,
                    packet,
                    window,
                    ..
                },
            )) if got == nonce => break (channel, usize::from(packet), window),
            Some((
                wire::HANDSHAKE,
                Packet::Refuse {
                    nonce: got, reason, ..
                },
            )) if got == nonce => {
                return Err(match reason {
                    Refusal::Busy => OpenError::Busy(format!(
                        "{} has all 255 BLE channels in use; close other links to it",
                        p.addr
                    )),
                    Refusal::Version => OpenError::Unsupported(format!(
                        "{} speaks another version of the gateway BLE format; update gateway on one side",
                        p.addr
                    )),
                });
            }
            Some((c, _)) if c != wire::HANDSHAKE => early.push(raw),
            _ => continue,
        }
    };
    if !(wire::MIN_PACKET..=wire::MAX_PACKET).contains(&packet) {
        return Err(OpenError::Unsupported(format!(
            "{} offered {packet}-byte packets, outside {}..={}",
            p.addr,
            wire::MIN_PACKET,
            wire::MAX_PACKET
        )));
    }
    *count += 1;
    drop(count);
    tracing::info!(peer = %p.addr, adapter = %adapter_name, channel, packet, "ble connected");
    let (q_tx, q_rx) = incoming_queue(cfg);
    for raw in early.into_iter().filter(|r| r.first() == Some(&channel)) {
        let _ = q_tx.try_send(raw);
    }
    let notify_uuid = notify_c.uuid;
    let mut events = adapter.events().await.ok();
    let id = peripheral.id();
    let pump = tokio::spawn(async move {
        loop {
            let ev = async {
                match &mut events {
                    Some(e) => e.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                n = notes.next() => {
                    let Some(n) = n else { break };
                    if n.uuid != notify_uuid || n.value.first() != Some(&channel) {
                        continue;
                    }
                    if q_tx.try_send(Bytes::from(n.value)).is_err() {
                        if q_tx.is_closed() {
                            break;
                        }
                        tracing::warn!(channel, "peripheral overran its window; packet dropped");
                    }
                }
                ev = ev => match ev {
                    Some(CentralEvent::DeviceDisconnected(d)) if d == id => {
                        tracing::debug!("ble peripheral disconnected");
                        break;
                    }
                    None => events = None,
                    _ => {}
                },
            }
        }
        // Dropping q_tx ends the link's receiver with "connection went away".
    });
    let sink = WriteSink {
        peripheral: peripheral.clone(),
        characteristic: write_c,
        notify: notify_c,
        addr: p.addr,
        in_flight: FuturesOrdered::new(),
        pump: Some(pump),
    };
    Ok(spawn_link(
        cfg,
        Wiring {
            channel,
            packet,
            peer_window,
        },
        sink,
        q_rx,
        LinkInfo {
            selector: p.selector.clone(),
            local: adapter_name,
            peer: format!("ble:{}", p.addr),
        },
        LinkKind::Ble,
    ))
}

/// The local adapter: the named one, or the first that is not the peer itself
/// (a test box with two controllers talks from one to the other).
async fn pick_adapter(manager: &Manager, p: &OpenParams) -> Result<(Adapter, String), OpenError> {
    let adapters = manager
        .adapters()
        .await
        .map_err(|e| bt_err("listing Bluetooth adapters", e))?;
    let mut names = Vec::new();
    for a in adapters {
        let info = a.adapter_info().await.unwrap_or_default();
        let name = info.split_whitespace().next().unwrap_or("").to_string();
        names.push((a, name));
    }
    if names.is_empty() {
        return Err(OpenError::NotFound(
            "this machine has no Bluetooth adapter; plug one in, or check `rfkill list` and dmesg"
                .into(),
        ));
    }
    if let Some(want) = &p.adapter {
        return names.into_iter().find(|(_, n)| n == want).ok_or_else(|| {
            OpenError::NotFound(format!(
                "no Bluetooth adapter {want}; `gateway links` lists the adapters"
            ))
        });
    }
    // The peer's own adapter (same machine) cannot connect to itself.
    let own = crate::probe::adapter_addresses().await.unwrap_or_default();
    let target = p.addr.to_string().to_ascii_uppercase();
    let skip: Vec<&String> = own
        .iter()
        .filter(|(_, a)| a.eq_ignore_ascii_case(&target))
        .map(|(n, _)| n)
        .collect();
    names
        .into_iter()
        .find(|(_, n)| !skip.contains(&n))
        .ok_or_else(|| {
            OpenError::NotFound(format!(
                "{target} is this machine's only Bluetooth adapter; a link needs another device (or a second adapter, chosen with ?adapter=hciN)"
            ))
        })
}

async fn find(
    adapter: &Adapter,
    p: &OpenParams,
    deadline: Instant,
) -> Result<Peripheral, OpenError> {
    let filter = ScanFilter {
        services: vec![bluer::Uuid::from_u128(SERVICE_UUID)],
    };
    if let Err(e) = adapter.start_scan(filter).await {
        tracing::debug!(error = %e, "start_scan failed; trying known devices only");
    }
    loop {
        if let Ok(ps) = adapter.peripherals().await
            && let Some(found) = ps.into_iter().find(|x| x.address() == p.addr)
        {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            let _ = adapter.stop_scan().await;
            return Err(OpenError::NotFound(format!(
                "no BLE device {} advertising the gateway service in range within {:?}; check that `gateway serve --listen ble:` runs there and that it is within range",
                p.addr, p.timeout
            )));
        }
        sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(
    adapter: &Adapter,
    peripheral: &Peripheral,
    p: &OpenParams,
    deadline: Instant,
) -> Result<(Characteristic, Characteristic), OpenError> {
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let r = match tokio::time::timeout(CONNECT_ATTEMPT.min(left), async {
            if !peripheral.is_connected().await.unwrap_or(false) {
                peripheral.connect().await?;
            }
            peripheral.discover_services().await
        })
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("connect attempt timed out".to_string()),
        };
        match r {
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(attempt, error = %e, "ble connect failed");
                if Instant::now() + backoff >= deadline {
                    let _ = adapter.stop_scan().await;
                    return Err(OpenError::Refused(format!(
                        "could not connect to {} in {attempt} attempts within {:?} (last: {e}); check it is in range and advertising, or raise ?timeout=",
                        p.addr, p.timeout
                    )));
                }
                sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    let chars = peripheral.characteristics();
    let pick = |uuid: u128| {
        chars
            .iter()
            .find(|c| {
                c.uuid == bluer::Uuid::from_u128(uuid)
                    && c.service_uuid == bluer::Uuid::from_u128(SERVICE_UUID)
            })
            .cloned()
    };
    let (Some(w), Some(n)) = (
        pick(WRITE_CHARACTERISTIC_UUID),
        pick(NOTIFY_CHARACTERISTIC_UUID),
    ) else {
        return Err(OpenError::Refused(format!(
            "{} does not serve the gateway GATT service; run `gateway serve --listen ble:` there",
            p.addr
        )));
    };
    if let Err(e) = peripheral.subscribe(&n).await {
        // Another link of this process to the same peripheral subscribed already.
        if !e.to_string().contains("InProgress") && !e.to_string().contains("in progress") {
            return Err(bt_err(
                &format!("subscribing to {}'s notifications", p.addr),
                e,
            ));
        }
    }
    Ok((w, n))
}

struct WriteSink {
    peripheral: Peripheral,
    characteristic: Characteristic,
    notify: Characteristic,
    addr: BDAddr,
    in_flight: FuturesOrdered<futures::future::BoxFuture<'static, btleplug::Result<()>>>,
    pump: Option<tokio::task::JoinHandle<()>>,
}

fn sink_err(e: btleplug::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("BLE write failed: {e}"))
}

#[async_trait]
impl PacketSink for WriteSink {
    async fn send(&mut self, packet: Bytes) -> io::Result<()> {
        if self.in_flight.len() >= WRITES_IN_FLIGHT
            && let Some(r) = self.in_flight.next().await
        {
            r.map_err(sink_err)?;
        }
        let p = self.peripheral.clone();
        let c = self.characteristic.clone();
        let mut f = async move { p.write(&c, &packet, WriteType::WithoutResponse).await }.boxed();
        // Poll once now, which sends the D-Bus call: calls leave in order.
        if let Some(r) = (&mut f).now_or_never() {
            return r.map_err(sink_err);
        }
        self.in_flight.push_back(f);
        // Collect what already finished, so errors show up early.
        while let Some(Some(r)) = self.in_flight.next().now_or_never() {
            r.map_err(sink_err)?;
        }
        Ok(())
    }

    async fn finish(&mut self) {
        while let Some(r) = self.in_flight.next().await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "ble write failed at the end");
            }
        }
        if let Some(p) = self.pump.take() {
            p.abort();
        }
        let users = users(self.addr);
        let mut count = users.lock().await;
        *count = count.saturating_sub(1);
        if *count == 0 {
            let _ = self.peripheral.unsubscribe(&self.notify).await;
            if let Err(e) = self.peripheral.disconnect().await {
                tracing::debug!(error = %e, "ble disconnect failed");
            }
            tracing::debug!(peer = %self.addr, "ble disconnected");
        }
    }
}
