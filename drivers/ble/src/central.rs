//! The BLE central (bluer, BlueZ's D-Bus API): find the peripheral with an
//! LE-only scan, connect with retries, wait until BlueZ resolved its
//! services, take the write and notify characteristics as sockets
//! (`AcquireWrite`, `AcquireNotify`), say HELLO, and run the GATT link over
//! them.
//!
//! Why not btleplug: it scans with BlueZ's "auto" transport, so a dual-mode
//! peripheral is also found by BR/EDR inquiry and `Device1.Connect` then
//! picks BR/EDR (BlueZ prefers it on a tie), where the gateway service is
//! not; and it writes each packet with its own D-Bus call.
//!
//! Several links of this process to one peripheral share its connection and
//! its two sockets (BlueZ lets one client acquire each once); a task reads
//! the notify socket and hands each packet to the link of its channel.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bluer::gatt::remote::Characteristic;
use bluer::gatt::{CharacteristicReader, CharacteristicWriter};
use bluer::{Adapter, Address, Device, DiscoveryFilter, DiscoveryTransport, Session, Uuid};
use bytes::Bytes;
use gateway_bluez::gatt::wire::{self, Packet, Refusal, VERSION};
use gateway_bluez::gatt::{
    GattConfig, NOTIFY_CHARACTERISTIC_UUID, PacketSink, SERVICE_UUID, WRITE_CHARACTERISTIC_UUID,
    Wiring, incoming_queue, open_error, spawn_link,
};
use gateway_link::{Link, LinkInfo, LinkKind, OpenError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout_at};

