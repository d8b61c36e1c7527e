// Every request the page makes goes through here: the API key, problem details, feature detection.

const KEY_STORAGE = 'atelier.apiKey';
const MAX_KEY_PROMPTS = 3;

/** An error answer of the API, carrying its RFC 9457 problem (title, detail, field, ...). */
export class ApiError extends Error {
  constructor(status, problem, headers = new Headers()) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.headers = headers;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || '';
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

// Replaced by auth.js: asks the person for a key; resolves to true when one was entered.
let askForKey = async () => false;
export function onKeyNeeded(handler) {
  askForKey = handler;
}

export function authHeaders(headers = {}) {
  const result = new Headers(headers);
  const key = apiKey();
  if (key) result.set('Authorization', `Bearer ${key}`);
  return result;
}

async function readProblem(response) {
  const type = response.headers.get('Content-Type') || '';
  try {
    if (type.includes('json')) {
      const body = await response.json();
      if (body && typeof body === 'object') return body;
    }
    const text = (await response.text()).trim();
    return { title: response.statusText || `HTTP ${response.status}`, detail: text.slice(0, 300) };
  } catch {
    return { title: response.statusText || `HTTP ${response.status}` };
  }
}

/**
 * fetch() with the API key; resolves to the Response when it is 2xx, otherwise throws ApiError.
 * A 401 that asks for credentials (WWW-Authenticate) opens the key dialog and retries.
 */
export async function request(path, options = {}, attempt = 0) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, {
      title: 'Cannot reach the server',
      detail: 'The request did not get through. Is Atelier still running?',
    });
  }
  if (response.ok) return response;
  const problem = await readProblem(response);
  if (response.status === 401 && response.headers.has('WWW-Authenticate') && attempt < MAX_KEY_PROMPTS) {
    if (await askForKey(problem, attempt > 0 || Boolean(apiKey()))) {
      return request(path, options, attempt + 1);
    }
  }
  throw new ApiError(response.status, problem, response.headers);
}

// Job submissions whose answer never came back, by path: the key to send again and what it was for.
const unansweredSubmissions = new Map();

function randomKey() {
  // crypto.randomUUID needs a secure context; a page over plain HTTP from a LAN address has only getRandomValues.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function formSignature(data) {
  return JSON.stringify([...data.entries()].map(([name, value]) => (
    [name, value instanceof File ? [value.name, value.size, value.lastModified] : value])));
}

/**
 * POST a form that queues a job, safe to click again when the answer was lost: the same form is sent
 * with the same Idempotency-Key until an answer arrives, so the server hands back the job it already
 * queued instead of queueing a second one. Resolves to the job's JSON.
 */
export async function submitJob(path, data) {
  const signature = formSignature(data);
  let held = unansweredSubmissions.get(path);
  if (!held || held.signature !== signature) {
    held = { signature, key: randomKey() };
    unansweredSubmissions.set(path, held);
  }
  try {
    const response = await request(path, { method: 'POST', body: data, headers: { 'Idempotency-Key': held.key } });
    unansweredSubmissions.delete(path);
    return response.json();
  } catch (error) {
    if (error instanceof ApiError && error.status !== 0 && error.status !== 409 && error.status < 500) {
      unansweredSubmissions.delete(path); // answered: the server freed the key; a fix gets a new one
    }
    throw error;
  }
}

export async function getJSON(path, options) {
  return (await request(path, options)).json();
}

/** What this server offers beyond the basics, read from its OpenAPI document (never guessed). */
export async function detectCapabilities() {
  let spec = {};
  try {
    spec = await getJSON('/openapi.json');
  } catch {
    // No schema (disabled, or a proxy hides it): offer only what every Atelier has.
  }
  const paths = spec.paths || {};
  const stylizeFields = formFields(spec, '/stylize');
  const videoFields = formFields(spec, '/jobs/stylize-video');
  const styleFields = formFields(spec, '/styles');
  const imageJobFields = formFields(spec, '/jobs/stylize-image');
  return {
    thumbnails: '/styles/{name}/thumbnail' in paths,
    styleImage: stylizeFields.has('style_image'),
    blend: stylizeFields.has('style_weights'),
    stylizeMaxSize: stylizeFields.get('size')?.maximum,
    imageJobMaxSize: imageJobFields.has('file') ? imageJobFields.get('size')?.maximum : undefined,
    events: '/jobs/{job_id}/events' in paths,
    jobList: Boolean(paths['/jobs']?.get),
    video: videoFields.has('file'),
    videoStyleImage: videoFields.has('style_image'),
    videoMaxSize: videoFields.get('size')?.maximum,
    customStyles: styleFields.has('image') && styleFields.has('name'),
    customStyleMaxIterations: styleFields.get('iterations')?.maximum,
    deleteStyles: Boolean(paths['/styles/{name}']?.delete),
  };
}

/** The fields of an operation's multipart form, name -> JSON schema (empty when there is none). */
function formFields(spec, path) {
  let schema = spec.paths?.[path]?.post?.requestBody?.content?.['multipart/form-data']?.schema;
  if (schema?.$ref) schema = spec.components?.schemas?.[schema.$ref.split('/').pop()];
  return new Map(Object.entries(schema?.properties || {}));
}

/** "decode;dur=1.2, infer;dur=240" -> [["decode", 1.2], ["infer", 240]] */
export function parseServerTiming(header) {
  if (!header) return [];
  return header.split(',').map((part) => {
    const [name, ...params] = part.trim().split(';');
    const dur = params.map((p) => p.trim()).find((p) => p.startsWith('dur='));
    return [name, dur ? Number(dur.slice(4)) : NaN];
  }).filter(([name, ms]) => name && Number.isFinite(ms));
}

/**
 * Read a server-sent event stream with fetch (so the Authorization header goes along, which
 * EventSource cannot do). Calls onEvent(name, data) per event; resolves when the server closes.
 */
export async function readEventStream(path, onEvent, signal) {
  const response = await request(path, { headers: { Accept: 'text/event-stream' }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') name = text;
        else if (field === 'data') data.push(text);
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}
