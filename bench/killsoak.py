#!/usr/bin/env python3
"""kill -9 soak: real `gateway serve` and `gateway send` processes over two
loopback TCP links, one of them SIGKILLed during each transfer, then
restarted; the transfer must resume and land exact. Run by bench/killsoak.sh
(which builds gateway with the `crash-points` feature).

Each transfer gets one kill, chosen from a seeded RNG:
  - victim: the sender or the receiver;
  - when: a random instant while bytes flow, or a crash point (the process
    SIGKILLs itself between two steps of the durability order:
    GATEWAY_CRASH_AT=recv_synced|recv_committed|recv_hashing|recv_renamed|
    send_durable|send_done, see crates/node/src/crash.rs).
After it completes, every transfer is checked:
  - send exits 0 with verdict ok, the landed file's sha256 is the source's;
  - no *.gateway-part file is left in the receive dir;
  - neither state DB still holds a record of it;
  - the DB never lost what it had committed: after a sender kill, the
    rerun's bytes_resumed >= the receiver's durable bytes read just before
    the kill;
  - re-sent data <= one checkpoint: bytes_sent + bytes_resumed of the run
    that finished <= size + checkpoint_bytes (a sender kill) or, for a
    receiver kill, the one sender run that rode it out.
A failing seed is printed so it reproduces; the summary is JSON on stdout.
"""

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
CHECKPOINT_BYTES = 16 * MIB
RECV_POINTS = ["recv_synced", "recv_committed", "recv_hashing", "recv_renamed"]
SEND_POINTS = ["send_durable", "send_done"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Soak:
    def __init__(self, args):
        self.a = args
        self.gw = args.gw
        self.work = Path(args.work)
        self.sa = self.work / "send-state"
        self.sb = self.work / "recv-state"
        self.inbox = self.work / "inbox"
        self.src = self.work / "src"
        for d in (self.sa, self.sb, self.inbox, self.src):
            d.mkdir(parents=True, exist_ok=True)
        self.serve = None
        self.ports = []
        self.rng = random.Random(args.seed)

    def run(self, *cmd, state, check=True):
        r = subprocess.run([self.gw, "-q", "--state", str(state), *cmd],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"gateway {' '.join(cmd)}: rc {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def setup(self):
        ida = self.run("id", state=self.sa).strip()
        idb = self.run("id", state=self.sb).strip()
        self.run("trust", idb, state=self.sa)
        self.run("trust", ida, state=self.sb)

    def start_serve(self, crash_at=None):
        env = dict(os.environ)
        env.pop("GATEWAY_CRASH_AT", None)
        if crash_at:
            env["GATEWAY_CRASH_AT"] = crash_at
        listen = []
        for p in (self.ports or [0, 0]):
            listen += ["--listen", f"tcp:127.0.0.1:{p}"]
        self.serve_log = open(self.work / "serve.log", "a")
        self.serve = subprocess.Popen(
            [self.gw, "--state", str(self.sb), "serve", "--dir", str(self.inbox), "--no-mdns", *listen],
            stdout=subprocess.PIPE, stderr=self.serve_log, text=True, env=env)
        if not self.ports:
            # `serve` prints where it listens; read the ports back from the log.
            deadline = time.time() + 20
            while time.time() < deadline and len(self.ports) < 2:
                time.sleep(0.05)
                text = (self.work / "serve.log").read_text()
                self.ports = [int(w.rsplit(":", 1)[1]) for w in text.split()
                              if w.startswith("tcp:127.0.0.1:") and not w.endswith(":0")][:2]
            if len(self.ports) < 2:
                raise RuntimeError("serve did not say where it listens; see serve.log")
        else:
            self.wait_listening()

    def wait_listening(self):
        deadline = time.time() + 20
        import socket
        while time.time() < deadline:
            if self.serve.poll() is not None:
                raise RuntimeError(f"serve exited rc {self.serve.returncode}; see serve.log")
            ok = 0
            for p in self.ports:
                with open("/proc/net/tcp") as f:
                    if any(f":{p:04X} 00000000:0000 0A" in l for l in f):
                        ok += 1
            if ok == len(self.ports):
                return
            time.sleep(0.05)
        raise RuntimeError("serve is not listening again")

    def start_send(self, path, crash_at=None):
        env = dict(os.environ)
        env.pop("GATEWAY_CRASH_AT", None)
        if crash_at:
            env["GATEWAY_CRASH_AT"] = crash_at
        to = []
        for p in self.ports:
            to += ["--to", f"tcp:127.0.0.1:{p}?rate={self.a.rate_mb}MB"]
        return subprocess.Popen(
            [self.gw, "-q", "--state", str(self.sa), "send", str(path), "--json", *to],
            stdout=subprocess.PIPE, stderr=open(self.work / "send.log", "a"), text=True, env=env)

    def durable(self, name):
        """The receiver's durable bytes of transfer `name` (from its DB)."""
        try:
            out = self.run("transfers", "--json", state=self.sb, check=False)
            return max((t.get("durable_bytes", 0) for t in json.loads(out or "[]") if t.get("name") == name),
                       default=0)
        except Exception:  # noqa: BLE001 (a DB read racing a write: no sample)
            return 0

    def records(self, state, name):
        out = self.run("transfers", "--json", state=state, check=False)
        return [t for t in json.loads(out or "[]") if t.get("name") == name]

    def kill_serve(self):
        self.serve.send_signal(signal.SIGKILL)
        self.serve.wait()

    def one(self, i):
        rng = self.rng
        size = rng.randint(self.a.min_mb * MIB, self.a.max_mb * MIB)
        name = f"f{i:04d}.bin"
        path = self.src / name
        data = rng.randbytes(size)
        path.write_bytes(data)
        want = hashlib.sha256(data).hexdigest()
        del data
        victim = rng.choice(["sender", "receiver"])
        points = SEND_POINTS if victim == "sender" else RECV_POINTS
        how = "point" if rng.random() < self.a.point_share else "instant"
        crash = None
        if how == "point":
            p = rng.choice(points)
            # A checkpoint-time point on its 1st..4th hit; the others happen once.
            n = rng.randint(1, 4) if p in ("recv_synced", "recv_committed", "send_durable") else 1
            crash = f"{p}@{n}"
        kill = {"i": i, "size": size, "victim": victim, "how": how, "crash_at": crash}
        expected_secs = size / (2 * self.a.rate_mb * 1e6)
        if crash and victim == "receiver":
            self.kill_serve_gracefully()
            self.start_serve(crash_at=crash)
        send = self.start_send(path, crash_at=crash if victim == "sender" else None)
        durable_before = 0
        killed = False
        if how == "instant":
            at = time.time() + rng.uniform(0.05, max(0.1, expected_secs * 1.1))
            while time.time() < at and send.poll() is None:
                durable_before = max(durable_before, self.durable(name))
                time.sleep(0.05)
            if send.poll() is None:
                durable_before = max(durable_before, self.durable(name))
                if victim == "sender":
                    send.send_signal(signal.SIGKILL)
                    send.wait()
                else:
                    self.kill_serve()
                killed = True
        else:
            proc = send if victim == "sender" else self.serve
            deadline = time.time() + 60 + 4 * expected_secs
            while proc.poll() is None and send.poll() is None and time.time() < deadline:
                durable_before = max(durable_before, self.durable(name))
                time.sleep(0.05)
            if victim == "receiver" and self.serve.poll() is None and send.poll() is None:
                raise RuntimeError(f"transfer {i}: crash point {crash} never hit and send still runs")
            killed = proc.poll() is not None and proc.returncode == -signal.SIGKILL
        kill["killed"] = killed
        kill["durable_before"] = durable_before
        # Restart the victim; the run that finishes gives the report.
        if victim == "receiver":
            if self.serve.poll() is not None:
                self.start_serve()
            elif crash:
                # The point was never reached (the transfer ended first): back to a plain serve.
                self.kill_serve_gracefully()
                self.start_serve()
        else:
            if send.poll() is not None and send.returncode != 0:
                send = self.start_send(path)
        try:
            out, _ = send.communicate(timeout=120 + 8 * expected_secs)
        except subprocess.TimeoutExpired:
            send.kill()
            raise RuntimeError(f"transfer {i}: send hung ({kill})")
        if send.returncode != 0:
            raise RuntimeError(f"transfer {i}: send rc {send.returncode} ({kill}); see send.log")
        rep = json.loads(out.strip().splitlines()[-1])
        if rep.get("verdict") != "ok":
            raise RuntimeError(f"transfer {i}: verdict {rep.get('verdict')} ({kill})")
        landed = self.inbox / name
        # Let a receiver finish landing (the sender returns on the verdict).
        for _ in range(100):
            if landed.exists() and not self.records(self.sb, name):
                break
            time.sleep(0.05)
        if not landed.exists():
            raise RuntimeError(f"transfer {i}: {landed} missing; inbox: {sorted(p.name for p in self.inbox.iterdir())}")
        got = hashlib.sha256(landed.read_bytes()).hexdigest()
        if got != want:
            raise RuntimeError(f"transfer {i}: WRONG FILE: sha256 {got} != {want} ({kill})")
        dupes = [p.name for p in self.inbox.iterdir() if p.name.startswith(f"f{i:04d} (")]
        if dupes:
            raise RuntimeError(f"transfer {i}: landed twice: {dupes} ({kill})")
        parts = [str(p) for p in self.inbox.rglob("*") if ".gateway-part" in p.name]
        if parts:
            raise RuntimeError(f"transfer {i}: part files left: {parts} ({kill})")
        for who, st in (("sender", self.sa), ("receiver", self.sb)):
            left = self.records(st, name)
            if left:
                raise RuntimeError(f"transfer {i}: the {who}'s DB still holds {left} ({kill})")
        sent, resumed = rep["bytes_sent"], rep["bytes_resumed"]
        kill["bytes_sent"], kill["bytes_resumed"] = sent, resumed
        # A rerun after a sender kill must find at least what the receiver
        # had committed. (A receiver kill is ridden out by one sender run,
        # whose bytes_resumed counts its start; there the re-sent bound says it.)
        if victim == "sender" and killed and resumed < durable_before:
            raise RuntimeError(
                f"transfer {i}: the DB lost committed bytes: resumed {resumed} < durable before the kill {durable_before} ({kill})")
        excess = sent + resumed - size
        kill["resent"] = max(0, excess)
        if excess > CHECKPOINT_BYTES:
            raise RuntimeError(
                f"transfer {i}: re-sent {excess / MIB:.1f} MiB after the kill, more than one checkpoint "
                f"({CHECKPOINT_BYTES // MIB} MiB) ({kill})")
        landed.unlink()
        path.unlink()
        return kill

    def kill_serve_gracefully(self):
        if self.serve and self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill_serve()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gw", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--min-mb", type=int, default=4)
    ap.add_argument("--max-mb", type=int, default=48)
    ap.add_argument("--rate-mb", type=int, default=25, help="per-link cap, MB/s")
    ap.add_argument("--point-share", type=float, default=0.4, help="share of kills at crash points")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = random.randrange(1 << 32)
    log(f"kill -9 soak: {a.kills} kills, seed {a.seed} (rerun with --seed {a.seed})")
    s = Soak(a)
    s.setup()
    s.start_serve()
    results = []
    t0 = time.time()
    try:
        i = 0
        while sum(1 for r in results if r["killed"]) < a.kills:
            r = s.one(i)
            results.append(r)
            i += 1
            log(f"transfer {i}: {r['size'] / MIB:.1f} MiB, {r['victim']} {r['how']}"
                f"{' ' + r['crash_at'] if r['crash_at'] else ''}: killed={r['killed']} "
                f"resumed {r['bytes_resumed'] / MIB:.1f} MiB, re-sent {r['resent'] / MIB:.2f} MiB, ok")
    except Exception as e:  # noqa: BLE001
        log(f"FAILED with seed {a.seed}: {e}")
        print(json.dumps({"ok": False, "seed": a.seed, "error": str(e), "done": results}))
        sys.exit(1)
    finally:
        if s.serve and s.serve.poll() is None:
            s.serve.send_signal(signal.SIGKILL)
    killed = [r for r in results if r["killed"]]
    summary = {
        "ok": True,
        "seed": a.seed,
        "transfers": len(results),
        "kills": len(killed),
        "kills_sender": sum(1 for r in killed if r["victim"] == "sender"),
        "kills_receiver": sum(1 for r in killed if r["victim"] == "receiver"),
        "kills_at_points": {p: sum(1 for r in killed if (r["crash_at"] or "").startswith(p + "@"))
                            for p in RECV_POINTS + SEND_POINTS},
        "resumed_right_hash": len(results),
        "max_resent_mib": round(max((r["resent"] for r in killed), default=0) / MIB, 2),
        "mean_resent_mib": round(sum(r["resent"] for r in killed) / max(1, len(killed)) / MIB, 2),
        "checkpoint_mib": CHECKPOINT_BYTES // MIB,
        "secs": round(time.time() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
