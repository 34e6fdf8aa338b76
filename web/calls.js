// Direct 1:1 calls: placing, ringing, answering, trickle ICE, fallback to the relay, history.

import { api } from './api.js';
import { ask, tell, listen, SignalError } from './signaling.js';
import { h, clear, avatar, play, toast, showError, formatDateTime, formatDuration } from './ui.js';
import { toDescription, mediaSettings, p2pConfig, freshIceServers, SfuSession, DirectPathWatch, directPathLost } from './media.js';
import { CallPicture } from './tiles.js';
import { DevicePanel } from './devices.js';
import { LocalMedia, MediaControls } from './localmedia.js';

/**
 * One per signed-in page. ctx: {socket, me, relayRoutes}. The ringing banner and the call dock
 * live outside the routed views, so a call survives navigation inside the app.
 */
export class CallManager {
  constructor(ctx, bannerHost, dockHost) {
    this.ctx = ctx;
    this.socket = ctx.socket;
    this.bannerHost = bannerHost;
    this.dockHost = dockHost;
    this.ringing = new Map(); // callId -> {info, el, candidates}
    this.call = null; // the one active (or outgoing) call
    this.early = new Map(); // events for an outgoing call whose callId we do not know yet
    this.ringer = new Ringer();
    this.names = new Map(); // userId -> display name, from appointments, calls and the history
    this.historyListeners = new Set();
    this.unlisten = listen(this.socket, {
      'incoming-call': (m) => this.onIncoming(m),
      'call-answered': (m) => this.route(m, 'answered'),
      'call-answered-elsewhere': (m) => this.dropBanner(m.callId, 'Answered on another device.'),
      'call-rejected': (m) => this.route(m, 'rejected'),
      'call-ended': (m) => this.onEnded(m),
      'ice-candidate': (m) => this.onCandidate(m),
      'call-media-state': (m) => this.call && m && this.call.callId === m.callId && this.call.onMediaState(m),
    });
  }

  /** Remembers a user's display name, so calls and messages name people, not ids. */
  rememberName(userId, name) {
    if (userId && name && name !== userId) this.names.set(userId, name);
  }

  /** The display name known for a user id, else the id. */
  nameOf(userId) {
    return this.names.get(userId) || userId;
  }

  /** `fn()` runs whenever the call history may have changed (a call placed, answered, ended). */
  onHistoryChange(fn) {
    this.historyListeners.add(fn);
    return () => this.historyListeners.delete(fn);
  }

  historyChanged() {
    for (const fn of this.historyListeners) fn();
  }

  /** A new call replaces what the docks of ended ones still say. */
  clearEndedDocks() {
    for (const el of this.dockHost.querySelectorAll('.call-dock.ended')) el.remove();
  }

  /** Places a call. Rejects with an Error whose message is fit to show next to the form. */
  async place(to, callType, appointmentId, name) {
    if (this.call) throw new Error('You are already in a call. Hang up first.');
    if (to === this.ctx.me.id) throw new Error('You cannot call yourself.');
    this.rememberName(to, name);
    // TURN credentials of our own, fetched before the peer connection is made.
    const iceServers = await freshIceServers(mediaSettings().iceServers);
    if (this.call) throw new Error('You are already in a call. Hang up first.');
    this.clearEndedDocks();
    const call = new CallSession(this, { direction: 'out', callType, peer: { userId: to, name: this.nameOf(to) }, iceServers });
    this.call = call;
    try {
      await call.placeOffer(appointmentId);
    } catch (err) {
      call.teardown();
      if (this.call === call) this.call = null;
      if (err instanceof SignalError) {
        const who = call.peer.name;
        const text = {
          busy: `${who} is busy in another call. Try again later.`,
          offline: `${who} is not online right now.`,
          forbidden: `You may not call ${who}: ${err.message}`,
          not_found: `Cannot call ${who}: ${err.message}`,
        }[err.code] || `Call failed: ${err.message}`;
        const e = new Error(text);
        e.code = err.code;
        throw e;
      }
      throw err;
    }
    this.historyChanged();
    // Events that came before the ack told us the call id.
    const early = this.early.get(call.callId) || [];
    this.early.clear();
    for (const [event, m] of early) {
      if (event === 'ended') this.onEnded(m);
      else if (event === 'candidate') this.onCandidate(m);
      else this.route(m, event);
    }
  }

