#!/usr/bin/env python3
"""Browse a DNS-SD service type with python-zeroconf (a standard, independent
mDNS/DNS-SD implementation) and print what it resolved as JSON.

Used by the netns test to show that `gateway serve`'s advertisement is seen
by a browser that is not ours. Needs `pip install zeroconf`.

usage: dnssd_browse.py [SERVICE_TYPE] [SECONDS]
"""

import json
import sys
import time

from zeroconf import ServiceBrowser, ServiceListener, Zeroconf


class Collect(ServiceListener):
    def __init__(self) -> None:
        self.found: dict[str, dict] = {}

    def _resolve(self, zc: Zeroconf, type_: str, name: str) -> None:
        info = zc.get_service_info(type_, name, timeout=2000)
        if info is None:
            return
        self.found[name] = {
            "instance": name,
            "port": info.port,
            "addresses": info.parsed_addresses(),
            "txt": {
                k.decode(errors="replace"): (v or b"").decode(errors="replace")
                for k, v in info.properties.items()
            },
        }

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._resolve(zc, type_, name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.found.pop(name, None)


def main() -> None:
    service = sys.argv[1] if len(sys.argv) > 1 else "_gateway._tcp.local."
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    zc = Zeroconf()
    listener = Collect()
    ServiceBrowser(zc, service, listener)
    time.sleep(seconds)
    zc.close()
    print(json.dumps(sorted(listener.found.values(), key=lambda s: s["instance"])))


if __name__ == "__main__":
    main()
