// Tool: stylize a whole clip (POST /jobs/stylize-video) in a queue worker. Pick a video and a style
// from the same gallery as photos, follow the job frame by frame (frames done, frames/s, time left),
// cancel it, then play and download the result. The job on display comes back after a reload.

import { ServerJobList } from './job-list.js';
import {
  JobPreview, JobTracker, TERMINAL, fetchResult, jobMemory, jobParts, sendJobForm,
} from './jobs.js';
import { onStylesChanged, servedStyles } from './styles.js';
import { OWN_STYLE, galleryChoice, renderGallery, reportMissing } from './stylize.js';
import { $, clearProblem, formatMs, releaseMedia, setupDropzone, showMedia } from './ui.js';

const memory = jobMemory('atelier.videoJob');
const EXTENSIONS = { 'video/mp4': 'mp4', 'video/webm': 'webm', 'image/gif': 'gif' };
const PREVIEWABLE = /^(video\/|image\/gif$)/;
const OPTIONAL_FIELDS = ['size', 'fps', 'smoothing'];

export function setupVideo({ capabilities }) {
  const form = $('#video-form');
  const fileInput = $('#video-file');
  const gallery = $('#video-gallery');
  const ownInput = $('#video-style-image');
  const submit = $('#video-submit');
  const status = $('#video-status');
  const errorBox = $('#video-error');
  const sourceFrame = $('#video-source');
  const resultFrame = $('#video-result-frame');
  const download = $('#video-download');
  const info = $('#video-result-info');
  const fields = {
    file: fileInput,
    style: gallery,
    style_image: ownInput,
    size: $('#video-size'),
    fps: $('#video-fps'),
    format: $('#video-format'),
    smoothing: $('#video-smoothing'),
  };
  if (capabilities.videoMaxSize) {
    fields.size.max = capabilities.videoMaxSize;
    $('#video-size-most').textContent = String(capabilities.videoMaxSize);
  }

  setupDropzone(fileInput, (files) => {
    clearProblem(errorBox, fields);
    if (files[0] && PREVIEWABLE.test(files[0].type)) {
      showMedia(sourceFrame, files[0], { id: 'video-source-media', label: 'Your video' });
    } else {
      releaseMedia(sourceFrame);
    }
  });
  ownInput.addEventListener('change', () => clearProblem(errorBox, fields));
  const syncOwn = () => { $('#video-own-style').hidden = galleryChoice(gallery) !== OWN_STYLE; };
  gallery.addEventListener('change', () => {
    clearProblem(errorBox, fields);
    syncOwn();
  });
  onStylesChanged(() => {
    renderGallery(gallery, servedStyles(), {
      name: 'video-style', thumbnails: capabilities.thumbnails, ownPainting: capabilities.videoStyleImage,
    });
    syncOwn();
  });

  const list = capabilities.jobList ? new ServerJobList($('#video-jobs'), {
    kind: 'stylize-video',
    describe: (job) => `${job.progress?.total_frames ?? '?'} frames · ${job.options?.style || 'your painting'}`,
    onShow: (id) => {
      memory.save({ id });
      tracker.open(id);
    },
    onDeleted: (id) => {
      if (memory.load()?.id === id) memory.forget();
      if (tracker.jobId === id) tracker.close();
    },
    errorBox,
    status,
    focusAfterDelete: $('#video-jobs-title'),
  }) : null;
  const tracker = new JobTracker(jobParts('video-job'), {
    events: capabilities.events,
    memory,
    describe: describeProgress,
    onUpdate: (job) => list?.update(job),
    preview: new JobPreview('video-job', (frames, job) => (TERMINAL.has(job.state)
      ? `The last frame it made: ${frames} of ${job.progress.total_frames ?? job.progress.total_steps}`
      : `The newest frame: ${frames} of ${job.progress.total_frames ?? job.progress.total_steps} done`)),
    onOpen: () => {
      releaseMedia(resultFrame);
      download.hidden = true;
      info.textContent = '';
    },
    onFinished: showResult,
  });

  async function showResult(job) {
    try {
      const blob = await fetchResult(job);
      const style = job.options?.style || 'own-painting';
      const url = showMedia(resultFrame, blob, {
        id: 'video-result',
        label: `Stylized video (${style})`,
        fallback: 'This browser cannot play this video; download it instead.',
      });
      download.href = url;
      download.download = `atelier-${style.replace(/[^\w-]+/g, '_')}-${job.id.slice(0, 8)}.${
        EXTENSIONS[blob.type] || 'mp4'}`;
      download.textContent = blob.type === 'image/gif' ? 'Download the GIF' : 'Download the video';
      download.hidden = false;
      info.textContent = describeResult(job.result_info);
    } catch (error) {
      tracker.fail(error);
    }
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearProblem(errorBox, fields);
    const file = fileInput.files[0];
    const style = galleryChoice(gallery);
    if (reportMissing(errorBox, fields, { file, style, ownInput, noFile: 'Choose or drop a video first.' })) return;
    const data = new FormData();
    data.append('file', file);
    if (style === OWN_STYLE) data.append('style_image', ownInput.files[0]);
    else data.append('style', style);
    for (const name of OPTIONAL_FIELDS) {
      if (fields[name].value !== '') data.append(name, fields[name].value);
    }
    data.append('format', fields.format.value);
    const job = await sendJobForm('/jobs/stylize-video', data, { submit, status, errorBox, fields });
    if (!job) return;
    status.textContent = 'Job submitted: follow it frame by frame here.';
    tracker.start(job);
  });

  tracker.resume();
  if (list) {
    $('#video-jobs-section').hidden = false;
    list.refresh();
  }
}

/** "12 of 48 frames · 3.4 frames/s" (the tracker adds "about 11 s left" from the server's estimate) */
export function describeProgress(job) {
  const progress = job.progress || {};
  const total = progress.total_frames ?? progress.total_steps ?? 0;
  const done = progress.frames ?? progress.step ?? 0;
  if (job.state === 'queued') return `${total} frames, waiting for a worker`;
  const parts = [`${done} of ${total} frames`];
  const fps = progress.frames_per_s;
  if (fps > 0) parts.push(`${fps.toFixed(fps < 1 ? 2 : fps < 10 ? 1 : 0)} frames/s`);
  return parts.join(' · ');
}

/** What the finished job reports: "24 frames · 96×64 · h264 · 3.10 s of work (7.7 frames/s) · sound copied" */
function describeResult(info) {
  if (!info) return '';
  const parts = [`${info.frames} frames`, `${info.width}×${info.height}`, info.codec];
  if (Number.isFinite(info.seconds)) {
    parts.push(`${formatMs(info.seconds * 1000)} of work (${Number(info.frames_per_s).toFixed(1)} frames/s)`);
  }
  if (info.audio?.length) parts.push(`sound ${info.audio.join(', ')}`);
  const colour = { hlg: 'HDR (HLG) tone-mapped to SDR', pq: 'HDR (PQ) tone-mapped to SDR', bt2020: 'BT.2020 colours converted', p3: 'P3 colours converted' };
  if (colour[info.colour]) parts.push(colour[info.colour]);
  return parts.filter(Boolean).join(' · ');
}