/// How an open goes: the numbers of the central side.
#[derive(Clone, Debug)]
pub(crate) struct OpenParams {
    pub(crate) addr: Address,
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
/// One connect attempt (connect + service resolution) may take this long.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(10);
/// HELLO to WELCOME.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// The longest wait for an earlier disconnect from the same peer.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// Packets of channels no link here knows yet, kept for a link whose first
/// packets overtake its WELCOME (Enhanced ATT spreads notifications over
/// several bearers). Other centrals' channels pass by too: a ring.
const ORPHANS: usize = 128;

/// Connections to peripherals, shared by this process's links to each.
static CONNS: LazyLock<tokio::sync::Mutex<ConnMap>> = LazyLock::new(Default::default);
/// (local adapter name, peer) -> its connection.
type ConnMap = HashMap<(String, Address), Weak<Conn>>;

/// Disconnects still under way: a new connection to that peer waits for
/// its disconnect, which would otherwise cut the new one.
static DISCONNECTS: LazyLock<Mutex<HashMap<Address, tokio::task::JoinHandle<()>>>> =
    LazyLock::new(Default::default);

pub(crate) async fn open(
    session: &Session,
    cfg: &GattConfig,
    p: &OpenParams,
) -> Result<Box<dyn Link>, OpenError> {
    let deadline = Instant::now() + p.timeout;
    let adapter = pick_adapter(session, p).await?;
    let name = adapter.name().to_string();
    let conn = {
        // Held across the connect, so two opens to one peer share it.
        let mut conns = CONNS.lock().await;
        match conns.get(&(name.clone(), p.addr)).and_then(Weak::upgrade) {
            Some(c) if !c.is_dead() => c,
            _ => {
                let pending = DISCONNECTS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p.addr);
                if let Some(d) = pending {
                    // A disconnect bluetoothd never answers must not hold this open.
                    let _ = timeout_at(deadline.min(Instant::now() + DISCONNECT_WAIT), d).await;
                }
                // Every D-Bus call inside (scan, connect, services, acquiring
                // the sockets) is bounded by the open's budget as a whole.
                let c = timeout_at(deadline, Conn::connect(&adapter, p, deadline))
                    .await
                    .map_err(|_| {
                        OpenError::Timeout(format!(
                            "BLE to {}: no usable connection within {:?} (bluetoothd did not finish connecting or resolving its services); check it is in range and advertising, or raise ?timeout=",
                            p.addr, p.timeout
                        ))
                    })??;
                conns.insert((name.clone(), p.addr), Arc::downgrade(&c));
                c
            }
        }
    };
    let nonce: u64 = rand::random();
    let (q_tx, q_rx) = incoming_queue(cfg);
    let (welcome_tx, welcome_rx) = oneshot::channel();
    conn.state().waiting.insert(nonce, (q_tx, welcome_tx));
    let hello = wire::encode(
        wire::HANDSHAKE,
        &Packet::Hello {
            version: VERSION,
            nonce,
            window: cfg.window_packets,
            packet: conn.receive_packet as u16,
        },
    );
    let hs_deadline = deadline
        .min(Instant::now() + HANDSHAKE)
        .max(Instant::now() + Duration::from_secs(2));
    let sent = timeout_at(hs_deadline, conn.writer.send(&hello))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the write did not go out",
            ))
        });
    if let Err(e) = sent {
        conn.state().waiting.remove(&nonce);
        return Err(OpenError::Io(io::Error::new(
            e.kind(),
            format!("saying hello to {}: {e}", p.addr),
        )));
    }
    let answer = timeout_at(hs_deadline, welcome_rx).await;
    conn.state().waiting.remove(&nonce);
    let (channel, packet, peer_window) = match answer {
        Err(_) => {
            return Err(OpenError::Timeout(format!(
                "{} has the gateway GATT service but did not answer the hello within {HANDSHAKE:?}; is `gateway serve` still running there?",
                p.addr
            )));
        }
        Ok(Err(_)) => {
            return Err(OpenError::Io(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("{} disconnected during the hello", p.addr),
            )));
        }
        Ok(Ok(Packet::Welcome {
            channel,
            packet,
            window,
            ..
        })) => (channel, usize::from(packet), window),
        Ok(Ok(Packet::Refuse { reason, .. })) => {
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
        Ok(Ok(other)) => unreachable!("only WELCOME and REFUSE are answers: {other:?}"),
    };
    if !(wire::MIN_PACKET..=wire::MAX_PACKET).contains(&packet) {
        conn.state().routes.remove(&channel);
        return Err(OpenError::Unsupported(format!(
            "{} offered {packet}-byte packets, outside {}..={}",
            p.addr,
            wire::MIN_PACKET,
            wire::MAX_PACKET
        )));
    }
    // Packets are cut by their sender, so ours may be smaller than what the
    // peripheral sends: bounded by our socket's MTU, and by what
    // bluetoothd < 5.69 accepts as a write (wire::MAX_WRITE_PACKET).
    let send_packet = packet.min(conn.writer.mtu()).min(wire::MAX_WRITE_PACKET);
    if send_packet < wire::MIN_PACKET {
        conn.state().routes.remove(&channel);
        return Err(OpenError::Unsupported(format!(
            "the ATT MTU to {} leaves {send_packet}-byte writes, under the {} the gateway format needs; an adapter of Bluetooth 4.2 or later negotiates more",
            p.addr,
            wire::MIN_PACKET
        )));
    }
    tracing::info!(peer = %p.addr, adapter = %name, channel, packet, send_packet, "ble connected");
    let sink = WriteSink {
        conn: conn.clone(),
        channel,
    };
    Ok(spawn_link(
        cfg,
        Wiring {
            channel,
            packet: send_packet,
            peer_window,
        },
        sink,
        q_rx,
        LinkInfo {
            selector: p.selector.clone(),
            local: format!(
                "{name} {}",
                adapter
                    .address()
                    .await
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            peer: format!("ble:{}", p.addr),
        },
        LinkKind::Ble,
    ))
}

