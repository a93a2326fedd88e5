/**
 * The dashboard's entry point: login, the navigation between views, one EventService/Watch
 * stream feeding every view live, and a periodic re-read of each view's lists (the stream says
 * that something changed; the lists say what is true now).
 */
import { ApiError, currentSession, login, logout, watch, whenLoggedOut } from './lib/api.js';
import { h, replace, tickTimes, visible } from './lib/dom.js';
import * as agents from './views/agents.js';
import * as approvals from './views/approvals.js';
import * as budgets from './views/budgets.js';
import * as hooks from './views/hooks.js';
import * as pools from './views/pools.js';
import * as tasks from './views/tasks.js';
import * as toolcalls from './views/toolcalls.js';
import * as upstreams from './views/upstreams.js';

const VIEWS = [agents, approvals, pools, tasks, toolcalls, budgets, upstreams, hooks];
/** Every view's lists are read again this often, events or not. */
const REFRESH_MS = 5000;
/** Wait before watching again after the stream ended. */
const REWATCH_MS = 2000;

const $ = (id) => document.getElementById(id);

let toastTimer;
function toast(text, error = false) {
  const el = $('toast');
  el.textContent = visible(text);
  el.className = error ? 'toast error' : 'toast';
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 4000);
}

/** The running dashboard (after login); `stop()` ends it. */
function start(admin) {
  const controller = new AbortController();
  const instances = new Map();
  const tabs = new Map();
  const due = new Set();
  let dueTimer;

  const ctx = {
    agents: [],
    /** Runs an action; shows what it did or why it failed, then re-reads every view. */
    async act(done, action) {
      try {
        await action();
        toast(done);
      } catch (error) {
        toast(`${error.code ?? 'error'}: ${error.message}`, true);
      }
      await refreshAll();
    },
    /**
     * Re-reads `view` soon: events come in bursts, so one read per 150 ms at most. The wait is
     * not restarted by later events — a steady stream of them (a fleet at work) must not hold
     * the read back until the stream pauses.
     */
    schedule(view) {
      due.add(view);
      if (dueTimer !== undefined) return;
      dueTimer = setTimeout(() => {
        dueTimer = undefined;
        const views = [...due];
        due.clear();
        // The agent list first: other views name agents from it.
        if (views.includes('agents')) views.sort((a) => (a === 'agents' ? -1 : 1));
        void (async () => {
          for (const v of views) await refresh(v);
        })();
      }, 150);
    },
    show,
    badge(view, n) {
      const tab = tabs.get(view);
      if (tab) tab.dataset.count = n > 0 ? String(n) : '';
    },
  };

  async function refresh(name) {
    try {
      await instances.get(name).refresh();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) {
        toast(`${name}: ${error.message}`, true);
      }
    }
  }

  async function refreshAll() {
    await refresh('agents');
    await Promise.all(VIEWS.filter((v) => v.id !== 'agents').map((v) => refresh(v.id)));
  }

  function show(name) {
    for (const [id, view] of instances) view.el.hidden = id !== name;
    for (const [id, tab] of tabs) tab.setAttribute('aria-current', id === name ? 'page' : 'false');
    location.hash = name;
  }

  const container = $('views');
  replace(container);
  const nav = $('nav');
  replace(nav);
  for (const view of VIEWS) {
    const instance = view.createView(ctx);
    instance.el.hidden = true;
    instances.set(view.id, instance);
    container.append(instance.el);
    const tab = h(
      'a',
      {
        href: `#${view.id}`,
        id: `tab-${view.id}`,
        onclick: (e) => {
          e.preventDefault();
          show(view.id);
        },
      },
      view.title,
    );
    tabs.set(view.id, tab);
    nav.append(tab);
  }
  nav.hidden = false;
  $('who').hidden = false;
  $('admin-name').textContent = admin;
  $('login').hidden = true;
  const wanted = location.hash.slice(1);
  show(instances.has(wanted) ? wanted : 'agents');

  const state = $('stream-state');
  void (async () => {
    while (!controller.signal.aborted) {
      try {
        state.textContent = 'live';
        state.className = 'badge ok';
        // Read the lists once the stream is open, so nothing between the two is missed.
        void refreshAll();
        await watch(
          'EventService/Watch',
          {},
          (msg) => {
            for (const view of instances.values()) view.onEvent(msg, msg.time);
          },
          controller.signal,
        );
      } catch (error) {
        if (controller.signal.aborted || (error instanceof ApiError && error.status === 401)) break;
      }
      state.textContent = 'reconnecting';
      state.className = 'badge warn';
      await new Promise((r) => setTimeout(r, REWATCH_MS));
    }
  })();
  const poll = setInterval(() => void refreshAll(), REFRESH_MS);
  const tick = setInterval(() => tickTimes(container), 1000);

  return {
    stop() {
      controller.abort();
      clearInterval(poll);
      clearInterval(tick);
      clearTimeout(dueTimer);
      replace(container);
      nav.hidden = true;
      $('who').hidden = true;
      state.textContent = 'offline';
      state.className = 'badge';
    },
  };
}

let running;

function showLogin(message = '') {
  running?.stop();
  running = undefined;
  $('login').hidden = false;
  $('login-error').textContent = message;
  $('login-token').focus();
}

whenLoggedOut(() => showLogin('Your session ended. Log in again.'));

$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = $('login-token');
  const token = input.value;
  // The token leaves the page now: it is not kept anywhere.
  input.value = '';
  $('login-error').textContent = '';
  try {
    const { admin } = await login(token);
    running = start(admin);
  } catch (error) {
    $('login-error').textContent =
      error instanceof ApiError && error.status === 401
        ? 'Wrong admin token.'
        : `Login failed: ${error.message}`;
  }
});

$('logout').addEventListener('click', async () => {
  // Stopped first: the logout ends the session's stream, which would say "Your session ended".
  running?.stop();
  running = undefined;
  try {
    await logout();
  } finally {
    showLogin('Logged out.');
  }
});

const session = await currentSession().catch(() => undefined);
if (session) running = start(session.admin);
else showLogin();
