// Tool 2: Gatys jobs. Submit, watch live (server-sent events; polling as a fallback), cancel,
// show and download the result. Recent jobs are remembered in localStorage across reloads.
// followJob and JobTracker (progress, state, cancel of one job on display) serve the video and
// custom-style tools too.

import { getJSON, readEventStream, request, submitJob } from './api.js';
import { LossChart } from './chart.js';
import { ServerJobList, TERMINAL } from './job-list.js';
import { $, clearProblem, el, setupDropzone, showBlob, showProblem } from './ui.js';

export { TERMINAL };

const STORAGE_KEY = 'atelier.jobs';
const KEEP_JOBS = 12;
const POLL_MS = 1000;
const OPTIONAL_NUMBERS = ['content_weight', 'style_weight', 'tv_weight'];
const SAVED_POINTS = 300; // loss-curve points kept per job, so the curve survives a reload

function loadRecent() {
  try {
    const jobs = JSON.parse(localStorage.getItem(STORAGE_KEY) || '[]');
    return Array.isArray(jobs) ? jobs.filter((j) => j && typeof j.id === 'string') : [];
  } catch {
    return [];
  }
}

function saveRecent(jobs) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(jobs.slice(0, KEEP_JOBS)));
}

export function setupJobs({ capabilities }) {
  const form = $('#job-form');
  const submit = $('#job-submit');
  const status = $('#job-status');
  const errorBox = $('#job-error');
  const fields = {
    content: $('#job-content'),
    style: $('#job-style'),
    size: $('#job-size'),
    steps: $('#job-steps'),
    optimizer: $('#job-optimizer'),
    init: $('#job-init'),
    preserve_color: $('#job-preserve-color'),
    content_weight: $('#job-content-weight'),
    style_weight: $('#job-style-weight'),
    tv_weight: $('#job-tv-weight'),
    seed: $('#job-seed'),
  };
  setupDropzone(fields.content, () => clearProblem(errorBox, fields));
  setupDropzone(fields.style, () => clearProblem(errorBox, fields));
  const view = new GatysJobView(capabilities, remember);

  // With GET /jobs the list is the server's (every browser and script with this API key); this
  // browser's own memory then only keeps the loss curves it saw. Without it, this browser's memory.
  const serverList = capabilities.jobList ? new ServerJobList($('#recent-jobs'), {
    kind: 'optimize',
    limit: KEEP_JOBS,
    describe: (job) => `${job.options?.size ?? '?'} px, ${job.progress?.total_steps ?? '?'} steps`,
    onShow: (id) => view.open(id),
    onDeleted: (id) => {
      saveRecent(loadRecent().filter((j) => j.id !== id));
      if (view.tracker.jobId === id) view.tracker.close();
    },
    errorBox,
    status,
    focusAfterDelete: $('#recent-title'),
  }) : null;
  if (serverList) {
    $('#recent-note').textContent =
      'Your Gatys jobs on this server, from any browser or script with the same API key.';
  }

  function remember(job) {
    const jobs = loadRecent();
    const index = jobs.findIndex((j) => j.id === job.id);
    const entry = { ...(index >= 0 ? jobs[index] : {}), ...job };
    if (index >= 0) jobs.splice(index, 1);
    jobs.unshift(entry);
    saveRecent(jobs);
    if (serverList) serverList.update(job);
    else renderRecent();
  }

  /** This browser's memory of its jobs: the list on a server without GET /jobs. */
  function renderRecent() {
    const list = $('#recent-jobs');
    const jobs = loadRecent();
    if (!jobs.length) {
      list.replaceChildren(el('li', { className: 'muted' }, 'No jobs yet.'));
      return;
    }
    list.replaceChildren(...jobs.map((job) => {
      const when = job.submittedAt ? new Date(job.submittedAt).toLocaleString() : '';
      const short = job.id.slice(0, 8);
      return el(
        'li',
        {},
        el('span', {}, el('code', {}, short), ` · ${job.size ?? '?'} px, ${job.steps ?? '?'} steps · `,
          el('span', { className: 'badge', dataset: { state: job.state || 'queued' } }, job.state || '?'),
          el('span', { className: 'muted small' }, ` ${when}`)),
        el('span', { className: 'row' },
          el('button', { type: 'button', className: 'button-secondary', 'aria-label': `Show job ${short}`,
            onclick: () => view.open(job.id) }, 'Show'),
          el('button', { type: 'button', className: 'button-quiet', 'aria-label': `Forget job ${short}`,
            onclick: () => { saveRecent(loadRecent().filter((j) => j.id !== job.id)); renderRecent(); } },
          'Forget')),
      );
    }));
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const missing = !fields.content.files.length ? ['content', 'Choose the photo to repaint.']
      : !fields.style.files.length ? ['style', 'Choose at least one painting.'] : null;
    if (missing) {
      showProblem(errorBox, { problem: { title: 'Not ready yet', detail: missing[1], field: missing[0] } }, fields);
      return;
    }
    const data = new FormData();
    data.append('content', fields.content.files[0]);
    for (const file of fields.style.files) data.append('style', file);
    for (const name of ['size', 'steps', 'optimizer', 'init', 'seed', ...OPTIONAL_NUMBERS]) {
      if (fields[name].value !== '') data.append(name, fields[name].value);
    }
    data.append('preserve_color', String(fields.preserve_color.checked));
    const job = await sendJobForm('/jobs/optimize', data, { submit, status, errorBox, fields });
    if (!job) return;
    status.textContent = 'Job submitted; its progress is shown on the right.';
    remember({
      id: job.id, state: job.state, submittedAt: Date.now(),
      size: job.options?.size ?? fields.size.value, steps: job.progress.total_steps,
    });
    view.open(job.id, job);
  });

  const latest = loadRecent()[0];
  if (latest) view.open(latest.id);
  if (serverList) {
    serverList.refresh().then(() => { // another device's newest job, in a browser that has none of its own
      if (!latest && serverList.jobs.length) view.open(serverList.jobs[0].id);
    });
  } else {
    renderRecent();
  }
}

