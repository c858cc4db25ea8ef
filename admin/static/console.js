/*
 * gochat operations console: keeps the server-rendered tables live, draws the load charts
 * and shows the event stream; on /admin/connections/{id}, keeps one connection's details
 * live. Runs under a strict CSP (no inline code, no inline styles: SVG attributes and
 * classes only). Safety rule: every string that comes from the server (names, rooms, chat
 * text, event lines) is set with textContent, never parsed as HTML.
 *
 * Tables: the snapshot API is polled (once a second, sooner after a connect/join/leave
 * event) for the page, sort and filter in view only, and rows are patched in place by key,
 * so 10,000 connections cost one page of rows, not a re-render of everything. The page,
 * sort and filters live in the address bar (history.replaceState), so a reload or a shared
 * link shows the same view.
 */
'use strict';

(() => {
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 5000;
  const MAX_LINES = 2000; // lines kept on screen (and held while paused)
  const RECONNECT_MAX_MS = 10000;
  const TABLE_EVENTS = new Set(['CONNECT', 'DISCONNECT', 'JOIN', 'LEAVE', 'KICK']);
  const CLOSE_CODES = {
    1000: 'normal',
    1001: 'going away',
    1006: 'dropped',
    1008: 'policy',
    1009: 'too big',
    1011: 'server error',
    1013: 'slow consumer',
    4001: 'kicked',
  };

  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  // --- formatting --------------------------------------------------------------------

  function uptime(seconds) {
    let s = Math.floor(seconds || 0);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${pad(m)}m`;
    if (m) return `${m}m ${pad(s)}s`;
    return `${s}s`;
  }
  const pad = (n, width = 2) => String(n).padStart(width, '0');
  const mib = (n) => (n == null ? '?' : `${(n / 1048576).toFixed(1)} MiB`);
  const orUnknown = (v) => (v == null ? '?' : String(v));
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  const dayOf = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  const clockOf = (d, ms) =>
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` +
    (ms ? `.${pad(d.getMilliseconds(), 3)}` : '');

  function zone(d) {
    const minutes = -d.getTimezoneOffset();
    const sign = minutes < 0 ? '-' : '+';
    const abs = Math.abs(minutes);
    return `UTC${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
  }

  /** Local time; with its date when that is not today. */
  function when(ts, ms = false) {
    const d = new Date(ts * 1000);
    const time = clockOf(d, ms);
    return dayOf(d) === dayOf(new Date()) ? time : `${dayOf(d)} ${time}`;
  }

  /** A <time>: local time (date where the day differs), the full date and epoch on hover. */
  function setTime(node, ts, ms = false) {
    const d = new Date(ts * 1000);
    const text = when(ts, ms);
    if (node.textContent === text) return;
    node.dateTime = d.toISOString();
    node.textContent = text;
    node.title = `${dayOf(d)} ${clockOf(d, true)} ${zone(d)} · epoch ${Number(ts).toFixed(6)}`;
  }

  function ago(seconds) {
    return `(for ${uptime(seconds)})`;
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return mib(n);
  }
  const integer = (n) => Math.round(n).toLocaleString('en-US');
  const rate = (n) => (n >= 100 ? integer(n) : n.toFixed(1));

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

  const connPath = (id) => id.split('/').map(encodeURIComponent).join('/');

  function localizeTimes(root) {
    for (const node of root.querySelectorAll('time[data-ts]')) setTime(node, Number(node.dataset.ts));
  }

  async function getJson(url) {
    const res = await fetch(url, {
      headers: { Accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
    });
    if (res.status === 401) {
      window.location.assign('/admin/login');
      return { res, data: null };
    }
    return { res, data: await res.json().catch(() => null) };
  }

  async function post(url, body) {
    const res = await fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
      body: JSON.stringify(body),
    });
    return { res, data: await res.json().catch(() => ({})) };
  }

  function reporter(output) {
    return (state, text) => {
      output.dataset.state = state;
      setText(output, text);
    };
  }

  // =====================================================================================
  // The console page
  // =====================================================================================

  function consolePage() {
    // --- tables ------------------------------------------------------------------------

    /** A row of cells: [tag, className, data-label, child factory]. */
    function cells(specs) {
      const tr = el('tr');
      for (const [tag, className, label, child] of specs) {
        const cell = el(tag, className);
        if (tag === 'th') cell.scope = 'row';
        if (label) cell.dataset.label = label;
        if (child) cell.append(child());
        tr.append(cell);
      }
      return tr;
    }

    const nodeTable = {
      key: (n) => n.id,
      build: () =>
        cells([
          ['th', null, 'Node', () => el('code')],
          ['td', 'num', 'Uptime'],
          ['td', 'num', 'Connections'],
          ['td', 'num', 'Rooms'],
          ['td', 'num', 'Memory'],
          ['td', null, 'Broker', () => el('span', 'state')],
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
        const tr = cells([
          ['th', null, 'ID', () => el('a', 'conn-link')],
          ['td', 'cut', 'User'],
          ['td', 'cut', 'Name'],
          ['td', null, 'Address', () => el('code')],
          ['td', 'cut', 'Rooms'],
          ['td', null, 'Since', () => el('time')],
          ['td', 'num', 'In'],
          ['td', 'num', 'Out'],
          ['td', 'buffer', 'Send buffer'],
          ['td', 'row-actions', null, () => el('button', 'kick', 'Kick…')],
        ]);
        tr.cells[0].firstElementChild.append(el('code'));
        const meter = el('meter');
        Object.assign(meter, { min: 0, max: 1, low: 0.5, high: 0.8, optimum: 0 });
        tr.cells[8].append(meter, ' ', el('span'));
        tr.cells[9].firstElementChild.type = 'button';
        return tr;
      },
      update(tr, c) {
        const cl = tr.cells;
        const link = cl[0].firstElementChild;
        link.href = `/admin/connections/${connPath(c.id)}`;
        link.title = `Details of ${c.id}`;
        setText(link.firstElementChild, c.id);
        setText(cl[1], c.user);
        setText(cl[2], c.name);
        setText(cl[3].firstElementChild, c.remote);
        setText(cl[4], c.rooms.join(', '));
        setTime(cl[5].firstElementChild, c.since);
        setText(cl[6], String(c.in));
        setText(cl[7], String(c.out));
        const meter = cl[8].querySelector('meter');
        if (Number(meter.value) !== c.fill) meter.value = c.fill;
        setText(cl[8].querySelector('span'), `${Math.round(c.fill * 100)}%`);
        cl[8].title = `${c.buffered} bytes unsent`;
        cl[9].firstElementChild.dataset.conn = c.id;
      },
    };

    const roomTable = {
      key: (r) => r.name,
      build() {
        const tr = cells([
          ['th', null, 'Room'],
          ['td', 'num', 'Members'],
          ['td', 'num', 'Here'],
          ['td', 'num', 'Msgs/s'],
          ['td', 'row-actions', null, () => el('button', 'notice', 'Notice…')],
        ]);
        tr.cells[4].firstElementChild.type = 'button';
        return tr;
      },
      update(tr, r) {
        const c = tr.cells;
        setText(c[0], r.name);
        setText(c[1], orUnknown(r.members));
        setText(c[2], String(r.local));
        setText(c[3], r.rate.toFixed(2));
        c[4].firstElementChild.dataset.room = r.name;
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

    // --- view state: in the address bar ------------------------------------------------

    const params = new URLSearchParams(window.location.search);
    const views = {
      connections: {
        prefix: '',
        q: params.get('q') || '',
        page: Number(params.get('page')) || 0,
        sort: params.get('sort') || '',
      },
      rooms: {
        prefix: 'room_',
        q: params.get('room_q') || '',
        page: Number(params.get('room_page')) || 0,
        sort: params.get('room_sort') || '',
      },
    };

    /** The query of the view as it is, with `changes` on top. */
    function viewQuery(changes = {}) {
      const q = new URLSearchParams();
      for (const view of Object.values(views)) {
        if (view.q) q.set(`${view.prefix}q`, view.q);
        if (view.page) q.set(`${view.prefix}page`, String(view.page));
        if (view.sort) q.set(`${view.prefix}sort`, view.sort);
      }
      const f = filter;
      if (f) {
        for (const name of ['room', 'user', 'node', 'text']) if (f[name]) q.set(`ev_${name}`, f[name]);
        if (f.kinds) q.set('ev_kinds', f.kinds.join(','));
      }
      if (rawLines) q.set('raw', '1');
      for (const [name, value] of Object.entries(changes)) {
        if (value) q.set(name, String(value));
        else q.delete(name);
      }
      return q;
    }

    function writeUrl() {
      const q = viewQuery().toString();
      const url = `${window.location.pathname}${q ? `?${q}` : ''}`;
      if (url !== `${window.location.pathname}${window.location.search}`) {
        window.history.replaceState(null, '', url);
      }
      for (const name of Object.keys(views)) updateSortHeaders(name);
    }

    function nextSort(th, current) {
      const key = th.dataset.sort;
      if (current === key) return `-${key}`;
      if (current === `-${key}`) return key;
      return th.hasAttribute('data-desc') ? `-${key}` : key;
    }

    function updateSortHeaders(name) {
      const view = views[name];
      for (const th of document.querySelectorAll(`[data-table="${name}"] th[data-sort]`)) {
        const key = th.dataset.sort;
        let state = 'none';
        if (view.sort === key) state = 'ascending';
        else if (view.sort === `-${key}`) state = 'descending';
        th.setAttribute('aria-sort', state);
        const link = th.querySelector('a');
        const next = nextSort(th, view.sort);
        link.href = `?${viewQuery({ [`${view.prefix}sort`]: next, [`${view.prefix}page`]: 0 })}`;
        link.title = `Sort by ${link.textContent.toLowerCase()}, ${
          next.startsWith('-') ? 'highest first' : 'lowest first'
        }`;
      }
    }

    function updatePager(name, data) {
      const view = views[name];
      view.page = data.page;
      const nav = document.querySelector(`[data-pager="${name}"]`);
      const shown = data.items.length;
      const first = data.page * data.limit + 1;
      let text = data.matched ? `${first}–${first + shown - 1} of ${data.matched}` : 'none';
      if (data.matched !== data.total) text += ` (filtered from ${data.total})`;
      setText(nav.querySelector('[data-count]'), text);
      const prev = nav.querySelector('[data-step="-1"]');
      const next = nav.querySelector('[data-step="1"]');
      prev.toggleAttribute('aria-disabled', data.page === 0);
      next.toggleAttribute('aria-disabled', first + shown - 1 >= data.matched);
      prev.href = `?${viewQuery({ [`${view.prefix}page`]: Math.max(0, data.page - 1) })}`;
      next.href = `?${viewQuery({ [`${view.prefix}page`]: data.page + 1 })}`;
    }

    // --- polling -----------------------------------------------------------------------

    let pollTimer = null;
    let inflight = false;
    let again = false;
    let needSamples = true; // the charts' whole ring: at first and after the stream was lost

    function snapshotUrl() {
      const q = new URLSearchParams();
      for (const view of Object.values(views)) {
        if (view.q) q.set(`${view.prefix}q`, view.q);
        if (view.page) q.set(`${view.prefix}page`, String(view.page));
        if (view.sort) q.set(`${view.prefix}sort`, view.sort);
      }
      if (!needSamples) q.set('samples', '0');
      return `/admin/api/snapshot?${q}`;
    }

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
      if (snap.load) {
        needSamples = false;
        charts.set(snap.load);
      }
      writeUrl(); // the server may have moved the page back (rows went)
    }

    async function refresh() {
      if (inflight) {
        again = true;
        return;
      }
      inflight = true;
      window.clearTimeout(pollTimer);
      try {
        const { res, data } = await getJson(snapshotUrl());
        if (res.ok && data) render(data);
        else if (res.status === 400 && data == null) {
          // a sort or page from a hand-edited address: back to the defaults
          for (const view of Object.values(views)) Object.assign(view, { sort: '', page: 0 });
          writeUrl();
          again = true;
        }
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
        writeUrl();
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
        writeUrl();
        refresh();
      });
    }

    for (const [name, view] of Object.entries(views)) {
      const thead = document.querySelector(`[data-table="${name}"] thead`);
      thead.addEventListener('click', (ev) => {
        const th = ev.target.closest('th[data-sort]');
        if (!th || ev.ctrlKey || ev.metaKey || ev.shiftKey) return; // a new tab: let it go
        ev.preventDefault();
        view.sort = nextSort(th, view.sort);
        view.page = 0;
        writeUrl();
        refresh();
      });
    }

    // --- actions -----------------------------------------------------------------------

    const report = reporter(byTestId('action-result'));
    const kickForm = byTestId('kick-form');
    const noticeForm = byTestId('notice-form');

    async function kick(form) {
      const body = { conn: form.elements.conn.value.trim(), reason: form.elements.reason.value };
      const { res, data } = await post(form.action, body);
      if (!res.ok) {
        report('error', `Kick failed: ${data.message || data.error || res.status}`);
        return;
      }
      report(
        'ok',
        data.status === 'kicked' ? `Kicked ${body.conn}` : `Kick of ${body.conn} sent to its node`,
      );
      form.reset();
      refreshSoon();
    }

    async function notice(form) {
      const room = form.elements.room.value.trim();
      const text = form.elements.text.value;
      // how many it would reach, cluster-wide: an empty room is asked about first
      const { res, data } = await getJson(`/admin/api/rooms/${encodeURIComponent(room)}`);
      if (!res.ok || !data) {
        report('error', `Notice failed: ${(data && (data.message || data.error)) || res.status}`);
        return;
      }
      if (
        data.members === 0 &&
        !window.confirm(
          `Nobody is in #${room} right now (0 members in the cluster).\n` +
            'Send the notice anyway? It stays in the room history for whoever joins later.',
        )
      ) {
        report('warn', `Notice not sent: #${room} has no members`);
        return;
      }
      const sent = await post(form.action, { room, text });
      if (!sent.res.ok) {
        report('error', `Notice failed: ${sent.data.message || sent.data.error || sent.res.status}`);
        return;
      }
      const reached = sent.data.members;
      report(
        reached ? 'ok' : 'warn',
        `Notice sent to #${room}: reached ${plural(reached, 'member', 'members')}`,
      );
      form.elements.text.value = '';
    }

    for (const form of [kickForm, noticeForm]) {
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const button = form.querySelector('button[type="submit"]');
        button.disabled = true;
        try {
          await (form === kickForm ? kick(form) : notice(form));
        } catch (err) {
          report('error', `${form.dataset.action} failed: ${err}`);
        } finally {
          button.disabled = false;
        }
      });
    }

    function prefill(form, name, value, focus) {
      form.elements[name].value = value;
      form.scrollIntoView({ block: 'nearest' });
      form.elements[focus].focus();
    }

    document.querySelector('[data-table="connections"]').addEventListener('click', (ev) => {
      const button = ev.target.closest('button.kick');
      if (button) prefill(kickForm, 'conn', button.dataset.conn, 'reason');
    });
    document.querySelector('[data-table="rooms"]').addEventListener('click', (ev) => {
      const button = ev.target.closest('button.notice');
      if (button) prefill(noticeForm, 'room', button.dataset.room, 'text');
    });

    // --- charts ------------------------------------------------------------------------

    const charts = (() => {
      const W = 300;
      const BASE = 63.5; // the baseline's y (viewBox 0 0 300 64)
      const TOP = 4; // the scale line's y
      const series = [
        { key: 'connections', index: 1, format: integer, unit: '' },
        { key: 'messages', index: 2, format: rate, unit: '/s' },
        { key: 'deliveries', index: 3, format: rate, unit: '/s' },
      ].map((s) => {
        const fig = document.querySelector(`[data-chart="${s.key}"]`);
        return {
          ...s,
          fig,
          svg: fig.querySelector('svg'),
          line: fig.querySelector('.chart-line'),
          area: fig.querySelector('.chart-area'),
          cursor: fig.querySelector('.chart-cursor'),
          value: fig.querySelector('[data-value]'),
          peak: fig.querySelector('[data-peak]'),
          scale: fig.querySelector('[data-scale]'),
          hover: fig.querySelector('[data-hover]'),
          label: fig.querySelector('.chart-name').textContent,
        };
      });
      const scope = byTestId('load-scope');
      let every = 2;
      let windowSeconds = 900;
      let samples = [];
      let hoverAt = null; // the time under the pointer, or null

      function niceCeil(v) {
        if (!(v > 0)) return 1;
        const p = 10 ** Math.floor(Math.log10(v));
        for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
        return 10 * p;
      }

      /** The time window drawn: the 15 minutes up to the newest sample. */
      function span() {
        const end = samples.length ? samples[samples.length - 1][0] : Date.now() / 1000;
        return [end - windowSeconds, end];
      }

      function draw() {
        const [start] = span();
        const x = (t) => (((t - start) / windowSeconds) * W).toFixed(1);
        for (const s of series) {
          let peak = 0;
          for (const sample of samples) peak = Math.max(peak, sample[s.index]);
          const top = niceCeil(Math.max(peak, s.index === 1 ? 5 : 1));
          const y = (v) => (BASE - (v / top) * (BASE - TOP)).toFixed(1);
          let line = '';
          let area = '';
          let run = [];
          const flush = () => {
            if (!run.length) return;
            line += `M${run.join('L')}`;
            if (run.length === 1) line += 'h0.01'; // one sample: a dot (round caps)
            const first = run[0].split(',')[0];
            const last = run[run.length - 1].split(',')[0];
            area += `M${first},${BASE}L${run.join('L')}L${last},${BASE}Z`;
            run = [];
          };
          let prev = null;
          for (const sample of samples) {
            if (prev !== null && sample[0] - prev > every * 3) flush(); // a gap: the node was down
            run.push(`${x(sample[0])},${y(sample[s.index])}`);
            prev = sample[0];
          }
          flush();
          s.line.setAttribute('d', line);
          s.area.setAttribute('d', area);
          const latest = samples.length ? samples[samples.length - 1][s.index] : null;
          setText(s.value, latest == null ? '–' : s.format(latest));
          s.value.dataset.raw = latest == null ? '' : String(latest);
          setText(s.peak, samples.length ? `peak ${s.format(peak)}${s.unit}` : '');
          setText(s.scale, s.format(top));
          s.svg.setAttribute(
            'aria-label',
            latest == null
              ? `${s.label}: no samples yet`
              : `${s.label}${s.unit}: now ${s.format(latest)}, peak ${s.format(peak)} over the last 15 minutes`,
          );
        }
        const nodes = samples.length ? samples[samples.length - 1][4] : 1;
        setText(
          scope,
          `last 15 minutes, one sample every ${every} s · ${
            nodes > 1 ? `cluster-wide: ${nodes} nodes` : 'this node (the only one)'
          }`,
        );
        drawHover();
      }

      function nearest(t) {
        let lo = 0;
        let hi = samples.length - 1;
        while (lo < hi) {
          const mid = (lo + hi) >> 1;
          if (samples[mid][0] < t) lo = mid + 1;
          else hi = mid;
        }
        if (lo > 0 && t - samples[lo - 1][0] < samples[lo][0] - t) lo -= 1;
        return samples[lo];
      }

      function drawHover() {
        const sample = hoverAt === null || !samples.length ? null : nearest(hoverAt);
        const [start] = span();
        for (const s of series) {
          if (!sample) {
            s.cursor.setAttribute('visibility', 'hidden');
            setText(s.hover, '');
            continue;
          }
          const cx = (((sample[0] - start) / windowSeconds) * W).toFixed(1);
          s.cursor.setAttribute('x1', cx);
          s.cursor.setAttribute('x2', cx);
          s.cursor.setAttribute('visibility', 'visible');
          setText(s.hover, `${when(sample[0])} · ${s.format(sample[s.index])}${s.unit}`);
        }
      }

      for (const s of series) {
        s.svg.addEventListener('pointermove', (ev) => {
          const box = s.svg.getBoundingClientRect();
          const [start] = span();
          hoverAt = start + ((ev.clientX - box.left) / box.width) * windowSeconds;
          drawHover();
        });
        s.svg.addEventListener('pointerleave', () => {
          hoverAt = null;
          drawHover();
        });
      }

      return {
        set(load) {
          every = load.every;
          windowSeconds = load.window;
          samples = load.samples.slice();
          draw();
        },
        add(list) {
          for (const sample of list) {
            const last = samples[samples.length - 1];
            if (!last || sample[0] > last[0]) samples.push(sample);
          }
          const [start] = span();
          while (samples.length && samples[0][0] < start) samples.shift();
          draw();
        },
        draw,
      };
    })();

    // --- event stream ------------------------------------------------------------------

    const lines = byTestId('lines');
    const stats = byTestId('stream-stats');
    const live = byTestId('live');
    const pauseButton = byTestId('pause');
    const rawBox = byTestId('raw');
    const filterForm = byTestId('stream-filter');
    const eventOf = new WeakMap(); // <li> -> its event
    let socket = null;
    let backoff = 500;
    let paused = false;
    let held = []; // events that arrived while paused
    let dropped = 0; // lines lost: dropped by the server for us, or while paused
    let rawLines = rawBox.checked;
    let filter = null;
    filter = readFilter();

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

    function parsed(json) {
      try {
        const value = JSON.parse(json);
        return value && typeof value === 'object' ? value : null;
      } catch (err) {
        return null;
      }
    }

    const part = (className, text, title) => {
      const span = el('span', className, text);
      if (title) span.title = title;
      return span;
    };
    const roomPart = (room) => part('ev-room', `#${room}`);
    const userPart = (name, id) => part('ev-user', name, id && id !== name ? `user id ${id}` : null);
    const connPart = (conn) => part('ev-conn', conn);
    const byPart = (addr) => part('ev-by', `by ${addr}`);

    /** One event in a few words: the room, who, what; user text as text, never JSON. */
    function summary(ev) {
      const a = ev.args || [];
      switch (ev.kind) {
        case 'PUBLISH': {
          const msg = parsed(a[1]);
          if (!msg) break;
          return [
            roomPart(msg.room || ev.room),
            userPart(String(msg.name), String(msg.userId)),
            part('ev-text', String(msg.text)),
          ];
        }
        case 'NOTICE':
          return [roomPart(ev.room), userPart('system'), part('ev-text', a[1] || ''), byPart(ev.addr)];
        case 'PRESENCE': {
          const msg = parsed(a[1]);
          if (!msg) break;
          return [
            roomPart(msg.room || ev.room),
            userPart(String(msg.name), String(msg.userId)),
            part(`ev-status ev-${msg.status === 'online' ? 'on' : 'off'}`, String(msg.status)),
          ];
        }
        case 'JOIN':
        case 'LEAVE': // room, userId, name
          return [
            roomPart(a[0]),
            userPart(a[2] || a[1] || ev.user || '?', a[1] || ev.user),
            connPart(ev.conn || ''),
            part('ev-addr', ev.addr),
          ];
        case 'CONNECT': // connection, userId, name
          return [
            connPart(a[0]),
            userPart(a[2] || a[1] || ev.user || '?', a[1] || ev.user),
            part('ev-addr', `from ${ev.addr}`),
          ];
        case 'DISCONNECT': {
          const code = a[1] || '';
          const meaning = CLOSE_CODES[code];
          return [
            connPart(a[0]),
            userPart(ev.user || '?'),
            part('ev-code', meaning ? `${code} ${meaning}` : code),
          ];
        }
        case 'ERROR':
          return [part('ev-code', a[0] || ''), part('ev-text', a[1] || ''), connPart(ev.conn || ev.addr)];
        case 'KICK':
          return [connPart(a[0]), userPart(a[1] || '?'), part('ev-text', a[2] || ''), byPart(ev.addr)];
        case 'BROKER_UP':
        case 'BROKER_DOWN':
          return [part('ev-text', a[0] || '')];
        default:
          break;
      }
      return [part('ev-text', a.join(' '))];
    }

    function fillLine(li, ev) {
      li.replaceChildren();
      if (rawLines) {
        li.append(part('ev-raw', ev.line));
        li.title = `${when(ev.ts, true)} (local time)`;
        return;
      }
      const time = el('time', 'ev-time');
      setTime(time, ev.ts, true);
      const parts = [time, part('ev-node', ev.node), part('ev-kind', ev.kind), ...summary(ev)];
      parts.forEach((node, i) => (i ? li.append(' ', node) : li.append(node))); // spaces: copyable
      li.title = ev.line; // the exact MONITOR-style line
    }

    function lineElement(ev) {
      const li = el('li');
      li.dataset.kind = ev.kind;
      li.dataset.node = ev.node;
      if (ev.room != null) li.dataset.room = ev.room;
      if (ev.user != null) li.dataset.user = ev.user;
      eventOf.set(li, ev);
      fillLine(li, ev);
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
      const ws = new WebSocket(`${scheme}://${window.location.host}/admin/events?samples=1`);
      socket = ws;
      ws.addEventListener('open', () => {
        backoff = 500;
        sendFilter();
        setLive(paused ? 'paused' : 'live', paused ? 'paused' : 'live');
      });
      ws.addEventListener('message', (ev) => {
        const msg = parsed(ev.data);
        if (!msg) return;
        if (msg.type === 'events') onEvents(msg.events, msg.dropped || 0);
        else if (msg.type === 'samples') charts.add(msg.samples);
      });
      ws.addEventListener('close', () => {
        if (socket !== ws) return;
        socket = null;
        setLive('offline', `stream lost, retrying in ${Math.round(backoff / 1000)} s`);
        window.setTimeout(connectStream, backoff);
        backoff = Math.min(RECONNECT_MAX_MS, backoff * 2);
        needSamples = true; // samples were missed meanwhile: take the whole ring again
        refreshSoon(); // a 401 from the snapshot sends us to the login page
      });
    }

    let filterTimer = null;
    function onFilterChange() {
      window.clearTimeout(filterTimer);
      filterTimer = window.setTimeout(() => {
        filter = readFilter();
        sendFilter();
        for (const li of lines.children) li.hidden = !matches(filter, eventOf.get(li));
        writeUrl();
        updateStats();
      }, 150);
    }
    filterForm.addEventListener('input', onFilterChange);
    filterForm.addEventListener('change', onFilterChange);
    filterForm.addEventListener('submit', (ev) => ev.preventDefault());

    lines.addEventListener('click', (ev) => {
      const li = ev.target.closest('li');
      // a click shows a cut line whole (and again cut); selecting text is left alone
      if (li && !String(window.getSelection())) li.classList.toggle('open');
    });

    rawBox.addEventListener('change', () => {
      rawLines = rawBox.checked;
      lines.classList.toggle('raw', rawLines);
      for (const li of lines.children) fillLine(li, eventOf.get(li));
      writeUrl();
    });
    lines.classList.toggle('raw', rawLines);

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

    localizeTimes(document);
    writeUrl();
    connectStream();
    refresh();
  }

  // =====================================================================================
  // One connection: /admin/connections/{id}
  // =====================================================================================

  function detailPage() {
    const section = byTestId('detail');
    const facts = section.querySelector('.facts');
    if (!facts) return; // not on this node
    const id = section.dataset.conn;
    const live = byTestId('live');
    const field = (name) => section.querySelector(`[data-field="${name}"]`);
    const since = byTestId('detail-since').querySelector('time');
    const meter = byTestId('detail-fill').querySelector('meter');
    const report = reporter(byTestId('action-result'));
    let closed = false;

    function update(c) {
      setText(field('user'), c.user);
      setText(field('name'), c.name);
      setText(field('remote'), c.remote);
      setText(field('agent'), c.agent == null ? 'not recorded' : c.agent);
      setTime(since, c.since);
      setText(field('age'), ago(Date.now() / 1000 - c.since));
      const rooms = field('rooms');
      const items = c.rooms.map((room) => {
        const li = el('li');
        const link = el('a', null, room);
        link.href = `/admin/?room_q=${encodeURIComponent(room)}`;
        const members = c.members ? c.members[room] : null;
        li.append(link, ' ', el('span', 'muted', `${orUnknown(members)} members`));
        return li;
      });
      if (!items.length) items.push(el('li', 'muted', 'none'));
      const text = items.map((li) => li.textContent).join('|');
      if (Array.from(rooms.children, (li) => li.textContent).join('|') !== text) {
        rooms.replaceChildren(...items);
      }
      setText(field('in'), String(c.in));
      setText(field('out'), String(c.out));
      if (Number(meter.value) !== c.fill) meter.value = c.fill;
      setText(
        field('fill'),
        `${Math.round(c.fill * 100)}% (${bytes(c.buffered)} of ${bytes(c.limit)} unsent)`,
      );
    }

    async function poll() {
      try {
        const { res, data } = await getJson(`/admin/api/connections/${connPath(id)}`);
        if (res.status === 404) {
          closed = true;
          live.dataset.state = 'offline';
          setText(live, 'closed');
          section.classList.add('closed');
          return;
        }
        if (res.ok && data) {
          live.dataset.state = 'live';
          setText(live, 'open');
          update(data);
        }
      } catch (err) {
        // the server is restarting: try again
      }
      if (!closed) window.setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }

    const form = byTestId('kick-form');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const { res, data } = await post(form.action, {
        conn: id,
        reason: form.elements.reason.value,
      });
      if (!res.ok) report('error', `Kick failed: ${data.message || data.error || res.status}`);
      else report('ok', data.status === 'kicked' ? `Kicked ${id}` : `Kick of ${id} sent to its node`);
    });

    localizeTimes(document);
    poll();
  }

  if (document.body.classList.contains('detail')) detailPage();
  else consolePage();
})();
