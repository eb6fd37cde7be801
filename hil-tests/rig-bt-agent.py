#!/usr/bin/python3
# An auto-accepting BlueZ pairing agent for the virtual rig (rig-bt-lib.sh's
# bt_agent starts it): capability NoInputNoOutput, registered as the default
# agent, says yes to every confirmation, authorization and service request.
# Needs Debian's /usr/bin/python3 with python3-dbus and python3-gi (a pyenv
# python has neither). Prints "agent: ready" once registered.
import sys

import dbus
import dbus.mainloop.glib
import dbus.service
from gi.repository import GLib

PATH = "/rig/agent"
IFACE = "org.bluez.Agent1"


def log(*a):
    print("agent:", *a, flush=True)


class Agent(dbus.service.Object):
    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Release(self):
        log("released")

    @dbus.service.method(IFACE, in_signature="os", out_signature="")
    def AuthorizeService(self, device, uuid):
        log("authorize service", device, uuid)

    @dbus.service.method(IFACE, in_signature="o", out_signature="s")
    def RequestPinCode(self, device):
        log("pin code for", device)
        return "0000"

    @dbus.service.method(IFACE, in_signature="o", out_signature="u")
    def RequestPasskey(self, device):
        log("passkey for", device)
        return dbus.UInt32(0)

    @dbus.service.method(IFACE, in_signature="ouq", out_signature="")
    def DisplayPasskey(self, device, passkey, entered):
        log("display passkey", device, passkey, entered)

    @dbus.service.method(IFACE, in_signature="os", out_signature="")
    def DisplayPinCode(self, device, pincode):
        log("display pin", device, pincode)

    @dbus.service.method(IFACE, in_signature="ou", out_signature="")
    def RequestConfirmation(self, device, passkey):
        log("confirm", device, passkey)

    @dbus.service.method(IFACE, in_signature="o", out_signature="")
    def RequestAuthorization(self, device):
        log("authorize", device)

    @dbus.service.method(IFACE, in_signature="", out_signature="")
    def Cancel(self):
        log("cancel")


def main():
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
    bus = dbus.SystemBus()
    Agent(bus, PATH)
    mgr = dbus.Interface(bus.get_object("org.bluez", "/org/bluez"), "org.bluez.AgentManager1")
    mgr.RegisterAgent(PATH, "NoInputNoOutput")
    mgr.RequestDefaultAgent(PATH)
    log("ready")
    GLib.MainLoop().run()


if __name__ == "__main__":
    sys.exit(main())