  route(m, event) {
    if (!m || !m.callId) return;
    const call = this.call;
    if (call && call.callId === m.callId) {
      if (event === 'answered') call.onAnswered(m.answer);
      else if (event === 'rejected') {
        call.finish(m.reason === 'busy'
          ? `${call.peer.name} is busy in another call.`
          : `${call.peer.name} declined the call${m.reason && m.reason !== 'rejected' ? ` (${m.reason})` : ''}.`);
        this.historyChanged();
      }
    } else if (call && !call.callId && call.direction === 'out') {
      if (!this.early.has(m.callId)) this.early.set(m.callId, []);
      this.early.get(m.callId).push([event, m]);
    }
  }

  onIncoming(m) {
    if (!m || !m.callId || this.ringing.has(m.callId)) return;
    const from = m.from || {};
    this.rememberName(from.userId, from.name);
    const who = from.name || from.userId || 'Someone';
    const kind = m.callType === 'audio' ? 'audio call' : 'video call';
    const answerBtn = h('button', { class: 'primary', 'aria-label': `Answer the ${kind} from ${who}`, onclick: () => this.answer(m.callId) }, 'Answer');
    const rejectBtn = h('button', { class: 'danger', 'aria-label': `Decline the ${kind} from ${who}`, onclick: () => this.reject(m.callId) }, 'Decline');
    const textId = `ringing-${m.callId}`;
    const el = h('div', { class: 'ringing', role: 'alertdialog', 'aria-label': `Incoming ${kind}`, 'aria-describedby': textId, dataset: { callId: m.callId } },
      avatar(who),
      h('div', { class: 'ringing-text', id: textId },
        h('strong', {}, who),
        h('span', {}, ` (${from.role || 'user'}) is calling you — ${kind}`),
        this.call ? h('div', { class: 'muted' }, 'You are in a call: hang up before answering.') : null),
      h('div', { class: 'ringing-actions' }, answerBtn, rejectBtn));
    this.ringing.set(m.callId, { info: m, el, candidates: [] });
    this.bannerHost.appendChild(el);
    this.ringer.start();
    document.title = `📞 ${from.name || 'Incoming call'} — callrelay`;
  }

  dropBanner(callId, message) {
    const entry = this.ringing.get(callId);
    if (!entry) return null;
    entry.el.remove();
    this.ringing.delete(callId);
    if (this.ringing.size === 0) {
      this.ringer.stop();
      document.title = 'callrelay';
    }
    if (message) toast(message);
    this.historyChanged();
    return entry;
  }

  async answer(callId) {
    if (!this.ringing.has(callId)) return;
    // Fetched while the banner stays: candidates that arrive meanwhile still queue on it, and a
    // call ended meanwhile has no banner left to answer.
    const iceServers = this.call ? [] : await freshIceServers(mediaSettings().iceServers);
    const entry = this.dropBanner(callId);
    if (!entry) return;
    if (this.call) {
      toast('Hang up your current call before answering another one.', 'error');
      tell(this.socket, 'reject-call', { callId, reason: 'busy' });
      return;
    }
    const m = entry.info;
    this.clearEndedDocks();
    const call = new CallSession(this, {
      direction: 'in',
      callType: m.callType,
      peer: { userId: m.from.userId, name: m.from.name || m.from.userId, role: m.from.role },
      callId,
      iceServers,
    });
    this.call = call;
    try {
      await call.answerOffer(m.offer, entry.candidates);
      this.historyChanged();
    } catch (err) {
      // Not answered after all: let the caller know instead of leaving them ringing.
      if (!call.answerSent) tell(this.socket, 'reject-call', { callId, reason: 'could not answer' });
      call.finish(`Could not answer: ${err.message}`);
    }
  }

  reject(callId) {
    if (!this.dropBanner(callId)) return;
    ask(this.socket, 'reject-call', { callId })
      .then(() => this.historyChanged())
      .catch((err) => toast(`Could not decline the call: ${err.message}`, 'error'));
  }

  onEnded(m) {
    if (!m || !m.callId) return;
    const reason = m.reason;
    const entry = this.ringing.get(m.callId);
    if (entry) {
      const who = entry.info.from.name || entry.info.from.userId;
      const text = {
        'no-answer': `Missed call from ${who}.`,
        hangup: `Missed call from ${who}.`,
        disconnected: `Missed call from ${who}.`,
        rejected: 'Call declined on another device.',
      }[reason] || `Call from ${who} ended.`;
      this.dropBanner(m.callId, text);
      return;
    }
    const call = this.call;
    if (call && call.callId === m.callId) {
      const name = call.peer.name;
      call.finish({
        hangup: `${name} hung up.`,
        'no-answer': `${name} did not answer.`,
        disconnected: `${name} got disconnected.`,
        rejected: `${name} declined the call.`,
        'server-restart': 'The server is restarting; the call ended.',
        'ended-by-admin': 'An administrator ended the call.',
      }[reason] || `Call ended (${reason}).`);
      this.historyChanged();
    } else if (call && !call.callId && call.direction === 'out') {
      if (!this.early.has(m.callId)) this.early.set(m.callId, []);
      this.early.get(m.callId).push(['ended', m]);
    }
  }

