"""TURN with per-user credentials, against a real coturn (Debian `coturn`, binary `turnserver`).

callrelay runs with `media.mode = "p2p-only"` (no relay through the SFU) and `media.ice_secret`
shared with a coturn this module starts on loopback. Two aiortc peers fetch
`GET /api/ice-servers` with their own tokens and hold a direct call with
`iceTransportPolicy = "relay"`: they gather only relay candidates, so the only path between them
goes through coturn. Frames must be decoded on the far side over a relay-to-relay pair. coturn
must refuse (401) a credential made with another secret and an expired one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import warnings

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

import harness as h
from harness import PatternVideoTrack

TURN_SECRET = "e2e-turn-shared-secret"
REALM = "callrelay.test"
TTL = 600


def turnserver_or_skip() -> str:
    path = shutil.which("turnserver")
    if not path:
        msg = (
            "TURNSERVER NOT ON PATH: the TURN tests against coturn were SKIPPED "
            "(apt-get install coturn provides it; .ci/run installs it)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{msg}, and CI must run them")
        warnings.warn(msg, stacklevel=1)
        print(f"\n!!! {msg}")
        pytest.skip(msg)
    return path


class Coturn:
    """coturn on 127.0.0.1, `use-auth-secret`, relaying on loopback; its log in a temp dir."""

    def __init__(self, binary: str):
        self.dir = tempfile.mkdtemp(prefix="callrelay-coturn-")
        self.port = h.free_port(socket.SOCK_DGRAM)
        base = random.randrange(50000, 64000, 100)
        self.log_path = os.path.join(self.dir, "turn.log")
        args = [
            binary,
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            f"--listening-port={self.port}",
            f"--min-port={base}",
            f"--max-port={base + 99}",
            "--use-auth-secret",
            f"--static-auth-secret={TURN_SECRET}",
            f"--realm={REALM}",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--no-cli",
            "--allow-loopback-peers",
            "--fingerprint",
            f"--pidfile={self.dir}/turnserver.pid",
            f"--userdb={self.dir}/turndb",
            f"--log-file={self.log_path}",
            "--simple-log",
            "--verbose",
        ]
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while not self._answers_binding():
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnserver exited during start-up:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"turnserver did not answer STUN in 15 s:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def _answers_binding(self) -> bool:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(bytes(request), ("127.0.0.1", self.port))
            try:
                data, _ = s.recvfrom(2048)
            except OSError:
                return False
        return stun.parse_message(data).transaction_id == request.transaction_id

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def coturn():
    turn = Coturn(turnserver_or_skip())
    yield turn
    turn.stop()


# Overrides conftest's `server`: this module's callrelay hands out coturn's URL with minted
# credentials and never relays through its SFU.
@pytest.fixture(scope="module")
def server(coturn):
    srv = h.Server(
        {
            "CALLRELAY_MEDIA__MODE": "p2p-only",
            "CALLRELAY_MEDIA__ICE_SECRET": TURN_SECRET,
            "CALLRELAY_MEDIA__ICE_TTL_SECS": str(TTL),
            "CALLRELAY_MEDIA__ICE_URLS": f"stun:127.0.0.1:{coturn.port},turn:127.0.0.1:{coturn.port}?transport=udp",
            "RUST_LOG": "trace",
        }
    )
    yield srv
    code = srv.stop()
    srv.cleanup()
    assert code == 0, f"callrelay did not exit cleanly on SIGTERM (exit code {code})"


def rest_credential(secret: str, username: str) -> str:
    """The TURN REST API password, computed here independently of the server."""
    return base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()


async def ice_servers(server, who: h.User) -> list[dict]:
    status, body = await h.api(server, "GET", "/api/ice-servers", token=who.token)
    assert status == 200, (status, body)
    return body["iceServers"]


def turn_entry(servers: list[dict]) -> dict:
    turn = [s for s in servers if any(u.startswith("turn:") for u in s["urls"])]
    assert len(turn) == 1, servers
    return turn[0]


async def allocate(port: int, username: str, password: str):
    """One TURN allocation on coturn; returns the relayed address or the STUN error code."""
    try:
        transport, _ = await asyncio.wait_for(
            create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username, password),
            5,
        )
    except stun.TransactionFailed as e:
        return e.response.error_code
    relayed = transport.get_extra_info("sockname")
    transport.close()
    await asyncio.sleep(0.05)  # let the deallocation go out
    return relayed


async def test_ice_servers_mint_credentials_coturn_accepts(server, coturn):
    patient = await h.user(server, "patient")
    status, body = await h.api(server, "GET", "/api/ice-servers")
    assert status == 401, (status, body)

    servers = await ice_servers(server, patient)
    assert servers[0] == {"urls": [f"stun:127.0.0.1:{coturn.port}"]}, servers  # no credentials
    turn = turn_entry(servers)
    assert turn["urls"] == [f"turn:127.0.0.1:{coturn.port}?transport=udp"], turn
    expiry, _, user_id = turn["username"].partition(":")
    assert user_id == patient.id, turn
    assert abs(int(expiry) - (time.time() + TTL)) < 30, turn
    assert turn["credential"] == rest_credential(TURN_SECRET, turn["username"]), turn

    # The join-room ack carries credentials of the joiner's own, in the same shape.
    doctor = await h.user(server, "doctor")
    appt = await h.appointment(server, patient, doctor)
    async with h.Session(server) as s:
        client = await s.client(doctor)
        ack = await client.ok("join-room", {"appointmentId": appt["id"]})
        ack_turn = turn_entry(ack["iceServers"])
        assert ack_turn["username"].endswith(f":{doctor.id}"), ack_turn
        assert ack_turn["credential"] == rest_credential(TURN_SECRET, ack_turn["username"])

    # coturn allocates with the minted credential ...
    relayed = await allocate(coturn.port, turn["username"], turn["credential"])
    assert isinstance(relayed, tuple) and relayed[0] == "127.0.0.1", relayed
    # ... and refuses one made with another secret, and an expired one (401 Unauthorized).
    wrong = await allocate(coturn.port, turn["username"], rest_credential("not-the-secret", turn["username"]))
    assert wrong == 401, wrong
    expired_name = f"{int(time.time()) - 60}:{patient.id}"
    expired = await allocate(coturn.port, expired_name, rest_credential(TURN_SECRET, expired_name))
    assert expired == 401, expired


def relay_config(servers: list[dict]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


def nominated_pair(pc):
    """The aioice candidate pair ICE selected for the (bundled) transport."""
    transceiver = pc.getTransceivers()[0]
    connection = transceiver.sender.transport.transport._connection
    return connection._nominated.get(1)


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")}


async def test_direct_call_through_coturn_with_minted_credentials(server, coturn):
    async with asyncio.timeout(60), h.Session(server) as s:
        patient, doctor = await h.user(server, "patient"), await h.user(server, "doctor")
        await h.appointment(server, patient, doctor)
        caller, callee = await s.client(patient), await s.client(doctor)
        log_start = server.log_size()

        started = time.monotonic()
        # The caller fetches its TURN credentials before making the peer connection, as the web
        # client does for direct calls.
        caller_ice = await ice_servers(server, patient)
        pc_a = h.RTCPeerConnection(relay_config(caller_ice))
        pc_a.addTrack(PatternVideoTrack(320, 240, 90, 200))
        await pc_a.setLocalDescription(await pc_a.createOffer())
        offer = pc_a.localDescription.sdp
        assert candidate_types(offer) == {"relay"}, offer

        placed = await caller.ok("call-user", {"to": doctor.id, "callType": "video", "offer": {"type": "offer", "sdp": offer}})
        call_id = placed["callId"]
        ring = await callee.next_event("incoming-call")
        assert ring["callId"] == call_id, ring

        callee_ice = await ice_servers(server, doctor)
        assert turn_entry(callee_ice)["username"].endswith(f":{doctor.id}")
        pc_b = h.RTCPeerConnection(relay_config(callee_ice))
        first_frame: asyncio.Future = asyncio.get_running_loop().create_future()
        frames = {"n": 0, "sizes": set()}

        async def consume(track):
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                frames["n"] += 1
                frames["sizes"].add((frame.width, frame.height))
                if not first_frame.done():
                    first_frame.set_result(time.monotonic())

        consumers = []

        @pc_b.on("track")
        def on_track(track):
            if track.kind == "video":
                consumers.append(asyncio.ensure_future(consume(track)))

        try:
            remote = ring["offer"]
            await pc_b.setRemoteDescription(h.RTCSessionDescription(sdp=remote["sdp"], type="offer"))
            await pc_b.setLocalDescription(await pc_b.createAnswer())
            answer = pc_b.localDescription.sdp
            assert candidate_types(answer) == {"relay"}, answer
            await callee.ok("answer-call", {"callId": call_id, "answer": {"type": "answer", "sdp": answer}})
            answered = await caller.next_event("call-answered")
            await pc_a.setRemoteDescription(h.RTCSessionDescription(sdp=answered["answer"]["sdp"], type="answer"))

            first_at = await asyncio.wait_for(first_frame, 20)
            join_to_first_frame = first_at - started
            await h.eventually(lambda: _at_least(frames, 20), timeout=15, what="20 frames decoded")
            assert frames["sizes"] == {(320, 240)}, frames

            # The selected pair is relay to relay on both sides: the media went through coturn.
            for pc in (pc_a, pc_b):
                pair = nominated_pair(pc)
                assert pair is not None, "no nominated candidate pair"
                assert pair.local_candidate.type == "relay", pair
                assert pair.remote_candidate.type == "relay", pair
            turn_log = coturn.log()
            assert "ALLOCATE processed, success" in turn_log, turn_log[-3000:]
            for who in (patient, doctor):
                assert f":{who.id}" in turn_log, f"no allocation for {who.id} in coturn's log"

            await caller.ok("end-call", {"callId": call_id})
            print(
                f"\nTURN direct call: start of the call to first decoded remote frame "
                f"{join_to_first_frame * 1000:.0f} ms ({frames['n']} frames decoded)"
            )
        finally:
            for t in consumers:
                t.cancel()
            await asyncio.gather(*consumers, return_exceptions=True)
            for pc in (pc_a, pc_b):
                await asyncio.wait_for(pc.close(), 5)

        # The call was stored as direct (never relayed by the SFU)...
        status, body = await h.api(server, "GET", "/api/calls", token=patient.token)
        call = next(c for c in body["calls"] if c["callId"] == call_id)
        assert call["media"] == "p2p", call
        # ...and neither the secret nor any minted credential reached the server's log, even at trace.
        log = server.log_since(log_start)
        for secret in (TURN_SECRET, turn_entry(caller_ice)["credential"], turn_entry(callee_ice)["credential"]):
            assert secret not in log, "a TURN secret or credential was logged"


async def _at_least(frames: dict, n: int) -> bool:
    return frames["n"] >= n
