// Tool: your own fast styles. POST /styles teaches the server a new style from one painting (a queue
// job: progress, loss curves, cancel, then a preview of a photo it has not seen); once finished the
// style is in every gallery without a reload. The styles made so far are listed, each with a way
// to use it and a delete button (DELETE /styles/{name}, after a confirmation).

import { request } from './api.js';
import { LossChart } from './chart.js';
import {
  JobPreview, JobTracker, TERMINAL, fetchResult, jobMemory, jobParts, sendJobForm,
} from './jobs.js';
import { customStyles, initials, onStylesChanged, refreshStyles, thumbnailUrl } from './styles.js';
import { selectInGallery } from './stylize.js';
import { $, clearProblem, confirmDelete, el, setupDropzone, showBlob, showProblem } from './ui.js';

const memory = jobMemory('atelier.styleJob');
const NAME = /^[a-z0-9_-]{1,40}$/;
const LISTED_WITHIN_TRIES = 20; // GET /styles tries (0.7 s apart) for a new style to reach this API process

/** "Water Lilies (1906)" -> "water_lilies_1906": a valid style name from a title. */
export function nameFrom(title) {
  return title.normalize('NFKD').replace(/[\u0300-\u036f]/g, '').toLowerCase()
    .replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '').slice(0, 40).replace(/_+$/, '');
}

