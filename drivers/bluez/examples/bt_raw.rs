//! The raw Bluetooth socket loop: the ceiling `gateway` over RFCOMM and L2CAP
//! is compared with in `hil-tests/rig.sh bt`. Moves N bytes over one RFCOMM
//! stream or one BR/EDR (or LE) L2CAP SEQPACKET channel and does nothing
//! else: no framing, no hashing, no encryption, no disk. Needs no bluetoothd,
//! only powered, connectable controllers.
//!
//! ```text
//! bt_raw rfcomm listen [--addr LOCAL] --channel CH --bytes N
//! bt_raw rfcomm send ADDR --channel CH --bytes N [--from LOCAL]
//! bt_raw l2cap listen [--addr LOCAL] --psm PSM --bytes N [--le public|random] [--mtu M]
//! bt_raw l2cap send ADDR --psm PSM --bytes N [--le public|random] [--mtu M] [--from LOCAL]
//! ```
//!
//! Start the listener first. It accepts one connection, reads until N bytes
//! have arrived (or the peer closes), closes, and prints one JSON line
//! `{"proto":..,"role":"recv","bytes":..,"secs":..,"mb_s":..}` (secs from
//! the first byte to the last); it exits non-zero if fewer than N arrived.
//! The sender writes N bytes (L2CAP: packets of the socket's send MTU, the
//! peer's receive MTU), then waits for the listener to close, so its own line
//! (secs from connected to the peer's close) counts only delivered bytes.

use std::time::{Duration, Instant};

use bluer::{Address, AddressType, l2cap, rfcomm};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The raw Bluetooth socket loop (read/write only), the ceiling gateway is compared with.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    proto: Proto,
}

#[derive(Subcommand)]
enum Proto {
    /// An RFCOMM stream.
    Rfcomm {
        #[command(subcommand)]
        role: RfcommRole,
    },
    /// An L2CAP SEQPACKET channel (BR/EDR, or LE credit-based with --le).
    L2cap {
        #[command(subcommand)]
        role: L2capRole,
    },
}

