#!/usr/bin/python3
"""Run nested QEMU (TCG) with one host device passed through by vfio-pci, watch it over QMP.

Runs in the test VM (tests/guest/qemu-client.sh, tests/guest/demo.sh); python3 stdlib only.

    qemu-vfio.py --bdf BDF [--bdf BDF2 ...] --out DIR [--machine q35] [--timeout SECS]
                 [--bios-done REGEX] [--kernel BZIMAGE --initrd CPIO --append ARGS --console-done REGEX]
                 [--iommufd]

Starts qemu-system-x86_64 -accel tcg with no disk (SeaBIOS only, or a kernel and initramfs),
each device as `-device vfio-pci,host=BDF,id=hostdevN` and a QMP socket, then polls QMP
`query-pci` until the firmware has given every BAR of every device an address (BAR
programming time), and `info mtree -f` until every memory BAR shows its mapping. With --kernel it then
waits for REGEX on the nested serial console. Finally it sends QMP `quit` and waits for QEMU
to exit.

Prints `key value` lines on stdout (the shell script decides PASS/FAIL):
    realize_s S           QMP answered: QEMU realized the device (seconds from start)
    bars_s S              all BARs of the devices have an address
    mtree_s S             `info mtree -f` has every memory BAR (seconds from start)
    bar BDF N TYPE ADDR SIZE  each BAR as the nested firmware programmed it (not the ROM BAR,
                              which SeaBIOS disables again once it has copied the option ROM)
    bios_s S              REGEX appeared in the SeaBIOS log (--bios-done)
    console_s S           the console REGEX appeared (--kernel)
    exit CODE             QEMU's exit status after quit (or after it died)
    error TEXT            what went wrong (QEMU's stderr is in DIR/qemu.err)
DIR gets qemu.err, serial.log, seabios.log, query-pci.json, info-pci.txt, mtree-f.txt (the
whole flattened tree) and mtree-dev.txt (the lines naming a BDF, sorted), taken once every
memory BAR is mapped and again after --bios-done.
"""

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

# query-pci gives an unassigned BAR the address PCI_BAR_UNMAPPED (~0), as -1 in QMP's int64.
UNMAPPED = (-1, (1 << 64) - 1)


