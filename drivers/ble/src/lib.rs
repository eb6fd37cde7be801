//! gateway-ble: the `ble:` link driver, for Bluetooth Low Energy. A central
//! (bluer, BlueZ's D-Bus API) opens `ble:ADDR`; `listen ble:` serves the gateway GATT service
//! as a peripheral (gateway-bluez's bluer application). Frames travel in
//! MTU-sized packets with credit flow control (gateway-bluez's `gatt::wire`).
//!
//! It does not pair or bond (the gateway's Noise layer authenticates the
//! peer), and BR/EDR links (RFCOMM, L2CAP) are gateway-bluez's, not this.
#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use gateway_bluez::gatt::GattConfig;
use gateway_link::{Adapter, Link, LinkDriver, Listener, OpenError, Selector, SelectorError};
use tokio::sync::OnceCell;
use tracing::Instrument;

mod central;
mod probe;

pub use gateway_bluez::gatt::DEFAULT_MAX_FRAME as MAX_FRAME;

/// How long `open` may take by default (scan, connect with retries, hello),
/// unless `?timeout=` says otherwise.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The `ble` driver.
///
/// - `open ble:AA:BB:CC:DD:EE:FF`: scans for that peripheral, connects
///   (retrying with back-off), finds the gateway GATT service and says hello.
///   `?adapter=hci0` picks the local adapter (default: the first one that is
///   not the peer itself); `?timeout=30s` bounds the whole open.
/// - `listen ble:`, `ble:hci1` or `ble:ADAPTER_ADDRESS`: serves the gateway
///   GATT service on that adapter (default: BlueZ's default adapter) and
///   advertises it; every central that connects is one link.
///   `local_selector()` is `ble:ADAPTER_ADDRESS`.
///
/// Needs bluetoothd (5.50 or later) on the D-Bus system bus on both sides.
pub struct BleDriver {
    cfg: GattConfig,
    session: OnceCell<bluer::Session>,
}

impl Default for BleDriver {
    fn default() -> Self {
        BleDriver::new()
    }
}

impl std::fmt::Debug for BleDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleDriver").field("cfg", &self.cfg).finish()
    }
}

impl BleDriver {
    /// The driver; register it with `Registry::register(Arc::new(BleDriver::new()))`.
    pub fn new() -> Self {
        BleDriver::with_config(GattConfig::default())
    }

    /// The driver with other window, keepalive and frame limits.
    pub fn with_config(cfg: GattConfig) -> Self {
        BleDriver {
            cfg,
            session: OnceCell::new(),
        }
    }

    async fn session(&self) -> Result<&bluer::Session, OpenError> {
        self.session
            .get_or_try_init(|| async {
                bluer::Session::new()
                    .await
                    .map_err(|e| gateway_bluez::gatt::open_error(&e, "connecting to BlueZ"))
            })
            .await
    }
}

const OPEN_FORM: &str =
    "a peer address, e.g. ble:AA:BB:CC:DD:EE:FF (`gateway links` on the peer shows it)";

fn parse_addr(sel: &Selector, s: &str) -> Result<bluer::Address, SelectorError> {
    let ok = s.len() == 17
        && s.split(':').count() == 6
        && s.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(SelectorError::BadAddress {
            input: sel.raw.clone(),
            expected: OPEN_FORM.into(),
        });
    }
    s.parse().map_err(|_| SelectorError::BadAddress {
        input: sel.raw.clone(),
        expected: OPEN_FORM.into(),
    })
}

#[async_trait]
impl LinkDriver for BleDriver {
    fn scheme(&self) -> &'static str {
        "ble"
    }

    fn describe(&self) -> &'static str {
        "Bluetooth Low Energy GATT: ble:PEER_ADDRESS (open, ?adapter=hci0&timeout=30s), ble: or ble:hciN (listen)"
    }

    async fn probe(&self) -> Vec<Adapter> {
        probe::probe().await
    }

    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let addr = parse_addr(sel, sel.address.trim())?;
        let params = central::OpenParams {
            addr,
            adapter: sel.params.get("adapter").cloned(),
            timeout: sel
                .duration_param("timeout")?
                .unwrap_or(DEFAULT_OPEN_TIMEOUT),
            selector: sel.to_string(),
        };
        let span = tracing::info_span!("ble_open", peer = %addr);
        async {
            let session = self.session().await?;
            central::open(session, &self.cfg, &params).await
        }
        .instrument(span)
        .await
    }

    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        let a = sel.address.trim();
        if !a.is_empty() && !a.starts_with("hci") {
            parse_addr(sel, a).map_err(|_| SelectorError::BadAddress {
                input: sel.raw.clone(),
                expected: "ble: (default adapter), ble:hci1 or ble:ADAPTER_ADDRESS".into(),
            })?;
        }
        gateway_bluez::gatt::listen(Some(a).filter(|a| !a.is_empty()), &self.cfg).await
    }

    /// Peers advertising the gateway service over BLE (no IP needed): a
    /// node serving `ble:` is found by `send --to NAME` and `peers`.
    async fn scan(&self, window: Duration, found: &gateway_link::ScanSink) {
        let Ok(session) = self.session().await else {
            return;
        };
        central::scan(session, window, found)
            .instrument(tracing::debug_span!("ble_scan"))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn bad_selectors_say_what_to_type() {
        let mut reg = gateway_link::Registry::new();
        reg.register(Arc::new(BleDriver::new()));
        gateway_link::conformance::expect_open_errors(
            &reg,
            &[
                ("ble:", "ble:AA:BB:CC:DD:EE:FF"),
                ("ble:hci0", "ble:AA:BB:CC:DD:EE:FF"),
                ("ble:AA:BB:CC:DD:EE", "peer address"),
                ("ble:AA:BB:CC:DD:EE:FF?timeout=soon", "duration"),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn probe_says_why_ble_is_unusable_here_or_lists_adapters() {
        let found = BleDriver::new().probe().await;
        assert!(!found.is_empty(), "probe returned nothing");
        for a in &found {
            println!("{} {} usable={} {}", a.scheme, a.name, a.usable, a.detail);
            assert!(
                a.usable || a.detail.contains('`'),
                "no fix in: {}",
                a.detail
            );
        }
    }
}