#[derive(Subcommand)]
enum RfcommRole {
    /// Accept one connection and count the bytes it brings.
    Listen {
        /// The local adapter to listen on (default: any).
        #[arg(long, default_value_t = Address::any())]
        addr: Address,
        #[arg(long, default_value_t = 24)]
        channel: u8,
        /// How many bytes to expect.
        #[arg(long)]
        bytes: u64,
    },
    /// Connect to ADDR and write N bytes.
    Send {
        /// The peer adapter's BD address.
        addr: Address,
        #[arg(long, default_value_t = 24)]
        channel: u8,
        /// How many bytes to write.
        #[arg(long)]
        bytes: u64,
        /// The local adapter to connect from (default: the kernel's route).
        #[arg(long)]
        from: Option<Address>,
        /// Bytes per write.
        #[arg(long, default_value_t = 64 * 1024)]
        chunk: usize,
        /// Seconds to keep retrying the connect (the listener may not be up yet).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum L2capRole {
    /// Accept one channel and count the bytes it brings.
    Listen {
        /// The local adapter to listen on (default: any).
        #[arg(long, default_value_t = Address::any())]
        addr: Address,
        /// PSM (BR/EDR default 0x1047 = 4167; LE default 0x87 = 135).
        #[arg(long)]
        psm: Option<u16>,
        /// How many bytes to expect.
        #[arg(long)]
        bytes: u64,
        /// An LE credit-based channel with this local address type.
        #[arg(long, value_enum)]
        le: Option<Le>,
        /// Receive MTU to ask for (0: the kernel's default).
        #[arg(long, default_value_t = 0)]
        mtu: u16,
    },
    /// Connect to ADDR and write N bytes in packets of the send MTU.
    Send {
        /// The peer adapter's BD address.
        addr: Address,
        /// PSM (BR/EDR default 0x1047 = 4167; LE default 0x87 = 135).
        #[arg(long)]
        psm: Option<u16>,
        /// How many bytes to write.
        #[arg(long)]
        bytes: u64,
        /// An LE credit-based channel to a peer with this address type.
        #[arg(long, value_enum)]
        le: Option<Le>,
        /// Receive MTU to ask for (0: the kernel's default).
        #[arg(long, default_value_t = 0)]
        mtu: u16,
        /// The local adapter to connect from (default: the kernel's route).
        #[arg(long)]
        from: Option<Address>,
        /// Seconds to keep retrying the connect (the listener may not be up yet).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

/// LE address type.
#[derive(Clone, Copy, ValueEnum)]
enum Le {
    Public,
    Random,
}

impl Le {
    fn addr_type(le: Option<Le>) -> AddressType {
        match le {
            None => AddressType::BrEdr,
            Some(Le::Public) => AddressType::LePublic,
            Some(Le::Random) => AddressType::LeRandom,
        }
    }
}

const PSM_BR_EDR: u16 = 0x1047;
const PSM_LE: u16 = 0x87;

fn report(proto: &str, role: &str, bytes: u64, secs: f64, extra: &str) {
    let mb_s = if secs > 0.0 {
        bytes as f64 / 1e6 / secs
    } else {
        0.0
    };
    println!(
        "{{\"proto\":\"{proto}\",\"role\":\"{role}\",\"bytes\":{bytes},\"secs\":{secs:.3},\"mb_s\":{mb_s:.3}{extra}}}"
    );
}

/// Retries `connect` until it works or `wait` has passed.
async fn retry<T, F, Fut>(wait: u64, mut connect: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        match connect().await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                eprintln!("bt_raw: connect: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(format!("connect: {e}").into()),
        }
    }
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.proto {
            Proto::Rfcomm { role } => match role {
                RfcommRole::Listen {
                    addr,
                    channel,
                    bytes,
                } => rfcomm_listen(addr, channel, bytes).await,
                RfcommRole::Send {
                    addr,
                    channel,
                    bytes,
                    from,
                    chunk,
                    wait,
                } => rfcomm_send(addr, channel, bytes, from, chunk, wait).await,
            },
            Proto::L2cap { role } => match role {
                L2capRole::Listen {
                    addr,
                    psm,
                    bytes,
                    le,
                    mtu,
                } => l2cap_listen(addr, psm, bytes, le, mtu).await,
                L2capRole::Send {
                    addr,
                    psm,
                    bytes,
                    le,
                    mtu,
                    from,
                    wait,
                } => l2cap_send(addr, psm, bytes, le, mtu, from, wait).await,
            },
        }
    })
}

