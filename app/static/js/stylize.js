// Tool 1: stylize a photo (POST /stylize) with a style from the gallery, side by side with the photo.
// Larger than /stylize answers at once, a named style goes to POST /jobs/stylize-image instead and the
// job is followed here (the picture appears tile by tile). The gallery itself (renderGallery) is
// shared with the video tool.

import { parseServerTiming, request } from './api.js';
import { closeCamera, grabFrame, openCamera } from './camera.js';
import {
  JobPreview, JobTracker, TERMINAL, jobMemory, jobParts, sendJobForm,
} from './jobs.js';
import { initials, onStylesChanged, servedStyles, thumbnailUrl } from './styles.js';
import {
  $, bindRange, clearProblem, el, formatMs, setFiles, setupDropzone, showBlob, showProblem,
} from './ui.js';

export const OWN_STYLE = '__own__';
const EXTENSIONS = { png: 'png', jpeg: 'jpg', webp: 'webp' };

export function setupStylize({ capabilities }) {
  const form = $('#stylize-form');
  const fileInput = $('#stylize-file');
  const photo = $('#stylize-photo');
  const result = $('#stylize-result');
  const status = $('#stylize-status');
  const errorBox = $('#stylize-error');
  const submit = $('#stylize-submit');
  const download = $('#stylize-download');
  const timing = $('#stylize-timing');
  const ownInput = $('#stylize-style-image');
  const blendOn = $('#blend-on');
  const blendStyle = $('#blend-style');
  const blendWeight = $('#blend-weight');
  const gallery = $('#style-gallery');
  const fields = {
    file: fileInput,
    size: $('#stylize-size'),
    strength: $('#stylize-strength'),
    format: $('#stylize-format'),
    preserve_color: $('#stylize-keep-colors'),
    style: gallery,
    style_image: ownInput,
    style_weights: blendWeight,
  };

  const largeJobs = setupLargeJobs(capabilities, fields.size, { result, download, timing, format: fields.format });

  bindRange(fields.strength, $('#stylize-strength-out'));
  bindRange(blendWeight, $('#blend-weight-out'));
  setupDropzone(fileInput, (files) => {
    clearProblem(errorBox, fields);
    if (files[0]) showBlob(photo, files[0]);
  });
  setupSnapshot(fileInput);

  const chosenStyle = () => galleryChoice(gallery);
  const syncChoice = () => {
    $('#own-style').hidden = chosenStyle() !== OWN_STYLE;
    fillBlendChoices();
  };
  gallery.addEventListener('change', () => {
    clearProblem(errorBox, fields);
    syncChoice();
  });
  blendOn.addEventListener('change', () => {
    $('#blend-box .blend-controls').hidden = !blendOn.checked;
    fillBlendChoices();
  });
  onStylesChanged(() => {
    renderGallery(gallery, servedStyles(), {
      name: 'style', thumbnails: capabilities.thumbnails, ownPainting: capabilities.styleImage,
    });
    $('#blend-box').hidden = !(capabilities.blend && servedStyles().length >= 2);
    syncChoice();
  });

  function fillBlendChoices() {
    if ($('#blend-box').hidden) return;
    const first = chosenStyle();
    const keep = blendStyle.value;
    blendStyle.replaceChildren(...servedStyles().filter((s) => s.name !== first)
      .map((s) => el('option', { value: s.name }, s.title || s.name)));
    if ([...blendStyle.options].some((o) => o.value === keep)) blendStyle.value = keep;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const file = fileInput.files[0];
    const style = chosenStyle();
    if (reportMissing(errorBox, fields, { file, style, ownInput, noFile: 'Choose, drop or snap a photo first.' })) {
      return;
    }
    const data = new FormData();
    data.append('file', file);
    if (style === OWN_STYLE) {
      data.append('style_image', ownInput.files[0]);
    } else if (!$('#blend-box').hidden && blendOn.checked && blendStyle.value) {
      const w = Number(blendWeight.value);
      data.append('style', `${style},${blendStyle.value}`);
      data.append('style_weights', `${w.toFixed(2)},${(1 - w).toFixed(2)}`);
    } else {
      data.append('style', style);
    }
    if (fields.size.value) data.append('size', fields.size.value);
    data.append('strength', fields.strength.value);
    data.append('preserve_color', String(fields.preserve_color.checked));
    if (style !== OWN_STYLE && largeJobs?.wanted(Number(fields.size.value))) {
      await largeJobs.submit(data, { submit, status, errorBox, fields });
      return;
    }
    data.append('format', fields.format.value);

    submit.disabled = true;
    status.textContent = 'Painting…';
    const started = performance.now();
    try {
      const response = await request('/stylize', { method: 'POST', body: data });
      const blob = await response.blob();
      const roundTrip = performance.now() - started;
      const url = showBlob(result, blob);
      const styleName = response.headers.get('X-Atelier-Style') || style;
      download.href = url;
      download.download = `atelier-${styleName.replace(/[^\w-]+/g, '_')}.${EXTENSIONS[fields.format.value]}`;
      download.hidden = false;
      timing.textContent = describeTiming(response.headers, roundTrip);
      status.textContent = 'Done.';
    } catch (error) {
      status.textContent = '';
      showProblem(errorBox, error, fields);
    } finally {
      submit.disabled = false;
    }
  });
}

