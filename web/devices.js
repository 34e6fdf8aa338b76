// Devices: the camera, microphone and speaker chosen (remembered in localStorage), the
// "join muted" and "camera off" choices, a microphone level meter, a speaker test, and the
// panel that shows them (in the consult lobby, and during a consultation or a call).

import { h } from './ui.js';
import { openLocalMedia } from './media.js';

const PREFS_KEY = 'callrelay.devices';

/** {cameraId, micId, speakerId, joinMuted, cameraOff}; ids are '' for the browser's default. */
export function loadPrefs() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(PREFS_KEY) || '{}') || {};
  } catch {
    /* a damaged entry counts as none */
  }
  return {
    cameraId: typeof saved.cameraId === 'string' ? saved.cameraId : '',
    micId: typeof saved.micId === 'string' ? saved.micId : '',
    speakerId: typeof saved.speakerId === 'string' ? saved.speakerId : '',
    joinMuted: saved.joinMuted === true,
    cameraOff: saved.cameraOff === true,
  };
}

export function savePrefs(changes) {
  const prefs = { ...loadPrefs(), ...changes };
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    /* storage full or refused: the choice lasts for this page only */
  }
  return prefs;
}

/** Whether this browser can choose where sound plays (HTMLMediaElement.setSinkId). */
export const canPickSpeaker = typeof HTMLMediaElement !== 'undefined' && 'setSinkId' in HTMLMediaElement.prototype;

/** Plays `el`'s sound on the chosen speaker (where the browser can choose). */
export function applySpeaker(el, speakerId = loadPrefs().speakerId) {
  if (!canPickSpeaker || !el || el.sinkId === speakerId) return Promise.resolve();
  return el.setSinkId(speakerId).catch((err) => console.warn('[callrelay] setSinkId', err.name));
}

/** Sends the sound of every media element of the page (the others' pictures) to `speakerId`. */
export function applySpeakerEverywhere(speakerId) {
  for (const el of document.querySelectorAll('video, audio')) if (!el.muted) applySpeaker(el, speakerId);
}

/**
 * Opens the camera and microphone chosen before (or the defaults, when a remembered device is
 * gone), with `openLocalMedia`'s plain-language errors. `video`/`audio`: whether to ask for each.
 */
export async function openChosenMedia({ video = true, audio = true } = {}) {
  const prefs = loadPrefs();
  const want = (on, id) => (on ? (id ? { deviceId: { ideal: id } } : true) : false);
  return openLocalMedia({ video: want(video, prefs.cameraId), audio: want(audio, prefs.micId) });
}

/**
 * A new track from device `deviceId` of `kind` ('audio' | 'video'), to put in place of `old`
 * (its enabled state carried over). Rejects with the browser's error.
 */
export async function openDeviceTrack(kind, deviceId, old) {
  const constraints = deviceId ? { deviceId: { exact: deviceId } } : {};
  if (kind === 'video') Object.assign(constraints, { width: { ideal: 1280 }, height: { ideal: 720 } });
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: constraints });
  const track = kind === 'audio' ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0];
  if (old) track.enabled = old.enabled;
  return track;
}

/** The devices of each kind: {videoinput: [...], audioinput: [...], audiooutput: [...]}. */
export async function listDevices() {
  const out = { videoinput: [], audioinput: [], audiooutput: [] };
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return out;
  for (const d of await navigator.mediaDevices.enumerateDevices()) {
    if (out[d.kind]) out[d.kind].push(d);
  }
  return out;
}

let sharedAudio = null;
// A browser starts an AudioContext only after the user interacted with the page: the first
// click or key press lets the meters and speaking rings run.
for (const ev of ['pointerdown', 'keydown']) {
  document.addEventListener(ev, () => {
    if (sharedAudio && sharedAudio.state === 'suspended') sharedAudio.resume().catch(() => {});
  }, { capture: true });
}

