// The API key dialog: opened when the server answers 401 with WWW-Authenticate (ATELIER_API_KEYS).

import { apiKey, onKeyNeeded, setApiKey } from './api.js';
import { $ } from './ui.js';

export function setupAuth() {
  const dialog = $('#key-dialog');
  const input = $('#key-input');
  const reason = $('#key-dialog-reason');
  const button = $('#api-key-button');
  let open = null; // one dialog for all the requests that need a key at the same time

  function ask(message) {
    if (open) return open;
    reason.textContent = message;
    input.value = '';
    dialog.returnValue = '';
    dialog.showModal();
    input.focus();
    open = new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        open = null;
        const key = input.value.trim();
        if (dialog.returnValue === 'save' && key) {
          setApiKey(key);
          button.hidden = false;
          resolve(true);
        } else {
          if (dialog.returnValue === 'forget') setApiKey('');
          resolve(false);
        }
      }, { once: true });
    });
    return open;
  }

  onKeyNeeded((problem, refused) => ask(
    `${refused ? 'That key was not accepted. ' : ''}${problem.detail || 'Enter an API key to continue.'}`,
  ));
  button.hidden = !apiKey();
  button.addEventListener('click', () => ask('Change or forget the API key this browser sends.'));
}
