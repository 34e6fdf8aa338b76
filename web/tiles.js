// Tiles: a person's tile (their camera, or their initials and name while the camera is off; a
// microphone-off mark; a ring while they speak; "Reconnecting…" while their picture stands
// still) and the large tile of a shared screen.

import { h, avatar, play } from './ui.js';
import { AudioLevel, applySpeaker } from './devices.js';

/** How long a remote picture may stand still before its tile says it is reconnecting. */
export const FROZEN_AFTER_MS = 1500;

/** Level (0-1, see AudioLevel) from which a voice counts as speaking, and how long the ring
 * stays after the voice drops (so it does not flicker between words). */
const SPEAKING_LEVEL = 0.06;
const SPEAKING_HOLD_MS = 500;

/** A small "microphone off" mark: an icon for the eye, words for screen readers. */
function micOffMark() {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  for (const d of ['M9 5a3 3 0 0 1 6 0v6a3 3 0 0 1-6 0z', 'M5 11a7 7 0 0 0 14 0M12 18v3', 'M3 3l18 18']) {
    const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
    path.setAttribute('d', d);
    svg.appendChild(path);
  }
  return h('span', { class: 'tile-mic', title: 'Microphone off', hidden: true }, svg, h('span', { class: 'sr-only' }, 'microphone off'));
}

/** The sender's id of a received track: what its m-section's msid says now (see
 * labelRemoteTracks in media.js), else its own id (browsers give it the msid's at first). */
function senderId(track) {
  return track.msidTrackId || track.id;
}

/**
 * Which of a person's video tracks is their shared screen: the one whose sender's id their
 * media state names (`screenTrackId`); without an id, the newest of two. The other is their
 * camera. Tracks that once carried a screen never count as a camera (a stopped share's track
 * may linger in the stream for a moment).
 */
export function splitVideo(videos, state, pastScreens = new Set()) {
  let screen = null;
  if (state && state.screen) {
    screen = videos.find((t) => senderId(t) === state.screenTrackId) || null;
    if (!screen && !state.screenTrackId && videos.length > 1) screen = videos[videos.length - 1];
  }
  const camera = videos.find((t) => t !== screen && !pastScreens.has(senderId(t))
    && !(state && state.screenTrackId === senderId(t))) || null;
  return { camera, screen };
}

/**
 * A person's tile: their camera, or their initials (avatar) and name while there is no picture
 * (no camera, or turned off). Remote tiles follow the person's media state (`setMediaState`:
 * microphone and camera off, the shared screen's track id); the local one its own tracks. A ring
 * shows while the person speaks (the level of their audio track). A remote tile whose picture
 * stops moving (no new frame for FROZEN_AFTER_MS: the path lost, the stream replaced while the
 * call moves to the relay) shows "Reconnecting…" over it (a status live region) until frames
 * move again. The stream given (`setStream`) may carry the person's shared screen too: the tile
 * shows the camera and hands the screen's track to `onScreen(track | null)`.
 */
export class Tile {
  constructor({ name, seed, local = false, socketId = '', onScreen = null }) {
    this.local = local;
    this.onScreen = onScreen || (() => {});
    this.source = null; // the stream given: camera, microphone and maybe a screen
    this.stream = null; // what the video element plays: camera and microphone
    this.state = null; // the person's last media state (remote tiles)
    this.pastScreens = new Set();
    this.screenTrack = null;
    this.video = h('video', { autoplay: true, playsInline: true, muted: local, class: local ? 'mirrored' : 'remote-video' });
    if (!local) applySpeaker(this.video);
    this.avatarHost = h('div', { class: 'tile-avatar' });
    this.nameEl = h('span', { class: 'tile-name' });
    this.statusEl = h('span', { class: 'tile-status' });
    this.micEl = micOffMark();
    this.camOffEl = h('span', { class: 'sr-only tile-cam-off' });
    // Always in the page (a live region must exist before its text changes); empty, it is
    // invisible.
    this.overlayEl = local ? null : h('div', { class: 'tile-overlay', role: 'status', 'aria-live': 'polite' });
    this.el = h('div', { class: `tile${local ? ' tile-local' : ''}`, dataset: { socketId, mic: 'on', camera: 'on' } },
      this.video, this.avatarHost, this.overlayEl, this.statusEl,
      h('div', { class: 'tile-label' }, this.nameEl, this.micEl, this.camOffEl));
    this.onTrackChange = () => this.refresh();
    for (const ev of ['playing', 'resize', 'emptied', 'loadedmetadata']) this.video.addEventListener(ev, this.onTrackChange);
    this.setIdentity(name, seed);
    if (!local) {
      this.frames = 0;
      this.movedAt = 0;
      this.hadPicture = false;
      this.frameWatch = setInterval(() => this.watchFrames(), 250);
    }
  }

