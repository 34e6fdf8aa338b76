// The consult room at /consult/{appointmentId}: lobby, P2P mesh with fallback to the SFU, chat.

import { api } from './api.js';
import { ask, tell, listen } from './signaling.js';
import { h, clear, errorBox, showError, formatDateTime, formatTime, toast } from './ui.js';
import { saveMediaSettings, SfuSession } from './media.js';
import { P2PLink, sessionOf } from './p2p.js';
import { Tile, ScreenTile } from './tiles.js';
import { DevicePanel, loadPrefs } from './devices.js';
import { LocalMedia, MediaControls } from './localmedia.js';
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
    this.room = null;
    this.local = new LocalMedia({
      onChange: () => this.mediaChanged(),
      onReplace: (old, track) => (this.room ? this.room.replaceTrack(old, track) : undefined),
      onScreen: (track) => this.room && this.room.setScreen(track),
    });
  }

  get localStream() {
    return this.local.stream;
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
    this.lobbyMsg = h('p', { class: 'muted', role: 'status' }, 'Loading the appointment…');
    this.lobbyTitle = h('h2', {}, 'Ready to join?');
    this.devices = new DevicePanel({
      lobby: true,
      idPrefix: 'consult-dev',
      onSwitch: (kind, deviceId) => this.local.switchDevice(kind, deviceId),
      onToggle: ({ joinMuted, cameraOff }) => {
        this.local.setOn('audio', !joinMuted);
        this.local.setOn('video', !cameraOff);
      },
    });
    this.devices.el.hidden = true; // until the camera and microphone are open
    this.deviceHost = h('div', { class: 'lobby-devices' }, this.devices.el);
    this.lobby = h('div', { class: 'lobby' },
      this.previewHost = h('div', { class: 'lobby-preview' }, this.previewTile.el),
      h('div', { class: 'lobby-side' },
        this.lobbyTitle,
        this.lobbyMsg,
        this.deviceHost,
        this.joinBtn));

    this.grid = h('div', { class: 'grid', hidden: true });
    this.mediaControls = new MediaControls(this.local, { devices: this.devices, onError: (text) => this.notice(text, 'error') });
    this.hangBtn = h('button', { class: 'control danger', onclick: () => this.hangUp() }, 'Leave');
    this.controls = h('div', { class: 'controls', hidden: true }, this.mediaControls.buttons, this.hangBtn);

    this.chat = new ChatPanel(me, (text) => this.sendChat(text));

    this.root.appendChild(h('section', { class: 'consult' },
      h('div', { class: 'consult-head' },
        h('a', { href: '/', class: 'back', dataset: { link: '' } }, '← Appointments'),
        h('div', { class: 'consult-title' }, this.titleEl, this.subEl),
        this.pathBadge),
      this.noticeEl,
      this.waiting.el,
      h('div', { class: 'consult-body' },
        h('div', { class: 'stage' }, this.lobby, this.grid, this.mediaControls.popover, this.controls),
        this.chat.el)));

    this.chatDrawer();

    this.unlistenServer = listen(this.ctx.socket, {
      'server-draining': () => this.serverDraining(),
      'removed-from-room': (m) => this.removedFromRoom(m),
    });
    this.chat.load(this.appointmentId);
    // The camera opens, and Join is offered, only for an appointment that can be joined.
    this.loadAppointment().then((joinable) => {
      if (joinable && !this.disposed) this.openMedia();
    });
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
    this.local.stopScreen();
    this.mediaControls.showDevices(false);
    this.deviceHost.appendChild(this.devices.el);
    this.pathBadge.dataset.path = 'none';
    this.pathBadge.textContent = 'Not joined';
    this.joinBtn.disabled = false;
    this.joinBtn.textContent = joinLabel;
    this.lobby.hidden = false;
    this.grid.hidden = true;
    this.controls.hidden = true;
    this.chat.setJoined(false);
  }

  /**
   * Loads the appointment; resolves to whether we may join its consultation. If not (cancelled,
   * not confirmed yet, not ours, unknown), the lobby says why in words, the camera stays closed
   * and Join stays disabled.
   */
  async loadAppointment() {
    const me = this.ctx.me;
    let a;
    try {
      a = await api(`/api/appointments/${encodeURIComponent(this.appointmentId)}`);
    } catch (err) {
      this.subEl.textContent = '';
      const why = {
        403: 'You are not the patient or the doctor of this appointment, so you cannot join its consultation. If you think this is a mistake, ask the practice for a new link.',
        404: 'There is no appointment at this address. Check the link you were given, or open the consultation from your appointments.',
      }[err.status] || `The appointment could not be loaded (${err.message}). Reload the page to try again.`;
      this.cannotJoin(why);
      return false;
    }
    this.appointment = a;
    const other = me.id === a.doctorId ? a.patientName || a.patientId : a.doctorName || a.doctorId;
    this.titleEl.textContent = me.id === a.doctorId || me.id === a.patientId ? `Consultation with ${other}` : `${a.doctorName || a.doctorId} and ${a.patientName || a.patientId}`;
    this.subEl.textContent = `Scheduled ${formatDateTime(a.scheduledAt)} · ${a.status}`;
    const party = me.id === a.doctorId || me.id === a.patientId || me.role === 'admin';
    if (a.status === 'cancelled') {
      this.cannotJoin('This appointment was cancelled, so there is no consultation to join. Book a new appointment if you still need one.');
    } else if (a.status !== 'confirmed') {
      this.cannotJoin(`This appointment is not confirmed yet (${a.status}). Its consultation opens once the practice confirms it; come back to this page then.`);
    } else if (!party) {
      this.cannotJoin('Only the patient, the doctor and administrators can join this consultation.');
    } else {
      return true;
    }
    return false;
  }

  /** The lobby says why this consultation cannot be joined; no camera, no Join. */
  cannotJoin(why) {
    this.lobbyTitle.textContent = 'This consultation cannot be joined';
    this.lobbyMsg.textContent = why;
    this.lobbyMsg.className = 'lobby-why';
    this.lobbyMsg.setAttribute('role', 'alert');
    this.joinBtn.disabled = true;
    this.previewHost.hidden = true;
  }

  async openMedia() {
    this.lobbyMsg.textContent = 'Starting your camera and microphone…';
    const { stream, warning } = await this.local.open({ video: true, audio: true });
    if (this.disposed) return;
    // "Join muted" and "Camera off", as chosen last time.
    const prefs = loadPrefs();
    if (prefs.joinMuted) this.local.setOn('audio', false);
    if (prefs.cameraOff) this.local.setOn('video', false);
    this.previewTile.setStream(stream);
    this.lobbyMsg.textContent = stream
      ? 'Check your picture and sound, then join. The other side sees you once you join.'
      : 'You can join without camera and microphone: you will see and hear the others and can use the chat.';
    if (warning) this.notice(warning, 'warning');
    this.devices.el.hidden = false;
    this.devices.refresh(stream);
    this.mediaChanged();
    this.joinBtn.disabled = false;
    this.joinBtn.focus();
  }

  /** Our microphone, camera, screen or device changed: controls, preview, the others. */
  mediaChanged() {
    this.mediaControls.update();
    this.previewTile.refresh();
    if (this.devices) this.devices.watchLevel(this.local.stream);
    if (this.room) this.room.sendMediaState();
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
      local: this.local,
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
      else if (err.code === 'forbidden' || err.code === 'not_found') this.joinRefused(err);
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

  /**
   * The server refused the join as not allowed (the appointment was cancelled while we were in
   * the lobby, or is not ours): the lobby says why in words, as on loading, and a consultation
   * that cannot be joined any more closes the camera; otherwise the server's words, no code.
   */
  async joinRefused(err) {
    if (await this.loadAppointment()) {
      this.notice(`Could not join the consultation: ${err.message}.`, 'error');
      return;
    }
    this.local.close();
    this.previewTile.setStream(null);
    this.devices.el.hidden = true;
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
    this.local.close();
    this.devices.dispose();
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
/** A relay lost with its media node is reconnected again this often, this many times: the room
 * moves to another node once the dead one's lease (10 s by default) runs out. */
const RELAY_RETRY_MS = 3000;
const RELAY_RETRIES = 10;

/**
 * One membership of a consult room. P2P mesh: the newcomer offers to the members already there.
 * A pair not connected within p2pTimeoutMs, whose ICE fails, or whose path is lost mid-call
 * (nothing received, or `disconnected`, for DIRECT_LOST_GRACE_MS: see DirectPathWatch) asks for
 * the relay (sfu-join); on relay-activated every P2P connection is closed and media goes
 * through the SFU.
 */
class ConsultRoom {
  constructor({ ctx, appointmentId, localStream, local, grid, selfTile, onPath, onChat, onNotice }) {
    this.socket = ctx.socket;
    this.me = ctx.me;
    this.relayRoutes = ctx.relayRoutes;
    this.roomId = appointmentId;
    this.localStream = localStream;
    this.local = local; // LocalMedia: our microphone, camera and screen share
    this.grid = grid;
    this.selfTile = selfTile;
    this.onPath = onPath;
    this.onChat = onChat;
    this.onNotice = onNotice;
    this.tiles = new Map(); // socketId -> Tile
    this.peers = new Map(); // socketId -> Peer
    this.links = new Map(); // socketId -> P2PLink
    this.relayStreams = new Map(); // socketId -> MediaStream from the SFU (kept once attached)
    this.screens = new Map(); // socketId -> ScreenTile of a member sharing its screen
    // Memberships seen ending (peer-left, or replaced by a new connection) and not begun again
    // since (peer-joined: a member may leave and join again on the same connection). A join's
    // member list is read when we enter but may arrive after events that followed (the server
    // records the join before it answers): a member listed there that has left since must not
    // come back as a tile nobody removes.
    this.departed = new Set();
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
    this.layout();
    this.selfTile.setStatus('');
    this.unlisten = listen(this.socket, {
      'existing-peers': (peers) => (peers || []).forEach((p) => this.upsertPeer(p, true)),
      'peer-joined': (p) => {
        if (p && p.socketId) this.departed.delete(p.socketId);
        this.upsertPeer(p);
        // They offer to us; be ready (and time the attempt) in case their offer never comes.
        if (this.joined && this.p2pAllowed()) this.link(p.socketId, false);
        this.updatePath();
      },
      'peer-left': ({ socketId, reason, replacedBy }) => {
        this.departed.add(socketId);
        if (replacedBy) this.rekeyPeer(socketId, replacedBy);
        else if (reason === 'disconnected' && this.isDirect(socketId)) this.awaitReturn(socketId);
        else this.removePeer(socketId);
      },
      signal: (msg) => this.onSignal(msg),
      'media-state': (m) => this.onMediaState(m),
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
    for (const p of ack.peers || []) this.upsertPeer(p, true);
    this.joined = true;
    this.everJoined = true;
    this.sendMediaState(true); // the others show our microphone, camera and screen as they are
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
    this.selfTile.setActiveSpeaker(null);
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

  /** A member, from `peer-joined` or from a member list (`listed`: maybe older than events). */
  upsertPeer(peer, listed = false) {
    if (!peer || !peer.socketId || peer.socketId === this.selfId || peer.socketId === this.socket.id) return;
    if (listed && this.departed.has(peer.socketId)) return;
    if (peer.replaces) {
      this.departed.add(peer.replaces);
      this.rekeyPeer(peer.replaces, peer.socketId);
    }
    this.peers.set(peer.socketId, peer);
    const tile = this.tile(peer.socketId);
    tile.setIdentity(`${peer.name}${peer.role ? ` · ${peer.role}` : ''}`, peer.avatarSeed || peer.userId);
    if (peer.media) tile.setMediaState(peer.media);
    const screen = this.screens.get(peer.socketId);
    if (screen) screen.setName(peer.name);
  }

  tile(socketId) {
    let tile = this.tiles.get(socketId);
    if (!tile) {
      // Its socket id may change (rekeyPeer): the tile is looked up, not its first id kept.
      const id = () => [...this.tiles].find(([, t]) => t === tile)?.[0] || socketId;
      tile = new Tile({ name: 'Connecting…', seed: socketId, socketId, onScreen: (track) => this.showScreen(id(), track) });
      tile.setStatus(this.relayed ? 'waiting for video' : 'connecting…');
      this.tiles.set(socketId, tile);
      this.grid.appendChild(tile.el);
      this.layout();
    }
    return tile;
  }

  /** One tile per person; while someone shares a screen, that screen large, the people beside. */
  layout() {
    this.grid.dataset.count = String(this.tiles.size + 1);
    this.grid.dataset.presenting = String(this.screens.size > 0);
  }

  /** A member's shared screen (its track, from its tile), or the share's end (null). */
  showScreen(socketId, track) {
    let screen = this.screens.get(socketId);
    if (!track) {
      if (screen) screen.remove();
      this.screens.delete(socketId);
      this.layout();
      return;
    }
    if (!screen) {
      screen = new ScreenTile({ name: (this.peers.get(socketId) || {}).name || 'Someone', socketId });
      this.screens.set(socketId, screen);
      this.grid.prepend(screen.el);
    }
    screen.setTrack(track);
    this.layout();
  }

  /** `media-state` of another member: its microphone, camera and screen on its tile. */
  onMediaState(m) {
    if (!m || !m.socketId || m.roomId !== this.roomId || m.socketId === this.selfId) return;
    const state = { audio: m.audio !== false, video: m.video !== false, screen: m.screen === true, screenTrackId: m.screenTrackId };
    const peer = this.peers.get(m.socketId);
    if (peer) peer.media = state;
    const tile = this.tiles.get(m.socketId);
    if (tile) tile.setMediaState(state);
  }

  /** Tells the others our microphone, camera and screen (when they changed, or `force`). */
  sendMediaState(force = false) {
    if (!this.joined || this.closed || !this.local) return;
    const state = this.local.state();
    const key = JSON.stringify(state);
    if (!force && key === this.sentState) return;
    this.sentState = key;
    ask(this.socket, 'media-state', { roomId: this.roomId, ...state }).catch((err) => {
      this.sentState = null;
      console.warn(`[callrelay] media-state: ${err.code}: ${err.message}`);
    });
  }

  /**
   * Our screen share started (`track`) or stopped (null): every connection sends it as one more
   * video track, or stops it. The others hear of it (its track id) first.
   */
  setScreen(track) {
    if (this.closed) return;
    this.sendMediaState();
    for (const link of this.links.values()) link.setScreen(track);
    if (this.sfu) {
      (track ? this.sfu.addScreen(track) : this.sfu.removeScreen())
        .catch((err) => this.onNotice(`Could not ${track ? 'share' : 'stop sharing'} your screen through the relay: ${err.message}`, 'error'));
    }
  }

  /** Another camera or microphone: `track` takes `old`'s place on every connection. */
  replaceTrack(old, track) {
    const jobs = [...this.links.values()].map((link) => link.replaceTrack(old, track));
    if (this.sfu) jobs.push(this.sfu.replaceTrack(old, track));
    return Promise.all(jobs);
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
    for (const map of [this.tiles, this.peers, this.links, this.screens]) {
      if (!map.has(oldId)) continue;
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
    if (this.sfu) this.sfu.videoSizes.unwatch(socketId);
    this.showScreen(socketId, null);
    this.layout();
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
      if (link && link.remoteSession && link.remoteSession === sessionOf(msg.payload)) {
        link.onOffer(msg.payload); // a renegotiation (a screen shared or stopped)
        return;
      }
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

  /** The relay names the room's active speaker (`active-speaker`): its tile rings, ours
   * included, and no other; in a P2P room each tile keeps its own level analysis. */
  activeSpeaker(socketId) {
    if (this.closed || !this.relayed) return;
    this.selfTile.setActiveSpeaker(socketId === this.selfId || socketId === this.socket.id);
    for (const [id, tile] of this.tiles) tile.setActiveSpeaker(id === socketId);
  }

  ensureSfu() {
    if (!this.sfu) {
      const session = new SfuSession({
        socket: this.socket,
        roomId: this.roomId,
        localStream: this.localStream,
        onTrack: (stream, track) => this.onRelayTrack(stream, track),
        onStateChange: () => this.updatePath(),
        onRelabel: () => {
          for (const tile of this.tiles.values()) tile.refresh();
        },
        onLost: () => this.relayLost(session),
      });
      this.sfu = session;
      // A screen shared before the room moved to the relay is published with the rest.
      if (this.local && this.local.screen) this.sfu.screen = { track: this.local.screen.track, transceiver: null };
    }
    return this.sfu;
  }

  /**
   * The relay lost our session (its media node died; the room moved to another node): new
   * connections, as on a first relay. `sfu-join` subscribes us again (an offer follows) and we
   * publish anew; the others do the same, and their pictures come back as they do.
   */
  async relayLost(lost, attempt = 1) {
    // Only for the session that was lost: a reconnection to the server may have made a newer one.
    if (this.closed || !this.relayed || this.sfu !== lost) return;
    const sid = this.socket.id;
    if (lost) lost.close(false);
    this.sfu = null;
    this.relayStreams.clear();
    for (const tile of this.tiles.values()) tile.setStatus('reconnecting…');
    this.onPath('connecting', 'Relay (SFU) · reconnecting…');
    try {
      await ask(this.socket, 'sfu-join', { roomId: this.roomId, reason: 'forced' });
      if (this.closed || this.socket.id !== sid) return; // rejoined: that made everything anew
      await this.ensureSfu().publish();
    } catch (err) {
      if (this.closed || this.socket.id !== sid) return;
      const failed = this.sfu;
      this.sfu = null;
      if (failed) failed.close(false);
      // The room may still be placed on the dead node until its lease runs out: again soon.
      if (attempt < RELAY_RETRIES) setTimeout(() => this.relayLost(null, attempt + 1), RELAY_RETRY_MS);
      else this.onNotice(`Could not reconnect to the relay: ${err.message}`, 'error');
    }
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
    // The relay sends this member's camera in the layer that fills the tile (`sfu-video-size`).
    if (this.sfu && track.kind === 'video') this.sfu.videoSizes.watch(socketId, tile.video);
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
    for (const screen of this.screens.values()) screen.remove();
    this.screens.clear();
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
