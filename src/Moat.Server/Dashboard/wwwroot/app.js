// The dashboard's shell: sign-in, navigation (hash routes, so the server serves one page) and
// the refresh timers of the page on screen.
import { h, fill } from './dom.js';
import { api, session, ApiError } from './api.js';
import * as sandboxes from './sandboxes.js';
import * as sandbox from './sandbox.js';
import * as templates from './templates.js';
import * as usage from './usage.js';
import * as audit from './audit.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signout = document.getElementById('signout');
let cleanup = () => {};
let notice = null;

const routes = [
  [/^#\/sandboxes\/([A-Za-z0-9_.-]+)$/, 'sandboxes', m => sandbox.render(main, decodeURIComponent(m[1]))],
  [/^#\/templates$/, 'templates', () => templates.render(main)],
  [/^#\/usage$/, 'usage', () => usage.render(main)],
  [/^#\/audit(?:\?(.*))?$/, 'audit', m => audit.render(main, new URLSearchParams(m[1] ?? ''))],
  [/^(?:#\/sandboxes)?$|^#\/?$/, 'sandboxes', () => sandboxes.render(main)],
];

function route() {
  cleanup();
  cleanup = () => {};
  if (!session.key) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  signout.hidden = false;
  who.textContent = `key ${session.key.slice(0, 12)}…`;
  const hash = location.hash;
  for (const [pattern, page, render] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.page === page);
    cleanup = render(m) ?? (() => {});
    return;
  }
  fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/sandboxes' }, 'Back to sandboxes')));
}

function showSignIn() {
  nav.hidden = true;
  signout.hidden = true;
  who.textContent = '';
  const input = h('input', { id: 'signin-key', type: 'password', autocomplete: 'off', placeholder: 'moat_…', required: true, 'aria-label': 'API key' });
  const status = h('div', { id: 'signin-status' });
  if (notice) status.append(h('p', { class: 'error', role: 'alert' }, notice));
  notice = null;
  const button = h('button', { id: 'signin-submit', type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'signin', on: { submit: async e => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    status.replaceChildren();
    try {
      await api('/v1/sandboxes?limit=1', { key });
      session.key = key;
      if (!location.hash) location.hash = '#/sandboxes';
      route();
    } catch (err) {
      const text = err instanceof ApiError && err.status === 401 ? `This API key was not accepted: ${err.message}` : `Cannot sign in: ${err.message}`;
      status.append(h('p', { id: 'signin-error', class: 'error', role: 'alert' }, text));
    } finally {
      button.disabled = false;
    }
  } } },
    h('h1', {}, 'Sign in to Moat'),
    h('label', { for: 'signin-key' }, 'API key'),
    input,
    button,
    h('p', { class: 'muted' }, 'The key stays in this tab (sessionStorage) and is sent only to this server, as Authorization: Bearer.'),
    status);
  fill(main, form);
  input.focus();
}

session.onUnauthorized = err => {
  session.key = null;
  notice = `Signed out: ${err.message}`;
  route();
};

signout.addEventListener('click', () => {
  session.key = null;
  location.hash = '';
  route();
});

window.addEventListener('hashchange', route);
route();