/** One AudioContext for the page's meters, speaking rings and tones (resumed when needed). */
export function audioContext() {
  if (!sharedAudio) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    sharedAudio = new Ctx();
  }
  if (sharedAudio.state === 'suspended') sharedAudio.resume().catch(() => {});
  return sharedAudio;
}

/**
 * The loudness of an audio track, 0 to 1 (the RMS of its waveform, scaled so speech reads
 * 0.2-0.8), read `every` ms and handed to `onLevel`. `stop()` ends it.
 */
export class AudioLevel {
  constructor(track, onLevel, every = 100) {
    this.onLevel = onLevel;
    const ctx = audioContext();
    if (!ctx || !track) return;
    this.source = ctx.createMediaStreamSource(new MediaStream([track]));
    this.analyser = ctx.createAnalyser();
    this.analyser.fftSize = 512;
    this.source.connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.timer = setInterval(() => this.read(), every);
  }

  read() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const v of this.samples) sum += v * v;
    const rms = Math.sqrt(sum / this.samples.length);
    this.onLevel(Math.min(1, rms * 4));
  }

  stop() {
    clearInterval(this.timer);
    if (this.source) this.source.disconnect();
    this.source = null;
  }
}

/** Plays a short two-note chime on `speakerId` (where the browser can choose the output). */
export async function playTestSound(speakerId) {
  const ctx = audioContext();
  if (!ctx) throw new Error('this browser cannot play sounds from the page');
  const out = ctx.createMediaStreamDestination();
  const el = new Audio();
  el.srcObject = out.stream;
  await applySpeaker(el, speakerId);
  await el.play();
  const t = ctx.currentTime + 0.05;
  for (const [freq, at] of [[660, 0], [880, 0.35]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, t + at);
    gain.gain.exponentialRampToValueAtTime(0.2, t + at + 0.03);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + at + 0.3);
    osc.connect(gain).connect(out);
    osc.start(t + at);
    osc.stop(t + at + 0.32);
  }
  await new Promise((resolve) => setTimeout(resolve, 800));
  el.pause();
  el.srcObject = null;
}

/**
 * Camera, microphone and speaker selectors, a microphone level meter and a speaker test; in the
 * lobby also "Join muted" and "Camera off". Choices are remembered. `onSwitch(kind, deviceId)`
 * ('audio' | 'video') is awaited when the user picks another camera or microphone (the owner
 * replaces its track); the speaker applies to every remote media element of the page.
 * `lobby`: show the join toggles, calling `onToggle({joinMuted, cameraOff})`.
 */
