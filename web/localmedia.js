// Our own media in a consultation or a call: the camera and microphone stream (opened on the
// devices chosen), muting, turning the camera off, switching devices mid-call, and sharing the
// screen. The room or call using it is told what to change on its connections.

import { h } from './ui.js';
import { openChosenMedia, openDeviceTrack } from './devices.js';
import { stopStream } from './media.js';

export class LocalMedia {
  /**
   * onChange(): something we show changed (muted, camera, screen, device).
   * onReplace(old, track): another camera or microphone: put `track` in place of `old` on
   *   every connection (RTCRtpSender.replaceTrack).
   * onScreen(track | null): a screen share started or stopped.
   */
  constructor({ onChange = () => {}, onReplace = async () => {}, onScreen = () => {} } = {}) {
    this.onChange = onChange;
    this.onReplace = onReplace;
    this.onScreen = onScreen;
    this.stream = null;
    this.screen = null; // {track, stream}
    this.closed = false;
  }

  /** Opens the chosen camera and/or microphone: {stream, warning} (see openLocalMedia). */
  async open({ video = true, audio = true } = {}) {
    const { stream, warning } = await openChosenMedia({ video, audio });
    if (this.closed) {
      stopStream(stream);
      return { stream: null, warning };
    }
    this.stream = stream;
    this.onChange();
    return { stream, warning };
  }

  tracks(kind) {
    if (!this.stream) return [];
    return kind === 'audio' ? this.stream.getAudioTracks() : this.stream.getVideoTracks();
  }

  has(kind) {
    return this.tracks(kind).length > 0;
  }

  /** Whether the microphone ('audio') or camera ('video') is on. */
  isOn(kind) {
    const tracks = this.tracks(kind);
    return tracks.length > 0 && tracks.every((t) => t.enabled);
  }

  setOn(kind, on) {
    const tracks = this.tracks(kind);
    if (!tracks.length || tracks.every((t) => t.enabled === on)) return;
    for (const t of tracks) t.enabled = on;
    this.onChange();
  }

  toggle(kind) {
    this.setOn(kind, !this.isOn(kind));
  }

  /** What `media-state` / `call-media-state` carry. */
  state() {
    const state = { audio: this.isOn('audio'), video: this.isOn('video'), screen: Boolean(this.screen) };
    if (this.screen) state.screenTrackId = this.screen.track.id;
    return state;
  }

  /**
   * Uses another camera ('video') or microphone ('audio'), mid-call included: the new track
   * takes the old one's place in our stream and, through onReplace, on every connection; the
   * old one is then stopped. Rejects (nothing changed) if the device cannot be opened.
   */
  async switchDevice(kind, deviceId) {
    const old = this.tracks(kind)[0] || null;
    if (old && old.getSettings().deviceId === deviceId) return;
    const track = await openDeviceTrack(kind, deviceId, old);
    if (this.closed) {
      track.stop();
      return;
    }
    if (!this.stream) this.stream = new MediaStream();
    if (old) this.stream.removeTrack(old);
    this.stream.addTrack(track);
    try {
      await this.onReplace(old, track);
    } finally {
      if (old) old.stop();
      this.onChange();
    }
  }

  /**
   * Shares a screen, window or tab (the browser asks which). Resolves to the track, or null if
   * the user chose nothing. Stopping it from the browser's own bar stops the share too.
   */
  async startScreen() {
    if (this.screen) return this.screen.track;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
      throw new Error('this browser cannot share the screen');
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    } catch (err) {
      if (err.name === 'NotAllowedError' || err.name === 'AbortError') return null; // cancelled
      throw err;
    }
    const track = stream.getVideoTracks()[0];
    if (this.closed || !track) {
      stopStream(stream);
      return null;
    }
    track.contentHint = 'detail'; // text stays sharp rather than the motion smooth
    this.screen = { track, stream };
    track.addEventListener('ended', () => this.stopScreen());
    this.onScreen(track);
    this.onChange();
    return track;
  }

  stopScreen() {
    if (!this.screen) return;
    const { stream } = this.screen;
    this.screen = null;
    stopStream(stream);
    this.onScreen(null);
    this.onChange();
  }

  close() {
    this.closed = true;
    if (this.screen) stopStream(this.screen.stream);
    this.screen = null;
    stopStream(this.stream);
  }
}

/**
 * The buttons of our own media during a consultation or a call: microphone, camera, screen
 * share and (with a DevicePanel) a "Devices" popover to switch camera, microphone and speaker.
 * `onError(text)` shows what went wrong.
 */
export class MediaControls {
  constructor(local, { devices = null, screen = true, onError = () => {}, compact = false } = {}) {
    this.local = local;
    this.devices = devices;
    this.onError = onError;
    const button = (label, onclick, extra = {}) => h('button', { class: 'control', type: 'button', onclick, ...extra }, label);
    this.micBtn = button('Mute', () => local.toggle('audio'), { 'aria-pressed': 'false' });
    this.camBtn = button('Stop video', () => local.toggle('video'), { 'aria-pressed': 'false' });
    this.screenBtn = screen && navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia
      ? button('Share screen', () => this.toggleScreen(), { 'aria-pressed': 'false' })
      : null;
    this.buttons = [this.micBtn, this.camBtn, this.screenBtn].filter(Boolean);
    if (devices) {
      this.popover = h('div', { class: `device-popover${compact ? ' compact' : ''}`, hidden: true, role: 'dialog', 'aria-label': 'Devices' });
      this.devBtn = button('Devices', () => this.showDevices(this.popover.hidden), { 'aria-expanded': 'false', 'aria-haspopup': 'dialog' });
      this.popover.addEventListener('keydown', (e) => {
        if (e.key === 'Escape') {
          this.showDevices(false);
          this.devBtn.focus();
        }
      });
      this.buttons.push(this.devBtn);
    }
    this.update();
  }

  /** The device panel in the popover (true) or back where it was (false: closed). */
  showDevices(open) {
    if (!this.devices) return;
    if (open) {
      this.popover.appendChild(this.devices.el);
      this.devices.refresh(this.local.stream);
    }
    this.popover.hidden = !open;
    this.devBtn.setAttribute('aria-expanded', String(open));
    if (open) (this.popover.querySelector('select:not([disabled])') || this.devBtn).focus();
  }

  async toggleScreen() {
    if (this.local.screen) {
      this.local.stopScreen();
      return;
    }
    this.screenBtn.disabled = true;
    try {
      await this.local.startScreen();
    } catch (err) {
      this.onError(`Your screen could not be shared: ${err.message || err.name}`);
    } finally {
      this.screenBtn.disabled = false;
    }
  }

  update() {
    const { local } = this;
    this.micBtn.disabled = !local.has('audio');
    this.camBtn.disabled = !local.has('video');
    const micOff = local.has('audio') && !local.isOn('audio');
    const camOff = local.has('video') && !local.isOn('video');
    this.micBtn.textContent = micOff ? 'Unmute' : 'Mute';
    this.micBtn.setAttribute('aria-pressed', String(micOff));
    this.camBtn.textContent = camOff ? 'Start video' : 'Stop video';
    this.camBtn.setAttribute('aria-pressed', String(camOff));
    if (this.screenBtn) {
      const sharing = Boolean(local.screen);
      this.screenBtn.textContent = sharing ? 'Stop sharing' : 'Share screen';
      this.screenBtn.setAttribute('aria-pressed', String(sharing));
    }
  }
}
