// The consult room at /consult/{appointmentId}: lobby, P2P mesh with fallback to the SFU, chat.

import { api } from './api.js';
import { ask, tell, listen } from './signaling.js';
import { h, clear, errorBox, showError, formatDateTime, formatTime, toast } from './ui.js';
import { openLocalMedia, stopStream, toDescription, saveMediaSettings, p2pConfig, SfuSession, Tile, DirectPathWatch, directPathLost } from './media.js';
import { hostBanner, awaitAdmission } from './waiting.js';

/**
 * Renders the consult page into `root`. ctx: {socket, me, relayRoutes, navigate}.
 * Returns a dispose function (leaves the room, releases the camera).
 */
export function renderConsult(root, ctx, appointmentId) {
  const view = new ConsultView(root, ctx, appointmentId);
  view.start();
  return () => view.dispose();
}

class ConsultView {
  constructor(root, ctx, appointmentId) {
    this.root = root;
    this.ctx = ctx;
    this.appointmentId = appointmentId;
    this.disposed = false;
    this.localStream = null;
    this.room = null;
  }

  start() {
    const { me } = this.ctx;
    this.titleEl = h('h1', {}, 'Consultation');
    this.subEl = h('p', { class: 'muted' }, 'Loading the appointment…');
    this.pathBadge = h('span', { class: 'path-badge', dataset: { path: 'none' }, title: 'How the audio and video travel' }, 'Not joined');
    this.noticeEl = h('div', { class: 'notices' });
    // The waiting room, for the doctor (and admins): who waits, Admit / Decline.
    this.waiting = hostBanner({
      socket: this.ctx.socket,
      appointmentId: this.appointmentId,
      join: () => this.join(),
      isJoined: () => Boolean(this.room && this.room.joined),
      onError: (text) => this.notice(text, 'error'),
    });

    this.previewTile = new Tile({ name: `${me.name} (you)`, seed: me.name, local: true });
    this.joinBtn = h('button', { class: 'primary big', disabled: true, onclick: () => this.join() }, 'Join consultation');
    this.lobbyMsg = h('p', { class: 'muted' }, 'Starting your camera and microphone…');
    this.lobby = h('div', { class: 'lobby' },
      this.previewHost = h('div', { class: 'lobby-preview' }, this.previewTile.el),
      h('div', { class: 'lobby-side' },
        h('h2', {}, 'Ready to join?'),
        this.lobbyMsg,
        this.joinBtn));

    this.grid = h('div', { class: 'grid', hidden: true });
    this.micBtn = h('button', { class: 'control', 'aria-pressed': 'false', onclick: () => this.toggle('audio') }, 'Mute');
    this.camBtn = h('button', { class: 'control', 'aria-pressed': 'false', onclick: () => this.toggle('video') }, 'Stop video');
    this.hangBtn = h('button', { class: 'control danger', onclick: () => this.hangUp() }, 'Leave');
    this.controls = h('div', { class: 'controls', hidden: true }, this.micBtn, this.camBtn, this.hangBtn);

    this.chat = new ChatPanel(me, (text) => this.sendChat(text));

    this.root.appendChild(h('section', { class: 'consult' },
      h('div', { class: 'consult-head' },
        h('a', { href: '/', class: 'back', dataset: { link: '' } }, '← Appointments'),
        h('div', { class: 'consult-title' }, this.titleEl, this.subEl),
        this.pathBadge),
      this.noticeEl,
      this.waiting.el,
      h('div', { class: 'consult-body' },
        h('div', { class: 'stage' }, this.lobby, this.grid, this.controls),
        this.chat.el)));

    this.chatDrawer();

    this.unlistenServer = listen(this.ctx.socket, {
      'server-draining': () => this.serverDraining(),
      'removed-from-room': (m) => this.removedFromRoom(m),
    });
    this.loadAppointment();
    this.chat.load(this.appointmentId);
    this.openMedia();
  }