  onCandidate(m) {
    if (!m || !m.callId) return;
    if (this.call && this.call.callId === m.callId) this.call.addRemoteCandidate(m.candidate);
    else if (this.ringing.has(m.callId)) this.ringing.get(m.callId).candidates.push(m.candidate);
    else if (this.call && !this.call.callId) {
      if (!this.early.has(m.callId)) this.early.set(m.callId, []);
      this.early.get(m.callId).push(['candidate', m]);
    }
  }

  hangUp() {
    if (this.call) this.call.hangUp();
  }

  destroy() {
    this.unlisten();
    this.ringer.stop();
    for (const id of [...this.ringing.keys()]) this.dropBanner(id);
    if (this.call) this.call.teardown();
    this.call = null;
  }
}

/** One direct call and its dock (remote picture, our preview, status, controls). */
class CallSession {
  constructor(manager, { direction, callType, peer, callId = null, iceServers }) {
    this.manager = manager;
    this.socket = manager.socket;
    this.direction = direction;
    this.callType = callType;
    this.peer = peer;
    this.callId = callId;
    this.localCandidates = [];
    this.remoteCandidates = [];
    this.canSendCandidates = false;
    this.sfu = null;
    this.relayed = false;
    this.ended = false;
    this.settings = mediaSettings();
    // For the direct attempt and, if it fails, the relay's connections.
    this.iceServers = iceServers || this.settings.iceServers || [];
    this.local = new LocalMedia({
      onChange: () => this.mediaChanged(),
      onReplace: (old, track) => this.replaceTrack(old, track),
      onScreen: (track) => this.setScreen(track),
    });
    this.pc = new RTCPeerConnection(p2pConfig(this.iceServers));
    this.pc.onicecandidate = (e) => this.sendCandidate(e.candidate ? e.candidate.toJSON() : null);
    this.pc.ontrack = (e) => this.onDirectTrack(e);
    this.pc.onconnectionstatechange = () => this.onPcState();
    this.pc.oniceconnectionstatechange = () => this.onPcState();
    // The direct path lost mid-call: ICE alone gives up only after 15-20 s, so after a short
    // grace the call falls back to the relay (not with p2p-only: nothing to fall back to).
    this.watch = new DirectPathWatch(this.pc, () => {
      if (!this.ended && !this.relayed && this.settings.mode !== 'p2p-only') this.p2pFailed('p2p-failed');
    });
    this.buildDock();
  }

  buildDock() {
    this.localVideo = h('video', { autoplay: true, playsInline: true, muted: true, class: 'call-local mirrored' });
    this.picture = new CallPicture({ name: this.peer.name, audioOnly: this.callType === 'audio', extra: this.localVideo });
    this.remoteVideo = this.picture.video;
    this.devices = new DevicePanel({ idPrefix: `call-dev-${Math.random().toString(36).slice(2, 7)}`, onSwitch: (kind, deviceId) => this.local.switchDevice(kind, deviceId) });
    this.controls = new MediaControls(this.local, {
      devices: this.devices,
      screen: this.callType === 'video',
      compact: true,
      onError: (text) => toast(text, 'error', 8000),
    });
    if (this.callType === 'audio') this.controls.camBtn.hidden = true;
    this.statusEl = h('span', { class: 'call-status' }, this.direction === 'out' ? 'Calling…' : 'Connecting…');
    this.pathEl = h('span', { class: 'path-badge small', dataset: { path: 'connecting' } }, '…');
    this.muteBtn = this.controls.micBtn;
    this.hangBtn = h('button', { class: 'control danger', onclick: () => this.hangUp() }, this.direction === 'out' ? 'Cancel' : 'Hang up');
    this.media = this.picture.el;
    this.el = h('div', { class: 'call-dock', role: 'region', 'aria-label': 'Call', dataset: { callType: this.callType } },
      h('div', { class: 'call-head' },
        h('strong', {}, `${this.callType === 'audio' ? 'Audio' : 'Video'} call with ${this.peer.name}`),
        this.pathEl),
      this.media,
      this.controls.popover,
      h('div', { class: 'call-foot' }, this.statusEl, h('div', { class: 'call-controls' }, this.controls.buttons, this.hangBtn)));
    this.manager.dockHost.appendChild(this.el);
  }

