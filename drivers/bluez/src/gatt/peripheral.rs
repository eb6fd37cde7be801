//! The gateway GATT service as a BLE peripheral: a bluer GATT application
//! with socket-backed characteristics (`AcquireWrite`, `AcquireNotify`), LE
//! advertising of the service UUID, and one link per central that says HELLO.
//!
//! BlueZ gives an application one write socket and one notify socket per
//! characteristic, shared by every connected central (notifications go to
//! all subscribers), so links are told apart by the channel byte of each
//! packet and a central ignores notifications of other channels.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bluer::adv::{Advertisement, AdvertisementHandle, Type as AdvType};
use bluer::gatt::CharacteristicWriter;
use bluer::gatt::local::{
    Application, ApplicationHandle, Characteristic, CharacteristicControl,
    CharacteristicControlEvent, CharacteristicNotify, CharacteristicNotifyMethod,
    CharacteristicWrite, CharacteristicWriteMethod, Service, characteristic_control,
};
use bluer::{Adapter, Address, Uuid};
use bytes::Bytes;
use futures::StreamExt;
use gateway_link::{Link, LinkError, LinkInfo, LinkKind, Listener, OpenError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::link::{GattConfig, PacketSink, Wiring, incoming_queue, spawn_link};
use super::wire::{self, MAX_PACKET, MIN_PACKET, Packet, Refusal, VERSION};
use super::{NOTIFY_CHARACTERISTIC_UUID, SERVICE_UUID, WRITE_CHARACTERISTIC_UUID, open_error};

/// How long a HELLO waits for the central's notification session.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// Serves the gateway GATT service on `adapter` (a name like `hci1`, an
/// address like `AA:BB:CC:DD:EE:FF`, or `None` for the default adapter) and
/// advertises it. Each central that connects and says HELLO becomes a link.
pub async fn listen(
    adapter: Option<&str>,
    cfg: &GattConfig,
) -> Result<Box<dyn Listener>, OpenError> {
    let session = bluer::Session::new()
        .await
        .map_err(|e| open_error(&e, "connecting to BlueZ"))?;
    let adapter = find_adapter(&session, adapter).await?;
    let name = adapter.name().to_string();
    let addr = adapter
        .address()
        .await
        .map_err(|e| open_error(&e, &format!("reading {name}'s address")))?;
    if !adapter
        .is_powered()
        .await
        .map_err(|e| open_error(&e, &format!("reading {name}'s power state")))?
    {
        return Err(OpenError::AdapterOff(format!(
            "Bluetooth adapter {name} ({addr}) is powered off; turn it on with `bluetoothctl power on` (or `rfkill unblock bluetooth` if it is blocked)"
        )));
    }
    let (write_ctl, write_handle) = characteristic_control();
    let (notify_ctl, notify_handle) = characteristic_control();
    let app = Application {
        services: vec![Service {
            uuid: Uuid::from_u128(SERVICE_UUID),
            primary: true,
            characteristics: vec![
                Characteristic {
                    uuid: Uuid::from_u128(WRITE_CHARACTERISTIC_UUID),
                    write: Some(CharacteristicWrite {
                        write_without_response: true,
                        method: CharacteristicWriteMethod::Io,
                        ..Default::default()
                    }),
                    control_handle: write_handle,
                    ..Default::default()
                },
                Characteristic {
                    uuid: Uuid::from_u128(NOTIFY_CHARACTERISTIC_UUID),
                    notify: Some(CharacteristicNotify {
                        notify: true,
                        method: CharacteristicNotifyMethod::Io,
                        ..Default::default()
                    }),
                    control_handle: notify_handle,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
        ..Default::default()
    };
    let app = adapter.serve_gatt_application(app).await.map_err(|e| {
        open_error(
            &e,
            &format!("registering the gateway GATT service on {name}"),
        )
    })?;
    let adv = adapter
        .advertise(Advertisement {
            advertisement_type: AdvType::Peripheral,
            service_uuids: [Uuid::from_u128(SERVICE_UUID)].into_iter().collect(),
            discoverable: Some(true),
            local_name: Some("gateway".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            open_error(
                &e,
                &format!(
                    "advertising on {name} (stop other advertisers, e.g. `btmgmt advertising off`)"
                ),
            )
        })?;
    let selector = format!("ble:{addr}");
    tracing::info!(adapter = %name, %addr, "ble peripheral serving the gateway GATT service");
    let (accept_tx, accept_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let (writer, _) = watch::channel(None);
    let svc = ServiceTask {
        cfg: cfg.clone(),
        selector: selector.clone(),
        local: format!("{name} {addr}"),
        links: HashMap::new(),
        next_channel: 1,
        incoming: None,
        central: Address::any(),
        write_mtu: None,
        writer,
        notify_mtu: None,
        waiting: Vec::new(),
        accept_tx,
        ended_tx,
        ended_rx,
        _app: app,
        _adv: adv,
        _session: session,
    };
    let task = tokio::spawn(
        svc.run(write_ctl, notify_ctl)
            .instrument(tracing::info_span!("ble_peripheral", adapter = %name)),
    );
    Ok(Box::new(GattListener {
        selector,
        accept_rx,
        task,
    }))
}

async fn find_adapter(session: &bluer::Session, which: Option<&str>) -> Result<Adapter, OpenError> {
    let names = super::adapter_names(session).await?;
    let Some(which) = which.filter(|w| !w.is_empty()) else {
        return session
            .default_adapter()
            .await
            .map_err(|e| open_error(&e, "opening the default Bluetooth adapter"));
    };
    let want: Option<Address> = which.parse().ok();
    for n in &names {
        let a = session
            .adapter(n)
            .map_err(|e| open_error(&e, &format!("opening adapter {n}")))?;
        let matches = match want {
            Some(addr) => a.address().await.is_ok_and(|x| x == addr),
            None => n == which,
        };
        if matches {
            return Ok(a);
        }
    }
    Err(OpenError::NotFound(format!(
        "no Bluetooth adapter {which} here (adapters: {}); `gateway links` lists them with their addresses",
        names.join(", ")
    )))
}

struct GattListener {
    selector: String,
    accept_rx: mpsc::UnboundedReceiver<Box<dyn Link>>,
    task: JoinHandle<()>,
}

impl Drop for GattListener {
    fn drop(&mut self) {
        // Unregisters the application and the advertisement (their handles
        // live in the task).
        self.task.abort();
    }
}

#[async_trait]
impl Listener for GattListener {
    fn local_selector(&self) -> String {
        self.selector.clone()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        self.accept_rx.recv().await.ok_or_else(|| {
            LinkError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the BLE GATT service stopped (bluetoothd restarted or the adapter went away); listen again",
            ))
        })
    }
}

struct ServiceTask {
    cfg: GattConfig,
    selector: String,
    local: String,
    links: HashMap<u8, mpsc::Sender<Bytes>>,
    next_channel: u8,
    /// Packets from the write socket (read by [`read_writes`]).
    incoming: Option<(mpsc::Receiver<Bytes>, JoinHandle<()>)>,
    /// The central whose write acquired the socket (BlueZ shares it).
    central: Address,
    write_mtu: Option<usize>,
    writer: watch::Sender<Option<Arc<CharacteristicWriter>>>,
    notify_mtu: Option<usize>,
    /// HELLOs (nonce, window, packet, central) waiting for the notification session.
    waiting: Vec<(u64, u16, u16, Address, tokio::time::Instant)>,
    accept_tx: mpsc::UnboundedSender<Box<dyn Link>>,
    ended_tx: mpsc::UnboundedSender<u8>,
    ended_rx: mpsc::UnboundedReceiver<u8>,
    _app: ApplicationHandle,
    _adv: AdvertisementHandle,
    _session: bluer::Session,
}

impl ServiceTask {
    async fn run(
        mut self,
        mut write_ctl: CharacteristicControl,
        mut notify_ctl: CharacteristicControl,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let writer = self.writer.borrow().clone();
            tokio::select! {
                ev = write_ctl.next() => match ev {
                    Some(CharacteristicControlEvent::Write(req)) => {
                        tracing::debug!(central = %req.device_address(), mtu = req.mtu(), "write socket acquired");
                        self.write_mtu = Some(req.mtu());
                        self.central = req.device_address();
                        match req.accept() {
                            Ok(r) => {
                                let (tx, rx) = mpsc::channel(64);
                                let task = tokio::spawn(read_writes(r, tx));
                                if let Some((_, old)) = self.incoming.replace((rx, task)) {
                                    old.abort();
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot accept the GATT write socket"),
                        }
                    }
                    Some(other) => tracing::debug!(?other, "unexpected event on the write characteristic"),
                    None => break,
                },
                ev = notify_ctl.next() => match ev {
                    Some(CharacteristicControlEvent::Notify(w)) => {
                        tracing::debug!(central = %w.device_address(), mtu = w.mtu(), "notify socket acquired");
                        // bluer's writer already takes 5 bytes off the ATT MTU.
                        self.notify_mtu = Some(w.mtu() + 5);
                        self.writer.send_replace(Some(Arc::new(w)));
                        self.answer_waiting().await;
                    }
                    Some(other) => tracing::debug!(?other, "unexpected event on the notify characteristic"),
                    None => break,
                },
                r = async { self.incoming.as_mut().expect("guarded").0.recv().await }, if self.incoming.is_some() => match r {
                    Some(p) => {
                        tracing::trace!(len = p.len(), head = ?&p[..p.len().min(3)], "write socket packet");
                        self.packet(p).await
                    }
                    None => {
                        tracing::debug!("write socket closed by bluetoothd");
                        self.incoming = None;
                    }
                },
                _ = async { writer.as_ref().expect("guarded").closed().await }, if writer.is_some() => {
                    tracing::debug!("the notification session ended (no central subscribed)");
                    self.writer.send_replace(None);
                }
                Some(ch) = self.ended_rx.recv() => {
                    self.links.remove(&ch);
                    tracing::debug!(channel = ch, open = self.links.len(), "ble link ended");
                }
                _ = tick.tick() => {
                    let now = tokio::time::Instant::now();
                    self.waiting.retain(|(_, _, _, central, since)| {
                        let keep = now - *since < HELLO_WAIT;
                        if !keep {
                            tracing::warn!(%central, "a HELLO got no notification session in time; dropped");
                        }
                        keep
                    });
                }
            }
        }
        tracing::debug!("ble peripheral stopped");
    }

    async fn packet(&mut self, raw: Bytes) {
        let Some((channel, packet)) = wire::decode(&raw) else {
            tracing::debug!(
                len = raw.len(),
                "ignoring a packet not of the gateway format"
            );
            return;
        };
        let central = self.central;
        if channel == wire::HANDSHAKE {
            if let Packet::Hello {
                version,
                nonce,
                window,
                packet,
            } = packet
            {
                if version != VERSION {
                    self.notify(wire::encode(
                        wire::HANDSHAKE,
                        &Packet::Refuse {
                            version: VERSION,
                            nonce,
                            reason: Refusal::Version,
                        },
                    ))
                    .await;
                    return;
                }
                self.waiting
                    .push((nonce, window, packet, central, tokio::time::Instant::now()));
                if self.writer.borrow().is_some() {
                    self.answer_waiting().await;
                }
            }
            return;
        }
        match self.links.get(&channel) {
            Some(q) if q.try_send(raw).is_err() => {
                tracing::warn!(channel, "central overran its window; packet dropped");
            }
            Some(_) => {}
            // A link that ended here (dropped, timed out): tell its central.
            None if !matches!(packet, Packet::Reset { .. }) => {
                self.notify(wire::encode(channel, &Packet::Reset { seq: None }))
                    .await;
            }
            None => {}
        }
    }

    async fn notify(&self, p: Bytes) {
        let w = self.writer.borrow().clone();
        if let Some(w) = w
            && let Err(e) = w.send(&p).await
        {
            tracing::debug!(error = %e, "notification failed");
        }
    }

    fn packet_size(&self) -> usize {
        let mtu = match (self.write_mtu, self.notify_mtu) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => 23,
        };
        // bluer's advice: BlueZ loses the end of a value that fills the whole
        // MTU, so stay 5 bytes under it (ATT's own header is 3).
        mtu.saturating_sub(5).clamp(MIN_PACKET, MAX_PACKET)
    }

    async fn answer_waiting(&mut self) {
        for (nonce, window, hello_packet, central, _) in std::mem::take(&mut self.waiting) {
            let Some(channel) = self.free_channel() else {
                self.notify(wire::encode(
                    wire::HANDSHAKE,
                    &Packet::Refuse {
                        version: VERSION,
                        nonce,
                        reason: Refusal::Busy,
                    },
                ))
                .await;
                continue;
            };
            // The notify socket is shared: its MTU is the first central's.
            // A central that says what it takes gets that.
            let packet = match hello_packet {
                0 => self.packet_size(),
                n => usize::from(n).clamp(MIN_PACKET, MAX_PACKET),
            };
            let (q_tx, q_rx) = incoming_queue(&self.cfg);
            self.links.insert(channel, q_tx);
            let sink = NotifySink {
                channel,
                writer: self.writer.subscribe(),
                ended: self.ended_tx.clone(),
            };
            // WELCOME goes first, before any packet of the link.
            self.notify(wire::encode(
                wire::HANDSHAKE,
                &Packet::Welcome {
                    version: VERSION,
                    nonce,
                    channel,
                    packet: packet as u16,
                    window: self.cfg.window_packets,
                },
            ))
            .await;
            tracing::info!(%central, channel, packet, "ble central connected");
            let link = spawn_link(
                &self.cfg,
                Wiring {
                    channel,
                    packet,
                    peer_window: window,
                },
                sink,
                q_rx,
                LinkInfo {
                    selector: self.selector.clone(),
                    local: self.local.clone(),
                    peer: format!("ble:{central}"),
                },
                LinkKind::Ble,
            );
            let _ = self.accept_tx.send(link);
        }
    }

    fn free_channel(&mut self) -> Option<u8> {
        // Round robin over 1..=255, so a late packet of an ended link
        // rarely meets a new link on the same channel.
        for _ in 0..255 {
            let c = self.next_channel;
            self.next_channel = if c == 255 { 1 } else { c + 1 };
            if !self.links.contains_key(&c) {
                return Some(c);
            }
        }
        None
    }
}

/// Reads the write socket into `tx`, one packet per write. Its buffer is
/// larger than any ATT value: the reader bluer gives sizes it by the MTU of
/// the central that acquired the socket, and would cut a later central's
/// longer writes.
async fn read_writes(mut r: bluer::gatt::CharacteristicReader, tx: mpsc::Sender<Bytes>) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 2 * MAX_PACKET];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "write socket failed");
                break;
            }
        }
    }
}

struct NotifySink {
    channel: u8,
    writer: watch::Receiver<Option<Arc<CharacteristicWriter>>>,
    ended: mpsc::UnboundedSender<u8>,
}

#[async_trait]
impl PacketSink for NotifySink {
    async fn send(&mut self, packet: Bytes) -> io::Result<()> {
        let w = self.writer.borrow().clone();
        let Some(w) = w else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the central stopped its notifications (disconnected)",
            ));
        };
        w.send(&packet).await
    }
    async fn finish(&mut self) {
        let _ = self.ended.send(self.channel);
    }
}
