#!/usr/bin/env python3
# Chunk requests of a swarm bench run, from the shoald logs it kept (SHOAL_BENCH_KEEP_LOGS=1,
# SHOAL_LOG=info,shoal_p2p::swarm=debug): how long requests took by source (nodes, the
# seeder, the registry), how many chunks were asked again as overdue and, of those whose
# copies can be matched, which copy came first (the one asked first, or the one asked again,
# and how long after the second request the first copy still came), and the chunks the
# seeder sent more than once (each send's start and end, seconds from the first chunk).
# usage: requests.py LOGDIR
import collections, datetime, glob, re, sys

ARRIVED = re.compile(
    r'^(\S+) DEBUG .*chunk arrived blob=sha256:(\w+) chunk=(\d+) from="?([^" ]+)"? at_ms=\d+ took_ms=(\d+)')
OVERDUE = re.compile(r'^(\S+) DEBUG .*chunk overdue; asked elsewhere chunk=(\d+) other=(\S+)')


def secs(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def kind(src):
    if src.startswith("registry-ext"):
        return "seeder"
    return "registry" if src == "registry" else "nodes"


def pct(v, p):
    v = sorted(v)
    return v[int(p * (len(v) - 1))]


took = collections.defaultdict(list)
seeder = collections.defaultdict(list)
won = collections.Counter()
late = []
asked_again = 0
for f in sorted(glob.glob(sys.argv[1] + "/node-*-shoald.log")):
    node = f.split("/")[-1].replace("-shoald.log", "")
    pending = {}
    for line in open(f):
        m = OVERDUE.match(line)
        if m:
            asked_again += 1
            # The overdue line names the chunk, not its blob: matched to the next arrival of
            # that chunk index in this node's log.
            pending.setdefault(int(m.group(2)), []).append((m.group(3), secs(m.group(1))))
            continue
        m = ARRIVED.match(line)
        if not m:
            continue
        t, blob, chunk, src, ms = secs(m.group(1)), m.group(2), int(m.group(3)), m.group(4), int(m.group(5))
        took[kind(src)].append(ms / 1000)
        if kind(src) == "seeder":
            seeder[(blob[-6:], chunk)].append((t - ms / 1000, t, node))
        if chunk in pending:
            others = pending.pop(chunk)
            if any(o == src for o, _ in others):
                won["the copy asked again"] += 1
            else:
                won["the copy asked first"] += 1
                late.append(t - others[0][1])

print("requests by source: n, took p10 / p50 / p90 / max (s)")
for k in ("nodes", "seeder", "registry"):
    v = took.get(k)
    if v:
        print(f"  {k:8} {len(v):5}  {pct(v, .1):6.2f} {pct(v, .5):6.2f} {pct(v, .9):6.2f} {max(v):6.2f}")
print(f"asked again as overdue: {asked_again}; first of the matched: {dict(won)}")
if late:
    print(f"  the copy asked first came {pct(late, .5):.2f} s (p50), {pct(late, .9):.2f} s (p90) after the second request")
starts = [s for v in seeder.values() for s, _, _ in v]
t0 = min(starts) if starts else 0
again = {k: v for k, v in seeder.items() if len(v) > 1}
print(f"seeder sends: {sum(len(v) for v in seeder.values())} for {len(seeder)} chunks; sent more than once: {len(again)}")
for k, v in sorted(again.items(), key=lambda kv: min(s for s, _, _ in kv[1])):
    print(" ", k, [(f"{s - t0:.1f}", f"{e - t0:.1f}", n) for s, e, n in sorted(v)])
