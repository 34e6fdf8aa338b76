// A direct (peer-to-peer) connection between two members of a consult room: the first offer
// and answer, renegotiation on the same connection (a screen shared or stopped), the timer and
// the watch that send the room to the relay when the direct path fails or is lost.

import { toDescription, p2pConfig, DirectPathWatch, directPathLost, labelRemoteTracks } from './media.js';

/** The session id of an SDP's `o=` line: the same for every offer of one RTCPeerConnection. */
export function sessionOf(payload) {
  const sdp = typeof payload === 'string' ? payload : (payload && payload.sdp) || '';
  const m = /^o=\S+ (\S+) /m.exec(sdp);
  return m ? m[1] : null;
}

/**
 * A direct connection with one other member. After the first offer and answer, either side
 * renegotiates on the same connection (a screen shared or stopped: one more video transceiver,
 * or one stopped), recognised by the offer's SDP session id. When both offer at once, the
 * member that answered first (polite) yields: it takes the other's offer and offers again
 * after; the other ignores the colliding offer ("perfect negotiation").
 */
export class P2PLink {
  constructor(room, peerId, initiator) {
    this.room = room;
    this.peerId = peerId;
    this.initiator = initiator;
    this.polite = !initiator;
    this.remoteSession = null;
    this.mediaAdded = false;
    this.screen = null; // the transceiver that sends our shared screen
    this.offerAgain = false;
    this.pending = [];
    this.chain = Promise.resolve();
    this.closed = false;
    const pc = new RTCPeerConnection(p2pConfig(room.iceServers));
    this.pc = pc;
    // this.peerId, not peerId: the peer may come back on a new connection (rekeyPeer).
    pc.onicecandidate = (e) => room.sendSignal(this.peerId, 'ice-candidate', e.candidate ? e.candidate.toJSON() : null);
    pc.ontrack = (e) => {
      if (this.closed || room.relayStreams.has(this.peerId)) return; // the relay's stream stays
      labelRemoteTracks(pc);
      const tile = room.tile(this.peerId);
      if (!this.stream) this.stream = e.streams[0] || new MediaStream();
      // Camera, microphone and a shared screen all go in one stream; the tile sorts them.
      if (!this.stream.getTracks().includes(e.track)) this.stream.addTrack(e.track);
      tile.setStream(this.stream);
    };
    pc.onconnectionstatechange = () => this.onState();
    pc.oniceconnectionstatechange = () => this.onState();
    // The direct path lost mid-call (a network change, a firewall closing it): ICE alone gives
    // up only after 15-20 s, so after a short grace the room falls back to the relay.
    this.watch = new DirectPathWatch(pc, () => {
      if (!this.closed) room.pairFailed(this.peerId, 'p2p-failed', true);
    });
    this.timer = setTimeout(() => {
      if (!this.closed && pc.connectionState !== 'connected') room.pairFailed(this.peerId, 'p2p-timeout');
    }, room.p2pTimeoutMs);
    room.tile(peerId).setStatus('connecting…');
  }

  onState() {
    if (this.closed) return;
    const state = this.pc.connectionState;
    const tile = this.room.tile(this.peerId);
    const lost = directPathLost(this.pc);
    if (state === 'failed') {
      tile.setStatus('connection failed', 'bad');
      this.room.pairFailed(this.peerId, 'p2p-failed');
    } else if (lost) {
      tile.setStatus('reconnecting…', 'bad');
    } else if (state === 'connected') {
      clearTimeout(this.timer);
      tile.setStatus('direct', 'good');
    }
    this.room.updatePath();
  }

  step(fn) {
    this.chain = this.chain.then(() => (this.closed ? undefined : fn())).catch((err) => {
      console.warn('[callrelay] p2p negotiation', err);
      if (!this.closed) this.room.pairFailed(this.peerId, 'p2p-failed');
    });
  }

