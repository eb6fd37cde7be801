//! The raw bulk loop: the ceiling `gateway` over USB is compared with in
//! `hil-tests/rig.sh usb`. Moves N bytes over the same gadget identity and
//! interface, with the same transfer size and queue depth as the driver, and
//! does nothing else: no framing, no hashing, no encryption, no disk.
//!
//! ```text
//! usb_raw gadget --udc dummy_udc.1 --dir in|out --bytes N   # root; gadget `gateway-raw`
//! usb_raw host --vid-pid 1d6b:0104 --dir in|out --bytes N   # prints one JSON line
//! ```
//!
//! `in` is device → host, `out` host → device. Start the gadget first; the
//! host waits up to `--wait` seconds for it to enumerate. The host prints
//! `{"dir":..,"bytes":..,"secs":..,"mb_s":..}` (secs from the first
//! transfer submitted to the last completed).
//!
//! Zero-length packets: both ends cut the stream the same way, N as
//! transfers of `TRANSFER_BYTES` and one shorter last, and each reader sizes
//! its buffer for the transfer it expects (rounded up to the max packet
//! size). So every read ends either full or on a short packet, and no ZLP is
//! needed (a last transfer that is a multiple of the packet size fills its
//! buffer exactly).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Parser, Subcommand, ValueEnum};
use gateway_usb::{
    GadgetParts, INTERFACE_CLASS, INTERFACE_PROTOCOL, INTERFACE_SUBCLASS, PRODUCT_ID,
    TRANSFER_BYTES, TRANSFERS_IN_FLIGHT, VENDOR_ID, gadget_parts,
};
use nusb::transfer::{Buffer, Bulk, In, Out};
use usb_gadget::function::custom::Event;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The raw USB bulk loop (read/write only), the ceiling gateway is compared with.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// The device end (root): builds the configfs gadget `gateway-raw` on UDC.
    Gadget {
        /// The UDC to bind, e.g. dummy_udc.1 (see /sys/class/udc).
        #[arg(long)]
        udc: String,
        /// in: device -> host (the gadget writes); out: host -> device (it reads).
        #[arg(long, value_enum)]
        dir: Dir,
        /// How many bytes to move.
        #[arg(long)]
        bytes: u64,
    },
    /// The host end: finds the gateway interface, claims it, prints one JSON line.
    Host {
        /// Only a device with this VID:PID (hex).
        #[arg(long, default_value_t = format!("{VENDOR_ID:04x}:{PRODUCT_ID:04x}"))]
        vid_pid: String,
        /// in: device -> host (the host reads); out: host -> device (it writes).
        #[arg(long, value_enum)]
        dir: Dir,
        /// How many bytes to move (the same N as the gadget's).
        #[arg(long)]
        bytes: u64,
        /// Seconds to wait for the device to appear.
        #[arg(long, default_value_t = 20)]
        wait: u64,
    },
}

/// `in`: device → host (the gadget writes); `out`: host → device (the gadget reads).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dir {
    In,
    Out,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

/// Both ends cut N bytes into the same transfers: full ones, then the rest.
fn transfer_len(left: u64) -> usize {
    left.min(TRANSFER_BYTES as u64) as usize
}

/// A read buffer for a transfer of `n` bytes: a whole number of packets.
fn read_len(n: usize, mps: usize) -> usize {
    n.div_ceil(mps) * mps
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.role {
        Role::Gadget { udc, dir, bytes } => rt.block_on(gadget(&udc, dir, bytes)),
        Role::Host {
            vid_pid,
            dir,
            bytes,
            wait,
        } => {
            let (v, p) = vid_pid
                .split_once(':')
                .and_then(|(v, p)| {
                    Some((
                        u16::from_str_radix(v, 16).ok()?,
                        u16::from_str_radix(p, 16).ok()?,
                    ))
                })
                .ok_or("--vid-pid wants VID:PID in hex, e.g. 1d6b:0104")?;
            rt.block_on(host((v, p), dir, bytes, Duration::from_secs(wait)))
        }
    }
}