  setStatus(text, path, pathText) {
    this.statusEl.textContent = text;
    if (path) {
      this.pathEl.dataset.path = path;
      this.pathEl.textContent = pathText;
    }
  }

  get localStream() {
    return this.local.stream;
  }

  /** Our camera (for a video call) and microphone, on the devices chosen in the devices panel. */
  async openMedia() {
    const { stream, warning } = await this.local.open({ audio: true, video: this.callType === 'video' });
    if (!stream) throw new Error(warning);
    if (warning) toast(warning, 'error', 8000);
    this.localVideo.srcObject = stream;
    this.localVideo.hidden = stream.getVideoTracks().length === 0;
    return stream;
  }

  /**
   * A video call reserves a second video transceiver for a screen share, so sharing needs no
   * renegotiation (a direct call has no event for one): the caller adds it after its camera,
   * the callee finds it as the offer's second video section. Its track goes out only while we
   * share (replaceTrack), and the other side shows it only while our call-media-state says so.
   */
  screenSlot() {
    if (this.callType !== 'video') return null;
    return this.pc.getTransceivers().filter((t) => t.receiver.track.kind === 'video')[1] || null;
  }

  /** A track of the direct connection: the reserved screen transceiver's, or their camera and microphone. */
  onDirectTrack(e) {
    if (this.relayed) return;
    if (e.transceiver === this.screenSlot()) {
      this.picture.setScreenSlot(e.track);
      return;
    }
    if (!this.remoteStream) this.remoteStream = e.streams[0] || new MediaStream();
    if (!this.remoteStream.getTracks().includes(e.track)) this.remoteStream.addTrack(e.track);
    this.showRemote(this.remoteStream);
  }

  /** Their `call-media-state`: microphone, camera and screen on our call window. */
  onMediaState(m) {
    this.picture.setMediaState({ audio: m.audio !== false, video: m.video !== false, screen: m.screen === true, screenTrackId: m.screenTrackId });
  }

  /** Tells the other side our microphone, camera and screen (when they changed, or `force`). */
  sendMediaState(force = false) {
    if (this.ended || !this.callId || !this.connectedOnce) return;
    const state = this.local.state();
    const key = JSON.stringify(state);
    if (!force && key === this.sentState) return;
    this.sentState = key;
    ask(this.socket, 'call-media-state', { callId: this.callId, ...state }).catch((err) => {
      this.sentState = null;
      console.warn(`[callrelay] call-media-state: ${err.code}: ${err.message}`);
    });
  }

  mediaChanged() {
    this.controls.update();
    this.sendMediaState();
  }

  /** Our screen share started (`track`) or stopped (null). The other side hears of it first. */
  setScreen(track) {
    if (this.ended) return;
    this.sendMediaState();
    if (this.relayed) {
      if (this.sfu) {
        (track ? this.sfu.addScreen(track) : this.sfu.removeScreen())
          .catch((err) => toast(`Could not ${track ? 'share' : 'stop sharing'} your screen through the relay: ${err.message}`, 'error', 8000));
      }
      return;
    }
    const slot = this.screenSlot();
    if (slot) slot.sender.replaceTrack(track).catch((err) => toast(`Could not share your screen: ${err.message}`, 'error', 8000));
  }

  /** Another camera or microphone: `track` takes `old`'s place on the call's connection(s). */
  async replaceTrack(old, track) {
    if (this.ended) return;
    if (track.kind === 'video') this.localVideo.srcObject = new MediaStream([track]); // our preview
    if (this.relayed) {
      if (this.sfu) await this.sfu.replaceTrack(old, track);
      return;
    }
    for (const sender of this.pc.getSenders()) if (sender.track === old) await sender.replaceTrack(track);
  }

  /** The call is connected (either way): from now on both sides tell their media state. */
  connected() {
    if (this.connectedOnce) return;
    this.connectedOnce = true;
    this.sendMediaState(true);
  }