class Qmp:
    def __init__(self, path, deadline, proc):
        self.sock = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"qemu exited with {proc.returncode} before QMP answered")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                self.sock = s
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("QMP socket did not appear")
                time.sleep(0.2)
        self.sock.settimeout(max(1.0, deadline - time.monotonic()))
        self.rfile = self.sock.makefile("r", encoding="utf-8", errors="replace")
        greeting = self._read()
        if "QMP" not in greeting:
            raise RuntimeError(f"no QMP greeting: {greeting}")
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.rfile.readline()
        if not line:
            raise RuntimeError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall((json.dumps(msg) + "\n").encode())
        while True:
            r = self._read()
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def find_dev(devices, qdev_id):
    """The device with this qdev id in a query-pci device list, behind bridges too."""
    for dev in devices:
        if dev.get("qdev_id") == qdev_id:
            return dev
        found = find_dev(dev.get("pci_bridge", {}).get("devices", []), qdev_id)
        if found:
            return found
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bdf", required=True, action="append",
                    help="device to pass through (repeatable: hostdev0, hostdev1, ...)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--machine", default="q35")
    ap.add_argument("--memory", default="128M")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for BARs and mtree")
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--append", default="")
    ap.add_argument("--bios-done", help="regex in the SeaBIOS log (port 0x402) to wait for "
                    "after the BARs (e.g. 'No bootable device': POST and option ROMs done)")
    ap.add_argument("--console-done", help="regex on the serial console that ends the run")
    ap.add_argument("--console-timeout", type=float, default=1800)
    ap.add_argument("--iommufd", action="store_true", help="use an iommufd backend")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--qemu-args", default="", help="more QEMU arguments (split like a shell)")
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    sock = os.path.join(a.out, "qmp.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    serial = os.path.join(a.out, "serial.log")
    cmd = [a.qemu, "-accel", "tcg,tb-size=64", "-machine", a.machine, "-m", a.memory,
           "-nographic", "-nodefaults", "-no-user-config",
           "-chardev", f"file,id=con,path={serial}", "-serial", "chardev:con",
           # SeaBIOS's debug log (port 0x402): its PCI resource assignment, option ROMs.
           "-chardev", f"file,id=dbg,path={os.path.join(a.out, 'seabios.log')}",
           "-device", "isa-debugcon,iobase=0x402,chardev=dbg",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    if a.iommufd:
        cmd += ["-object", "iommufd,id=iommufd0"]
    for i, bdf in enumerate(a.bdf):
        dev = f"vfio-pci,host={bdf},id=hostdev{i}"
        if a.iommufd:
            dev += ",iommufd=iommufd0"
        cmd += ["-device", dev]
    cmd += shlex.split(a.qemu_args)
    if a.kernel:
        cmd += ["-kernel", a.kernel, "-append", a.append]
        if a.initrd:
            cmd += ["-initrd", a.initrd]
    with open(os.path.join(a.out, "cmdline"), "w") as f:
        f.write(" ".join(cmd) + "\n")

    def out(*words):
        print(*words, flush=True)

    err = open(os.path.join(a.out, "qemu.err"), "w")
    t0 = time.monotonic()
    last = [t0]

    def progress(what):
        # A line every 30 s while waiting: the VM's stall watchdog wants output.
        now = time.monotonic()
        if now - last[0] >= 30:
            last[0] = now
            try:
                with open(os.path.join(a.out, "seabios.log"), errors="replace") as f:
                    bios = (f.read().strip().splitlines() or [""])[-1][:100]
            except OSError:
                bios = ""
            out("#", f"{now - t0:.0f} s: waiting for {what}; SeaBIOS log: {bios}")
    def snapshot(qmp, mtree):
        with open(os.path.join(a.out, "mtree-f.txt"), "w") as f:
            f.write(mtree)
        # The devices' lines, each once (the flattened view repeats them per address space)
        # and sorted (the order of the address spaces varies from run to run).
        lines = {l.strip() for l in mtree.splitlines() if any(b in l for b in a.bdf)}
        with open(os.path.join(a.out, "mtree-dev.txt"), "w") as f:
            f.write("".join(l + "\n" for l in sorted(lines)))
        with open(os.path.join(a.out, "info-pci.txt"), "w") as f:
            f.write(qmp.hmp("info pci"))

    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
    deadline = t0 + a.timeout
    qmp = None
    ok = True
    try:
        qmp = Qmp(sock, deadline, proc)
        out("realize_s", f"{time.monotonic() - t0:.1f}")

        # BAR programming: every BAR of every hostdevN has an address.
        ids = [f"hostdev{i}" for i in range(len(a.bdf))]
        while True:
            pci = qmp.cmd("query-pci")
            flat = [d for bus in pci for d in bus.get("devices", [])]
            infos = [find_dev(flat, i) for i in ids]
            if None in infos:
                raise RuntimeError("%s not in query-pci" % ids[infos.index(None)])
            # The ROM BAR (6) is left disabled once SeaBIOS has copied the option ROM.
            regions = [[r for r in d.get("regions", []) if r["bar"] < 6] for d in infos]
            if all(rs and all(r["address"] not in UNMAPPED for r in rs) for rs in regions):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("BARs not programmed after %.0f s: %s" % (
                    a.timeout, json.dumps(regions)))
            progress("BARs")
            time.sleep(0.5)
        out("bars_s", f"{time.monotonic() - t0:.1f}")
        with open(os.path.join(a.out, "query-pci.json"), "w") as f:
            json.dump(infos, f, indent=1)
        for bdf, rs in zip(a.bdf, regions):
            for r in rs:
                kind = r["type"]
                if kind == "memory":
                    kind = ("mem64" if r.get("mem_type_64") else "mem32") + \
                           ("-pref" if r.get("prefetch") else "")
                out("bar", bdf, r["bar"], kind, f"0x{r['address']:x}", f"0x{r['size']:x}")

        # The flattened memory tree: a line for every memory BAR of every device.
        want = [f"{bdf} BAR {r['bar']}" for bdf, rs in zip(a.bdf, regions)
                for r in rs if r["type"] == "memory"]
        while True:
            mtree = qmp.hmp("info mtree -f")
            lines = [l.strip() for l in mtree.splitlines() if any(b in l for b in a.bdf)]
            if all(any(w in l for l in lines) for w in want):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("not all in info mtree -f: %s" % ", ".join(want))
            progress("info mtree -f")
            time.sleep(0.5)
        out("mtree_s", f"{time.monotonic() - t0:.1f}")
        snapshot(qmp, mtree)

        if a.bios_done:
            rx = re.compile(a.bios_done)
            while True:
                try:
                    with open(os.path.join(a.out, "seabios.log"), errors="replace") as f:
                        text = f.read()
                except OSError:
                    text = ""
                if rx.search(text):
                    out("bios_s", f"{time.monotonic() - t0:.1f}")
                    # Again, now that POST is over: while SeaBIOS runs option ROMs the ROM
                    # BAR is mapped.
                    snapshot(qmp, qmp.hmp("info mtree -f"))
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no {a.bios_done!r} in the SeaBIOS log after {a.timeout:.0f} s")
                progress("SeaBIOS")
                time.sleep(0.5)

        if a.console_done:
            rx = re.compile(a.console_done)
            cdeadline = t0 + a.console_timeout
            while True:
                try:
                    with open(serial, errors="replace") as f:
                        text = f.read()
                except OSError:
                    text = ""
                if rx.search(text):
                    out("console_s", f"{time.monotonic() - t0:.1f}")
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"qemu exited with {proc.returncode} before {a.console_done!r}")
                if time.monotonic() > cdeadline:
                    raise RuntimeError(f"no {a.console_done!r} on the console after {a.console_timeout:.0f} s")
                progress("the nested console (last line: %s)" % (
                    text.strip().splitlines() or [""])[-1][:100])
                time.sleep(1)
    except (RuntimeError, OSError, ValueError) as e:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is not None and not isinstance(e, RuntimeError):
            e = f"qemu exited with {proc.returncode} ({e})"
        out("error", str(e).replace("\n", " "))
        ok = False

    # quit, and let QEMU release the device.
    if qmp is not None and proc.poll() is None:
        try:
            qmp.cmd("quit")
        except (RuntimeError, OSError, ValueError):
            pass
        qmp.close()
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        out("error", "qemu still running 60 s after quit; killed")
        proc.kill()
        code = proc.wait()
        ok = False
    out("exit", code)
    out("total_s", f"{time.monotonic() - t0:.1f}")
    err.close()
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