  /**
   * Counts the frames the video element presented: once a picture has been seen, a stall of
   * FROZEN_AFTER_MS shows the reconnecting overlay, and the next frame removes it. Not while
   * the page is hidden or the video paused (nothing renders then), nor for a person without a
   * picture (no camera, or turned off: a disabled camera sends a frame now and then only).
   */
  watchFrames() {
    const now = Date.now();
    const quality = this.video.getVideoPlaybackQuality ? this.video.getVideoPlaybackQuality() : null;
    const n = quality ? quality.totalVideoFrames : 0;
    if (n !== this.frames) {
      this.frames = n;
      if (n > 0) {
        this.movedAt = now;
        this.hadPicture = true;
      }
    }
    const noCamera = (this.stream && this.stream.getVideoTracks().length === 0) || this.cameraOff();
    if (document.hidden || (this.stream && this.video.paused) || noCamera) this.movedAt = now;
    this.setReconnecting(this.hadPicture && now - this.movedAt > FROZEN_AFTER_MS);
  }

  setReconnecting(on) {
    if (!this.overlayEl || this.el.classList.contains('reconnecting') === on) return;
    this.el.classList.toggle('reconnecting', on);
    this.overlayEl.textContent = on ? 'Reconnecting…' : '';
  }

  setIdentity(name, seed) {
    this.name = name;
    this.nameEl.textContent = name;
    this.avatarHost.replaceChildren(avatar(seed || name, 'avatar-lg'));
  }

  /** The stream this person's tracks arrive in (or, local, our own camera and microphone). */
  setStream(stream) {
    if (stream !== this.source) {
      if (this.source) this.unwatch(this.source);
      this.source = stream;
      if (stream) this.watch(stream);
    }
    this.refresh();
  }

  /** A remote person's `media-state` (or their Peer's `media`): {audio, video, screen, screenTrackId?}. */
  setMediaState(state) {
    if (state && state.screenTrackId) this.pastScreens.add(state.screenTrackId);
    this.state = state || null;
    this.refresh();
  }

  cameraOff() {
    if (this.local) {
      const video = this.stream ? this.stream.getVideoTracks() : [];
      return video.length > 0 && video.every((t) => !t.enabled);
    }
    return Boolean(this.state && this.state.video === false);
  }

  micOff() {
    const audio = this.stream ? this.stream.getAudioTracks() : [];
    if (this.local) return audio.length > 0 && audio.every((t) => !t.enabled);
    return Boolean(this.state && this.state.audio === false);
  }

  /** Plays the source's camera and microphone; its screen track goes to onScreen. */
  split() {
    const source = this.source;
    const videos = source ? source.getVideoTracks().filter((t) => t.readyState === 'live') : [];
    const { camera, screen } = this.local ? { camera: videos[0] || null, screen: null } : splitVideo(videos, this.state, this.pastScreens);
    const audio = source ? source.getAudioTracks() : [];
    const wanted = [...(camera ? [camera] : []), ...audio];
    const shown = this.stream ? this.stream.getTracks() : [];
    const same = wanted.length === shown.length && wanted.every((t) => shown.includes(t));
    if (!source) {
      if (this.stream) this.video.srcObject = null;
      this.stream = null;
    } else if (!same) {
      // A new stream object only when the tracks change, so the picture does not restart.
      this.stream = new MediaStream(wanted);
      this.video.srcObject = this.stream;
      play(this.video, this.el);
    }
    for (const t of wanted) this.watchTrack(t);
    if (screen !== this.screenTrack) {
      this.screenTrack = screen;
      if (screen) this.watchTrack(screen);
      this.onScreen(screen);
    }
    this.followVoice(audio.find((t) => t.readyState === 'live') || null);
  }

  watch(stream) {
    stream.addEventListener('addtrack', this.onTrackChange);
    stream.addEventListener('removetrack', this.onTrackChange);
  }

