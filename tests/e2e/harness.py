"""Shared helpers for the aiortc end-to-end suite.

Runs the real `callrelay` binary (``CALLRELAY_BIN``) on free loopback ports with a throw-away
SQLite database, and drives it the way a browser would: HTTP for tokens and appointments,
Socket.IO (python-socketio) for signaling, and aiortc, a WebRTC stack nobody on the team wrote,
for the media that goes through the SFU.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fractions
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import uuid
from array import array
from dataclasses import dataclass, field

import aiohttp
import aioice.ice
import av
import socketio
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

# Loopback only: aioice leaves 127.0.0.1 out by default.
aioice.ice.get_host_addresses = lambda *a, **k: ["127.0.0.1"]


class _DecodeErrors(logging.Handler):
    """Records when aiortc failed to decode a received frame (monotonic time, message)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record):
        msg = record.getMessage()
        if "failed to decode" in msg:
            self.seen.append((time.monotonic(), msg))


DECODE_ERRORS = _DecodeErrors()
logging.getLogger("aiortc.rtcrtpreceiver").addHandler(DECODE_ERRORS)

ACK_TIMEOUT = 5.0
EVENT_TIMEOUT = 10.0
SECRET = "e2e-aiortc-secret"


# --------------------------------------------------------------------------------------------
# The server process


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_media_port() -> int:
    """A port free for UDP and for TCP on every interface: the SFU serves ICE-TCP on its UDP port's
    number and refuses to start when that TCP port is taken (an outgoing connection's ephemeral
    port can be)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP after 50 tries")


class Server:
    """One callrelay process on free ports; logs go to a file shown when a test fails."""

    def __init__(self, extra_env: dict[str, str] | None = None):
        binary = os.environ.get("CALLRELAY_BIN")
        if not binary:
            raise RuntimeError("CALLRELAY_BIN must name the callrelay binary (cargo build -p callrelay)")
        self.dir = tempfile.mkdtemp(prefix="callrelay-e2e-")
        self.port = free_port(socket.SOCK_STREAM)
        self.udp_port = free_media_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "server.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLRELAY_")}
        env.update(
            {
                "CALLRELAY_SERVER__BIND": f"127.0.0.1:{self.port}",
                "CALLRELAY_MEDIA__UDP_PORT": str(self.udp_port),
                "CALLRELAY_MEDIA__BIND_IP": "127.0.0.1",
                "CALLRELAY_DATABASE__URL": f"sqlite://{self.dir}/db.sqlite?mode=rwc",
                "CALLRELAY_AUTH__JWT_SECRET": SECRET,
                "CALLRELAY_SERVER__WEB_DIR": "",
                # Stopped with SIGTERM at the end of each test: no drain to wait for.
                "CALLRELAY_SERVER__DRAIN_TIMEOUT_SECS": "0",
                # Patients enter rooms at once (the waiting room is tested by tests/node).
                "CALLRELAY_CONSULT__WAITING_ROOM": "false",
                "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            }
        )
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary], env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"callrelay exited during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/livez", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"callrelay did not answer /livez in 30 s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return ""
        return data[-chars:].decode(errors="replace")

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, wait; returns the exit code (None if it had to be killed)."""
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            code = self.proc.returncode
        self._log.close()
        return code

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# HTTP


async def api(server: Server, method: str, path: str, token: str | None = None, body=None):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=ACK_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.request(method, server.base + path, headers=headers, json=body) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@dataclass
class User:
    id: str
    name: str
    role: str
    token: str


async def user(server: Server, role: str, name: str | None = None) -> User:
    uid = f"{role}-{uuid.uuid4().hex[:8]}"
    name = name or f"{role} {uid[-4:]}"
    status, body = await api(server, "POST", "/api/dev/token", body={"sub": uid, "name": name, "role": role})
    assert status == 200 and isinstance(body, dict) and body.get("token"), (status, body)
    return User(uid, name, role, body["token"])


async def appointment(server: Server, patient: User, doctor: User) -> dict:
    when = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat()
    status, created = await api(
        server,
        "POST",
        "/api/appointments",
        token=doctor.token,
        body={"patientId": patient.id, "doctorId": doctor.id, "scheduledAt": when},
    )
    assert status == 201 and created["status"] == "pending", (status, created)
    status, confirmed = await api(
        server, "POST", f"/api/appointments/{created['id']}/confirm", token=doctor.token
    )
    assert status == 200 and confirmed["status"] == "confirmed", (status, confirmed)
    return confirmed


