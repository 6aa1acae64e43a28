"""Load test of ``partita serve`` on localhost, bounded in count and time.

Starts ``partita serve --port 0`` in a subprocess (the real server: uvicorn, the bounded model
queue, the shipped models and indexes) and measures, from this process:

1. 200 concurrent requests on cheap endpoints (``/api/info``, ``/api/pieces/{id}``,
   ``/api/pieces/{id}/notes``, ``/api/jobs/{id}``): errors (must be 0) and latency;
2. attribution under 8 concurrent users: each user uploads a piece of its own and asks for its
   composers (embedding + attribution, the page's first call), ``--rounds`` times: p50/p95;
3. a 10 s continuation under 8 concurrent users: each POSTs ``{"seconds": 10}`` and polls the job
   until it is done: p50/p95 of the whole wait (the queue runs ``--workers`` at once);
4. memory: the server's resident memory after 0, 250, 500, 750 and 1,000 uploads (with
   ``--keep 256``, pieces beyond the newest 256 are dropped, so it must level off).

Every phase stops at ``--max-seconds`` (default 900 in all) and reports what it measured.
``--screenshot docs/serve.png`` also opens the page in headless Chromium, drops a piece, waits
for every panel and a continuation, and saves a screenshot (for the README).

    python benchmarks/serve.py                          # writes its numbers to stdout (markdown)
    python benchmarks/serve.py --screenshot docs/serve.png --pieces ../shared/data/asap
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "midi"
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else float("nan")


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "partita", "serve", "--port", "0", "--workers", str(args.workers),
           "--queue", str(args.queue), "--keep", str(args.keep)]
    for p in args.pieces or []:
        cmd += ["--pieces", p]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:\d+", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, m.group(0)


def piano_files() -> list[Path]:
    from partita.io import is_piano

    files = sorted((FIXTURES / "edge").glob("*.mid")) + sorted((FIXTURES / "performance").glob("*.mid"))
    return [f for f in files if f.stat().st_size < 200_000 and is_piano(f)]


async def upload(c, path: Path) -> dict:
    r = await c.post("/api/pieces", params={"name": path.name}, content=path.read_bytes())
    r.raise_for_status()
    return r.json()


async def phase_cheap(c, piece: dict, job: dict, n: int) -> dict:
    urls = ["/api/info", f"/api/pieces/{piece['id']}", f"/api/pieces/{piece['id']}/notes", f"/api/jobs/{job['id']}"]

    async def one(i):
        t = time.perf_counter()
        r = await c.get(urls[i % len(urls)])
        return r.status_code, time.perf_counter() - t

    t0 = time.perf_counter()
    out = await asyncio.gather(*[one(i) for i in range(n)], return_exceptions=True)
    wall = time.perf_counter() - t0
    ok = [x for x in out if not isinstance(x, BaseException) and x[0] == 200]
    lat = [x[1] for x in ok]
    return {"requests": n, "errors": n - len(ok), "wall_s": wall, "p50_ms": 1000 * pct(lat, 50), "p95_ms": 1000 * pct(lat, 95),
            "max_ms": 1000 * max(lat) if lat else float("nan")}


async def phase_attribute(c, files: list[Path], users: int, rounds: int, deadline: float) -> dict:
    lat, errors, busy = [], 0, 0

    async def user(u):
        nonlocal errors, busy
        for r in range(rounds):
            if time.monotonic() > deadline:
                return
            piece = await upload(c, files[(u + r * users) % len(files)])  # a fresh piece: nothing cached
            t = time.perf_counter()
            resp = await c.get(f"/api/pieces/{piece['id']}/attribution")
            if resp.status_code == 200:
                lat.append(time.perf_counter() - t)
            elif resp.status_code == 503:
                busy += 1
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[user(u) for u in range(users)])
    return {"users": users, "calls": len(lat), "errors": errors, "busy_503": busy, "wall_s": time.perf_counter() - t0,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95)}


async def phase_continue(c, files: list[Path], users: int, seconds: float, deadline: float) -> dict:
    lat, errors, tokens = [], 0, []

    async def user(u):
        nonlocal errors
        piece = await upload(c, files[u % len(files)])
        t = time.perf_counter()
        r = await c.post(f"/api/pieces/{piece['id']}/continue", json={"seconds": seconds, "seed": u})
        if r.status_code != 202:
            errors += 1
            return
        job = r.json()
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            job = (await c.get(f"/api/jobs/{job['id']}")).json()
        if job["state"] == "done":
            lat.append(time.perf_counter() - t)
            tokens.extend(p["settings"]["new_tokens"] for p in job["pieces"])
        else:
            errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[user(u) for u in range(users)])
    return {"users": users, "seconds_of_music": seconds, "done": len(lat), "errors": errors, "wall_s": time.perf_counter() - t0,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "min_s": min(lat) if lat else float("nan"),
            "new_tokens_mean": float(np.mean(tokens)) if tokens else float("nan")}


async def phase_memory(c, pid: int, files: list[Path], total: int, deadline: float) -> dict:
    marks = {0: rss_mb(pid)}
    done = 0
    datas = [(f.name, f.read_bytes()) for f in files]
    while done < total and time.monotonic() < deadline:
        batch = [c.post("/api/pieces", params={"name": datas[(done + i) % len(datas)][0]}, content=datas[(done + i) % len(datas)][1])
                 for i in range(min(25, total - done))]
        rs = await asyncio.gather(*batch)
        assert all(r.status_code == 201 for r in rs), [r.text for r in rs if r.status_code != 201][:1]
        done += len(rs)
        if done % 250 == 0:
            marks[done] = rss_mb(pid)
    info = (await c.get("/api/info")).json()
    return {"uploads": done, "rss_mb": marks, "keep": info["limits"]["pieces_kept"]}


async def run_all(args, proc, url) -> dict:
    import httpx

    files = piano_files()
    end = time.monotonic() + args.max_seconds
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        out = {"server_rss_mb_start": rss_mb(proc.pid)}
        first = await upload(c, files[0])
        warm = await c.get(f"/api/pieces/{first['id']}/attribution")  # loads the embedders once
        warm.raise_for_status()
        job = (await c.post(f"/api/pieces/{first['id']}/continue", json={"seconds": 1})).json()
        while job["state"] in ("queued", "running"):
            await asyncio.sleep(0.3)
            job = (await c.get(f"/api/jobs/{job['id']}")).json()  # loads the generator once
        out["cheap"] = await phase_cheap(c, first, job, args.cheap)
        out["attribute"] = await phase_attribute(c, files, args.users, args.rounds, end)
        out["continue"] = await phase_continue(c, files, args.users, args.seconds, end)
        out["memory"] = await phase_memory(c, proc.pid, files, args.uploads, end)
        out["server_rss_mb_end"] = rss_mb(proc.pid)
    return out


def screenshot(args, url: str) -> None:
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    piece = Path(args.screenshot_piece)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1240, "height": 900}, device_scale_factor=1)
        page.goto(url + "/")
        page.set_input_files("#file", str(piece))
        page.wait_for_selector("#bars li", timeout=300_000)
        page.wait_for_selector("#hits li", timeout=300_000)
        page.wait_for_function("document.getElementById('map').getAttribute('aria-busy') === 'false'", timeout=300_000)
        page.fill("input[name=seconds]", "10")
        page.click("#continue")
        page.wait_for_selector(".result a[download]", timeout=600_000)
        page.evaluate("window.scrollTo(0, 0)")
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.screenshot, full_page=True)
        browser.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cheap", type=int, default=200, help="concurrent cheap requests")
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="attribution calls per user")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds of music per continuation")
    ap.add_argument("--uploads", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=64)
    ap.add_argument("--keep", type=int, default=256)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="time budget of all phases")
    ap.add_argument("--pieces", action="append", help="passed to partita serve --pieces")
    ap.add_argument("--screenshot", help="also save a screenshot of the page here (PNG)")
    ap.add_argument("--screenshot-piece", default=str(FIXTURES / "edge" / "fur-elise.mid"))
    ap.add_argument("--skip-load", action="store_true", help="only the screenshot")
    args = ap.parse_args()

    proc, url = start_server(args)
    try:
        load = None if args.skip_load else asyncio.run(run_all(args, proc, url))
        if args.screenshot:
            screenshot(args, url)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if load is None:
        print(f"wrote {args.screenshot}")
        return
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; Python {platform.python_version()}; "
          f"partita tree at {git}; load average before/after: see below")
    print(f"- server: partita serve --workers {args.workers} --queue {args.queue} --keep {args.keep} (shipped models and indexes); "
          f"client: httpx on the same machine; load average now {os.getloadavg()[0]:.1f}")
    ch, at, co, me = load["cheap"], load["attribute"], load["continue"], load["memory"]
    print()
    print("| test | requests | errors | p50 | p95 | wall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {ch['requests']} concurrent cheap requests (info, piece, notes, job) | {ch['requests']} | {ch['errors']} | "
          f"{ch['p50_ms']:.0f} ms | {ch['p95_ms']:.0f} ms | {ch['wall_s']:.2f} s |")
    print(f"| attribution, {at['users']} concurrent users (fresh piece each: embed + attribute) | {at['calls']} | "
          f"{at['errors']} (+{at['busy_503']} busy) | {at['p50_s']:.2f} s | {at['p95_s']:.2f} s | {at['wall_s']:.1f} s |")
    print(f"| {co['seconds_of_music']:.0f} s continuation, {co['users']} concurrent users (POST, poll until done) | {co['done']} | "
          f"{co['errors']} | {co['p50_s']:.1f} s | {co['p95_s']:.1f} s | {co['wall_s']:.1f} s |")
    print()
    marks = ", ".join(f"{k}: {v:.0f} MiB" for k, v in me["rss_mb"].items())
    print(f"- memory (server RSS) after uploads: {marks}; {me['uploads']} uploads, {me['keep']} kept; "
          f"server RSS at start {load['server_rss_mb_start']:.0f} MiB, at the end {load['server_rss_mb_end']:.0f} MiB")
    print(f"- continuation: {co['new_tokens_mean']:.0f} new tokens on average; the fastest wait {co['min_s']:.1f} s")
    print(json.dumps(load, default=float))


if __name__ == "__main__":
    main()
