#!/usr/bin/env python3
# Samples every veth host end (sh*h) rx/tx bytes every 0.2 s, plus /proc/stat cpu, to stdout as CSV:
# t, dev, rx_bytes (= what the namespace sent), tx_bytes (= what the namespace received); and t,cpu,busy,total
import os, sys, time
t0 = time.time()
out = open(sys.argv[1], "w")
end = t0 + float(sys.argv[2]) if len(sys.argv) > 2 else 1e18
while time.time() < end:
    t = time.time() - t0
    for d in os.listdir("/sys/class/net"):
        if d.startswith("sh") and d.endswith("h"):
            try:
                rx = open(f"/sys/class/net/{d}/statistics/rx_bytes").read().strip()
                tx = open(f"/sys/class/net/{d}/statistics/tx_bytes").read().strip()
            except OSError:
                continue
            out.write(f"{t:.2f},{d},{rx},{tx}\n")
    f = open("/proc/stat").readline().split()[1:]
    v = list(map(int, f))
    idle = v[3] + v[4]
    out.write(f"{t:.2f},cpu,{sum(v)-idle},{sum(v)}\n")
    out.flush()
    time.sleep(0.2)