async def metrics(server: Server) -> dict[str, float]:
    """GET /metrics as {'name{labels}': value} (labels as printed, sorted by the server)."""
    status, text = await api(server, "GET", "/metrics")
    assert status == 200, status
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the series `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    found = False
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(got.get(k) == v for k, v in labels.items()):
            total += value
            found = True
    return total if found else 0.0


async def eventually(check, timeout: float = 5.0, interval: float = 0.1, what: str = "condition"):
    """Polls the async `check` until it returns a truthy value; fails with its last value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = await check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


# --------------------------------------------------------------------------------------------
# Socket.IO


class Client:
    """A Socket.IO connection that records every event it receives."""

    def __init__(self, server: Server, who: User):
        self.server = server
        self.user = who
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, object]] = []
        self._cond = asyncio.Condition()
        self._cursor: dict[str, int] = {}
        self.sio.on("*", self._on_any)

    async def _on_any(self, event, *args):
        data = args[0] if args else None
        async with self._cond:
            self.events.append((event, data))
            self._cond.notify_all()

    @property
    def sid(self) -> str:
        return self.sio.get_sid("/")

    async def connect(self) -> "Client":
        await self.sio.connect(
            self.server.base,
            auth={"token": self.user.token},
            transports=["websocket"],
            wait_timeout=ACK_TIMEOUT,
        )
        return self

    async def ack(self, event: str, data) -> dict:
        return await self.sio.call(event, data, timeout=ACK_TIMEOUT)

    async def ok(self, event: str, data) -> dict:
        res = await self.ack(event, data)
        assert isinstance(res, dict) and res.get("ok") is True, f"{event} {data!r} -> {res!r}"
        return res

    async def error(self, event: str, data, code: str | None = None) -> dict:
        res = await self.ack(event, data)
        assert isinstance(res, dict) and res.get("ok") is False, (
            f"{event} {str(data)[:300]} was accepted: {res!r}"
        )
        err = res.get("error") or {}
        assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), res
        if code is not None:
            assert err["code"] == code, f"{event} {str(data)[:300]}: expected {code}, got {res!r}"
        return res

    async def next_event(self, name: str, timeout: float = EVENT_TIMEOUT, where=None):
        """The next `name` event not consumed yet (in arrival order), optionally matching `where`."""
        deadline = time.monotonic() + timeout
        async with self._cond:
            while True:
                start = self._cursor.get(name, 0)
                for i in range(start, len(self.events)):
                    ev, data = self.events[i]
                    if ev == name and (where is None or where(data)):
                        self._cursor[name] = i + 1
                        return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [e for e, _ in self.events]
                    raise AssertionError(f"{self.user.id}: no {name} within {timeout} s (seen: {seen})")
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def count(self, name: str) -> int:
        return sum(1 for e, _ in self.events if e == name)

    async def close(self):
        with contextlib.suppress(Exception):
            await self.sio.disconnect()


# --------------------------------------------------------------------------------------------
# Media sources


class PatternVideoTrack(VideoStreamTrack):
    """Real video: a bright bar moving over a dark background, tinted by (u, v) so the receiver
    can tell publishers apart by colour as well as by size."""

    def __init__(self, width: int, height: int, u: int, v: int):
        super().__init__()
        self.width, self.height, self.u, self.v = width, height, u, v
        self.n = 0
        self._chroma = (bytes([u]), bytes([v]))

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        w, h = self.width, self.height
        frame = av.VideoFrame(w, h, "yuv420p")
        bar = (self.n * 4) % w
        row = bytearray(b"\x30" * w)
        row[bar : bar + w // 8] = b"\xe0" * len(row[bar : bar + w // 8])
        y = frame.planes[0]
        y.update(bytes(row.ljust(y.line_size, b"\x00")) * h)
        for plane, value in zip(frame.planes[1:], self._chroma):
            plane.update(value * (plane.line_size * (h // 2)))
        frame.pts, frame.time_base = pts, time_base
        self.n += 1
        return frame


TONE_HZ = 400  # 120 samples a period at 48 kHz: 8 whole periods per 20 ms frame
_TONE = array("h", (int(8000 * math.sin(2 * math.pi * TONE_HZ * i / 48000)) for i in range(960))).tobytes()


class ToneAudioTrack(MediaStreamTrack):
    """Real audio: a 400 Hz sine, 20 ms frames of 48 kHz mono s16, paced in real time."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._start = None
        self._ts = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            self._ts += 960
            wait = self._start + self._ts / 48000 - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(_TONE)
        frame.sample_rate = 48000
        frame.pts = self._ts
        frame.time_base = fractions.Fraction(1, 48000)
        return frame


def video_stats(frame) -> tuple[int, int, float, float]:
    """(width, height, mean U, mean V) of a decoded frame."""
    frame = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
    means = []
    for plane in frame.planes[1:]:
        data = bytes(plane)
        w, ls = plane.width, plane.line_size
        rows = [data[r * ls : r * ls + w] for r in range(0, plane.height, 4)]
        total = sum(sum(r) for r in rows)
        means.append(total / max(1, sum(len(r) for r in rows)))
    return frame.width, frame.height, means[0], means[1]


def audio_rms(frame) -> float:
    samples = array("h")
    samples.frombytes(bytes(frame.planes[0])[: frame.samples * len(frame.layout.channels) * 2])
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


# --------------------------------------------------------------------------------------------
# SDP helpers


def sdp_sections(sdp: str) -> list[dict]:
    """Media sections: {kind, port, mid, direction, msid_stream, msid_track, codecs}."""
    sections = []
    cur = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind, port = line[2:].split()[:2]
            cur = {
                "kind": kind,
                "port": int(port),
                "mid": None,
                "direction": "sendrecv",
                "msid_stream": None,
                "msid_track": None,
                "codecs": [],
            }
            sections.append(cur)
        elif cur is None:
            continue
        elif line.startswith("a=mid:"):
            cur["mid"] = line[6:].strip()
        elif line.strip() in ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"):
            cur["direction"] = line.strip()[2:]
        elif line.startswith("a=msid:"):
            parts = line[7:].split()
            cur["msid_stream"] = parts[0]
            cur["msid_track"] = parts[1] if len(parts) > 1 else None
        elif line.startswith("a=rtpmap:"):
            cur["codecs"].append(line.split()[1].split("/")[0].lower())
    return sections


def active_streams(sdp: str) -> dict[str, set[str]]:
    """{msid stream id: {kinds}} of the sections that send media (port != 0, send direction)."""
    out: dict[str, set[str]] = {}
    for s in sdp_sections(sdp):
        if s["port"] != 0 and s["direction"] in ("sendonly", "sendrecv") and s["msid_stream"]:
            out.setdefault(s["msid_stream"], set()).add(s["kind"])
    return out


def all_msid_streams(sdp: str) -> set[str]:
    """Every msid stream id named anywhere in the SDP (a=msid and a=ssrc ... msid:)."""
    ids = set(re.findall(r"^a=msid:(\S+)", sdp, re.M))
    ids |= set(re.findall(r"^a=ssrc:\d+ msid:(\S+)", sdp, re.M))
    return ids


def split_candidates(sdp: str) -> tuple[str, list[dict]]:
    """The SDP without its a=candidate / a=end-of-candidates lines, and those candidates in the
    browser's RTCIceCandidateInit shape (for trickling them with sfu-candidate)."""
    kept, cands = [], []
    mid, index, ufrag = None, -1, None
    session_ufrag = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            index += 1
            mid, ufrag = None, session_ufrag
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=ice-ufrag:"):
            if index < 0:
                session_ufrag = line[12:]
            ufrag = line[12:]
        if line.startswith("a=candidate:"):
            cands.append(
                {"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": index, "usernameFragment": ufrag}
            )
            continue
        if line.startswith("a=end-of-candidates"):
            continue
        kept.append(line)
    # (a=candidate lines come after a=mid and a=ice-ufrag in aiortc's SDP)
    return "\r\n".join(kept) + "\r\n", cands


def prefer(pc: RTCPeerConnection, kind: str, codec: str) -> None:
    """Offer only `codec` (plus rtx) for every transceiver of `kind`."""
    caps = RTCRtpSender.getCapabilities(kind)
    wanted = [c for c in caps.codecs if c.mimeType.lower() in (f"{kind}/{codec}".lower(), f"{kind}/rtx")]
    for t in pc.getTransceivers():
        if t.kind == kind:
            t.setCodecPreferences(wanted)


# --------------------------------------------------------------------------------------------
# Relay participants


@dataclass
class Received:
    """What arrived on one remote track."""

    kind: str
    stream: str | None  # msid stream id when the track appeared
    mid: str | None
    frames: int = 0
    first_at: float = 0.0
    sizes: set = field(default_factory=set)
    chroma: list = field(default_factory=list)
    rms: list = field(default_factory=list)
    last_at: float = 0.0
    ended: bool = False


class Member:
    """A room member's relay side: an optional publish connection and the subscribe connection
    the server offers on. Answers every `sfu-subscribe-offer` and decodes what arrives."""

    def __init__(self, client: Client, room_id: str, trickle: bool = False, bundle_policy: str | None = None):
        self.client = client
        self.room = room_id
        # trickle: send our ICE candidates with sfu-candidate instead of inside the SDP.
        self.trickle = trickle
        # bundle_policy: "balanced" (aiortc's default), "max-bundle" or "max-compat", for
        # both connections.
        self.bundle_policy = bundle_policy
        self.candidate_acks: list[dict] = []
        self.pub: RTCPeerConnection | None = None
        self.sub = self._new_pc()
        self.offers: list[str] = []
        self.answer_acks: list[dict] = []
        self.tracks: list[Received] = []
        self._mid_stream: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self.sub.on("track", self._on_track)
        self._tasks.append(asyncio.ensure_future(self._answer_offers()))

    def _new_pc(self) -> RTCPeerConnection:
        if self.bundle_policy is None:
            return RTCPeerConnection()
        return RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy(self.bundle_policy)))

    # -- subscribe side

    async def _answer_offers(self):
        while True:
            offer = await self.client.next_event(
                "sfu-subscribe-offer", timeout=3600, where=lambda d: d.get("roomId") == self.room
            )
            sdp = offer["sdp"]
            self.offers.append(sdp)
            # Which stream each m-section carries now (an m-section may be reused for another
            # track after one was removed; aiortc then keeps the same remote track object).
            self._mid_stream = {
                s["mid"]: s["msid_stream"]
                for s in sdp_sections(sdp)
                if s["mid"] is not None and s["msid_stream"] and s["port"] != 0
            }
            try:
                await self.sub.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                await self.sub.setLocalDescription(await self.sub.createAnswer())
                answer, cands = self.sub.localDescription.sdp, []
                if self.trickle:
                    answer, cands = split_candidates(answer)
                res = await self.client.ack("sfu-subscribe-answer", {"roomId": self.room, "sdp": answer})
                if self.trickle and len(self.offers) == 1:
                    await self._send_candidates("subscribe", cands)
            except Exception as e:  # recorded, asserted by the tests
                res = {"ok": False, "error": {"code": "client", "message": repr(e)}}
            self.answer_acks.append(res)

    def _on_track(self, track):
        mid = None
        for t in self.sub.getTransceivers():
            if t.receiver.track is track:
                mid = t.mid
        rec = Received(kind=track.kind, stream=self._mid_stream.get(mid), mid=mid)
        self.tracks.append(rec)
        self._tasks.append(asyncio.ensure_future(self._consume(track, rec)))

    async def _consume(self, track, rec: Received):
        try:
            while True:
                frame = await track.recv()
                rec.frames += 1
                rec.last_at = time.monotonic()
                if rec.frames == 1:
                    rec.first_at = rec.last_at
                if rec.kind == "video":
                    if rec.frames % 5 == 1:
                        w, h, u, v = video_stats(frame)
                        rec.sizes.add((w, h))
                        rec.chroma.append((u, v))
                    else:
                        rec.sizes.add((frame.width, frame.height))
                elif rec.frames % 10 == 0:
                    rec.rms.append(audio_rms(frame))
        except MediaStreamError:
            rec.ended = True

    def received(self, stream: str, kind: str) -> Received | None:
        """The remote track of `kind` whose m-section carries `stream` in the latest offer."""
        got = [r for r in self.tracks if self._mid_stream.get(r.mid) == stream and r.kind == kind]
        return got[-1] if got else None

    async def wait_frames(self, stream: str, kind: str, n: int, timeout: float = 15.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.received(stream, kind)
            if rec and rec.frames >= n:
                return rec
            if time.monotonic() > deadline:
                summary = [(r.stream, r.kind, r.frames) for r in self.tracks]
                raise AssertionError(
                    f"{self.client.user.id}: fewer than {n} {kind} frames from {stream} in {timeout} s; "
                    f"tracks {summary}; offers {len(self.offers)}; answer acks {self.answer_acks}"
                )
            await asyncio.sleep(0.05)

    async def wait_offer_count(self, n: int, timeout: float = EVENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while len(self.answer_acks) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.client.user.id}: {len(self.offers)} subscribe offers, wanted {n}"
                )
            await asyncio.sleep(0.05)

    # -- publish side

    async def publish(self, *tracks, video_codec: str = "VP8", audio_codec: str = "opus") -> str:
        """Publishes `tracks`; returns the server's answer SDP once the connection is up."""
        self.pub = self._new_pc()
        for t in tracks:
            self.pub.addTrack(t)
        prefer(self.pub, "video", video_codec)
        prefer(self.pub, "audio", audio_codec)
        await self.pub.setLocalDescription(await self.pub.createOffer())
        offer = self.pub.localDescription.sdp
        if self.trickle:
            # Candidates first: they reach the server before the offer they belong to.
            offer, cands = split_candidates(offer)
            assert cands and "a=candidate" not in offer, "aiortc gathered no candidate"
            await self._send_candidates("publish", cands)
        res = await self.client.ok("sfu-publish", {"roomId": self.room, "sdp": offer})
        assert isinstance(res.get("sdp"), str) and res["sdp"].startswith("v=0"), res
        await self.pub.setRemoteDescription(RTCSessionDescription(sdp=res["sdp"], type="answer"))
        await self.wait_connected(self.pub)
        return res["sdp"]

    async def _send_candidates(self, pc: str, cands: list[dict]):
        for c in [*cands, None]:
            self.candidate_acks.append(
                await self.client.ack("sfu-candidate", {"roomId": self.room, "pc": pc, "candidate": c})
            )

    @staticmethod
    async def wait_connected(pc: RTCPeerConnection, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while pc.connectionState != "connected":
            assert pc.connectionState not in ("failed", "closed"), pc.connectionState
            if time.monotonic() > deadline:
                raise AssertionError(f"peer connection not connected in {timeout} s: {pc.connectionState}")
            await asyncio.sleep(0.05)

    async def close(self):
        for t in self._tasks:
            t.cancel()
        for pc in (self.pub, self.sub):
            if pc is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pc.close(), 5)
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Session:
    """Owns the clients and members a test creates and closes them all at the end."""

    def __init__(self, server: Server):
        self.server = server
        self.clients: list[Client] = []
        self.members: list[Member] = []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for m in self.members:
            await m.close()
        for c in self.clients:
            await c.close()

    async def client(self, who: User) -> Client:
        c = Client(self.server, who)
        self.clients.append(c)
        return await c.connect()

    def member(
        self, client: Client, room_id: str, trickle: bool = False, bundle_policy: str | None = None
    ) -> Member:
        m = Member(client, room_id, trickle, bundle_policy)
        self.members.append(m)
        return m

    async def joined(self, who: User, appt: dict) -> Client:
        c = await self.client(who)
        res = await c.ok("join-room", {"appointmentId": appt["id"]})
        assert res["selfId"] == c.sid, (res, c.sid)
        return c

    async def relayed_pair(self, publish) -> tuple[Member, Member, str, "Received"]:
        """A patient and a doctor in a relayed consult room, the patient publishing `publish`
        (a video track) to the doctor: (publisher, subscriber, the server's answer SDP, the
        video as received, at least 20 frames in)."""
        patient, doctor = await user(self.server, "patient"), await user(self.server, "doctor")
        appt = await appointment(self.server, patient, doctor)
        a = await self.joined(patient, appt)
        b = await self.joined(doctor, appt)
        pub, sub = self.member(a, appt["id"]), self.member(b, appt["id"])
        await a.ok("sfu-join", {"roomId": appt["id"], "reason": "forced"})
        answer = await pub.publish(publish)
        return pub, sub, answer, await sub.wait_frames(a.sid, "video", 20)


def stun_attr(typ: int, value: bytes) -> bytes:
    """One STUN attribute, padded to 4 bytes (RFC 8489 14)."""
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad

