// Local devices, the SFU session (publish + subscribe peer connections), direct-path watching.

import { api } from './api.js';
import { ask, tell } from './signaling.js';

const MEDIA_KEY = 'callrelay.media';

/** Media settings from the last join-room ack (direct calls reuse them). */
export function mediaSettings() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(MEDIA_KEY) || 'null');
    if (saved) return saved;
  } catch {
    /* fall through */
  }
  return { mode: 'p2p-first', p2pTimeoutMs: 5000, iceServers: [] };
}

/**
 * RTCConfiguration of a peer-to-peer attempt. Testing switch: with sessionStorage
 * `callrelay.debug.blockP2P` set, only TURN relay candidates are allowed, so without a TURN
 * server the direct attempt can never connect (exercises the fallback to the SFU).
 */
export function p2pConfig(iceServers) {
  const block = sessionStorage.getItem('callrelay.debug.blockP2P');
  return { iceServers: iceServers || [], iceTransportPolicy: block ? 'relay' : 'all' };
}

/**
 * How long a direct (peer-to-peer) connection's path may stay lost before the call falls back
 * to the relay (see `DirectPathWatch`). ICE alone takes 15-20 s to give up on a lost path;
 * shorter losses (a burst of packet loss, a Wi-Fi hiccup) heal by themselves within this time
 * and switch nothing.
 */
export const DIRECT_LOST_GRACE_MS = 3000;
const DIRECT_WATCH_EVERY_MS = 250;

/** Whether a direct connection says it lost its path (`disconnected` by either of its states). */
export function directPathLost(pc) {
  return pc.iceConnectionState === 'disconnected' || pc.connectionState === 'disconnected';
}

/**
 * Watches a direct connection, once it has connected, for a path lost mid-call, and calls
 * `onLost` (once) when the loss has lasted DIRECT_LOST_GRACE_MS. The loss is counted from the
 * earlier of: the connection turning `disconnected` (ICE connection state or connection state),
 * and the last media packet received (once the other side's media has arrived at all: it
 * flows continuously, a disabled camera or microphone still sends). Chrome says `disconnected`
 * only about 5 s after the last packet, which with the grace and the relay's set-up would take
 * the picture 10-12 s to come back; counted from the last packet, it is back in 6-8 s. A loss
 * that heals within the grace (packets again, `connected` again) changes nothing.
 */
export class DirectPathWatch {
  constructor(pc, onLost) {
    this.pc = pc;
    this.onLost = onLost;
    this.connected = false;
    this.packets = 0;
    this.lastPacketAt = 0;
    this.disconnectedAt = null;
    this.done = false;
    this.interval = setInterval(() => this.check(), DIRECT_WATCH_EVERY_MS);
  }

  async check() {
    const pc = this.pc;
    if (this.done || pc.connectionState === 'closed') {
      this.stop();
      return;
    }
    const now = Date.now();
    if (pc.connectionState === 'connected') this.connected = true;
    if (!this.connected) return; // still connecting: the p2pTimeoutMs timer is in charge
    if (directPathLost(pc)) this.disconnectedAt = this.disconnectedAt || now;
    else this.disconnectedAt = null;
    let packets = 0;
    let freshest = null; // ms since the newest packet of any inbound stream, where the stats say
    try {
      (await pc.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp') return;
        packets += s.packetsReceived || 0;
        if (s.lastPacketReceivedTimestamp && s.timestamp) {
          const age = Math.max(0, s.timestamp - s.lastPacketReceivedTimestamp);
          freshest = freshest === null ? age : Math.min(freshest, age);
        }
      });
    } catch {
      return; // closed meanwhile
    }
    if (this.done) return;
    if (packets !== this.packets) {
      this.packets = packets;
      this.lastPacketAt = now;
    }
    if (packets > 0 && freshest !== null) this.lastPacketAt = now - freshest;
    const silentFor = this.packets > 0 ? now - this.lastPacketAt : 0;
    const disconnectedFor = this.disconnectedAt === null ? 0 : now - this.disconnectedAt;
    if (Math.max(silentFor, disconnectedFor) >= DIRECT_LOST_GRACE_MS) {
      this.stop();
      this.onLost();
    }
  }

  stop() {
    this.done = true;
    clearInterval(this.interval);
  }
}

/**
 * Fresh iceServers for a direct call, from `GET /api/ice-servers` (with `media.ice_secret` set on
 * the server: TURN credentials minted for us just now). If the server cannot be asked, `fallback`
 * (the last join-room ack's).
 */
export async function freshIceServers(fallback) {
  try {
    const { iceServers } = await api('/api/ice-servers');
    return iceServers || [];
  } catch (err) {
    console.warn('[callrelay] could not fetch ICE servers', err.message);
    return fallback || [];
  }
}

export function saveMediaSettings({ mode, p2pTimeoutMs, iceServers }) {
  sessionStorage.setItem(MEDIA_KEY, JSON.stringify({ mode, p2pTimeoutMs, iceServers: iceServers || [] }));
}

/**
 * Asks for camera and/or microphone. Resolves to {stream, warning}: stream is null when nothing
 * could be opened; warning explains, in plain words, what is missing and how to fix it.
 */
export async function openLocalMedia({ video = true, audio = true } = {}) {
  // `video` and `audio` are booleans or constraints (e.g. a chosen device).
  const extra = (c) => (typeof c === 'object' ? c : {});
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return {
      stream: null,
      warning: 'This page cannot use your camera or microphone: open it over HTTPS (or on localhost) in an up-to-date browser.',
    };
  }
  const wanted = { audio, video: video ? { width: { ideal: 1280 }, height: { ideal: 720 }, ...extra(video) } : false };
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(wanted), warning: null };
  } catch (err) {
    const first = explain(err, video ? 'camera and microphone' : 'microphone');
    // A missing or busy camera should not keep someone from talking: try the microphone alone.
    if (video && audio && err.name !== 'NotAllowedError' && err.name !== 'SecurityError') {
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ audio, video: false });
        return { stream, warning: `Your camera could not be used (${first}) — you are joining with your microphone only.` };
      } catch {
        /* report the first failure */
      }
    }
    return { stream: null, warning: first };
  }
}

function explain(err, what) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return `Access to your ${what} was refused. Allow it in your browser (the camera icon in the address bar or the site settings), then reload this page. You can still join and use the chat.`;
    case 'NotFoundError':
    case 'OverconstrainedError':
      return `No ${what} was found on this device.`;
    case 'NotReadableError':
    case 'AbortError':
      return `Your ${what} is in use by another application or could not be started.`;
    default:
      return `Your ${what} could not be opened (${(err && err.message) || err}).`;
  }
}

export function stopStream(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}

/** The track id each m-section of `sdp` announces in its `a=msid` line, by mid. */
export function msidTrackIds(sdp) {
  const byMid = new Map();
  for (const section of String(sdp || '').split(/\r?\nm=/).slice(1)) {
    const mid = /^a=mid:(\S+)/m.exec(section);
    const msid = /^a=msid:\S+ (\S+)/m.exec(section);
    if (mid) byMid.set(mid[1], msid ? msid[1] : null);
  }
  return byMid;
}

/**
 * Marks each track `pc` receives with the sender's track id its m-section announces now
 * (`track.msidTrackId`): the relay, or a peer, may reuse an m-section and its receiving track for
 * another track, whose id the receiving track does not take (a shared screen is recognised by it).
 */
export function labelRemoteTracks(pc) {
  const byMid = msidTrackIds(pc.remoteDescription && pc.remoteDescription.sdp);
  for (const t of pc.getTransceivers()) {
    if (t.mid !== null) t.receiver.track.msidTrackId = byMid.get(t.mid) || null;
  }
}

/** Normalises an offer/answer as it travels ({type, sdp} or a plain SDP string). */
export function toDescription(payload, type) {
  if (typeof payload === 'string') return { type, sdp: payload };
  return { type: (payload && payload.type) || type, sdp: payload && payload.sdp };
}

/**
 * How a connection's media travels, from its selected ICE candidate pair: 'udp', 'tcp' (ICE-TCP
 * to the SFU, when the network lets no UDP out), or 'turn/udp', 'turn/tcp', 'turn/tls' through
 * a TURN server; null until a pair is selected.
 */
export async function selectedTransport(pc) {
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  const local = pair && stats.get(pair.localCandidateId);
  if (!local) return null;
  if (local.candidateType === 'relay') return `turn/${local.relayProtocol || 'udp'}`;
  return local.protocol || null;
}

/**
 * Relay through the SFU for one room (an appointment id or a call id): a publish connection we
 * offer on, and a subscribe connection the server offers on (renegotiated whenever the set of
 * forwarded tracks changes). Remote tracks are reported with their stream id (msid), which the
 * server sets to the publisher's socket id. Both connections use `iceServers` (TURN reaches the
 * SFU where UDP to it is blocked); by default the last join-room ack's.
 */
/** How long a relay connection may stay `disconnected` before ICE is restarted. */
const ICE_RESTART_AFTER_MS = 1500;
/** How long the server may take to answer `sfu-restart-ice` before the signaling connection is
 * taken for dead (it answers in milliseconds). */
const SIGNALING_PROBE_MS = 2000;
/** How long relay connections may stay down through ICE restarts before they are made anew:
 * the relay itself may be gone (its media node died and the room moved to another node). */
const RELAY_REBUILD_AFTER_MS = 6000;

/**
 * The camera's simulcast encodings on the relay's publish connection (`rid` q, h, f: a quarter,
 * half and the full size, lowest first as the SFU expects). The SFU forwards each subscriber
 * one of them, the smallest that fills the size its tile shows the picture at
 * (`sfu-video-size`, see VideoSizeHints), within what its link carries.
 */
export const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', maxBitrate: 1500000 },
];

/** How one of our tracks goes on the publish connection: the camera in three encodings,
 * the microphone (and, apart, a shared screen) once. */
function publishInit(track, stream) {
  const init = { direction: 'sendonly', streams: [stream] };
  if (track.kind === 'video') init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
  return init;
}

/** Quiet time after the last change of a tile's size before it is told (a window dragged,
 * the grid rearranged: one hint, not one per frame). */
export const VIDEO_SIZE_DEBOUNCE_MS = 300;
/** Largest width or height `sfu-video-size` takes. */
const MAX_VIDEO_SIZE = 16384;

/**
 * Tells the relay at what size we show each publisher's video (`sfu-video-size {roomId,
 * publisherId, width, height}`, device pixels), so it sends the smallest simulcast layer that
 * fills it, and nothing (0 × 0) while the tile is not shown or the page is hidden. Each
 * watched element is measured with a ResizeObserver; changes are sent VIDEO_SIZE_DEBOUNCE_MS
 * after the last one, and only what differs from what the relay was last told.
 */
export class VideoSizeHints {
  constructor(socket, roomId) {
    this.socket = socket;
    this.roomId = roomId;
    this.watched = new Map(); // publisherId -> {el, width, height (CSS px), sent: 'w×h' | null}
    this.byElement = new Map(); // element -> publisherId
    this.timer = null;
    this.closed = false;
    this.observer = typeof ResizeObserver === 'function' ? new ResizeObserver((entries) => {
      for (const entry of entries) {
        const entryOf = this.watched.get(this.byElement.get(entry.target));
        if (!entryOf) continue;
        entryOf.width = entry.contentRect.width;
        entryOf.height = entry.contentRect.height;
      }
      this.schedule();
    }) : null;
    this.onVisibility = () => this.schedule();
    document.addEventListener('visibilitychange', this.onVisibility);
  }

  /** Measures `el` (the element `publisherId`'s video renders in) from now on; watching it
   * again only sends again what the relay was not told yet. */
  watch(publisherId, el) {
    if (this.closed || !this.observer || !publisherId || !el) return;
    const known = this.watched.get(publisherId);
    if (known && known.el === el) {
      this.schedule();
      return;
    }
    if (known) this.unwatch(publisherId);
    const rect = el.getBoundingClientRect();
    this.watched.set(publisherId, { el, width: rect.width, height: rect.height, sent: null });
    this.byElement.set(el, publisherId);
    this.observer.observe(el);
    this.schedule();
  }

  /** That publisher left: nothing more to tell of it. */
  unwatch(publisherId) {
    const known = this.watched.get(publisherId);
    if (!known) return;
    this.observer.unobserve(known.el);
    this.byElement.delete(known.el);
    this.watched.delete(publisherId);
  }

  schedule() {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), VIDEO_SIZE_DEBOUNCE_MS);
  }

  /** The size to tell for one watched element, in whole device pixels. */
  size(entry) {
    if (document.hidden || !entry.el.isConnected) return { width: 0, height: 0 };
    const ratio = window.devicePixelRatio || 1;
    const px = (css) => Math.min(MAX_VIDEO_SIZE, Math.max(0, Math.round(css * ratio)));
    const width = px(entry.width);
    const height = px(entry.height);
    // A tile squeezed to nothing in one direction is not shown either.
    return width === 0 || height === 0 ? { width: 0, height: 0 } : { width, height };
  }

  flush() {
    this.timer = null;
    if (this.closed) return;
    for (const [publisherId, entry] of this.watched) {
      const { width, height } = this.size(entry);
      const key = `${width}x${height}`;
      if (entry.sent === key) continue;
      entry.sent = key;
      ask(this.socket, 'sfu-video-size', { roomId: this.roomId, publisherId, width, height }).catch((err) => {
        // Told again on the next change or the publisher's next track (`watch`).
        if (this.watched.get(publisherId) === entry && entry.sent === key) entry.sent = null;
        if (!this.closed) console.debug(`[callrelay] sfu-video-size: ${err.code}: ${err.message}`);
      });
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.observer) this.observer.disconnect();
    document.removeEventListener('visibilitychange', this.onVisibility);
    this.watched.clear();
    this.byElement.clear();
  }
}

export class SfuSession {
  constructor({ socket, roomId, localStream, onTrack, onStateChange, iceServers, onRelabel, onLost }) {
    this.socket = socket;
    this.roomId = roomId;
    this.iceServers = iceServers || mediaSettings().iceServers || [];
    this.localStream = localStream;
    this.onTrack = onTrack;
    this.onStateChange = onStateChange || (() => {});
    // The relay's offer may have put another track in a receiving track's m-section.
    this.onRelabel = onRelabel || (() => {});
    // The relay no longer knows this session (`not_found` to an ICE restart): its media node
    // died and the room moved to another. The owner starts a new session (sfu-join, publish).
    this.onLost = onLost || (() => {});
    this.publishPc = null;
    this.subscribePc = null;
    this.remoteQueue = { publish: [], subscribe: [] };
    this.localQueue = [];
    this.publishSent = false;
    this.chain = Promise.resolve();
    // Offers on the publish connection (the first, a track added or stopped, an ICE restart)
    // go one at a time.
    this.publishChain = Promise.resolve();
    this.screen = null; // {track, transceiver}: a shared screen, sent as one more video track
    // The size we show each publisher's video at, for the relay's choice of simulcast layer.
    this.videoSizes = new VideoSizeHints(socket, roomId);
    this.closed = false;
  }

  get state() {
    const states = [this.publishPc, this.subscribePc].filter(Boolean).map((pc) => pc.connectionState);
    if (states.includes('failed')) return 'failed';
    if (states.includes('connected')) return 'connected';
    return states.length ? 'connecting' : 'new';
  }

  /** How the relay's media travels (see `selectedTransport`). */
  transport() {
    return selectedTransport(this.publishPc && this.publishPc.connectionState === 'connected'
      ? this.publishPc : this.subscribePc);
  }

  /** Sends our tracks (and a shared screen) to the SFU. Nothing to do without any. */
  publish() {
    return this.onPublishChain(() => this.firstPublish());
  }

  /** Runs `step` after the publish connection's offers before it; a failure stops only it. */
  onPublishChain(step) {
    const run = this.publishChain.then(step);
    this.publishChain = run.catch(() => {});
    return run;
  }