export class DevicePanel {
  constructor({ onSwitch, onToggle = null, lobby = false, idPrefix = 'dev' }) {
    this.onSwitch = onSwitch;
    this.onToggle = onToggle;
    const prefs = loadPrefs();
    const select = (kind, label) => {
      const el = h('select', { id: `${idPrefix}-${kind}`, onchange: () => this.picked(kind, el.value) });
      return { el, label: h('label', { for: el.id }, label, el) };
    };
    this.camera = select('videoinput', 'Camera');
    this.mic = select('audioinput', 'Microphone');
    this.speaker = select('audiooutput', 'Speaker');
    this.meterBar = h('span', { class: 'meter-bar' });
    this.meter = h('div', {
      class: 'mic-meter', role: 'meter', 'aria-label': 'Microphone level', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': '0',
    }, this.meterBar);
    this.testBtn = h('button', { type: 'button', class: 'small', onclick: () => this.testSpeaker() }, 'Test speaker');
    this.status = h('p', { class: 'device-status muted', role: 'status' });
    const fields = [
      this.camera.label,
      h('div', { class: 'device-mic' }, this.mic.label, this.meter),
      h('div', { class: 'device-speaker' }, canPickSpeaker ? this.speaker.label : h('span', { class: 'muted' }, 'Sound plays on your system\'s speaker.'), this.testBtn),
    ];
    if (lobby) {
      this.muted = h('input', { type: 'checkbox', id: `${idPrefix}-join-muted`, checked: prefs.joinMuted, onchange: () => this.toggled() });
      this.camOff = h('input', { type: 'checkbox', id: `${idPrefix}-camera-off`, checked: prefs.cameraOff, onchange: () => this.toggled() });
      fields.push(h('div', { class: 'device-toggles' },
        h('label', { class: 'check', for: this.muted.id }, this.muted, 'Join muted'),
        h('label', { class: 'check', for: this.camOff.id }, this.camOff, 'Camera off')));
    }
    this.el = h('div', { class: 'device-panel' }, fields, this.status);
    this.onDeviceChange = () => this.refresh();
    if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) navigator.mediaDevices.addEventListener('devicechange', this.onDeviceChange);
  }

  /** Fills the selectors (labels are only known once the page may use a device). */
  async refresh(stream = this.stream) {
    this.stream = stream;
    const devices = await listDevices();
    const prefs = loadPrefs();
    const current = (kind) => {
      const track = stream && (kind === 'audioinput' ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0]);
      return (track && track.getSettings().deviceId) || '';
    };
    const fill = ({ el }, kind, chosen, none) => {
      const list = devices[kind];
      el.replaceChildren(...(list.length
        ? list.map((d, i) => h('option', { value: d.deviceId }, d.label || `${none} ${i + 1}`))
        : [h('option', { value: '' }, `No ${none.toLowerCase()} found`)]));
      el.disabled = list.length === 0;
      if (list.some((d) => d.deviceId === chosen)) el.value = chosen;
    };
    fill(this.camera, 'videoinput', current('videoinput') || prefs.cameraId, 'Camera');
    fill(this.mic, 'audioinput', current('audioinput') || prefs.micId, 'Microphone');
    fill(this.speaker, 'audiooutput', prefs.speakerId || 'default', 'Speaker');
    this.watchLevel(stream);
  }

  /** The meter follows the microphone track of `stream`. */
  watchLevel(stream) {
    const track = stream ? stream.getAudioTracks()[0] : null;
    if (this.level && this.level.track === track) return;
    if (this.level) this.level.stop();
    this.level = null;
    this.meterBar.style.width = '0%';
    if (!track) return;
    this.level = new AudioLevel(track, (v) => {
      // A muted microphone sends silence: the meter says so rather than showing the room.
      const shown = track.enabled ? v : 0;
      this.meterBar.style.width = `${Math.round(shown * 100)}%`;
      this.meter.setAttribute('aria-valuenow', String(Math.round(shown * 100)));
      this.meter.dataset.level = String(Math.round(shown * 100));
    });
    this.level.track = track;
  }

  async picked(kind, deviceId) {
    if (kind === 'audiooutput') {
      savePrefs({ speakerId: deviceId });
      applySpeakerEverywhere(deviceId);
      this.say('');
      return;
    }
    const which = kind === 'videoinput' ? 'video' : 'audio';
    savePrefs(which === 'video' ? { cameraId: deviceId } : { micId: deviceId });
    try {
      await this.onSwitch(which, deviceId);
      this.say('');
    } catch (err) {
      this.say(`Could not switch to that ${which === 'video' ? 'camera' : 'microphone'}: ${err.message || err.name}`);
    }
    this.refresh();
  }

  toggled() {
    const choice = { joinMuted: this.muted.checked, cameraOff: this.camOff.checked };
    savePrefs(choice);
    if (this.onToggle) this.onToggle(choice);
  }

  async testSpeaker() {
    this.testBtn.disabled = true;
    this.say('Playing a test sound…');
    try {
      await playTestSound(loadPrefs().speakerId);
      this.say('Did you hear a chime? If not, pick another speaker or turn the volume up.');
    } catch (err) {
      this.say(`The test sound could not play: ${err.message || err.name}`);
    } finally {
      this.testBtn.disabled = false;
    }
  }

  say(text) {
    this.status.textContent = text;
  }

  dispose() {
    if (this.level) this.level.stop();
    this.level = null;
    if (navigator.mediaDevices && navigator.mediaDevices.removeEventListener) navigator.mediaDevices.removeEventListener('devicechange', this.onDeviceChange);
  }
}
