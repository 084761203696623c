#!/usr/bin/env python3
# Per-hop latency of chunks through the swarm (the time from the source node receiving a chunk
# to this node receiving it from that source), and the failed requests by kind, from the
# shoald logs a swarm bench run kept (SHOAL_BENCH_KEEP_LOGS=1, SHOAL_LOG=info,shoal_p2p::swarm=debug).
# usage: hops.py LOGDIR
import sys, re, glob, datetime, collections, statistics
pat = re.compile(r'^(\S+) DEBUG .*chunk arrived blob=sha256:(\w+) chunk=(\d+) from="?([^" ]+)"? at_ms=(\d+)')
arr = {}
ev = []
for f in glob.glob(sys.argv[1] + "/node-*-shoald.log"):
    node = f.split("/")[-1].replace("-shoald.log", "")
    for l in open(f):
        m = pat.match(l)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            arr[(node, m.group(2), int(m.group(3)))] = t
            ev.append((t, node, m.group(2), int(m.group(3)), m.group(4)))
hops = []
for t, node, b, c, src in ev:
    if src in ("registry", "cancelled") or src.startswith("registry-ext"): continue
    ts = arr.get((src, b, c))
    if ts: hops.append(t - ts)
hops.sort()
q = lambda p: hops[int(p * (len(hops) - 1))]
print("hop latency (source got it -> this node got it from source): n %d p10 %.2f p50 %.2f p90 %.2f max %.2f" % (len(hops), q(.1), q(.5), q(.9), hops[-1]))
fails = collections.Counter()
for f in glob.glob(sys.argv[1] + "/node-*-shoald.log"):
    for l in open(f):
        if "chunk request failed" in l:
            fails["busy" if "busy" in l else "not held" if "does not hold" in l else l[60:140]] += 1
        if "overdue" in l: fails["overdue"] += 1
print(dict(fails))
