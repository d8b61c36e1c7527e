// Tool 4: live webcam stylization over WS /ws/stylize. Frames go up at a steady pace; the server
// stylizes the newest one whenever it is free (skipping the rest), and each painted frame is drawn
// on a canvas as it arrives. Frames per second and latency are measured here, on arrival.

import { apiKey } from './api.js';
import { closeCamera, grabFrame, openCamera } from './camera.js';
import { onStylesChanged, servedStyles } from './styles.js';
import { $, bindRange, clearProblem, el, formatMs, showProblem } from './ui.js';

const SEND_FPS = 15;          // upper bound on frames sent per second; the server keeps only the newest
const FPS_WINDOW_MS = 3000;   // frames per second are averaged over this window
const FRAME_TYPE = 'image/jpeg';
const FRAME_QUALITY = 0.75;
// A browser cannot put Authorization on a WebSocket: the key goes as a `bearer.<key>` subprotocol
// (next to `atelier`, which the server picks) when it is a valid protocol token, else as ?key=.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

function openSocket(url, params) {
  const key = apiKey();
  if (key && TOKEN.test(key)) return new WebSocket(`${url}?${params}`, ['atelier', `bearer.${key}`]);
  if (key) params.set('key', key);
  return new WebSocket(`${url}?${params}`);
}

export function setupLive() {
  const form = $('#live-form');
  const styleSelect = $('#live-style');
  const start = $('#live-start');
  const stop = $('#live-stop');
  const status = $('#live-status');
  const errorBox = $('#live-error');
  const video = $('#live-video');
  const canvas = $('#live-canvas');
  const fields = { style: styleSelect, strength: $('#live-strength'), preserve_color: $('#live-keep-colors') };
  bindRange(fields.strength, $('#live-strength-out'));
  onStylesChanged(() => {
    const styles = servedStyles();
    const keep = styleSelect.value;
    styleSelect.replaceChildren(...styles.map((s) => el('option', { value: s.name }, s.title || s.name)));
    if (styles.some((s) => s.name === keep)) styleSelect.value = keep;
    if (!styles.length) {
      start.disabled = true;
      status.textContent = 'No style network is loaded on this server.';
    }
  });

  let session = null;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    session?.stop();
    start.disabled = true;
    status.textContent = 'Opening the camera…';
    session = new LiveSession({
      video, canvas, status, errorBox, fields,
      size: Number($('#live-size').value),
      onEnd: () => { start.disabled = false; stop.disabled = true; },
    });
    try {
      await session.start();
      stop.disabled = false;
    } catch (error) {
      showProblem(errorBox, { problem: { title: 'No camera', detail: error.message } });
      session.stop();
    }
  });
  stop.addEventListener('click', () => session?.stop('Stopped.'));
}

class LiveSession {
  constructor({ video, canvas, status, errorBox, fields, size, onEnd }) {
    Object.assign(this, { video, canvas, status, errorBox, fields, size, onEnd });
    this.stream = null;
    this.socket = null;
    this.timer = null;
    this.sent = 0;
    this.sentAt = new Map();
    this.meta = null;
    this.arrivals = [];
    this.framesBack = 0;
    this.encoding = false;
    this.ended = false;
    this.problemShown = false;
  }

  async start() {
    this.stream = await openCamera(this.video);
    const params = new URLSearchParams({
      style: this.fields.style.value,
      strength: this.fields.strength.value,
      preserve_color: String(this.fields.preserve_color.checked),
      format: 'jpeg',
    });
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    this.status.textContent = 'Connecting…';
    const socket = openSocket(`${scheme}://${location.host}/ws/stylize`, params);
    socket.binaryType = 'blob';
    socket.addEventListener('message', (event) => this.onMessage(event));
    socket.addEventListener('close', (event) => this.onClose(event));
    this.socket = socket;
  }

  onMessage(event) {
    if (typeof event.data !== 'string') {
      this.draw(event.data, this.meta);
      this.meta = null;
      return;
    }
    const message = JSON.parse(event.data);
    if (message.event === 'ready') {
      this.status.textContent = `Live: ${message.style}, frames of ${this.size} px.`;
      this.timer = setInterval(() => this.sendFrame(), 1000 / SEND_FPS);
    } else if (message.event === 'frame') {
      this.meta = message;
    } else if (message.event === 'error') {
      this.problemShown = true;
      showProblem(this.errorBox, { problem: message.problem, status: message.problem.status }, this.fields);
    }
  }

  async sendFrame() {
    const socket = this.socket;
    // Never pile frames up in the browser either: skip a tick while the last one is still going out.
    if (!socket || socket.readyState !== WebSocket.OPEN || socket.bufferedAmount > 0 || this.encoding) return;
    this.encoding = true;
    try {
      const blob = await grabFrame(this.video, this.size, FRAME_TYPE, FRAME_QUALITY);
      if (!blob || socket.readyState !== WebSocket.OPEN) return;
      socket.send(blob);
      this.sent += 1;
      this.sentAt.set(this.sent, performance.now());
      this.sentAt.delete(this.sent - 300);
    } finally {
      this.encoding = false;
    }
  }

  async draw(blob, meta) {
    const now = performance.now();
    const bitmap = await createImageBitmap(blob);
    if (this.canvas.width !== bitmap.width || this.canvas.height !== bitmap.height) {
      this.canvas.width = bitmap.width;
      this.canvas.height = bitmap.height;
    }
    this.canvas.getContext('2d').drawImage(bitmap, 0, 0);
    bitmap.close();
    this.framesBack += 1;
    this.arrivals.push(now);
    while (this.arrivals.length > 2 && now - this.arrivals[0] > FPS_WINDOW_MS) this.arrivals.shift();
    const span = (this.arrivals[this.arrivals.length - 1] - this.arrivals[0]) / 1000;
    const fps = span > 0 ? (this.arrivals.length - 1) / span : 0;
    $('#live-fps').textContent = fps ? fps.toFixed(1) : '–';
    $('#live-frames').textContent = String(this.framesBack);
    if (meta) {
      const sentAt = this.sentAt.get(meta.seq);
      if (sentAt !== undefined) $('#live-latency').textContent = formatMs(now - sentAt);
      $('#live-dropped').textContent = String(meta.dropped);
    }
  }

  onClose(event) {
    if (event.code !== 1000 && event.code !== 1005 && !this.problemShown && !this.ended) {
      showProblem(this.errorBox, {
        problem: { title: 'The live stream closed', detail: event.reason || `Connection closed (code ${event.code}).` },
      });
    }
    this.stop(this.ended ? undefined : 'Disconnected.');
  }

  stop(message) {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000, 'bye');
    closeCamera(this.video, this.stream);
    if (message) this.status.textContent = message;
    this.onEnd();
  }
}