/// The local adapter: the named one, or the first that is not the peer itself
/// (a test box with two controllers talks from one to the other).
async fn pick_adapter(session: &Session, p: &OpenParams) -> Result<Adapter, OpenError> {
    let names = gateway_bluez::gatt::adapter_names(session).await?;
    if let Some(want) = &p.adapter {
        if !names.contains(want) {
            return Err(OpenError::NotFound(format!(
                "no Bluetooth adapter {want} (adapters: {}); `gateway links` lists them",
                names.join(", ")
            )));
        }
        return session
            .adapter(want)
            .map_err(|e| open_error(&e, &format!("opening adapter {want}")));
    }
    for n in &names {
        let a = session
            .adapter(n)
            .map_err(|e| open_error(&e, &format!("opening adapter {n}")))?;
        // The peer's own adapter (same machine) cannot connect to itself.
        if a.address().await.is_ok_and(|x| x == p.addr) {
            continue;
        }
        return Ok(a);
    }
    Err(OpenError::NotFound(format!(
        "{} is this machine's only Bluetooth adapter; a link needs another device (or a second adapter, chosen with ?adapter=hciN)",
        p.addr
    )))
}

/// A scan also offers devices BlueZ knows with the gateway service but no
/// RSSI after this long.
const CACHED_AFTER: Duration = Duration::from_millis(1500);

/// The LE scan filter for the gateway service.
fn gateway_filter() -> DiscoveryFilter {
    DiscoveryFilter {
        uuids: [Uuid::from_u128(SERVICE_UUID)].into_iter().collect(),
        transport: DiscoveryTransport::Le,
        ..Default::default()
    }
}

/// Scans every powered adapter (LE only, for the gateway service) for
/// `window` and sends `ble:ADDR` once for each peripheral seen advertising
/// it now (an RSSI in this scan), and after [`CACHED_AFTER`] also for those
/// BlueZ knows with the service but no RSSI. Its own adverts a controller never receives; a
/// second adapter of this machine that serves is found, and discovery drops
/// it when its Hello carries this node's own id.
pub(crate) async fn scan(session: &Session, window: Duration, found: &gateway_link::ScanSink) {
    let deadline = Instant::now() + window;
    let Ok(names) = gateway_bluez::gatt::adapter_names(session).await else {
        return;
    };
    // The scans run while their handles live (dropped at the end).
    let (mut adapters, mut scans) = (Vec::new(), Vec::new());
    for n in &names {
        let Ok(a) = session.adapter(n) else { continue };
        if !a.is_powered().await.unwrap_or(false) {
            continue;
        }
        // Fails while an open of this process scans: that scan serves.
        let _ = a.set_discovery_filter(gateway_filter()).await;
        match a.discover_devices().await {
            Ok(s) => {
                scans.push(s);
                adapters.push(a);
            }
            Err(e) => tracing::debug!(adapter = %n, error = %e, "LE scan did not start"),
        }
    }
    let uuid = Uuid::from_u128(SERVICE_UUID);
    let mut sent = std::collections::HashSet::new();
    let started = Instant::now();
    while Instant::now() < deadline {
        // Seen advertising in this scan (an RSSI) at once; after a moment,
        // also a device BlueZ knows lists the service but has no RSSI for
        // (virtual and some real controllers report none; `find` has the
        // same fallback). Discovery verifies every one before using it.
        let cached_too = started.elapsed() >= CACHED_AFTER;
        for a in &adapters {
            for addr in a.device_addresses().await.unwrap_or_default() {
                if sent.contains(&addr) {
                    continue;
                }
                let Ok(d) = a.device(addr) else { continue };
                let advertises = d
                    .uuids()
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|u| u.contains(&uuid));
                let now_in_range = d.rssi().await.ok().flatten().is_some();
                if advertises && (now_in_range || cached_too) {
                    sent.insert(addr);
                    tracing::debug!(peer = %addr, now_in_range, "a BLE peripheral lists the gateway service");
                    if found.send(format!("ble:{addr}")).is_err() {
                        return;
                    }
                }
            }
        }
        sleep(Duration::from_millis(300)).await;
    }
    drop(scans);
}