/**
 * Sizes above what /stylize answers at once go to POST /jobs/stylize-image (when the server has it):
 * the size field's bound becomes the job's, a hint says so, and the job on display is followed with its
 * preview, then its result replaces the result image. Null when the server offers no such job.
 */
function setupLargeJobs(capabilities, sizeInput, { result, download, timing, format }) {
  const now = capabilities.stylizeMaxSize;
  const most = capabilities.imageJobMaxSize;
  if (!now || !most || most <= now) return null;
  sizeInput.max = String(most);
  $('#stylize-size-now').textContent = String(now);
  $('#stylize-size-most').textContent = String(most);
  $('#stylize-size-hint').hidden = false;
  const tracker = new JobTracker(jobParts('stylize-job'), {
    events: capabilities.events,
    memory: jobMemory('atelier.stylizeJob'),
    describe: ({ state, progress }) => (state === 'queued' ? '' : `tile pass ${progress.step} of ${progress.total_steps}`),
    preview: new JobPreview('stylize-job', (step, job) => (TERMINAL.has(job.state)
      ? 'Where it got to' : 'Painted so far (the photo where no tile is done yet)')),
    onOpen: () => { download.hidden = true; },
    onFinished: async (job) => {
      try {
        const ext = EXTENSIONS[format.value];
        const response = await request(`${job.result_url}?format=${format.value}`);
        const url = showBlob(result, await response.blob());
        download.href = url;
        download.download = `atelier-${(job.options?.style || 'style').replace(/[^\w-]+/g, '_')}-${job.id.slice(0, 8)}.${ext}`;
        download.hidden = false;
        const info = job.result_info || {};
        timing.textContent = `${info.width}×${info.height}, painted in ${formatMs((info.seconds || 0) * 1000)} by a queue worker.`;
      } catch (error) {
        tracker.fail(error);
      }
    },
  });
  tracker.resume();
  return {
    wanted: (size) => size > now,
    async submit(data, form) {
      const job = await sendJobForm('/jobs/stylize-image', data, form);
      if (!job) return;
      form.status.textContent = 'A large photo: painted by a queue worker, followed below.';
      tracker.start(job);
    },
  };
}

function describeTiming(headers, roundTrip) {
  const parts = parseServerTiming(headers.get('Server-Timing')).map(([name, ms]) => `${name} ${formatMs(ms)}`);
  const batch = headers.get('X-Atelier-Batch-Size');
  const model = headers.get('X-Atelier-Model');
  const server = parts.length ? `Server: ${parts.join(' · ')}.` : '';
  const extra = [batch && `batch of ${batch}`, model && `model ${model}`].filter(Boolean).join(', ');
  return `${server} Round trip ${formatMs(roundTrip)}${extra ? ` (${extra})` : ''}.`.trim();
}