async fn rfcomm_listen(addr: Address, channel: u8, bytes: u64) -> Res<()> {
    let listener = rfcomm::Listener::bind(rfcomm::SocketAddr::new(addr, channel)).await?;
    eprintln!(
        "bt_raw: rfcomm listening on {}",
        listener.as_ref().local_addr()?
    );
    let (mut stream, peer) = listener.accept().await?;
    eprintln!("bt_raw: rfcomm connection from {peer}");
    let mut buf = vec![0u8; 64 * 1024];
    let (mut got, mut t0) = (0u64, None);
    while got < bytes {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        t0.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    drop(stream);
    report("rfcomm", "recv", got, secs, "");
    if got < bytes {
        return Err(format!("received {got} bytes, expected {bytes}").into());
    }
    Ok(())
}

async fn rfcomm_send(
    addr: Address,
    channel: u8,
    bytes: u64,
    from: Option<Address>,
    chunk: usize,
    wait: u64,
) -> Res<()> {
    let sa = rfcomm::SocketAddr::new(addr, channel);
    let mut stream = retry(wait, || async move {
        let s = rfcomm::Socket::new()?;
        if let Some(from) = from {
            s.bind(rfcomm::SocketAddr::new(from, 0))?;
        }
        s.connect(sa).await
    })
    .await?;
    let t0 = Instant::now();
    let block = vec![0x5au8; chunk.max(1)];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        stream.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    stream.flush().await?;
    // The listener closes once it has everything: wait for that.
    let mut b = [0u8; 64];
    while stream.read(&mut b).await.unwrap_or(0) > 0 {}
    report("rfcomm", "send", bytes, t0.elapsed().as_secs_f64(), "");
    Ok(())
}

fn l2cap_addr(addr: Address, psm: Option<u16>, le: Option<Le>) -> l2cap::SocketAddr {
    let psm = psm.unwrap_or(if le.is_some() { PSM_LE } else { PSM_BR_EDR });
    l2cap::SocketAddr::new(addr, Le::addr_type(le), psm)
}

async fn l2cap_listen(
    addr: Address,
    psm: Option<u16>,
    bytes: u64,
    le: Option<Le>,
    mtu: u16,
) -> Res<()> {
    let sock = l2cap::Socket::new_seq_packet()?;
    sock.bind(l2cap_addr(addr, psm, le))?;
    if mtu > 0 {
        sock.set_recv_mtu(mtu)?;
    }
    let listener = sock.listen(1)?;
    eprintln!(
        "bt_raw: l2cap listening on {:?}",
        listener.as_ref().local_addr()?
    );
    let (conn, peer) = listener.accept().await?;
    let rmtu = conn.recv_mtu()?;
    eprintln!("bt_raw: l2cap connection from {peer:?}, recv mtu {rmtu}");
    let mut buf = vec![0u8; rmtu.max(1)];
    let (mut got, mut packets, mut t0) = (0u64, 0u64, None);
    while got < bytes {
        let n = conn.recv(&mut buf).await?;
        if n == 0 {
            break;
        }
        t0.get_or_insert_with(Instant::now);
        got += n as u64;
        packets += 1;
    }
    let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    drop(conn);
    report(
        "l2cap",
        "recv",
        got,
        secs,
        &format!(",\"recv_mtu\":{rmtu},\"packets\":{packets}"),
    );
    if got < bytes {
        return Err(format!("received {got} bytes, expected {bytes}").into());
    }
    Ok(())
}

async fn l2cap_send(
    addr: Address,
    psm: Option<u16>,
    bytes: u64,
    le: Option<Le>,
    mtu: u16,
    from: Option<Address>,
    wait: u64,
) -> Res<()> {
    let sa = l2cap_addr(addr, psm, le);
    let conn = retry(wait, || async move {
        let s = l2cap::Socket::new_seq_packet()?;
        let local = match from {
            Some(f) => l2cap::SocketAddr::new(f, Le::addr_type(le), 0),
            None if le.is_some() => l2cap::SocketAddr::any_le(),
            None => l2cap::SocketAddr::any_br_edr(),
        };
        s.bind(local)?;
        if mtu > 0 {
            s.set_recv_mtu(mtu)?;
        }
        s.connect(sa).await
    })
    .await?;
    // The send MTU may be known only after the first exchange (bluer's note).
    let mut smtu = conn.send_mtu().unwrap_or(0);
    if smtu == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        smtu = conn.send_mtu()?;
    }
    let t0 = Instant::now();
    let block = vec![0x5au8; smtu.max(1)];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        let sent = conn.send(&block[..n]).await?;
        if sent != n {
            return Err(format!("short send: {sent} of {n}").into());
        }
        left -= n as u64;
    }
    // The listener closes once it has everything: wait for that.
    let mut b = vec![0u8; conn.recv_mtu().unwrap_or(672).max(1)];
    while conn.recv(&mut b).await.unwrap_or(0) > 0 {}
    report(
        "l2cap",
        "send",
        bytes,
        t0.elapsed().as_secs_f64(),
        &format!(",\"send_mtu\":{smtu}"),
    );
    Ok(())
}