/// Scans (LE only, for the gateway service) until `addr` advertises.
async fn find(adapter: &Adapter, p: &OpenParams, deadline: Instant) -> Result<Device, OpenError> {
    // Fails while another open of this process scans: that scan serves.
    if let Err(e) = adapter.set_discovery_filter(gateway_filter()).await {
        tracing::debug!(error = %e, "setting the LE discovery filter failed");
    }
    let scan = match adapter.discover_devices().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "scan failed; trying known devices only");
            None
        }
    };
    let started = Instant::now();
    loop {
        if let Ok(d) = adapter.device(p.addr) {
            // Seen advertising in this scan (RSSI is set), or known from
            // before and the scan could not start, or not seen for a while
            // (BlueZ keeps connectable LE devices it saw before: try it).
            let seen = d.rssi().await.ok().flatten().is_some();
            if seen
                || (scan.is_none() && d.address_type().await.is_ok())
                || (started.elapsed() > Duration::from_secs(5) && d.address_type().await.is_ok())
            {
                drop(scan);
                return Ok(d);
            }
        }
        if Instant::now() >= deadline {
            return Err(OpenError::NotFound(format!(
                "no BLE device {} advertising the gateway service in range within {:?}; check that `gateway serve --listen ble:` runs there and that it is within range",
                p.addr, p.timeout
            )));
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// A connection to one peripheral and its two sockets.
struct Conn {
    device: Device,
    addr: Address,
    writer: CharacteristicWriter,
    /// The largest notification value this central's ATT MTU lets through.
    receive_packet: usize,
    state: Mutex<ConnState>,
    reader_task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct ConnState {
    /// HELLOs waiting for their answer: nonce -> (the link's queue, answer).
    waiting: HashMap<u64, (mpsc::Sender<Bytes>, oneshot::Sender<Packet>)>,
    /// The open links' queues by channel.
    routes: HashMap<u8, mpsc::Sender<Bytes>>,
    orphans: VecDeque<Bytes>,
    dead: bool,
}

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.state().dead
    }

    async fn connect(
        adapter: &Adapter,
        p: &OpenParams,
        deadline: Instant,
    ) -> Result<Arc<Conn>, OpenError> {
        let device = find(adapter, p, deadline).await?;
        let (write_c, notify_c) = connect(&device, p, deadline).await?;
        let what = |x: &str| format!("{x} of {}'s gateway service", p.addr);
        // Notifications first: the WELCOME comes that way.
        let reader = notify_c
            .notify_io()
            .await
            .map_err(|e| open_error(&e, &what("subscribing to the notify characteristic")))?;
        let writer = write_c
            .write_io()
            .await
            .map_err(|e| open_error(&e, &what("acquiring the write characteristic")))?;
        tracing::debug!(
            write_mtu = writer.mtu(),
            notify_mtu = reader.mtu(),
            "ble sockets acquired"
        );
        // A notification value is at most the ATT MTU less its 3-byte header.
        let receive_packet = reader
            .mtu()
            .saturating_sub(3)
            .clamp(wire::MIN_PACKET, wire::MAX_PACKET);
        Ok(Arc::new_cyclic(|weak: &Weak<Conn>| Conn {
            device,
            addr: p.addr,
            writer,
            receive_packet,
            state: Mutex::new(ConnState::default()),
            reader_task: tokio::spawn(read_notifications(reader, weak.clone())),
        }))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader_task.abort();
        // Gone already (the peer disconnected): a disconnect now could hit
        // a newer connection to it.
        if self.is_dead() {
            return;
        }
        let device = self.device.clone();
        let addr = self.addr;
        // The sockets close with this; the BLE connection goes with a disconnect.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let task = rt.spawn(async move {
                if let Err(e) = device.disconnect().await {
                    tracing::debug!(error = %e, "ble disconnect failed");
                }
                tracing::debug!(peer = %addr, "ble disconnected");
            });
            DISCONNECTS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, task);
        }
    }
}