/**
 * Follow a job until it ends: its server-sent events (GET /jobs/{id}/events) where the server has
 * them, polling GET /jobs/{id} otherwise or once the stream breaks. onUpdate(job) gets each status;
 * onProblem(error) an `error` event or a 404 (unknown or expired: following stops there).
 */
export async function followJob(jobId, { events, signal, onUpdate, onProblem, onTransport = () => {} }) {
  let state = null;
  const update = (job) => {
    if (job.id !== jobId) return;
    state = job.state;
    onUpdate(job);
  };
  if (events) {
    try {
      onTransport('live (server-sent events)');
      await readEventStream(`/jobs/${jobId}/events`, (name, data) => {
        if (signal.aborted) return;
        const body = JSON.parse(data);
        if (name === 'error') onProblem({ problem: body, status: body.status });
        else update(body);
      }, signal);
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 404) { onProblem(error); return; }
    }
  }
  if (signal.aborted || TERMINAL.has(state)) return;
  onTransport('polling');
  let delay = POLL_MS;
  while (!signal.aborted && !TERMINAL.has(state)) {
    try {
      update(await getJSON(`/jobs/${jobId}`, { signal }));
      delay = POLL_MS;
    } catch (error) {
      if (signal.aborted) return;
      if (error.status === 404) { onProblem(error); return; }
      delay = Math.min(delay * 2, 15000); // server or network trouble: back off, keep trying
    }
    if (!TERMINAL.has(state)) await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

/** The elements of a job view with ids `${prefix}-view`, `${prefix}-id`, `${prefix}-state`, ... */
export function jobParts(prefix) {
  const names = ['view', 'id', 'state', 'detail', 'progress', 'percent', 'transport', 'failure', 'cancel'];
  return Object.fromEntries(names.map((name) => [name, $(`#${prefix}-${name}`)]));
}

/**
 * One job on display at a time: its id, state badge, progress bar and percent, a line of detail
 * (describe(job)), how it is followed, why it failed, and a cancel button. Hooks: onOpen(jobId,
 * initial) before following, onUpdate(job) after each status, onFinished(job) once, and onGone(error)
 * for a job the server no longer knows (return true when handled, else the problem is shown).
 * With `memory` (a jobMemory) the job shown is remembered across reloads: start() it after a submit,
 * resume() it on load; a remembered job the server has since forgotten is dropped quietly.
 */
export class JobTracker {
  constructor(parts, { events, memory, describe = () => '', onOpen, onUpdate, onFinished, onGone, preview } = {}) {
    Object.assign(this, { parts, events, memory, describe, onOpen, onUpdate, onFinished, onGone, preview });
    this.controller = null;
    this.jobId = null;
    this.state = null;
    this.reopened = false; // shown again after a reload rather than just submitted
    parts.cancel.addEventListener('click', () => this.cancel());
  }

  /** Show a job just submitted (and remember it). */
  start(job) {
    this.reopened = false;
    this.memory?.save({ id: job.id });
    this.open(job.id, job);
  }

  /** Show the remembered job again, if any (after a reload). */
  resume() {
    const saved = this.memory?.load();
    if (!saved) return;
    this.reopened = true;
    this.open(saved.id);
  }

  open(jobId, initial) {
    this.controller?.abort();
    this.controller = new AbortController();
    const { signal } = this.controller;
    const { parts } = this;
    this.jobId = jobId;
    this.state = null;
    this.finished = false;
    parts.view.hidden = false;
    parts.id.textContent = jobId.slice(0, 8);
    parts.id.title = jobId;
    clearProblem(parts.failure);
    parts.cancel.hidden = false;
    this.preview?.open(jobId);
    this.onOpen?.(jobId, initial);
    if (initial) this.update(initial);
    followJob(jobId, {
      events: this.events,
      signal,
      onUpdate: (job) => this.update(job),
      onProblem: (error) => this.problem(error),
      onTransport: (how) => { parts.transport.textContent = `· ${how}`; },
    });
  }

  /** Stop following and hide the view. */
  close() {
    this.controller?.abort();
    this.jobId = null;
    this.parts.view.hidden = true;
  }

  update(job) {
    if (job.id !== this.jobId) return;
    const { parts } = this;
    this.state = job.state;
    const percent = job.state === 'finished' ? 100 : Math.min(100, job.progress?.percent || 0);
    parts.state.textContent = job.state;
    parts.state.dataset.state = job.state;
    parts.detail.textContent = [this.describe(job), describeWait(job)].filter(Boolean).join(' · ');
    parts.progress.value = percent;
    parts.progress.textContent = `${percent.toFixed(0)}%`;
    parts.percent.textContent = `${percent.toFixed(percent === 100 ? 0 : 1)}%`;
    parts.cancel.hidden = TERMINAL.has(job.state);
    this.onUpdate?.(job);
    this.preview?.update(job);
    if (job.state === 'failed') {
      this.fail({ problem: { title: 'The job failed', detail: job.error || 'No reason was given.' } });
    } else if (job.state === 'canceled') {
      this.fail({ problem: { title: 'Canceled', detail: 'This job was canceled before it finished.' } });
    } else if (job.state === 'finished' && !this.finished) {
      this.finished = true;
      this.onFinished?.(job);
    }
  }

  problem(error) {
    if (error?.status === 404 && this.reopened && this.memory) { // expired since: quietly forget it
      this.memory.forget();
      this.close();
      return;
    }
    if (error?.status === 404 && this.onGone?.(error)) return;
    this.fail(error);
  }

  fail(error) {
    showProblem(this.parts.failure, error);
  }

  async cancel() {
    if (!this.jobId) return;
    const button = this.parts.cancel;
    button.disabled = true;
    try {
      this.update(await (await request(`/jobs/${this.jobId}`, { method: 'DELETE' })).json());
    } catch (error) {
      this.fail(error);
    } finally {
      button.disabled = false;
    }
  }
}

/**
 * The newest preview of the job on display (GET /jobs/{id}/preview: the image as it stands, a video's
 * newest frame, a photo in the style being learned), fetched whenever progress.preview_step moves, one fetch at a time. Hidden once the
 * job has finished (its result replaces it); a canceled or failed job keeps its last one, with a
 * download link: what it had got to. `caption(step, job)` says what the preview shows.
 */
export class JobPreview {
  constructor(prefix, caption) {
    this.box = $(`#${prefix}-preview-box`);
    this.img = $(`#${prefix}-preview`);
    this.text = $(`#${prefix}-preview-caption`);
    this.download = $(`#${prefix}-preview-download`);
    this.caption = caption;
    this.open(null);
  }

  open(jobId) {
    Object.assign(this, { jobId, shown: null, latest: null, busy: false });
    this.box.hidden = true;
    this.download.hidden = true;
  }

  update(job) {
    this.latest = job;
    if (!this.busy) this.refresh();
  }

  async refresh() {
    this.busy = true;
    try {
      while (this.latest) {
        const job = this.latest;
        this.latest = null;
        if (job.id === this.jobId) await this.show(job);
      }
    } finally {
      this.busy = false;
    }
  }

  async show(job) {
    if (job.state === 'finished') {
      this.box.hidden = true;
      return;
    }
    const step = job.progress?.preview_step;
    if (typeof step === 'number' && step !== this.shown) {
      try {
        const response = await request(job.links?.preview || `/jobs/${job.id}/preview`, { cache: 'no-store' });
        const shown = Number(response.headers.get('X-Atelier-Preview-Step') ?? step);
        const blob = await response.blob();
        if (job.id !== this.jobId) return; // another job was opened meanwhile
        const url = showBlob(this.img, blob);
        this.shown = shown;
        this.download.href = url;
        this.download.download = `atelier-preview-${job.id.slice(0, 8)}-${shown}.jpg`;
        this.box.hidden = false;
      } catch {
        // A preview is a courtesy: the next progress event tries again.
      }
    }
    if (this.shown === null) return;
    this.text.textContent = this.caption(this.shown, job); // the state may have changed, not the image
    this.download.hidden = !TERMINAL.has(job.state); // a finished job returned above: its result shows
  }
}

/** Where a job stands in time, from the server's figures: "2 jobs ahead", "next to start",
 * "about 3 min left"; '' when it says nothing (ended, or no progress yet). */
export function describeWait(job) {
  const ahead = job.jobs_ahead;
  if (job.state === 'queued' && Number.isInteger(ahead)) {
    return ahead === 0 ? 'next to start' : `${ahead} job${ahead === 1 ? '' : 's'} ahead`;
  }
  const left = job.state === 'started' && job.estimated_end_at
    ? (Date.parse(job.estimated_end_at) - Date.now()) / 1000 : 0;
  return left > 0 ? `about ${formatSeconds(left)} left` : '';
}

function formatSeconds(s) {
  if (s < 60) return `${Math.max(1, Math.ceil(s))} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

/** The Gatys job on display: a JobTracker plus its loss chart, its preview and result image. */
class GatysJobView {
  constructor(capabilities, remember) {
    this.chart = new LossChart($('#job-chart'), $('#job-legend'));
    this.tracker = new JobTracker({ ...jobParts('job'), detail: $('#job-step') }, {
      events: capabilities.events,
      describe: ({ progress }) => `step ${progress.step} of ${progress.total_steps}`,
      preview: new JobPreview('job', (step, job) => (TERMINAL.has(job.state)
        ? `Where it got to: step ${step} of ${job.progress.total_steps}`
        : `As it stands: step ${step} of ${job.progress.total_steps}`)),
      onOpen: (jobId, initial) => {
        $('#job-result-box').hidden = true;
        const saved = loadRecent().find((j) => j.id === jobId);
        this.chart.restore(saved?.points, initial?.progress?.total_steps || saved?.steps);
      },
      onUpdate: (job) => {
        this.chart.add(job.progress.step, job.progress.losses, job.progress.total_steps);
        remember({ id: job.id, state: job.state, points: this.chart.points.slice(-SAVED_POINTS) });
      },
      onFinished: (job) => this.showResult(job),
    });
  }

  open(jobId, initial) {
    this.tracker.open(jobId, initial);
  }

  async showResult(job) {
    try {
      const blob = await fetchResult(job);
      const url = showBlob($('#job-result'), blob);
      const link = $('#job-download');
      link.href = url;
      link.download = `atelier-gatys-${job.id.slice(0, 8)}.png`;
      $('#job-result-box').hidden = false;
    } catch (error) {
      this.tracker.fail(error);
    }
  }
}

/**
 * POST a job form from one of the tools: its button is disabled and its status says "Uploading…"
 * while the request runs; a refusal is shown next to the form's fields. Resolves to the job, or to
 * null when there is none (the problem is on display).
 */
export async function sendJobForm(path, data, { submit, status, errorBox, fields }) {
  submit.disabled = true;
  status.textContent = 'Uploading…';
  try {
    return await submitJob(path, data);
  } catch (error) {
    status.textContent = '';
    showProblem(errorBox, error, fields);
    return null;
  } finally {
    submit.disabled = false;
  }
}

/** A finished job's result as a Blob (its type is the result's media type). */
export async function fetchResult(job) {
  return (await request(job.result_url || `/jobs/${job.id}/result`)).blob();
}

/** The one job a tool shows, kept in localStorage under `key` so it comes back after a reload. */
export function jobMemory(key) {
  return {
    load() {
      try {
        const entry = JSON.parse(localStorage.getItem(key) || 'null');
        return entry && typeof entry.id === 'string' ? entry : null;
      } catch {
        return null;
      }
    },
    save(entry) { localStorage.setItem(key, JSON.stringify(entry)); },
    forget() { localStorage.removeItem(key); },
  };
}
