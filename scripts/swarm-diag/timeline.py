#!/usr/bin/env python3
# Chunk timelines of a swarm bench run from its kept shoald logs (SHOAL_BENCH_KEEP_LOGS=1,
# SHOAL_LOG=info,shoal_p2p::swarm=debug): chunks, seeder first copies, per-chunk spread from the
# first node to the last, per node its sources, and the arrivals per step across the swarm.
# Chunk timelines from shoald debug logs: usage timeline.py LOGDIR
import sys, re, glob, datetime, collections, statistics
pat = re.compile(r'^(\S+) DEBUG .*chunk arrived blob=sha256:(\w+) chunk=(\d+) from="?([^" ]+)"? at_ms=(\d+)')
ev = []
for f in glob.glob(sys.argv[1] + "/node-*-shoald.log"):
    node = f.split("/")[-1].replace("-shoald.log", "")
    for l in open(f):
        m = pat.match(l)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
            ev.append((t, node, m.group(2)[:8], int(m.group(3)), m.group(4)))
t0 = min(e[0] for e in ev)
ev = [(t - t0, *rest) for t, *rest in ev]
ev.sort()
nodes = sorted({e[1] for e in ev})
seedfirst = {}
allt = collections.defaultdict(list)
for t, n, b, c, src in ev:
    allt[(b, c)].append((t, n, src))
    if src.startswith("registry-ext"): seedfirst.setdefault((b, c), t)
print("chunks", len(allt), "events", len(ev), "seeder sends", sum(1 for e in ev if e[4].startswith("registry-ext")), "registry", sum(1 for e in ev if e[4]=="registry"))
# spread: time from first arrival anywhere to the last node
spreads = []
for k, v in allt.items():
    spreads.append(max(x[0] for x in v) - min(x[0] for x in v))
print("spread first->last node per chunk: median %.2f p90 %.2f max %.2f" % (statistics.median(spreads), sorted(spreads)[int(.9*len(spreads))], max(spreads)))
print("seeder first copies: first %.2f last %.2f" % (min(seedfirst.values()), max(seedfirst.values())))
for n in nodes:
    ts = [e[0] for e in ev if e[1] == n]
    srcs = collections.Counter(e[4] if not e[4].startswith("registry-ext") else "SEEDER" for e in ev if e[1]==n)
    print(n, "first %.2f last %.2f n %d" % (min(ts), max(ts), len(ts)), dict(srcs.most_common(4)))
# arrivals per 0.5 s across the swarm
step = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
tmax = max(e[0] for e in ev)
t = 0
print("t  all_arrivals seeder_first_copies (chunks/step)")
while t <= tmax:
    a = sum(1 for e in ev if t <= e[0] < t + step)
    s = sum(1 for v in seedfirst.values() if t <= v < t + step)
    print("%5.1f %4d %3d" % (t, a, s))
    t += step