  watchTrack(track) {
    if (track.__tileWatched) return;
    track.__tileWatched = true;
    for (const ev of ['mute', 'unmute', 'ended']) track.addEventListener(ev, () => this.refresh());
  }

  unwatch(stream) {
    stream.removeEventListener('addtrack', this.onTrackChange);
    stream.removeEventListener('removetrack', this.onTrackChange);
  }

  /** The speaking ring follows the level of `track` (the person's microphone). */
  followVoice(track) {
    if (this.voice && this.voice.track === track) return;
    if (this.voice) this.voice.stop();
    this.voice = null;
    if (this.activeSpeaker == null) this.setSpeaking(false);
    if (!track) return;
    this.voice = new AudioLevel(track, (level) => {
      const now = Date.now();
      if (level >= SPEAKING_LEVEL && !this.micOff()) this.spokeAt = now;
      if (this.activeSpeaker != null) return; // the relay says who speaks
      this.setSpeaking(this.spokeAt !== undefined && now - this.spokeAt < SPEAKING_HOLD_MS);
    });
    this.voice.track = track;
  }

  /** In a relayed room the ring shows the room's active speaker as the relay names it
   * (`active-speaker`), instead of this tile's own level analysis; null goes back to that. */
  setActiveSpeaker(on) {
    this.activeSpeaker = on;
    this.setSpeaking(Boolean(on));
  }

  setSpeaking(on) {
    if (this.el.classList.contains('speaking') === on) return;
    this.el.classList.toggle('speaking', on);
    this.el.dataset.speaking = String(on);
  }

  /** Shows the picture only while a live, enabled camera track is actually rendering. */
  refresh() {
    this.split();
    const tracks = this.stream ? this.stream.getVideoTracks() : [];
    const camOff = this.cameraOff();
    const live = tracks.some((t) => t.readyState === 'live' && t.enabled && !t.muted);
    this.el.classList.toggle('has-video', live && !camOff && this.video.videoWidth > 0);
    const micOff = this.micOff();
    this.micEl.hidden = !micOff;
    this.el.dataset.mic = micOff ? 'off' : 'on';
    this.el.dataset.camera = camOff ? 'off' : 'on';
    this.camOffEl.textContent = camOff ? 'camera off' : '';
  }

  setStatus(text, kind = '') {
    this.statusEl.textContent = text;
    this.statusEl.className = `tile-status ${kind}`;
  }

  remove() {
    clearInterval(this.frameWatch);
    if (this.voice) this.voice.stop();
    this.voice = null;
    if (this.source) this.unwatch(this.source);
    if (this.screenTrack) this.onScreen(null);
    this.screenTrack = null;
    this.video.srcObject = null;
    this.el.remove();
  }
}

/** The large tile of a screen someone shares: the picture fitted whole, and whose it is. */
export class ScreenTile {
  constructor({ name, socketId = '' }) {
    this.track = null;
    this.video = h('video', { autoplay: true, playsInline: true, muted: true, class: 'screen-video' });
    this.labelEl = h('span', { class: 'tile-name' });
    this.el = h('div', { class: 'screen-tile', role: 'region', dataset: { socketId } },
      this.video, h('div', { class: 'tile-label' }, this.labelEl));
    this.setName(name);
  }

  setName(name) {
    const text = `${name} is presenting`;
    this.labelEl.textContent = text;
    this.el.setAttribute('aria-label', text);
  }

  setTrack(track) {
    if (track === this.track) return;
    this.track = track;
    this.video.srcObject = track ? new MediaStream([track]) : null;
    if (track) play(this.video, this.el);
  }

  remove() {
    this.video.srcObject = null;
    this.el.remove();
  }
}

/**
 * The picture of a direct call's other party (the call window's media area): their camera, or
 * their initials while it is off; the microphone-off mark and the speaking ring from their
 * `call-media-state`; their shared screen large, with their camera small beside it. The remote
 * tracks arrive in one stream (`setStream`); a screen sent on the call's reserved transceiver
 * comes separately (`setScreenSlot`), a relayed one in the stream, named by its track id.
 * `extra` (our own preview) is put in the area too.
 */