  addLocalMedia() {
    const stream = this.room.localStream;
    const kinds = new Set();
    if (this.mediaAdded) return kinds;
    this.mediaAdded = true;
    if (stream) {
      for (const track of stream.getTracks()) {
        kinds.add(track.kind);
        this.pc.addTrack(track, stream);
      }
    }
    return kinds;
  }

  offer() {
    // A screen shared before this member came is sent from the start.
    const screen = this.room.local && this.room.local.screen;
    if (screen) this.setScreen(screen.track, false);
    this.step(async () => {
      const kinds = this.addLocalMedia();
      // Without a camera or microphone we still want to see and hear the other side.
      for (const kind of ['audio', 'video']) if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: 'recvonly' });
      await this.pc.setLocalDescription(await this.pc.createOffer());
      const { type, sdp } = this.pc.localDescription;
      this.room.sendSignal(this.peerId, 'offer', { type, sdp });
    });
  }

  onOffer(payload) {
    this.step(async () => {
      const collision = this.pc.signalingState !== 'stable';
      if (collision && !this.polite) return; // ours goes first; they answer it, then offer again
      await this.pc.setRemoteDescription(toDescription(payload, 'offer')); // (polite: rolls ours back)
      this.remoteSession = sessionOf(payload);
      await this.flush();
      this.addLocalMedia();
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      const { type, sdp } = this.pc.localDescription;
      this.room.sendSignal(this.peerId, 'answer', { type, sdp });
      // What we had to offer (rolled back, or waiting for this first exchange) goes now.
      const screen = this.room.local && this.room.local.screen;
      if (screen && !this.screen) this.setScreen(screen.track, false);
      if (collision || this.offerAgain || (this.screen && !this.screen.mid)) this.renegotiate();
    });
  }

  onAnswer(payload) {
    this.step(async () => {
      if (this.pc.signalingState !== 'have-local-offer') return;
      await this.pc.setRemoteDescription(toDescription(payload, 'answer'));
      this.remoteSession = sessionOf(payload);
      await this.flush();
      if (this.offerAgain) this.renegotiate();
    });
  }

  /** Offers again on this connection (once it is set up and stable; else right after). */
  renegotiate() {
    this.offerAgain = true;
    this.step(async () => {
      if (!this.offerAgain) return;
      if (this.pc.signalingState !== 'stable' || !this.remoteSession) return; // after the answer
      this.offerAgain = false;
      await this.pc.setLocalDescription(await this.pc.createOffer());
      const { type, sdp } = this.pc.localDescription;
      this.room.sendSignal(this.peerId, 'offer', { type, sdp });
    });
  }

  /**
   * Sends our shared screen (`track`) as one more video transceiver, announced in our camera's
   * stream (so it arrives with our other tracks), or stops it (null); then offers again
   * (`offer`: false when the offer about to be made carries it anyway).
   */
  setScreen(track, offer = true) {
    if (this.closed) return;
    if (track) {
      if (this.screen) return;
      const streams = this.room.localStream ? [this.room.localStream] : [new MediaStream([track])];
      this.screen = this.pc.addTransceiver(track, { direction: 'sendonly', streams });
    } else {
      if (!this.screen) return;
      this.screen.stop();
      this.screen = null;
    }
    if (offer) this.renegotiate();
  }

  /** Another camera or microphone: `track` in place of `old`, no renegotiation needed. */
  async replaceTrack(old, track) {
    if (this.closed) return;
    for (const sender of this.pc.getSenders()) if (sender.track === old) await sender.replaceTrack(track);
  }

  onCandidate(candidate) {
    if (!candidate || !candidate.candidate) return; // end of candidates
    this.step(async () => {
      if (!this.pc.remoteDescription) this.pending.push(candidate);
      else await this.pc.addIceCandidate(candidate).catch((err) => console.warn('[callrelay] candidate', err));
    });
  }

  async flush() {
    for (const c of this.pending.splice(0)) await this.pc.addIceCandidate(c).catch((err) => console.warn('[callrelay] candidate', err));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.returnTimer);
    this.watch.stop();
    this.pc.close();
  }
}