/// Hands each notification to the link of its channel, and handshake
/// answers to the open waiting for them.
async fn read_notifications(reader: CharacteristicReader, conn: Weak<Conn>) {
    loop {
        // The reader's buffer is this central's ATT MTU, which bounds every
        // notification it gets.
        let raw = match reader.recv().await {
            Ok(v) if v.is_empty() => break,
            Err(_) => break,
            Ok(v) => Bytes::from(v),
        };
        let Some(conn) = conn.upgrade() else { break };
        let mut st = conn.state();
        match wire::decode(&raw) {
            Some((wire::HANDSHAKE, p @ Packet::Welcome { nonce, channel, .. })) => {
                if let Some((q, answer)) = st.waiting.remove(&nonce) {
                    let orphans = std::mem::take(&mut st.orphans);
                    for o in orphans {
                        if o.first() == Some(&channel) {
                            let _ = q.try_send(o);
                        } else {
                            st.orphans.push_back(o);
                        }
                    }
                    st.routes.insert(channel, q);
                    let _ = answer.send(p);
                }
            }
            Some((wire::HANDSHAKE, p @ Packet::Refuse { nonce, .. })) => {
                if let Some((_, answer)) = st.waiting.remove(&nonce) {
                    let _ = answer.send(p);
                }
            }
            Some((wire::HANDSHAKE, _)) | None => {}
            Some((channel, _)) => match st.routes.get(&channel) {
                Some(q) => {
                    if q.try_send(raw).is_err() && !q.is_closed() {
                        tracing::warn!(channel, "peripheral overran its window; packet dropped");
                    }
                }
                None => {
                    if st.orphans.len() >= ORPHANS {
                        st.orphans.pop_front();
                    }
                    st.orphans.push_back(raw);
                }
            },
        }
    }
    // Dropping the queues ends the links' receivers with "connection went away".
    if let Some(conn) = conn.upgrade() {
        let mut st = conn.state();
        st.dead = true;
        st.routes.clear();
        st.waiting.clear();
    }
    tracing::debug!("ble notify socket closed (disconnected)");
}

/// Connects (with back-off) until BlueZ resolved the peripheral's services,
/// and finds the gateway service's two characteristics.
async fn connect(
    device: &Device,
    p: &OpenParams,
    deadline: Instant,
) -> Result<(Characteristic, Characteristic), OpenError> {
    let mut backoff = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let e: String = match tokio::time::timeout(CONNECT_ATTEMPT.min(left), async {
            if !device.is_connected().await? {
                device.connect().await?;
            }
            // Waits for ServicesResolved: before it, the list may lack ours.
            let services = device.services().await?;
            let mut found = (None, None);
            for s in services {
                if s.uuid().await? != Uuid::from_u128(SERVICE_UUID) {
                    continue;
                }
                for c in s.characteristics().await? {
                    let u = c.uuid().await?;
                    if u == Uuid::from_u128(WRITE_CHARACTERISTIC_UUID) {
                        found.0 = Some(c);
                    } else if u == Uuid::from_u128(NOTIFY_CHARACTERISTIC_UUID) {
                        found.1 = Some(c);
                    }
                }
            }
            Ok::<_, bluer::Error>(found)
        })
        .await
        {
            Ok(Ok((Some(w), Some(n)))) => return Ok((w, n)),
            Ok(Ok(_)) => format!("{} does not serve the gateway GATT service", p.addr),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect attempt timed out".to_string(),
        };
        tracing::debug!(attempt, error = %e, "ble connect failed");
        if Instant::now() + backoff >= deadline {
            let _ = tokio::time::timeout(DISCONNECT_WAIT, device.disconnect()).await;
            return Err(if e.contains("gateway GATT service") {
                OpenError::Refused(format!("{e}; run `gateway serve --listen ble:` there"))
            } else {
                OpenError::Refused(format!(
                    "could not connect to {} in {attempt} attempts within {:?} (last: {e}); check it is in range and advertising, or raise ?timeout=",
                    p.addr, p.timeout
                ))
            });
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct WriteSink {
    conn: Arc<Conn>,
    channel: u8,
}

#[async_trait]
impl PacketSink for WriteSink {
    async fn send(&mut self, packet: Bytes) -> io::Result<()> {
        // One datagram is one write without response; bluetoothd queues
        // them in order. The socket's buffer is the back-pressure.
        tracing::trace!(len = packet.len(), head = ?&packet[..packet.len().min(3)], "ble write");
        self.conn.writer.send(&packet).await
    }

    async fn finish(&mut self) {
        self.conn.state().routes.remove(&self.channel);
    }
}
