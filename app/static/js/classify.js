// Tool 3: classify one or several images at once; each gets its top-k classes as bars.

import { request } from './api.js';
import { $, clearProblem, el, formatMs, setupDropzone, showBlob, showProblem } from './ui.js';

export function setupClassify() {
  const form = $('#classify-form');
  const input = $('#classify-files');
  const topK = $('#classify-top-k');
  const submit = $('#classify-submit');
  const status = $('#classify-status');
  const errorBox = $('#classify-error');
  const results = $('#classify-results');
  const fields = { file: input, top_k: topK };
  setupDropzone(input, () => clearProblem(errorBox, fields));

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const files = [...input.files];
    if (!files.length) {
      showProblem(errorBox, { problem: { title: 'Not ready yet', detail: 'Choose or drop at least one image.', field: 'file' } }, fields);
      return;
    }
    const data = new FormData();
    for (const file of files) data.append('file', file);
    data.append('top_k', topK.value || '3');
    submit.disabled = true;
    status.textContent = `Classifying ${files.length} image${files.length > 1 ? 's' : ''}…`;
    try {
      const body = await (await request('/classify', { method: 'POST', body: data })).json();
      results.replaceChildren(...body.results.map((result, i) => resultCard(result, files[i])));
      status.textContent = `Done in ${formatMs(body.inference_ms)} on the server (${body.model.backend}, ${body.model.device}).`;
    } catch (error) {
      status.textContent = '';
      showProblem(errorBox, error, fields);
    } finally {
      submit.disabled = false;
    }
  });
}

function resultCard(result, file) {
  const name = result.filename || file?.name || 'image';
  const img = el('img', { alt: name });
  if (file) showBlob(img, file);
  return el(
    'li',
    { className: 'classify-card' },
    img,
    el('h3', {}, name),
    el('ol', { className: 'bars', 'aria-label': `Classes for ${name}` }, ...result.predictions.map((p) => {
      const percent = p.probability * 100;
      const bar = el('span');
      bar.style.width = `${Math.max(percent, 0.5).toFixed(1)}%`;
      return el(
        'li',
        { className: 'bar-row' },
        el('span', { className: 'label' }, p.label),
        el('span', { className: 'bar', 'aria-hidden': 'true' }, bar),
        el('span', { className: 'value' }, `${percent.toFixed(1)}%`),
      );
    })),
  );
}