export function setupCustomStyles({ capabilities }) {
  const form = $('#new-style-form');
  const painting = $('#new-style-image');
  const preview = $('#new-style-preview');
  const submit = $('#new-style-submit');
  const status = $('#new-style-status');
  const errorBox = $('#new-style-error');
  const list = $('#custom-styles');
  const listStatus = $('#custom-styles-status');
  const listError = $('#custom-styles-error');
  const fields = {
    image: painting,
    name: $('#new-style-name'),
    title: $('#new-style-title'),
    artist: $('#new-style-artist'),
    iterations: $('#new-style-iterations'),
  };
  if (capabilities.customStyleMaxIterations) fields.iterations.max = capabilities.customStyleMaxIterations;

  setupDropzone(painting, (files) => {
    clearProblem(errorBox, fields);
    if (files[0]) showBlob(preview, files[0]);
    else preview.hidden = true;
  });
  // The name follows the title until the person types a name of their own.
  let nameTyped = false;
  fields.name.addEventListener('input', () => { nameTyped = fields.name.value !== ''; });
  fields.title.addEventListener('input', () => {
    if (!nameTyped) fields.name.value = nameFrom(fields.title.value);
  });
  for (const input of Object.values(fields)) input.addEventListener('input', () => clearProblem(errorBox, fields));

  const chart = new LossChart($('#style-job-chart'), $('#style-job-legend'));
  const tracker = new JobTracker(jobParts('style-job'), {
    events: capabilities.events,
    memory,
    describe: ({ state, progress }) => (state === 'queued' ? 'waiting for a worker'
      : `iteration ${progress.step} of ${progress.total_steps}`),
    preview: new JobPreview('style-job', (step, job) => (TERMINAL.has(job.state)
      ? `Where it got to: iteration ${step} of ${job.progress.total_steps}`
      : `The style so far, on a photo it does not train on: iteration ${step} of ${job.progress.total_steps}`)),
    onOpen: (jobId, initial) => {
      $('#style-job-result-box').hidden = true;
      $('#style-job-name').textContent = 'a style';
      chart.restore([], initial?.progress?.total_steps);
    },
    onUpdate: (job) => {
      const { name, title } = job.options || {};
      if (name) $('#style-job-name').textContent = `“${title || name}”`;
      chart.add(job.progress.step, job.progress.losses, job.progress.total_steps);
    },
    onFinished: finished,
  });

  async function finished(job) {
    const name = job.options?.name;
    try {
      showBlob($('#style-job-result'), await fetchResult(job));
    } catch {
      $('#style-job-result').hidden = true; // the preview is a bonus; the style itself is stored
    }
    $('#style-job-result-box').hidden = false;
    $('#style-job-use').hidden = true;
    if (!name) return;
    const styles = await refreshStyles({
      until: (all) => all.some((s) => s.name === name), tries: tracker.reopened ? 1 : LISTED_WITHIN_TRIES,
    });
    const listed = styles.find((s) => s.name === name);
    if (listed && listed.status !== 'stale') {
      $('#style-job-use').hidden = false;
      $('#style-job-use').onclick = () => useStyle(name);
      if (!tracker.reopened) status.textContent = `“${listed.title || name}” is ready: it is in the style gallery now.`;
    }
  }

  function useStyle(name) {
    $('#tab-stylize').click();
    const gallery = $('#style-gallery');
    if (selectInGallery(gallery, name)) gallery.querySelector('input:checked').focus();
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const name = fields.name.value.trim();
    const missing = !painting.files[0] ? ['image', 'Choose or drop the painting to learn.']
      : !name ? ['name', 'Give the style a short name (or a title to make one from).']
        : !NAME.test(name) ? ['name', 'The short name may have only a-z, 0-9, _ and -, at most 40 of them.']
          : null;
    if (missing) {
      showProblem(errorBox, { problem: { title: 'Not ready yet', detail: missing[1], field: missing[0] } }, fields);
      return;
    }
    const data = new FormData();
    data.append('image', painting.files[0]);
    data.append('name', name);
    for (const key of ['title', 'artist', 'iterations']) {
      const value = fields[key].value.trim();
      if (value !== '') data.append(key, value);
    }
    const job = await sendJobForm('/styles', data, { submit, status, errorBox, fields });
    if (!job) return;
    status.textContent = `Learning “${name}”: a queue worker trains it; follow it here.`;
    tracker.start(job);
  });

  onStylesChanged(() => renderList());

  function renderList() {
    const styles = customStyles();
    if (!styles.length) {
      list.replaceChildren(el('li', { className: 'muted' }, 'None yet: learn one from a painting.'));
      return;
    }
    list.replaceChildren(...styles.map(styleItem));
  }

  function styleItem(style) {
    const title = style.title || style.name;
    const swatch = el('span', { className: 'swatch', 'aria-hidden': 'true' }, initials(style));
    if (capabilities.thumbnails && style.has_thumbnail !== false) {
      thumbnailUrl(style).then((url) => {
        if (url) swatch.replaceWith(el('img', { alt: '', src: url }));
      });
    }
    const made = style.custom?.created_at ? new Date(style.custom.created_at).toLocaleDateString() : '';
    const about = [style.name, style.artist && `by ${style.artist}`, made].filter(Boolean).join(' · ');
    const actions = el('span', { className: 'row' });
    const item = el(
      'li',
      { dataset: { style: style.name } },
      swatch,
      el(
        'span',
        { className: 'style-about' },
        el('strong', {}, title),
        el('span', { className: 'badge', dataset: { state: style.status } }, style.status),
        el('span', { className: 'muted small' }, about),
        style.custom?.stale_reason ? el('span', { className: 'small' }, style.custom.stale_reason) : null,
      ),
      actions,
    );
    const showActions = () => {
      actions.replaceChildren(
        style.status === 'stale' ? null : el('button', {
          type: 'button', className: 'button-secondary', 'aria-label': `Use ${title} on a photo`,
          onclick: () => useStyle(style.name),
        }, 'Use it'),
        capabilities.deleteStyles ? el('button', {
          type: 'button', className: 'button-danger', 'aria-label': `Delete ${title}`,
          dataset: { delete: style.name }, onclick: askToDelete,
        }, 'Delete') : null,
      );
    };
    const askToDelete = () => confirmDelete(actions, {
      question: `Delete “${title}” for good?`,
      id: style.name,
      onConfirm: (button) => remove(style, button),
      restore: showActions,
    });
    showActions();
    return item;
  }

  async function remove(style, button) {
    clearProblem(listError);
    listStatus.textContent = '';
    button.disabled = true;
    try {
      await request(`/styles/${encodeURIComponent(style.name)}`, { method: 'DELETE' });
      await refreshStyles({ until: (all) => !all.some((s) => s.name === style.name), tries: 5 });
      listStatus.textContent = `“${style.title || style.name}” was deleted.`;
      $('#custom-styles-title').focus(); // its row is gone: keep the keyboard focus nearby
    } catch (error) {
      button.disabled = false;
      showProblem(listError, error);
    }
  }

  tracker.resume();
}
