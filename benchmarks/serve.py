"""Load test of ``partita serve`` on localhost, bounded in count and time.

Starts ``partita serve --port 0`` in a subprocess (the real server: uvicorn, the bounded model
queue, the shipped models and indexes) and measures, from this process:

1. 200 concurrent requests on cheap endpoints (``/api/info``, ``/api/pieces/{id}``,
   ``/api/pieces/{id}/notes``, ``/api/jobs/{id}``): errors (must be 0) and latency;
2. attribution under 8 concurrent users: each user uploads a piece of its own and asks for its
   composers (embedding + attribution, the page's first call), ``--rounds`` times: p50/p95;
3. attribution while 2 continuations run: p50/p95 of a fresh piece's attribution with nothing
   else running, then while two 60 s continuations sample (the quick calls have their own lane,
   and generation pauses between tokens while one runs), the two in one run;
4. a 10 s continuation under 8 concurrent users: each POSTs ``{"seconds": 10}`` and polls the job
   until it is done: p50/p95 of the whole wait (the queue runs ``--workers`` at once);
5. memory: the server's resident memory after 0, 250, 500, 750 and 1,000 uploads, among them one
   of a million notes (refused: over the explorer's 200,000-note limit) and one of 200,000 notes
   (the largest accepted) whose notes, pianoroll and attribution are asked for; its peak (VmHWM)
   too. With ``--keep 256``, pieces beyond the newest 256 are dropped, so it must level off.

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
sys.path.insert(0, str(ROOT / "benchmarks"))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (Linux /proc), MiB (``VmHWM``: its peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def many_notes(n: int) -> bytes:
    """A MIDI file of ``n`` short piano notes (a note every 20 ticks), made with symusic."""
    from symusic import Note, Score, Track

    score, track = Score(480), Track("", 0, False)
    rng = np.random.default_rng(0)
    for i, pitch in enumerate(rng.integers(36, 96, n)):
        track.notes.append(Note(i * 20, 120, int(pitch), 80))
    score.tracks.append(track)
    return score.dumps_midi()


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


async def attribution_of_a_fresh_piece(c, path: Path) -> float:
    piece = await upload(c, path)  # a fresh piece: nothing cached
    t = time.perf_counter()
    r = await c.get(f"/api/pieces/{piece['id']}/attribution")
    r.raise_for_status()
    return time.perf_counter() - t


async def phase_attribute_while_generating(c, files: list[Path], rounds: int, deadline: float) -> dict:
    idle = [await attribution_of_a_fresh_piece(c, files[i % len(files)]) for i in range(rounds)]
    jobs = []
    for u in range(2):
        piece = await upload(c, files[(u + 3) % len(files)])
        r = await c.post(f"/api/pieces/{piece['id']}/continue", json={"seconds": 60, "seed": u})
        r.raise_for_status()
        jobs.append(r.json())

    async def states():
        return [(await c.get(f"/api/jobs/{j['id']}")).json()["state"] for j in jobs]

    while (await states()) != ["running", "running"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    during, i = [], 0
    while len(during) < rounds and time.monotonic() < deadline:
        lat = await attribution_of_a_fresh_piece(c, files[(i + 5) % len(files)])
        i += 1
        if (await states()) != ["running", "running"]:
            break  # a continuation ended while this one ran: not counted
        during.append(lat)
    for j in jobs:
        await c.post(f"/api/jobs/{j['id']}/cancel")
    return {"idle_calls": len(idle), "idle_p50_s": pct(idle, 50), "idle_p95_s": pct(idle, 95),
            "during_calls": len(during), "during_p50_s": pct(during, 50), "during_p95_s": pct(during, 95)}


async def phase_memory(c, pid: int, files: list[Path], total: int, deadline: float) -> dict:
    marks = {0: rss_mb(pid)}
    done = 0
    datas = [(f.name, f.read_bytes()) for f in files]
    million, large = many_notes(1_000_000), many_notes(200_000)
    r = await c.post("/api/pieces", params={"name": "million.mid"}, content=million)
    refused = {"status": r.status_code, "message": r.json().get("message"), "mib": len(million) / 2**20}
    r = await c.post("/api/pieces", params={"name": "large.mid"}, content=large)
    r.raise_for_status()
    big = r.json()
    for tail in ("notes", "pianoroll", "attribution", "similar"):
        (await c.get(big["links"][tail])).raise_for_status()
    after_large = {"rss_mb": rss_mb(pid), "peak_mb": rss_mb(pid, "VmHWM")}
    done = 2
    while done < total and time.monotonic() < deadline:
        batch = [c.post("/api/pieces", params={"name": datas[(done + i) % len(datas)][0]}, content=datas[(done + i) % len(datas)][1])
                 for i in range(min(25, total - done))]
        rs = await asyncio.gather(*batch)
        assert all(r.status_code == 201 for r in rs), [r.text for r in rs if r.status_code != 201][:1]
        before, done = done, done + len(rs)
        if done // 250 > before // 250 or done >= total:
            marks[done] = rss_mb(pid)
    info = (await c.get("/api/info")).json()
    return {"uploads": done, "rss_mb": marks, "keep": info["limits"]["pieces_kept"], "million": refused,
            "after_200k_notes": after_large, "peak_mb": rss_mb(pid, "VmHWM")}


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
        out["during"] = await phase_attribute_while_generating(c, files, args.during_rounds, end)
        out["continue"] = await phase_continue(c, files, args.users, args.seconds, end)
        out["memory"] = await phase_memory(c, proc.pid, files, args.uploads, end)
        out["server_rss_mb_end"] = rss_mb(proc.pid)
    return out


def screenshot(args, url: str) -> None:
    """Screenshots of the page for the manual (docs/serve.md): the whole page after a
    continuation (``--screenshot``), the continuation's pianoroll with its new notes in view
    (``*-new-notes.png``) and the similar pieces grouped by work (``*-similar.png``)."""
    from browser import CHROMIUM_ARGS, chromium_path
    from playwright.sync_api import sync_playwright

    piece = Path(args.screenshot_piece)
    out = Path(args.screenshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1240, "height": 900}, device_scale_factor=1)
        page.set_default_timeout(600_000)
        page.goto(url + "/")
        page.set_input_files("#file", str(piece))
        page.wait_for_selector("#bars li")
        page.wait_for_selector("#hits li")
        page.wait_for_function("() => document.getElementById('map').getAttribute('aria-busy') === 'false'")
        page.locator("#similar").screenshot(path=str(out.with_name(out.stem + "-similar.png")))
        page.fill("input[name=seconds]", "10")
        page.click("#continue")
        page.wait_for_selector(".result a[download]")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out), full_page=True)
        page.click(".result button:has-text('Explore this one')")
        page.wait_for_selector("#zoom-new:not([hidden])")
        page.wait_for_function("() => document.getElementById('view-label').textContent.startsWith('Showing')")
        page.locator("#piece").screenshot(path=str(out.with_name(out.stem + "-new-notes.png")))
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
    ap.add_argument("--during-rounds", type=int, default=8, help="attribution calls alone and while 2 continuations run")
    ap.add_argument("--results-file", default=None, help="RESULTS.md to record the numbers in (default: benchmarks/RESULTS.md)")
    ap.add_argument("--no-results", action="store_true", help="only print")
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
    ch, at, du, co, me = load["cheap"], load["attribute"], load["during"], load["continue"], load["memory"]
    lines = [
        f"- server: partita serve --workers {args.workers} --queue {args.queue} --keep {args.keep} (shipped models and indexes); "
        f"client: httpx on the same machine; partita tree at {git}; load average at the end {os.getloadavg()[0]:.1f}",
        "",
        "| test | requests | errors | p50 | p95 | wall |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {ch['requests']} concurrent cheap requests (info, piece, notes, job) | {ch['requests']} | {ch['errors']} | "
        f"{ch['p50_ms']:.0f} ms | {ch['p95_ms']:.0f} ms | {ch['wall_s']:.2f} s |",
        f"| attribution, {at['users']} concurrent users (fresh piece each: embed + attribute) | {at['calls']} | "
        f"{at['errors']} (+{at['busy_503']} busy) | {at['p50_s']:.2f} s | {at['p95_s']:.2f} s | {at['wall_s']:.1f} s |",
        f"| attribution of a fresh piece, nothing else running | {du['idle_calls']} | 0 | {du['idle_p50_s']:.2f} s | {du['idle_p95_s']:.2f} s | |",
        f"| attribution of a fresh piece while 2 continuations run | {du['during_calls']} | 0 | {du['during_p50_s']:.2f} s | {du['during_p95_s']:.2f} s | |",
        f"| {co['seconds_of_music']:.0f} s continuation, {co['users']} concurrent users (POST, poll until done) | {co['done']} | "
        f"{co['errors']} | {co['p50_s']:.1f} s | {co['p95_s']:.1f} s | {co['wall_s']:.1f} s |",
        "",
        f"- memory (server RSS) after uploads: {', '.join(f'{k}: {v:.0f} MiB' for k, v in me['rss_mb'].items())}; "
        f"{me['uploads']} uploads, {me['keep']} kept; peak {me['peak_mb']:.0f} MiB; at start {load['server_rss_mb_start']:.0f} MiB, "
        f"at the end {load['server_rss_mb_end']:.0f} MiB",
        f"- the million-note upload ({me['million']['mib']:.1f} MiB): HTTP {me['million']['status']} ({me['million']['message']}); "
        f"after a 200,000-note piece's upload, notes, pianoroll, attribution and similar pieces: RSS "
        f"{me['after_200k_notes']['rss_mb']:.0f} MiB, peak {me['after_200k_notes']['peak_mb']:.0f} MiB",
        f"- continuation: {co['new_tokens_mean']:.0f} new tokens on average; the fastest wait {co['min_s']:.1f} s",
    ]
    body = "\n".join(lines)
    print(body)
    print(json.dumps(load, default=float))
    if not args.no_results:
        try:
            from results import RESULTS, write_section  # benchmarks/results.py
        except ImportError:
            return
        command = (f"python benchmarks/serve.py --users {args.users} --rounds {args.rounds} --during-rounds {args.during_rounds} "
                   f"--uploads {args.uploads} --workers {args.workers}")
        peer = (f"the same server with nothing else running: attribution p50 {du['idle_p50_s']:.2f} s, "
                f"{du['during_p50_s'] / du['idle_p50_s']:.2f}x that while 2 continuations run")
        write_section("Web explorer under load (partita serve)", command, body, peer, path=args.results_file or RESULTS)


if __name__ == "__main__":
    main()
