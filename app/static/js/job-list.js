// The caller's jobs of one kind as the server lists them (GET /jobs): newest first, each with Show
// and, once it has ended, Delete (DELETE /jobs/{id}, after a confirmation). The Gatys and video tabs
// use it, so a job queued from another browser or a script with the same API key is there too.

import { getJSON, request } from './api.js';
import { clearProblem, confirmDelete, el, showProblem } from './ui.js';

export const TERMINAL = new Set(['finished', 'failed', 'canceled']);

export class ServerJobList {
  /**
   * `list` is the <ul>; `describe(job)` the words after the job's id; `onShow(id)` opens a job;
   * `onDeleted(id)` lets the tab forget it; problems go to `errorBox`, the outcome to `status`, and
   * the keyboard focus to `focusAfterDelete` once a row is gone.
   */
  constructor(list, { kind, limit = 12, describe, onShow, onDeleted, errorBox, status, focusAfterDelete }) {
    Object.assign(this, { list, kind, limit, describe, onShow, onDeleted, errorBox, status, focusAfterDelete });
    this.jobs = null;
  }

  /** Read the list again; on failure keep what is shown (the list is a convenience). */
  async refresh() {
    try {
      this.jobs = (await getJSON(`/jobs?kind=${this.kind}&limit=${this.limit}`)).jobs;
    } catch {
      this.jobs ??= [];
    }
    this.render();
  }

  /** A status seen elsewhere (the job on display): a new job or one that just ended re-reads the list. */
  update(job) {
    const shown = this.jobs?.find((j) => j.id === job.id);
    if (shown && shown.state === job.state) return;
    if (!shown || TERMINAL.has(job.state)) {
      this.refresh();
    } else {
      shown.state = job.state;
      this.render();
    }
  }

  render() {
    if (!this.jobs?.length) {
      this.list.replaceChildren(el('li', { className: 'muted' }, 'No jobs yet.'));
      return;
    }
    this.list.replaceChildren(...this.jobs.map((job) => this.row(job)));
  }

  row(job) {
    const short = job.id.slice(0, 8);
    const when = job.created_at ? new Date(job.created_at).toLocaleString() : '';
    const actions = el('span', { className: 'row' });
    const showActions = () => actions.replaceChildren(
      el('button', { type: 'button', className: 'button-secondary', 'aria-label': `Show job ${short}`,
        onclick: () => this.onShow(job.id) }, 'Show'),
      TERMINAL.has(job.state) ? el('button', { type: 'button', className: 'button-quiet',
        'aria-label': `Delete job ${short}`, dataset: { delete: job.id }, onclick: askToDelete }, 'Delete') : null,
    );
    const askToDelete = () => confirmDelete(actions, {
      question: 'Delete it and everything it stored (your upload, the result) for good?',
      id: job.id,
      onConfirm: (button) => this.remove(job, button),
      restore: showActions,
    });
    showActions();
    return el(
      'li',
      {},
      el('span', {}, el('code', {}, short), ` · ${this.describe(job)} · `,
        el('span', { className: 'badge', dataset: { state: job.state } }, job.state),
        el('span', { className: 'muted small' }, ` ${when}`)),
      actions,
    );
  }

  async remove(job, button) {
    clearProblem(this.errorBox);
    button.disabled = true;
    try {
      await request(`/jobs/${job.id}`, { method: 'DELETE' });
      this.onDeleted(job.id);
      this.status.textContent = `Job ${job.id.slice(0, 8)} and everything it stored were deleted.`;
      await this.refresh();
      this.focusAfterDelete.focus(); // its row is gone: keep the keyboard focus nearby
    } catch (error) {
      button.disabled = false;
      showProblem(this.errorBox, error);
    }
  }
}