  /**
   * On narrow screens the chat is a drawer over the room (style.css shows it when the page's
   * `data-chat` is `open`), opened by a Chat button in the room's controls that counts the
   * messages that came while it was closed; its ×, or Escape, closes it and focus returns to
   * the button. Wide screens show the chat beside the room and neither button.
   */
  chatDrawer() {
    const page = this.chat.el.closest('.consult');
    const unread = h('span', { class: 'chat-unread' });
    this.chatToggle = h('button', {
      class: 'control chat-toggle', type: 'button', 'aria-expanded': 'false', 'aria-controls': this.chat.el.id,
      onclick: () => setOpen(page.dataset.chat !== 'open'),
    }, 'Chat', unread);
    const setOpen = (open) => {
      page.dataset.chat = open ? 'open' : 'closed';
      this.chatToggle.setAttribute('aria-expanded', String(open));
      if (open) {
        this.chat.unread = 0;
        unread.textContent = '';
        this.chatToggle.removeAttribute('aria-label');
        (this.chat.input.disabled ? this.chat.closeBtn : this.chat.input).focus();
      } else if (this.chat.el.contains(document.activeElement)) {
        this.chatToggle.focus();
      }
    };
    this.chat.closeBtn.addEventListener('click', () => setOpen(false));
    this.chat.el.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && page.dataset.chat === 'open') setOpen(false);
    });
    this.chat.onUnread = () => {
      // A drawer that is closed, or not a drawer at all (wide screens: the toggle is not shown).
      if (page.dataset.chat === 'open' || !this.chatToggle.offsetParent) return;
      this.chat.unread = (this.chat.unread || 0) + 1;
      unread.textContent = String(this.chat.unread);
      this.chatToggle.setAttribute('aria-label', `Chat, ${this.chat.unread} unread`);
    };
    page.dataset.chat = 'closed';
    this.controls.insertBefore(this.chatToggle, this.hangBtn);
  }

  /** `server-draining`: the server restarts once the consultations under way have ended. */
  serverDraining() {
    if (this.drainNotice) return;
    this.drainNotice = this.notice(this.room
      ? 'This server is restarting for maintenance; your consultation continues.'
      : 'This server is restarting for maintenance: a consultation under way can still be joined, a new one can start again in a few minutes.');
  }

  /** `removed-from-room`: an administrator took us out of this room, or closed it. */
  removedFromRoom({ roomId, reason } = {}) {
    if (roomId !== this.appointmentId || !this.room) return;
    this.room.close(false);
    this.room = null;
    this.showLobby('Join again');
    this.notice(reason === 'room-closed'
      ? 'An administrator closed this consultation.'
      : 'An administrator removed you from this consultation.', 'warning');
  }

  /** Back to the lobby (the preview, the Join button) after a membership ended. */
  showLobby(joinLabel) {
    this.previewHost.appendChild(this.previewTile.el); // back from the (hidden) grid
    this.pathBadge.dataset.path = 'none';
    this.pathBadge.textContent = 'Not joined';
    this.joinBtn.disabled = false;
    this.joinBtn.textContent = joinLabel;
    this.lobby.hidden = false;
    this.grid.hidden = true;
    this.controls.hidden = true;
    this.chat.setJoined(false);
  }

  async loadAppointment() {
    try {
      const a = await api(`/api/appointments/${encodeURIComponent(this.appointmentId)}`);
      const me = this.ctx.me;
      this.appointment = a;
      const other = me.id === a.doctorId ? a.patientName || a.patientId : a.doctorName || a.doctorId;
      this.titleEl.textContent = me.id === a.doctorId || me.id === a.patientId ? `Consultation with ${other}` : `${a.doctorName || a.doctorId} and ${a.patientName || a.patientId}`;
      this.subEl.textContent = `Scheduled ${formatDateTime(a.scheduledAt)} · ${a.status}`;
      if (a.status !== 'confirmed') {
        this.notice(`This appointment is ${a.status}. The room opens only for confirmed appointments.`, 'error');
      }
    } catch (err) {
      this.subEl.textContent = '';
      this.noticeEl.appendChild(errorBox(err, 'Cannot load this appointment:'));
    }
  }

  async openMedia() {
    const { stream, warning } = await openLocalMedia({ video: true, audio: true });
    if (this.disposed) {
      stopStream(stream);
      return;
    }
    this.localStream = stream;
    this.previewTile.setStream(stream);
    this.lobbyMsg.textContent = stream
      ? 'Check your picture and sound, then join. The other side sees you once you join.'
      : 'You can join without camera and microphone: you will see and hear the others and can use the chat.';
    if (warning) this.notice(warning, 'warning');
    this.updateControls();
    this.joinBtn.disabled = false;
    this.joinBtn.focus();
  }

  notice(text, kind = 'info') {
    const el = h('div', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' },
      h('span', {}, text),
      h('button', { class: 'link', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
    this.noticeEl.appendChild(el);
    return el;
  }

  async join() {
    this.joinBtn.disabled = true;
    this.joinBtn.textContent = 'Joining…';
    this.room = new ConsultRoom({
      ctx: this.ctx,
      appointmentId: this.appointmentId,
      localStream: this.localStream,
      grid: this.grid,
      selfTile: this.previewTile,
      onPath: (path, text, transport) => {
        this.pathBadge.dataset.path = path;
        this.pathBadge.dataset.transport = transport || '';
        this.pathBadge.textContent = text;
      },
      onChat: (m) => this.chat.add(m),
      onNotice: (text, kind) => this.notice(text, kind),
    });
    // The waiting room: a patient not let in yet waits here until `admitted` (or `declined`).
    const room = this.room;
    const leaveWaiting = new AbortController();
    this.leaveWaiting = () => leaveWaiting.abort();
    if (this.declinedNotice) this.declinedNotice.remove();
    room.onWaiting = async (ack) => {
      // Meanwhile the lobby keeps our preview, the badge says where we are.
      this.previewHost.appendChild(this.previewTile.el);
      this.pathBadge.dataset.path = 'waiting';
      this.pathBadge.textContent = 'In the waiting room';
      try {
        return await awaitAdmission({
          socket: this.ctx.socket,
          ack,
          joinPayload: { appointmentId: this.appointmentId, avatarSeed: this.ctx.me.name.slice(0, 64) },
          host: this.lobby.parentElement,
          hostName: this.appointment && (this.appointment.doctorName || this.appointment.doctorId),
          reknock: !room.everJoined,
          signal: leaveWaiting.signal,
        });
      } finally {
        this.grid.prepend(this.previewTile.el);
      }
    };
    try {
      await this.room.join();
    } catch (err) {
      this.room.close(false);
      this.room = null;
      this.showLobby(err.code === 'declined' ? 'Ask again' : 'Try again');
      if (err.code === 'declined') this.declinedNotice = this.notice(err.message, 'warning');
      else if (err.code !== 'cancelled') this.noticeEl.appendChild(errorBox(err, 'Could not join the room:'));
      return;
    }
    if (this.disposed) return;
    this.waiting.joined();
    this.lobby.hidden = true;
    this.grid.hidden = false;
    this.controls.hidden = false;
    this.chat.setJoined(true);
  }

  toggle(kind) {
    if (!this.localStream) return;
    const tracks = kind === 'audio' ? this.localStream.getAudioTracks() : this.localStream.getVideoTracks();
    if (!tracks.length) return;
    const enable = !tracks[0].enabled;
    for (const t of tracks) t.enabled = enable;
    this.updateControls();
    this.previewTile.refresh();
  }

  updateControls() {
    const audio = this.localStream ? this.localStream.getAudioTracks() : [];
    const video = this.localStream ? this.localStream.getVideoTracks() : [];
    this.micBtn.disabled = !audio.length;
    this.camBtn.disabled = !video.length;
    const micOff = audio.length > 0 && !audio[0].enabled;
    const camOff = video.length > 0 && !video[0].enabled;
    this.micBtn.textContent = micOff ? 'Unmute' : 'Mute';
    this.micBtn.setAttribute('aria-pressed', String(micOff));
    this.camBtn.textContent = camOff ? 'Start video' : 'Stop video';
    this.camBtn.setAttribute('aria-pressed', String(camOff));
  }

  async sendChat(text) {
    const ack = await ask(this.ctx.socket, 'chat-message', { text });
    this.chat.add(ack.message);
  }

  hangUp() {
    this.ctx.navigate('/');
  }

  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    if (this.unlistenServer) this.unlistenServer();
    this.waiting.dispose();
    if (this.leaveWaiting) this.leaveWaiting(); // still waiting: out of the waiting room too
    if (this.room) this.room.close(true);
    stopStream(this.localStream);
    this.previewTile.remove();
  }
}

/** How long a member whose signaling connection ended, but whose direct connection with us
 * still works, may take to come back on a new one before it counts as gone. */
const RETURN_GRACE_MS = 15000;

/** How often the relay's transport (UDP, TCP, TURN) is read again for the path badge. */
const TRANSPORT_CHECK_MS = 2000;

/** How long the "Reconnected." notice stays after the room is joined again. */
const RECONNECTED_NOTICE_MS = 4000;

/**
 * One membership of a consult room. P2P mesh: the newcomer offers to the members already there.
 * A pair not connected within p2pTimeoutMs, whose ICE fails, or whose path is lost mid-call
 * (nothing received, or `disconnected`, for DIRECT_LOST_GRACE_MS: see DirectPathWatch) asks for
 * the relay (sfu-join); on relay-activated every P2P connection is closed and media goes
 * through the SFU.
 */
class ConsultRoom {
  constructor({ ctx, appointmentId, localStream, grid, selfTile, onPath, onChat, onNotice }) {
    this.socket = ctx.socket;
    this.me = ctx.me;
    this.relayRoutes = ctx.relayRoutes;
    this.roomId = appointmentId;
    this.localStream = localStream;
    this.grid = grid;
    this.selfTile = selfTile;
    this.onPath = onPath;
    this.onChat = onChat;
    this.onNotice = onNotice;
    this.tiles = new Map(); // socketId -> Tile
    this.peers = new Map(); // socketId -> Peer
    this.links = new Map(); // socketId -> P2PLink
    this.relayStreams = new Map(); // socketId -> MediaStream from the SFU (kept once attached)
    this.earlySignals = [];
    this.joined = false;
    this.relayed = false;
    this.pendingRelay = null;
    this.sfu = null;
    this.asking = false;
    this.relayRefused = false;
    this.closed = false;
  }

  async join() {
    this.grid.appendChild(this.selfTile.el);
    this.grid.dataset.count = String(this.tiles.size + 1);
    this.selfTile.setStatus('');
    this.unlisten = listen(this.socket, {
      'existing-peers': (peers) => (peers || []).forEach((p) => this.upsertPeer(p)),
      'peer-joined': (p) => {
        this.upsertPeer(p);
        // They offer to us; be ready (and time the attempt) in case their offer never comes.
        if (this.joined && this.p2pAllowed()) this.link(p.socketId, false);
        this.updatePath();
      },
      'peer-left': ({ socketId, reason, replacedBy }) => {
        if (replacedBy) this.rekeyPeer(socketId, replacedBy);
        else if (reason === 'disconnected' && this.isDirect(socketId)) this.awaitReturn(socketId);
        else this.removePeer(socketId);
      },
      signal: (msg) => this.onSignal(msg),
      'chat-message': (m) => this.onChat(m),
      connect: () => this.onReconnect(),
    });
    this.relayRoutes.set(this.roomId, this);
    await this.enter();
  }

  async enter() {
    this.onPath('connecting', 'Joining…');
    let ack = await ask(this.socket, 'join-room', {
      appointmentId: this.roomId,
      avatarSeed: this.me.name.slice(0, 64),
      // Back on a new connection: our old membership ends now, not at its ping timeout, so
      // the others do not see a frozen copy of us meanwhile.
      ...(this.selfId && this.selfId !== this.socket.id ? { previousSocketId: this.selfId } : {}),
    });
    if (ack.waiting && this.onWaiting) ack = await this.onWaiting(ack);
    if (this.closed) return;
    this.selfId = ack.selfId;
    this.mode = ack.mode;
    this.p2pTimeoutMs = ack.p2pTimeoutMs || 5000;
    this.iceServers = ack.iceServers || [];
    saveMediaSettings(ack);
    for (const p of ack.peers || []) this.upsertPeer(p);
    this.joined = true;
    this.everJoined = true;
    const existing = new Set((ack.peers || []).map((p) => p.socketId));
    // Direct connections kept across our reconnection to members not back yet (their
    // connections may have dropped with ours): they get the grace time to come back.
    for (const socketId of this.keptAcross || []) if (!existing.has(socketId)) this.awaitReturn(socketId);
    this.keptAcross = null;

    // relay-activated or an sfu-subscribe-offer may come before this ack (older servers send
    // them first): either way the room is relayed, and what the relay already delivered stays.
    if (this.mode !== 'p2p-only' && (this.relayed || this.pendingRelay || this.sfu)) {
      this.switchToRelay(this.pendingRelay);
    } else if (this.mode === 'sfu-only') {
      this.requestRelay('forced');
    } else {
      for (const socketId of existing) {
        if (this.isDirect(socketId)) continue; // kept across a reconnection, still working
        this.link(socketId, true).offer();
      }
      // Members that joined between our join and its ack will offer to us.
      for (const socketId of this.peers.keys()) if (!existing.has(socketId)) this.link(socketId, false);
      for (const msg of this.earlySignals.splice(0)) this.onSignal(msg);
    }
    this.updatePath();
  }

  /** After a reconnection the socket id changed and the server forgot us: join again. */
  onReconnect() {
    if (this.closed || !this.everJoined || this.socket.id === this.selfId || this.entering === this.socket.id) return;
    this.clearInterrupted();
    this.interrupted = this.onNotice('The connection to the server was interrupted; rejoining the room.', 'info');
    // A working direct connection does not need the server: it carries on (its peer, told
    // whom our new connection replaces, carries on with us too). The relay's connections
    // belonged to the old membership and are made anew.
    const keep = new Set(this.relayed ? [] : [...this.links.keys()].filter((id) => this.isDirect(id)));
    for (const [socketId, link] of [...this.links]) {
      if (keep.has(socketId)) continue;
      link.close();
      this.links.delete(socketId);
    }
    if (this.sfu) this.sfu.close(false);
    this.sfu = null;
    for (const socketId of [...this.tiles.keys()]) if (!keep.has(socketId)) this.removePeer(socketId, true);
    this.keptAcross = keep;
    this.relayStreams.clear();
    this.joined = false;
    this.relayed = false;
    this.relayToastShown = false;
    this.pendingRelay = null;
    this.asking = false;
    this.relayRefused = false;
    this.earlySignals = [];
    this.rejoin(1);
  }

  async rejoin(attempt) {
    const sid = this.socket.id;
    this.entering = sid;
    try {
      await this.enter();
      if (!this.closed && this.joined) this.rejoined();
    } catch (err) {
      if (this.closed || this.socket.id !== sid) return; // a newer connection takes over
      if (attempt < 3 && err.code !== 'forbidden' && err.code !== 'not_found') {
        setTimeout(() => {
          if (!this.closed && !this.joined && this.socket.id === sid) this.rejoin(attempt + 1);
        }, 2000 * attempt);
      } else {
        this.onPath('none', 'Not in the room');
        this.clearInterrupted();
        this.onNotice(`Could not rejoin the room: ${err.message}. Leave and join again.`, 'error');
      }
    } finally {
      if (this.entering === sid) this.entering = null;
    }
  }

  /** In the room again: the "interrupted" notice goes, a short "Reconnected" goes by itself. */
  rejoined() {
    if (!this.interrupted) return;
    this.clearInterrupted();
    const done = this.onNotice('Reconnected.', 'info');
    if (done) setTimeout(() => done.remove(), RECONNECTED_NOTICE_MS);
  }

  clearInterrupted() {
    if (this.interrupted) this.interrupted.remove();
    this.interrupted = null;
  }

  p2pAllowed() {
    return !this.relayed && this.mode !== 'sfu-only';
  }

  upsertPeer(peer) {
    if (!peer || !peer.socketId || peer.socketId === this.selfId || peer.socketId === this.socket.id) return;
    if (peer.replaces) this.rekeyPeer(peer.replaces, peer.socketId);
    this.peers.set(peer.socketId, peer);
    const tile = this.tile(peer.socketId);
    tile.setIdentity(`${peer.name}${peer.role ? ` · ${peer.role}` : ''}`, peer.avatarSeed || peer.userId);
  }

  tile(socketId) {
    let tile = this.tiles.get(socketId);
    if (!tile) {
      tile = new Tile({ name: 'Connecting…', seed: socketId, socketId });
      tile.setStatus(this.relayed ? 'waiting for video' : 'connecting…');
      this.tiles.set(socketId, tile);
      this.grid.appendChild(tile.el);
      this.grid.dataset.count = String(this.tiles.size + 1);
    }
    return tile;
  }

  /** Whether we have a working direct connection with `socketId`. */
  isDirect(socketId) {
    const link = this.links.get(socketId);
    return Boolean(link && !link.closed && link.pc.connectionState === 'connected');
  }

  /**
   * A member's signaling connection ended but our direct connection with it still works: it
   * is probably coming back on a new one (a network blip). Its tile and media stay until it
   * does (`Peer.replaces`) or the grace time passes.
   */
  awaitReturn(socketId) {
    const link = this.links.get(socketId);
    if (!link) return; // back already, under its new id (rekeyPeer)
    clearTimeout(link.returnTimer);
    link.returnTimer = setTimeout(() => {
      if (this.links.get(socketId) === link) this.removePeer(socketId);
    }, RETURN_GRACE_MS);
  }

  /**
   * A member came back on a new connection (`oldId` replaced by `newId`): a working direct
   * connection with it, and its tile, carry on under the new id; anything else of the old
   * membership goes (the relay's streams of it ended with it).
   */
  rekeyPeer(oldId, newId) {
    if (oldId === newId || !this.tiles.has(oldId)) return;
    if (!this.isDirect(oldId) || this.tiles.has(newId)) {
      this.removePeer(oldId, true);
      return;
    }
    for (const map of [this.tiles, this.peers, this.links]) {
      map.set(newId, map.get(oldId));
      map.delete(oldId);
    }
    const link = this.links.get(newId);
    link.peerId = newId;
    clearTimeout(link.returnTimer);
    this.tiles.get(newId).el.dataset.socketId = newId;
    const peer = this.peers.get(newId);
    if (peer) this.peers.set(newId, { ...peer, socketId: newId });
    this.relayStreams.delete(oldId);
  }

  removePeer(socketId, quiet = false) {
    const link = this.links.get(socketId);
    if (link) link.close();
    this.links.delete(socketId);
    const tile = this.tiles.get(socketId);
    const peer = this.peers.get(socketId);
    if (tile) tile.remove();
    this.tiles.delete(socketId);
    this.peers.delete(socketId);
    this.relayStreams.delete(socketId);
    this.grid.dataset.count = String(this.tiles.size + 1);
    if (peer && !this.closed && !quiet) toast(`${peer.name} left the consultation`);
    this.updatePath();
  }

  link(socketId, initiator) {
    let link = this.links.get(socketId);
    if (!link) {
      link = new P2PLink(this, socketId, initiator);
      this.links.set(socketId, link);
    }
    return link;
  }

  onSignal(msg) {
    if (!msg || !msg.from) return;
    if (!this.joined) {
      this.earlySignals.push(msg);
      return;
    }
    if (!this.p2pAllowed()) return; // relayed: late P2P signalling is moot
    if (msg.type === 'offer') {
      let link = this.links.get(msg.from);
      if (link && (link.initiator || link.pc.remoteDescription)) {
        link.close(); // a fresh offer from that peer replaces whatever we had
        this.links.delete(msg.from);
        link = null;
      }
      this.link(msg.from, false).onOffer(msg.payload);
    } else {
      const link = this.links.get(msg.from);
      if (!link) return;
      if (msg.type === 'answer') link.onAnswer(msg.payload);
      else if (msg.type === 'ice-candidate') link.onCandidate(msg.payload);
    }
  }

  sendSignal(to, type, payload) {
    ask(this.socket, 'signal', { to, type, payload }).catch((err) => {
      if (err.code !== 'forbidden') console.warn(`[callrelay] signal ${type}: ${err.code}: ${err.message}`);
    });
  }

  /**
   * A P2P pair did not make it, or (`lost`) lost its path mid-call: relay the room (unless this
   * server is p2p-only).
   */
  pairFailed(socketId, reason, lost = false) {
    const tile = this.tiles.get(socketId);
    if (this.mode === 'p2p-only' && lost) return; // nothing to fall back to: ICE may still heal
    if (this.mode === 'p2p-only') {
      if (tile) tile.setStatus(reason === 'p2p-failed' ? 'direct connection failed' : 'still connecting…', 'bad');
      if (!this.p2pOnlyWarned) {
        this.p2pOnlyWarned = true;
        const name = (this.peers.get(socketId) || {}).name || 'the other side';
        this.onNotice(reason === 'p2p-failed'
          ? `The direct connection to ${name} failed and this server does not relay media. Check your network (firewall, VPN), then leave and join again.`
          : `Connecting directly to ${name} is taking long. This server does not relay media; a firewall or VPN may be in the way.`, reason === 'p2p-failed' ? 'error' : 'warning');
      }
      return;
    }
    this.requestRelay(reason);
  }

  async requestRelay(reason) {
    if (this.relayed || this.asking || this.relayRefused || this.closed) return;
    this.asking = true;
    this.onPath('connecting', 'Switching to relay…');
    try {
      await ask(this.socket, 'sfu-join', { roomId: this.roomId, reason });
      // relay-activated follows for every member, us included.
    } catch (err) {
      this.relayRefused = true;
      this.onNotice(`The media relay is not available (${err.message}). Still trying to connect directly.`, 'warning');
      this.updatePath();
    } finally {
      this.asking = false;
    }
  }

  // Relay routes (called by the app's socket dispatcher, keyed by roomId).
  relayActivated(reason) {
    if (this.closed || this.mode === 'p2p-only') return;
    if (!this.joined) {
      this.pendingRelay = reason || 'forced';
      return;
    }
    this.switchToRelay(reason || null);
  }

  subscribeOffer(sdp) {
    if (this.closed || this.mode === 'p2p-only') return;
    this.ensureSfu().subscribeOffer(sdp);
  }

  candidate(which, candidate) {
    if (this.sfu) this.sfu.addRemoteCandidate(which, candidate);
    else if (!this.closed) this.ensureSfu().addRemoteCandidate(which, candidate);
  }

  ensureSfu() {
    if (!this.sfu) {
      this.sfu = new SfuSession({
        socket: this.socket,
        roomId: this.roomId,
        localStream: this.localStream,
        onTrack: (stream, track) => this.onRelayTrack(stream, track),
        onStateChange: () => this.updatePath(),
      });
    }
    return this.sfu;
  }

  /**
   * Media goes through the SFU from now on. Idempotent and order-independent: it may come
   * before or after the join ack, the subscribe offers and the relay's tracks, once or again
   * (relay-activated for room-size after another reason); a stream the relay already delivered
   * is never dropped, only the direct (P2P) ones are. `reason` null: relayed, reason unknown.
   */
  switchToRelay(reason) {
    if (this.relayed) {
      this.relayToast(reason);
      return;
    }
    this.relayed = true;
    for (const link of this.links.values()) link.close();
    this.links.clear();
    this.earlySignals = [];
    for (const [socketId, tile] of this.tiles) {
      const relayStream = this.relayStreams.get(socketId);
      if (relayStream) {
        tile.setStream(relayStream);
        tile.setStatus('relay', 'good');
      } else {
        tile.setStream(null);
        tile.setStatus('waiting for video');
      }
    }
    this.relayToast(reason);
    this.ensureSfu()
      .publish()
      .catch((err) => this.onNotice(`Could not send your video through the relay: ${err.message}`, 'error'));
    this.updatePath();
  }

  /** Tells the user once why media goes through the relay (not when it always does). */
  relayToast(reason) {
    if (!reason || reason === 'forced' || this.relayToastShown) return;
    this.relayToastShown = true;
    const why = { 'room-size': 'three or more people are in the room', 'p2p-failed': 'the direct connection failed', 'p2p-timeout': 'the direct connection took too long' }[reason];
    toast(`Media now goes through the relay server${why ? ` (${why})` : ''}.`);
  }

  onRelayTrack(stream, track) {
    const socketId = stream ? stream.id : null;
    if (!socketId || socketId === this.selfId || socketId === this.socket.id) return;
    const link = this.links.get(socketId);
    if (link) {
      // Tracks from the relay mean the room is relayed: the direct attempt is over.
      link.close();
      this.links.delete(socketId);
    }
    this.relayStreams.set(socketId, stream);
    const tile = this.tile(socketId);
    tile.setStream(stream);
    tile.setStatus('relay', 'good');
    track.addEventListener('unmute', () => this.updatePath());
    this.updatePath();
  }

  updatePath() {
    if (this.closed) return;
    if (!this.joined) return;
    if (this.relayed) {
      const state = this.sfu ? this.sfu.state : 'new';
      if (state === 'connected') {
        // Says which transport carries the call ('Relay (SFU) · TCP' where UDP is blocked).
        const sfu = this.sfu;
        const via = sfu.lastTransport ? ` · ${sfu.lastTransport.toUpperCase()}` : '';
        this.onPath('relay', `Relay (SFU)${via}`, sfu.lastTransport);
        // Asked again every 2 s while connected: ICE may move the call to another transport
        // (UDP lost mid-call: ICE-TCP) without the connection state changing.
        if (!sfu.transportCheck) {
          sfu.transportCheck = setTimeout(() => {
            sfu.transport().then((t) => {
              sfu.transportCheck = null;
              if (sfu !== this.sfu || sfu.closed) return;
              sfu.lastTransport = t;
              this.updatePath();
            }).catch(() => { sfu.transportCheck = null; });
          }, sfu.lastTransport === undefined ? 0 : TRANSPORT_CHECK_MS);
        }
        return;
      }
      this.onPath('relay', state === 'failed' ? 'Relay (SFU) · connection failed' : 'Relay (SFU) · connecting…');
      return;
    }
    if (this.peers.size === 0) {
      this.onPath('waiting', 'Waiting for the others to join');
      return;
    }
    const states = [...this.links.values()].map((l) => l.pc.connectionState);
    if (states.length && states.every((s) => s === 'connected')) this.onPath('p2p', 'P2P (direct)');
    else if (states.includes('connected')) this.onPath('p2p', 'P2P (direct) · some connecting…');
    else this.onPath('connecting', 'Connecting directly…');
  }

  /** Closes all media connections; `notify` tells the server about the SFU ones. */
  resetMedia(notify) {
    for (const link of this.links.values()) link.close();
    this.links.clear();
    if (this.sfu) this.sfu.close(notify);
    this.sfu = null;
  }

  close(leave) {
    if (this.closed) return;
    const wasJoined = this.joined;
    this.closed = true;
    if (this.unlisten) this.unlisten();
    if (this.relayRoutes.get(this.roomId) === this) this.relayRoutes.delete(this.roomId);
    this.resetMedia(leave && wasJoined && this.relayed);
    if (leave && wasJoined) tell(this.socket, 'leave-room', {});
    for (const tile of this.tiles.values()) tile.remove();
    this.tiles.clear();
  }
}

/** A direct connection with one other member. */
class P2PLink {
  constructor(room, peerId, initiator) {
    this.room = room;
    this.peerId = peerId;
    this.initiator = initiator;
    this.pending = [];
    this.chain = Promise.resolve();
    this.closed = false;
    const pc = new RTCPeerConnection(p2pConfig(room.iceServers));
    this.pc = pc;
    // this.peerId, not peerId: the peer may come back on a new connection (rekeyPeer).
    pc.onicecandidate = (e) => room.sendSignal(this.peerId, 'ice-candidate', e.candidate ? e.candidate.toJSON() : null);
    pc.ontrack = (e) => {
      if (this.closed || room.relayStreams.has(this.peerId)) return; // the relay's stream stays
      const tile = room.tile(this.peerId);
      if (!this.stream) this.stream = e.streams[0] || new MediaStream();
      if (!e.streams[0]) this.stream.addTrack(e.track);
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
    if (stream) {
      for (const track of stream.getTracks()) {
        kinds.add(track.kind);
        this.pc.addTrack(track, stream);
      }
    }
    return kinds;
  }

  offer() {
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
      await this.pc.setRemoteDescription(toDescription(payload, 'offer'));
      await this.flush();
      this.addLocalMedia();
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      const { type, sdp } = this.pc.localDescription;
      this.room.sendSignal(this.peerId, 'answer', { type, sdp });
    });
  }

  onAnswer(payload) {
    this.step(async () => {
      if (this.pc.signalingState !== 'have-local-offer') return;
      await this.pc.setRemoteDescription(toDescription(payload, 'answer'));
      await this.flush();
    });
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

/** Chat panel: transcript from the API, live messages from the socket, deduplicated by id. */
class ChatPanel {
  constructor(me, send) {
    this.me = me;
    this.send = send;
    this.messages = new Map();
    // Scrollable, so focusable: keyboard users scroll the transcript with the arrow keys.
    this.list = h('ol', { class: 'messages', 'aria-live': 'polite', 'aria-label': 'Transcript', tabindex: '0' });
    this.empty = h('li', { class: 'muted empty' }, 'No messages yet.');
    this.list.appendChild(this.empty);
    this.status = h('div', { class: 'chat-status' });
    this.input = h('textarea', { rows: 2, maxlength: 2000, placeholder: 'Join the room to chat', disabled: true, 'aria-label': 'Message' });
    this.sendBtn = h('button', { class: 'primary', type: 'submit', disabled: true }, 'Send');
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.form = h('form', { class: 'chat-form', onsubmit: (e) => this.submit(e) }, this.input, this.sendBtn);
    this.closeBtn = h('button', { class: 'link chat-close', type: 'button', 'aria-label': 'Close the chat' }, '×');
    this.onUnread = () => {};
    this.el = h('aside', { class: 'chat card', id: 'consult-chat', 'aria-labelledby': 'consult-chat-title' },
      h('div', { class: 'chat-head' }, h('h2', { id: 'consult-chat-title' }, 'Chat'), this.closeBtn),
      this.list, this.status, this.form);
  }

  async load(appointmentId) {
    try {
      const { messages } = await api(`/api/appointments/${encodeURIComponent(appointmentId)}/messages`);
      for (const m of messages || []) this.add(m);
    } catch (err) {
      if (err.status !== 404) showError(this.status, err, 'Earlier messages are not available:');
    }
    this.loaded = true; // from now on, others' messages count as unread while the drawer is closed
  }

  setJoined(joined) {
    this.input.disabled = !joined;
    this.sendBtn.disabled = !joined;
    this.input.placeholder = joined ? 'Write a message…' : 'Join the room to chat';
    this.input.title = 'Enter sends, Shift+Enter starts a new line';
  }

  async submit(e) {
    e.preventDefault();
    const text = this.input.value;
    if (!text.trim()) return;
    this.sendBtn.disabled = true;
    clear(this.status);
    try {
      await this.send(text);
      this.input.value = '';
    } catch (err) {
      showError(this.status, err, 'Message not sent:');
    } finally {
      this.sendBtn.disabled = false;
      this.input.focus();
    }
  }

  add(m) {
    if (!m || !m.id || this.messages.has(m.id)) return;
    this.messages.set(m.id, m);
    this.empty.remove();
    const mine = m.from && m.from.userId === this.me.id;
    const li = h('li', { class: `message${mine ? ' mine' : ''}`, dataset: { id: m.id } },
      h('div', { class: 'message-meta' },
        h('strong', {}, mine ? 'You' : (m.from && m.from.name) || 'Someone'),
        m.from && m.from.role ? h('span', { class: 'role' }, m.from.role) : null,
        h('time', { datetime: m.sentAt, title: formatDateTime(m.sentAt) }, formatTime(m.sentAt))),
      h('div', { class: 'message-text' }, m.text));
    // Keep server order (sentAt); live messages almost always go last.
    const after = [...this.list.children].find((el) => el.dataset.id && this.messages.get(el.dataset.id).sentAt > m.sentAt);
    this.list.insertBefore(li, after || null);
    this.list.scrollTop = this.list.scrollHeight;
    if (!mine && this.loaded) this.onUnread();
  }
}
