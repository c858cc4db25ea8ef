/*
 * gochat browser client.
 *
 * Plain ES2020, no build step, no dependencies. The page runs under
 *   Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss:
 * so there is no inline script, style or event handler anywhere: index.html only
 * holds the skeleton and this file wires it up.
 *
 * Layout of this file:
 *   1. constants and helpers
 *   2. identity: display name, token, room (URL + localStorage)
 *   3. state
 *   4. view: log, members, status, notices, errors
 *   5. connection: socket lifecycle, backoff, close codes
 *   6. server frames
 *   7. user actions and start-up
 *
 * Safety rule: text that comes from users or the server (messages, names, room names,
 * error messages, close reasons) only ever reaches the DOM through textContent /
 * createTextNode. Nothing in this file uses innerHTML.
 *
 * Wire contract: docs/protocol.md.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------- 1. constants, helpers

  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const DEFAULT_ROOM = 'lobby';
  const NAME_MAX = 32; // characters (code points), as the server counts them
  const TEXT_MAX = 4096; // GOCHAT_MAX_TEXT default; the server has the last word (too_long)
  const NAME_KEY = 'gochat.name';

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;

  const ERROR_TTL_MS = 10000; // error items disappear on their own after this
  const MAX_ERRORS = 4; // at most this many error items on screen
  const MAX_RENDERED = 1000; // chat lines kept in the DOM for the current room
  const MAX_SEEN = 2000; // message ids remembered for de-duplication (>> history size)

  const CLOSE_NORMAL = 1000;
  const CLOSE_GOING_AWAY = 1001; // server shutting down
  const CLOSE_UNSUPPORTED = 1003; // we sent a binary frame (never happens)
  const CLOSE_POLICY = 1008; // bad token, or sustained rate abuse
  const CLOSE_TOO_BIG = 1009; // frame over GOCHAT_MAX_FRAME
  const CLOSE_SERVER_ERROR = 1011;
  const CLOSE_TRY_AGAIN = 1013; // slow consumer
  const CLOSE_KICKED = 4001; // operations console

  /** The element with data-testid=id (every hook the code needs has one). */
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  /** Creates an element; `text` is set with textContent, never parsed as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /**
   * Random hex string. crypto.getRandomValues works on plain http too;
   * crypto.randomUUID only exists in secure contexts, so it is not used.
   */
  function randomHex(bytes) {
    const buf = new Uint8Array(bytes);
    crypto.getRandomValues(buf);
    return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /** Length in code points, matching Python's len() on the server (emoji count once). */
  const charCount = (s) => Array.from(s).length;

  /** localStorage can throw (disabled storage, some private modes): degrade to memory. */
  const store = {
    memory: new Map(),
    get(key) {
      try {
        return window.localStorage.getItem(key);
      } catch {
        return this.memory.get(key) ?? null;
      }
    },
    set(key, value) {
      try {
        window.localStorage.setItem(key, value);
      } catch {
        this.memory.set(key, value);
      }
    },
  };

  // ---------------------------------------------------------------- 2. identity

  const params = new URLSearchParams(window.location.search);

  // Names the server keeps for itself and operator notices (refused with 400, which a page
  // cannot see: it would only reconnect, over and over).
  const RESERVED_NAMES = new Set(['system', 'admin', 'operator', 'moderator', 'gochat']);
  const NAME_RULE = `Names are 1-${NAME_MAX} characters, and not ${[...RESERVED_NAMES].join(', ')}.`;

  /** The trimmed name when it is acceptable, else null. */
  function cleanName(raw) {
    const name = String(raw ?? '').trim();
    if (RESERVED_NAMES.has(name.toLowerCase())) return null;
    return name.length > 0 && charCount(name) <= NAME_MAX ? name : null;
  }

  /**
   * ?name= wins (handy for links and tests, and not persisted, so it does not change
   * other tabs); then the stored name; else a new guest name, stored so every tab of
   * this browser uses it. The server derives the anonymous userId from the name, so
   * sharing the name is what makes two tabs one user.
   */
  function initialName() {
    if (params.has('name')) {
      const fromQuery = cleanName(params.get('name'));
      if (fromQuery) return fromQuery;
      startupErrors.push(['bad_name', `Ignoring ?name=: ${NAME_RULE}`]);
    }
    const stored = cleanName(store.get(NAME_KEY));
    if (stored) return stored;
    const guest = `guest-${randomHex(2)}`;
    store.set(NAME_KEY, guest);
    return guest;
  }

  /** The room named by the URL fragment ('' when there is none). */
  function hashRoom() {
    const raw = window.location.hash.slice(1);
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw; // malformed %-escape: validated (and rejected) as is
    }
  }

  /** Rewrites the fragment without firing hashchange or adding a history entry. */
  function replaceHash(room) {
    const url = `${window.location.pathname}${window.location.search}#${encodeURIComponent(room)}`;
    window.history.replaceState(window.history.state, '', url);
  }

  // ---------------------------------------------------------------- 3. state

  const startupErrors = []; // [code, message] found before the view exists

  /**
   * Per-room view state. Replaced when the user switches room; kept across reconnects,
   * which is what lets a rejoin send `since` and de-duplicate the overlap.
   */
  function newView(room) {
    return {
      room,
      seen: new Map(), // message id -> ts; ids are opaque, compared for equality only
      lastId: null, // id of the newest chat shown; sent back as `since`
      joinedOnce: false, // a `joined` for this view arrived at least once (so the next is a rejoin)
      pending: new Map(), // cid -> element of an own message the server has not echoed yet
    };
  }

  const state = {
    requestedName: '', // what we ask the server for (?name= / field / storage)
    token: params.get('token') || '',
    userId: null, // from welcome
    name: null, // from welcome (the server's word: JWT claim, normalisation)
    node: null,
    ws: null, // the current socket; events of any older socket are ignored
    conn: 'connecting', // connecting | online | reconnecting | stopped
    welcomed: false, // this socket has received `welcome`
    attempt: 0, // reconnect attempts since the last welcome
    retryAt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    joinedRooms: new Set(), // rooms the server confirmed with `joined` and we have not left
    leavesInFlight: new Map(), // room -> number of `leave` frames whose `left` has not come back
    members: new Map(), // userId -> name, current room only
    view: newView(DEFAULT_ROOM),
  };

  // ---------------------------------------------------------------- 4. view

  const ui = {
    roomTitle: byTestId('room-title'),
    status: byTestId('status'),
    retry: byTestId('retry'),
    nameForm: byTestId('name-form'),
    nameInput: byTestId('name'),
    roomForm: byTestId('room-form'),
    roomInput: byTestId('room'),
    identity: byTestId('identity'),
    notice: byTestId('notice'),
    noticeText: byTestId('notice-text'),
    reconnect: byTestId('reconnect'),
    errors: byTestId('errors'),
    announcer: byTestId('announcer'),
    log: byTestId('messages'),
    composer: byTestId('composer'),
    input: byTestId('message-input'),
    membersPanel: byTestId('members-panel'),
    members: byTestId('members'),
    memberCount: byTestId('member-count'),
  };

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const dayTimeFormat = new Intl.DateTimeFormat(undefined, {
    month: 'short',
    day: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });

  /** A <time> for `ts` (ms since epoch): time only for today, day and time otherwise. */
  function timeElement(ts) {
    const node = el('time', 'msg-time');
    const date = new Date(ts);
    if (typeof ts !== 'number' || Number.isNaN(date.getTime())) return node;
    const today = new Date().toDateString() === date.toDateString();
    node.dateTime = date.toISOString();
    node.title = date.toLocaleString();
    node.textContent = (today ? timeFormat : dayTimeFormat).format(date);
    return node;
  }

  function isNearBottom() {
    const { scrollHeight, scrollTop, clientHeight } = ui.log;
    return scrollHeight - scrollTop - clientHeight < 48;
  }

  /**
   * Adds a line to the log. Own messages not yet echoed stay at the bottom: everything
   * else goes in front of the first of them, so the log keeps the server's order.
   * The view only follows new lines when the reader is already at the bottom.
   */
  function appendLine(node, { forceScroll = false } = {}) {
    const follow = forceScroll || isNearBottom();
    const firstPending = node.classList.contains('pending')
      ? null
      : ui.log.querySelector(':scope > .pending');
    ui.log.insertBefore(node, firstPending);
    while (ui.log.childElementCount > MAX_RENDERED) ui.log.firstElementChild.remove();
    if (follow) ui.log.scrollTop = ui.log.scrollHeight;
  }

  /** A system line (joins, leaves, gaps) in the log; `kind` becomes data-kind. */
  function addSystemLine(text, kind) {
    const line = el('div', 'system', text);
    line.dataset.testid = 'system';
    line.dataset.kind = kind;
    appendLine(line);
  }

  /** One chat line: sender name, time, text; `extra` classes for own/pending/failed. */
  function chatElement({ name, text, ts, userId }) {
    const line = el('div', 'msg');
    line.dataset.testid = 'chat';
    const meta = el('div', 'msg-meta');
    meta.append(el('span', 'msg-name', name), ' ', timeElement(ts));
    line.append(meta, el('div', 'msg-text', text));
    if (userId !== undefined && userId !== null) line.dataset.userId = String(userId);
    if (state.userId !== null && String(userId) === state.userId) line.classList.add('own');
    return line;
  }

  /** Clears the log and member list for a new room. */
  function resetRoomView() {
    ui.log.replaceChildren();
    state.members.clear();
    renderMembers();
  }

  function renderRoom() {
    const { room } = state.view;
    ui.roomTitle.textContent = `#${room}`;
    // Not "Messages…": the composer's label "Message" should stay the only one matching it.
    ui.log.setAttribute('aria-label', `Conversation in #${room}`);
    ui.input.placeholder = `Message #${room}`;
    if (document.activeElement !== ui.roomInput) ui.roomInput.value = room;
    document.title = `#${room} · gochat`;
    document.body.dataset.room = room;
    renderJoined();
  }

  /** body[data-joined] is "true" once the current room's `joined` arrived (a test hook). */
  function renderJoined() {
    document.body.dataset.joined = String(canSend());
    ui.composer.classList.toggle('not-ready', !canSend());
  }

  function renderMembers() {
    const sorted = [...state.members].sort(([, a], [, b]) =>
      a.localeCompare(b, undefined, { sensitivity: 'base' }),
    );
    const items = sorted.map(([userId, name]) => {
      const item = el('li', 'member');
      item.dataset.testid = 'member';
      item.dataset.userId = userId;
      item.append(el('span', 'member-name', name));
      if (userId === state.userId) {
        item.classList.add('self');
        item.append(' ', el('span', 'member-you', '(you)'));
      }
      return item;
    });
    ui.members.replaceChildren(...items);
    ui.memberCount.textContent = String(state.members.size);
  }

  function renderIdentity() {
    ui.identity.replaceChildren();
    if (state.userId === null) return;
    ui.identity.append(
      'You are ',
      el('strong', null, state.name),
      ' on node ',
      el('code', 'node', state.node),
    );
    ui.identity.title = `userId ${state.userId}`;
  }

  const STATUS_TEXT = {
    connecting: () => 'Connecting…',
    online: () => 'Online',
    reconnecting: () => {
      const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      return `Reconnecting in ${seconds}s`;
    },
    stopped: () => 'Disconnected',
  };

  /** Shows the connection state; announces changes (not countdown ticks) to screen readers. */
  function setConn(conn) {
    const changed = conn !== state.conn;
    state.conn = conn;
    document.body.dataset.conn = conn;
    ui.status.dataset.state = conn;
    ui.status.textContent = STATUS_TEXT[conn]();
    ui.retry.hidden = conn !== 'reconnecting';
    if (changed) {
      ui.announcer.textContent = conn === 'reconnecting' ? 'Reconnecting' : STATUS_TEXT[conn]();
    }
    renderJoined();
  }

  /**
   * The banner for close codes. kind "stop" means no automatic reconnect: it stays,
   * with a Reconnect button, until the user acts. kind "info" is cleared by the next welcome.
   */
  function showNotice(kind, text) {
    ui.notice.hidden = false;
    ui.notice.dataset.kind = kind;
    ui.noticeText.textContent = text;
    ui.reconnect.hidden = kind !== 'stop';
  }

  function hideNotice() {
    ui.notice.hidden = true;
    ui.notice.dataset.kind = '';
    ui.noticeText.textContent = '';
  }

  /** An error item: code and message, removed after ERROR_TTL_MS or by its button. */
  function showError(code, message) {
    const item = el('div', 'error-item');
    item.dataset.testid = 'error';
    item.dataset.code = String(code);
    const dismiss = el('button', 'error-dismiss', '×');
    dismiss.type = 'button';
    dismiss.setAttribute('aria-label', 'Dismiss error');
    item.append(
      el('strong', 'error-code', code),
      ' ',
      el('span', 'error-message', message),
      dismiss,
    );
    const timer = window.setTimeout(() => item.remove(), ERROR_TTL_MS);
    dismiss.addEventListener('click', () => {
      window.clearTimeout(timer);
      item.remove();
    });
    ui.errors.append(item);
    while (ui.errors.childElementCount > MAX_ERRORS) ui.errors.firstElementChild.remove();
  }

  // ---------------------------------------------------------------- 5. connection

  function wsUrl() {
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({ name: state.requestedName });
    if (state.token) query.set('token', state.token);
    return `${scheme}//${window.location.host}/ws?${query}`;
  }

  function clearRetry() {
    window.clearTimeout(state.retryTimer);
    window.clearInterval(state.countdownTimer);
    state.retryTimer = 0;
    state.countdownTimer = 0;
  }

  /** Opens a new socket (dropping any current one without triggering its close handling). */
  function connect() {
    clearRetry();
    const old = state.ws;
    state.ws = null;
    if (old) {
      old.close(CLOSE_NORMAL, 'reconnecting');
      markPendingUncertain();
    }
    state.welcomed = false;
    state.joinedRooms.clear();
    state.leavesInFlight.clear();
    setConn('connecting');

    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      showError('client', `Cannot open the connection: ${err.message}`);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    // Events of a socket that is no longer current (replaced after a rename or a
    // manual retry) are ignored, so an old close cannot schedule a second reconnect.
    ws.addEventListener('message', (ev) => {
      if (state.ws === ws) handleFrame(ev.data);
    });
    ws.addEventListener('close', (ev) => {
      if (state.ws === ws) handleClose(ev);
    });
    // 'error' carries no detail and is always followed by 'close', which handles it.
  }

  /** Full-jitter exponential backoff: uniform in [0, min(cap, base * 2^attempt)). */
  function scheduleReconnect() {
    clearRetry();
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
    const delay = Math.random() * ceiling;
    state.attempt = Math.min(state.attempt + 1, 16);
    state.retryAt = Date.now() + delay;
    state.retryTimer = window.setTimeout(connect, delay);
    // Ticks faster than once a second so the shown number never lags by a whole second.
    state.countdownTimer = window.setInterval(() => {
      if (state.conn === 'reconnecting') ui.status.textContent = STATUS_TEXT.reconnecting();
    }, 250);
    setConn('reconnecting');
  }

  /** No automatic reconnect: used after a kick, or when the server refuses us outright. */
  function stop(message) {
    clearRetry();
    setConn('stopped');
    showNotice('stop', message);
  }

  function handleClose(ev) {
    const wasWelcomed = state.welcomed;
    state.ws = null;
    state.welcomed = false;
    state.joinedRooms.clear();
    state.leavesInFlight.clear();
    const reason = ev.reason ? ev.reason : '';
    markPendingUncertain();

    switch (ev.code) {
      case CLOSE_KICKED:
        stop(`You were disconnected by an operator: ${reason || 'no reason given'}`);
        return;
      case CLOSE_POLICY:
        if (!wasWelcomed) {
          // Refused before `welcome`: a bad or expired token. The same URL would be refused
          // again, so retrying on a timer would only loop; let the user decide.
          refused(reason);
          return;
        }
        showNotice(
          'info',
          `Disconnected by the server for sending too fast${reason ? ` (${reason})` : ''}. ` +
            'Reconnecting…',
        );
        break;
      case CLOSE_GOING_AWAY:
        showNotice('info', 'The server is restarting. Reconnecting…');
        break;
      case CLOSE_TRY_AGAIN:
        showNotice('info', 'The connection fell behind and was reset. Reconnecting…');
        break;
      case CLOSE_TOO_BIG:
      case CLOSE_UNSUPPORTED:
      case CLOSE_SERVER_ERROR:
        showNotice(
          'info',
          `Connection closed by the server (${ev.code}${reason ? `: ${reason}` : ''}). ` +
            'Reconnecting…',
        );
        break;
      default:
        // 1006 and friends: network loss, refused upgrade (401 token, 403 origin, 429 per-IP
        // limit, 503 full or restarting), ...
        if (!wasWelcomed && state.token) {
          // A page never sees the status of a refused upgrade. With a token, ask once over
          // plain HTTP: a 401 means this token will be refused on every retry.
          tokenRefused().then((isRefused) => {
            if (state.ws !== null || state.conn === 'stopped') return; // superseded
            if (isRefused) refused('');
            else scheduleReconnect();
          });
          return;
        }
        break;
    }
    scheduleReconnect();
  }

  function refused(reason) {
    stop(
      `The server refused the connection${state.token ? ' (check the token)' : ''}` +
        `${reason ? `: ${reason}` : '.'}`,
    );
  }

  /** True when /ws answers 401 to this page's token (a GET without the upgrade). */
  async function tokenRefused() {
    try {
      const url = wsUrl().replace(/^ws/, 'http');
      const resp = await fetch(url, { cache: 'no-store', credentials: 'omit' });
      return resp.status === 401;
    } catch {
      return false;
    }
  }

  /** Sends a frame on the current socket; false when there is no open socket. */
  function send(frame) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** Joins the current room; after a reconnect `since` asks for what was said meanwhile. */
  function joinCurrentRoom() {
    const { view } = state;
    const frame = { type: 'join', room: view.room };
    if (view.lastId !== null) frame.since = view.lastId;
    send(frame);
  }

  function sendLeave(room) {
    if (send({ type: 'leave', room })) {
      state.leavesInFlight.set(room, (state.leavesInFlight.get(room) || 0) + 1);
    }
  }

  function canSend() {
    return state.welcomed && state.joinedRooms.has(state.view.room);
  }

  // ---------------------------------------------------------------- 6. server frames

  function handleFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return; // not JSON (a Blob from a binary frame, say): not part of the contract
    }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return;
    const handler = Object.prototype.hasOwnProperty.call(handlers, msg.type)
      ? handlers[msg.type]
      : null;
    if (handler) handler(msg); // unknown types and unknown fields are ignored (contract)
  }

  const handlers = {
    welcome(msg) {
      state.welcomed = true;
      state.attempt = 0; // backoff starts over after a successful welcome
      state.userId = String(msg.userId);
      state.name = String(msg.name ?? state.requestedName);
      state.node = String(msg.node ?? '?');
      if (ui.notice.dataset.kind === 'info') hideNotice();
      renderIdentity();
      if (document.activeElement !== ui.nameInput) ui.nameInput.value = state.name;
      setConn('online');
      joinCurrentRoom();
    },

    joined(msg) {
      const room = String(msg.room);
      const { view } = state;
      if (room !== view.room) {
        // The user switched away before this reply came: leave again so the server
        // does not keep us (and our presence) in a room nobody is looking at.
        sendLeave(room);
        return;
      }
      state.joinedRooms.add(room);
      const isRejoin = view.joinedOnce;
      view.joinedOnce = true;

      state.members.clear();
      for (const m of Array.isArray(msg.members) ? msg.members : []) {
        if (m && m.userId !== undefined) {
          state.members.set(String(m.userId), String(m.name ?? m.userId));
        }
      }
      // The list is cluster-wide and should hold us already; make sure it does.
      if (state.userId !== null && !state.members.has(state.userId)) {
        state.members.set(state.userId, state.name);
      }
      renderMembers();

      if (isRejoin && msg.recovered === false) {
        addSystemLine('Reconnected: some messages may be missing.', 'gap');
      } else if (!isRejoin) {
        addSystemLine(`You joined #${room}`, 'joined');
      }
      for (const chat of Array.isArray(msg.history) ? msg.history : []) addChat(chat);
      // History has echoed whatever own messages got through before a disconnect;
      // the rest cannot be confirmed any more.
      for (const [cid, line] of view.pending) {
        if (line.dataset.state === 'uncertain') markFailed(cid, 'may not have been sent');
      }
      renderJoined();
    },

    left(msg) {
      const room = String(msg.room);
      state.joinedRooms.delete(room);
      const inFlight = state.leavesInFlight.get(room) || 0;
      if (inFlight > 0) {
        // Reply to our own leave (possibly for a room we have switched back to since).
        if (inFlight === 1) state.leavesInFlight.delete(room);
        else state.leavesInFlight.set(room, inFlight - 1);
      } else if (room === state.view.room) {
        addSystemLine(`You are no longer in #${room}.`, 'left');
      }
      renderJoined();
    },

    chat(msg) {
      if (String(msg.room) === state.view.room) addChat(msg);
    },

    presence(msg) {
      if (String(msg.room) !== state.view.room) return;
      const userId = String(msg.userId);
      const name = String(msg.name ?? userId);
      if (msg.status === 'online') {
        state.members.set(userId, name);
        addSystemLine(`${name} joined`, 'presence-online');
      } else if (msg.status === 'offline') {
        state.members.delete(userId);
        addSystemLine(`${name} left`, 'presence-offline');
      } else {
        return;
      }
      renderMembers();
    },

    error(msg) {
      const code = String(msg.code ?? 'error');
      const message = String(msg.message ?? '');
      if (msg.ref !== undefined && msg.ref !== null && state.view.pending.has(String(msg.ref))) {
        markFailed(String(msg.ref), `not sent: ${code}`);
      }
      showError(code, message);
    },
  };

  /**
   * Shows a chat message once. History after a reconnect overlaps what is on screen,
   * so ids already shown are skipped. The ts is compared too: should a restarted
   * in-memory server hand out the same ids again, a different message is not swallowed.
   */
  function addChat(msg) {
    if (!msg || msg.id === undefined || msg.id === null) return;
    const { view } = state;
    const key = String(msg.id);
    if (view.seen.has(key) && view.seen.get(key) === msg.ts) return;
    view.seen.set(key, msg.ts);
    if (view.seen.size > MAX_SEEN) view.seen.delete(view.seen.keys().next().value);
    view.lastId = msg.id;

    const line = chatElement(msg);
    line.dataset.id = key;
    let own = false;
    if (typeof msg.cid === 'string') {
      line.dataset.cid = msg.cid;
      const pending = view.pending.get(msg.cid);
      if (pending) {
        pending.remove();
        view.pending.delete(msg.cid);
        own = true;
      }
    }
    appendLine(line, { forceScroll: own });
  }

  /** Shows an own message right away, dimmed, until the server's echo (same cid) replaces it. */
  function addPending(cid, text) {
    const line = chatElement({ name: state.name, text, ts: null, userId: state.userId });
    line.classList.add('pending');
    line.dataset.cid = cid;
    line.dataset.state = 'pending';
    line.querySelector('.msg-time').textContent = 'sending…';
    state.view.pending.set(cid, line);
    appendLine(line, { forceScroll: true });
  }

  function markFailed(cid, why) {
    const line = state.view.pending.get(cid);
    if (!line) return;
    state.view.pending.delete(cid);
    line.classList.remove('pending');
    line.classList.add('failed');
    line.dataset.state = 'failed';
    line.querySelector('.msg-time').textContent = why;
  }

  /** On disconnect, unechoed messages may or may not have reached the server. */
  function markPendingUncertain() {
    for (const line of state.view.pending.values()) line.dataset.state = 'uncertain';
  }

  // ---------------------------------------------------------------- 7. user actions, start-up

  const badRoomMessage = (room) =>
    `"${room}" is not a valid room name (1-64 letters, digits, "_", "." or "-").`;

  function switchRoom(room) {
    if (room === state.view.room) return;
    const old = state.view.room;
    if (state.joinedRooms.has(old)) {
      state.joinedRooms.delete(old);
      sendLeave(old);
    }
    // A join for `old` still in flight is handled when its `joined` arrives (we leave then).
    state.view = newView(room);
    resetRoomView();
    renderRoom();
    if (state.welcomed) joinCurrentRoom();
  }

  /** Follows the URL fragment; an invalid room name is reported and the URL put back. */
  function onHashChange() {
    const room = hashRoom() || DEFAULT_ROOM;
    if (!ROOM_RE.test(room)) {
      showError('bad_room', badRoomMessage(room));
      replaceHash(state.view.room);
      return;
    }
    switchRoom(room);
  }

  function onRoomSubmit(ev) {
    ev.preventDefault();
    const room = ui.roomInput.value.trim();
    if (!ROOM_RE.test(room)) {
      showError('bad_room', badRoomMessage(room));
      return;
    }
    if (room === state.view.room) return;
    // Going through the fragment keeps the URL shareable and the back button meaningful;
    // hashchange then does the switch.
    window.location.hash = encodeURIComponent(room);
  }

  function applyName() {
    const name = cleanName(ui.nameInput.value);
    if (!name) {
      showError('bad_name', NAME_RULE);
      ui.nameInput.value = state.name ?? state.requestedName;
      return;
    }
    ui.nameInput.value = name;
    if (name === state.requestedName) return;
    state.requestedName = name;
    store.set(NAME_KEY, name);
    if (params.has('name')) {
      // Keep a reload on the new name rather than the one from the original link.
      params.set('name', name);
      const url = `${window.location.pathname}?${params}${window.location.hash}`;
      window.history.replaceState(window.history.state, '', url);
    }
    // The name is part of the /ws URL (and of the anonymous userId): reconnect. The
    // current room view is kept, so the rejoin uses `since` like any reconnect.
    hideNotice();
    state.attempt = 0;
    connect();
  }

  function onSend(ev) {
    ev.preventDefault();
    const text = ui.input.value;
    if (!text.trim()) return;
    if (charCount(text) > TEXT_MAX) {
      showError('too_long', `Messages are at most ${TEXT_MAX} characters.`);
      return;
    }
    if (!canSend()) {
      // Keep the text in the box: nothing is lost, the user can press Enter again.
      showError('not_connected', `Not in #${state.view.room} yet; your message was not sent.`);
      return;
    }
    const cid = randomHex(8);
    send({ type: 'chat', room: state.view.room, text, cid });
    addPending(cid, text);
    ui.input.value = '';
    ui.input.focus();
  }

  function manualReconnect() {
    hideNotice();
    state.attempt = 0;
    connect();
  }

  function start() {
    state.requestedName = initialName();
    ui.nameInput.value = state.requestedName;

    let room = hashRoom() || DEFAULT_ROOM;
    if (!ROOM_RE.test(room)) {
      startupErrors.push(['bad_room', `${badRoomMessage(room)} Opened #${DEFAULT_ROOM}.`]);
      room = DEFAULT_ROOM;
      replaceHash(room);
    }
    state.view = newView(room);
    renderRoom();
    renderMembers();
    for (const [code, message] of startupErrors) showError(code, message);

    // On a phone the member list starts folded below the conversation.
    if (window.matchMedia('(max-width: 700px)').matches) ui.membersPanel.open = false;

    window.addEventListener('hashchange', onHashChange);
    ui.roomForm.addEventListener('submit', onRoomSubmit);
    ui.nameForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      applyName();
    });
    ui.nameInput.addEventListener('change', applyName);
    ui.composer.addEventListener('submit', onSend);
    ui.reconnect.addEventListener('click', manualReconnect);
    ui.retry.addEventListener('click', () => connect());
    // Back online: do not sit out the rest of a long backoff.
    window.addEventListener('online', () => {
      if (state.conn === 'reconnecting') connect();
    });

    connect();
  }

  start();
})();
