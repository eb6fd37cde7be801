//! The driver registry: selector string in, link out.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use crate::{Adapter, Link, LinkDriver, LinkError, Listener, OpenError, RateLimited, Selector};

/// The drivers a process knows, by scheme. Opens and listens by selector
/// string and applies `?rate=` around whatever link the driver returns.
#[derive(Clone)]
pub struct Registry {
    drivers: BTreeMap<&'static str, Arc<dyn LinkDriver>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Registry {
    /// A registry holding the `mock` driver.
    pub fn new() -> Self {
        let mut r = Registry::empty();
        r.register(Arc::new(crate::mock::MockDriver));
        r
    }

    /// A registry with no drivers at all.
    pub fn empty() -> Self {
        Registry {
            drivers: BTreeMap::new(),
        }
    }

    /// Adds a driver; a driver already registered for the same scheme is replaced.
    pub fn register(&mut self, d: Arc<dyn LinkDriver>) {
        self.drivers.insert(d.scheme(), d);
    }

    /// All drivers, sorted by scheme.
    pub fn drivers(&self) -> Vec<Arc<dyn LinkDriver>> {
        self.drivers.values().cloned().collect()
    }

    /// Known schemes, sorted.
    pub fn schemes(&self) -> Vec<String> {
        self.drivers.keys().map(|s| s.to_string()).collect()
    }

    fn resolve(&self, sel: &str) -> Result<Resolved, OpenError> {
        let sel = Selector::parse(sel)?;
        let rate = sel.rate_bytes_per_s()?;
        let driver = self
            .drivers
            .get(sel.scheme.as_str())
            .cloned()
            .ok_or_else(|| OpenError::UnknownScheme {
                scheme: sel.scheme.clone(),
                known: self.schemes(),
            })?;
        Ok((sel, driver, rate))
    }

    /// Opens a link by selector, wrapped in a byte-rate cap if `?rate=` is given.
    pub async fn open(&self, sel: &str) -> Result<Box<dyn Link>, OpenError> {
        let span = tracing::info_span!("link_open", selector = %sel.trim());
        async {
            let (sel, driver, rate) = self.resolve(sel)?;
            let link = driver
                .open(&sel)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "open failed"))?;
            tracing::debug!(peer = %link.info().peer, ?rate, "link open");
            Ok(match rate {
                Some(r) => RateLimited::wrap(link, r),
                None => link,
            })
        }
        .instrument(span)
        .await
    }

    /// Starts a listener by selector; `?rate=` caps every accepted link.
    pub async fn listen(&self, sel: &str) -> Result<Box<dyn Listener>, OpenError> {
        let span = tracing::info_span!("link_listen", selector = %sel.trim());
        async {
            let (sel, driver, rate) = self.resolve(sel)?;
            let l = driver
                .listen(&sel)
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "listen failed"))?;
            tracing::debug!(local = %l.local_selector(), ?rate, "listening");
            Ok(match rate {
                Some(r) => Box::new(RateListener {
                    inner: l,
                    bytes_per_s: r,
                }) as Box<dyn Listener>,
                None => l,
            })
        }
        .instrument(span)
        .await
    }

    /// Runs every driver's [`LinkDriver::scan`] at once for up to `window`;
    /// selectors arrive on `found` as they are seen.
    pub async fn scan(&self, window: std::time::Duration, found: crate::ScanSink) {
        let scans = self.drivers.values().map(|d| {
            let found = found.clone();
            async move { tokio::time::timeout(window, d.scan(window, &found)).await }
        });
        futures::future::join_all(scans).await;
    }

    /// Probes every driver's adapters, in scheme order.
    pub async fn probe_all(&self) -> Vec<Adapter> {
        let mut all = Vec::new();
        for d in self.drivers.values() {
            all.extend(d.probe().await);
        }
        all
    }
}

/// A parsed selector, its driver and its `?rate=` cap.
type Resolved = (Selector, Arc<dyn LinkDriver>, Option<u64>);

struct RateListener {
    inner: Box<dyn Listener>,
    bytes_per_s: u64,
}

#[async_trait]
impl Listener for RateListener {
    fn local_selector(&self) -> String {
        self.inner.local_selector()
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        Ok(RateLimited::wrap(
            self.inner.accept().await?,
            self.bytes_per_s,
        ))
    }
}
