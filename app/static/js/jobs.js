// Tool 2: Gatys jobs. Submit, watch live (server-sent events; polling as a fallback), cancel,
// show and download the result. Recent jobs are remembered in localStorage across reloads.

import { getJSON, readEventStream, request } from './api.js';
import { LossChart } from './chart.js';
import { $, clearProblem, el, setupDropzone, showBlob, showProblem } from './ui.js';

const STORAGE_KEY = 'atelier.jobs';
const KEEP_JOBS = 12;
const TERMINAL = new Set(['finished', 'failed', 'canceled']);
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
  const view = new JobView(capabilities, remember);

  function remember(job) {
    const jobs = loadRecent();
    const index = jobs.findIndex((j) => j.id === job.id);
    const entry = { ...(index >= 0 ? jobs[index] : {}), ...job };
    if (index >= 0) jobs.splice(index, 1);
    jobs.unshift(entry);
    saveRecent(jobs);
    renderRecent();
  }

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
    submit.disabled = true;
    status.textContent = 'Uploading…';
    try {
      const job = await (await request('/jobs/optimize', { method: 'POST', body: data })).json();
      status.textContent = 'Job submitted; its progress is shown on the right.';
      remember({
        id: job.id, state: job.state, submittedAt: Date.now(),
        size: job.options?.size ?? fields.size.value, steps: job.progress.total_steps,
      });
      view.open(job.id, job);
    } catch (error) {
      status.textContent = '';
      showProblem(errorBox, error, fields);
    } finally {
      submit.disabled = false;
    }
  });

  renderRecent();
  const latest = loadRecent()[0];
  if (latest) view.open(latest.id);
}

/** The job on display: its state, progress bar, loss chart, result; one job at a time. */
class JobView {
  constructor(capabilities, remember) {
    this.capabilities = capabilities;
    this.remember = remember;
    this.chart = new LossChart($('#job-chart'), $('#job-legend'));
    this.controller = null;
    this.jobId = null;
    $('#job-cancel').addEventListener('click', () => this.cancel());
  }

  open(jobId, initial) {
    this.controller?.abort();
    this.controller = new AbortController();
    this.jobId = jobId;
    this.state = null;
    this.resultShown = false;
    $('#job-view').hidden = false;
    $('#job-id').textContent = jobId.slice(0, 8);
    $('#job-id').title = jobId;
    $('#job-result-box').hidden = true;
    $('#job-failure').hidden = true;
    $('#job-cancel').hidden = false;
    const saved = loadRecent().find((j) => j.id === jobId);
    this.chart.restore(saved?.points, initial?.progress?.total_steps || saved?.steps);
    if (initial) this.update(initial);
    this.watch(jobId, this.controller.signal);
  }

  async watch(jobId, signal) {
    if (this.capabilities.events) {
      try {
        $('#job-transport').textContent = '· live (server-sent events)';
        await readEventStream(`/jobs/${jobId}/events`, (name, data) => {
          if (signal.aborted) return;
          const body = JSON.parse(data);
          if (name === 'error') this.fail({ problem: body, status: body.status });
          else this.update(body);
        }, signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 404) { this.fail(error); return; }
      }
    }
    if (signal.aborted || TERMINAL.has(this.state)) return;
    $('#job-transport').textContent = '· polling';
    await this.poll(jobId, signal);
  }

  async poll(jobId, signal) {
    let delay = POLL_MS;
    while (!signal.aborted && !TERMINAL.has(this.state)) {
      try {
        this.update(await getJSON(`/jobs/${jobId}`, { signal }));
        delay = POLL_MS;
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 404) { this.fail(error); return; }
        delay = Math.min(delay * 2, 15000); // server or network trouble: back off, keep trying
      }
      if (!TERMINAL.has(this.state)) await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }

  update(job) {
    if (job.id !== this.jobId) return;
    const { progress } = job;
    this.state = job.state;
    const percent = job.state === 'finished' ? 100 : Math.min(100, progress.percent || 0);
    const badge = $('#job-state');
    badge.textContent = job.state;
    badge.dataset.state = job.state;
    $('#job-step').textContent = `step ${progress.step} of ${progress.total_steps}`;
    $('#job-progress').value = percent;
    $('#job-progress').textContent = `${percent.toFixed(0)}%`;
    $('#job-percent').textContent = `${percent.toFixed(percent === 100 ? 0 : 1)}%`;
    this.chart.add(progress.step, progress.losses, progress.total_steps);
    $('#job-cancel').hidden = TERMINAL.has(job.state);
    this.remember({ id: job.id, state: job.state, points: this.chart.points.slice(-SAVED_POINTS) });
    if (job.state === 'failed') {
      this.fail({ problem: { title: 'The job failed', detail: job.error || 'No reason was given.' } });
    } else if (job.state === 'canceled') {
      this.fail({ problem: { title: 'Canceled', detail: 'This job was canceled before it finished.' } });
    } else if (job.state === 'finished' && !this.resultShown) {
      this.resultShown = true;
      this.showResult(job);
    }
  }

  fail(error) {
    showProblem($('#job-failure'), error);
  }

  async showResult(job) {
    try {
      const response = await request(job.result_url || `/jobs/${job.id}/result`);
      const url = showBlob($('#job-result'), await response.blob());
      const link = $('#job-download');
      link.href = url;
      link.download = `atelier-gatys-${job.id.slice(0, 8)}.png`;
      $('#job-result-box').hidden = false;
    } catch (error) {
      this.fail(error);
    }
  }

  async cancel() {
    if (!this.jobId) return;
    const button = $('#job-cancel');
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
