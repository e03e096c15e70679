// alarmcentre dashboard: live updates over Server-Sent Events, waiting timers, the alarm
// sound and title, and the connection banner. Plain JavaScript, no build step, no libraries.
//
// The server renders every part of a page; this script only re-reads the parts marked
// data-live-src when the feed says something changed, when the feed (re)connects, and every
// 15 s as a safety net. A page whose feed is down says so at once in a banner.
"use strict";

(function () {
  const body = document.body;
  const state = {
    connected: false, // the feed is open and heard from recently
    database: true, // the server can read its database
    canary: true, // the centre's test alarms come through in time
    canaryDetail: "",
    beeps: 0, // alarm sounds played (tests read this)
    refreshes: 0, // fragments re-read
    waiting: [], // alarms nobody has taken: [{id, opened}]
    serverOffset: 0, // server clock minus this computer's clock, ms
    lastHeard: 0,
  };
  window.alarmcentreState = state;

  const TARGET_S = Number(body.dataset.target || 60);
  const LIMIT_S = Number(body.dataset.limit || 180);
  const SILENCE_MS = 15000; // no message (pings come every 5 s) for this long: the feed is dead
  const SAFETY_REFRESH_MS = 15000;
  const BEEP_EVERY_MS = 10000;

  function serverNow() { return Date.now() + state.serverOffset; }

  // -- waiting timers -------------------------------------------------------------------

  function formatDuration(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    const two = (n) => String(n).padStart(2, "0");
    return h > 0 ? `${h}:${two(m)}:${two(s)}` : `${m}:${two(s)}`;
  }

  function updateTimers() {
    for (const el of document.querySelectorAll(".wait[data-since]")) {
      const since = Number(el.dataset.since);
      const stop = Number(el.dataset.stop || 0);
      const elapsed = (stop || serverNow()) - since;
      el.textContent = formatDuration(elapsed);
      const s = elapsed / 1000;
      el.classList.toggle("wait-ok", s < TARGET_S);
      el.classList.toggle("wait-amber", s >= TARGET_S && s <= LIMIT_S);
      el.classList.toggle("wait-red", s > LIMIT_S);
      const row = el.closest(".incident-row");
      if (row) row.classList.toggle("late", !stop && s > LIMIT_S);
    }
  }

  // -- sound and title ------------------------------------------------------------------

  const AudioCtx = window.AudioContext || window.webkitAudioContext;
  const audio = AudioCtx ? new AudioCtx() : null;
  const soundButton = document.getElementById("sound-button");

  function showSoundButton() {
    if (soundButton) soundButton.hidden = !(audio && audio.state !== "running");
  }
  if (soundButton) {
    soundButton.addEventListener("click", () => { if (audio) audio.resume().then(showSoundButton); });
  }
  // Browsers allow sound only after the user touched the page: any click unlocks it.
  document.addEventListener("click", () => { if (audio && audio.state !== "running") audio.resume().then(showSoundButton); });

  function beep() {
    state.beeps += 1;
    if (!audio || audio.state !== "running") { showSoundButton(); return; }
    const start = audio.currentTime;
    for (const [offset, freq] of [[0, 880], [0.3, 660], [0.6, 880]]) {
      const osc = audio.createOscillator(), gain = audio.createGain();
      osc.frequency.value = freq;
      gain.gain.setValueAtTime(0.3, start + offset);
      gain.gain.exponentialRampToValueAtTime(0.001, start + offset + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(start + offset);
      osc.stop(start + offset + 0.25);
    }
  }

  const baseTitle = document.title;
  const alarmBar = document.getElementById("alarm-bar");
  let known = null; // alarm ids seen waiting; null before the first answer
  let lastBeep = 0;
  let flash = false;

  function applyWaiting(waiting) {
    state.waiting = waiting;
    const ids = new Set(waiting.map((w) => w.id));
    const fresh = known === null ? waiting.length > 0 : waiting.some((w) => !known.has(w.id));
    known = ids;
    if (alarmBar) {
      alarmBar.hidden = waiting.length === 0;
      alarmBar.textContent = alarmBar.dataset.text.replace("__N__", String(waiting.length));
    }
    if (fresh) { beep(); lastBeep = Date.now(); }
  }

  setInterval(() => {
    updateTimers();
    if (state.waiting.length > 0) {
      flash = !flash;
      document.title = flash ? `⚠ ${body.dataset.titleAlert} (${state.waiting.length})` : baseTitle;
      if (Date.now() - lastBeep >= BEEP_EVERY_MS) { beep(); lastBeep = Date.now(); }
    } else if (document.title !== baseTitle) {
      document.title = baseTitle;
    }
    if (state.connected && Date.now() - state.lastHeard > SILENCE_MS) {
      // Silently dead (a proxy, a sleeping laptop): treat as lost and reconnect.
      lost();
      connect();
    }
  }, 1000);

  // -- re-reading the live parts --------------------------------------------------------

  const inFlight = new Map();

  async function fetchText(url) {
    const response = await fetch(url, { headers: { "X-Requested-With": "fetch" }, cache: "no-store", credentials: "same-origin" });
    if (response.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); throw new Error("logged out"); }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    return response.text();
  }

  async function refresh(el) {
    if (inFlight.get(el)) { inFlight.set(el, "again"); return; }
    inFlight.set(el, "busy");
    try {
      const html = await fetchText(el.dataset.liveSrc);
      let content = html;
      if (el.dataset.liveSelect) {
        const doc = new DOMParser().parseFromString(html, "text/html");
        const part = doc.querySelector(el.dataset.liveSelect);
        content = part ? part.outerHTML : el.innerHTML;
      }
      el.innerHTML = content;
      state.refreshes += 1;
      updateTimers();
    } catch (err) {
      if (state.connected) console.warn("refresh failed", err);
    } finally {
      const again = inFlight.get(el) === "again";
      inFlight.delete(el);
      if (again) refresh(el);
    }
  }

  async function refreshWaiting() {
    try {
      applyWaiting(JSON.parse(await fetchText("/ui/alarms")).waiting);
    } catch (err) { /* the banner tells */ }
  }

  function refreshAll() {
    document.querySelectorAll("[data-live-src]").forEach(refresh);
    refreshWaiting();
  }

  function refreshFor(change) {
    const incidents = new Set(change.incidents || []);
    for (const el of document.querySelectorAll("[data-live-src]")) {
      const on = (el.dataset.liveOn || "").split(" ");
      const mine = el.dataset.incident ? incidents.has(Number(el.dataset.incident)) : false;
      if (change.resync || mine || (on.includes("incidents") && incidents.size > 0) ||
          (on.includes("sms") && change.sms) || (on.includes("tasks") && change.tasks)) {
        refresh(el);
      }
    }
    if (change.resync || incidents.size > 0) refreshWaiting();
  }

  // -- the feed -------------------------------------------------------------------------

  const banner = document.getElementById("conn-banner");
  const liveState = document.getElementById("live-state");
  let source = null;
  let retryTimer = null;

  function showBanner() {
    if (!banner) return;
    if (!state.connected) {
      banner.textContent = banner.dataset.textLost;
      banner.hidden = false;
    } else if (!state.database) {
      banner.textContent = banner.dataset.textDatabase;
      banner.hidden = false;
    } else if (!state.canary) {
      banner.textContent = `${banner.dataset.textCanary} (${state.canaryDetail})`;
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    body.classList.toggle("stale", !state.connected || !state.database);
    body.classList.toggle("system-fault", !state.canary);
    if (liveState) {
      liveState.textContent = state.connected && state.database ? liveState.dataset.textLive : liveState.dataset.textOffline;
      liveState.classList.toggle("ok", state.connected && state.database);
    }
  }

  function applySystem(system) {
    if (system.database !== undefined) state.database = system.database === "ok";
    if (system.canary !== undefined) {
      state.canary = system.canary === "ok";
      state.canaryDetail = system.canary_detail || "";
    }
    showBanner();
  }

  function lost() {
    state.connected = false;
    showBanner();
  }

  function connect() {
    if (source) source.close();
    clearTimeout(retryTimer);
    source = new EventSource("/ui/events");
    source.addEventListener("hello", (event) => {
      const hello = JSON.parse(event.data);
      state.serverOffset = hello.server_time * 1000 - Date.now();
      state.connected = true;
      state.lastHeard = Date.now();
      applySystem(hello);
      refreshAll(); // whatever happened while we were away
    });
    source.addEventListener("change", (event) => {
      state.lastHeard = Date.now();
      refreshFor(JSON.parse(event.data));
    });
    source.addEventListener("system", (event) => {
      state.lastHeard = Date.now();
      const wasDown = !state.database;
      applySystem(JSON.parse(event.data));
      if (wasDown && state.database) refreshAll();
    });
    source.addEventListener("ping", () => { state.lastHeard = Date.now(); });
    source.onmessage = () => { state.lastHeard = Date.now(); };
    source.onerror = () => {
      lost();
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error (e.g. restarting behind a proxy): try again ourselves.
        retryTimer = setTimeout(connect, 2000);
      }
    };
  }

  if (body.dataset.live === "on") {
    showBanner();
    connect();
    setInterval(() => { if (state.connected) refreshAll(); }, SAFETY_REFRESH_MS);
  }
  updateTimers();
  showSoundButton();
})();