async fn gadget(udc_name: &str, dir: Dir, bytes: u64) -> Res<()> {
    let udc = usb_gadget::udcs()?
        .into_iter()
        .find(|u| u.name() == udc_name)
        .ok_or_else(|| format!("no UDC {udc_name} in /sys/class/udc"))?;
    let GadgetParts {
        mut custom,
        mut tx,
        mut rx,
        mut def,
    } = gadget_parts("raw", "raw");
    def.name = Some("gateway-raw".into());
    let reg = def.register()?;
    reg.bind(Some(&udc))?;
    // Wait for the host to enable the function.
    loop {
        custom.wait_event().await?;
        if matches!(custom.event()?, Event::Enable) {
            break;
        }
    }
    let t0 = Instant::now();
    match dir {
        Dir::Out => {
            let mps = rx.max_packet_size()?;
            let (mut queued, mut got) = (0u64, 0u64);
            while got < bytes {
                while queued < bytes && rx.is_ready() {
                    let n = transfer_len(bytes - queued);
                    rx.try_recv(BytesMut::with_capacity(read_len(n, mps)))?;
                    queued += n as u64;
                }
                let b = rx.fetch_async().await?.ok_or("receive queue empty")?;
                got += b.len() as u64;
            }
            if got != bytes {
                return Err(format!("received {got} bytes, expected {bytes}").into());
            }
        }
        Dir::In => {
            let block = Bytes::from(vec![0x5a; TRANSFER_BYTES]);
            let mut left = bytes;
            while left > 0 {
                let n = transfer_len(left);
                tx.send_async(block.slice(..n)).await?;
                left -= n as u64;
            }
            tx.flush_async().await?;
        }
    }
    eprintln!(
        "usb_raw gadget: {} {bytes} bytes in {:.3} s (from the host's enable)",
        dir.name(),
        t0.elapsed().as_secs_f64()
    );
    // Let the host see the last transfer complete before the gadget goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(reg);
    Ok(())
}

async fn host(vid_pid: (u16, u16), dir: Dir, bytes: u64, wait: Duration) -> Res<()> {
    let deadline = Instant::now() + wait;
    let (d, intf) = loop {
        let found = nusb::list_devices().await?.find_map(|d| {
            if (d.vendor_id(), d.product_id()) != vid_pid {
                return None;
            }
            let i = d
                .interfaces()
                .find(|i| {
                    i.class() == INTERFACE_CLASS
                        && i.subclass() == INTERFACE_SUBCLASS
                        && i.protocol() == INTERFACE_PROTOCOL
                })?
                .interface_number();
            Some((d, i))
        });
        if let Some(f) = found {
            break f;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {:04x}:{:04x} device with the gateway interface appeared in {wait:?}",
                vid_pid.0, vid_pid.1
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dev = d.open().await?;
    let iface = dev.claim_interface(intf).await?;
    let desc = iface.descriptor().ok_or("no interface descriptor")?;
    let addr = |want_in: bool| {
        desc.endpoints()
            .find(|e| (e.address() & 0x80 != 0) == want_in)
            .map(|e| e.address())
            .ok_or("missing bulk endpoint")
    };
    let t0;
    match dir {
        Dir::Out => {
            let mut ep = iface.endpoint::<Bulk, Out>(addr(false)?)?;
            let mut left = bytes;
            t0 = Instant::now();
            while left > 0 || ep.pending() > 0 {
                while left > 0 && ep.pending() < TRANSFERS_IN_FLIGHT {
                    let n = transfer_len(left);
                    let mut b = ep.allocate(n);
                    b.extend_fill(n, 0x5a);
                    ep.submit(b);
                    left -= n as u64;
                }
                ep.next_complete().await.status?;
            }
        }
        Dir::In => {
            let mut ep = iface.endpoint::<Bulk, In>(addr(true)?)?;
            let mps = ep.max_packet_size();
            let (mut submitted, mut got) = (0u64, 0u64);
            t0 = Instant::now();
            while got < bytes {
                while submitted < bytes && ep.pending() < TRANSFERS_IN_FLIGHT {
                    let n = transfer_len(bytes - submitted);
                    ep.submit(Buffer::new(read_len(n, mps)));
                    submitted += n as u64;
                }
                if ep.pending() == 0 {
                    return Err(format!("the device sent {got} bytes, expected {bytes}").into());
                }
                let c = ep.next_complete().await;
                c.status?;
                got += c.buffer.len() as u64;
            }
            if got != bytes {
                return Err(format!("the device sent {got} bytes, expected {bytes}").into());
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"dir\":\"{}\",\"bytes\":{bytes},\"secs\":{secs:.3},\"mb_s\":{:.2}}}",
        dir.name(),
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
