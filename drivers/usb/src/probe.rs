//! `gateway links`: the USB devices with a gateway interface and the UDCs
//! (gadget controllers) here, usable or not, and why.

use gateway_link::Adapter;

use crate::host;

/// Lists host-side devices and gadget-side UDCs.
pub(crate) async fn probe() -> Vec<Adapter> {
    let mut out = Vec::new();
    match host::matching(&host::HostFilter::default()).await {
        Ok(found) => {
            for (d, _) in found {
                out.push(Adapter {
                    scheme: "usb".into(),
                    name: host::describe(&d),
                    usable: true,
                    detail: format!(
                        "gateway device; open with usb:{:04x}:{:04x}",
                        d.vendor_id(),
                        d.product_id()
                    ),
                });
            }
        }
        Err(e) => out.push(Adapter {
            scheme: "usb".into(),
            name: "host".into(),
            usable: false,
            detail: e.to_string(),
        }),
    }
    out
}