  async placeOffer(appointmentId) {
    const stream = await this.openMedia();
    for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    if (this.callType === 'video' && stream.getVideoTracks().length === 0) this.pc.addTransceiver('video', { direction: 'recvonly' });
    if (this.callType === 'video') this.pc.addTransceiver('video', { direction: 'sendrecv' }); // the screen's (screenSlot)
    await this.pc.setLocalDescription(await this.pc.createOffer());
    const { type, sdp } = this.pc.localDescription;
    const payload = { to: this.peer.userId, callType: this.callType, offer: { type, sdp } };
    if (appointmentId) payload.appointmentId = appointmentId;
    this.setStatus(`Calling ${this.peer.name}…`, 'connecting', 'Ringing');
    const ack = await ask(this.socket, 'call-user', payload);
    this.callId = ack.callId;
    this.el.dataset.callId = this.callId;
    this.manager.ctx.relayRoutes.set(this.callId, this);
    this.setStatus(`Ringing ${this.peer.name}…`);
    this.canSendCandidates = true;
    for (const c of this.localCandidates.splice(0)) this.sendCandidate(c);
    if (this.hangUpRequested) this.hangUp();
  }

  async answerOffer(offer, queuedCandidates) {
    this.el.dataset.callId = this.callId;
    this.manager.ctx.relayRoutes.set(this.callId, this);
    this.remoteCandidates.push(...queuedCandidates);
    const stream = await this.openMedia();
    await this.pc.setRemoteDescription(toDescription(offer, 'offer'));
    for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    const slot = this.screenSlot();
    if (slot) slot.direction = 'sendrecv'; // we may share our screen on it too
    await this.flushRemote();
    await this.pc.setLocalDescription(await this.pc.createAnswer());
    const { type, sdp } = this.pc.localDescription;
    this.answerSent = true;
    await ask(this.socket, 'answer-call', { callId: this.callId, answer: { type, sdp } });
    this.canSendCandidates = true;
    for (const c of this.localCandidates.splice(0)) this.sendCandidate(c);
    this.hangBtn.textContent = 'Hang up';
    this.setStatus('Connecting…', 'connecting', 'Connecting…');
    this.connected();
    this.onPcState(); // ICE may have connected while the ack was on its way
    if (this.pc.connectionState !== 'connected') this.startTimer();
  }

  onAnswered(answer) {
    if (this.ended) return;
    this.connected();
    this.hangBtn.textContent = 'Hang up';
    this.setStatus('Connecting…', 'connecting', 'Connecting…');
    this.pc
      .setRemoteDescription(toDescription(answer, 'answer'))
      .then(() => this.flushRemote())
      .catch((err) => this.finish(`Could not connect: ${err.message}`));
    this.startTimer();
  }

  startTimer() {
    clearTimeout(this.timer);
    if (this.settings.mode === 'sfu-only') {
      this.p2pFailed('forced');
      return;
    }
    this.timer = setTimeout(() => {
      if (!this.ended && !this.relayed && this.pc.connectionState !== 'connected') this.p2pFailed('p2p-timeout');
    }, this.settings.p2pTimeoutMs || 5000);
  }

  onPcState() {
    if (this.ended || this.relayed) return;
    const state = this.pc.connectionState;
    const lost = directPathLost(this.pc);
    if (state === 'failed') {
      this.p2pFailed('p2p-failed');
    } else if (lost) {
      this.setStatus('Connection unstable, reconnecting…');
    } else if (state === 'connected') {
      clearTimeout(this.timer);
      this.connectedAt = Date.now();
      this.setStatus('Connected', 'p2p', 'P2P (direct)');
    }
  }

  async p2pFailed(reason) {
    if (this.settings.mode === 'p2p-only' || this.askedRelay) {
      if (reason === 'p2p-failed') this.setStatus('The direct connection failed.', 'connecting', 'No route');
      return;
    }
    this.askedRelay = true;
    this.setStatus('Switching to the relay…', 'connecting', 'Relay…');
    try {
      await ask(this.socket, 'sfu-join', { roomId: this.callId, reason });
    } catch (err) {
      this.setStatus(`Still trying directly — the relay is not available (${err.message}).`, 'connecting', 'Connecting…');
    }
  }

  // Relay routes for roomId = callId.
  relayActivated() {
    if (this.ended || this.relayed || this.settings.mode === 'p2p-only') return;
    this.relayed = true;
    clearTimeout(this.timer);
    this.watch.stop();
    this.pc.close();
    this.picture.setScreenSlot(null);
    this.setStatus('Connecting through the relay…', 'relay', 'Relay (SFU)');
    this.ensureSfu()
      .publish()
      .catch((err) => this.setStatus(`The relay refused our media: ${err.message}`));
  }

  subscribeOffer(sdp) {
    if (!this.ended) this.ensureSfu().subscribeOffer(sdp);
  }

  candidate(which, candidate) {
    if (!this.ended) this.ensureSfu().addRemoteCandidate(which, candidate);
  }

  ensureSfu() {
    if (!this.sfu) {
      const session = new SfuSession({
        socket: this.socket,
        roomId: this.callId,
        localStream: this.localStream,
        iceServers: this.iceServers,
        onTrack: (stream, track) => {
          this.showRemote(stream || new MediaStream([track]));
          // The relay sends their camera in the layer that fills our call window.
          if (stream && track.kind === 'video') this.sfu.videoSizes.watch(stream.id, this.picture.video);
        },
        onRelabel: () => this.picture.refresh(),
        onStateChange: (state) => {
          if (state === 'connected') this.setStatus('Connected', 'relay', 'Relay (SFU)');
          else if (state === 'failed') this.setStatus('The relay connection failed.', 'relay', 'Relay (SFU)');
        },
        // The call's media node died and the call moved to another: new relay connections.
        onLost: () => this.relayLost(session),
      });
      this.sfu = session;
      // A screen shared before the call moved to the relay is published with the rest.
      if (this.local.screen) this.sfu.screen = { track: this.local.screen.track, transceiver: null };
    }
    return this.sfu;
  }

  /** The relay lost our session (the call's media node died and the call moved to another):
   * new relay connections, again every few seconds until the move is done. */
  async relayLost(lost, attempt = 1) {
    if (this.ended || this.sfu !== lost) return;
    if (lost) lost.close(false);
    this.sfu = null;
    this.setStatus('Reconnecting to the relay…', 'relay', 'Relay (SFU)');
    try {
      await ask(this.socket, 'sfu-join', { roomId: this.callId, reason: 'forced' });
      if (!this.ended) await this.ensureSfu().publish();
    } catch (err) {
      if (this.ended) return;
      const failed = this.sfu;
      this.sfu = null;
      if (failed) failed.close(false);
      if (attempt < 10) setTimeout(() => this.relayLost(null, attempt + 1), 3000);
      else this.setStatus(`Could not reconnect to the relay: ${err.message}`, 'relay', 'Relay (SFU)');
    }
  }

  /** The other party's stream (direct or relayed): the call window sorts camera and screen. */
  showRemote(stream) {
    this.picture.setStream(stream);
  }

  sendCandidate(candidate) {
    if (!this.canSendCandidates) {
      this.localCandidates.push(candidate);
      return;
    }
    if (!this.ended && !this.relayed) tell(this.socket, 'ice-candidate', { callId: this.callId, candidate });
  }

  addRemoteCandidate(candidate) {
    if (this.relayed) return;
    if (!this.pc.remoteDescription) this.remoteCandidates.push(candidate);
    else if (candidate && candidate.candidate) this.pc.addIceCandidate(candidate).catch((err) => console.warn('[callrelay] call candidate', err));
  }

  async flushRemote() {
    for (const c of this.remoteCandidates.splice(0)) {
      if (c && c.candidate) await this.pc.addIceCandidate(c).catch((err) => console.warn('[callrelay] call candidate', err));
    }
  }

  hangUp() {
    if (this.ended) return;
    if (!this.callId) {
      // Still placing: end it as soon as the server tells us its id.
      this.hangUpRequested = true;
      this.setStatus('Cancelling…');
      return;
    }
    const callId = this.callId;
    ask(this.socket, 'end-call', { callId }).catch(() => {}).finally(() => this.manager.historyChanged());
    this.finish('Call ended.');
  }

  /** Ends the call locally, shows why for a moment, then removes the dock. */
  finish(message) {
    if (this.ended) return;
    this.teardown();
    this.setStatus(message, 'none', 'Ended');
    this.el.classList.add('ended');
    this.media.classList.remove('has-video');
    this.localVideo.hidden = true;
    this.hangBtn.textContent = 'Close';
    this.hangBtn.classList.remove('danger');
    this.hangBtn.onclick = () => this.removeDock();
    this.muteBtn.hidden = true;
    // Ended, the dock shrinks to its status line (no picture) and goes by itself.
    setTimeout(() => this.removeDock(), 6000);
  }

  /** Removes the dock; keyboard focus inside it goes back to the page, not to nowhere. */
  removeDock() {
    const hadFocus = this.el.contains(document.activeElement);
    this.el.remove();
    if (hadFocus) document.getElementById('view')?.focus({ preventScroll: true });
  }

  teardown() {
    this.ended = true;
    clearTimeout(this.timer);
    this.watch.stop();
    this.pc.close();
    if (this.sfu) this.sfu.close(false);
    this.local.close();
    this.devices.dispose();
    this.picture.stop();
    for (const button of this.controls.buttons) button.hidden = true;
    this.controls.showDevices(false);
    if (this.callId && this.manager.ctx.relayRoutes.get(this.callId) === this) this.manager.ctx.relayRoutes.delete(this.callId);
    if (this.manager.call === this) this.manager.call = null;
    if (!this.callId) this.el.remove();
  }
}

/** A soft two-tone ring while a call is waiting, where the browser allows sound. */
class Ringer {
  start() {
    if (this.interval) return;
    const ring = () => {
      try {
        this.ctx = this.ctx || new AudioContext();
        if (this.ctx.state === 'suspended') this.ctx.resume().catch(() => {});
        const t = this.ctx.currentTime;
        for (const [freq, at] of [[440, 0], [480, 0], [440, 0.5], [480, 0.5]]) {
          const osc = this.ctx.createOscillator();
          const gain = this.ctx.createGain();
          osc.frequency.value = freq;
          gain.gain.setValueAtTime(0.04, t + at);
          gain.gain.setValueAtTime(0, t + at + 0.4);
          osc.connect(gain).connect(this.ctx.destination);
          osc.start(t + at);
          osc.stop(t + at + 0.42);
        }
      } catch {
        /* no sound: the banner is enough */
      }
    };
    ring();
    this.interval = setInterval(ring, 3000);
  }

  stop() {
    clearInterval(this.interval);
    this.interval = null;
  }
}

/** The "Call someone" card on the home page. */
export function callBox(manager) {
  // The people this browser knows by name (appointments, calls): pick one by name, send the id.
  const people = h('datalist', { id: 'call-people' });
  const to = h('input', {
    name: 'to', required: true, placeholder: 'e.g. doc1', autocomplete: 'off', list: 'call-people', pattern: '[A-Za-z0-9._:\\-]{1,128}', title: 'Letters, digits and . _ : -',
    onfocus: () => people.replaceChildren(...[...manager.names].map(([id, name]) => h('option', { value: id }, name))),
  });
  const video = h('input', { type: 'radio', name: 'callType', value: 'video', checked: true });
  const audio = h('input', { type: 'radio', name: 'callType', value: 'audio' });
  const status = h('div', { class: 'form-status', role: 'status' });
  const btn = h('button', { class: 'primary', type: 'submit' }, 'Call');
  const form = h('form', {
    class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      clear(status);
      btn.disabled = true;
      try {
        await manager.place(to.value.trim(), audio.checked ? 'audio' : 'video');
      } catch (err) {
        showError(status, err);
      } finally {
        btn.disabled = false;
      }
    },
  },
  h('label', {}, 'User id', to),
  people,
  h('fieldset', { class: 'inline' }, h('legend', {}, 'Call type'),
    h('label', { class: 'radio' }, video, 'Video'),
    h('label', { class: 'radio' }, audio, 'Audio only')),
  btn, status);
  return h('section', { class: 'card call-box', 'aria-labelledby': 'call-box-title' }, h('h2', { id: 'call-box-title' }, 'Call someone'),
    h('p', { class: 'muted' }, 'Patients can call the doctor of one of their appointments; staff can call anyone.'), form);
}

/** A call's length in words: "42 s", "3 min", "1 h 5 min". */
function callLength(fromIso, toIso) {
  const secs = Math.max(0, Math.round((new Date(toIso) - new Date(fromIso)) / 1000));
  if (secs < 60) return `${secs} s`;
  const mins = Math.round(secs / 60);
  return mins < 60 ? `${mins} min` : `${Math.floor(mins / 60)} h ${mins % 60} min`;
}

/**
 * What became of a call, in words, from `outgoing`'s side: {text, kind} (kind names the pill's
 * colour). Only an answered call has a length and a media path.
 */
export function callOutcome(c, outgoing) {
  switch (c.status) {
    case 'ringing':
      return { text: 'Ringing', kind: 'ringing' };
    case 'active':
      return { text: 'In progress', kind: 'active' };
    case 'ended': {
      const length = c.answeredAt && c.endedAt ? ` · ${callLength(c.answeredAt, c.endedAt)}` : '';
      const why = {
        disconnected: ' (connection lost)',
        'server-restart': ' (server restart)',
        'ended-by-admin': ' (ended by an administrator)',
      }[c.endReason] || '';
      return { text: `Ended${length}${why}`, kind: 'ended' };
    }
    case 'rejected':
      return { text: 'Declined', kind: 'declined' };
    case 'busy':
      return { text: 'Busy', kind: 'busy' };
    case 'missed':
      if (!outgoing) return { text: 'Missed', kind: 'missed' };
      return c.endReason === 'hangup' ? { text: 'Cancelled', kind: 'cancelled-call' } : { text: 'No answer', kind: 'no-answer' };
    default:
      return { text: c.status, kind: c.status };
  }
}

