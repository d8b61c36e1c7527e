// Tool 1: stylize a photo (POST /stylize) with a style from the gallery, side by side with the photo.

import { parseServerTiming, request } from './api.js';
import { closeCamera, grabFrame, openCamera } from './camera.js';
import {
  $, bindRange, clearProblem, el, formatMs, setFiles, setupDropzone, showBlob, showProblem,
} from './ui.js';

const OWN_STYLE = '__own__';
const EXTENSIONS = { png: 'png', jpeg: 'jpg', webp: 'webp' };

export function setupStylize({ styles, capabilities }) {
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
  const fields = {
    file: fileInput,
    size: $('#stylize-size'),
    strength: $('#stylize-strength'),
    format: $('#stylize-format'),
    preserve_color: $('#stylize-keep-colors'),
    style_image: ownInput,
    style_weights: blendWeight,
  };

  bindRange(fields.strength, $('#stylize-strength-out'));
  bindRange(blendWeight, $('#blend-weight-out'));
  setupDropzone(fileInput, (files) => {
    clearProblem(errorBox, fields);
    if (files[0]) showBlob(photo, files[0]);
  });
  renderGallery(styles, capabilities);
  fields.style = $('#style-gallery input');
  setupSnapshot(fileInput);

  const gallery = $('#style-gallery');
  gallery.addEventListener('change', () => {
    $('#own-style').hidden = chosenStyle() !== OWN_STYLE;
  });
  if (capabilities.blend && styles.length >= 2) {
    $('#blend-box').hidden = false;
    blendOn.addEventListener('change', () => {
      $('#blend-box .blend-controls').hidden = !blendOn.checked;
      fillBlendChoices();
    });
    gallery.addEventListener('change', fillBlendChoices);
  }

  function chosenStyle() {
    return $('#style-gallery input:checked')?.value || '';
  }

  function fillBlendChoices() {
    const first = chosenStyle();
    const keep = blendStyle.value;
    blendStyle.replaceChildren(
      ...styles.filter((s) => s.name !== first).map((s) => el('option', { value: s.name }, s.title || s.name)),
    );
    if ([...blendStyle.options].some((o) => o.value === keep)) blendStyle.value = keep;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const file = fileInput.files[0];
    const style = chosenStyle();
    const missing = !file ? ['file', 'Choose, drop or snap a photo first.']
      : !style ? ['style', 'Pick a style first.']
        : style === OWN_STYLE && !ownInput.files[0] ? ['style_image', 'Choose the painting to use as the style.']
          : null;
    if (missing) {
      showProblem(errorBox, { problem: { title: 'Not ready yet', detail: missing[1], field: missing[0] } }, fields);
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

function describeTiming(headers, roundTrip) {
  const parts = parseServerTiming(headers.get('Server-Timing')).map(([name, ms]) => `${name} ${formatMs(ms)}`);
  const batch = headers.get('X-Atelier-Batch-Size');
  const model = headers.get('X-Atelier-Model');
  const server = parts.length ? `Server: ${parts.join(' · ')}.` : '';
  const extra = [batch && `batch of ${batch}`, model && `model ${model}`].filter(Boolean).join(', ');
  return `${server} Round trip ${formatMs(roundTrip)}${extra ? ` (${extra})` : ''}.`.trim();
}

function renderGallery(styles, capabilities) {
  const gallery = $('#style-gallery');
  if (!styles.length && !capabilities.styleImage) {
    gallery.replaceChildren(el('p', { className: 'muted' }, 'No style network is loaded on this server.'));
    return;
  }
  const cards = styles.map((style, i) => styleCard(style, i === 0, capabilities.thumbnails));
  if (capabilities.styleImage) {
    cards.push(el(
      'label',
      { className: 'style-card' },
      el('input', { type: 'radio', name: 'style', value: OWN_STYLE, checked: !styles.length }),
      el('span', { className: 'swatch', 'aria-hidden': 'true' }, '+'),
      el('span', { className: 'caption' }, el('strong', {}, 'Your own painting'), 'Upload any image'),
    ));
    $('#own-style').hidden = Boolean(styles.length);
  }
  gallery.replaceChildren(...cards);
}

function styleCard(style, checked, thumbnails) {
  const title = style.title || style.name;
  const initials = title.split(/\s+/).filter((w) => /^[A-Z0-9]/i.test(w)).slice(-2).map((w) => w[0]).join('');
  const swatch = el('span', { className: 'swatch', 'aria-hidden': 'true' }, initials.toUpperCase());
  const card = el(
    'label',
    { className: 'style-card', title: `${title}${style.artist ? ` by ${style.artist}` : ''}` },
    el('input', { type: 'radio', name: 'style', value: style.name, checked }),
    swatch,
    el(
      'span',
      { className: 'caption' },
      el('strong', {}, title),
      [style.artist, style.year].filter(Boolean).join(', '),
      style.status && style.status !== 'production' ? el('span', { className: 'tag' }, style.status) : null,
    ),
  );
  if (thumbnails) {
    request(`/styles/${encodeURIComponent(style.name)}/thumbnail`)
      .then((response) => response.blob())
      .then((blob) => {
        const img = el('img', { alt: '' });
        showBlob(img, blob);
        swatch.replaceWith(img);
      })
      .catch(() => {}); // keep the text card
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
