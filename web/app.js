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
 *   2. identity: display name, anonymous id, token, room (URL + localStorage)
 *   3. state
 *   4. view: log, names, members, status, notices, errors, the new-messages cue
 *   5. connection: socket lifecycle, backoff, close codes
 *   6. own messages: queue, pacing, confirmation, retry
 *   7. server frames
 *   8. user actions and start-up
 *
 * Safety rule: text that comes from users or the server (messages, names, room names,
 * error messages, close reasons) only ever reaches the DOM through textContent /
 * createTextNode. Nothing in this file uses innerHTML.
 *
 * Bidirectional text: every user-chosen name is in a <bdi> and every message (and the
 * message box) has dir="auto", so an Arabic or Hebrew name cannot reorder the time or the
 * words around it, and right-to-left messages read right to left.
 *
 * Wire contract: docs/protocol.md.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------- 1. constants, helpers

  const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
  const UID_RE = /^[A-Za-z0-9_-]{8,64}$/; // the server's rule for `uid`
  const DEFAULT_ROOM = 'lobby';
  const NAME_MAX = 32; // characters (code points), as the server counts them
  const TEXT_MAX = 4096; // GOCHAT_MAX_TEXT default; the server has the last word (too_long)
  const NAME_KEY = 'gochat.name';
  const UID_KEY = 'gochat.uid';

  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;

  // Pacing of our own chat messages. The server's limit (GOCHAT_RATE: 20 frames a second
  // per connection by default, bursts of twice that) is not sent to clients, so this is a
  // conservative constant below the default, with room for joins and pongs: a bucket of
  // SEND_BURST refilled at SEND_RATE a second. A server set lower still answers
  // rate_limited; the refused message is marked "not sent" and the queue waits
  // RATE_PAUSE_MS, then goes on at the steady rate without a burst. The server forgives a
  // connection whose bucket has refilled by a second's worth (else it closes it with 1008
  // after 5 s over the rate); its bucket holds two seconds' worth, so two seconds of
  // silence always suffice.
  const SEND_RATE = 15; // messages per second
  const SEND_BURST = 15;
  const RATE_PAUSE_MS = 2000;

  const ERROR_TTL_MS = 10000; // error items disappear on their own after this
  const MAX_ERRORS = 4; // at most this many error items on screen
  const MAX_RENDERED = 1000; // chat lines kept in the DOM for the current room
  const MAX_SEEN = 2000; // message ids remembered for de-duplication (>> history size)
  const SMALL_SCREEN = '(max-width: 700px)'; // keep in step with style.css

  const CLOSE_NORMAL = 1000;
  const CLOSE_GOING_AWAY = 1001; // server shutting down
  const CLOSE_UNSUPPORTED = 1003; // we sent a binary frame (never happens)
  const CLOSE_POLICY = 1008; // bad token, or sustained rate abuse
  const CLOSE_TOO_BIG = 1009; // frame over GOCHAT_MAX_FRAME
  const CLOSE_SERVER_ERROR = 1011;
  const CLOSE_TRY_AGAIN = 1013; // slow consumer
  const CLOSE_KICKED = 4001; // operations console

  // Why a message was refused, in the words shown on it ("not sent (too fast)").
  const REFUSED_WHY = {
    rate_limited: 'too fast',
    too_long: 'too long',
    unavailable: 'server busy',
    not_in_room: 'not in the room',
    unauthorized: 'not allowed',
  };

  /** The element with data-testid=id (every hook the code needs has one). */
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  /** Creates an element; `text` is set with textContent, never parsed as HTML. */
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** A button of type "button" with a test id. */
  function button(className, text, testId) {
    const node = el('button', className, text);
    node.type = 'button';
    if (testId) node.dataset.testid = testId;
    return node;
  }

  /**
   * Random bytes. crypto.getRandomValues works on plain http too; crypto.randomUUID only
   * exists in secure contexts, so it is not used.
   */
  function randomBytes(count) {
    const buf = new Uint8Array(count);
    crypto.getRandomValues(buf);
    return buf;
  }

  const randomHex = (bytes) =>
    Array.from(randomBytes(bytes), (b) => b.toString(16).padStart(2, '0')).join('');

  /** 128 random bits as 22 base64url characters (matches UID_RE). */
  function randomUid() {
    const b64 = btoa(String.fromCharCode(...randomBytes(16)));
    return b64.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  /** 32-bit FNV-1a of a string, as 8 hex digits: the seed of a name's disambiguator. */
  function fnv1a(s) {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i += 1) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return h.toString(16).padStart(8, '0');
  }

  /** Length in code points, matching Python's len() on the server (emoji count once). */
  const charCount = (s) => Array.from(s).length;

  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

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
   * this browser uses it. The name is for display only: the user is the `uid` below.
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

  /**
   * The anonymous identity of this browser: made once, kept in localStorage and sent as
   * `uid`, so every tab is one member and a rename is the same person under a new name.
   */
  function initialUid() {
    const stored = store.get(UID_KEY);
    if (stored && UID_RE.test(stored)) return stored;
    const uid = randomUid();
    store.set(UID_KEY, uid);
    return uid;
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
   * which is what lets a rejoin send `since`, de-duplicate the overlap and resend what
   * was not confirmed.
   */
  function newView(room) {
    return {
      room,
      seen: new Map(), // message id -> ts; ids are opaque, compared for equality only
      lastId: null, // id of the newest chat shown; sent back as `since`
      joinedOnce: false, // a `joined` for this view arrived at least once (so the next is a rejoin)
      // Own messages not confirmed yet, oldest first: cid -> {cid, text, status, why, line};
      // status is queued (to send), sent (awaiting the server's chat or error) or failed.
      outgoing: new Map(),
      names: new Map(), // userId -> latest name seen in this room (renames)
      owners: new Map(), // folded name -> userIds that used it here (disambiguators)
      lastLine: null, // the log line added last (a rename replaces the "left" just before)
      unread: 0, // chat lines added while the reader was scrolled up
    };
  }

  const state = {
    requestedName: '', // what we ask the server for (?name= / field / storage)
    uid: '', // anonymous identity (sent only without a token)
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
    pacer: { tokens: SEND_BURST, last: 0, timer: 0 }, // token bucket of our chat frames
    errors: new Map(), // key -> {item, text, count, timer, render}: the error items shown
  };

  // ---------------------------------------------------------------- 4. view

  const ui = {
    roomTitle: byTestId('room-title'),
    status: byTestId('status'),
    retry: byTestId('retry'),
    menu: byTestId('menu'),
    menuName: byTestId('menu-name'),
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
    newMessages: byTestId('new-messages'),
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
   * Adds a line to the log. Own messages not yet confirmed stay at the bottom: everything
   * else goes in front of the first of them, so the log keeps the server's order.
   * The view follows new lines only when the reader is already at the bottom (or sent the
   * line); otherwise a line that `counts` adds to the "new messages" button.
   */
  function appendLine(node, { forceScroll = false, counts = false } = {}) {
    const follow = forceScroll || isNearBottom();
    const pending = node.classList.contains('pending');
    const firstPending = pending ? null : ui.log.querySelector(':scope > .pending');
    ui.log.insertBefore(node, firstPending);
    if (!pending) state.view.lastLine = node;
    while (ui.log.childElementCount > MAX_RENDERED) ui.log.firstElementChild.remove();
    if (follow) {
      scrollToLatest();
    } else if (counts) {
      state.view.unread += 1;
      renderUnread();
    }
  }

  function scrollToLatest() {
    ui.log.scrollTop = ui.log.scrollHeight;
    state.view.unread = 0;
    renderUnread();
  }

  function renderUnread() {
    const n = state.view.unread;
    ui.newMessages.hidden = n === 0;
    ui.newMessages.textContent = n === 0 ? '' : `${plural(n, 'new message')} ↓`;
  }

  // --- names: isolation, renames, disambiguators

  /** A name compared for clashes: "Carol" and "carol" look like one person. */
  const foldName = (name) => name.normalize('NFC').toLowerCase();

  /**
   * Remembers that `userId` showed up as `name` in this room. Returns true when that
   * adds a user to a name someone else has used (shown tags then need a refresh).
   */
  function noteOwner(userId, name) {
    const { owners } = state.view;
    const key = foldName(name);
    let users = owners.get(key);
    if (!users) {
      users = new Set();
      owners.set(key, users);
    }
    const before = users.size;
    users.add(userId);
    return users.size > before && users.size >= 2;
  }

  /**
   * "" for a name only one user has used in this room; else " (#a3f)": the first hex
   * digits of a hash of the userId, as many as set it apart from the others of that name.
   */
  function nameTag(userId, name) {
    const users = state.view.owners.get(foldName(name));
    if (!users || users.size < 2) return '';
    const mine = fnv1a(userId);
    const others = [...users].filter((u) => u !== userId).map(fnv1a);
    let length = 3;
    while (length < 8 && others.some((h) => h.startsWith(mine.slice(0, length)))) length += 1;
    const clash = others.some((h) => h === mine);
    return ` (#${clash ? userId : mine.slice(0, length)})`;
  }

  /** [<bdi>name</bdi>, <span>tag</span>]: a name isolated from the text around it. */
  function nameParts(userId, name, className) {
    const tag = el('span', 'name-tag', nameTag(userId, name));
    tag.dataset.userId = userId;
    tag.dataset.name = name;
    return [el('bdi', className, name), tag];
  }

  const systemName = (userId, name) => nameParts(userId, name, 'system-name');

  /** Rewrites every tag on screen (a name just became shared). */
  function refreshTags() {
    for (const tag of document.querySelectorAll('.name-tag')) {
      tag.textContent = nameTag(tag.dataset.userId ?? '', tag.dataset.name ?? '');
    }
  }

  /**
   * Records `userId`'s current name in this room. Returns the previous one when the user
   * was known here under another name (a rename), else null.
   */
  function noteName(userId, name) {
    const { names } = state.view;
    const old = names.get(userId);
    names.set(userId, name);
    if (noteOwner(userId, name)) refreshTags();
    return old !== undefined && old !== name ? old : null;
  }

  /** "Carol is now Carol R." (our own renames are told by `welcome`). */
  function showRename(userId, old, name) {
    if (userId === state.userId) return;
    const parts = [...systemName(userId, old), ' is now ', ...systemName(userId, name)];
    addSystemLine(parts, 'rename', userId);
  }

  // --- lines

  /** A system line (joins, leaves, renames, gaps) in the log; `kind` becomes data-kind. */
  function addSystemLine(parts, kind, userId) {
    const line = el('div', 'system');
    line.append(...[].concat(parts));
    line.dataset.testid = 'system';
    line.dataset.kind = kind;
    if (userId !== undefined) line.dataset.userId = userId;
    appendLine(line);
    return line;
  }

  /** One chat line: sender name, time, text. */
  function chatElement({ name, text, ts, userId }) {
    const line = el('div', 'msg');
    line.dataset.testid = 'chat';
    const uid = userId === undefined || userId === null ? '' : String(userId);
    if (uid) line.dataset.userId = uid;
    if (state.userId !== null && uid === state.userId) line.classList.add('own');
    const meta = el('div', 'msg-meta');
    meta.append(...nameParts(uid, String(name ?? uid), 'msg-name'), ' ', timeElement(ts));
    const body = el('div', 'msg-text', text);
    body.dir = 'auto';
    line.append(meta, body);
    return line;
  }

  /**
   * An operator notice: a chat frame the server marked `system: true`. It is a banner of
   * its own, not a message row, so no user can produce it, whatever name they pick.
   */
  function noticeElement({ text, ts }) {
    const line = el('div', 'operator-notice');
    line.dataset.testid = 'operator-notice';
    line.setAttribute('role', 'note');
    const head = el('div', 'operator-notice-head');
    const label = el('strong', 'operator-notice-label', 'Notice from the operators');
    head.append(label, ' ', timeElement(ts));
    const body = el('div', 'operator-notice-text', text);
    body.dir = 'auto';
    line.append(head, body);
    return line;
  }

  /** Clears the log and member list for a new room. */
  function resetRoomView() {
    ui.log.replaceChildren();
    state.members.clear();
    renderMembers();
    renderUnread();
  }

  function renderRoom() {
    const { room } = state.view;
    ui.roomTitle.textContent = `#${room}`;
    // Not "Messages…": the composer's label "Message" should stay the only one matching it.
    ui.log.setAttribute('aria-label', `Conversation in #${room}`);
    if (document.activeElement !== ui.roomInput) ui.roomInput.value = room;
    document.title = `#${room} · gochat`;
    document.body.dataset.room = room;
    renderJoined();
  }

  /**
   * body[data-joined] is "true" once the current room's `joined` arrived (a test hook).
   * Typing works either way: offline, messages wait in the queue.
   */
  function renderJoined() {
    const ready = canSend();
    document.body.dataset.joined = String(ready);
    const { room } = state.view;
    ui.input.placeholder = isOffline() ? `Message #${room} (offline)` : `Message #${room}`;
    for (const entry of state.view.outgoing.values()) renderEntry(entry);
  }

  function renderMembers() {
    const sorted = [...state.members].sort(
      ([ua, a], [ub, b]) =>
        a.localeCompare(b, undefined, { sensitivity: 'base' }) || (ua < ub ? -1 : ua > ub ? 1 : 0),
    );
    const items = sorted.map(([userId, name]) => {
      const item = el('li', 'member');
      item.dataset.testid = 'member';
      item.dataset.userId = userId;
      item.append(...nameParts(userId, name, 'member-name'));
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
    const name = state.name ?? state.requestedName;
    ui.menuName.textContent = name;
    ui.identity.replaceChildren();
    if (state.userId === null) return;
    const strong = el('strong');
    strong.append(el('bdi', null, name));
    ui.identity.append('You are ', strong, ' on node ', el('code', 'node', state.node));
    ui.identity.title = `userId ${state.userId}`;
  }

  const STATUS_TEXT = {
    connecting: 'Connecting…',
    online: 'Online',
    reconnecting: 'Offline',
    stopped: 'Disconnected',
  };

  /** The status text; while reconnecting, a countdown (left out on small screens). */
  function renderStatus() {
    ui.status.textContent = STATUS_TEXT[state.conn];
    if (state.conn === 'reconnecting') {
      const seconds = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
      ui.status.append(el('span', 'status-detail', `, retrying in ${seconds}s`));
    }
  }

  /** Disconnected after having been online (the first connection attempt is not "offline"). */
  function isOffline() {
    return state.conn !== 'online' && (state.conn !== 'connecting' || state.userId !== null);
  }

  /** Shows the connection state; announces changes (not countdown ticks) to screen readers. */
  function setConn(conn) {
    const changed = conn !== state.conn;
    state.conn = conn;
    document.body.dataset.conn = conn;
    ui.status.dataset.state = conn;
    renderStatus();
    ui.retry.hidden = conn !== 'reconnecting';
    if (changed) {
      const said = conn === 'reconnecting' ? 'Offline, reconnecting' : STATUS_TEXT[conn];
      ui.announcer.textContent = said;
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

  /**
   * An error item: code and message, removed after ERROR_TTL_MS or by its button.
   * An error already on screen (same `key`: by default its code and message) is not shown
   * again: its item counts it, and `message` may be a function of that count.
   * `scope: 'conn'` marks errors about the connection, cleared once it is back;
   * `action` ({label, run}) adds a button that runs and then dismisses the item.
   */
  function showError(code, message, { key, scope = '', action = null } = {}) {
    const render =
      typeof message === 'function'
        ? message
        : (n) => (n > 1 ? `${message} (×${n})` : String(message));
    const id = key ?? `${code}\n${typeof message === 'function' ? '' : message}`;
    let entry = state.errors.get(id);
    if (entry) {
      entry.count += 1;
      window.clearTimeout(entry.timer);
    } else {
      const item = el('div', 'error-item');
      item.dataset.testid = 'error';
      item.dataset.code = String(code);
      item.dataset.key = id;
      if (scope) item.dataset.scope = scope;
      const text = el('span', 'error-message');
      const dismiss = button('error-dismiss', '×');
      dismiss.setAttribute('aria-label', 'Dismiss error');
      dismiss.addEventListener('click', () => removeError(id));
      item.append(el('strong', 'error-code', code), ' ', text);
      if (action) {
        const act = button('error-action', action.label);
        act.addEventListener('click', () => {
          removeError(id);
          action.run();
        });
        item.append(act);
      }
      item.append(dismiss);
      entry = { item, text, count: 1, timer: 0 };
      state.errors.set(id, entry);
      ui.errors.append(item);
      while (ui.errors.childElementCount > MAX_ERRORS) {
        removeError(ui.errors.firstElementChild.dataset.key);
      }
    }
    entry.text.textContent = render(entry.count);
    entry.timer = window.setTimeout(() => removeError(id), ERROR_TTL_MS);
  }

  function removeError(id) {
    const entry = state.errors.get(id);
    if (!entry) return;
    window.clearTimeout(entry.timer);
    entry.item.remove();
    state.errors.delete(id);
  }

  /** Removes the error items of one scope (the connection's, once it is back). */
  function clearErrors(scope) {
    for (const [id, entry] of state.errors) {
      if (entry.item.dataset.scope === scope) removeError(id);
    }
  }

  /** Small screens: the name and room row folds into the header's menu button. */
  function setMenu(open) {
    document.body.dataset.menu = open ? 'open' : 'closed';
    ui.menu.setAttribute('aria-expanded', String(open));
  }

  // ---------------------------------------------------------------- 5. connection

  function wsUrl() {
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({ name: state.requestedName });
    // With a token the server takes the user from it (and ignores uid): send one or the other.
    if (state.token) query.set('token', state.token);
    else query.set('uid', state.uid);
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
    if (old) old.close(CLOSE_NORMAL, 'reconnecting');
    state.welcomed = false;
    state.joinedRooms.clear();
    state.leavesInFlight.clear();
    requeueSent();
    setConn('connecting');

    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      showError('client', `Cannot open the connection: ${err.message}`, { scope: 'conn' });
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
      if (state.conn === 'reconnecting') renderStatus();
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
    requeueSent();

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

  // ---------------------------------------------------------------- 6. own messages
  //
  // A message is sent once, whatever the network does: it waits in view.outgoing (shown
  // dimmed at the bottom of the log) until the server's `chat` with its cid confirms it or
  // an `error` naming its cid refuses it. After a disconnect, what was sent but not
  // confirmed is sent again with the same cid once the room is rejoined, unless the
  // joined's history already holds it; the server publishes a cid only once per user and
  // room, answering a repeat with the original message, which confirms it here.

  /** Shows a typed message at once and queues it. */
  function enqueue(text) {
    const entry = { cid: randomHex(8), text, status: 'queued', why: '', line: null };
    entry.line = outgoingLine(entry);
    state.view.outgoing.set(entry.cid, entry);
    renderEntry(entry);
    appendLine(entry.line, { forceScroll: true });
    pump();
  }

  function outgoingLine(entry) {
    const line = chatElement({
      name: state.name ?? state.requestedName,
      text: entry.text,
      ts: null,
      userId: state.userId,
    });
    line.classList.add('own');
    line.dataset.cid = entry.cid;
    const status = el('span', 'msg-status');
    status.dataset.testid = 'msg-status';
    line.querySelector('.msg-time').replaceWith(status);
    const actions = el('span', 'msg-actions');
    const retry = button('msg-action', 'Retry', 'retry-message');
    retry.addEventListener('click', () => retryMessage(entry.cid));
    const discard = button('msg-action', 'Discard', 'discard-message');
    discard.addEventListener('click', () => discardMessage(entry.cid));
    actions.append(retry, discard);
    line.querySelector('.msg-meta').append(' ', actions);
    return line;
  }

  function renderEntry(entry) {
    const { line, status } = entry;
    const failed = status === 'failed';
    line.dataset.state = status;
    line.classList.toggle('pending', !failed);
    line.classList.toggle('failed', failed);
    let label = 'sending…';
    if (failed) label = `not sent${entry.why ? ` (${entry.why})` : ''}`;
    else if (isOffline()) label = 'offline: will send when reconnected';
    line.querySelector('.msg-status').textContent = label;
    line.querySelector('.msg-actions').hidden = !failed;
  }

  /**
   * Sends queued messages, oldest first, once the room is joined: at most SEND_RATE a
   * second after a burst of SEND_BURST. Reschedules itself while messages wait.
   */
  function pump() {
    const { pacer, view } = state;
    window.clearTimeout(pacer.timer);
    pacer.timer = 0;
    if (!canSend()) return; // `joined` pumps again
    for (const entry of view.outgoing.values()) {
      if (entry.status !== 'queued') continue;
      const now = performance.now();
      pacer.tokens = Math.min(SEND_BURST, pacer.tokens + ((now - pacer.last) * SEND_RATE) / 1000);
      pacer.last = now;
      if (pacer.tokens < 1) {
        pacer.timer = window.setTimeout(pump, ((1 - pacer.tokens) * 1000) / SEND_RATE);
        return;
      }
      if (!send({ type: 'chat', room: view.room, text: entry.text, cid: entry.cid })) return;
      pacer.tokens -= 1;
      entry.status = 'sent';
      renderEntry(entry);
    }
  }

  /** The server said "too fast": owe it RATE_PAUSE_MS of sending, then no burst. */
  function slowDown() {
    state.pacer.tokens = Math.min(state.pacer.tokens, 1 - (SEND_RATE * RATE_PAUSE_MS) / 1000);
    pump();
  }

  /** After a disconnect: sent but unconfirmed messages go back in the queue (same cid). */
  function requeueSent() {
    for (const entry of state.view.outgoing.values()) {
      if (entry.status === 'sent') {
        entry.status = 'queued';
        renderEntry(entry);
      }
    }
  }

  /** An `error` naming one of our cids: that message is marked not sent. */
  function refuse(cid, code, message) {
    const entry = state.view.outgoing.get(cid);
    if (!entry) return false;
    entry.status = 'failed';
    entry.why = REFUSED_WHY[code] ?? code;
    renderEntry(entry);
    if (code === 'rate_limited') slowDown();
    // One line for any number of refusals: "Slow down: 12 messages not sent".
    showError(
      code,
      (n) =>
        code === 'rate_limited'
          ? `Slow down: ${plural(n, 'message')} not sent.`
          : `${plural(n, 'message')} not sent: ${message}`,
      { key: `refused\n${code}`, action: { label: 'Retry all', run: retryAll } },
    );
    return true;
  }

  /** A failed message back in the queue (same cid), at the bottom of the log. */
  function retryMessage(cid) {
    const { outgoing } = state.view;
    const entry = outgoing.get(cid);
    if (!entry || entry.status !== 'failed') return;
    outgoing.delete(cid); // to the back of the queue
    outgoing.set(cid, entry);
    entry.status = 'queued';
    entry.why = '';
    entry.line.remove();
    renderEntry(entry);
    appendLine(entry.line, { forceScroll: true });
    pump();
  }

  function retryAll() {
    const failed = [...state.view.outgoing.values()].filter((e) => e.status === 'failed');
    for (const entry of failed) retryMessage(entry.cid);
  }

  function discardMessage(cid) {
    const entry = state.view.outgoing.get(cid);
    if (!entry || entry.status !== 'failed') return;
    state.view.outgoing.delete(cid);
    entry.line.remove();
  }

  // ---------------------------------------------------------------- 7. server frames

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
      const userId = String(msg.userId);
      const name = String(msg.name ?? state.requestedName);
      const renamed = state.userId === userId && state.name !== null && state.name !== name;
      state.welcomed = true;
      state.attempt = 0; // backoff starts over after a successful welcome
      state.userId = userId;
      state.name = name;
      state.node = String(msg.node ?? '?');
      if (ui.notice.dataset.kind === 'info') hideNotice();
      clearErrors('conn'); // whatever the connection's trouble was, it is over
      renderIdentity();
      if (document.activeElement !== ui.nameInput) ui.nameInput.value = state.name;
      for (const entry of state.view.outgoing.values()) {
        entry.line.querySelector('.msg-name').textContent = name;
      }
      setConn('online');
      if (renamed) {
        addSystemLine(['You are now ', ...systemName(userId, name)], 'rename-self', userId);
      }
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
          const userId = String(m.userId);
          const name = String(m.name ?? m.userId);
          state.members.set(userId, name);
          const old = noteName(userId, name);
          if (isRejoin && old !== null) showRename(userId, old, name);
        }
      }
      // The list is cluster-wide and should hold us already; make sure it does.
      if (state.userId !== null && !state.members.has(state.userId)) {
        state.members.set(state.userId, state.name);
        noteName(state.userId, state.name);
      }
      renderMembers();

      if (isRejoin && msg.recovered === false) {
        addSystemLine('Reconnected: some messages may be missing.', 'gap');
      } else if (!isRejoin) {
        addSystemLine(`You joined #${room}`, 'joined');
      }
      // History confirms whatever own messages got through before a disconnect; the
      // rest are sent again (same cid) by pump.
      for (const chat of Array.isArray(msg.history) ? msg.history : []) {
        addChat(chat, { live: false });
      }
      renderJoined();
      pump();
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
      if (String(msg.room) === state.view.room) addChat(msg, { live: true });
    },

    presence(msg) {
      if (String(msg.room) !== state.view.room) return;
      const { view } = state;
      const userId = String(msg.userId);
      const name = String(msg.name ?? userId);
      if (msg.status === 'online') {
        state.members.set(userId, name);
        const old = noteName(userId, name);
        if (old !== null && userId !== state.userId) {
          // A rename reconnects: the "left" just shown for this user was part of it.
          const last = view.lastLine;
          if (last && last.dataset.kind === 'presence-offline' && last.dataset.userId === userId) {
            last.remove();
          }
          showRename(userId, old, name);
        } else {
          addSystemLine([...systemName(userId, name), ' joined'], 'presence-online', userId);
        }
      } else if (msg.status === 'offline') {
        state.members.delete(userId);
        addSystemLine([...systemName(userId, name), ' left'], 'presence-offline', userId);
      } else {
        return;
      }
      renderMembers();
    },

    error(msg) {
      const code = String(msg.code ?? 'error');
      const message = String(msg.message ?? '');
      const ref = msg.ref === undefined || msg.ref === null ? null : String(msg.ref);
      if (ref !== null && refuse(ref, code, message)) return;
      if (code === 'rate_limited') slowDown();
      showError(code, message);
    },
  };

  /**
   * Shows a chat message once. History after a reconnect overlaps what is on screen, and
   * the server answers a repeated cid with the original message, so ids already shown are
   * skipped. The ts is compared too: should a restarted in-memory server hand out the same
   * ids again, a different message is not swallowed. Our own message (its cid, our
   * userId) confirms the pending line, which it replaces. `live` is false for history:
   * old names in it are not renames.
   */
  function addChat(msg, { live }) {
    if (!msg || msg.id === undefined || msg.id === null) return;
    const { view } = state;
    const key = String(msg.id);
    const userId = msg.userId === undefined || msg.userId === null ? '' : String(msg.userId);
    const name = String(msg.name ?? userId);
    const notice = msg.system === true;

    let own = false;
    if (!notice && typeof msg.cid === 'string' && userId === state.userId) {
      const entry = view.outgoing.get(msg.cid);
      if (entry) {
        view.outgoing.delete(msg.cid);
        entry.line.remove();
        own = true;
      }
    }
    if (view.seen.has(key) && view.seen.get(key) === msg.ts) return;
    view.seen.set(key, msg.ts);
    if (view.seen.size > MAX_SEEN) view.seen.delete(view.seen.keys().next().value);
    view.lastId = msg.id;

    let line;
    if (notice) {
      line = noticeElement(msg);
    } else {
      if (live) {
        const old = noteName(userId, name);
        if (old !== null) showRename(userId, old, name);
      } else {
        // History is oldest first: the last name wins, unless the member list told us.
        if (!state.members.has(userId)) view.names.set(userId, name);
        if (noteOwner(userId, name)) refreshTags();
      }
      line = chatElement({ name, text: msg.text, ts: msg.ts, userId });
      if (typeof msg.cid === 'string') line.dataset.cid = msg.cid;
    }
    line.dataset.id = key;
    appendLine(line, { forceScroll: own, counts: true });
  }

  // ---------------------------------------------------------------- 8. user actions, start-up

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
    // Messages still waiting for the old room go with its view.
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
    setMenu(false);
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
    // The name is part of the /ws URL: reconnect (same uid, so the same user). The
    // current room view is kept, so the rejoin uses `since` like any reconnect.
    hideNotice();
    state.attempt = 0;
    connect();
  }

  /** Enter and the Send button: queue the message, whether online or not. */
  function onSend(ev) {
    ev.preventDefault();
    const text = ui.input.value;
    if (!text.trim()) return;
    if (charCount(text) > TEXT_MAX) {
      showError('too_long', `Messages are at most ${TEXT_MAX} characters.`);
      return;
    }
    enqueue(text);
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
    state.uid = initialUid();
    ui.nameInput.value = state.requestedName;
    renderIdentity();

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
    if (window.matchMedia(SMALL_SCREEN).matches) ui.membersPanel.open = false;

    window.addEventListener('hashchange', onHashChange);
    ui.roomForm.addEventListener('submit', onRoomSubmit);
    ui.nameForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      applyName();
      setMenu(false);
    });
    ui.nameInput.addEventListener('change', applyName);
    ui.composer.addEventListener('submit', onSend);
    ui.reconnect.addEventListener('click', manualReconnect);
    ui.retry.addEventListener('click', () => connect());
    ui.menu.addEventListener('click', () => {
      const open = document.body.dataset.menu !== 'open';
      setMenu(open);
      if (open) ui.nameInput.focus();
    });
    document.addEventListener('keydown', (ev) => {
      if (ev.key === 'Escape' && document.body.dataset.menu === 'open') {
        setMenu(false);
        ui.menu.focus();
      }
    });
    ui.log.addEventListener(
      'scroll',
      () => {
        if (state.view.unread > 0 && isNearBottom()) {
          state.view.unread = 0;
          renderUnread();
        }
      },
      { passive: true },
    );
    ui.newMessages.addEventListener('click', () => {
      scrollToLatest();
      ui.input.focus();
    });
    // Back online: do not sit out the rest of a long backoff.
    window.addEventListener('online', () => {
      if (state.conn === 'reconnecting') connect();
    });

    connect();
    ui.input.focus(); // ready to type (the box works offline too: messages queue)
  }

  start();
})();
