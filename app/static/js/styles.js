// The styles this server offers (GET /styles), shared by every tool: read once at start, read again
// when a custom style is added or deleted, and every tool that lists styles redraws from here.

import { getJSON, request } from './api.js';

let list = [];
const listeners = new Set();
const thumbnails = new Map(); // key -> Promise of an object URL (or null: no thumbnail)

/** Every listed style, custom and stale ones included. */
export function allStyles() {
  return list;
}

/** The styles POST /stylize serves (a stale custom style is listed but not served). */
export function servedStyles() {
  return list.filter((s) => s.status !== 'stale');
}

/** Made with POST /styles: status custom (served) or stale (learned for other weights). */
export function isCustom(style) {
  return Boolean(style.custom) || style.status === 'custom' || style.status === 'stale';
}

export function customStyles() {
  return list.filter(isCustom);
}

/** Call listener(styles) now and whenever the list changes. */
export function onStylesChanged(listener) {
  listeners.add(listener);
  listener(list);
}

/**
 * Read GET /styles again and tell every listener. With `until`, keep reading (a new style reaches
 * every API process within a few seconds) until until(styles) holds or `tries` run out.
 */
export async function refreshStyles({ until = null, tries = 1, delayMs = 700 } = {}) {
  for (let attempt = 0; attempt < tries; attempt += 1) {
    if (attempt) await new Promise((resolve) => setTimeout(resolve, delayMs));
    try {
      list = (await getJSON('/styles')).styles || [];
    } catch {
      // keep what we had: a failed refresh must not empty the galleries
    }
    if (!until || until(list)) break;
  }
  for (const listener of listeners) listener(list);
  return list;
}

/** An object URL of the style's thumbnail, fetched once per style (null when it has none). */
export function thumbnailUrl(style) {
  const key = `${style.name}@${style.custom?.created_at || ''}`;
  if (!thumbnails.has(key)) {
    thumbnails.set(key, request(`/styles/${encodeURIComponent(style.name)}/thumbnail`)
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob))
      .catch(() => null));
  }
  return thumbnails.get(key);
}

/** "The Starry Night" -> "SN": the text of a card whose thumbnail is missing. */
export function initials(style) {
  const title = style.title || style.name;
  return title.split(/[\s_-]+/).filter((w) => /^[A-Z0-9]/i.test(w)).slice(-2).map((w) => w[0]).join('')
    .toUpperCase();
}
