#!/usr/bin/env python3
# Summarises a netsample CSV: per 1 s bucket, the registry link's send rate (Mbit/s), the mean
# node downlink rate, and CPU busy %.  usage: netplot.py CSV REGDEV
import sys, collections
rows = [l.strip().split(",") for l in open(sys.argv[1])]
reg = sys.argv[2]
dev = collections.defaultdict(list); cpu = []
for t, d, a, b in rows:
    if d == "cpu": cpu.append((float(t), int(a), int(b)))
    else: dev[d].append((float(t), int(a), int(b)))
def rate(samples, col, t0, t1):
    s = [x for x in samples if t0 <= x[0] <= t1]
    if len(s) < 2: return 0.0
    return (s[-1][col] - s[0][col]) * 8 / (s[-1][0] - s[0][0]) / 1e6
tmax = max(x[0] for x in cpu)
nodes = [d for d in dev if d != reg]
step = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
t = 0.0
print("t  reg_send  node_down_mean  node_up_mean  active_nodes  cpu%")
while t < tmax:
    r = rate(dev[reg], 1, t, t + step)
    downs = [rate(dev[d], 2, t, t + step) for d in nodes if dev[d] and dev[d][0][0] <= t]
    ups = [rate(dev[d], 1, t, t + step) for d in nodes if dev[d] and dev[d][0][0] <= t]
    c = [x for x in cpu if t <= x[0] <= t + step]
    cp = 100 * (c[-1][1] - c[0][1]) / max(1, c[-1][2] - c[0][2]) if len(c) > 1 else 0
    act = sum(1 for x in downs if x > 1)
    if r > 0.5 or act:
        print(f"{t:5.1f} {r:7.1f} {sum(downs)/max(1,len(downs)):7.1f} {sum(ups)/max(1,len(ups)):7.1f} {act:3d} {cp:5.0f}")
    t += step
