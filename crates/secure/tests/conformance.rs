//! The link conformance suite, run over `SecureLink`s on mock links: a
//! secure link must behave like any other link (ordering both ways from
//! separate tasks, max_frame, close, half-dead peers, reconnects, large
//! frames).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gateway_link::{Adapter, Link, LinkDriver, LinkError, Listener, OpenError, Registry, Selector};
use gateway_secure::{NodeKey, SecureError, accept, connect};

const HANDSHAKE: Duration = Duration::from_secs(10);

/// `secmock:NAME` = `mock:NAME` with a Noise handshake on top.
struct SecureMock {
    mock: Registry,
    opener: NodeKey,
    listener: Arc<NodeKey>,
}

fn inner(sel: &Selector) -> String {
    sel.to_string().replacen("secmock:", "mock:", 1)
}

fn open_err(e: SecureError) -> OpenError {
    OpenError::Io(std::io::Error::other(e.to_string()))
}

#[async_trait]
impl LinkDriver for SecureMock {
    fn scheme(&self) -> &'static str {
        "secmock"
    }
    fn describe(&self) -> &'static str {
        "mock links with Noise on top (tests)"
    }
    async fn probe(&self) -> Vec<Adapter> {
        Vec::new()
    }
    async fn open(&self, sel: &Selector) -> Result<Box<dyn Link>, OpenError> {
        let link = self.mock.open(&inner(sel)).await?;
        Ok(Box::new(
            connect(link, &self.opener, HANDSHAKE)
                .await
                .map_err(open_err)?,
        ))
    }
    async fn listen(&self, sel: &Selector) -> Result<Box<dyn Listener>, OpenError> {
        Ok(Box::new(SecureListener {
            inner: self.mock.listen(&inner(sel)).await?,
            key: self.listener.clone(),
        }))
    }
}

struct SecureListener {
    inner: Box<dyn Listener>,
    key: Arc<NodeKey>,
}

#[async_trait]
impl Listener for SecureListener {
    fn local_selector(&self) -> String {
        self.inner.local_selector().replacen("mock:", "secmock:", 1)
    }
    async fn accept(&mut self) -> Result<Box<dyn Link>, LinkError> {
        let link = self.inner.accept().await?;
        match accept(link, &self.key, HANDSHAKE).await {
            Ok(s) => Ok(Box::new(s)),
            Err(SecureError::Link(e)) => Err(e),
            Err(e) => Err(LinkError::Corrupt(e.to_string())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_links_pass_the_link_conformance_suite() {
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut reg = Registry::new();
    reg.register(Arc::new(SecureMock {
        mock: Registry::new(),
        opener: NodeKey::load_or_create(da.path()).unwrap(),
        listener: Arc::new(NodeKey::load_or_create(db.path()).unwrap()),
    }));
    // The suite really runs on secure links: they are a little smaller.
    let mut l = reg.listen("secmock:probe").await.unwrap();
    let (a, b) = tokio::join!(reg.open("secmock:probe"), l.accept());
    let (a, _b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.caps().max_frame,
        gateway_link::mock::DEFAULT_MAX_FRAME - 258 * 16,
        "one 16-byte tag per 65535-byte Noise message"
    );
    if let Err(e) = gateway_link::conformance::run_all(&reg, "secmock:conformance").await {
        panic!("{e}");
    }
}
