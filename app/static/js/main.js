// Entry point: tabs, server status, capabilities, then each tool.

import { ApiError, detectCapabilities, getJSON } from './api.js';
import { setupAuth } from './auth.js';
import { setupClassify } from './classify.js';
import { setupCustomStyles } from './custom-styles.js';
import { setupJobs } from './jobs.js';
import { setupLive } from './live.js';
import { refreshStyles } from './styles.js';
import { setupStylize } from './stylize.js';
import { setupVideo } from './video.js';
import { $ } from './ui.js';

const TABS = ['stylize', 'video', 'styles', 'jobs', 'classify', 'live'];

/** The tabs; a hidden tab (a feature this server does not offer) is skipped. Returns select(name). */
function setupTabs() {
  const all = TABS.map((name) => $(`#tab-${name}`));
  const shown = () => all.filter((tab) => !tab.hidden);
  const select = (name, focus = false) => {
    const tabs = shown();
    if (!tabs.some((tab) => tab.dataset.tab === name)) name = tabs[0].dataset.tab;
    for (const tab of all) {
      const selected = tab.dataset.tab === name;
      tab.setAttribute('aria-selected', String(selected));
      tab.tabIndex = selected ? 0 : -1;
      $(`#${tab.getAttribute('aria-controls')}`).hidden = !selected;
      if (selected && focus) tab.focus();
    }
  };
  for (const tab of all) {
    tab.addEventListener('click', () => {
      history.replaceState(null, '', `#${tab.dataset.tab}`);
      select(tab.dataset.tab);
    });
    tab.addEventListener('keydown', (event) => {
      const tabs = shown();
      const i = tabs.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      history.replaceState(null, '', `#${target.dataset.tab}`);
      select(target.dataset.tab, true);
    });
  }
  window.addEventListener('hashchange', () => select(location.hash.slice(1)));
  select(location.hash.slice(1));
  return select;
}

/** One line about /readyz: a missing job worker only matters for jobs, so it is not "not ready". */
function describeReadiness(body) {
  const checks = body?.checks || {};
  const alive = checks.workers?.alive ?? checks.redis?.workers_alive ?? 0;
  const device = checks.stylizer?.device || checks.classifier?.device;
  const workers = alive ? `${alive} job worker${alive > 1 ? 's' : ''}` : 'no job worker running';
  const failing = Object.entries(checks).filter(([name, c]) => !c.ok && name !== 'workers').map(([n]) => n);
  if (failing.length) return { ok: false, text: `Not ready: ${failing.join(', ')} · ${workers}` };
  return { ok: true, text: `Ready${device ? ` on ${device}` : ''} · ${workers}` };
}

async function showServerStatus() {
  const box = $('#server-status');
  let readiness;
  try {
    readiness = describeReadiness(await getJSON('/readyz'));
  } catch (error) {
    readiness = error instanceof ApiError && error.problem?.checks
      ? describeReadiness(error.problem)
      : { ok: false, text: 'Server not reachable' };
  }
  box.textContent = readiness.text;
  box.className = `server-status ${readiness.ok ? 'ok' : 'bad'}`;
}

const selectTab = setupTabs();
setupAuth();
const [capabilities] = await Promise.all([detectCapabilities(), refreshStyles()]);
// Tabs of optional features appear only where /openapi.json says the server has them.
$('#tab-video').hidden = !capabilities.video;
$('#tab-styles').hidden = !capabilities.customStyles;
selectTab(location.hash.slice(1));
setupStylize({ capabilities });
if (capabilities.video) setupVideo({ capabilities });
if (capabilities.customStyles) setupCustomStyles({ capabilities });
setupJobs({ capabilities });
setupClassify();
setupLive();
showServerStatus();
document.body.dataset.ready = 'true'; // the page is wired up (browser tests wait for this)
