/*
 * gochat operations console: keeps the server-rendered tables live and shows the event
 * stream. Runs under a strict CSP (no inline code). Safety rule: every string that comes
 * from the server (names, rooms, chat text, event lines) is set with textContent, never
 * parsed as HTML.
 *
 * Tables: the snapshot API is polled (once a second, sooner after a connect/join/leave
 * event) for the page and filter in view only, and rows are patched in place by key, so
 * 10,000 connections cost one page of rows, not a re-render of everything.
 */
'use strict';

(() => {
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000;
  const MAX_LINES = 2000; // lines kept on screen (and held while paused)
  const RECONNECT_MAX_MS = 10000;
  const TABLE_EVENTS = new Set(['CONNECT', 'DISCONNECT', 'JOIN', 'LEAVE', 'KICK']);

  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  // --- formatting: the same as the server's template filters --------------------------

  function uptime(seconds) {
    let s = Math.floor(seconds || 0);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    const pad = (n) => String(n).padStart(2, '0');
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s)}s`;
    return `${s}s`;
  }
  const mib = (n) => (n == null ? '?' : `${(n / 1048576).toFixed(1)} MiB`);
  const clock = (ts) => new Date(ts * 1000).toISOString().slice(11, 19);
  const iso = (ts) => new Date(ts * 1000).toISOString().replace(/\.\d{3}Z$/, '+00:00');
  const orUnknown = (v) => (v == null ? '?' : String(v));

  /** Sets text only when it changed (no layout work for the unchanged majority). */
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function cells(tr, specs) {
    for (const [tag, className, child] of specs) {
      const cell = el(tag, className);
      if (tag === 'th') cell.scope = 'row';
      if (child) cell.append(child());
      tr.append(cell);
    }
    return tr;
  }

  // --- tables --------------------------------------------------------------------------

  const nodeTable = {
    key: (n) => n.id,
    build: () =>
      cells(el('tr'), [
        ['th', null, () => el('code')],
        ['td', 'num'],
        ['td', 'num'],
        ['td', 'num'],
        ['td', 'num'],
        ['td', null, () => el('span', 'state')],
      ]),
    update(tr, n) {
      const c = tr.cells;
      setText(c[0].firstElementChild, n.id);
      setText(c[1], uptime(n.uptime));
      setText(c[2], orUnknown(n.connections));
      setText(c[3], orUnknown(n.rooms));
      setText(c[4], n.rss == null ? '?' : mib(n.rss));
      const state = c[5].firstElementChild;
      state.dataset.ready = n.ready ? 'yes' : 'no';
      setText(state, `${n.broker} · ${n.ready ? 'up' : 'down'}`);
      state.title = n.reason || '';
    },
  };

  const connTable = {
    key: (c) => c.id,
    build() {
      const tr = cells(el('tr'), [
        ['th', null, () => el('code')],
        ['td'],
        ['td'],
        ['td'],
        ['td', null, () => el('code')],
        ['td'],
        ['td', null, () => el('time')],
        ['td', 'num'],
        ['td', 'num'],
        ['td', 'buffer'],
        ['td', null, () => el('button', 'kick', 'Kick…')],
      ]);
      const meter = el('meter');
      Object.assign(meter, { min: 0, max: 1, low: 0.5, high: 0.8, optimum: 0 });
      tr.cells[9].append(meter, ' ', el('span'));
      tr.cells[10].firstElementChild.type = 'button';
      return tr;
    },
    update(tr, c) {
      const cl = tr.cells;
      setText(cl[0].firstElementChild, c.id);
      setText(cl[1], c.node);
      setText(cl[2], c.user);
      setText(cl[3], c.name);
      setText(cl[4].firstElementChild, c.remote);
      setText(cl[5], c.rooms.join(', '));
      const time = cl[6].firstElementChild;
      time.dateTime = iso(c.since);
      setText(time, clock(c.since));
      setText(cl[7], String(c.in));
      setText(cl[8], String(c.out));
      const meter = cl[9].querySelector('meter');
      if (Number(meter.value) !== c.fill) meter.value = c.fill;
      setText(cl[9].querySelector('span'), `${Math.round(c.fill * 100)}%`);
      cl[9].title = `${c.buffered} bytes waiting`;
      cl[10].firstElementChild.dataset.conn = c.id;
    },
  };

  const roomTable = {
    key: (r) => r.name,
    build: () => cells(el('tr'), [['th'], ['td', 'num'], ['td', 'num'], ['td', 'num']]),
    update(tr, r) {
      const c = tr.cells;
      setText(c[0], r.name);
      setText(c[1], orUnknown(r.members));
      setText(c[2], String(r.local));
      setText(c[3], r.rate.toFixed(2));
    },
  };

  /** Makes tbody's rows match `items`, in order, reusing rows by key. */
  function sync(tbody, items, spec) {
    const old = new Map();
    for (const tr of Array.from(tbody.rows)) old.set(tr.dataset.key, tr);
    let cursor = tbody.firstElementChild;
    for (const item of items) {
      const key = spec.key(item);
      let tr = old.get(key);
      if (tr) {
        old.delete(key);
      } else {
        tr = spec.build();
        tr.dataset.key = key;
      }
      spec.update(tr, item);
      if (tr === cursor) cursor = cursor.nextElementSibling;
      else tbody.insertBefore(tr, cursor);
    }
    for (const tr of old.values()) tr.remove();
  }

  // --- paging and filters of the tables -------------------------------------------------

  const params = new URLSearchParams(window.location.search);
  const views = {
    connections: { prefix: '', q: params.get('q') || '', page: Number(params.get('page')) || 0 },
    rooms: {
      prefix: 'room_',
      q: params.get('room_q') || '',
      page: Number(params.get('room_page')) || 0,
    },
  };

  function updatePager(name, data) {
    const view = views[name];
    view.page = data.page;
    const nav = document.querySelector(`[data-pager="${name}"]`);
    const shown = data.items.length;
    const first = data.page * data.limit + 1;
    let text = data.matched ? `${first}–${first + shown - 1} of ${data.matched}` : 'none';
    if (data.matched !== data.total) text += ` (filtered from ${data.total})`;
    setText(nav.querySelector('[data-count]'), text);
    nav.querySelector('[data-step="-1"]').toggleAttribute('aria-disabled', data.page === 0);
    nav
      .querySelector('[data-step="1"]')
      .toggleAttribute('aria-disabled', first + shown - 1 >= data.matched);
  }

  function snapshotUrl() {
    const q = new URLSearchParams();
    for (const view of Object.values(views)) {
      if (view.q) q.set(`${view.prefix}q`, view.q);
      if (view.page) q.set(`${view.prefix}page`, String(view.page));
    }
    return `/admin/api/snapshot?${q}`;
  }

  // --- polling -------------------------------------------------------------------------

  let pollTimer = null;
  let inflight = false;
  let again = false;

  function render(snap) {
    sync(document.querySelector('[data-table="nodes"] tbody'), snap.nodes, nodeTable);
    sync(
      document.querySelector('[data-table="connections"] tbody'),
      snap.connections.items,
      connTable,
    );
    sync(document.querySelector('[data-table="rooms"] tbody'), snap.rooms.items, roomTable);
    updatePager('connections', snap.connections);
    updatePager('rooms', snap.rooms);
  }

  async function refresh() {
    if (inflight) {
      again = true;
      return;
    }
    inflight = true;
    window.clearTimeout(pollTimer);
    try {
      const res = await fetch(snapshotUrl(), {
        headers: { Accept: 'application/json' },
        credentials: 'same-origin',
        cache: 'no-store',
      });
      if (res.status === 401) {
        window.location.assign('/admin/login');
        return;
      }
      if (res.ok) render(await res.json());
    } catch (err) {
      // the server is restarting or the network is down: the stream shows it; keep polling
    } finally {
      inflight = false;
      pollTimer = window.setTimeout(refresh, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  let soonTimer = null;
  function refreshSoon(delay = 150) {
    if (soonTimer === null) {
      soonTimer = window.setTimeout(() => {
        soonTimer = null;
        refresh();
      }, delay);
    }
  }

  for (const form of document.querySelectorAll('form[data-filter]')) {
    const view = views[form.dataset.filter];
    const input = form.querySelector('input');
    form.addEventListener('submit', (ev) => ev.preventDefault());
    input.addEventListener('input', () => {
      view.q = input.value.trim();
      view.page = 0;
      refreshSoon(250);
    });
  }

  for (const nav of document.querySelectorAll('[data-pager]')) {
    const view = views[nav.dataset.pager];
    nav.addEventListener('click', (ev) => {
      const link = ev.target.closest('[data-step]');
      if (!link) return;
      ev.preventDefault();
      if (link.hasAttribute('aria-disabled')) return;
      view.page = Math.max(0, view.page + Number(link.dataset.step));
      refresh();
    });
  }

  // --- actions -------------------------------------------------------------------------

  const result = byTestId('action-result');
  const kickForm = byTestId('kick-form');

  function report(ok, text) {
    result.dataset.state = ok ? 'ok' : 'error';
    setText(result, text);
  }

  for (const form of document.querySelectorAll('form[data-action]')) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = Object.fromEntries(new FormData(form));
      delete body.csrf;
      try {
        const res = await fetch(form.action, {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
          body: JSON.stringify(body),
        });
        const data = await res.json().catch(() => ({}));
        if (!res.ok) {
          report(false, `${form.dataset.action} failed: ${data.message || data.error || res.status}`);
          return;
        }
        if (form.dataset.action === 'kick') {
          report(true, data.status === 'kicked' ? `Kicked ${body.conn}` : `Kick of ${body.conn} sent to its node`);
          form.reset();
          refreshSoon();
        } else {
          report(true, `Notice sent to #${body.room}`);
          form.querySelector('[name="text"]').value = '';
        }
      } catch (err) {
        report(false, `${form.dataset.action} failed: ${err}`);
      }
    });
  }

  document.querySelector('[data-table="connections"]').addEventListener('click', (ev) => {
    const button = ev.target.closest('button.kick');
    if (!button) return;
    kickForm.querySelector('[name="conn"]').value = button.dataset.conn;
    const reason = kickForm.querySelector('[name="reason"]');
    kickForm.scrollIntoView({ block: 'nearest' });
    reason.focus();
  });

  // --- event stream --------------------------------------------------------------------

  const lines = byTestId('lines');
  const stats = byTestId('stream-stats');
  const live = byTestId('live');
  const pauseButton = byTestId('pause');
  const filterForm = byTestId('stream-filter');
  let socket = null;
  let backoff = 500;
  let paused = false;
  let held = []; // events that arrived while paused
  let dropped = 0; // lines lost: dropped by the server for us, or while paused
  let filter = readFilter();

  function setLive(state, text) {
    live.dataset.state = state;
    setText(live, text);
  }

  function updateStats() {
    const total = lines.childElementCount;
    const shown = lines.querySelectorAll('li:not([hidden])').length;
    let text = shown === total ? `${total} lines` : `${shown} of ${total} lines shown`;
    if (held.length) text += ` · ${held.length} new while paused`;
    if (dropped) text += ` · ${dropped} dropped`;
    setText(stats, text);
  }

  function readFilter() {
    const data = new FormData(filterForm);
    const all = filterForm.querySelectorAll('input[name="kind"]');
    const kinds = data.getAll('kind').map(String);
    const value = (name) => String(data.get(name) || '').trim();
    return {
      type: 'filter',
      room: value('room'),
      user: value('user'),
      node: value('node'),
      text: value('text'),
      kinds: kinds.length === all.length ? null : kinds, // null: every kind
    };
  }

  /** The server's EventFilter.matches, for lines already on screen. */
  function matches(f, ev) {
    if (f.kinds && !f.kinds.includes(ev.kind)) return false;
    if (f.room && ev.room !== f.room) return false;
    if (f.user && ev.user !== f.user) return false;
    if (f.node && ev.node !== f.node) return false;
    return !f.text || ev.line.toLowerCase().includes(f.text.toLowerCase());
  }

  function sendFilter() {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(filter));
  }

  function lineElement(ev) {
    const li = el('li', null, ev.line);
    li.dataset.kind = ev.kind;
    li.dataset.node = ev.node;
    if (ev.room != null) li.dataset.room = ev.room;
    if (ev.user != null) li.dataset.user = ev.user;
    li.hidden = !matches(filter, ev);
    return li;
  }

  function append(events) {
    const atBottom = lines.scrollTop + lines.clientHeight >= lines.scrollHeight - 8;
    const fragment = document.createDocumentFragment();
    for (const ev of events.slice(-MAX_LINES)) fragment.append(lineElement(ev));
    lines.append(fragment);
    while (lines.childElementCount > MAX_LINES) lines.firstElementChild.remove();
    if (atBottom) lines.scrollTop = lines.scrollHeight;
  }

  function onEvents(events, droppedByServer) {
    dropped += droppedByServer;
    if (events.some((ev) => TABLE_EVENTS.has(ev.kind))) refreshSoon();
    if (paused) {
      held.push(...events);
      if (held.length > MAX_LINES) {
        dropped += held.length - MAX_LINES;
        held = held.slice(-MAX_LINES);
      }
    } else {
      append(events);
    }
    updateStats();
  }

  function connectStream() {
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${window.location.host}/admin/events`);
    socket = ws;
    ws.addEventListener('open', () => {
      backoff = 500;
      sendFilter();
      setLive(paused ? 'paused' : 'live', paused ? 'paused' : 'live');
    });
    ws.addEventListener('message', (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (err) {
        return;
      }
      if (msg.type === 'events') onEvents(msg.events, msg.dropped || 0);
    });
    ws.addEventListener('close', () => {
      if (socket !== ws) return;
      socket = null;
      setLive('offline', `stream lost, retrying in ${Math.round(backoff / 1000)} s`);
      window.setTimeout(connectStream, backoff);
      backoff = Math.min(RECONNECT_MAX_MS, backoff * 2);
      refreshSoon(); // a 401 from the snapshot sends us to the login page
    });
  }

  let filterTimer = null;
  function onFilterChange() {
    window.clearTimeout(filterTimer);
    filterTimer = window.setTimeout(() => {
      filter = readFilter();
      sendFilter();
      for (const li of lines.children) {
        const d = li.dataset;
        li.hidden = !matches(filter, {
          kind: d.kind,
          node: d.node,
          room: d.room,
          user: d.user,
          line: li.textContent,
        });
      }
      updateStats();
    }, 150);
  }
  filterForm.addEventListener('input', onFilterChange);
  filterForm.addEventListener('change', onFilterChange);
  filterForm.addEventListener('submit', (ev) => ev.preventDefault());

  pauseButton.addEventListener('click', () => {
    paused = !paused;
    pauseButton.setAttribute('aria-pressed', String(paused));
    setText(pauseButton, paused ? 'Resume' : 'Pause');
    if (!paused && held.length) {
      append(held);
      held = [];
    }
    if (socket) setLive(paused ? 'paused' : 'live', paused ? 'paused' : 'live');
    updateStats();
  });

  byTestId('clear').addEventListener('click', () => {
    lines.replaceChildren();
    held = [];
    dropped = 0;
    updateStats();
  });

  connectStream();
  refresh();
})();