/** The value of the checked card of a gallery ('' when none is). */
/**
 * Before sending a form that takes a file and a style (photo or video): mark what is still missing
 * (the file, a style, or the painting when "your own painting" is chosen). True if something is.
 */
export function reportMissing(errorBox, fields, { file, style, ownInput, noFile }) {
  const missing = !file ? ['file', noFile]
    : !style ? ['style', 'Pick a style first.']
      : style === OWN_STYLE && !ownInput.files[0] ? ['style_image', 'Choose the painting to use as the style.']
        : null;
  if (missing) {
    showProblem(errorBox, { problem: { title: 'Not ready yet', detail: missing[1], field: missing[0] } }, fields);
  }
  return Boolean(missing);
}

export function galleryChoice(gallery) {
  return gallery.querySelector('input:checked')?.value || '';
}

/** Check the card of style `name` in a gallery (and say so with a change event, as a click would). */
export function selectInGallery(gallery, name) {
  const radio = [...gallery.querySelectorAll('input')].find((r) => r.value === name);
  if (!radio) return false;
  radio.checked = true;
  radio.dispatchEvent(new Event('change', { bubbles: true }));
  return true;
}

/**
 * Draw a gallery of style cards (radio buttons named `name`) into `gallery`, then a "Your own
 * painting" card when `ownPainting`. The checked style stays checked when it is still listed;
 * otherwise the first card is.
 */
export function renderGallery(gallery, styles, { name, thumbnails, ownPainting }) {
  const keep = galleryChoice(gallery);
  if (!styles.length && !ownPainting) {
    gallery.replaceChildren(el('p', { className: 'muted' }, 'No style network is loaded on this server.'));
    return;
  }
  const cards = styles.map((style) => styleCard(style, name, thumbnails));
  if (ownPainting) {
    cards.push(el(
      'label',
      { className: 'style-card' },
      el('input', { type: 'radio', name, value: OWN_STYLE }),
      el('span', { className: 'swatch', 'aria-hidden': 'true' }, '+'),
      el('span', { className: 'caption' }, el('strong', {}, 'Your own painting'), 'Upload any image'),
    ));
  }
  gallery.replaceChildren(...cards);
  const radios = [...gallery.querySelectorAll('input')];
  (radios.find((r) => r.value === keep) || radios[0]).checked = true;
}

function styleCard(style, name, thumbnails) {
  const title = style.title || style.name;
  const swatch = el('span', { className: 'swatch', 'aria-hidden': 'true' }, initials(style));
  const card = el(
    'label',
    { className: 'style-card', title: `${title}${style.artist ? ` by ${style.artist}` : ''}` },
    el('input', { type: 'radio', name, value: style.name }),
    swatch,
    el(
      'span',
      { className: 'caption' },
      el('strong', {}, title),
      [style.artist, style.year].filter(Boolean).join(', '),
      style.status && style.status !== 'production' ? el('span', { className: 'tag' }, style.status) : null,
    ),
  );
  if (thumbnails && style.has_thumbnail !== false) {
    thumbnailUrl(style).then((url) => {
      if (url) swatch.replaceWith(el('img', { alt: '', src: url }));
    });
  }
  return card;
}

function setupSnapshot(fileInput) {
  const box = $('#stylize-camera-box');
  const video = $('#stylize-video');
  const errorBox = $('#stylize-error');
  let stream = null;
  $('#stylize-camera').addEventListener('click', async () => {
    clearProblem(errorBox);
    try {
      box.hidden = false;
      stream = await openCamera(video);
      $('#stylize-snap').focus();
    } catch (error) {
      box.hidden = true;
      showProblem(errorBox, { problem: { title: 'No camera', detail: error.message } });
    }
  });
  const close = () => {
    closeCamera(video, stream);
    stream = null;
    box.hidden = true;
  };
  $('#stylize-camera-close').addEventListener('click', close);
  $('#stylize-snap').addEventListener('click', async () => {
    const blob = await grabFrame(video, 1024, 'image/jpeg', 0.92);
    if (!blob) return;
    const file = new File([blob], `snapshot-${Date.now()}.jpg`, { type: 'image/jpeg' });
    setFiles(fileInput, [file]);
    close();
  });
}
