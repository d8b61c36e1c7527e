// Small DOM helpers shared by the tools: errors in plain words, drop zones, images and videos from blobs.

export const $ = (selector, root = document) => root.querySelector(selector);

/** Create an element: el('p', {className: 'x'}, 'text', child) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('aria-') || key === 'role' || key === 'for') node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

const PLAIN_WORDS = {
  0: 'The server could not be reached.',
  401: 'This server needs an API key.',
  403: 'This API key may not do that.',
  404: 'Not found (or it expired).',
  409: 'Not possible right now.',
  413: 'That is too large for this server.',
  415: 'That file is not an image this server reads.',
  422: 'Something in the form needs fixing.',
  429: 'Too many requests; wait a moment.',
  503: 'The service is busy or not ready; try again shortly.',
};

/**
 * Show an error in `box` (a role="alert" element): the problem's title and detail, the form field
 * it is about (by its visible label), and mark that field invalid. `fields` maps API field names to
 * input elements of the form.
 */
export function showProblem(box, error, fields = {}) {
  clearProblem(box, fields);
  const problem = error?.problem || { title: 'Something went wrong', detail: String(error?.message || error) };
  const status = error?.status;
  const title = problem.title || PLAIN_WORDS[status] || 'Something went wrong';
  box.replaceChildren(el('strong', {}, title));
  if (problem.detail && problem.detail !== title) box.append(el('p', {}, problem.detail));
  else if (PLAIN_WORDS[status]) box.append(el('p', {}, PLAIN_WORDS[status]));
  const input = problem.field && fields[problem.field];
  if (input) {
    const label = input.dataset.label || input.labels?.[0]?.textContent?.trim() || problem.field;
    box.append(el('p', { className: 'small' }, `About: ${label}`));
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', box.id);
  } else if (problem.field) {
    box.append(el('p', { className: 'small' }, `Field: ${problem.field}`));
  }
  const retry = error?.headers?.get?.('Retry-After');
  if (retry) box.append(el('p', { className: 'small' }, `You can retry in about ${retry} s.`));
  if (problem.request_id) {
    box.append(el('p', { className: 'small muted' }, `Reference for a report: ${problem.request_id}`));
  }
  box.hidden = false;
  box.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
}

export function clearProblem(box, fields = {}) {
  box.hidden = true;
  box.replaceChildren();
  for (const input of Object.values(fields)) {
    if (!input) continue;
    input.removeAttribute('aria-invalid');
    if (input.getAttribute('aria-describedby') === box.id) input.removeAttribute('aria-describedby');
  }
}

/**
 * A label.dropzone around a file input: clicking or pressing Enter/Space opens the picker (the
 * input inside the label is focusable), dropping files sets them. onChange(files) gets the File list.
 */
export function setupDropzone(input, onChange) {
  const zone = input.closest('[data-dropzone]');
  const nameBox = zone.querySelector('[data-filename]');
  const show = () => {
    const files = [...input.files];
    nameBox.textContent = files.length ? files.map((f) => f.name).join(', ') : '';
    onChange?.(files);
  };
  input.addEventListener('change', show);
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('dragging');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('dragging'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('dragging');
    const files = [...event.dataTransfer.files].filter((f) => accepts(input, f));
    if (!files.length) return;
    setFiles(input, input.multiple ? files : files.slice(0, 1));
  });
  return { set: (files) => setFiles(input, files) };
}

/** Whether `file` fits the input's accept list (image/*, video/mp4, .gif); a file of no type does. */
function accepts(input, file) {
  const patterns = input.accept.split(',').map((p) => p.trim().toLowerCase()).filter(Boolean);
  if (!patterns.length || !file.type) return true;
  const type = file.type.toLowerCase();
  return patterns.some((p) => {
    if (p.startsWith('.')) return file.name.toLowerCase().endsWith(p);
    return p.endsWith('/*') ? type.startsWith(p.slice(0, -1)) : type === p;
  });
}

/** Put File objects into a file input (drops, camera snapshots) and fire its change event. */
export function setFiles(input, files) {
  const transfer = new DataTransfer();
  for (const file of files) transfer.items.add(file);
  input.files = transfer.files;
  input.dispatchEvent(new Event('change', { bubbles: true }));
}

/** Point an <img> at a blob; the previous object URL of that image is released. */
export function showBlob(img, blob) {
  if (img.dataset.objectUrl) URL.revokeObjectURL(img.dataset.objectUrl);
  const url = URL.createObjectURL(blob);
  img.dataset.objectUrl = url;
  img.onerror = () => { img.hidden = true; }; // not an image the browser can show: no broken icon
  img.src = url;
  img.hidden = false;
  return url;
}

/**
 * Show a video from a blob in `frame` with the browser's controls; an image/gif blob becomes an <img>.
 * Replaces (and releases) what the frame showed; a blob the browser cannot play leaves `fallback`.
 */
export function showMedia(frame, blob, { id, label, fallback = 'This browser cannot show this file.' }) {
  releaseMedia(frame);
  const url = URL.createObjectURL(blob);
  const media = blob.type.startsWith('image/')
    ? el('img', { id, alt: label })
    : el('video', { id, controls: true, loop: true, playsInline: true, preload: 'metadata', 'aria-label': label });
  media.dataset.objectUrl = url;
  media.onerror = () => frame.replaceChildren(el('p', { className: 'small muted' }, fallback));
  media.src = url;
  frame.replaceChildren(media);
  return url;
}

/** Empty a frame filled by showMedia, releasing its object URL. */
export function releaseMedia(frame) {
  for (const media of frame.querySelectorAll('[data-object-url]')) URL.revokeObjectURL(media.dataset.objectUrl);
  frame.replaceChildren();
}

/** Keep an <output> next to a range input in sync. */
export function bindRange(input, output, digits = 2) {
  const sync = () => { output.value = Number(input.value).toFixed(digits); };
  input.addEventListener('input', sync);
  sync();
}

export function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

/**
 * Ask in place before a deletion: `actions` (a row of buttons) becomes the question, a "Yes, delete"
 * button (data-confirm-delete = `id`) that calls onConfirm(button), and "Keep it", which puts the
 * row back with restore() and focuses its [data-delete] button again.
 */
export function confirmDelete(actions, { question, id, onConfirm, restore }) {
  const keep = el('button', { type: 'button', className: 'button-quiet', onclick: () => {
    restore();
    actions.querySelector('[data-delete]')?.focus();
  } }, 'Keep it');
  actions.replaceChildren(
    el('span', { className: 'small' }, question),
    el('button', { type: 'button', className: 'button-danger', dataset: { confirmDelete: id },
      onclick: (event) => onConfirm(event.currentTarget) }, 'Yes, delete'),
    keep,
  );
  keep.focus();
}