  async firstPublish() {
    const tracks = this.localStream ? this.localStream.getTracks() : [];
    if (this.publishPc || this.closed || (tracks.length === 0 && !this.screen)) return;
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: this.iceServers });
    this.publishPc = pc;
    for (const track of tracks) pc.addTransceiver(track, publishInit(track, this.localStream));
    if (this.screen) this.screen.transceiver = pc.addTransceiver(this.screen.track, { direction: 'sendonly', streams: this.screenStreams() });
    pc.onicecandidate = (e) => {
      const candidate = e.candidate ? e.candidate.toJSON() : null;
      if (this.publishSent) this.sendCandidate('publish', candidate);
      else this.localQueue.push(candidate);
    };
    pc.onconnectionstatechange = () => this.onStateChange(this.state);
    pc.oniceconnectionstatechange = () => this.watchIce();
    await pc.setLocalDescription(await pc.createOffer());
    const answer = ask(this.socket, 'sfu-publish', { roomId: this.roomId, sdp: pc.localDescription.sdp });
    this.publishSent = true;
    for (const candidate of this.localQueue.splice(0)) this.sendCandidate('publish', candidate);
    const ack = await answer;
    if (this.closed) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: ack.sdp });
    await this.flushRemote('publish');
  }

  /** The stream a shared screen is announced in (the relay names it by our socket anyway). */
  screenStreams() {
    return this.localStream ? [this.localStream] : [new MediaStream([this.screen.track])];
  }

  /**
   * Sends `track` (a shared screen) as one more video track: the publish connection re-offers
   * with one more m-section and the relay forwards it to the others (under our socket id, with
   * its track id, which our media state names).
   */
  addScreen(track) {
    this.screen = { track, transceiver: null };
    if (!this.publishPc) return this.publish();
    this.screen.transceiver = this.publishPc.addTransceiver(track, { direction: 'sendonly', streams: this.screenStreams() });
    return this.republish();
  }

  /** Stops sending the shared screen (its m-section stops; the relay drops the track). */
  removeScreen() {
    const screen = this.screen;
    this.screen = null;
    if (!screen || !screen.transceiver || this.closed) return Promise.resolve();
    screen.transceiver.stop();
    return this.republish();
  }

  /** Puts `track` in place of `old` (another camera or microphone) without renegotiating. */
  async replaceTrack(old, track) {
    if (!this.publishPc || this.closed) return;
    for (const sender of this.publishPc.getSenders()) if (sender.track === old) await sender.replaceTrack(track);
  }

  /** Re-offers the publish connection (`options`: {iceRestart}); the server answers. */
  republish(options) {
    return this.onPublishChain(async () => {
      const pc = this.publishPc;
      if (!pc || this.closed || !pc.remoteDescription) return;
      await pc.setLocalDescription(await pc.createOffer(options));
      const ack = await ask(this.socket, 'sfu-publish', { roomId: this.roomId, sdp: pc.localDescription.sdp });
      if (!this.closed) await pc.setRemoteDescription({ type: 'answer', sdp: ack.sdp });
    });
  }

  /** The server's (re)offer for the subscribe connection; answered in arrival order. */
  subscribeOffer(sdp) {
    this.chain = this.chain
      .then(() => this.answerSubscribe(sdp))
      .catch((err) => {
        if (!this.closed) console.warn('[callrelay] subscribe renegotiation failed', err);
      });
    return this.chain;
  }

  async answerSubscribe(sdp) {
    if (this.closed) return;
    if (!this.subscribePc) {
      const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', iceServers: this.iceServers });
      this.subscribePc = pc;
      pc.onicecandidate = (e) => this.sendCandidate('subscribe', e.candidate ? e.candidate.toJSON() : null);
      pc.ontrack = (e) => {
        labelRemoteTracks(pc);
        this.onTrack(e.streams[0] || null, e.track);
      };
      pc.onconnectionstatechange = () => this.onStateChange(this.state);
      pc.oniceconnectionstatechange = () => this.watchIce();
    }
    const pc = this.subscribePc;
    await pc.setRemoteDescription({ type: 'offer', sdp });
    labelRemoteTracks(pc);
    this.onRelabel();
    await this.flushRemote('subscribe');
    await pc.setLocalDescription(await pc.createAnswer());
    await ask(this.socket, 'sfu-subscribe-answer', { roomId: this.roomId, sdp: pc.localDescription.sdp });
  }

  /**
   * Restarts ICE when a relay connection stays `disconnected` (the network changed: Wi-Fi to
   * mobile, a new address) or fails, so the call continues without a reload. A short
   * `disconnected` (a burst of loss) heals by itself; only one that lasts is acted on.
   */
  watchIce() {
    if (this.closed) return;
    const states = [this.publishPc, this.subscribePc].filter(Boolean).map((pc) => pc.iceConnectionState);
    const broken = states.includes('disconnected') || states.includes('failed');
    if (!broken) {
      clearTimeout(this.restartTimer);
      this.restartTimer = null;
      this.brokenSince = null;
      return;
    }
    this.brokenSince = this.brokenSince || Date.now();
    // With the signaling connection down too, the reconnection makes everything anew.
    if (Date.now() - this.brokenSince > RELAY_REBUILD_AFTER_MS && this.socket.connected) {
      this.lost();
      return;
    }
    if (this.restartTimer) return;
    const wait = states.includes('failed') ? 0 : ICE_RESTART_AFTER_MS;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      this.restartIce().catch((err) => console.warn('[callrelay] ICE restart failed', err))
        .finally(() => setTimeout(() => this.watchIce(), ICE_RESTART_AFTER_MS)); // again if still down
    }, wait);
  }

  /**
   * ICE restart on both connections: the publish one re-offers with new credentials
   * (`sfu-publish`, answered with new ones); the server re-offers the subscribe one
   * (`sfu-restart-ice`, then an `sfu-subscribe-offer`).
   */
  async restartIce() {
    if (this.closed) return;
    const tasks = [];
    if (this.subscribePc) {
      tasks.push(ask(this.socket, 'sfu-restart-ice', { roomId: this.roomId }, SIGNALING_PROBE_MS).catch((err) => {
        // A network change usually kills the signaling connection too, and the browser does not
        // notice a dead TCP connection for a long time. Start a fresh one now: on reconnection
        // the room is joined again over new relay connections.
        if (err.code === 'timeout' && !this.closed && this.socket.connected) this.socket.io.engine.close();
        if (err.code === 'not_found') this.lost();
        throw err;
      }));
    }
    if (this.publishPc && this.publishPc.remoteDescription) tasks.push(this.republish({ iceRestart: true }));
    await Promise.all(tasks);
  }

  /** Gives the session up for a new one (the owner's `onLost`). */
  lost() {
    if (this.closed) return;
    this.close(true);
    this.onLost();
  }

  /** A candidate of the server's, for our `publish` or `subscribe` connection. */
  addRemoteCandidate(which, candidate) {
    if (!candidate || !candidate.candidate) return; // end of candidates: nothing to add
    const pc = which === 'publish' ? this.publishPc : this.subscribePc;
    if (!pc || !pc.remoteDescription) {
      this.remoteQueue[which].push(candidate);
      return;
    }
    pc.addIceCandidate(candidate).catch((err) => console.warn('[callrelay] sfu candidate', err));
  }

  async flushRemote(which) {
    const pc = which === 'publish' ? this.publishPc : this.subscribePc;
    for (const candidate of this.remoteQueue[which].splice(0)) {
      await pc.addIceCandidate(candidate).catch((err) => console.warn('[callrelay] sfu candidate', err));
    }
  }

  sendCandidate(which, candidate) {
    if (this.closed) return;
    tell(this.socket, 'sfu-candidate', { roomId: this.roomId, pc: which, candidate });
  }

  /** Closes both connections; with `notify`, tells the server (sfu-leave). */
  close(notify = true) {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.restartTimer);
    this.videoSizes.close();
    if (notify) tell(this.socket, 'sfu-leave', { roomId: this.roomId });
    for (const pc of [this.publishPc, this.subscribePc]) if (pc) pc.close();
  }
}
