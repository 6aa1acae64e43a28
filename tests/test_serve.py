"""`partita serve`: the API with FastAPI's ASGI test client, on the shipped models and index.

Covers every point of the explorer's safety list: the upload size limit (413), the MIDI header
check and every MidiError reason as a JSON error, path traversal on every endpoint that takes an
id, an index or a file name, concurrent uploads, the bounded model queue (503 + Retry-After), and
the continuation job, plus the `partita serve` command itself (address printed, Ctrl-C stops it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="partita serve needs fastapi (pip install -e .)")
httpx = pytest.importorskip("httpx", reason="the ASGI test client needs httpx (pip install -e '.[test]')")
from fastapi.testclient import TestClient  # noqa: E402

from conftest import FIXTURES, ROOT  # noqa: E402
from partita.serve import create_app  # noqa: E402

FUR_ELISE = FIXTURES / "edge" / "fur-elise.mid"  # piano: the piano index and gpt-piano
POP = FIXTURES / "multitrack" / "d8faddb8596fff7abb24d78666f73e4e.mid"  # a band: the bundled index
ID = re.compile(r"[0-9a-f]{16}")
LOCAL = "http://127.0.0.1"  # the server answers to its own names only (Host allowlist)


def _upload(client, path: Path, name: str | None = None):
    return client.post("/api/pieces", params={"name": name or path.name}, content=path.read_bytes(),
                       headers={"content-type": "audio/midi"})


def _one_line_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code, body
    assert "\n" not in body["message"] and "Traceback" not in body["message"] and body["message"]
    return body


@pytest.fixture(scope="module")
def client():
    app = create_app(pieces=[], workers=2, queue=16)
    with TestClient(app, base_url=LOCAL) as c:
        yield c


@pytest.fixture(scope="module")
def fur_elise(client):
    r = _upload(client, FUR_ELISE)
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------ page and API description
def test_page_and_assets_are_served_offline(client):
    page = client.get("/")
    assert page.status_code == 200 and "partita explorer" in page.text
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert refs and not [r for r in refs if r.startswith(("http:", "https:", "//"))], refs
    for ref in refs:  # every script, style and link of the page is served by the same process
        assert client.get(ref).status_code == 200, ref
    js = client.get("/static/app.js").text
    assert "http://" not in js and "https://" not in js  # nothing fetched from elsewhere
    # Labels for the controls (screen readers): every input has a label.
    assert page.text.count("<label") >= page.text.count("<input")
    docs = client.get("/api")
    assert docs.status_code == 200 and "/openapi.json" in docs.text and "cdn" not in docs.text.lower()
    spec = client.get("/openapi.json").json()
    for path in ("/api/pieces", "/api/pieces/{piece_id}/attribution", "/api/pieces/{piece_id}/similar",
                 "/api/pieces/{piece_id}/map", "/api/pieces/{piece_id}/continue", "/api/pieces/{piece_id}/audio",
                 "/api/pieces/{piece_id}/notes", "/api/pieces/{piece_id}/midi", "/api/jobs/{job_id}"):
        assert path in spec["paths"], path
    info = client.get("/api/info").json()
    assert info["indexes"] == ["bundled", "piano"] and "gpt-small" in info["models"]
    assert info["limits"]["max_upload_mb"] == 20


# ------------------------------------------------------------------ safe by default: hosts, origins, headers, token
def test_only_its_own_host_names_are_answered(client):
    """A DNS-rebinding page reaches the server under its own name: refused before anything runs."""
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.", "0.0.0.0:8000", ""):
        body = _one_line_error(client.get("/api/info", headers={"host": host}), 400, "bad_host")
        assert "127.0.0.1" in body["message"]
        _one_line_error(client.post("/api/pieces", content=FUR_ELISE.read_bytes(), headers={"host": host}), 400, "bad_host")
    for host in ("127.0.0.1:8000", "localhost:1234", "LOCALHOST", "[::1]:80", "127.0.0.1"):
        assert client.get("/api/info", headers={"host": host}).status_code == 200, host
    from partita.serve.app import allowed_hosts

    assert allowed_hosts("192.168.1.20") == {"127.0.0.1", "localhost", "::1", "192.168.1.20"}
    assert allowed_hosts("0.0.0.0") is None and allowed_hosts("::") is None  # any name: the token guards


def test_other_origins_cannot_upload_continue_or_read(client, fur_elise):
    """What a page on another site (another localhost port included) can send: a no-cors fetch
    with a text/plain body, a form post, an <img>. Every state-changing request from another
    origin is refused, and so is every cross-site read of the API but following a link."""
    ex = client.app.state.explorer
    before_pieces, before_jobs = len(ex.store._pieces), len(ex.jobs)
    data = FUR_ELISE.read_bytes()
    cross = [{"origin": "http://localhost:9999", "sec-fetch-site": "same-site", "sec-fetch-mode": "no-cors"},
             {"origin": "http://evil.example", "sec-fetch-site": "cross-site", "sec-fetch-mode": "cors"},
             {"origin": "http://localhost:9999"},  # a browser without Sec-Fetch-* headers
             {"origin": "null"},  # a sandboxed frame or a file:// page
             {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}]  # a form posted from elsewhere
    for headers in cross:
        for r in (client.post("/api/pieces", content=data, headers={**headers, "content-type": "text/plain"}),
                  client.post(fur_elise["links"]["continue"], content=b'{"seconds": 1}', headers={**headers, "content-type": "text/plain"}),
                  client.post(fur_elise["links"]["continue"], json={"seconds": 1}, headers=headers)):
            _one_line_error(r, 403, "cross_origin")
    assert (len(ex.store._pieces), len(ex.jobs)) == (before_pieces, before_jobs)
    for tail in ("notes", "pianoroll", "attribution", "midi", "audio"):
        for site in ("cross-site", "same-site"):
            r = client.get(fur_elise["links"][tail], headers={"sec-fetch-site": site, "sec-fetch-mode": "no-cors"})
            _one_line_error(r, 403, "cross_origin")
    # Following a link from elsewhere still opens the page and downloads a file; our own page's requests pass.
    assert client.get("/", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}).status_code == 200
    assert client.get(fur_elise["links"]["midi"], headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}).status_code == 200
    same = {"origin": LOCAL, "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}
    assert client.get(fur_elise["links"]["notes"], headers=same).status_code == 200
    r = client.post("/api/pieces", params={"name": "mine.mid"}, content=data, headers={**same, "content-type": "audio/midi"})
    assert r.status_code == 201
    assert client.post("/api/pieces", content=data, headers={"origin": "http://127.0.0.1:80"}).status_code == 201  # default port


def test_every_answer_forbids_framing_inline_script_and_other_origins(client):
    for r in (client.get("/"), client.get("/api"), client.get("/api/info"), client.get("/static/app.js"),
              client.get("/api/pieces/0123456789abcdef"), client.get("/favicon.ico"),
              client.get("/api/info", headers={"host": "evil.example"}),
              client.post("/api/pieces/0123456789abcdef/continue", content=b"{" + b" " * 100_000 + b"}")):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp, r.url
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cross-origin-resource-policy"] == "same-origin"
    assert client.get("/favicon.ico").headers["content-type"].startswith("image/svg")
    for page in ("/", "/api"):  # the CSP allows no inline script or style, so the pages have none
        html = client.get(page).text
        assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html and " style=" not in html
        assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers


def test_a_token_guards_every_request():
    from partita.errors import PartitaError

    for host in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(PartitaError, match="--token"):
            create_app(host=host, pieces=[])
    app = create_app(host="0.0.0.0", token="s3cret-token", pieces=[])
    with TestClient(app, base_url="http://192.168.1.20:8000") as c:  # any name: the token guards
        for r in (c.get("/"), c.get("/api/info"), c.post("/api/pieces", content=FUR_ELISE.read_bytes()),
                  c.get("/api/info", headers={"authorization": "Bearer wrong"}), c.get("/?token=wrong"),
                  c.get("/api/info", headers={"cookie": "partita_token=wrong"})):
            _one_line_error(r, 401, "unauthorized")
        assert c.get("/api/info", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
        login = c.get("/?token=s3cret-token", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/info").status_code == 200  # the client keeps the cookie: the page's requests carry it
        assert c.post("/api/pieces", content=FUR_ELISE.read_bytes()).status_code == 201
        _one_line_error(c.post("/api/pieces", content=FUR_ELISE.read_bytes(), headers={"origin": "http://evil.example"}),
                        403, "cross_origin")  # the token does not let other sites in


# ------------------------------------------------------------------ validated at the door
HOSTILE = [  # each once reached a 500 or a late failure
    {"prompt_seconds": float("nan")}, {"prompt_seconds": 1e9}, {"prompt_seconds": -1}, {"prompt_seconds": 0},
    {"seconds": 0}, {"seconds": -3}, {"seconds": True}, {"seconds": float("inf")}, {"seconds": "10"}, {"n": 1.0},
    {"n": True}, {"seed": -1}, {"seed": 2**64}, {"top_k": 0}, {"top_k": 10**30}, {"min_p": 1}, {"temperature": 1e300},
    {"bars": 0}, {"max_new_tokens": 10**6}, {"model": "x" * 5000}, {"allow_early_end": "yes"},
]


@pytest.mark.parametrize("settings", HOSTILE, ids=[json.dumps(h)[:40] for h in HOSTILE])
def test_bad_settings_are_422_before_anything_is_queued(client, fur_elise, settings):
    ex = client.app.state.explorer
    jobs = len(ex.jobs)
    body = json.dumps(settings).encode()  # NaN and Infinity as Python's json writes them
    _one_line_error(client.post(fur_elise["links"]["continue"], content=body, headers={"content-type": "application/json"}),
                    422, "invalid_request")
    assert len(ex.jobs) == jobs


def test_huge_numbers_and_pieces_over_the_limits_are_refused_at_the_door(client, fur_elise):
    ex = client.app.state.explorer
    for body in (b'{"seconds": 1' + b"0" * 5000 + b"}", b'{"seed": 1' + b"0" * 400 + b"}", b'{"seconds": 1e999}'):
        r = client.post(fur_elise["links"]["continue"], content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body[:30], r.text)
    _one_line_error(client.get(f"/api/indexes/piano/pieces/{'9' * 5000}/midi"), 422, "invalid_request")
    from symusic import Note, Score, Track

    from partita.serve.core import MAX_PIECE_NOTES

    def smf(notes, tpq=480, tempo_us=500_000):
        score = Score(tpq)
        from symusic import Tempo

        score.tempos.append(Tempo(0, 60_000_000 / tempo_us))
        track = Track("", 0, False)
        for t, d in notes:
            track.notes.append(Note(t, d, 60, 80))
        score.tracks.append(track)
        return score.dumps_midi()

    pieces = len(ex.store._pieces)
    centuries = smf([(0, 480), (0, 2**27)], tpq=1)  # 134 million beats: centuries at any tempo
    assert len(centuries) < 100
    body = _one_line_error(client.post("/api/pieces", params={"name": "long.mid"}, content=centuries), 413, "too_large")
    assert body["message"].startswith("long.mid ") and "beats" in body["message"]
    hours = smf([(0, 480), (480, 480 * 3 * 3600)], tempo_us=1_000_000)  # 3 hours at 60 bpm
    _one_line_error(client.post("/api/pieces", content=hours), 413, "too_large")
    many = smf([(i, 1) for i in range(MAX_PIECE_NOTES + 1)])
    body = _one_line_error(client.post("/api/pieces", content=many), 413, "too_large")
    assert f"{MAX_PIECE_NOTES:,}" in body["message"]
    assert len(ex.store._pieces) == pieces


def _hypothesis():
    return pytest.importorskip("hypothesis", reason="the property test needs hypothesis (pip install -e '.[test]')")


def test_random_json_and_bytes_at_every_endpoint_never_give_a_5xx(client):
    """Random JSON (NaN, huge integers, wrong types, unknown and known keys) and random bytes at
    every endpoint: never a 5xx, always a JSON line. Derandomized: the same examples every run."""
    _hypothesis()
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from partita.serve.app import ContinueSettings, InfillSettings

    ex = client.app.state.explorer
    pid = _upload(client, FIXTURES / "edge" / "chords.mid").json()["id"]
    scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=10**18, max_value=10**40) | \
        st.floats() | st.text(max_size=12) | st.sampled_from(["5-8", "1-2", "0-1", "1e308-2", "auto", "piano", "gpt-small"])
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=8)
    fields = sorted(set(ContinueSettings.model_fields) | set(InfillSettings.model_fields) | {"row", "k", "index"})
    body = st.one_of(st.dictionaries(st.sampled_from(fields), values, max_size=5).map(json.dumps).map(str.encode),
                     values.map(json.dumps).map(str.encode), st.binary(max_size=200),
                     st.integers(min_value=300, max_value=6000).map(lambda d: b'{"seconds": 1' + b"7" * d + b"}"))
    segment = st.one_of(st.just(pid), st.text(max_size=20), st.sampled_from(["piano", "bundled", "0", "-1", "9" * 400]))
    query = st.dictionaries(st.sampled_from(["k", "index", "name", "token"]), st.text(max_size=30) | st.integers().map(str), max_size=3)
    gets = ["/api/pieces/{}", "/api/pieces/{}/notes", "/api/pieces/{}/attribution", "/api/pieces/{}/similar",
            "/api/pieces/{}/map", "/api/pieces/{}/midi", "/api/jobs/{}", "/api/indexes/{}/map",
            "/api/indexes/piano/pieces/{}/midi", "/api/indexes/{}/pieces/0/midi"]
    posts = ["/api/pieces/{}/continue", "/api/pieces/{}/infill", "/api/jobs/{}/cancel", "/api/pieces"]

    def check(r):
        assert r.status_code < 500, (r.request.method, str(r.url)[:200], r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/json") and "\n" not in r.json()["message"]

    def settle():  # a request that was valid queued a job: cancel it, so nothing runs on
        for job in list(ex.jobs.values()):
            ex.cancel(job)
            if job.future is not None:
                job.future.result(timeout=300)

    common = dict(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))

    @settings(max_examples=150, **common)
    @given(path=st.sampled_from(gets), seg=segment, params=query)
    def get(path, seg, params):
        from urllib.parse import quote

        check(client.get(path.format(quote(seg, safe="")), params=params))

    @settings(max_examples=150, **common)
    @given(path=st.sampled_from(posts), seg=segment, data=body, params=query,
           ctype=st.sampled_from(["application/json", "text/plain", "audio/midi", ""]))
    def post(path, seg, data, params, ctype):
        from urllib.parse import quote

        try:
            check(client.post(path.format(quote(seg, safe="")), content=data, params=params,
                              headers={"content-type": ctype} if ctype else {}))
        finally:
            settle()

    get()
    post()


# ------------------------------------------------------------------ a good piano file, end to end
def test_piano_upload_attribution_similar_map_notes(client, fur_elise):
    p = fur_elise
    assert ID.fullmatch(p["id"]) and p["name"] == "fur-elise.mid" and p["piano"] is True
    assert p["notes"] == 1020 and 150 < p["seconds"] < 160
    auto = client.get(p["links"]["attribution"], params={"k": 3}).json()
    from partita.search import choose_index

    chosen = choose_index([FUR_ELISE])  # the library's one choice, with its reason
    assert auto["choice"] == {"index": chosen.index_name.removesuffix("-index"), "reason": chosen.reason, "given": False}
    a = client.get(p["links"]["attribution"], params={"k": 3, "index": "piano"}).json()
    assert a["choice"] == {"index": "piano", "reason": "chosen: piano", "given": True}
    from partita.search.index import Index, embed_queries, shipped_index
    from partita.search.reader import attribute_files, load_reader

    index = Index.load(shipped_index("piano"))
    reader = load_reader(index.path)  # the composer readout partita attribute uses
    assert a["index"] == "piano" and a["method"] == "readout" and a["labels"] == len(reader.labels) and len(a["top"]) == 3
    probs = [t["probability"] for t in a["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
    assert a["verdict"] in ({t["label"] for t in a["top"]} | {"unknown composer"})
    assert a["known"] == (a["novelty"] <= a["threshold"]) and "query" not in a
    # The same numbers and the same explanation as the library (and so the CLI).
    direct = attribute_files(index, reader, [FUR_ELISE], k=3)[0][0]
    assert [t["label"] for t in direct["top"]] == [t["label"] for t in a["top"]]
    assert np.allclose([t["probability"] for t in direct["top"]], probs, atol=1e-5)
    assert a["why"]["between"] == [t["label"] for t in a["top"][:2]] == direct["why"]["between"]
    assert [f["feature"] for f in a["why"]["features"]] == [f["feature"] for f in direct["why"]["features"]]
    assert set(a["nearest"]) == set(a["why"]["between"]) and all(a["nearest"].values())
    vecs, kept, _ = embed_queries(index, [FUR_ELISE])
    s = client.get(p["links"]["similar"], params={"k": 5, "index": "piano"}).json()
    assert len(s["hits"]) == 5 and [h["rank"] for h in s["hits"]] == [1, 2, 3, 4, 5]
    assert [h["id"] for h in s["hits"]] == [h.piece["id"] for h in index.search(vecs, 5)[0]]
    assert all("path" not in h for h in s["hits"])
    assert s["playable"] is False and "--pieces" in s["note"]  # pieces=[]: no files to play here
    m = client.get(p["links"]["map"], params={"index": "piano"}).json()
    assert m["index"] == "piano" and np.isfinite([m["x"], m["y"]]).all() and m["verdict"] == a["verdict"]
    points = client.get(m["points"]).json()
    assert points["count"] == len(index) == len(points["x"]) == len(points["label"])
    n = client.get(p["links"]["notes"]).json()
    assert n["count"] == 1020 and len(n["pitch"]) == 1020 and min(n["onset"]) >= 0
    png = client.get(p["links"]["pianoroll"])
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    for bad in ("k=0", "k=500", "k=three"):  # bad parameters: one JSON line
        _one_line_error(client.get(f"{p['links']['attribution']}?{bad}"), 422, "invalid_request")
    midi = client.get(p["links"]["midi"])
    assert midi.content == FUR_ELISE.read_bytes() and 'filename="fur-elise.mid"' in midi.headers["content-disposition"]


def test_audio_or_a_clear_json_error(client, fur_elise):
    from partita.io.audio import have_soundfont

    r = client.get(fur_elise["links"]["audio"])
    if have_soundfont():
        assert r.status_code == 200 and r.headers["content-type"].startswith("audio/") and len(r.content) > 1000
        assert client.get("/api/info").json()["audio"]["available"] is True
    else:
        _one_line_error(r, 501, "audio_unavailable")
        assert client.get("/api/info").json()["audio"]["available"] is False


def test_a_band_uses_the_bundled_index(client):
    r = _upload(client, POP)
    assert r.status_code == 201 and r.json()["piano"] is False
    a = client.get(r.json()["links"]["attribution"]).json()
    assert a["index"] == "bundled"
    forced = client.get(r.json()["links"]["attribution"], params={"index": "piano"}).json()
    assert forced["index"] == "piano"


# ------------------------------------------------------------------ bad files: every reason, one JSON line
def _smf(fmt=0, ntracks=1, division=96, tracks=(b"\x00\x90\x3c\x40\x60\x80\x3c\x40\x00\xff\x2f\x00",)) -> bytes:
    out = b"MThd" + struct.pack(">IHHH", 6, fmt, ntracks, division)
    for t in tracks:
        out += b"MTrk" + struct.pack(">I", len(t)) + t
    return out


BAD = {
    "not_midi": [b"hello, I am not a MIDI file", b"", b"RIFF\x04\x00\x00\x00RMID", b"\x89PNG\r\n\x1a\n" + bytes(40)],
    "truncated": [b"MThd\x00\x00\x00", _smf()[:-5]],
    "corrupt": [b"MThd" + struct.pack(">IHHH", 4, 0, 1, 96), _smf(fmt=7), (FIXTURES / "edge" / "control168-corrupt.mid").read_bytes()],
    "smpte": [(FIXTURES / "edge" / "negative-ticks-per-beat.mid").read_bytes()],
    "zero_tpq": [(FIXTURES / "edge" / "zero-ticks-per-beat.mid").read_bytes()],
    "type2": [(FIXTURES / "edge" / "type2.mid").read_bytes()],
    "no_notes": [(FIXTURES / "edge" / "empty.mid").read_bytes(), _smf(tracks=(b"\x00\xff\x2f\x00",))],
}


@pytest.mark.parametrize("reason,i", [(r, i) for r, items in BAD.items() for i in range(len(items))])
def test_every_midi_error_reason_is_a_json_error(client, reason, i):
    body = _one_line_error(client.post("/api/pieces", params={"name": "bad.mid"}, content=BAD[reason][i]), 422, "bad_midi")
    assert body["reason"] == reason, body
    assert body["message"].startswith("bad.mid: ")


def test_the_reasons_tested_are_every_reason_an_upload_can_have():
    source = (ROOT / "src" / "partita" / "io" / "midi.py").read_text()
    reasons = set(re.findall(r'MidiError\(\s*"(\w+)"', source))
    # "missing" and "unreadable" are about paths (an upload is bytes); "too_large" is the 413 below.
    assert reasons - {"missing", "unreadable", "too_large"} == set(BAD), reasons


def test_oversize_upload_is_413_by_length_and_while_streaming():
    app = create_app(pieces=[], max_upload_mb=0.05)  # 51 KiB
    big = (FIXTURES / "performance" / "Maestro_6.mid").read_bytes()
    assert len(big) > 0.05 * 2**20
    with TestClient(app, base_url=LOCAL) as c:
        body = _one_line_error(c.post("/api/pieces", content=big), 413, "too_large")
        assert "0.05 MiB limit" in body["message"]

        def chunks():  # no Content-Length: the limit is counted as the body arrives
            for k in range(0, len(big), 8192):
                yield big[k:k + 8192]

        _one_line_error(c.post("/api/pieces", content=chunks()), 413, "too_large")
        assert c.post("/api/pieces", content=(FIXTURES / "edge" / "chords.mid").read_bytes()).status_code == 201
        # Other bodies (a continuation's settings) are small: a huge JSON body is refused too.
        r = c.post("/api/pieces/0123456789abcdef/continue", content=b"{" + b" " * 100_000 + b"}",
                   headers={"content-type": "application/json"})
        _one_line_error(r, 413, "too_large")
        assert len(list(app.state.explorer.folder.iterdir())) == 1  # nothing of the refused uploads kept


def test_a_bug_is_a_json_line_without_its_details():
    from partita.serve.core import error_body

    status, body = error_body(KeyError("/home/someone/secret path\nline 2"))
    assert status == 500 and body == {"error": "internal", "message": "internal error (KeyError); see the server's log"}


def test_a_piece_gone_from_its_folder_is_a_json_line_without_the_folder():
    app = create_app(pieces=[])
    ex = app.state.explorer
    with TestClient(app, base_url=LOCAL) as c:
        p = _upload(c, FIXTURES / "edge" / "chords.mid").json()
        (ex.folder / f"{p['id']}.mid").unlink()  # as if removed behind the server's back
        for r, status, code in ((c.get(p["links"]["notes"]), 422, "bad_midi"), (c.get(p["links"]["attribution"]), 400, "bad_request")):
            body = _one_line_error(r, status, code)
            assert "no such file" in body["message"] and str(ex.folder) not in body["message"] and "partita-serve-" not in body["message"]


# ------------------------------------------------------------------ path traversal
TRAVERSALS = [
    "..", "../..", "../../../../../../etc/passwd", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2Fetc%2Fpasswd",
    "....%2F%2F....%2F%2Fetc%2Fpasswd", "..%5C..%5Cwindows%5Cwin.ini", "0123456789abcdef%2F..%2F..%2Fx",
    "0123456789ABCDEF", "0123456789abcdef.mid", "0123456789abcdef%00", "~root", "%252e%252e%252f",
]


class _Raw:
    """A response to a request sent to the app exactly as written: clients (httpx, browsers)
    remove ``..`` segments before sending, a hostile client need not. The path is given to the app
    as uvicorn gives it: ``raw_path`` as sent, ``path`` percent-decoded."""

    def __init__(self, app, method: str, target: str, body: bytes = b""):
        from urllib.parse import unquote

        path, _, query = target.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                 "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        asyncio.run(app(scope, receive, send))
        start = next(m for m in sent if m["type"] == "http.response.start")
        self.status_code = start["status"]
        self.headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        self.text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode(errors="replace")
        self.url = target


def _never_a_file(r):
    assert r.status_code in (400, 404, 405, 422), (r.url, r.status_code)
    assert "root:" not in r.text and "[fonts]" not in r.text and "partita explorer" not in r.text
    if r.status_code != 405:
        assert r.headers["content-type"].startswith("application/json"), r.url


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_path_traversal_on_every_endpoint(client, fur_elise, bad):
    app, good = client.app, fur_elise["id"]
    get = lambda target: _Raw(app, "GET", target)  # noqa: E731
    for tail in ("", "/notes", "/pianoroll.png", "/audio", "/midi", "/attribution", "/similar", "/map"):
        _never_a_file(get(f"/api/pieces/{bad}{tail}"))
    _never_a_file(_Raw(app, "POST", f"/api/pieces/{bad}/continue", b'{"seconds": 1}'))
    _never_a_file(get(f"/api/jobs/{bad}"))
    for q in ("attribution", "similar", "map"):
        _never_a_file(get(f"/api/pieces/{good}/{q}?index={bad}"))
    _never_a_file(_Raw(app, "POST", f"/api/pieces/{good}/continue", json.dumps({"seconds": 1, "model": bad}).encode()))
    _never_a_file(get(f"/api/indexes/{bad}/map"))
    for tail in ("audio", "midi"):
        _never_a_file(get(f"/api/indexes/{bad}/pieces/0/{tail}"))
        _never_a_file(get(f"/api/indexes/bundled/pieces/{bad}/{tail}"))
    r = get(f"/static/{bad}")
    assert r.status_code in (404, 400) and "root:" not in r.text
    r = get(f"/static/{bad}/../../../../etc/passwd")
    assert r.status_code in (404, 400) and "root:" not in r.text


def test_upload_names_never_become_paths(client):
    before = set(os.listdir(client.app.state.explorer.folder))
    r = _upload(client, FIXTURES / "edge" / "chords.mid", name="../../../tmp/evil<script>.mid")
    assert r.status_code == 201
    assert r.json()["name"] == "evilscript.mid"
    added = set(os.listdir(client.app.state.explorer.folder)) - before
    assert added == {f"{r.json()['id']}.mid"}  # named by its id, in the private folder
    assert not Path("/tmp/evil<script>.mid").exists()
    assert client.get(r.json()["links"]["midi"]).headers["content-disposition"].endswith('"evilscript.mid"')


def test_index_pieces_are_played_only_from_inside_their_folder(tmp_path):
    """A custom index whose ids try to leave its --pieces folder: refused; a good id is served."""
    from partita.pretrained import FEATNET, bundle_path
    from partita.search.index import Index, model_record

    rng = np.random.default_rng(0)
    root = tmp_path / "pieces"
    (root / "a").mkdir(parents=True)
    (root / "a" / "good.mid").write_bytes((FIXTURES / "edge" / "chords.mid").read_bytes())
    (tmp_path / "secret.mid").write_bytes((FIXTURES / "edge" / "chords.mid").read_bytes())
    ids = ["a/good.mid", "../secret.mid", str(tmp_path / "secret.mid"), "a/../../secret.mid"]
    index = Index.build(rng.normal(size=(len(ids), 64)), [{"id": i, "title": i, "label": "x"} for i in ids],
                        model=model_record(bundle_path(FEATNET), shipped=FEATNET))
    index.save(tmp_path / "idx")
    app = create_app(index=str(tmp_path / "idx"), pieces=[str(root)])
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/info").json()["indexes"] == ["idx"]
        ok = c.get("/api/indexes/idx/pieces/0/midi")
        assert ok.status_code == 200 and ok.content == (root / "a" / "good.mid").read_bytes()
        _one_line_error(c.get("/api/indexes/idx/pieces/-1/midi"), 422, "invalid_request")
        for row in (1, 2, 3, 4):
            _one_line_error(c.get(f"/api/indexes/idx/pieces/{row}/midi"), 404, "not_found")
            _one_line_error(c.get(f"/api/indexes/idx/pieces/{row}/audio"), 404 if app.state.explorer.audio_status()["available"] else 501,
                            "not_found" if app.state.explorer.audio_status()["available"] else "audio_unavailable")
        if app.state.explorer.audio_status()["available"]:
            played = c.get("/api/indexes/idx/pieces/0/audio")
            assert played.status_code == 200 and played.headers["content-type"].startswith("audio/")


# ------------------------------------------------------------------ what the page draws
def test_new_notes_are_those_the_parent_does_not_hold(client):
    """A generated piece's new notes are read off the two files: a note of the parent moved a
    little (a tokenizer's grid) is the parent's; a note the parent lacks is new."""
    from symusic import Note

    from partita.io import load

    ex = client.app.state.explorer
    parent = _upload(client, FIXTURES / "edge" / "chords.mid").json()
    assert client.get(parent["links"]["notes"]).json()["new"] is None  # an upload: nothing is new
    score = load(FIXTURES / "edge" / "chords.mid")
    tpq, end = score.ticks_per_quarter, score.end()
    track = score.tracks[0]
    for n in track.notes:
        n.time += 1  # a tick later: still the parent's note
    added = [(end + i * tpq, 60 + i) for i in range(5)] + [(0, 127)]  # five after the end, one new pitch at the start
    for t, pitch in added:
        track.notes.append(Note(t, tpq, pitch, 90))
    child = ex.store.add(score.dumps_midi(), score, "child.mid", kind="continuation", parent=parent["id"])
    n = client.get(f"/api/pieces/{child.id}/notes").json()
    flagged = sorted((round(o, 3), p) for o, p, f in zip(n["onset"], n["pitch"], n["new"]) if f)
    assert len(flagged) == len(added) and {p for _, p in flagged} == {p for _, p in added}
    assert len(n["bars"]) == child.bars + 1 and n["bars"][0] == 0 and n["bars"] == sorted(n["bars"])


def test_similar_pieces_are_grouped_by_work_with_their_performers(client, fur_elise):
    from partita.serve.core import performance

    s = client.get(fur_elise["links"]["similar"], params={"k": 30, "index": "piano"}).json()
    ranks = [r for w in s["works"] for r in w["hits"]]
    assert sorted(ranks) == [h["rank"] for h in s["hits"]]  # every hit in exactly one work
    assert len({(w["label"], w["title"]) for w in s["works"]}) == len(s["works"])
    assert [w["rank"] for w in s["works"]] == sorted(w["rank"] for w in s["works"])  # in the order of their best hit
    assert all(h["performer"] or h["score"] for h in s["hits"])  # ASAP: a pianist or the notated score
    assert performance("Chopin/Etudes_op_10/1/MunA07M.mid", {"Chopin/Etudes_op_10/1/MunA07M.mid": 2015}) == \
        {"performer": "MunA", "score": False, "year": 2015}
    assert performance("Bach/Fugue/bwv_846/midi_score.mid", {})["score"] is True
    assert performance("bach/bwv10.mid", {}, "corpus")["performer"] is None  # a corpus id is not a pianist


# ------------------------------------------------------------------ concurrency and the queue
def test_concurrent_uploads_and_model_calls():
    files = sorted((FIXTURES / "edge").glob("*.mid"))[:10] + [FUR_ELISE, POP]
    app = create_app(pieces=[], workers=2, queue=32)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=LOCAL) as c:
            ups = await asyncio.gather(*[c.post("/api/pieces", params={"name": f.name}, content=f.read_bytes()) for f in files])
            good = [r.json() for r in ups if r.status_code == 201]
            calls = [c.get(f"/api/pieces/{p['id']}/attribution") for p in good[-2:] for _ in range(3)]
            return ups, good, await asyncio.gather(*calls)

    try:
        ups, good, attributions = asyncio.run(go())
    finally:
        app.state.explorer.close()
    expected_ok = []
    from partita.io import MidiError, load

    for f in files:
        try:
            load(f)
            expected_ok.append(True)
        except MidiError:
            expected_ok.append(False)
    assert [r.status_code == 201 for r in ups] == expected_ok
    assert len({p["id"] for p in good}) == len(good) == sum(expected_ok)
    assert [p["name"] for p in good] == [f.name for f, ok in zip(files, expected_ok) if ok]
    assert all(r.status_code == 200 for r in attributions)
    # The same piece asked three times at once: one embedding, the same answer.
    assert len({json.dumps(r.json()["top"]) for r in attributions[:3]}) == 1


def test_queue_full_is_503_with_retry_after_in_its_own_lane_only():
    """Two lanes: the page's quick calls and generation. A full lane refuses with 503 and a
    Retry-After from its own calls' durations; the other lane answers on."""
    app = create_app(pieces=[], workers=1, queue=1)
    ex = app.state.explorer
    with TestClient(app, base_url=LOCAL) as c:
        pid = _upload(c, FIXTURES / "edge" / "chords.mid").json()["id"]
        release = threading.Event()
        held = ex.queue.submit(release.wait, 60)  # the analysis lane's one place is taken
        try:
            for r in (c.get(f"/api/pieces/{pid}/attribution"), c.get(f"/api/pieces/{pid}/audio")):
                body = _one_line_error(r, 503, "busy")
                assert int(r.headers["retry-after"]) >= 1 and body["retry_after"] == int(r.headers["retry-after"])
                assert f"retries in {body['retry_after']} s" in body["message"]
            assert c.get(f"/api/pieces/{pid}").status_code == 200  # cheap calls are not queued
            job = c.post(f"/api/pieces/{pid}/continue", json={"seconds": 1})  # generation has its own lane
            assert job.status_code == 202
            c.post(job.json()["links"]["self"] + "/cancel")
        finally:
            release.set()
            held.result(timeout=60)
        ex.job(job.json()["id"]).future.result(timeout=300)
        release.clear()
        held = ex.generation.submit(release.wait, 60)  # now the generation lane is full
        try:
            r = c.post(f"/api/pieces/{pid}/continue", json={"seconds": 1})
            body = _one_line_error(r, 503, "busy")
            assert 1 <= body["retry_after"] == int(r.headers["retry-after"])
            assert c.get(f"/api/pieces/{pid}/attribution").status_code == 200  # never behind generation
        finally:
            release.set()
            held.result(timeout=60)


def test_retry_after_is_when_the_first_running_call_should_end():
    from partita.serve.core import ModelQueue

    queue = ModelQueue(workers=1, size=2, seconds=30.0)
    go = threading.Event()
    try:
        first = queue.submit(go.wait, 60)
        assert 25 <= queue.retry_after() <= 30  # one running call of a 30 s mean, just started
        second = queue.submit(go.wait, 60)
        assert 55 <= queue.retry_after() <= 60  # and one waiting behind it
        with pytest.raises(Exception, match="retries in"):
            queue.submit(go.wait, 60)
    finally:
        go.set()
        first.result(timeout=60), second.result(timeout=60)
        queue.close()


def test_jobs_show_their_place_in_the_queue_and_can_be_cancelled():
    app = create_app(pieces=[], workers=1, queue=8)
    ex = app.state.explorer
    with TestClient(app, base_url=LOCAL) as c:
        pid = _upload(c, FIXTURES / "edge" / "chords.mid").json()["id"]
        jobs = [c.post(f"/api/pieces/{pid}/continue", json={"seconds": 60, "seed": i}).json() for i in range(3)]
        end = time.monotonic() + 300
        while ex.job(jobs[0]["id"]).state == "queued" and time.monotonic() < end:
            time.sleep(0.05)
        views = [c.get(j["links"]["self"]).json() for j in jobs]
        assert [v["queue"]["position"] for v in views] == [None, 1, 2] and views[0]["state"] == "running"
        assert views[1]["queue"]["running"] == 1
        cancelled = c.post(jobs[1]["links"]["self"] + "/cancel").json()
        assert cancelled["state"] == "cancelled"  # it never ran
        assert c.get(jobs[2]["links"]["self"]).json()["queue"]["position"] == 1
        c.post(jobs[0]["links"]["self"] + "/cancel")
        c.post(jobs[2]["links"]["self"] + "/cancel")
        ex.job(jobs[0]["id"]).future.result(timeout=300)  # the queued ones' futures were cancelled: they never ran
        final = [c.get(j["links"]["self"]).json() for j in jobs]
        assert [f["state"] for f in final] == ["cancelled"] * 3, final  # the running one stopped at its next token
        assert ex.generation.held == 0
        _one_line_error(c.post("/api/jobs/0123456789abcdef/cancel"), 404, "not_found")


def test_attribution_answers_while_generation_runs():
    """A running continuation pauses between tokens while the page's quick calls run, and they
    never queue behind it."""
    app = create_app(pieces=[], workers=1, queue=4)
    ex = app.state.explorer
    with TestClient(app, base_url=LOCAL) as c:
        pid = _upload(c, FIXTURES / "edge" / "chords.mid").json()["id"]
        job = c.post(f"/api/pieces/{pid}/continue", json={"seconds": 60}).json()
        end = time.monotonic() + 300
        while ex.job(job["id"]).done == 0 and ex.job(job["id"]).state in ("queued", "running") and time.monotonic() < end:
            time.sleep(0.05)
        assert ex.job(job["id"]).state == "running"
        other = _upload(c, FUR_ELISE).json()
        before = ex.job(job["id"]).done
        r = c.get(other["links"]["attribution"])
        assert r.status_code == 200 and r.json()["top"]
        # While it ran, generation waited at its tokens (at most YIELD_SECONDS each).
        assert ex.job(job["id"]).state == "running" and ex.job(job["id"]).done - before < 64
        c.post(job["links"]["self"] + "/cancel")
        ex.job(job["id"]).future.result(timeout=300)
        assert ex.job(job["id"]).state == "cancelled"


def test_pieces_kept_are_bounded_and_the_folder_goes_with_the_server():
    app = create_app(pieces=[], keep=3)
    folder = app.state.explorer.folder
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    with TestClient(app, base_url=LOCAL) as c:
        ids = [_upload(c, FIXTURES / "edge" / "chords.mid").json()["id"] for _ in range(5)]
        assert [c.get(f"/api/pieces/{i}").status_code for i in ids] == [404, 404, 200, 200, 200]
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.mid" for i in ids[2:])
    assert not folder.exists()


# ------------------------------------------------------------------ continuation
def _wait(client, job: dict, timeout: float = 300) -> dict:
    end = time.monotonic() + timeout
    while job["state"] in ("queued", "running") and time.monotonic() < end:
        time.sleep(0.2)
        job = client.get(job["links"]["self"]).json()
    return job


def test_continuation_job_progress_pieces_and_settings(client):
    from partita.io import load

    pid = _upload(client, FIXTURES / "edge" / "time-signatures.mid").json()["id"]
    r = client.post(f"/api/pieces/{pid}/continue", json={"seconds": 2, "seed": 3, "n": 2, "temperature": 0.9})
    assert r.status_code == 202 and ID.fullmatch(r.json()["id"])
    job = _wait(client, r.json())
    assert job["state"] == "done", job
    assert job["model"] == "gpt-piano" and job["progress"]["done"] == job["progress"]["total"] > 0
    assert len(job["pieces"]) + job["empty_samples"] == 2
    again = _wait(client, client.post(f"/api/pieces/{pid}/continue", json={"seconds": 2, "seed": 3, "n": 2, "temperature": 0.9}).json())
    for p, q in zip(job["pieces"], again["pieces"]):  # the same seed gives the same pieces
        assert p["kind"] == "continuation" and p["parent"] == pid and p["settings"]["stop"] in ("seconds", "eos", "tokens")
        data = client.get(p["links"]["midi"]).content
        assert data[:4] == b"MThd" and load(data).note_num() == p["notes"]
        assert data == client.get(q["links"]["midi"]).content
    n = client.get(job["pieces"][0]["links"]["notes"]).json()
    start, end = n["new_music"]  # the new music: from the prompt's end (in the new piece's timeline) to its end
    assert 0 < start < end <= n["seconds"] + 1e-6 and end - start >= 2 - 1e-3  # at least the 2 s asked
    ex = client.app.state.explorer
    piano = ex.gpt(ex.model_paths["gpt-piano"])
    small = _wait(client, client.post(f"/api/pieces/{pid}/continue", json={"bars": 1, "model": "gpt-small"}).json())
    assert small["state"] == "done" and small["model"] == "gpt-small"
    # Each model was loaded once and is kept (a bounded cache): the same object serves every job.
    assert ex.gpt(ex.model_paths["gpt-piano"]) is piano and len(ex.gpts._d) == 2 <= ex.gpts.size
    # Bad settings: one JSON line each, nothing queued.
    for settings, status, code in (
        ({"temperature": -1}, 422, "invalid_request"), ({"n": 9}, 422, "invalid_request"), ({"seconds": 600}, 422, "invalid_request"),
        ({"top_p": 2}, 422, "invalid_request"), ({"model": "gpt-nonexistent"}, 404, "not_found"),
        ({"sconds": 3}, 422, "invalid_request"), ({"seconds": "ten"}, 422, "invalid_request"),
    ):
        _one_line_error(client.post(f"/api/pieces/{pid}/continue", json=settings), status, code)
    _one_line_error(client.post(f"/api/pieces/{pid}/continue", content=b"{not json", headers={"content-type": "application/json"}),
                    422, "invalid_request")


@pytest.fixture(scope="module")
def fim_bundle(tmp_path_factory):
    """A tiny transformer trained for a few steps with fill-in-the-middle segments (as
    tests/test_infill.py trains one): enough to exercise infilling through the API."""
    pytest.importorskip("partita.generation.infill", reason="this version of partita has no infilling")
    from conftest import labelled_folder, tokenize
    from partita.data.prepare import prepare
    from partita.train.gpt import train_gpt

    # One per test session (this module and the browser test's), in a fixed folder of the
    # session's temporary root. Short pieces, so that the one validation pass is short too.
    base = tmp_path_factory.getbasetemp() / "serve-fim"
    bundle = base / "run" / "bundle"
    if (bundle / "model.safetensors").is_file():
        return bundle
    short = ["chords", "durations", "key-signatures", "pitches", "time-signatures", "tempos", "multitrack", "fur-elise"]
    labelled_folder(base / "midi", {"Piano": [FIXTURES / "edge" / f"{name}.mid" for name in short]})
    prepare(base / "midi", base / "corpus", workers=1, valid=0.2, test=0.2)
    tokenize(base / "corpus")
    train_gpt(base / "corpus", base / "run", preset="tiny", fim=0.5, batch_size=2, max_steps=4, val_every=100, warmup=2,
              progress=False)
    return bundle


def test_infill_is_a_clear_error_without_a_model_trained_for_it(client, fur_elise):
    pid, capable = fur_elise["id"], client.get("/api/info").json()["infill"]
    try:
        import partita.generation.infill  # noqa: F401
    except ImportError:  # a version without infilling: said in one line
        body = _one_line_error(client.post(f"/api/pieces/{pid}/infill", json={"bars": "5-8"}), 400, "bad_request")
        assert capable == [] and "not in this version" in body["message"]
        return
    for settings in ({}, {"bars": "5-8", "seconds": "1-2"}, {"bars": "8-5"}, {"bars": "x"}, {"bars": "1-99"},
                     {"bars": "5-8", "candidates": 0}, {"bars": "5-8", "candidates": 9}, {"bars": "200-201"},
                     {"seconds": "500-510"}, {"bars": "1" * 5000 + "-2"}, {"bars": ["5", "8"]}):
        _one_line_error(client.post(f"/api/pieces/{pid}/infill", json=settings), 422, "invalid_request")
    _one_line_error(client.post(f"/api/pieces/{pid}/infill", json={"bars": "5-8", "sconds": 1}), 422, "invalid_request")
    if not capable:
        body = _one_line_error(client.post(f"/api/pieces/{pid}/infill", json={"bars": "5-8"}), 400, "bad_request")
        assert "trained for infilling" in body["message"]
    job = _wait(client, client.post(f"/api/pieces/{pid}/infill", json={"bars": "5-8", "model": "gpt-small"}).json())
    assert job["state"] == "error" and "infilling" in job["error"]["message"] and "\n" not in job["error"]["message"]


def test_infill_with_a_model_trained_for_it_keeps_every_note_outside_the_span(fim_bundle):
    from partita.io import load

    app = create_app(pieces=[], model=str(fim_bundle))
    with TestClient(app, base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["models"] == ["run"] and info["infill"] == ["run"]  # runs/x/bundle is named x
        piece = _upload(c, FUR_ELISE).json()
        job = _wait(c, c.post(piece["links"]["infill"], json={"bars": "5-8", "seed": 1, "n": 2, "candidates": 2}).json())
        assert job["state"] == "done", job
        assert job["settings"]["candidates"] == 2
        assert job["kind"] == "infill" and len(job["pieces"]) == 2 and job["progress"]["done"] > 0
        original = load(FUR_ELISE).to("second")
        for p in job["pieces"]:
            assert p["kind"] == "infill" and p["parent"] == piece["id"] and p["settings"]["filled_bars"] == [5, 8]
            a, b = p["settings"]["span_seconds"]
            assert 0 < a < b < piece["seconds"]
            assert c.get(p["links"]["notes"]).json()["new_music"] == [a, b]
            filled = load(c.get(p["links"]["midi"]).content).to("second")

            def outside(score):
                return sorted((round(n.time, 3), n.pitch) for t in score.tracks for n in t.notes if not a - 1e-3 <= n.time < b - 1e-3)

            assert outside(original) == outside(filled)  # every note outside the span is kept


def _soprano(tmp_path: Path) -> Path:
    """A held-out chorale's soprano alone (the shipped chorale model never saw its tune)."""
    from partita.generation.chorale import chorale_voices
    from partita.io import load

    score = load(ROOT / "src" / "partita" / "data" / "demo" / "bach" / "bwv397.mid")
    keep = score.copy()
    keep.tracks = [score.tracks[chorale_voices(score)[0]]]
    path = tmp_path / "soprano.mid"
    keep.dump_midi(str(path))
    return path


def test_accompany_adds_tracks_in_their_own_colours_and_keeps_every_note(client, tmp_path):
    from partita.io import load

    info = client.get("/api/info").json()["accompany"]
    assert info == {"styles": ["pop", "folk", "chorale"], "models": []}  # pop needs no model: the shipped chord tagger
    path = _soprano(tmp_path)
    piece = _upload(client, path).json()
    job = _wait(client, client.post(piece["links"]["accompany"], json={"style": "chorale", "seed": 2, "n": 2}).json())
    assert job["state"] == "done", job
    assert job["kind"] == "accompaniment" and job["settings"]["style"] == "chorale" and job["model"] == "chorale-harmony"
    assert len(job["pieces"]) == 2
    original = sorted((n.time, n.pitch, n.duration) for t in load(path).tracks for n in t.notes)
    for p in job["pieces"]:
        assert p["kind"] == "accompaniment" and p["parent"] == piece["id"] and p["audio_from"] == 0
        assert set(p["settings"]["added"]) == {"Alto", "Tenor", "Bass"}
        notes = client.get(p["links"]["notes"]).json()
        assert [t["name"] for t in notes["new_tracks"]] == ["Alto", "Tenor", "Bass"]
        assert notes["new"] == [int(t >= 1) for t in notes["track"]]  # the new tracks' notes, whole
        out = load(client.get(p["links"]["midi"]).content)
        assert sorted((n.time, n.pitch, n.duration) for n in out.tracks[0].notes) == original
    # folk chords under a POP909 song that has a PIANO track: the new one is told apart
    song = _upload(client, ROOT / "tests" / "fixtures" / "accompany" / "008" / "008.mid").json()
    job = _wait(client, client.post(song["links"]["accompany"], json={"style": "folk", "pattern": "broken", "chords": "C G Am F"}).json())
    assert job["state"] == "done", job
    notes = client.get(job["pieces"][0]["links"]["notes"]).json()
    assert [t["name"] for t in notes["new_tracks"]] == ["PIANO (accompaniment)"]
    # the default style: pop, the tagger's chords as arpeggios, without a model
    job = _wait(client, client.post(song["links"]["accompany"], json={}).json())
    assert job["state"] == "done", job
    assert job["settings"]["style"] == "pop" and job["settings"]["pattern"] == "arpeggio" and job["model"] == "pop-chords"
    notes = client.get(job["pieces"][0]["links"]["notes"]).json()
    assert [t["name"] for t in notes["new_tracks"]] == ["PIANO (accompaniment)"] and sum(notes["new"]) > 100


def test_accompany_mistakes_are_422_in_one_line(client, tmp_path):
    pid = _upload(client, _soprano(tmp_path)).json()["id"]
    for settings, text in (({"style": "jazz"}, "style"), ({"style": "pop", "model": "nothing"}, "not an accompaniment model"),
                           ({"style": "chorale", "chords": "C G"}, "chords work with"), ({"melody_track": 9}, "has 1 tracks"),
                           ({"style": "folk", "chords": "C Hm"}, "chord"), ({"pattern": "waltz"}, "pattern"),
                           ({"style": "folk", "n": 99}, "n"), ({"style": "pop", "model": "gpt-small"}, "not an accompaniment model")):
        body = _one_line_error(client.post(f"/api/pieces/{pid}/accompany", json=settings), 422, "invalid_request")
        assert text in body["message"], (settings, body)


def test_stopping_the_server_stops_a_running_continuation():
    app = create_app(pieces=[], workers=1, queue=2)
    ex = app.state.explorer
    with TestClient(app, base_url=LOCAL) as c:
        pid = _upload(c, FIXTURES / "edge" / "chords.mid").json()["id"]
        job = c.post(f"/api/pieces/{pid}/continue", json={"seconds": 60}).json()
        end = time.monotonic() + 300
        while ex.job(job["id"]).done == 0 and ex.job(job["id"]).state != "done" and time.monotonic() < end:
            time.sleep(0.05)  # until it samples
    # Leaving the client ran the app's shutdown: the job stops at its next token.
    ex.job(job["id"]).future.result(timeout=300)
    assert ex.job(job["id"]).state == "error" and ex.job(job["id"]).error["error"] == "stopped"
    assert not ex.folder.exists()


# ------------------------------------------------------------------ the command
def test_partita_serve_prints_its_address_and_stops_on_ctrl_c():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "partita", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line + proc.stderr.read() if proc.poll() is not None else line
        with urllib.request.urlopen(url.group(0) + "api/info", timeout=60) as r:
            assert json.load(r)["indexes"] == ["bundled", "piano"]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err


def test_partita_serve_bad_options_are_one_line():
    for args in (["serve", "--index", "/nonexistent/index"], ["serve", "--port", "70000"], ["serve", "--model", "gpt-nope"],
                 ["serve", "--host", "0.0.0.0"]):
        r = subprocess.run([sys.executable, "-m", "partita", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_finished_call_has_given_its_place_back_when_its_caller_wakes():
    """A client that calls again as soon as its answer arrives must not be refused as busy: the
    queue's place is free when a caller waiting on ``result()`` is woken. A waiter added to the
    future (as ``result()`` and ``concurrent.futures.wait`` wait) records the queue's count at
    that moment; freeing the place in a done callback (which runs after waiters wake) left it
    taken, and a call made at once was refused now and then."""
    import threading
    from concurrent.futures._base import _Waiter

    from partita.serve.core import ModelQueue

    queue = ModelQueue(workers=1, size=1)
    seen, go = [], threading.Event()

    class Woken(_Waiter):
        def add_result(self, future):
            seen.append(queue._held)
            super().add_result(future)

    try:
        fut = queue.submit(lambda: go.wait(60) and 7)
        with fut._condition:
            fut._waiters.append(Woken())
        go.set()
        assert fut.result(timeout=60) == 7
        assert seen == [0]
        assert queue.submit(lambda: 8).result(timeout=60) == 8
    finally:
        queue.close()


def test_request_models_are_made_from_sampling_config():
    """The API's sampling fields carry SamplingConfig's help; a field not sent is None, so the
    model's generation.json and the config's defaults apply."""
    from partita.generation.sampling import SamplingConfig
    from partita.serve.app import ContinueSettings, InfillSettings

    for model in (ContinueSettings, InfillSettings):
        for name in ("temperature", "top_p", "seed"):
            f = model.model_fields[name]
            assert f.default is None and f.description.startswith(SamplingConfig.help(name))
    assert ContinueSettings(max_pause=1.5).max_pause == 1.5 and ContinueSettings().temperature is None
