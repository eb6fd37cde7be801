//! The raw bulk loop: the ceiling `gateway` over USB is compared with in
//! `hil-tests/rig.sh usb`. Moves N bytes over the same gadget identity and
//! interface, with the same transfer size and queue depth as the driver, and
//! does nothing else: no framing, no hashing, no encryption, no disk.
//!
//!   usb_raw gadget UDC in|out BYTES   # root; builds the gadget `gateway-raw`
//!   usb_raw host in|out BYTES         # prints {"dir":..,"bytes":..,"secs":..,"mb_s":..}
//!
//! `in` is device → host, `out` host → device. Start the gadget first.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gateway_usb::{
    GadgetParts, INTERFACE_PROTOCOL, INTERFACE_SUBCLASS, TRANSFER_BYTES, TRANSFERS_IN_FLIGHT,
    gadget_parts,
};
use nusb::transfer::{Buffer, Bulk, In, Out};
use usb_gadget::function::custom::Event;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: usb_raw gadget UDC in|out BYTES | usb_raw host in|out BYTES";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("gadget") if args.len() == 5 => {
            rt.block_on(gadget(&args[2], &args[3], args[4].parse()?))
        }
        Some("host") if args.len() == 4 => rt.block_on(host(&args[2], args[3].parse()?)),
        _ => Err(usage.into()),
    }
}

async fn gadget(udc_name: &str, dir: &str, bytes: u64) -> Res<()> {
    let udc = usb_gadget::udcs()?
        .into_iter()
        .find(|u| u.name() == udc_name)
        .ok_or("no such UDC")?;
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
    let mut left = bytes;
    if dir == "out" {
        for _ in 0..TRANSFERS_IN_FLIGHT {
            rx.try_recv(BytesMut::with_capacity(TRANSFER_BYTES))?;
        }
        while left > 0 {
            let got = rx.fetch_async().await?.ok_or("receive queue empty")?;
            left = left.saturating_sub(got.len() as u64);
            rx.try_recv(BytesMut::with_capacity(TRANSFER_BYTES))?;
        }
    } else {
        let block = Bytes::from(vec![0x5a; TRANSFER_BYTES]);
        while left > 0 {
            let n = left.min(TRANSFER_BYTES as u64) as usize;
            tx.send_async(block.slice(..n)).await?;
            left -= n as u64;
        }
        tx.flush_async().await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(reg);
    Ok(())
}

async fn host(dir: &str, bytes: u64) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (d, intf) = loop {
        let found = nusb::list_devices().await?.find_map(|d| {
            let i = d
                .interfaces()
                .find(|i| {
                    i.class() == 0xff
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
            return Err("no gateway-raw device appeared".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dev = d.open().await?;
    let iface = dev.claim_interface(intf).await?;
    let desc = iface.descriptor().ok_or("no descriptor")?;
    let addr = |want_in: bool| {
        desc.endpoints()
            .find(|e| (e.address() & 0x80 != 0) == want_in)
            .map(|e| e.address())
            .ok_or("missing endpoint")
    };
    let t0 = Instant::now();
    let mut left = bytes;
    if dir == "out" {
        let mut ep = iface.endpoint::<Bulk, Out>(addr(false)?)?;
        while left > 0 || ep.pending() > 0 {
            while left > 0 && ep.pending() < TRANSFERS_IN_FLIGHT {
                let n = left.min(TRANSFER_BYTES as u64) as usize;
                let mut b = ep.allocate(n);
                b.extend_fill(n, 0x5a);
                ep.submit(b);
                left -= n as u64;
            }
            ep.next_complete().await.status?;
        }
    } else {
        let mut ep = iface.endpoint::<Bulk, In>(addr(true)?)?;
        let mut got = 0u64;
        let mut submitted = 0u64;
        while got < bytes {
            while submitted < bytes && ep.pending() < TRANSFERS_IN_FLIGHT {
                ep.submit(Buffer::new(TRANSFER_BYTES));
                submitted += TRANSFER_BYTES as u64;
            }
            let c = ep.next_complete().await;
            c.status?;
            got += c.buffer.len() as u64;
        }
        left = 0;
    }
    let _ = left;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"dir\":\"{dir}\",\"bytes\":{bytes},\"secs\":{secs:.3},\"mb_s\":{:.2}}}",
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