export class CallPicture {
  constructor({ name, audioOnly = false, extra = null }) {
    this.source = null;
    this.slotTrack = null;
    this.state = null;
    this.pastScreens = new Set();
    this.video = h('video', { autoplay: true, playsInline: true, class: 'call-remote' });
    applySpeaker(this.video);
    this.screenVideo = h('video', { autoplay: true, playsInline: true, muted: true, class: 'call-screen', hidden: true, 'aria-label': `${name}'s shared screen` });
    this.micEl = micOffMark();
    this.micEl.classList.add('call-mic');
    this.el = h('div', { class: `call-media${audioOnly ? ' audio-only' : ''}`, dataset: { mic: 'on', camera: 'on' } },
      avatar(name, 'avatar-lg'), this.video, this.screenVideo, this.micEl, extra);
    this.onChange = () => this.refresh();
    for (const ev of ['resize', 'playing', 'emptied']) this.video.addEventListener(ev, this.onChange);
    for (const ev of ['resize', 'playing']) this.screenVideo.addEventListener(ev, this.onChange);
  }

  /** The stream the other party's tracks arrive in (direct or through the relay). */
  setStream(stream) {
    if (stream !== this.source) {
      if (this.source) {
        this.source.removeEventListener('addtrack', this.onChange);
        this.source.removeEventListener('removetrack', this.onChange);
      }
      this.source = stream;
      if (stream) {
        stream.addEventListener('addtrack', this.onChange);
        stream.addEventListener('removetrack', this.onChange);
      }
    }
    this.refresh();
  }

  /** The track of the call's reserved screen transceiver (a direct call): shown while they share. */
  setScreenSlot(track) {
    this.slotTrack = track;
    this.refresh();
  }

  /** Their `call-media-state`: {audio, video, screen, screenTrackId?}. */
  setMediaState(state) {
    if (state && state.screenTrackId) this.pastScreens.add(state.screenTrackId);
    this.state = state;
    this.refresh();
  }

  refresh() {
    const source = this.source;
    const videos = source ? source.getVideoTracks().filter((t) => t.readyState === 'live' && t !== this.slotTrack) : [];
    const split = splitVideo(videos, this.state, this.pastScreens);
    const camera = split.camera;
    let screen = split.screen;
    if (!screen && this.slotTrack && this.state && this.state.screen) screen = this.slotTrack;
    const audio = source ? source.getAudioTracks() : [];
    const wanted = [...(camera ? [camera] : []), ...audio];
    const shown = this.shown ? this.shown.getTracks() : [];
    if (wanted.length !== shown.length || !wanted.every((t) => shown.includes(t))) {
      this.shown = wanted.length ? new MediaStream(wanted) : null;
      this.video.srcObject = this.shown;
      if (this.shown) play(this.video, this.el);
    }
    if (screen !== this.screenTrack) {
      this.screenTrack = screen;
      this.screenVideo.srcObject = screen ? new MediaStream([screen]) : null;
      if (screen) play(this.screenVideo, this.el);
    }
    const presenting = Boolean(screen);
    this.screenVideo.hidden = !presenting;
    this.el.classList.toggle('presenting', presenting);
    const camOff = Boolean(this.state && this.state.video === false);
    const micOff = Boolean(this.state && this.state.audio === false);
    this.el.classList.toggle('has-video', !camOff && this.video.videoWidth > 0 && Boolean(camera));
    this.el.dataset.camera = camOff ? 'off' : 'on';
    this.el.dataset.mic = micOff ? 'off' : 'on';
    this.micEl.hidden = !micOff;
    this.followVoice(audio.find((t) => t.readyState === 'live') || null);
  }

  followVoice(track) {
    if (this.voice && this.voice.track === track) return;
    if (this.voice) this.voice.stop();
    this.voice = null;
    if (!track) return;
    this.voice = new AudioLevel(track, (level) => {
      const now = Date.now();
      if (level >= SPEAKING_LEVEL && !(this.state && this.state.audio === false)) this.spokeAt = now;
      const on = this.spokeAt !== undefined && now - this.spokeAt < SPEAKING_HOLD_MS;
      this.el.classList.toggle('speaking', on);
      this.el.dataset.speaking = String(on);
    });
    this.voice.track = track;
  }

  /** The call is over: no picture, no sound, no meter. */
  stop() {
    if (this.voice) this.voice.stop();
    this.voice = null;
    this.video.srcObject = null;
    this.screenVideo.srcObject = null;
    this.el.classList.remove('has-video', 'presenting', 'speaking');
  }
}