/** /calls: the call history, reloaded by itself when a call changes and when the page regains focus. */
export function renderCallHistory(root, ctx, manager) {
  const body = h('div', { 'aria-live': 'polite', 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  const refresh = h('button', { class: 'small', onclick: () => load() }, 'Refresh');
  root.appendChild(h('section', { class: 'card' },
    h('div', { class: 'card-head' }, h('h1', {}, 'Call history'), refresh), body));
  let disposed = false;
  let loading = null;
  let again = false;

  async function load() {
    if (loading) {
      again = true; // one more once this one is back: it may predate the change
      return loading;
    }
    body.setAttribute('aria-busy', 'true');
    loading = (async () => {
      try {
        const { calls } = await api('/api/calls');
        if (disposed) return;
        show(calls || []);
      } catch (err) {
        if (disposed) return;
        shown = null;
        clear(body);
        showError(body, err, 'Cannot load your calls:');
      } finally {
        body.setAttribute('aria-busy', 'false');
        loading = null;
        if (again && !disposed) {
          again = false;
          load();
        }
      }
    })();
    return loading;
  }

  let shown = null;
  function show(calls) {
    // Reloads come often (each focus of the window): the page changes only when the calls did,
    // and keyboard focus on a row's button stays on that row's new button.
    const key = JSON.stringify(calls);
    if (key === shown) return;
    shown = key;
    const focused = body.contains(document.activeElement) ? document.activeElement.closest('tr')?.dataset.callId : null;
    clear(body);
    if (calls.length === 0) {
      body.appendChild(h('p', { class: 'muted' }, 'No calls yet.'));
      return;
    }
    body.appendChild(h('table', { class: 'table calls-table' },
      h('caption', { class: 'sr-only' }, 'Your calls, newest first'),
      h('thead', {}, h('tr', {},
        ['When', 'With', 'Type', 'Outcome', 'Media'].map((t) => h('th', { scope: 'col' }, t)),
        h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', {}, calls.map((c) => row(c)))));
    if (focused) body.querySelector(`tr[data-call-id="${CSS.escape(focused)}"] button`)?.focus();
  }

  function row(c) {
    const outgoing = c.callerId === ctx.me.id;
    const other = outgoing ? c.calleeId : c.callerId;
    const name = (outgoing ? c.calleeName : c.callerName) || manager.nameOf(other);
    manager.rememberName(other, name);
    const outcome = callOutcome(c, outgoing);
    // A call never answered had no media path, whatever the record's default says.
    const media = c.answeredAt ? (c.media === 'sfu' ? 'Relay' : 'Direct (P2P)') : null;
    const kind = c.callType === 'audio' ? 'Audio' : 'Video';
    return h('tr', { dataset: { callId: c.callId, status: c.status } },
      h('td', { class: 'h-when' }, h('time', { datetime: c.startedAt }, formatDateTime(c.startedAt))),
      h('td', { class: 'h-with', title: other },
        h('span', { class: 'dir', 'aria-hidden': 'true' }, outgoing ? '↗ ' : '↙ '),
        h('span', { class: 'sr-only' }, outgoing ? 'Outgoing call to ' : 'Incoming call from '),
        name),
      h('td', { class: 'h-type' }, kind),
      h('td', { class: 'h-outcome' }, h('span', { class: `pill pill-${outcome.kind}` }, outcome.text)),
      h('td', { class: `h-media${media ? '' : ' none'}` },
        media || [h('span', { 'aria-hidden': 'true', title: 'Not connected: no media path' }, '—'), h('span', { class: 'sr-only' }, 'None')]),
      h('td', { class: 'h-action' }, h('button', {
        class: 'small',
        'aria-label': `Call back ${name} (${kind.toLowerCase()} call)`,
        onclick: () => manager.place(other, c.callType, undefined, name).catch((err) => toast(err.message, 'error', 8000)),
      }, 'Call back')));
  }

  const onFocus = () => load();
  const onVisible = () => {
    if (document.visibilityState === 'visible') load();
  };
  window.addEventListener('focus', onFocus);
  document.addEventListener('visibilitychange', onVisible);
  const unlisten = manager ? manager.onHistoryChange(() => load()) : () => {};
  load();
  return () => {
    disposed = true;
    unlisten();
    window.removeEventListener('focus', onFocus);
    document.removeEventListener('visibilitychange', onVisible);
  };
}
